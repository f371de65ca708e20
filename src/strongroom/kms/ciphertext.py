"""The symmetric ciphertext blob: self-describing, authenticated as a whole.

Layout (big-endian)::

    0   1   magic 0xC5
    1   1   format version (1)
    2   16  key id (the UUID's 16 bytes)
    18  4   key-material version (the key's material list; rotation appends)
    22  12  GCM IV (random, drawn by the gateway from the OS CSPRNG)
    34  n   AES-256-GCM ciphertext, made inside the cluster under the non-extractable key
    34+n 16 GCM tag

The additional authenticated data is ``AAD_PREFIX || header (bytes 0-34) || canonical
encryption context``, so changing any byte — header included — or supplying a missing, extra
or different encryption-context pair fails the tag (``InvalidCiphertextException``). The
encryption context is never stored in the blob. Overhead: 50 bytes (4096 bytes of plaintext
give a 4146-byte blob, well under the 6144 limit).

Canonical encryption context: the pairs sorted by the UTF-8 bytes of their keys, each as
``len(key) || key || len(value) || value`` (4-byte lengths), after a 4-byte pair count —
unambiguous, order-independent, exact (case-sensitive) and binary-safe.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass

from strongroom.kms.errors import InvalidCiphertext

MAGIC = 0xC5
VERSION = 1
_HEADER = struct.Struct(">BB16sI12s")
HEADER_LEN = _HEADER.size  # 34
IV_LEN = 12
TAG_LEN = 16
OVERHEAD = HEADER_LEN + TAG_LEN
AAD_PREFIX = b"strongroom/kms/ciphertext/v1\0"


@dataclass(frozen=True)
class Blob:
    key_id: str
    material_version: int
    iv: bytes
    header: bytes
    body: bytes  # ciphertext || tag


def new_iv() -> bytes:
    return os.urandom(IV_LEN)


def header(key_id: str, material_version: int, iv: bytes) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, uuid.UUID(key_id).bytes, material_version, iv)


def parse(blob: bytes) -> Blob:
    """Split a blob; anything that is not one of ours is InvalidCiphertextException (empty message, as AWS)."""
    if len(blob) < OVERHEAD + 1:
        raise InvalidCiphertext("")
    magic, version, key_bytes, material_version, iv = _HEADER.unpack_from(blob)
    if magic != MAGIC or version != VERSION:
        raise InvalidCiphertext("")
    return Blob(str(uuid.UUID(bytes=key_bytes)), material_version, iv, blob[:HEADER_LEN], blob[HEADER_LEN:])


def canonical_context(context: dict[str, str]) -> bytes:
    items = sorted((k.encode(), v.encode()) for k, v in context.items())
    out = bytearray(struct.pack(">I", len(items)))
    for key, value in items:
        out += struct.pack(">I", len(key)) + key + struct.pack(">I", len(value)) + value
    return bytes(out)


def aad(header_bytes: bytes, context: dict[str, str]) -> bytes:
    return AAD_PREFIX + header_bytes + canonical_context(context)
