"""``strongroom pkcs11 …``: where the PKCS#11 module is, and how p11-kit finds it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from strongroom.cli.context import AddCommand, Context
from strongroom.cli.output import CliError, emit
from strongroom.pkcs11_module import candidate_paths, find_module

P11KIT_SYSTEM_DIR = Path("/etc/pkcs11/modules")


def module_path() -> Path:
    path = find_module()
    if path is None:
        searched = ", ".join(str(p) for p in candidate_paths())
        raise CliError(f"the PKCS#11 module is not built (looked in {searched}); run `make -C pkcs11` "
                       "in the source tree or reinstall the package")
    return path


def p11kit_config(path: Path) -> str:
    # critical: no  -> a p11-kit user (GnuTLS, p11tool) still starts when the agent is down.
    return f"module: {path}\ncritical: no\ntrust-policy: no\n"


def cmd_module_path(args: argparse.Namespace, _ctx: Context) -> None:
    path = module_path()
    emit({"path": str(path)}, as_json=args.json, text=str(path))


def cmd_p11kit_config(args: argparse.Namespace, _ctx: Context) -> None:
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


def register(sub: Any, add: AddCommand) -> None:
    group = sub.add_parser("pkcs11", help="the PKCS#11 module").add_subparsers(
        dest="pkcs11_command", required=True, metavar="PKCS11_COMMAND")
    add(group, "module-path", cmd_module_path, "print the path of the built PKCS#11 module")
    p = add(group, "p11-kit-config", cmd_p11kit_config,
            "print (or --install) the p11-kit module file so GnuTLS and other p11-kit users find the module")
    p.add_argument("--install", action="store_true", help="write it to /etc/pkcs11/modules/strongroom.module")
    p.add_argument("--install-dir",
                   help="write it to this folder instead (implies --install; e.g. ~/.config/pkcs11/modules)")
