"""The ``pkcs11`` seal: the key-encryption key wrapped by an AES key inside another PKCS#11 token.

The node makes a random KEK, and the token's AES-256 key encrypts it with ``CKM_AES_GCM``; the
associated data names the cluster and the node, so a blob opens only for the node it was made for.
The seal document keeps the IV and the ciphertext; the token keeps the key (made by
:meth:`Pkcs11Kek.create` when no key of that label exists yet: a token object, sensitive, never
extractable, for encrypt/decrypt only). Unsealing needs the token, its user PIN and that key.

Options (``node.toml [seal]``; no secret in them):

``module``       path of the token's PKCS#11 library (e.g. ``/usr/lib/softhsm/libsofthsm2.so``)
``token_label``  the token's label
``key_label``    the AES key's label in the token (default ``strongroom-seal``); several nodes may
                 share one key: each blob is bound to its node by the associated data
``pin_file``     a file holding the token's user PIN (the PIN is never logged nor stored)

Errors: the module or the token missing (or the token removed) is :class:`SealUnavailable`, the
node retries; a wrong PIN, a locked PIN, a missing or different key, or a blob that fails GCM's
tag check is :class:`SealError`, the node refuses to start. A wrong PIN is never retried: tokens
lock the PIN after a few failures.

:meth:`Pkcs11Kek.destroy` leaves the token's key alone: other nodes' seals may use it. Deleting
the key in the token (with the token's own tools) shuts every seal made with it.

The module is initialized for each operation and finalized after it, under a lock: a node opens
its seal once per start, no token session outlives that, and a worker process forked later
inherits no PKCS#11 state.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from strongroom.seal.base import KEK_BYTES, KekProvider, SealedIdentity, SealError, SealUnavailable, register

log = logging.getLogger(__name__)

DEFAULT_KEY_LABEL = "strongroom-seal"
IV_BYTES = 12
TAG_BITS = 128
MAX_PIN_FILE = 1024
MAX_LABEL = 32  # CK_TOKEN_INFO.label is 32 bytes; a key label has no such limit, but ours is a name
_LOCK = threading.Lock()


def associated_data(identity: SealedIdentity) -> bytes:
    return b"strongroom-seal-kek/pkcs11\0" + json.dumps(
        {"cluster": identity.cluster_id, "node": identity.node_id}, sort_keys=True, separators=(",", ":")).encode()


def _import() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise SealError("the pkcs11 seal needs python-pkcs11 (pip install 'strongroom[seal]')") from None
    return pkcs11


def _serial(session: Any) -> str:
    serial = session.token.serial
    return (serial.decode(errors="replace") if isinstance(serial, bytes) else str(serial)).strip()


def _read_pin(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PIN_FILE + 1)
    except OSError as exc:
        raise SealError(f"cannot read the token PIN from {path}: {exc.strerror}") from None
    if len(data) > MAX_PIN_FILE:
        raise SealError(f"{path} is too large to be a PIN file")
    pin = data.decode(errors="strict").rstrip("\r\n") if data.isascii() else ""
    if not pin:
        raise SealError(f"{path} holds no PIN (empty, or not text)")
    return pin


class Pkcs11Kek(KekProvider):
    type = "pkcs11"

    # --- options ---------------------------------------------------------------------------

    def _option(self, name: str, default: str | None = None) -> str:
        value = self.options.get(name, default)
        if not value or not isinstance(value, str):
            raise SealError(f"the pkcs11 seal needs the option {name}")
        return value

    @property
    def module(self) -> str:
        return self._option("module")

    @property
    def token_label(self) -> str:
        label = self._option("token_label")
        if len(label.encode()) > MAX_LABEL:
            raise SealError(f"seal option token_label={label!r}: a token label is at most {MAX_LABEL} bytes")
        return label

    def _key_label(self, stored: Mapping[str, Any] | None = None) -> str:
        # The blob names the key that made it; the options only choose the key of new seals.
        if stored is not None and stored.get("key_label"):
            return str(stored["key_label"])
        return self._option("key_label", DEFAULT_KEY_LABEL)

    # --- the token -------------------------------------------------------------------------

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """A logged-in R/W session on the token; the module is finalized when it closes."""
        pkcs11 = _import()
        from pkcs11 import exceptions as errors

        module, token_label = self.module, self.token_label
        pin = _read_pin(self._option("pin_file"))
        with _LOCK:
            if not Path(module).is_file():
                raise SealUnavailable(f"the PKCS#11 module {module} is not there (is the token's software "
                                      "installed?)")
            try:
                lib = pkcs11.lib(module)
            except errors.PKCS11Error as exc:
                raise SealUnavailable(f"the PKCS#11 module {module} does not load: {exc}") from None
            try:
                try:
                    token = lib.get_token(token_label=token_label)
                except errors.NoSuchToken:
                    raise SealUnavailable(f"no token labelled {token_label!r} in {module} (not inserted, "
                                          "or not initialized)") from None
                except errors.MultipleTokensReturned:
                    raise SealError(f"several tokens are labelled {token_label!r} in {module}; refusing to "
                                    "guess which one keeps this node's key") from None
                try:
                    session = token.open(rw=True, user_pin=pin)
                except (errors.PinIncorrect, errors.PinInvalid, errors.PinLenRange):
                    raise SealError(f"the token {token_label!r} refused the PIN from the pin_file; not retrying "
                                    "(the token would lock it)") from None
                except errors.PinLocked:
                    raise SealError(f"the token {token_label!r} has locked its user PIN") from None
                except (errors.TokenNotPresent, errors.DeviceRemoved, errors.TokenNotRecognised,
                        errors.DeviceError) as exc:
                    raise SealUnavailable(f"the token {token_label!r} is not usable now: "
                                          f"{exc.__class__.__name__}") from None
                with session:
                    yield session
            except (errors.TokenNotPresent, errors.DeviceRemoved, errors.SessionClosed) as exc:
                raise SealUnavailable(f"the token {token_label!r} went away: {exc.__class__.__name__}") from None
            except errors.PKCS11Error as exc:
                raise SealError(f"the token {token_label!r} failed: {exc.__class__.__name__} {exc}") from None
            finally:
                del pin
                try:
                    lib.finalize()
                except errors.PKCS11Error:
                    pass

    def _find_key(self, session: Any, label: str) -> Any | None:
        from pkcs11 import KeyType, ObjectClass
        from pkcs11 import exceptions as errors

        try:
            return session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=label)
        except errors.NoSuchKey:
            return None
        except errors.MultipleObjectsReturned:
            raise SealError(f"several AES keys are labelled {label!r} in the token {self.token_label!r}; "
                            "refusing to guess") from None

    def _generate_key(self, session: Any, label: str) -> Any:
        from pkcs11 import Attribute, KeyType, MechanismFlag

        key = session.generate_key(
            KeyType.AES, 256, label=label, store=True, capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
            template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                      Attribute.EXTRACTABLE: False, Attribute.MODIFIABLE: False, Attribute.WRAP: False,
                      Attribute.UNWRAP: False, Attribute.SIGN: False, Attribute.VERIFY: False,
                      Attribute.DERIVE: False})
        log.info("pkcs11 seal: made the AES-256 key %r in the token %r", label, self.token_label)
        return key

    @staticmethod
    def _gcm(iv: bytes, aad: bytes) -> dict[str, Any]:
        from pkcs11 import GCMParams, Mechanism

        return {"mechanism": Mechanism.AES_GCM, "mechanism_param": GCMParams(iv, aad, TAG_BITS)}

    # --- the provider ----------------------------------------------------------------------

    def create(self, identity: SealedIdentity) -> tuple[bytearray, dict[str, Any]]:
        from pkcs11 import Attribute

        label = self._key_label()
        kek = bytearray(os.urandom(KEK_BYTES))
        iv = os.urandom(IV_BYTES)
        aad = associated_data(identity)
        with self._session() as session:
            key = self._find_key(session, label) or self._generate_key(session, label)
            if key[Attribute.EXTRACTABLE] or not key[Attribute.SENSITIVE]:
                log.warning("pkcs11 seal: the key %r in the token %r can leave the token (extractable or not "
                            "sensitive): whoever exports it and copies this node's directory opens the seal",
                            label, self.token_label)
            ciphertext = bytes(key.encrypt(bytes(kek), **self._gcm(iv, aad)))
            check = bytearray(key.decrypt(ciphertext, **self._gcm(iv, aad)))
            serial = _serial(session)
        try:
            if check != kek:
                raise SealError(f"the token {self.token_label!r} did not decrypt what it encrypted; not using it")
        finally:
            check[:] = bytes(len(check))
        stored = {"key_label": label, "token_serial": serial, "iv": base64.b64encode(iv).decode(),
                  "ciphertext": base64.b64encode(ciphertext).decode()}
        return kek, stored

    def recover(self, identity: SealedIdentity, stored: Mapping[str, Any]) -> bytearray:
        from pkcs11 import exceptions as errors

        try:
            iv = base64.b64decode(stored["iv"], validate=True)
            ciphertext = base64.b64decode(stored["ciphertext"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise SealError("the pkcs11 seal's record has no valid iv or ciphertext; refusing to start") from None
        if len(iv) != IV_BYTES or len(ciphertext) != KEK_BYTES + TAG_BITS // 8:
            raise SealError("the pkcs11 seal's record has an impossible size; refusing to start")
        label = self._key_label(stored)
        with self._session() as session:
            key = self._find_key(session, label)
            if key is None:
                serial = _serial(session)
                other = (f" (this token's serial is {serial}, the seal was made with {stored.get('token_serial')})"
                         if stored.get("token_serial") not in (None, serial) else "")
                raise SealError(f"the token {self.token_label!r} has no AES key labelled {label!r}{other}: deleted, "
                                "or not the token this node was sealed with; refusing to start")
            try:
                kek = bytearray(key.decrypt(ciphertext, **self._gcm(iv, associated_data(identity))))
            except (errors.TokenNotPresent, errors.DeviceRemoved, errors.SessionClosed):
                raise
            except errors.PKCS11Error as exc:
                raise SealError(f"the key {label!r} of the token {self.token_label!r} did not open this node's "
                                f"seal ({exc.__class__.__name__}): another key or another node's seal; refusing to "
                                "start") from None
        if len(kek) != KEK_BYTES:
            kek[:] = bytes(len(kek))
            raise SealError("the token returned a key of the wrong size; refusing to start")
        return kek

    def describe(self) -> str:
        return (f"pkcs11 (token {self.options.get('token_label')!r}, key "
                f"{self.options.get('key_label') or DEFAULT_KEY_LABEL!r}, module {self.options.get('module')})")


register(Pkcs11Kek)
