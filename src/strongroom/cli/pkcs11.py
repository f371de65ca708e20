"""``strongroom pkcs11 …``: where the PKCS#11 module is, and how p11-kit finds it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from strongroom.cli.output import CliError, emit

MODULE_NAME = "libstrongroom-pkcs11.so"
P11KIT_SYSTEM_DIR = Path("/etc/pkcs11/modules")


def candidate_paths() -> list[Path]:
    """Installed wheel first (package data), then a source checkout's build folder."""
    package = Path(__file__).resolve().parent.parent
    return [package / "lib" / MODULE_NAME, package.parent.parent / "pkcs11" / "build" / MODULE_NAME]


def module_path() -> Path:
    for path in candidate_paths():
        if path.is_file():
            return path
    searched = ", ".join(str(p) for p in candidate_paths())
    raise CliError(f"the PKCS#11 module is not built (looked in {searched}); run `make -C pkcs11` "
                   "in the source tree or reinstall the package")


def p11kit_config(path: Path) -> str:
    # critical: no  -> a p11-kit user (GnuTLS, p11tool) still starts when the agent is down.
    return f"module: {path}\ncritical: no\ntrust-policy: no\n"


def cmd_module_path(args: argparse.Namespace, _ctx: Any) -> None:
    path = module_path()
    emit({"path": str(path)}, as_json=args.json, text=str(path))


def cmd_p11kit_config(args: argparse.Namespace, _ctx: Any) -> None:
    text = p11kit_config(module_path())
    if args.install or args.install_dir:
        target_dir = Path(args.install_dir) if args.install_dir else P11KIT_SYSTEM_DIR
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            target = target_dir / "strongroom.module"
            target.write_text(text)
        except OSError as exc:
            raise CliError(f"cannot write {target_dir}/strongroom.module: {exc.strerror or exc}; "
                           "run as root or pass --install-dir ~/.config/pkcs11/modules") from None
        emit({"installed": str(target), "config": text}, as_json=args.json, text=f"installed {target}")
        return
    emit({"config": text}, as_json=args.json, text=text.rstrip("\n"))


def register(sub: Any, add: Any) -> None:
    group = sub.add_parser("pkcs11", help="the PKCS#11 module").add_subparsers(
        dest="pkcs11_command", required=True, metavar="PKCS11_COMMAND")
    add(group, "module-path", cmd_module_path, "print the path of the built PKCS#11 module")
    p = add(group, "p11-kit-config", cmd_p11kit_config,
            "print (or --install) the p11-kit module file so GnuTLS and other p11-kit users find the module")
    p.add_argument("--install", action="store_true", help="write it to /etc/pkcs11/modules/strongroom.module")
    p.add_argument("--install-dir", help="write it to this folder instead (implies --install; e.g. ~/.config/pkcs11/modules)")
