"""Layer ``audit``: the node's append-only, hash-chained audit log and its offline verifier."""

from strongroom.audit.log import MAX_LINE_BYTES, AuditLog, AuditRecord, AuditWriteError
from strongroom.audit.verify import Break, VerifyResult, verify

__all__ = [
    "MAX_LINE_BYTES",
    "AuditLog",
    "AuditRecord",
    "AuditWriteError",
    "Break",
    "VerifyResult",
    "verify",
]
