"""Who a request is (:class:`Identity`) and whether it may act (:class:`Authorizer`): AWS's policy
evaluation over the access key's own policy, the key's policy and the key's grants.

The gateway builds an :class:`Identity` once it has authenticated a request; operations ask
through their :class:`strongroom.kms.context.Context`, which remembers the grant that allowed
a key-level request (grant constraints apply to what the operation then does)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, NoReturn

from strongroom.kms.arn import Location
from strongroom.kms.backend import Backend
from strongroom.kms.errors import AccessDenied, InvalidGrantToken
from strongroom.kms.grants import Grant, get_grant, list_grants, parse_token
from strongroom.kms.model import KmsKey
from strongroom.kms.policy import (
    Policy,
    PolicyError,
    Request,
    cached_key_policy,
    default_key_policy,
    evaluate,
    parse_policy,
)

log = logging.getLogger("strongroom.kms")

#: Where an operation's encryption context is, per IAM action (conditions and grant constraints).
CONTEXT_MEMBERS = {"kms:ReEncryptFrom": "SourceEncryptionContext", "kms:ReEncryptTo": "DestinationEncryptionContext"}


@dataclass(frozen=True)
class Identity:
    access_key_id: str
    name: str
    policy: Policy | None
    policy_error: str | None = None


@functools.lru_cache(maxsize=256)
def identity_for(access_key_id: str, name: str, policy_text: str | None) -> Identity:
    """The request's identity; the access-key policy is parsed once per distinct text."""
    policy, error = None, None
    if policy_text:
        try:
            policy = parse_policy(policy_text)
        except PolicyError as exc:
            error = str(exc)
    return Identity(access_key_id, name, policy, error)


def request_context(body: dict[str, Any], action: str) -> dict[str, str] | None:
    value = body.get(CONTEXT_MEMBERS.get(action, "EncryptionContext"))
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return value
    return None


class Authorizer:
    def __init__(self, where: Location, backend: Backend) -> None:
        self.where = where
        self.backend = backend

    def principal(self, identity: Identity) -> str:
        """An access key acts as the IAM user ``arn:<partition>:iam::<account>:user/<access key name>``."""
        return f"arn:{self.where.partition}:iam::{self.where.account}:user/{identity.name}"

    def authorize(self, identity: Identity, action: str, resource: str) -> None:
        """Resources without a key policy ("*", aliases): the access key's own policy decides."""
        if identity.policy is None and identity.policy_error is None:
            return
        request = Request(action, resource, self.principal(identity), self.where.account)
        decision = "implicit" if identity.policy is None else identity.policy.decide(action, resource, request)
        if decision == "allow":
            return
        self.denied(identity, action, resource, decision, "identity-based")

    def denied(self, identity: Identity, action: str, resource: str, decision: str, where: str) -> NoReturn:
        """Raise AWS's AccessDeniedException for ``decision`` ("deny" or "implicit") of a ``where`` policy."""
        article = "an" if where == "identity-based" else "a"
        why = (f"with an explicit deny in {article} {where} policy" if decision == "deny"
               else f"because no {where} policy allows the {action} action")
        raise AccessDenied(f"User: {self.principal(identity)} is not authorized to perform: {action} "
                           f"on resource: {resource} {why}")

    def key_policy(self, key: KmsKey) -> Policy:
        text = key.policy or default_key_policy(self.where.partition, self.where.account)
        try:
            return cached_key_policy(text)
        except PolicyError:
            log.warning("the stored key policy of %s does not parse; it allows nothing", key.key_id)
            return Policy(())

    async def check_grant_tokens(self, body: dict[str, Any]) -> None:
        """Every GrantTokens entry must be one of our tokens (InvalidGrantTokenException)."""
        tokens = body.get("GrantTokens")
        for token in tokens if isinstance(tokens, list) else []:
            parsed = parse_token(token) if isinstance(token, str) else None
            grant = None if parsed is None else await get_grant(self.backend, parsed[0], parsed[1])
            if parsed is None or (grant is not None and grant.nonce != parsed[2]):
                raise InvalidGrantToken("The grant token is invalid.")

    async def authorize_key(self, identity: Identity, key: KmsKey, action: str, body: dict[str, Any]) -> Grant | None:
        """AWS's evaluation for a principal of the key's account: an explicit Deny (key policy or
        identity policy) wins; the key policy allowing the principal, or allowing the account and
        the identity policy allowing it, or a grant, allows; anything else is denied.

        Returns the grant that allowed the request (None: a policy did)."""
        resource = self.where.key_arn(key.key_id)
        principal = self.principal(identity)
        context = request_context(body, action)
        request = Request(action, resource, principal, self.where.account, context)
        decision, where = evaluate(request, self.key_policy(key), identity.policy, identity.policy_error is not None)
        if decision == "allow":
            return None
        if decision == "implicit":
            operation = action.split(":", 1)[1] if ":" in action else action
            for grant in await list_grants(self.backend, key.key_id):
                if grant.allows(principal, operation, context):
                    return grant
        self.denied(identity, action, resource, decision, where)
