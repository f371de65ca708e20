"""Machines for the deployment-guide test: each "host" a shell in namespaces of its own.

A :class:`Host` is one long-running ``bash`` (an operator's terminal on that machine):

* its network: a namespace of a :class:`tests.netns.Topology` zone (its own address on the test
  bridge), or the root namespace for the administrator's workstation (which needs the Internet to
  build the packages);
* its file system: a mount namespace in which /etc, /var, /opt, /root, /srv, /home and /usr/local
  are overlays of the real ones (what the host writes there stays its own), /run and /tmp are
  empty tmpfs, and the test's own folder is at /run/harness; its hostname (UTS namespace) is its
  name;
* stand-ins in /usr/local/bin for what needs systemd, ssh or the network: ``systemctl``,
  ``journalctl``, ``scp`` and ``apt-get`` (tests/deploy_shims/).

:meth:`Host.run` feeds it one fenced block of the guide (a file it sources, stdin from /dev/null),
under ``set -euo pipefail``: the block's first failing command ends the shell, as a careful
operator would stop. Variables set by one block stay for the next block on the same host.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BlockFailed", "Host", "OVERLAID"]

SHIMS = Path(__file__).resolve().parent / "deploy_shims"
#: The directories each host has its own copy of (an overlay on the real one).
OVERLAID = ("etc", "var", "opt", "root", "srv", "home", "usr/local")
#: What a fresh root login has: no venv, no pyenv, no STRONGROOM_* of the test runner.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash", "LANG": "C.UTF-8", "TERM": "dumb"}
#: Passed on to the workstation only: how this machine reaches a package index (pip).
PASSED_TO_WORKSTATION = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                         "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
MARK = "__strongroom_block_done__"


class BlockFailed(AssertionError):
    pass


@dataclass
class Host:
    name: str
    #: Its network namespace (None: the root namespace).
    netns: str | None
    #: Where its overlays' upper layers, its journal of commands and output live.
    state: Path
    #: The folder every host sees at /run/harness (block files, hosts.json).
    harness: Path
    process: subprocess.Popen[str] | None = None
    transcript: list[str] = field(default_factory=list)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _count: int = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Host:
        for directory in OVERLAID:
            (self.state / "upper" / directory).mkdir(parents=True, exist_ok=True)
            (self.state / "work" / directory).mkdir(parents=True, exist_ok=True)
        mounts = "\n".join(
            f"mount -t overlay overlay -o lowerdir=/{d},upperdir={self.state}/upper/{d},workdir={self.state}/work/{d}"
            f" /{d}" for d in OVERLAID)
        setup = f"""set -e
{mounts}
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir /run/harness
mount --bind {self.harness} /run/harness
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
hostname {self.name}
for shim in systemctl journalctl scp apt-get; do install -m 0755 /run/harness/shims/$shim /usr/local/bin/$shim; done
exec /bin/bash --noprofile --norc
"""
        env = dict(BASE_ENV)
        if self.netns is None:
            env.update({k: v for k, v in os.environ.items() if k in PASSED_TO_WORKSTATION or k.startswith("PIP_")})
        prefix = [] if self.netns is None else ["ip", "netns", "exec", self.netns]
        self.process = subprocess.Popen(
            [*prefix, "unshare", "--uts", "--mount", "--propagation", "private", "--", "/bin/bash", "--noprofile",
             "--norc", "-c", setup],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True, cwd="/")
        threading.Thread(target=self._read, daemon=True).start()
        self.run("set -euo pipefail; cd ~", what="the host's shell")
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def run(self, script: str, *, timeout: float = 300.0, what: str = "block") -> str:
        """Run ``script`` in the host's shell; its output. BlockFailed if it fails or outlasts ``timeout``."""
        assert self.process is not None and self.process.stdin is not None
        self._count += 1
        path = self.harness / "blocks" / f"{self.name}-{self._count:03d}.sh"
        path.parent.mkdir(exist_ok=True)
        path.write_text(script + "\n")
        self.transcript.append(f"### {self.name}: {what}\n{script}")
        started = time.monotonic()
        try:
            self.process.stdin.write(f"source /run/harness/blocks/{path.name} </dev/null; echo {MARK}\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise BlockFailed(f"{self.name}: the shell is gone (an earlier block failed)") from None
        output: list[str] = []
        while True:
            remaining = timeout - (time.monotonic() - started)
            try:
                line = self._lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise BlockFailed(f"{self.name}: {what} did not finish within {timeout:.0f} s; output so far:\n"
                                  + "".join(output)) from None
            if line is None:
                code = self.process.wait()
                self.transcript.append("".join(output) + f"[shell exited with status {code}]")
                raise BlockFailed(f"{self.name}: {what} failed (exit status {code}):\n{script}\n--- output:\n"
                                  + "".join(output))
            if line.rstrip("\n") == MARK:
                break
            output.append(line)
        text = "".join(output)
        self.transcript.append(text + f"[{time.monotonic() - started:.1f} s]")
        return text

    def close(self) -> None:
        """End the shell and every process of its session (services started by the shim have their own)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


def write_hosts_file(harness: Path, hosts: list[Host]) -> None:
    """What the scp stand-in needs: each host's shell pid (its namespaces)."""
    (harness / "hosts.json").write_text(json.dumps({h.name: h.pid for h in hosts}))


def install_shims(harness: Path) -> None:
    shutil.copytree(SHIMS, harness / "shims", dirs_exist_ok=True)
