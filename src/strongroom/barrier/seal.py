"""The sealed cluster key: how a node keeps the cluster key on its own disk.

A software node has no HSM memory to hide the key in, so it keeps it encrypted
(AES-256-GCM) under a node-local key-encryption key in ``seal.key``, both files
mode 0600 in the node's directory. The seal binds the cluster id and node id as
associated data, so a seal copied to another node, or edited, fails to open.
This is tamper-*evident*, not tamper-*proof*: root on the node host can read both
files (see the README's trust model).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEAL_FORMAT = 1
SEAL_FILE = "cluster.seal"
KEK_FILE = "seal.key"
#: Left by hsm.zeroize: the node must not start again until it rejoins a cluster.
ZEROIZED_FILE = "zeroized"
#: The node's store high-water mark (see strongroom.node.freshness); it goes with the seal it belongs to.
FRESHNESS_FILE = "store.freshness"
CLUSTER_KEY_BYTES = 32


class SealError(Exception):
    """The sealed state is missing, unreadable or fails authentication."""


@dataclass(frozen=True)
class SealedIdentity:
    cluster_id: str
    node_id: str


def write_private_file(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` atomically to ``path`` with mode 0600 (never world-readable, even briefly).

    ``exclusive`` fails with FileExistsError instead of replacing an existing file,
    atomically (two worker processes initializing at once cannot both win).
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if exclusive:
        try:
            os.link(tmp, path)
        finally:
            tmp.unlink()
    else:
        os.replace(tmp, path)


def _aad(identity: SealedIdentity) -> bytes:
    return f"strongroom-seal/v{SEAL_FORMAT}\0{identity.cluster_id}\0{identity.node_id}".encode()


def _load_or_create_kek(node_dir: Path, create: bool) -> bytearray:
    path = node_dir / KEK_FILE
    if not path.exists():
        if not create:
            raise SealError(f"{path} is missing: this node cannot open its sealed cluster key")
        write_private_file(path, os.urandom(32))
    data = bytearray(path.read_bytes())
    if len(data) != 32:
        raise SealError(f"{path} is not a 32-byte key-encryption key")
    return data


def seal_exists(node_dir: Path) -> bool:
    return (node_dir / SEAL_FILE).exists()


def seal_cluster_key(node_dir: Path, identity: SealedIdentity, cluster_key: bytearray) -> None:
    if len(cluster_key) != CLUSTER_KEY_BYTES:
        raise SealError(f"a cluster key is {CLUSTER_KEY_BYTES} bytes, not {len(cluster_key)}")
    if seal_exists(node_dir):
        raise SealError(f"{node_dir / SEAL_FILE} already exists; refusing to overwrite a cluster key")
    kek = _load_or_create_kek(node_dir, create=True)
    nonce = os.urandom(12)
    ciphertext = AESGCM(bytes(kek)).encrypt(nonce, bytes(cluster_key), _aad(identity))
    kek[:] = bytes(len(kek))
    document = {
        "format": SEAL_FORMAT,
        "cluster_id": identity.cluster_id,
        "node_id": identity.node_id,
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    try:
        write_private_file(node_dir / SEAL_FILE, json.dumps(document, indent=1).encode(), exclusive=True)
    except FileExistsError:
        raise SealError(f"{node_dir / SEAL_FILE} already exists; refusing to overwrite a cluster key") from None
    clear_zeroized(node_dir)  # it holds a key again (rejoined or restored)


def unseal_cluster_key(node_dir: Path) -> tuple[SealedIdentity, bytearray]:
    path = node_dir / SEAL_FILE
    try:
        document = json.loads(path.read_bytes())
        identity = SealedIdentity(str(document["cluster_id"]), str(document["node_id"]))
        if document["format"] != SEAL_FORMAT:
            raise SealError(f"{path}: unsupported seal format {document['format']!r}")
        nonce = base64.b64decode(document["nonce"], validate=True)
        ciphertext = base64.b64decode(document["ciphertext"], validate=True)
    except FileNotFoundError:
        raise SealError(f"{path} is missing") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SealError(f"{path} is damaged ({exc.__class__.__name__}); refusing to start") from None
    kek = _load_or_create_kek(node_dir, create=False)
    try:
        key = bytearray(AESGCM(bytes(kek)).decrypt(nonce, ciphertext, _aad(identity)))
    except (InvalidTag, ValueError):
        raise SealError(f"{path} failed authentication (altered or not this node's); refusing to start") from None
    finally:
        kek[:] = bytes(len(kek))
    if len(key) != CLUSTER_KEY_BYTES:
        raise SealError(f"{path} holds a key of the wrong size")
    return identity, key


def destroy_seal(node_dir: Path) -> None:
    """Zeroize: overwrite then remove the sealed key and its key-encryption key.

    The store high-water mark goes first: a new seal starts a new one.
    """
    (node_dir / FRESHNESS_FILE).unlink(missing_ok=True)
    for name in (SEAL_FILE, KEK_FILE):
        path = node_dir / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        with open(path, "r+b") as handle:
            handle.write(os.urandom(size))
            handle.flush()
            os.fsync(handle.fileno())
        path.unlink()


def mark_zeroized(node_dir: Path) -> None:
    import time

    write_private_file(node_dir / ZEROIZED_FILE, f"zeroized at {time.time():.0f}\n".encode())


def zeroized(node_dir: Path) -> bool:
    return (node_dir / ZEROIZED_FILE).exists()


def clear_zeroized(node_dir: Path) -> None:
    (node_dir / ZEROIZED_FILE).unlink(missing_ok=True)


def startup_refusal(node_dir: Path) -> str | None:
    """Why a node must not start (zeroized, or sealed state failing authentication), or None."""
    if zeroized(node_dir) and not seal_exists(node_dir):
        return (f"this node was zeroized ({node_dir / ZEROIZED_FILE}) and holds no cluster key; add it to a "
                "cluster again (it then receives the key from a running node) or restore the cluster from a backup")
    if not seal_exists(node_dir):
        return None
    try:
        _identity, key = unseal_cluster_key(node_dir)
    except SealError as exc:
        return f"tamper response: {exc}"
    key[:] = bytes(len(key))
    return None
