"""Request parameters, checked as AWS checks them, with AWS's messages.

A handler reads its fields through :class:`Params`; each getter checks the JSON type (a wrong
type is a ``SerializationException``, as for AWS's JSON protocol) and the model constraints
(length, range, enum, pattern, required). Constraint violations are collected and
:meth:`Params.check` raises one ``ValidationException`` naming all of them, in AWS's format::

    1 validation error detected: Value at 'keyId' failed to satisfy constraint: Member must have
    length less than or equal to 2048

Field names in messages are the member names with a lower-case first letter (``keyId``,
``numberOfBytes``), list members ``tags.1.member.tagKey``. Values are shown for numbers,
enums and patterns, never for lengths (blobs and strings may be secret or long).
Unknown members are ignored, as AWS does.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Sequence
from typing import Any

from strongroom.kms.errors import KmsError, SerializationError, Validation


def field_name(member: str) -> str:
    return member[:1].lower() + member[1:]


def format_violations(violations: Sequence[str]) -> str:
    count = len(violations)
    return f"{count} validation error{'s' if count != 1 else ''} detected: " + "; ".join(violations)


def length_violation(field: str, length: int, minimum: int | None, maximum: int | None) -> str | None:
    if minimum is not None and length < minimum:
        return (f"Value at '{field}' failed to satisfy constraint: "
                f"Member must have length greater than or equal to {minimum}")
    if maximum is not None and length > maximum:
        return (f"Value at '{field}' failed to satisfy constraint: "
                f"Member must have length less than or equal to {maximum}")
    return None


def range_violation(field: str, value: int, minimum: int | None, maximum: int | None) -> str | None:
    if minimum is not None and value < minimum:
        return (f"Value '{value}' at '{field}' failed to satisfy constraint: "
                f"Member must have value greater than or equal to {minimum}")
    if maximum is not None and value > maximum:
        return (f"Value '{value}' at '{field}' failed to satisfy constraint: "
                f"Member must have value less than or equal to {maximum}")
    return None


def enum_violation(field: str, value: str, allowed: Sequence[str]) -> str | None:
    if value in allowed:
        return None
    return (f"Value '{value}' at '{field}' failed to satisfy constraint: "
            f"Member must satisfy enum value set: [{', '.join(allowed)}]")


def pattern_violation(field: str, value: str, pattern: str) -> str | None:
    if re.fullmatch(pattern, value):
        return None
    return (f"Value '{value}' at '{field}' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: {pattern}")


def null_violation(field: str) -> str:
    return f"Value null at '{field}' failed to satisfy constraint: Member must not be null"


def _type_error(member: str, expected: str) -> KmsError:
    return SerializationError(f"Unable to parse member '{member}': expected {expected}")


class Params:
    """Typed, checked access to one request's JSON members."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.violations: list[str] = []

    def _raw(self, member: str, required: bool) -> Any:
        value = self.body.get(member)
        if value is None and required:
            self.violations.append(null_violation(field_name(member)))
        return value

    def check(self) -> None:
        """Raise one ValidationException for every violation found so far."""
        if self.violations:
            raise Validation(format_violations(self.violations))

    def violation(self, message: str | None) -> None:
        if message:
            self.violations.append(message)

    # --- scalars -------------------------------------------------------------------------------

    def string(self, member: str, *, required: bool = False, min_len: int | None = 1,
               max_len: int | None = None, enum: Sequence[str] | None = None,
               pattern: str | None = None) -> str | None:
        value = self._raw(member, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise _type_error(member, "a string")
        name = field_name(member)
        if enum is not None:
            self.violation(enum_violation(name, value, enum))
            return value
        self.violation(length_violation(name, len(value), min_len, max_len))
        if pattern is not None and value:
            self.violation(pattern_violation(name, value, pattern))
        return value

    def integer(self, member: str, *, required: bool = False, minimum: int | None = None,
                maximum: int | None = None) -> int | None:
        value = self._raw(member, required)
        if value is None:
            return None
        # 1e400 parses as an infinite float: no integer (int() of it would raise OverflowError).
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not math.isfinite(value)) or int(value) != value):
            raise _type_error(member, "an integer")
        value = int(value)
        self.violation(range_violation(field_name(member), value, minimum, maximum))
        return value

    def timestamp(self, member: str, *, required: bool = False) -> float | None:
        """A timestamp: epoch seconds (what botocore sends for the JSON protocol) or an ISO 8601 string."""
        value = self._raw(member, required)
        if value is None:
            return None
        if isinstance(value, str):
            import datetime as dt

            try:
                moment = dt.datetime.fromisoformat(value)
            except ValueError:
                raise _type_error(member, "a timestamp") from None
            return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _type_error(member, "a timestamp")
        return float(value)

    def boolean(self, member: str) -> bool | None:
        value = self.body.get(member)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise _type_error(member, "a boolean")
        return value

    def blob(self, member: str, *, required: bool = False, min_len: int | None = 1,
             max_len: int | None = None) -> bytes | None:
        value = self._raw(member, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise _type_error(member, "a base64 string")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise SerializationError(f"Unable to parse member '{member}': not valid base64") from None
        self.violation(length_violation(field_name(member), len(data), min_len, max_len))
        return data

    # --- collections --------------------------------------------------------------------------

    def string_map(self, member: str, *, max_entries: int | None = None) -> dict[str, str]:
        value = self.body.get(member)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise _type_error(member, "a map of strings")
        if max_entries is not None and len(value) > max_entries:
            self.violations.append(
                f"Value at '{field_name(member)}' failed to satisfy constraint: "
                f"Member must have length less than or equal to {max_entries}")
        return dict(value)

    def string_list(self, member: str, *, required: bool = False, max_items: int | None = None,
                    item_min: int | None = 1, item_max: int | None = None) -> list[str] | None:
        value = self._raw(member, required)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _type_error(member, "a list of strings")
        name = field_name(member)
        if max_items is not None and len(value) > max_items:
            self.violations.append(length_violation(name, len(value), None, max_items) or "")
        for index, item in enumerate(value, 1):
            self.violation(length_violation(f"{name}.{index}.member", len(item), item_min, item_max))
        return list(value)

    def tags(self, member: str = "Tags", *, required: bool = False) -> list[tuple[str, str]] | None:
        """``[{"TagKey", "TagValue"}]``: keys 1-128, values 0-256 characters."""
        value = self._raw(member, required)
        if value is None:
            return None
        if not isinstance(value, list):
            raise _type_error(member, "a list of tags")
        name = field_name(member)
        result = []
        for index, tag in enumerate(value, 1):
            if not isinstance(tag, dict):
                raise _type_error(member, "a list of tags")
            key, val = tag.get("TagKey"), tag.get("TagValue")
            for part, item, lo, hi in (("tagKey", key, 1, 128), ("tagValue", val, 0, 256)):
                where = f"{name}.{index}.member.{part}"
                if item is None:
                    self.violations.append(null_violation(where))
                elif not isinstance(item, str):
                    raise _type_error(member, "a list of tags")
                else:
                    self.violation(length_violation(where, len(item), lo, hi))
            if isinstance(key, str) and isinstance(val, str):
                result.append((key, val))
        return result


_JSON_TOKENS = re.compile(rb'[\[\]{}]|"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_too_deep(text: bytes | str, limit: int) -> bool:
    """Whether ``text`` nests JSON arrays/objects more than ``limit`` deep (brackets in strings do not
    count), measured before parsing: Python's parser recurses into every level, and a few KiB of
    brackets end in RecursionError. Cheap when there are few brackets at all."""
    data = text.encode() if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for match in _JSON_TOKENS.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def has_lone_surrogate(value: object) -> bool:
    """Whether a parsed JSON document holds a string with an unpaired UTF-16 surrogate (``"\\ud800"``):
    valid JSON, but not text — it cannot be encoded as UTF-8, stored, hashed or signed. Keys of objects
    count (an encryption context's keys are). The document is already limited in depth and size."""
    if isinstance(value, str):
        return not value.isascii() and _unencodable(value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_lone_surrogate(item) for item in value)
    return False


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
