"""Access-key policies: a small subset of IAM identity policies, evaluated by the gateway.

An access key without a policy has every right. A policy is::

    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:Describe*"],
                    "Resource": "arn:aws:kms:us-east-1:111122223333:key/*"},
                   {"Effect": "Deny", "Action": "kms:ScheduleKeyDeletion", "Resource": "*"}]}

``Action`` and ``Resource`` are strings or lists with ``*``/``?`` wildcards (actions match
case-insensitively); an explicit Deny wins, then any Allow, else the request is denied
(``AccessDeniedException``). Operations that act on no key (CreateKey, ListKeys, ListAliases,
GenerateRandom) are checked against the resource ``*``; operations on a key against its ARN
(and CreateAlias/UpdateAlias/DeleteAlias against the alias ARN too). Conditions, principals
and ``NotAction``/``NotResource`` are not supported and make the policy invalid.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from typing import Any


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]

    def matches(self, action: str, resource: str) -> bool:
        return (any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in self.actions)
                and any(fnmatch.fnmatchcase(resource, r) for r in self.resources))


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]

    def decide(self, action: str, resource: str) -> str:
        """"allow", "deny" (explicit) or "implicit" (no statement allows it)."""
        if any(s.effect == "Deny" and s.matches(action, resource) for s in self.statements):
            return "deny"
        if any(s.effect == "Allow" and s.matches(action, resource) for s in self.statements):
            return "allow"
        return "implicit"


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{what} must be a string or a non-empty list of strings")
    return tuple(value)


def parse_policy(text: str) -> Policy:
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PolicyError("a policy is a JSON object")
    unknown = set(document) - {"Version", "Id", "Statement"}
    if unknown:
        raise PolicyError(f"unsupported policy member(s): {', '.join(sorted(unknown))}")
    raw = document.get("Statement")
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise PolicyError("Statement must be an object or a non-empty list")
    statements = []
    for item in raw:
        if not isinstance(item, dict):
            raise PolicyError("each statement is an object")
        unknown = set(item) - {"Sid", "Effect", "Action", "Resource"}
        if unknown:
            raise PolicyError(f"unsupported statement member(s): {', '.join(sorted(unknown))}")
        effect = item.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise PolicyError("Effect is Allow or Deny")
        actions = _strings(item.get("Action"), "Action")
        if not all(a == "*" or a.lower().startswith("kms:") for a in actions):
            raise PolicyError("actions are kms:<Operation> (wildcards allowed) or *")
        statements.append(Statement(effect, actions, _strings(item.get("Resource", "*"), "Resource")))
    return Policy(tuple(statements))
