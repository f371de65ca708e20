"""The sealed cluster key: how a node keeps the cluster key at rest, whatever protects it.

A node holds the cluster key in memory only. At rest, in ``cluster.seal`` in the node's
directory, the key is AES-256-GCM encrypted under a *key-encryption key* (KEK) that a
**seal provider** keeps (Vault/OpenBao's seal family is the model):

========  =====================================================================
``file``  the KEK lies beside the seal in ``seal.key``: anyone who can read the node's
          directory can read every key. Local development only, and said so.
``tpm``   the KEK is sealed by the host's TPM 2.0: the directory copied to another
          host (another TPM) does not open.
``kms``   the KEK is wrapped by an AWS-KMS-compatible endpoint (encryption context
          naming cluster and node).
``pkcs11`` the KEK is wrapped by a key in another PKCS#11 token.
``shares`` no usable key on disk at all: ``cluster.seal`` is only a marker with a key
          check value. A starting node receives the key from a running peer, or, when
          none runs, waits until M custodians submitted their recovery shares.
========  =====================================================================

The seal document binds its type, the cluster id and the node id as associated data, so
a seal copied to another node, edited, or relabelled with another type fails to open.
A provider stores in the document only what it needs to find its KEK again (blobs,
identifiers, file paths): never a secret (PINs and access keys come from files the
configuration names).
"""

from __future__ import annotations

import abc
import base64
import importlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEAL_FORMAT = 2
SEAL_FILE = "cluster.seal"
#: The ``file`` seal's key-encryption key, beside the seal (strongroom.seal.file).
KEK_FILE = "seal.key"
#: Left by hsm.zeroize: the node must not start again until it rejoins a cluster.
ZEROIZED_FILE = "zeroized"
#: The node's store high-water mark (see strongroom.services.freshness); it goes with the seal it belongs to.
FRESHNESS_FILE = "store.freshness"
CLUSTER_KEY_BYTES = 32
KEK_BYTES = 32
#: The seal types; ``shares`` has no provider (no key-encryption key exists).
SEAL_TYPES = ("file", "shares", "tpm", "kms", "pkcs11")
SHARES = "shares"


class SealError(Exception):
    """The sealed state is missing, unreadable or fails authentication (tamper response)."""


class SealUnavailable(SealError):
    """The seal's provider cannot be reached now (KMS endpoint down, token absent): retry later."""


class SealedAwaitingKey(SealError):
    """A ``shares`` seal: the key must come from a running peer or from the custodians' shares."""


@dataclass(frozen=True)
class SealedIdentity:
    cluster_id: str
    node_id: str


@dataclass(frozen=True)
class SealSettings:
    """``node.toml [seal]``: the type and the provider's options (identifiers and file paths)."""

    type: str = "file"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in SEAL_TYPES:
            raise SealError(f"unknown seal type {self.type!r} (one of: {', '.join(SEAL_TYPES)})")

    def to_document(self) -> dict[str, Any]:
        return {"type": self.type, **dict(self.options)}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> SealSettings:
        options = {k: v for k, v in document.items() if k != "type"}
        return cls(str(document.get("type", "file")), options)


class KekProvider(abc.ABC):
    """Keeps one node's key-encryption key; one subclass per seal type, registered by name."""

    type: ClassVar[str]

    def __init__(self, options: Mapping[str, Any], node_dir: Path) -> None:
        self.options = dict(options)
        self.node_dir = node_dir

    @abc.abstractmethod
    def create(self, identity: SealedIdentity) -> tuple[bytearray, dict[str, Any]]:
        """A fresh KEK, and the JSON-able record (no secrets) that :meth:`recover` needs to get it back."""

    @abc.abstractmethod
    def recover(self, identity: SealedIdentity, stored: Mapping[str, Any]) -> bytearray:
        """The KEK again. SealError when it fails authentication, SealUnavailable when it cannot be reached."""

    def destroy(self, stored: Mapping[str, Any]) -> None:
        """Zeroize: remove whatever this provider keeps of the KEK (nothing by default)."""
        return None

    def describe(self) -> str:
        return self.type


_PROVIDERS: dict[str, type[KekProvider]] = {}


def register(cls: type[KekProvider]) -> type[KekProvider]:
    """Class decorator: make a provider available under its ``type``."""
    _PROVIDERS[cls.type] = cls
    return cls


def provider_for(settings: SealSettings, node_dir: Path) -> KekProvider:
    """The provider of ``settings.type`` (its module is imported on first use: boto3, TPM tools...)."""
    if settings.type == SHARES:
        raise SealError("a shares seal has no key-encryption key")
    if settings.type not in _PROVIDERS:
        try:
            importlib.import_module(f"strongroom.seal.{settings.type}")
        except ImportError as exc:
            raise SealError(f"the {settings.type} seal cannot be used on this host: {exc}") from None
    return _PROVIDERS[settings.type](settings.options, node_dir)


