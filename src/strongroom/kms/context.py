"""What a KMS operation is given, and how one is declared.

A handler is ``async def handler(ctx: Context) -> dict``, declared with :func:`kms_operation`.
It reads the request through ``ctx.params`` (:class:`strongroom.kms.validation.Params`), reaches
the cluster and the key records through the gateway's :class:`Services`, asks
``ctx.authorize*`` before it acts, raises :class:`strongroom.kms.errors.KmsError` subclasses,
and returns the JSON response.

This module sits below both the gateway (which builds the services and a context per request)
and the operations (:mod:`strongroom.kms.ops`), so neither imports the other's module for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from strongroom.kms.arn import Location
from strongroom.kms.authorization import Authorizer, Identity
from strongroom.kms.backend import Backend
from strongroom.kms.config import GatewayConfig
from strongroom.kms.grants import Grant
from strongroom.kms.keystores import KeyStores
from strongroom.kms.model import KmsKey, Metadata
from strongroom.kms.usage import UsageTracker
from strongroom.kms.validation import Params

Handler = Callable[["Context"], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class OperationSpec:
    name: str
    handler: Handler
    #: The IAM action an access-key policy must allow (``kms:<Operation>`` by default).
    action: str
    #: Operations on no particular key are authorized against the resource "*" before they run;
    #: the others authorize on the key's ARN when they resolve it.
    keyless: bool


#: Every declared operation by name; :func:`strongroom.kms.ops.load` imports the modules that fill it.
OPERATIONS: dict[str, OperationSpec] = {}


def kms_operation(name: str, *, keyless: bool = False, action: str | None = None) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        if name in OPERATIONS:
            raise RuntimeError(f"KMS operation {name} registered twice")
        OPERATIONS[name] = OperationSpec(name, handler, action or f"kms:{name}", keyless)
        return handler

    return register


@dataclass(frozen=True)
class Services:
    """The gateway's long-lived parts that operations (and its background sweep) work with."""

    config: GatewayConfig
    where: Location
    backend: Backend
    metadata: Metadata
    keystores: KeyStores
    authorizer: Authorizer
    #: The last successful cryptographic use of each key (GetKeyLastUsage).
    usage: UsageTracker


@dataclass
class Context:
    """One request: who sent it, which operation, its parameters, and the services to serve it."""

    services: Services
    identity: Identity
    operation: OperationSpec
    params: Params
    #: The grant that authorized the last key-level check (None: a policy did).
    grant: Grant | None = None
    tokens_checked: bool = False
    #: The request's x-amzn-RequestId (GetKeyLastUsage reports it as KmsRequestId).
    request_id: str = ""

    @property
    def where(self) -> Location:
        return self.services.where

    @property
    def backend(self) -> Backend:
        return self.services.backend

    @property
    def metadata(self) -> Metadata:
        return self.services.metadata

    @property
    def config(self) -> GatewayConfig:
        return self.services.config

    @property
    def keystores(self) -> KeyStores:
        return self.services.keystores

    @property
    def authorizer(self) -> Authorizer:
        return self.services.authorizer

    @property
    def principal(self) -> str:
        """The caller as an IAM principal ARN."""
        return self.services.authorizer.principal(self.identity)

    def authorize(self, resource: str, action: str | None = None) -> None:
        """Resources without a key policy ("*", aliases): the access key's own policy decides."""
        self.services.authorizer.authorize(self.identity, action or self.operation.action, resource)

    async def check_grant_tokens(self) -> None:
        """Every GrantTokens entry must be one of ours; checked once per request."""
        if self.tokens_checked:
            return
        self.tokens_checked = True
        await self.services.authorizer.check_grant_tokens(self.params.body)

    async def authorize_key(self, key: KmsKey, action: str | None = None) -> None:
        """A key: its key policy, the access key's policy, and the key's grants decide."""
        await self.check_grant_tokens()
        self.grant = None
        self.grant = await self.services.authorizer.authorize_key(
            self.identity, key, action or self.operation.action, self.params.body)

    async def authorize_key_id(self, key_id: str, action: str | None = None) -> None:
        key = await self.metadata.get_key(key_id)
        if key is None:
            self.authorize(self.where.key_arn(key_id), action)
        else:
            await self.authorize_key(key, action)
