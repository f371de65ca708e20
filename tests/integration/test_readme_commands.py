"""The README's front door, followed word for word: every fenced ``sh`` block of README.md runs, in
order, in one shell, against a fresh directory, unless a ``<!-- readme-test: skip: WHY -->`` line
right above it says why it cannot (a block without either fails this test, so a new block decides).

Paths under /tmp/ in the blocks are moved into the test's temporary directory; ``<admin_password>``
is what the block's ``up`` printed. Every command must succeed (an ERR trap reports the first that
fails, with its line)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SKIP = re.compile(r"<!-- readme-test: skip: (?P<why>[^>]+?) -->")
BLOCK_TIMEOUT = 240.0
SENTINEL = "__README_BLOCK_DONE__"


@dataclass(frozen=True)
class Block:
    line: int
    section: str
    text: str
    skip: str | None


def blocks(markdown: str) -> list[Block]:
    found: list[Block] = []
    lines = markdown.splitlines()
    section = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            section = line.lstrip("# ").strip()
        fence = re.match(r"^```(\S*)\s*$", line)
        if not fence:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        if fence.group(1) in ("sh", "bash", "shell"):
            above = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marked = SKIP.search(above)
            found.append(Block(index + 1, section, "\n".join(lines[index + 1:end]),
                               marked.group("why").strip() if marked else None))
        index = end + 1
    return found


class Shell:
    """One bash that runs the blocks in turn: what a block exports or sources, the next one sees."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                                        env=env, start_new_session=True)

    def run(self, script: str, timeout: float = BLOCK_TIMEOUT) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        # The block's own stdin is /dev/null: a command that reads (an interactive shell) sees end of input.
        self.process.stdin.write(f"__failed=\n{{\n{script}\n}} </dev/null\necho {SENTINEL} \"$__failed\"\n")
        self.process.stdin.flush()
        timer = threading.Timer(timeout, self.process.kill)
        timer.start()
        output = []
        try:
            for line in self.process.stdout:
                if line.startswith(SENTINEL):
                    failed = line[len(SENTINEL):].strip()
                    assert not failed, f"a README command failed ({failed}); the block's output:\n{''.join(output)}"
                    return "".join(output)
                output.append(line)
        finally:
            timer.cancel()
        raise AssertionError(f"the shell ended (timeout {timeout:.0f} s?); output:\n{''.join(output)}")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
def workplace(tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "work"
    work.mkdir()
    for name in ("strongroom", "run-tests"):
        (work / name).symlink_to(ROOT / name)
    try:
        yield work
    finally:
        for summary in (tmp_path / "tmp").glob("*/cluster.json"):
            subprocess.run([str(ROOT / "strongroom"), "down", "--dir", str(summary.parent)], capture_output=True,
                           timeout=120)


def test_every_shell_block_of_the_readme_runs_or_says_why_not(workplace: Path) -> None:
    found = blocks(README.read_text())
    assert found, "README.md has no sh blocks"
    runnable = [b for b in found if b.skip is None]
    sections = {b.section for b in runnable}
    assert {"Quick start", "Using the CLI"} <= sections, sections  # the first hour is never skipped
    temp = workplace.parent / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "AWS_"))}
    env.update(HOME=str(workplace), PATH=f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}")
    shell = Shell(workplace, env)
    password: str | None = None
    try:
        shell.run("set -E -o pipefail\ntrap '[ -n \"$__failed\" ] || __failed=\"line $LINENO: $BASH_COMMAND\"' ERR")
        for block in runnable:
            script = block.text.replace("/tmp/", f"{temp}/")
            if "<admin_password>" in script:
                assert password is not None, f"README line {block.line} uses <admin_password> before an `up` printed it"
                script = script.replace("<admin_password>", password)
            output = shell.run(script)
            for match in re.finditer(r"^\{\n.*?^\}$", output, re.MULTILINE | re.DOTALL):
                printed = json.loads(match.group(0))
                if isinstance(printed, dict) and printed.get("admin_password"):
                    password = printed["admin_password"]
    finally:
        shell.close()
    assert password is not None, "no block's `up` printed an admin password"


def test_the_harness_finds_blocks_and_skip_reasons() -> None:
    sample = ("# A\n\n<!-- readme-test: skip: needs a TPM -->\n```sh\nfalse\n```\n\n"
              "## B\n```sh\ntrue\n```\n```json\n{}\n```\n")
    assert blocks(sample) == [Block(4, "A", "false", "needs a TPM"), Block(9, "B", "true", None)]


def test_shell_reports_the_failing_command(tmp_path: Path) -> None:
    shell = Shell(tmp_path, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    try:
        shell.run("set -E -o pipefail\ntrap '[ -n \"$__failed\" ] || __failed=\"line $LINENO: $BASH_COMMAND\"' ERR")
        assert shell.run("echo one") == "one\n"
        with pytest.raises(AssertionError, match="ls /no/such/dir"):
            shell.run("ls /no/such/dir\necho after")
    finally:
        shell.close()


def test_every_tool_the_readme_blocks_name_is_installed() -> None:
    """Not a skip in disguise: a tool the blocks call must be here (.ci/run installs them)."""
    commands = {"openssl", "pkcs11-tool"} & set(re.findall(r"\b[\w-]+\b", README.read_text()))
    assert [c for c in commands if shutil.which(c) is None] == []