# --- files -------------------------------------------------------------------------------------


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


def overwrite_and_remove(path: Path) -> None:
    """Overwrite a file with random bytes, sync, then remove it (zeroization of a file we own)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    with open(path, "r+b") as handle:
        handle.write(os.urandom(size))
        handle.flush()
        os.fsync(handle.fileno())
    path.unlink()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    return base64.b64decode(text, validate=True)


def _aad(document: Mapping[str, Any]) -> bytes:
    """Everything in the seal but the ciphertext is authenticated: type, ids, the provider's record."""
    if document.get("format") == 1:
        return f"strongroom-seal/v1\0{document['cluster_id']}\0{document['node_id']}".encode()
    bound = {k: v for k, v in document.items() if k not in ("nonce", "ciphertext")}
    return b"strongroom-seal/v2\0" + json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()


# --- sealing -----------------------------------------------------------------------------------


def seal_exists(node_dir: Path) -> bool:
    return (node_dir / SEAL_FILE).exists()


def _document(identity: SealedIdentity, settings: SealSettings, node_dir: Path,
              cluster_key: bytearray) -> dict[str, Any]:
    if len(cluster_key) != CLUSTER_KEY_BYTES:
        raise SealError(f"a cluster key is {CLUSTER_KEY_BYTES} bytes, not {len(cluster_key)}")
    document: dict[str, Any] = {"format": SEAL_FORMAT, "type": settings.type,
                                "cluster_id": identity.cluster_id, "node_id": identity.node_id,
                                "sealed_at": int(time.time())}
    if settings.type == SHARES:
        from strongroom.recovery import key_check

        document["check"] = _b64(key_check(cluster_key, identity.cluster_id))
        return document
    provider = provider_for(settings, node_dir)
    kek, stored = provider.create(identity)
    document.update(kek=stored, options=dict(settings.options))
    try:
        nonce = os.urandom(12)
        ciphertext = AESGCM(bytes(kek)).encrypt(nonce, bytes(cluster_key), _aad(document))
    finally:
        kek[:] = bytes(len(kek))
    document.update(nonce=_b64(nonce), ciphertext=_b64(ciphertext))
    return document


def seal_cluster_key(node_dir: Path, identity: SealedIdentity, cluster_key: bytearray,
                     settings: SealSettings | None = None) -> None:
    """Seal ``cluster_key`` in ``node_dir`` with the seal ``settings`` name; never overwrites a seal."""
    settings = settings or SealSettings()
    if seal_exists(node_dir):
        raise SealError(f"{node_dir / SEAL_FILE} already exists; refusing to overwrite a cluster key")
    document = _document(identity, settings, node_dir, cluster_key)
    try:
        write_private_file(node_dir / SEAL_FILE, json.dumps(document, indent=1).encode(), exclusive=True)
    except FileExistsError:
        raise SealError(f"{node_dir / SEAL_FILE} already exists; refusing to overwrite a cluster key") from None
    clear_zeroized(node_dir)  # it holds a key again (rejoined or restored)


def reseal_cluster_key(node_dir: Path, identity: SealedIdentity, cluster_key: bytearray,
                       settings: SealSettings) -> str:
    """Seal migration: replace the seal with one of ``settings``, then destroy the old provider's KEK.

    The new seal replaces the old one atomically, so a crash leaves one or the other, both usable.
    Returns the old seal's type.
    """
    old = read_seal_document(node_dir)
    document = _document(identity, settings, node_dir, cluster_key)
    write_private_file(node_dir / SEAL_FILE, json.dumps(document, indent=1).encode())
    old_type = str(old.get("type", "file"))
    if old_type != SHARES:
        old_provider = provider_for(SealSettings(old_type, old.get("options", {})), node_dir)
        if old_type != settings.type or old.get("kek") != document.get("kek"):
            old_provider.destroy(old.get("kek", {}))
    return old_type


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise SealError(f"{path} is missing") from None
    except ValueError:
        raise SealError(f"{path} is damaged (not JSON); refusing to start") from None
    if not isinstance(document, dict):
        raise SealError(f"{path} is damaged; refusing to start")
    return document


def read_seal_document(node_dir: Path) -> dict[str, Any]:
    path = node_dir / SEAL_FILE
    document = _read_json(path)
    if document.get("format") == 1:  # before seal types: a file seal
        document = dict(document, type="file", kek={"file": "seal.key"}, options={}, format=1)
    if document.get("format") not in (1, SEAL_FORMAT):
        raise SealError(f"{path}: unsupported seal format {document.get('format')!r}")
    return document


