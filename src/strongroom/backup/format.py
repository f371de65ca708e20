"""The backup file: every store record at one revision, cluster metadata, a checksum and a signature.

Layout (all integers big-endian)::

    b"STRONGROOM-BACKUP/1\\n"          magic line (names the format version)
    msgpack header map                 the BackupHeader fields, by name
    msgpack array of [key, value, version]   sorted by key, keys unique
    32 bytes  body digest              SHA-256 of everything above
    2 bytes   signature length         0 = unsigned
    N bytes   signature                DER ECDSA by the cluster identity key over the body digest
    32 bytes  file digest              SHA-256 of everything above (seals the signature too)

Values are the barrier's ciphertext, copied as the store holds them; ``version`` is
kept because the barrier's associated data binds it, so a record restored under
another version would not open. The file is therefore useless without the
cluster key, and the format itself needs no secret.

The signature (:data:`SIGNATURE_ALGORITHM`) is ECDSA on P-384 over the 32-byte
body digest passed as a prehashed SHA-256 value, i.e.
``ec.ECDSA(utils.Prehashed(hashes.SHA256()))``: the signer signs exactly the
checksum that is stored and shown, and its strength is bounded by SHA-256's, like
the checksum's. The trailing file digest exists so that *any* change to the file,
including the signature bytes, is caught offline without a key; it proves nothing
about who wrote the file (anyone can recompute it) — only the signature does.

Decoding checks the file digest before it parses anything, then parses with hard
limits, and reports every problem as :class:`BackupError` with a sentence an
operator can act on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import itertools
import math
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypedDict, TypeGuard

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

FORMAT_VERSION = 1
MAGIC_PREFIX = b"STRONGROOM-BACKUP/"
MAGIC = MAGIC_PREFIX + str(FORMAT_VERSION).encode() + b"\n"
FILE_EXTENSION = ".srbk"
#: The only signature this version writes; see the module docstring.
SIGNATURE_ALGORITHM = "ecdsa-p384-prehashed-sha256"
KNOWN_TRIGGERS = ("manual", "scheduled", "activation", "membership")

MAX_FILE_BYTES = 1 << 30
MAX_RECORDS = 1_000_000
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 16 * 1024  # room for post-quantum signatures later; P-384 DER is <= 104
MAX_CERTIFICATE_CHARS = 64 * 1024
MAX_TEXT_CHARS = 256

DIGEST_BYTES = 32
_SIG_LEN_BYTES = 2
# Smallest file: magic, a header map, an empty array, both digests and an empty signature.
_MIN_FILE_BYTES = len(MAGIC) + 2 + 2 * DIGEST_BYTES + _SIG_LEN_BYTES
_MAGIC_PEEK = len(MAGIC_PREFIX) + 11  # enough to name any version in an error
_LATEST_CREATED = 253402300800.0  # 10000-01-01: beyond it a UTC file name cannot be formatted

# Bounds for msgpack itself, so a hostile file cannot make the parser allocate much
# more than it holds: arrays inside a record have 3 items, maps only the header's.
# (read_array_header, used for the record list, is not bound by max_array_len;
# MAX_RECORDS is checked by hand.)
class _UnpackLimits(TypedDict):
    max_buffer_size: int
    max_str_len: int
    max_bin_len: int
    max_array_len: int
    max_map_len: int
    max_ext_len: int


_UNPACK_LIMITS: _UnpackLimits = {
    "max_buffer_size": 4 * MAX_VALUE_BYTES,
    "max_str_len": MAX_CERTIFICATE_CHARS,
    "max_bin_len": MAX_VALUE_BYTES,
    "max_array_len": 3,
    "max_map_len": 32,
    "max_ext_len": 0,
}
_READ_SIZE = 256 * 1024

#: A cluster id names a folder of the catalog, so it must be a safe file name.
CLUSTER_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TRIGGER = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_ALGORITHM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class BackupError(Exception):
    """A backup could not be made, read, verified or found; the message says why."""


@dataclass(frozen=True)
class BackupHeader:
    """Cluster metadata stored in clear at the head of a backup (no secret in it)."""

    cluster_id: str
    cluster_name: str
    revision: int  # store revision of the snapshot
    node_id: str  # the node that made it
    trigger: str  # "manual", "scheduled", "activation", "membership", ...
    record_count: int
    backup_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: float = field(default_factory=time.time)
    trust_anchor_fingerprint: str | None = None
    cluster_certificate_pem: str | None = None
    signature_algorithm: str | None = None
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class BackupRecord:
    """One store record as the barrier sealed it; ``version`` is part of the seal's AAD."""

    key: str
    value: bytes
    version: int


