"""Where the built PKCS#11 module (``libstrongroom-pkcs11.so``) is.

An installed wheel carries it as package data (``strongroom/lib/``); a source checkout
builds it into ``pkcs11/build/`` (``make -C pkcs11``). Both ``strongroom pkcs11
module-path`` and ``strongroom up`` (which writes it to the environment file) look here.
"""

from __future__ import annotations

from pathlib import Path

MODULE_NAME = "libstrongroom-pkcs11.so"


def candidate_paths() -> list[Path]:
    """Installed wheel first (package data), then a source checkout's build folder."""
    package = Path(__file__).resolve().parent
    return [package / "lib" / MODULE_NAME, package.parent.parent / "pkcs11" / "build" / MODULE_NAME]


def find_module() -> Path | None:
    """The first candidate that exists, or None when the module is not built."""
    return next((path for path in candidate_paths() if path.is_file()), None)
