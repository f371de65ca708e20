"""KMS operations, one module per group; each registers its handlers with :func:`kms_operation`.

A handler is ``async def handler(ctx: Context) -> dict``: it reads its members through
``ctx.params`` (:class:`strongroom.kms.validation.Params`), raises
:class:`strongroom.kms.errors.KmsError` subclasses, and returns the JSON response. Groups:

* :mod:`.keys` — CreateKey, DescribeKey, ListKeys, Enable/DisableKey, Schedule/CancelKeyDeletion,
  UpdateKeyDescription
* :mod:`.aliases` — CreateAlias, UpdateAlias, DeleteAlias, ListAliases
* :mod:`.symmetric` — Encrypt, Decrypt, ReEncrypt, GenerateDataKey(WithoutPlaintext)
* :mod:`.random` — GenerateRandom
* :mod:`.tags` — TagResource, UntagResource, ListResourceTags

Later groups (asymmetric, mac, rotation, grants, policies, custom key stores) add a module
here and import it in :func:`load`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strongroom.kms.gateway import Context

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


OPERATIONS: dict[str, OperationSpec] = {}


def kms_operation(name: str, *, keyless: bool = False, action: str | None = None) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        if name in OPERATIONS:
            raise RuntimeError(f"KMS operation {name} registered twice")
        OPERATIONS[name] = OperationSpec(name, handler, action or f"kms:{name}", keyless)
        return handler

    return register


def load() -> dict[str, OperationSpec]:
    """Import every operation group (registers them) and return the table."""
    from strongroom.kms.ops import aliases, keys, random, symmetric, tags  # noqa: F401
    from strongroom.kms.ops import keystores  # noqa: F401
    from strongroom.kms.ops import asymmetric, mac  # noqa: F401
    from strongroom.kms.ops import grants, policies, rotation  # noqa: F401

    return OPERATIONS
