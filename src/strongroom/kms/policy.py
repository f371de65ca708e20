"""Policies: access-key (IAM identity) policies and key policies, a documented subset of IAM.

An access key without a policy has every right its account grants (an administrator). A policy::

    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:Describe*"],
                    "Resource": "arn:aws:kms:us-east-1:111122223333:key/*"},
                   {"Effect": "Deny", "Action": "kms:ScheduleKeyDeletion", "Resource": "*"}]}

Statement members: ``Sid``, ``Effect`` (Allow/Deny), ``Action`` or ``NotAction`` (``kms:…``
with ``*``/``?`` wildcards, case-insensitive), ``Resource`` (``*`` or ARNs with wildcards;
default ``*``), ``Condition``; key policies also need ``Principal`` (``"*"``, ``{"AWS": "*"}``,
``{"AWS": <arn or account id or a list>}``; ``Service``/``Federated`` principals are accepted and
never match). Identity policies take no ``Principal``. ``NotResource``/``NotPrincipal`` are refused.

Conditions (:data:`OPERATORS`, :data:`CONDITION_KEYS`): ``StringEquals``, ``StringNotEquals``,
``StringEqualsIgnoreCase``, ``StringNotEqualsIgnoreCase``, ``StringLike``, ``StringNotLike``, each
optionally prefixed ``ForAllValues:``/``ForAnyValue:`` — over ``kms:EncryptionContext:<key>``
(the context key part is case-insensitive, values are case-sensitive),
``kms:EncryptionContextKeys``, ``kms:CallerAccount``, ``kms:ViaService`` (never present: no AWS
service calls this endpoint) and ``aws:PrincipalArn``. Anything else makes the policy invalid,
naming what is not supported. Values in one condition are ORed, keys and operators ANDed.

Evaluation (:func:`evaluate`), as AWS for a principal of the key's own account: an explicit Deny
in the key policy or the identity policy wins; then the request is allowed when the key policy
allows the principal by name (or ``*``), or allows the account (``arn:aws:iam::<acct>:root``, the
account id) *and* the identity policy allows it — or when a grant allows it; otherwise denied.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from strongroom.kms.validation import json_too_deep

#: The deepest supported policy is 6 levels (Statement, statement, Condition, operator, key, values).
MAX_POLICY_DEPTH = 12


class PolicyError(ValueError):
    pass


BASE_OPERATORS = ("StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase",
                  "StringLike", "StringNotLike")
SET_PREFIXES = ("ForAllValues:", "ForAnyValue:")
OPERATORS = BASE_OPERATORS + tuple(p + o for p in SET_PREFIXES for o in BASE_OPERATORS)
CONDITION_KEYS = ("kms:EncryptionContext:<key>", "kms:EncryptionContextKeys", "kms:CallerAccount",
                  "kms:ViaService", "aws:PrincipalArn")
_SIMPLE_KEYS = {"kms:encryptioncontextkeys", "kms:calleraccount", "kms:viaservice", "aws:principalarn"}
PRINCIPAL_RE = re.compile(r"^arn:[a-z-]+:iam::[0-9]{12}:(root|user/[\w+=,.@/-]+|role/[\w+=,.@/-]+)\Z")
ACCOUNT_RE = re.compile(r"^[0-9]{12}\Z")
INVALID_PRINCIPALS = "Policy contains a statement with one or more invalid principals."


@dataclass(frozen=True)
class Request:
    """What a policy is asked about."""

    action: str
    resource: str
    principal: str = ""            # arn:aws:iam::<account>:user/<access key name>
    account: str = ""
    context: Mapping[str, str] | None = None  # the request's encryption context, when the operation has one

    def values(self, key: str) -> list[str] | None:
        """The request's values for a condition key (None: the key is absent)."""
        lower = key.lower()
        if lower.startswith("kms:encryptioncontext:"):
            if not self.context:
                return None
            wanted = key[len("kms:EncryptionContext:"):].lower()
            found = [v for k, v in self.context.items() if k.lower() == wanted]
            return found or None
        if lower == "kms:encryptioncontextkeys":
            return None if not self.context else list(self.context)
        if lower == "kms:calleraccount":
            return [self.account] if self.account else None
        if lower == "aws:principalarn":
            return [self.principal] if self.principal else None
        return None  # kms:ViaService: no AWS service calls this endpoint


