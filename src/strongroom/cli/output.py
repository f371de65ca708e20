"""How the CLI prints: CloudHSM CLI's JSON envelope with --json, readable text otherwise."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any


class CliError(Exception):
    """A problem found before or around a call; ``code`` is a CKR code when the node sent one."""

    def __init__(self, message: str, code: int = -1, name: str = "CLI_ERROR") -> None:
        super().__init__(message)
        self.code = code
        self.name = name


#: Keys whose numbers are moments (Unix seconds): the JSON shows them as ISO-8601 UTC (``…Z``).
TIME_KEYS = frozenset({"created", "activated", "enrolled_at", "revoked_at", "time", "expires", "not_after",
                       "not_before", "deleted_at", "deletion_date", "rotated_at", "last_rotated"})


def iso_times(value: Any, key: str | None = None) -> Any:
    """``value`` with every moment under a :data:`TIME_KEYS` key as ISO-8601 (one time format everywhere)."""
    if isinstance(value, dict):
        return {k: iso_times(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [iso_times(v) for v in value]
    if key in TIME_KEYS and isinstance(value, int | float) and not isinstance(value, bool) and value > 1e8:
        return dt.datetime.fromtimestamp(float(value), dt.UTC).replace(microsecond=0).isoformat().replace(
            "+00:00", "Z")
    return value


def emit(data: Any, *, as_json: bool, text: str | None = None) -> None:
    if as_json:
        print(json.dumps({"error_code": 0, "data": iso_times(data)}, indent=2, default=_jsonable))
    elif text is not None:
        print(text)
    else:
        print(json.dumps(data, indent=2, default=_jsonable))


def emit_error(error: CliError, *, as_json: bool, data: Any = None) -> None:
    """The error envelope (with ``data`` when there is something to show besides the error)."""
    if as_json:
        envelope: dict[str, Any] = {"error_code": error.code, "error_name": error.name, "error": str(error)}
        if data is not None:
            envelope["data"] = iso_times(data)
        print(json.dumps(envelope, indent=2 if data is not None else None, default=_jsonable))
    else:
        print(f"error: {error}", file=sys.stderr)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [["-" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
