"""Certificate expiry: what ``strongroom status``, the status page and the metrics show.

A certificate expiring within :data:`EXPIRY_WARNING_DAYS` is *expiring*: rotate it
(``strongroom cert rotate``) before its holder's connections start failing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strongroom.pki import PkiError, certificate_role, load_certificate

EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class CertificateExpiry:
    #: What it is to its holder: "node node1", "agent", "operator", "ca", "kms gateway".
    name: str
    path: Path
    subject: str
    role: str | None
    not_after: dt.datetime

    def seconds_left(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or dt.datetime.now(dt.UTC))).total_seconds()

    def expiring(self, now: dt.datetime | None = None) -> bool:
        return self.seconds_left(now) < EXPIRY_WARNING_DAYS * 86400

    def to_dict(self, now: dt.datetime | None = None) -> dict[str, Any]:
        left = self.seconds_left(now)
        return {"name": self.name, "path": str(self.path), "subject": self.subject, "role": self.role,
                "not_after": iso8601(self.not_after), "days_left": int(left // 86400),
                "expiring": left < EXPIRY_WARNING_DAYS * 86400, "expired": left <= 0}


def iso8601(moment: dt.datetime | float) -> str:
    """UTC, seconds precision, ``Z``: the one time format of the CLI's JSON and the status page."""
    if not isinstance(moment, dt.datetime):
        moment = dt.datetime.fromtimestamp(float(moment), dt.UTC)
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def read_expiry(name: str, path: Path) -> CertificateExpiry | None:
    """The expiry of the certificate in ``path`` (PEM), or None if it cannot be read."""
    try:
        cert = load_certificate(path)
    except (PkiError, OSError, ValueError):
        return None
    role = certificate_role(cert)
    return CertificateExpiry(name, Path(path), cert.subject.rfc4514_string(), None if role is None else role.role,
                             cert.not_valid_after_utc)


def read_all(certificates: list[tuple[str, Path]]) -> list[CertificateExpiry]:
    found = (read_expiry(name, path) for name, path in certificates)
    return [c for c in found if c is not None]