@dataclass(frozen=True)
class Condition:
    operator: str
    key: str
    values: tuple[str, ...]

    def matches(self, request: Request) -> bool:
        prefix, _, base = self.operator.rpartition(":")
        negated = "Not" in base
        ignore_case = base.endswith("IgnoreCase")
        like = base.startswith("StringLike") or base.startswith("StringNotLike")
        present = request.values(self.key)

        def one(value: str) -> bool:
            for pattern in self.values:
                if like:
                    if fnmatch.fnmatchcase(value, pattern):
                        return True
                elif (value.lower() == pattern.lower()) if ignore_case else (value == pattern):
                    return True
            return False

        if prefix == "ForAllValues":
            # Every value in the request is (not) in the set; vacuously true when absent.
            return all((not one(v)) if negated else one(v) for v in (present or []))
        if prefix == "ForAnyValue":
            return any((not one(v)) if negated else one(v) for v in (present or []))
        if present is None:
            return negated  # the negated operators match a missing key, as IAM
        hit = any(one(v) for v in present)
        return not hit if negated else hit


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...] = ()
    resources: tuple[str, ...] = ("*",)
    not_actions: tuple[str, ...] = ()
    #: None in identity policies; in key policies "*" or principal ARNs / account ids.
    principals: tuple[str, ...] | None = None
    conditions: tuple[Condition, ...] = ()

    def action_matches(self, action: str) -> bool:
        a = action.lower()
        if self.not_actions:
            return not any(fnmatch.fnmatchcase(a, p.lower()) for p in self.not_actions)
        return any(fnmatch.fnmatchcase(a, p.lower()) for p in self.actions)

    def matches(self, action: str, resource: str, request: Request | None = None) -> bool:
        if not self.action_matches(action) or not any(fnmatch.fnmatchcase(resource, r) for r in self.resources):
            return False
        request = request or Request(action, resource)
        return all(c.matches(request) for c in self.conditions)

    def principal_match(self, principal: str, account: str) -> str | None:
        """"direct" (named or "*"), "account" (the account: needs the identity policy too) or None."""
        if self.principals is None:
            return "direct"
        for p in self.principals:
            if p == "*" or p == principal:
                return "direct"
            if p == account or p.endswith(f":iam::{account}:root"):
                return "account"
        return None


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]
    text: str = field(default="", compare=False)

    def decide(self, action: str, resource: str, request: Request | None = None) -> str:
        """Identity policies: "allow", "deny" (explicit) or "implicit" (no statement allows it)."""
        request = request or Request(action, resource)
        if any(s.effect == "Deny" and s.matches(action, resource, request) for s in self.statements):
            return "deny"
        if any(s.effect == "Allow" and s.matches(action, resource, request) for s in self.statements):
            return "allow"
        return "implicit"

    def decide_key(self, request: Request) -> str:
        """Key policies: "deny", "allow" (the principal by name or *), "account" (delegated to the
        identity policy) or "implicit"."""
        verdict = "implicit"
        for s in self.statements:
            how = s.principal_match(request.principal, request.account)
            if how is None or not s.matches(request.action, request.resource, request):
                continue
            if s.effect == "Deny":
                return "deny"
            if how == "direct":
                verdict = "allow"
            elif verdict == "implicit":
                verdict = "account"
        return verdict


def evaluate(request: Request, key_policy: Policy, identity: Policy | None, identity_error: bool = False
             ) -> tuple[str, str]:
    """(decision, where): decision "allow", "deny" or "implicit"; ``where`` names the policy type
    that decided ("resource-based" or "identity-based"), for AWS's AccessDenied message."""
    key = key_policy.decide_key(request)
    if identity_error:
        ident = "implicit"
    elif identity is None:
        ident = "allow"
    else:
        ident = identity.decide(request.action, request.resource, request)
    if key == "deny":
        return "deny", "resource-based"
    if ident == "deny":
        return "deny", "identity-based"
    if key == "allow" or (key == "account" and ident == "allow"):
        return "allow", ""
    return "implicit", "identity-based" if key == "account" else "resource-based"


# --- parsing ----------------------------------------------------------------------------------------


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{what} must be a string or a non-empty list of strings")
    return tuple(value)


def _principals(value: Any) -> tuple[str, ...]:
    if value == "*":
        return ("*",)
    if not isinstance(value, dict) or not value:
        raise PolicyError(INVALID_PRINCIPALS)
    found: list[str] = []
    for kind, items in value.items():
        if kind not in ("AWS", "Service", "Federated", "CanonicalUser"):
            raise PolicyError(INVALID_PRINCIPALS)
        try:
            items = _strings(items, "Principal")
        except PolicyError:
            raise PolicyError(INVALID_PRINCIPALS) from None
        if kind != "AWS":
            continue  # other principal types exist but never call this endpoint
        for item in items:
            if item != "*" and not ACCOUNT_RE.match(item) and not PRINCIPAL_RE.match(item):
                raise PolicyError(INVALID_PRINCIPALS)
            found.append(item)
    return tuple(found)


