"""Process hardening: keep key material and credentials out of core dumps and debuggers.

Every Strongroom process that holds a secret (node, agent, KMS gateway, the CLI while it
handles a password or share) calls :func:`harden_process` once at start-up, before any
secret is loaded.
It applies what an unprivileged Linux process can do to itself:

* ``RLIMIT_CORE`` = (0, 0): no core file, and (for non-root) no way to raise the
  limit again later.
* ``prctl(PR_SET_DUMPABLE, 0)``: the kernel will not dump core (this covers
  ``core_pattern`` pipes, which ignore RLIMIT_CORE), ``/proc/<pid>/mem`` and
  friends become root-owned, and ``ptrace`` attach by other processes of the same
  uid is refused. Root with ``CAP_SYS_PTRACE`` can still attach: this is a
  logical control, not a hardware boundary.

Nothing here raises on a platform that lacks a facility; each step's outcome is
reported so the node can log it and decide policy.

:func:`wipe` zeroes a ``bytearray`` in place. Limit, stated honestly: Python
``bytes``/``str`` are immutable and may have been copied by the interpreter or
by libraries (and the garbage collector frees without clearing), so only
secrets that were kept in a ``bytearray`` from the start can be wiped, and even
then copies made earlier (e.g. by ``bytes(buf)``) are out of reach.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "die_with_parent",
    "HardeningReport",
    "HardeningStep",
    "get_dumpable",
    "harden_process",
    "wipe",
]

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4

STEP_RLIMIT_CORE = "rlimit_core"
STEP_NOT_DUMPABLE = "prctl_dumpable"


@dataclass(frozen=True)
class HardeningStep:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class HardeningReport:
    steps: tuple[HardeningStep, ...]

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    @property
    def succeeded(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.steps if step.ok)

    @property
    def failed(self) -> tuple[HardeningStep, ...]:
        return tuple(step for step in self.steps if not step.ok)

    def step(self, name: str) -> HardeningStep | None:
        for step in self.steps:
            if step.name == name:
                return step
        return None


def harden_process() -> HardeningReport:
    """Apply every hardening step; never raises. Idempotent."""
    return HardeningReport(steps=(_disable_core_dumps(), _set_not_dumpable()))


def _disable_core_dumps() -> HardeningStep:
    try:
        import resource
    except ImportError:  # e.g. Windows
        return HardeningStep(STEP_RLIMIT_CORE, False, "resource module unavailable on this platform")
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        return HardeningStep(STEP_RLIMIT_CORE, False, f"setrlimit(RLIMIT_CORE, 0) failed: {exc}")
    return HardeningStep(STEP_RLIMIT_CORE, True, "RLIMIT_CORE set to (0, 0)")


@functools.lru_cache(maxsize=1)
def _libc_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` with a typed signature, or None if the platform has none."""
    if not sys.platform.startswith("linux"):
        return None
    # CDLL(None) is the already-loaded process image, so no soname guessing;
    # find_library is the fallback for unusual interpreters.
    candidates: list[str | None] = [None, ctypes.util.find_library("c")]
    for name in candidates:
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            prctl = libc.prctl
        except (OSError, AttributeError):
            continue
        prctl.restype = ctypes.c_int
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        return prctl
    return None


def _set_not_dumpable() -> HardeningStep:
    prctl = _libc_prctl()
    if prctl is None:
        return HardeningStep(STEP_NOT_DUMPABLE, False, f"prctl unavailable on {sys.platform}")
    if prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        return HardeningStep(STEP_NOT_DUMPABLE, False, f"prctl(PR_SET_DUMPABLE, 0) failed: errno {err}")
    # Read it back: a seccomp filter could fake success without applying it.
    if get_dumpable() != 0:
        return HardeningStep(STEP_NOT_DUMPABLE, False, "PR_SET_DUMPABLE did not take effect")
    return HardeningStep(STEP_NOT_DUMPABLE, True, "process marked not dumpable")


def get_dumpable() -> int | None:
    """``prctl(PR_GET_DUMPABLE)``: 0 when hardened; None where prctl is unavailable."""
    prctl = _libc_prctl()
    if prctl is None:
        return None
    value = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
    return None if value < 0 else int(value)


def wipe(buf: bytearray) -> None:
    """Overwrite ``buf`` with zeros in place (its length is unchanged).

    Only mutable buffers can be wiped; ``bytes`` is refused rather than
    silently left intact. See the module docstring for what this cannot reach.
    """
    if not isinstance(buf, bytearray):
        raise TypeError(f"wipe() needs a bytearray, got {type(buf).__name__}")
    size = len(buf)
    if size == 0:
        return
    # memset through ctypes writes the existing storage; a slice assignment
    # would also work, but memset does not build a temporary zero buffer.
    view = (ctypes.c_char * size).from_buffer(buf)
    try:
        ctypes.memset(ctypes.addressof(view), 0, size)
    finally:
        # Release the buffer export so the bytearray can be resized/freed again.
        del view


def die_with_parent(parent_pid: int, signum: int = 15) -> bool:
    """Have the kernel send ``signum`` to this process when its parent dies (``PR_SET_PDEATHSIG``).

    Called in a forked worker: a node's workers must not outlive its main process (they hold
    the cluster key and serve on the node's port). The parent may have died between ``fork``
    and this call, which the signal would then never report, so the parent is checked
    afterwards: returns False when it is already gone (the caller exits).
    """
    import os

    prctl = _libc_prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    return os.getppid() == parent_pid
