"""A wheel of Strongroom, installed outside the checkout, is a working Strongroom (issue 19).

The wheel is built from a copy of the checkout (``pip wheel``, as docs/deploy.md builds it; the copy
keeps the build's ``make -C pkcs11`` out of the tree others build in) and installed with its
dependencies into a fresh venv. Everything below runs from that venv, in a directory outside the
checkout, with no PYTHONPATH: the CLI, the PKCS#11 module the wheel carries (``strongroom pkcs11
module-path``) loaded by OpenSC's pkcs11-tool against a running cluster's agent. The same test
checks that one version is shown everywhere: ``--version``, the wheel's name, the node's log,
``status``, and the module's ``C_GetInfo`` (through the agent, and the module's own fallback).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from strongroom import __version__

from .conftest import LocalCluster

#: The first test also builds the wheel and installs it with its dependencies (about 40 s here).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".mypy_cache", ".ruff_cache", ".hypothesis", "tmp", "*.so", "*.o")
MAJOR_MINOR = tuple(int(p) for p in __version__.split(".")[:2])


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    #: Where commands run: outside the checkout.
    cwd: Path

    def env(self, **extra: str) -> dict[str, str]:
        environment = {k: v for k, v in os.environ.items()
                       if not k.startswith(("STRONGROOM_", "PYTHON", "VIRTUAL_ENV"))}
        environment["PATH"] = f"{self.venv / 'bin'}:{environment.get('PATH', '/usr/bin:/bin')}"
        environment.update(extra)
        return environment

    def run(self, *argv: str, timeout: float = 120, **extra: str) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, cwd=self.cwd, env=self.env(**extra),
                                timeout=timeout)
        assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
        return result.stdout

    def strongroom(self, *args: str, **extra: str) -> str:
        return self.run(str(self.venv / "bin" / "strongroom"), *args, **extra)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    for tool in ("make", "cc"):
        if shutil.which(tool) is None:
            pytest.fail(f"building the wheel needs {tool} (apt-get install gcc make libc6-dev libp11-kit-dev)")
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE, symlinks=True)
    wheels = base / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels),
                            str(source)], capture_output=True, text=True, timeout=900, cwd=base)
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = wheels.glob("strongroom-*.whl")
    venv = base / "venv"
    # The machine's Python, not the checkout's venv: nothing of the checkout is on its path.
    python = shutil.which("python3") or sys.executable
    made = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    install = subprocess.run([str(venv / "bin" / "pip"), "install", str(wheel)], capture_output=True, text=True,
                             timeout=900, cwd=base)
    assert install.returncode == 0, install.stdout + install.stderr
    work = base / "elsewhere"
    work.mkdir()
    return Installed(wheel, venv, work)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("version") / "cluster", workers=1)
    local.up()
    try:
        yield local
    finally:
        local.down()


def test_the_wheel_is_tagged_licensed_and_carries_the_module(installed: Installed) -> None:
    assert installed.wheel.name == f"strongroom-{__version__}-py3-none-linux_{os.uname().machine}.whl"
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        assert "strongroom/lib/libstrongroom-pkcs11.so" in names
        dist_info = f"strongroom-{__version__}.dist-info"
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
        licenses = [n for n in names if n.startswith(dist_info) and n.endswith("/LICENSE")]
        assert licenses, names
        carried = wheel.read(licenses[0]).decode()
    # LICENSE, pyproject.toml and the wheel's metadata say the same thing.
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "Apache-2.0"
    assert re.search(r"^License-Expression: Apache-2\.0$", metadata, re.M), metadata[:2000]
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert carried == license_text


def test_the_installed_command_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    assert installed.strongroom("--version").strip() == f"strongroom {__version__}"
    where = installed.run(str(installed.venv / "bin" / "python"), "-c", "import strongroom; print(strongroom.__file__)")
    assert Path(where.strip()).is_relative_to(installed.venv), where
    assert not Path(where.strip()).is_relative_to(ROOT), where
    module = Path(json.loads(installed.strongroom("pkcs11", "module-path", "--json"))["data"]["path"])
    assert module.is_relative_to(installed.venv) and module.name == "libstrongroom-pkcs11.so", module
    assert module.read_bytes()[:4] == b"\x7fELF"


def _module(installed: Installed) -> Path:
    return Path(json.loads(installed.strongroom("pkcs11", "module-path", "--json"))["data"]["path"])


def test_the_carried_module_signs_through_a_running_agent(installed: Installed, running: LocalCluster) -> None:
    """pkcs11-tool loads the wheel's module; the module reaches the agent of a running cluster."""
    if shutil.which("pkcs11-tool") is None:
        pytest.fail("pkcs11-tool is not installed (apt-get install opensc)")
    module = str(_module(installed))
    socket = running.summary["agent_socket"]
    admin = running.admin()
    admin.user_create("wheeluser", "crypto-user", "password1")
    admin.logout()
    pin = "wheeluser:password1"
    tokens = installed.run("pkcs11-tool", "--module", module, "--list-token-slots", STRONGROOM_AGENT_SOCKET=socket)
    assert running.summary["token_label"] in tokens, tokens
    installed.run("pkcs11-tool", "--module", module, "--login", "--pin", pin, "--keypairgen", "--key-type",
                  "EC:prime256v1", "--label", "from-the-wheel", "--id", "77", STRONGROOM_AGENT_SOCKET=socket)
    data = installed.cwd / "data.bin"
    data.write_bytes(b"signed by the module the wheel carries")
    signature = installed.cwd / "data.sig"
    installed.run("pkcs11-tool", "--module", module, "--login", "--pin", pin, "--sign", "--id", "77",
                  "--mechanism", "ECDSA-SHA256", "--input-file", str(data), "--output-file", str(signature),
                  STRONGROOM_AGENT_SOCKET=socket)
    assert len(signature.read_bytes()) == 64  # r || s of P-256
    verified = installed.run("pkcs11-tool", "--module", module, "--login", "--pin", pin, "--verify", "--id", "77",
                             "--mechanism", "ECDSA-SHA256", "--input-file", str(data), "--signature-file",
                             str(signature), STRONGROOM_AGENT_SOCKET=socket)
    assert "Signature is valid" in verified, verified


