"""Label values with a bound: a peer cannot make a process keep one time series per string it sends."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from strongroom.constants import CKM
from strongroom.errors import CKR

#: Distinct values one label keeps before further new ones are counted as "other".
MAX_VALUES = 256
OTHER = "other"


@dataclass
class BoundedLabel:
    """Values matching ``pattern``, at most :data:`MAX_VALUES` of them; anything else is "other"."""

    pattern: re.Pattern[str]
    seen: set[str] = field(default_factory=set)

    def __call__(self, value: object) -> str:
        if not isinstance(value, str) or not self.pattern.fullmatch(value):
            return OTHER
        if value not in self.seen:
            if len(self.seen) >= MAX_VALUES:
                return OTHER
            self.seen.add(value)
        return value


def outcome(code: int) -> str:
    """``ok`` or the CKR_* name of a PKCS#11 return value."""
    if code == 0:
        return "ok"
    try:
        return CKR(code).spec_name
    except ValueError:
        return OTHER


def mechanism(value: object) -> str:
    """The CKM_* name of a mechanism argument; ``none`` for a request without one."""
    if value is None:
        return "none"
    if not isinstance(value, int) or isinstance(value, bool):
        return OTHER
    try:
        return f"CKM_{CKM(value).name}"
    except ValueError:
        return OTHER
