"""The ``tpm`` seal: the key-encryption key sealed by the host's TPM 2.0, through tpm2-tools.

The KEK is made in the node (``os.urandom``) and sealed into a TPM *sealed data object*
(``keyedhash``, ``fixedTPM|fixedParent``) under a primary key that the TPM derives from its
owner hierarchy's seed with a fixed template (the TCG provisioning guidance's ECC P-256 storage
root key). The same TPM derives the same primary at every start, so nothing has to be kept in
the TPM; another TPM derives another primary, and the sealed object's private part (encrypted
and integrity-protected under the primary) fails to load there. The object's public and private
parts go in the seal document (base64): they are useless without this TPM.

Options (``node.toml [seal]``):

``tcti``
    the TPM to use, in tpm2-tools' TCTI syntax; default ``device:/dev/tpmrm0`` (the kernel's
    resource manager). Tests use ``swtpm:host=127.0.0.1,port=N``.
``pcrs``
    optional PCR policy, e.g. ``sha256:0,7`` (firmware and Secure Boot state): the object then
    opens only while those PCRs hold the values they had when it was sealed (no password works
    instead). A firmware or boot-configuration update changes them: migrate the seal
    (``strongroom seal migrate``) before such an update, or the node refuses to start.
``owner_auth_file``
    optional: a file holding the owner hierarchy's authorization value, when the host's owner
    hierarchy has one (read by tpm2-tools itself, never passed on a command line).

Why tpm2-tools and not tpm2-pytss: tpm2-tools is one Debian package (``tpm2-tools``) on the host
and in CI, where tpm2-pytss has no wheels and builds against ``libtss2-dev`` with a C compiler at
install time on every node host. The KEK never touches a file: it goes to ``tpm2_create`` through
its standard input and comes back from ``tpm2_unseal`` through its standard output. The context
files the tools exchange (``*.ctx``) hold objects encrypted by the TPM's context key, in a
private temporary directory removed afterwards.

Nothing is kept inside the TPM, so zeroization has nothing to remove there: overwriting the seal
file removes the only copy of the blobs.

Errors: the TPM not answering (no device, swtpm down, TPM busy) is :class:`SealUnavailable`;
an object that fails the TPM's integrity check (another TPM, a cleared owner hierarchy, an
altered blob) or a PCR policy that fails is :class:`SealError`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strongroom.seal.base import KEK_BYTES, KekProvider, SealedIdentity, SealError, SealUnavailable, register

DEFAULT_TCTI = "device:/dev/tpmrm0"
#: TCG "TPM 2.0 Provisioning Guidance" storage root key template (ECC NIST P-256, AES-128-CFB):
#: fixed, so the same owner seed always yields the same primary key.
PRIMARY_TEMPLATE = "tcg-srk-ecc-p256"
PRIMARY_ALGORITHM = "ecc256:aes128cfb"
PRIMARY_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt"
#: noda: a failed unseal never counts towards the TPM's dictionary-attack lockout (the object has
#: no password to guess). userwithauth only without a PCR policy: with one, the policy is the only way in.
SEALED_ATTRIBUTES = "fixedtpm|fixedparent|noda"
TOOL_TIMEOUT = 30.0
MAX_BLOB = 4096  # a TPM2B_PUBLIC / TPM2B_PRIVATE of a sealed object is a few hundred bytes
_PCRS = re.compile(r"^(sha1|sha256|sha384|sha512):([0-9]{1,2})(,[0-9]{1,2})*$")
_RC = re.compile(r"\((0x[0-9a-fA-F]+)\)")
#: TCTIs whose transient objects vanish when the tool's connection closes (a resource manager).
_MANAGED_TCTIS = ("device:/dev/tpmrm", "tabrmd")
_TCTI_LAYER = 0xA  # TSS2_TCTI_RC_LAYER >> 16
_TPM_WARNING = 0x900  # TPM_RC_WARN | TPM_RC_VER1: the TPM cannot do it *now* (retry, yielded, memory, testing)
_TPM_FORMAT_ONE = 0x080


def parse_pcrs(value: Any) -> str | None:
    """``"sha256:0,7"`` checked (bank, indexes 0..23, no duplicates); None when no policy is asked for."""
    if value in (None, ""):
        return None
    text = str(value).replace(" ", "")
    if not _PCRS.match(text):
        raise SealError(f"seal option pcrs={value!r}: expected BANK:INDEX[,INDEX...] such as sha256:0,7")
    bank, indexes = text.split(":", 1)
    numbers = [int(i) for i in indexes.split(",")]
    if any(n > 23 for n in numbers) or len(set(numbers)) != len(numbers):
        raise SealError(f"seal option pcrs={value!r}: PCR indexes are 0..23, each once")
    return f"{bank}:{','.join(str(n) for n in sorted(numbers))}"


def _classify(tool: str, tcti: str, stderr: str) -> SealError:
    """A failed tool's error: unavailable (TPM not answering or busy) or a refusal (tamper response)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    detail = next((line for line in reversed(lines) if line.startswith("ERROR: ") and "Unable to run" not in line),
                  lines[-1] if lines else "no message")
    detail = detail.removeprefix("ERROR: ")
    if "Could not load tcti" in stderr or "Failed to instantiate TCTI" in stderr:
        return SealUnavailable(f"the TPM does not answer (tcti {tcti}): {detail}")
    codes = [int(code, 16) for code in _RC.findall(stderr)]
    if codes:
        rc = codes[-1]
        if rc >> 16 == _TCTI_LAYER:
            return SealUnavailable(f"the TPM does not answer (tcti {tcti}): {detail}")
        if rc >> 16 == 0 and not rc & _TPM_FORMAT_ONE and rc & _TPM_WARNING == _TPM_WARNING:
            return SealUnavailable(f"the TPM is busy (tcti {tcti}): {detail}")
    return SealError(f"the TPM refused to open this node's seal ({tool}: {detail}): another TPM, a cleared owner "
                     "hierarchy, changed PCRs or an altered seal; refusing to start")