def seal_info(node_dir: Path) -> tuple[SealedIdentity, str]:
    """The identity and the type of the seal in ``node_dir`` (no secret is opened)."""
    document = read_seal_document(node_dir)
    try:
        identity = SealedIdentity(str(document["cluster_id"]), str(document["node_id"]))
        seal_type = str(document["type"])
    except KeyError as exc:
        raise SealError(f"{node_dir / SEAL_FILE} is damaged (no {exc.args[0]}); refusing to start") from None
    if seal_type not in SEAL_TYPES:
        raise SealError(f"{node_dir / SEAL_FILE} names an unknown seal type {seal_type!r}")
    return identity, seal_type


def unseal_cluster_key(node_dir: Path, settings: SealSettings | None = None) -> tuple[SealedIdentity, bytearray]:
    """Open the seal in ``node_dir`` with the provider its document names.

    ``settings``: the node's configured seal; its options complete the document's (file paths,
    endpoints) when the types match. Raises SealedAwaitingKey for a ``shares`` seal,
    SealUnavailable when the provider cannot be reached, SealError when anything fails
    authentication.
    """
    path = node_dir / SEAL_FILE
    raw = _read_json(path)
    document = read_seal_document(node_dir)
    identity, seal_type = seal_info(node_dir)
    if seal_type == SHARES:
        raise SealedAwaitingKey("this node's seal is of type shares: the cluster key comes from a running "
                                "node or from the custodians' recovery shares (strongroom unseal)")
    options = dict(document.get("options", {}))
    if settings is not None and settings.type == seal_type:
        options.update(settings.options)
    try:
        nonce = _unb64(document["nonce"])
        ciphertext = _unb64(document["ciphertext"])
        stored = document["kek"]
    except (KeyError, ValueError, TypeError) as exc:
        raise SealError(f"{path} is damaged ({exc.__class__.__name__}); refusing to start") from None
    kek = provider_for(SealSettings(seal_type, options), node_dir).recover(identity, stored)
    try:
        key = bytearray(AESGCM(bytes(kek)).decrypt(nonce, ciphertext, _aad(raw)))
    except (InvalidTag, ValueError):
        raise SealError(f"{path} failed authentication (altered or not this node's); refusing to start") from None
    finally:
        kek[:] = bytes(len(kek))
    if len(key) != CLUSTER_KEY_BYTES:
        raise SealError(f"{path} holds a key of the wrong size")
    return identity, key


def shares_check(node_dir: Path) -> bytes:
    """The key check value a ``shares`` seal keeps (to recognise the right key when it arrives)."""
    document = read_seal_document(node_dir)
    try:
        return _unb64(document["check"])
    except (KeyError, ValueError, TypeError):
        raise SealError(f"{node_dir / SEAL_FILE} is damaged (no key check value); refusing to start") from None


def destroy_seal(node_dir: Path) -> None:
    """Zeroize: destroy what the provider keeps, then overwrite and remove the seal.

    The store high-water mark goes first: a new seal starts a new one.
    """
    (node_dir / FRESHNESS_FILE).unlink(missing_ok=True)
    try:
        document = read_seal_document(node_dir)
    except SealError:
        document = {}
    seal_type = str(document.get("type", "file"))
    if document and seal_type in SEAL_TYPES and seal_type != SHARES:
        try:
            provider_for(SealSettings(seal_type, document.get("options", {})), node_dir).destroy(
                document.get("kek", {}))
        except SealError:
            pass  # the seal file goes anyway: without it the KEK opens nothing
    overwrite_and_remove(node_dir / SEAL_FILE)
    overwrite_and_remove(node_dir / KEK_FILE)  # a file seal's KEK, even when the document was unreadable


# --- zeroized marker and start-up checks ----------------------------------------------------------


def mark_zeroized(node_dir: Path) -> None:
    write_private_file(node_dir / ZEROIZED_FILE, f"zeroized at {time.time():.0f}\n".encode())


def zeroized(node_dir: Path) -> bool:
    return (node_dir / ZEROIZED_FILE).exists()


def clear_zeroized(node_dir: Path) -> None:
    (node_dir / ZEROIZED_FILE).unlink(missing_ok=True)


def startup_refusal(node_dir: Path) -> str | None:
    """Why a node must not start (zeroized, or a seal that cannot be read), or None.

    Only the document is checked here: opening the key is the supervisor's job, after the
    process hardened itself.
    """
    if zeroized(node_dir) and not seal_exists(node_dir):
        return (f"this node was zeroized ({node_dir / ZEROIZED_FILE}) and holds no cluster key; add it to a "
                "cluster again (it then receives the key from a running node) or restore the cluster from a backup")
    if not seal_exists(node_dir):
        return None
    try:
        seal_info(node_dir)
    except SealError as exc:
        return f"tamper response: {exc}"
    return None
