"""The ``kms`` seal: the key-encryption key is a data key of an AWS-KMS-compatible endpoint.

``GenerateDataKey`` (``AES_256``) makes the KEK in the KMS; the node keeps only its ciphertext
blob (in the seal document) and asks ``Decrypt`` for the KEK at every start. Both calls carry
the encryption context ``{"strongroom:cluster": <cluster id>, "strongroom:node": <node id>}``,
so the KMS opens a blob only for the node it was made for, and its audit log (CloudTrail, or
the Strongroom gateway's) names the node at every unseal. Revoking the node's access to the key
(key policy, grant, access key, disabling the key) keeps its copy of the cluster key shut.

Options (``node.toml [seal]``; no secret in them):

``endpoint``                the KMS endpoint URL (default: AWS's endpoint for ``region``)
``region``                  the region (signing scope), default ``us-east-1``
``key_id``                  the KMS key (id, ARN or ``alias/...``) that makes the data key
``access_key_id``           with ``secret_access_key_file``: static credentials; without both,
                            boto3's usual chain (environment, instance role...)
``secret_access_key_file``  a file holding the secret access key (read at each use)
``ca_bundle``               verify the endpoint's HTTPS certificate against this file (the
                            Strongroom gateway's cluster CA), instead of the system's CAs

The KEK comes back from the KMS in the response body: over plain HTTP anyone on the path would
read it, so ``http://`` is accepted for loopback endpoints only.

Zeroization (:meth:`KekProvider.destroy`) removes nothing in the KMS: its key may serve other nodes'
seals, and the blob goes with the seal file. Revoke the node's access or disable the key for that.

Errors: no answer (connection refused, timeout, 5xx, throttling) is :class:`SealUnavailable`
and the node retries; a refusal (another node's blob, another key, the key disabled or pending
deletion, access denied, unknown credentials) is :class:`SealError`. Connect and read timeouts
and retries are bounded so that an unreachable KMS delays a node start by seconds, not minutes.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # boto3 is optional (the seal extra); its stubs come with the test extra
    from botocore.exceptions import ClientError
    from mypy_boto3_kms import KMSClient
from urllib.parse import urlsplit

from strongroom.seal.base import KEK_BYTES, KekProvider, SealedIdentity, SealError, SealUnavailable, register

DEFAULT_REGION = "us-east-1"
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
MAX_ATTEMPTS = 3  # botocore "standard" retries: connection errors, 5xx and throttling, with backoff
MAX_BLOB = 6144  # a KMS ciphertext blob is at most 6 KiB
MAX_SECRET_FILE = 4096
#: Refusals of the KMS: the blob, the key, the credentials or the request is wrong. Retrying changes nothing.
REFUSALS = frozenset({
    "InvalidCiphertextException", "IncorrectKeyException", "AccessDeniedException", "NotFoundException",
    "DisabledException", "InvalidKeyUsageException", "UnrecognizedClientException", "InvalidSignatureException",
    "IncompleteSignatureException", "MissingAuthenticationTokenException", "ValidationException",
    "InvalidGrantTokenException", "KMSInvalidStateException", "InvalidArnException", "ExpiredTokenException",
})
#: The KMS cannot answer now.
TRANSIENT = frozenset({
    "KMSInternalException", "DependencyTimeoutException", "KeyUnavailableException", "ThrottlingException",
    "LimitExceededException", "ServiceUnavailableException", "InternalFailure", "RequestTimeout",
})


def encryption_context(identity: SealedIdentity) -> dict[str, str]:
    return {"strongroom:cluster": identity.cluster_id, "strongroom:node": identity.node_id}


def check_endpoint(endpoint: str | None) -> None:
    """Plain HTTP only to this host: the KEK travels in the response body."""
    if endpoint is None:
        return
    parts = urlsplit(endpoint)
    if parts.scheme == "https":
        return
    if parts.scheme != "http" or not parts.hostname:
        raise SealError(f"seal option endpoint={endpoint!r}: expected an https:// (or loopback http://) URL")
    host = parts.hostname
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise SealError(f"seal option endpoint={endpoint!r}: the key-encryption key would cross the network in "
                        "clear; use https:// (with ca_bundle for a private CA)")


def _read_secret(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise SealError(f"cannot read the KMS secret access key from {path}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_FILE:
        raise SealError(f"{path} is too large to be a secret access key")
    secret = data.decode(errors="replace").strip()
    if not secret:
        raise SealError(f"{path} is empty: no KMS secret access key")
    return secret


def _describe_client_error(exc: ClientError) -> tuple[str, str, int]:
    error = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return str(error.get("Code", "")), str(error.get("Message", "")), status


@register
class KmsKek(KekProvider):
    type = "kms"

    # --- options ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str | None:
        value = self.options.get("endpoint")
        return str(value) if value else None

    @property
    def region(self) -> str:
        return str(self.options.get("region") or DEFAULT_REGION)

    @property
    def where(self) -> str:
        return self.endpoint or f"AWS KMS in {self.region}"

    def _client(self) -> KMSClient:
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError
        except ImportError:
            raise SealError("the kms seal needs boto3 (pip install 'strongroom[seal]')") from None
        check_endpoint(self.endpoint)
        access_key: str | None = None
        secret_key: str | None = None
        access_key_id = self.options.get("access_key_id")
        secret_file = self.options.get("secret_access_key_file")
        if bool(access_key_id) != bool(secret_file):
            raise SealError("seal options access_key_id and secret_access_key_file go together")
        if access_key_id:  # else boto3's own chain (environment, profile, instance role)
            access_key, secret_key = str(access_key_id), _read_secret(str(secret_file))
        verify: bool | str = True
        ca_bundle = self.options.get("ca_bundle")
        if ca_bundle:
            if not Path(str(ca_bundle)).is_file():
                raise SealError(f"seal option ca_bundle={ca_bundle!r}: no such file")
            verify = str(ca_bundle)
        config = Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"})
        try:
            session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                            region_name=self.region)
            return session.client("kms", endpoint_url=self.endpoint, verify=verify, config=config)
        except (BotoCoreError, ValueError) as exc:  # configuration errors (unknown profile, bad endpoint URL...)
            raise SealError(f"the kms seal cannot make a client for {self.where}: {exc}") from None

    def _key_id(self) -> str:
        key_id = self.options.get("key_id")
        if not key_id:
            raise SealError("the kms seal needs the option key_id (the KMS key that makes the data key)")
        return str(key_id)

    # --- errors ----------------------------------------------------------------------------

    def _call(self, operation: str, method: Any, **params: Any) -> dict[str, Any]:
        """One KMS call; every failure becomes SealUnavailable (retry later) or SealError (refused)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return dict(method(**params))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(operation, exc) from None

    def _error(self, operation: str, exc: Exception) -> SealError:
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            SSLError,
        )

        if isinstance(exc, SSLError):
            return SealError(f"the KMS endpoint {self.where} failed TLS verification"
                             f"{' against ' + str(self.options['ca_bundle']) if self.options.get('ca_bundle') else ''}"
                             f": {exc}; refusing to send it this node's seal")
        if isinstance(exc, (ConnectionError, HTTPClientError)):  # refused, timeouts, closed connections
            return SealUnavailable(f"the KMS endpoint {self.where} does not answer ({exc.__class__.__name__}); "
                                   "the node stays sealed and retries")
        if isinstance(exc, NoCredentialsError):
            return SealError(f"the kms seal has no credentials for {self.where}: give access_key_id and "
                             "secret_access_key_file")
        if isinstance(exc, ClientError):
            code, message, status = _describe_client_error(exc)
            if code == "KMSInvalidStateException" and "is unavailable" in message:
                # A custom key store not connected right now (AWS's wording): it comes back.
                return SealUnavailable(f"KMS {operation} at {self.where}: {code}: {message}")
            if code in TRANSIENT or (code not in REFUSALS and status >= 500):
                return SealUnavailable(f"KMS {operation} at {self.where} failed for now: {code}: {message}")
            return SealError(f"KMS {operation} at {self.where} refused this node's seal: {code}: {message}; "
                             "refusing to start")
        return SealError(f"KMS {operation} at {self.where} failed: {exc.__class__.__name__}: {exc}")

    # --- the provider ----------------------------------------------------------------------

    def create(self, identity: SealedIdentity) -> tuple[bytearray, dict[str, Any]]:
        key_id = self._key_id()
        client = self._client()
        reply = self._call("GenerateDataKey", client.generate_data_key, KeyId=key_id, KeySpec="AES_256",
                           EncryptionContext=encryption_context(identity))
        kek = bytearray(reply.pop("Plaintext", None) or b"")
        blob = reply.get("CiphertextBlob") or b""
        if len(kek) != KEK_BYTES or not blob or len(blob) > MAX_BLOB:
            kek[:] = bytes(len(kek))
            raise SealError(f"KMS GenerateDataKey at {self.where} returned no usable {KEK_BYTES}-byte data key")
        stored = {"key_id": str(reply.get("KeyId") or key_id), "ciphertext": base64.b64encode(blob).decode()}
        return kek, stored

    def recover(self, identity: SealedIdentity, stored: Mapping[str, Any]) -> bytearray:
        try:
            blob = base64.b64decode(stored["ciphertext"], validate=True)
            key_id = str(stored["key_id"])
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise SealError("the kms seal's record has no valid ciphertext or key_id; refusing to start") from None
        if not blob or len(blob) > MAX_BLOB:
            raise SealError("the kms seal's ciphertext has an impossible size; refusing to start")
        client = self._client()
        # KeyId pins the key the blob was made with: a blob of another key is refused, not tried.
        reply = self._call("Decrypt", client.decrypt, CiphertextBlob=blob, KeyId=key_id,
                           EncryptionContext=encryption_context(identity), EncryptionAlgorithm="SYMMETRIC_DEFAULT")
        kek = bytearray(reply.pop("Plaintext", None) or b"")
        if len(kek) != KEK_BYTES:
            kek[:] = bytes(len(kek))
            raise SealError(f"KMS Decrypt at {self.where} returned no {KEK_BYTES}-byte key; refusing to start")
        return kek

    def describe(self) -> str:
        key_id = self.options.get("key_id") or "no key_id"
        return f"kms ({self.where}, key {key_id})"