@dataclass
class _Session:
    """One sequence of tpm2-tools commands against one TPM, in a private directory for context files.

    Without a resource manager (swtpm, ``/dev/tpm0``) every object a tool loads stays loaded after it
    exits, and a TPM holds only a few: the session flushes whatever each command left behind (and holds
    a lock so that two processes of this host do not flush each other's objects).
    """

    tcti: str
    workdir: Path
    managed: bool
    baseline: frozenset[str] = field(default_factory=frozenset)

    def path(self, name: str) -> str:
        return str(self.workdir / name)

    def run(self, args: Sequence[str], *, stdin: bytes | None = None, binary_out: bool = False) -> bytes:
        tool = args[0]
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("TPM2TOOLS_", "TSS2_"))}
        environment["TSS2_LOG"] = "all+ERROR"
        try:
            result = subprocess.run([tool, "-T", self.tcti, *args[1:]], input=stdin if stdin is not None else b"",
                                    capture_output=True, env=environment, timeout=TOOL_TIMEOUT, cwd=self.workdir,
                                    check=False)
        except FileNotFoundError:
            raise SealUnavailable(f"{tool} is not installed: the tpm seal needs tpm2-tools (Debian: tpm2-tools)") \
                from None
        except subprocess.TimeoutExpired:
            raise SealUnavailable(f"the TPM did not answer {tool} within {TOOL_TIMEOUT:.0f} s (tcti {self.tcti})") \
                from None
        finally:
            if not self.managed:
                self._flush_new()
        if result.returncode != 0:
            raise _classify(tool, self.tcti, result.stderr.decode(errors="replace"))
        return result.stdout

    def transient_handles(self) -> frozenset[str]:
        """Loaded objects and sessions (a failed policy session stays behind, as does every loaded object)."""
        handles: set[str] = set()
        for capability in ("handles-transient", "handles-loaded-session", "handles-saved-session"):
            result = subprocess.run(["tpm2_getcap", "-T", self.tcti, capability], capture_output=True,
                                    text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
            if result.returncode != 0:
                raise _classify("tpm2_getcap", self.tcti, result.stderr)
            handles.update(re.findall(r"0x[0-9a-fA-F]+", result.stdout))
        return frozenset(handles)

    def _flush_new(self) -> None:
        try:
            for handle in sorted(self.transient_handles() - self.baseline):
                subprocess.run(["tpm2_flushcontext", "-T", self.tcti, handle], capture_output=True,
                               timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
        except (SealError, OSError, subprocess.TimeoutExpired):
            pass  # the TPM went away: nothing of ours stays loaded in it then

    # --- the operations ---------------------------------------------------------------------

    def primary(self, owner_auth_file: str | None) -> str:
        """The storage primary derived from the owner seed (the same on every call on the same TPM)."""
        context = self.path("primary.ctx")
        args = ["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", PRIMARY_ALGORITHM,
                "-a", PRIMARY_ATTRIBUTES, "-c", context]
        if owner_auth_file:
            args += ["-P", f"file:{owner_auth_file}"]
        self.run(args)
        return context

    def seal(self, parent: str, secret: bytearray, pcrs: str | None) -> tuple[bytes, bytes]:
        attributes = SEALED_ATTRIBUTES
        args = ["tpm2_create", "-Q", "-C", parent, "-g", "sha256", "-i", "-",
                "-u", self.path("sealed.pub"), "-r", self.path("sealed.priv")]
        if pcrs:
            policy = self.path("pcr.policy")
            self.run(["tpm2_createpolicy", "-Q", "--policy-pcr", "-l", pcrs, "-L", policy])
            args += ["-L", policy]
        else:
            attributes += "|userwithauth"
        self.run([*args, "-a", attributes], stdin=bytes(secret))
        return Path(self.path("sealed.pub")).read_bytes(), Path(self.path("sealed.priv")).read_bytes()

    def unseal(self, parent: str, public: bytes, private: bytes, pcrs: str | None) -> bytearray:
        Path(self.path("sealed.pub")).write_bytes(public)
        Path(self.path("sealed.priv")).write_bytes(private)
        obj = self.path("sealed.ctx")
        self.run(["tpm2_load", "-Q", "-C", parent, "-u", self.path("sealed.pub"), "-r", self.path("sealed.priv"),
                  "-c", obj])
        args = ["tpm2_unseal", "-c", obj]
        if pcrs:
            args += ["-p", f"pcr:{pcrs}"]
        return bytearray(self.run(args))


def _lock_path(tcti: str) -> Path:
    digest = hashlib.sha256(tcti.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"strongroom-tpm-{os.getuid()}-{digest}.lock"


@contextlib.contextmanager
def _session(tcti: str) -> Iterator[_Session]:
    managed = tcti.startswith(_MANAGED_TCTIS)
    with tempfile.TemporaryDirectory(prefix="strongroom-tpm-") as workdir:
        if managed:
            yield _Session(tcti, Path(workdir), managed=True)
            return
        try:
            fd = os.open(_lock_path(tcti), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # e.g. someone else's file (or a symlink) in its place
            raise SealUnavailable(f"cannot open the TPM lock file {_lock_path(tcti)}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            session = _Session(tcti, Path(workdir), managed=False)
            session.baseline = session.transient_handles()
            yield session
        finally:
            os.close(fd)


def _unb64(stored: Mapping[str, Any], name: str) -> bytes:
    try:
        data = base64.b64decode(stored[name], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise SealError(f"the tpm seal's record has no valid {name!r}; refusing to start") from None
    if not data or len(data) > MAX_BLOB:
        raise SealError(f"the tpm seal's {name!r} has an impossible size ({len(data)} bytes); refusing to start")
    return data


@register
class TpmKek(KekProvider):
    type = "tpm"

    @property
    def tcti(self) -> str:
        return str(self.options.get("tcti") or DEFAULT_TCTI)

    @property
    def owner_auth_file(self) -> str | None:
        value = self.options.get("owner_auth_file")
        return str(value) if value else None

    def _check_tools(self) -> None:
        if shutil.which("tpm2_createprimary") is None:
            raise SealUnavailable("tpm2-tools are not installed: the tpm seal needs them (Debian: tpm2-tools)")

    def create(self, identity: SealedIdentity) -> tuple[bytearray, dict[str, Any]]:
        self._check_tools()
        pcrs = parse_pcrs(self.options.get("pcrs"))
        kek = bytearray(os.urandom(KEK_BYTES))
        with _session(self.tcti) as tpm:
            parent = tpm.primary(self.owner_auth_file)
            public, private = tpm.seal(parent, kek, pcrs)
            # Open it once before relying on it: a seal that cannot be opened would lose the key.
            check = tpm.unseal(parent, public, private, pcrs)
        try:
            if check != kek:
                raise SealError("the TPM returned another value than the one sealed; not using this TPM")
        finally:
            check[:] = bytes(len(check))
        stored: dict[str, Any] = {"primary": PRIMARY_TEMPLATE, "public": base64.b64encode(public).decode(),
                                  "private": base64.b64encode(private).decode()}
        if pcrs:
            stored["pcrs"] = pcrs
        return kek, stored

    def recover(self, identity: SealedIdentity, stored: Mapping[str, Any]) -> bytearray:
        if not isinstance(stored, Mapping) or stored.get("primary") != PRIMARY_TEMPLATE:
            raise SealError("the tpm seal's record names no known primary key template; refusing to start")
        public, private = _unb64(stored, "public"), _unb64(stored, "private")
        pcrs = parse_pcrs(stored.get("pcrs"))  # the policy the object was sealed with, not today's option
        self._check_tools()
        with _session(self.tcti) as tpm:
            kek = tpm.unseal(tpm.primary(self.owner_auth_file), public, private, pcrs)
        if len(kek) != KEK_BYTES:
            kek[:] = bytes(len(kek))
            raise SealError(f"the TPM unsealed {len(kek)} bytes, not a {KEK_BYTES}-byte key; refusing to start")
        return kek

    def describe(self) -> str:
        pcrs = parse_pcrs(self.options.get("pcrs"))
        return f"tpm ({self.tcti}" + (f", PCR policy {pcrs})" if pcrs else ")")