@dataclass(frozen=True)
class Backup:
    """A decoded, checksum-verified backup. ``digest`` is the body's SHA-256 (what is signed)."""

    header: BackupHeader
    records: list[BackupRecord]
    digest: bytes
    signature: bytes | None

    @property
    def signed(self) -> bool:
        return self.signature is not None


_HEADER_FIELDS = tuple(f.name for f in dataclasses.fields(BackupHeader))


# --------------------------------------------------------------------------- encoding


def encode_backup(
    header: BackupHeader,
    records: Iterable[BackupRecord],
    sign: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """The backup file's bytes. ``sign(body_digest)`` returns a DER signature (see module doc).

    Refuses (:class:`BackupError`) anything :func:`decode_backup` would refuse, so a
    backup that was written can always be read back.
    """
    header = _header_for_signer(header, sign)
    _check_header(header)
    ordered = _sorted_records(list(records), header.record_count)

    packer = msgpack.Packer(use_bin_type=True)
    parts = [MAGIC, packer.pack(_header_map(header)), packer.pack_array_header(len(ordered))]
    for record in ordered:
        parts.append(packer.pack([record.key, bytes(record.value), record.version]))
    body = b"".join(parts)

    digest = hashlib.sha256(body).digest()
    signature = b"" if sign is None else _signature_from(sign, digest)
    trailer = digest + len(signature).to_bytes(_SIG_LEN_BYTES, "big") + signature
    sealed = body + trailer
    data = sealed + hashlib.sha256(sealed).digest()
    if len(data) > MAX_FILE_BYTES:
        raise BackupError(f"the backup would be {len(data)} bytes, more than the {MAX_FILE_BYTES}-byte limit")
    return data


def _header_for_signer(header: BackupHeader, sign: Callable[[bytes], bytes] | None) -> BackupHeader:
    # The header is inside the signed body, so it must name the algorithm before signing.
    if sign is None:
        if header.signature_algorithm is not None:
            raise BackupError("the header names a signature algorithm but no signer was given")
        return header
    if header.signature_algorithm is None:
        return dataclasses.replace(header, signature_algorithm=SIGNATURE_ALGORITHM)
    if header.signature_algorithm != SIGNATURE_ALGORITHM:
        raise BackupError(f"cannot sign with {header.signature_algorithm!r}; this version signs with "
                          f"{SIGNATURE_ALGORITHM!r}")
    return header


def _signature_from(sign: Callable[[bytes], bytes], digest: bytes) -> bytes:
    signature = sign(digest)
    if not isinstance(signature, (bytes, bytearray)) or not 1 <= len(signature) <= MAX_SIGNATURE_BYTES:
        raise BackupError(f"the signer returned no usable signature (1 to {MAX_SIGNATURE_BYTES} bytes expected)")
    return bytes(signature)


def _header_map(header: BackupHeader) -> dict[str, Any]:
    values = {name: getattr(header, name) for name in _HEADER_FIELDS}
    values["created"] = float(header.created)
    return values


def ecdsa_signer(private_key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    """A ``sign`` callable for :func:`encode_backup` (the node uses its identity key's own)."""
    return lambda digest: private_key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


# --------------------------------------------------------------------------- decoding


def decode_backup(data: bytes, *, max_bytes: int = MAX_FILE_BYTES) -> Backup:
    """Parse and check a whole backup file; raises :class:`BackupError` and nothing else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BackupError(f"a backup is bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise BackupError(f"the file is {len(data)} bytes, more than the {max_bytes}-byte limit")
    _check_magic(data[:_MAGIC_PEEK])
    if len(data) < _MIN_FILE_BYTES:
        raise BackupError(f"the file is truncated ({len(data)} bytes is too short for a backup)")
    view = memoryview(data)
    # Integrity before interpretation: nothing below runs on bytes the writer did not produce.
    if not hmac.compare_digest(hashlib.sha256(view[:-DIGEST_BYTES]).digest(), data[-DIGEST_BYTES:]):
        raise BackupError("checksum mismatch: the file was altered or truncated")

    header, records, body_end = _parse_body(data)
    digest, signature = _parse_trailer(data, body_end)
    if not hmac.compare_digest(hashlib.sha256(view[:body_end]).digest(), digest):
        raise BackupError("checksum mismatch: the body digest does not match the body (the file was forged "
                          "or the writer is broken)")
    if (signature is None) != (header.signature_algorithm is None):
        raise BackupError("malformed backup: the header and the trailer disagree on whether it is signed")
    return Backup(header, records, digest, signature)


def _check_magic(head: bytes) -> None:
    """``head`` is the first bytes of the file (a few more than the magic line, for the message)."""
    if head.startswith(MAGIC):
        return
    if not head:
        raise BackupError("not a Strongroom backup: the file is empty")
    if MAGIC.startswith(head):
        raise BackupError("the file is truncated (it ends inside the magic line)")
    if head.startswith(MAGIC_PREFIX):
        version = re.match(rb"(\d{1,9})\n", head[len(MAGIC_PREFIX) :])
        if version is not None:
            raise BackupError(f"unsupported format version {int(version.group(1))} "
                              f"(this version of Strongroom reads version {FORMAT_VERSION})")
    raise BackupError("not a Strongroom backup (the file does not start with the STRONGROOM-BACKUP magic line)")


def _unpacker(stream: BinaryIO, **extra: Any) -> msgpack.Unpacker:
    return msgpack.Unpacker(stream, raw=False, strict_map_key=True, read_size=_READ_SIZE,
                            **_UNPACK_LIMITS, **extra)


def _parse_body(data: bytes) -> tuple[BackupHeader, list[BackupRecord], int]:
    stream = io.BytesIO(data)
    stream.seek(len(MAGIC))
    unpacker = _unpacker(stream, object_pairs_hook=list)
    header = _read_header(unpacker)
    records = _read_records(unpacker, header.record_count)
    return header, records, len(MAGIC) + unpacker.tell()


# msgpack raises many exception types for hostile input (ValueError and its
# subclasses, OutOfData, TypeError, OverflowError...); the promise of this module is
# that callers only ever see BackupError, so these boundaries catch them all.


def _read_header(unpacker: msgpack.Unpacker) -> BackupHeader:
    try:
        pairs = unpacker.unpack()
    except Exception as exc:  # noqa: BLE001 - see above
        raise BackupError(f"malformed backup header: {_describe(exc)}") from None
    return _header_from_pairs(pairs)


def _read_records(unpacker: msgpack.Unpacker, expected: int) -> list[BackupRecord]:
    try:
        count = unpacker.read_array_header()
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types on a hostile file
        raise BackupError(f"malformed backup body: the record list is missing ({_describe(exc)})") from None
    if count != expected:
        raise BackupError(f"malformed backup: the header announces {expected} records, the body holds {count}")
    records: list[BackupRecord] = []
    previous: str | None = None
    for index in range(count):
        try:
            item = unpacker.unpack()
        except Exception as exc:  # noqa: BLE001 - msgpack raises many types on a hostile file
            raise BackupError(f"malformed backup body at record {index}: {_describe(exc)}") from None
        record = _record_from(item, index)
        if previous is not None and record.key <= previous:
            raise BackupError(f"malformed backup: record {index} key {_show(record.key)} is "
                              f"{'a duplicate' if record.key == previous else 'out of order'}")
        previous = record.key
        records.append(record)
    return records


def _record_from(item: Any, index: int) -> BackupRecord:
    if not isinstance(item, list) or len(item) != 3:
        raise BackupError(f"malformed backup: record {index} is not a [key, value, version] triple")
    key, value, version = item
    record = BackupRecord(key, value, version)
    problem = _record_problem(record)
    if problem is not None:
        raise BackupError(f"malformed backup: record {index} {problem}")
    return record


def _parse_trailer(data: bytes, body_end: int) -> tuple[bytes, bytes | None]:
    end = len(data) - DIGEST_BYTES
    length_at = body_end + DIGEST_BYTES
    if length_at + _SIG_LEN_BYTES > end:
        raise BackupError("malformed backup: the trailer after the records is too short")
    digest = data[body_end:length_at]
    length = int.from_bytes(data[length_at : length_at + _SIG_LEN_BYTES], "big")
    signature = data[length_at + _SIG_LEN_BYTES : end]
    if len(signature) != length:
        raise BackupError(f"malformed backup: the trailer announces a {length}-byte signature, "
                          f"{len(signature)} bytes are there")
    if length > MAX_SIGNATURE_BYTES:
        raise BackupError(f"malformed backup: a {length}-byte signature is over the limit")
    return digest, (signature if length else None)


def _describe(exc: Exception) -> str:
    if isinstance(exc, msgpack.OutOfData):
        return "the data ends early"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


# --------------------------------------------------------------------------- validation


def _header_from_pairs(pairs: Any) -> BackupHeader:
    if not isinstance(pairs, list) or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
        raise BackupError("malformed backup header: it is not a map")
    values = dict(pairs)
    if len(values) != len(pairs):
        raise BackupError("malformed backup header: a field appears twice")
    missing = [name for name in _HEADER_FIELDS if name not in values]
    unknown = sorted(str(name) for name in values if name not in _HEADER_FIELDS)
    if missing or unknown:
        raise BackupError(f"malformed backup header: missing fields {missing}, unknown fields {unknown}")
    if isinstance(values["created"], int) and not isinstance(values["created"], bool):
        values["created"] = float(values["created"])
    header = BackupHeader(**values)
    _check_header(header)
    return header


def _check_header(header: BackupHeader) -> None:
    problem = _header_problem(header)
    if problem is not None:
        raise BackupError(f"invalid backup header: {problem}")


def _header_problem(h: BackupHeader) -> str | None:  # one rule per field reads best
    if not _is_int(h.format_version):
        return "format_version is not an integer"
    if h.format_version != FORMAT_VERSION:
        return f"unsupported format version {h.format_version} (this version reads {FORMAT_VERSION})"
    if not isinstance(h.backup_id, str) or not _is_canonical_uuid(h.backup_id):
        return f"backup_id {_show(h.backup_id)} is not a lowercase UUID"
    if not isinstance(h.cluster_id, str) or not CLUSTER_ID_PATTERN.fullmatch(h.cluster_id):
        return f"cluster_id {_show(h.cluster_id)} is not a valid id (letters, digits, '.', '_', '-'; up to 128)"
    if not _is_text(h.cluster_name, allow_empty=True):
        return f"cluster_name must be printable text of at most {MAX_TEXT_CHARS} characters"
    if not _is_text(h.node_id):
        return f"node_id must be printable text of 1 to {MAX_TEXT_CHARS} characters"
    if not isinstance(h.trigger, str) or not _TRIGGER.fullmatch(h.trigger):
        return f"trigger {_show(h.trigger)} is not a lowercase word"
    if isinstance(h.created, bool) or not isinstance(h.created, (int, float)) or not (
        math.isfinite(h.created) and 0 <= h.created < _LATEST_CREATED
    ):
        return f"created {_show(h.created)} is not a time between 1970 and 9999"
    if not _is_int(h.revision) or h.revision < 0:
        return f"revision {_show(h.revision)} is not a store revision (an integer >= 0)"
    if not _is_int(h.record_count) or not 0 <= h.record_count <= MAX_RECORDS:
        return f"record_count {_show(h.record_count)} is not between 0 and {MAX_RECORDS}"
    if h.trust_anchor_fingerprint is not None and not _is_text(h.trust_anchor_fingerprint):
        return "trust_anchor_fingerprint must be printable text or absent"
    if h.cluster_certificate_pem is not None and not (
        isinstance(h.cluster_certificate_pem, str)
        and h.cluster_certificate_pem.isascii()
        and len(h.cluster_certificate_pem) <= MAX_CERTIFICATE_CHARS
    ):
        return f"cluster_certificate_pem must be ASCII PEM text of at most {MAX_CERTIFICATE_CHARS} characters"
    if h.signature_algorithm is not None and not (
        isinstance(h.signature_algorithm, str) and _ALGORITHM.fullmatch(h.signature_algorithm)
    ):
        return f"signature_algorithm {_show(h.signature_algorithm)} is not an algorithm name"
    return None


def _sorted_records(given: list[BackupRecord], expected: int) -> list[BackupRecord]:
    if len(given) != expected:
        raise BackupError(f"the header's record_count is {expected} but {len(given)} records were given")
    for record in given:
        if not isinstance(record, BackupRecord):
            raise BackupError(f"not a BackupRecord: {type(record).__name__}")
        problem = _record_problem(record)
        if problem is not None:
            raise BackupError(f"cannot back up record {_show(record.key)}: it {problem}")
    ordered = sorted(given, key=lambda r: r.key)
    for before, after in itertools.pairwise(ordered):
        if before.key == after.key:
            raise BackupError(f"cannot back up: key {_show(after.key)} appears twice")
    return ordered


def _record_problem(record: BackupRecord) -> str | None:
    # Checked as the objects they are, whatever the annotations say: a caller's records are not trusted.
    key: object = record.key
    value: object = record.value
    version: object = record.version
    if not isinstance(key, str) or not key:
        return "has no key (a non-empty string)"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "has a key that is not valid UTF-8 text"
    if size > MAX_KEY_BYTES:
        return f"has a {size}-byte key, more than {MAX_KEY_BYTES}"
    if not isinstance(value, (bytes, bytearray)):
        return "has a value that is not bytes"
    if len(value) > MAX_VALUE_BYTES:
        return f"has a {len(value)}-byte value, more than {MAX_VALUE_BYTES}"
    if not _is_int(version) or version < 1:
        return f"has version {_show(version)}, not an integer >= 1"
    return None


def _show(value: Any) -> str:
    """A short repr for messages: a hostile file's fields can be 64 KiB long."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: Any, *, allow_empty: bool = False) -> bool:
    return (
        isinstance(value, str)
        and (allow_empty or bool(value))
        and len(value) <= MAX_TEXT_CHARS
        and value.isprintable()
    )


def _is_canonical_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


# --------------------------------------------------------------------------- files and signatures


def verify_backup_file(path: Path | str, *, max_bytes: int = MAX_FILE_BYTES) -> Backup:
    """Read and check a backup file offline (checksums and structure; no key needed)."""
    with _open_backup(path, max_bytes) as (stream, _size):
        try:
            data = stream.read()
        except OSError as exc:
            raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return decode_backup(data, max_bytes=max_bytes)
    except BackupError as exc:
        raise BackupError(f"{path}: {exc}") from None


def read_backup_header(path: Path | str, *, max_bytes: int = MAX_FILE_BYTES) -> tuple[BackupHeader, int]:
    """The header and the file size, reading only the head of the file.

    Nothing is hashed: the header is *not* verified until :func:`verify_backup_file`.
    """
    with _open_backup(path, max_bytes) as (stream, size):
        try:
            head = stream.read(len(MAGIC))
            if head != MAGIC:
                _check_magic(head + stream.read(_MAGIC_PEEK - len(head)))
            unpacker = _unpacker(stream, object_pairs_hook=list)
            return _read_header(unpacker), size
        except BackupError as exc:
            raise BackupError(f"{path}: {exc}") from None
        except OSError as exc:
            raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None


class _open_backup:  # used as a context manager like open()
    """Open a regular file for reading and check its size before anything is read."""

    def __init__(self, path: Path | str, max_bytes: int) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._stream: BinaryIO | None = None

    def __enter__(self) -> tuple[BinaryIO, int]:
        # O_NONBLOCK so that a FIFO planted in place of a backup cannot hang the open;
        # it changes nothing for a regular file.
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise BackupError(f"cannot open {self._path}: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            # A device or FIFO could be endless; only a regular file has a size to check.
            if not stat.S_ISREG(info.st_mode):
                raise BackupError(f"{self._path} is not a regular file")
            if info.st_size > self._max_bytes:
                raise BackupError(f"{self._path} is {info.st_size} bytes, more than the "
                                  f"{self._max_bytes}-byte limit")
            self._stream = os.fdopen(fd, "rb")
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise BackupError(f"cannot read {self._path}: {exc.strerror or exc}") from None
            raise
        return self._stream, info.st_size

    def __exit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            self._stream.close()


def verify_signature(backup: Backup, public_key: ec.EllipticCurvePublicKey | x509.Certificate) -> None:
    """Check the backup's signature with the cluster identity's P-384 key (or its certificate).

    Establishing that ``public_key`` belongs to the right cluster (a certificate
    chained to the customer's trust anchor) is the caller's job: the certificate in
    the header is the file's own claim and proves nothing by itself.
    """
    key = public_key.public_key() if isinstance(public_key, x509.Certificate) else public_key
    if backup.signature is None or backup.header.signature_algorithm is None:
        raise BackupError("the backup is not signed")
    if backup.header.signature_algorithm != SIGNATURE_ALGORITHM:
        raise BackupError(f"unsupported signature algorithm {_show(backup.header.signature_algorithm)}")
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise BackupError("the signature is checked with the cluster identity's P-384 public key; "
                          "the key given is not one")
    try:
        key.verify(backup.signature, backup.digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except InvalidSignature:
        raise BackupError("signature does not verify: the backup was not signed by this key "
                          "(another cluster's backup, or a forged file)") from None