def test_one_version_everywhere(installed: Installed, running: LocalCluster) -> None:
    """--version, the node's log, status, and C_GetInfo (through the agent, and the module's fallback)."""
    assert installed.strongroom("--version").strip() == f"strongroom {__version__}"
    log = (running.dir / "nodes" / "node1" / "node.log").read_text()
    assert f"Strongroom {__version__}: node node1" in log, log[-2000:]
    status = json.loads(installed.strongroom("status", "--dir", str(running.dir), "--json"))["data"]
    assert [n["version"] for n in status["nodes"]] == [__version__] * len(status["nodes"]), status["nodes"]
    text = installed.strongroom("status", "--dir", str(running.dir))
    assert __version__ in text, text
    module = str(_module(installed))
    info = installed.run("pkcs11-tool", "--module", module, "--show-info",
                         STRONGROOM_AGENT_SOCKET=running.summary["agent_socket"])
    library = re.search(r"Library\s+(.*)\(ver (\d+)\.(\d+)\)", info)
    assert library and "Strongroom PKCS#11 module" in library.group(1), info
    assert (int(library.group(2)), int(library.group(3))) == MAJOR_MINOR, info
    assert re.search(r"Manufacturer\s+Strongroom", info), info
    # When the agent does not answer C_GetInfo (an older agent), the module gives its own version: the same one.
    source = (ROOT / "pkcs11" / "src" / "p11.c").read_text()
    own = tuple(int(n) for n in re.findall(r"^#define LIB_VERSION_(?:MAJOR|MINOR) (\d+)$", source, re.M))
    assert own == MAJOR_MINOR, (own, __version__)