def _conditions(value: Any) -> tuple[Condition, ...]:
    if not isinstance(value, dict) or not value:
        raise PolicyError("Condition must be a non-empty object of operators")
    bad_ops = [op for op in value if op not in OPERATORS]
    if bad_ops:
        raise PolicyError(f"Policy contains unsupported condition operator(s): {', '.join(sorted(bad_ops))}. "
                          f"Supported: {', '.join(BASE_OPERATORS)}, optionally prefixed ForAllValues:/ForAnyValue:")
    found = []
    bad_keys: list[str] = []
    for op, block in value.items():
        if not isinstance(block, dict) or not block:
            raise PolicyError(f"Condition operator {op} must map condition keys to values")
        for key, values in block.items():
            lower = key.lower() if isinstance(key, str) else ""
            context_key = lower.startswith("kms:encryptioncontext:") and len(lower) > len("kms:encryptioncontext:")
            if not context_key and lower not in _SIMPLE_KEYS:
                bad_keys.append(str(key))
                continue
            if isinstance(values, (bool, int, float)) and not isinstance(values, bool):
                values = str(values)
            if isinstance(values, str):
                values = [values]
            if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
                raise PolicyError(f"Condition {op} {key}: values must be a string or a non-empty list of strings")
            found.append(Condition(op, key, tuple(values)))
    if bad_keys:
        raise PolicyError(f"Policy contains unsupported condition key(s): {', '.join(sorted(bad_keys))}. "
                          f"Supported: {', '.join(CONDITION_KEYS)}")
    return tuple(found)


def parse_policy(text: str, *, key_policy: bool = False) -> Policy:
    """Parse and check a policy; ``key_policy`` requires a Principal in every statement."""
    if json_too_deep(text, MAX_POLICY_DEPTH):
        raise PolicyError(f"The policy nests JSON deeper than {MAX_POLICY_DEPTH} levels.")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PolicyError(f"The policy is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PolicyError("A policy is a JSON object")
    unknown = set(document) - {"Version", "Id", "Statement"}
    if unknown:
        raise PolicyError(f"Unsupported policy member(s): {', '.join(sorted(unknown))}")
    if document.get("Version", "2012-10-17") not in ("2012-10-17", "2008-10-17"):
        raise PolicyError("Version is 2012-10-17 or 2008-10-17")
    raw = document.get("Statement")
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise PolicyError("Statement must be an object or a non-empty list")
    statements = []
    allowed = {"Sid", "Effect", "Action", "NotAction", "Resource", "Condition"}
    if key_policy:
        allowed |= {"Principal"}
    for item in raw:
        if not isinstance(item, dict):
            raise PolicyError("Each statement is an object")
        unknown = set(item) - allowed
        if unknown:
            raise PolicyError(f"Unsupported statement member(s): {', '.join(sorted(unknown))}")
        effect = item.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise PolicyError("Effect is Allow or Deny")
        if ("Action" in item) == ("NotAction" in item):
            raise PolicyError("A statement has exactly one of Action and NotAction")
        actions = _strings(item["Action"], "Action") if "Action" in item else ()
        not_actions = _strings(item["NotAction"], "NotAction") if "NotAction" in item else ()
        if not all(a == "*" or a.lower().startswith("kms:") for a in actions + not_actions):
            raise PolicyError("Actions are kms:<Operation> (wildcards allowed) or *")
        principals = None
        if key_policy:
            if "Principal" not in item:
                raise PolicyError("Policy contains a statement with no principal.")
            principals = _principals(item["Principal"])
        conditions = _conditions(item["Condition"]) if "Condition" in item else ()
        statements.append(Statement(effect, actions, _strings(item.get("Resource", "*"), "Resource"), not_actions,
                                    principals, conditions))
    return Policy(tuple(statements), text)


@functools.lru_cache(maxsize=512)
def cached_key_policy(text: str) -> Policy:
    """A stored key policy (already checked when it was put), parsed once."""
    return parse_policy(text, key_policy=True)


@functools.lru_cache(maxsize=16)
def default_key_policy(partition: str, account: str) -> str:
    """AWS's default key policy: the account (and so its identity policies) may do everything.

    Cached: every request on a key without a policy of its own asks for it, and the same string
    object then finds its parsed Policy in :func:`cached_key_policy` at once (bench/README.md, KMS)."""
    return json.dumps({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }],
    }, indent=2)
