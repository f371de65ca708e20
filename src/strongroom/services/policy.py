"""Cluster policies: cluster-wide switches an admin sets (``cluster.set_policy``), kept in the cluster's
meta record (``cluster/meta``, through the barrier like every record) and shown by ``cluster status``.

=====================  ===================  ==================================================================
policy                 values (default 1st)  what it decides
=====================  ===================  ==================================================================
``public_objects``     ``visible``,          PKCS#11 public objects (``CKA_PRIVATE`` false) are seen by every
                       ``hidden``            session, and a session that is not logged in may use public keys,
                                             digests, random and public session objects (PKCS#11 v2.40 §6.7).
                                             ``hidden``: only their owner, the users they are shared with and
                                             admins see objects, and nothing works before a login (CloudHSM's
                                             behaviour, Strongroom's before issue 13).
``plaintext_import``   ``allowed``,          ``C_CreateObject`` of secret and private keys (their values in
                       ``forbidden``         clear, audited). ``forbidden``: keys enter only wrapped.
``legacy_algorithms``  ``off``, ``on``       RSA keys from 1024 bits (generation and use), two- and three-key
                                             Triple-DES, curve P-192. RSA public keys from 1024 bits verify
                                             whatever this says (old certificates).
=====================  ===================  ==================================================================

A worker reads the policies from the store at most once per :data:`REFRESH_SECONDS` (the worker that
changed them at once): a change reaches every worker of every node within that time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from strongroom.barrier import Barrier
from strongroom.errors import ArgumentsBad
from strongroom.services.state import CLUSTER_META_KEY
from strongroom.store.base import OutcomeUnknownError, UnavailableError

META_FIELD = "policies"
REFRESH_SECONDS = 1.0

#: Every policy and its values; the first value is the default.
CHOICES: dict[str, tuple[str, ...]] = {
    "public_objects": ("visible", "hidden"),
    "plaintext_import": ("allowed", "forbidden"),
    "legacy_algorithms": ("off", "on"),
}


@dataclass(frozen=True)
class Policies:
    public_objects: str = "visible"
    plaintext_import: str = "allowed"
    legacy_algorithms: str = "off"

    @property
    def public_visible(self) -> bool:
        return self.public_objects == "visible"

    @property
    def import_allowed(self) -> bool:
        return self.plaintext_import == "allowed"

    @property
    def legacy(self) -> bool:
        return self.legacy_algorithms == "on"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def changed(self, name: str, value: str) -> Policies:
        check(name, value)
        return replace(self, **{name: value})


def check(name: str, value: str) -> None:
    """ArgumentsBad unless ``value`` is one of ``name``'s values."""
    choices = CHOICES.get(name)
    if choices is None:
        raise ArgumentsBad(f"unknown policy {name!r}: one of {', '.join(sorted(CHOICES))}")
    if value not in choices:
        raise ArgumentsBad(f"policy {name} is one of {', '.join(choices)}, not {value!r}")


def from_meta(meta: dict[str, Any] | None) -> Policies:
    """The policies a meta record holds; unknown names and values (a newer node's) fall back to the default."""
    stored = (meta or {}).get(META_FIELD)
    if not isinstance(stored, dict):
        return Policies()
    values: dict[str, str] = {}
    for field in fields(Policies):
        value = stored.get(field.name)
        if isinstance(value, str) and value in CHOICES[field.name]:
            values[field.name] = value
    return Policies(**values)


class _Cached:
    __slots__ = ("at", "policies")

    def __init__(self, at: float, policies: Policies) -> None:
        self.at = at
        self.policies = policies


#: Per barrier (one per worker once it holds the cluster key): when last read, and what.
_cache: dict[int, _Cached] = {}


async def current(barrier: Barrier | None) -> Policies:
    """This cluster's policies (the defaults before the cluster key is here)."""
    if barrier is None:
        return Policies()
    now = time.monotonic()
    cached = _cache.get(id(barrier))
    if cached is not None and now - cached.at < REFRESH_SECONDS:
        return cached.policies
    try:
        entry = await barrier.get(CLUSTER_META_KEY)
    except (UnavailableError, OutcomeUnknownError):
        if cached is None:
            raise
        # No store majority (or no answer): keys keep working from the caches, and so do the policies last
        # read (while no majority exists nobody can change them); the store is asked again a second later.
        _cache[id(barrier)] = _Cached(now, cached.policies)
        return cached.policies
    policies = from_meta(None if entry is None else entry.value)
    _cache[id(barrier)] = _Cached(now, policies)
    return policies


def remember(barrier: Barrier, policies: Policies) -> None:
    """The worker that changed the policies uses them at once."""
    _cache[id(barrier)] = _Cached(time.monotonic(), policies)
