"""How the CLI prints: CloudHSM CLI's JSON envelope with --json, readable text otherwise."""

from __future__ import annotations

import json
import sys
from typing import Any


class CliError(Exception):
    """A problem found before or around a call; ``code`` is a CKR code when the node sent one."""

    def __init__(self, message: str, code: int = -1, name: str = "CLI_ERROR") -> None:
        super().__init__(message)
        self.code = code
        self.name = name


def emit(data: Any, *, as_json: bool, text: str | None = None) -> None:
    if as_json:
        print(json.dumps({"error_code": 0, "data": data}, indent=2, default=_jsonable))
    elif text is not None:
        print(text)
    else:
        print(json.dumps(data, indent=2, default=_jsonable))


def emit_error(error: CliError, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error_code": error.code, "error_name": error.name, "error": str(error)}))
    else:
        print(f"error: {error}", file=sys.stderr)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
