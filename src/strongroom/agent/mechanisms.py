"""The token's mechanisms (C_GetMechanismList / C_GetMechanismInfo), as the nodes list them.

The agent carries no mechanism code: it asks a node (``mechanism.list``) and keeps the answer
on that node's link for the life of the connection (:attr:`NodeLink.mechanisms`), so a node
restarted with other software is asked again, and nothing is asked twice per connection.

Applications list mechanisms before they log in: pkcs11-tool ``-M``, Java's SunPKCS11 when the
provider starts (it calls C_GetMechanismInfo for every mechanism to build its services),
python-pkcs11's ``slot.get_mechanisms()``; PKCS#11 asks no session for them at all. So the
request goes without a login first; a node that wants one for it is asked with the login of
any application on this host, preferably the caller's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from strongroom.agent.nodes import LOGIN_CODES, NodeLink, NodePool, NodeTimeout, NodeUnavailable
from strongroom.agent.state import App

log = logging.getLogger("strongroom.agent")

#: At most this many mechanisms are taken from a node's answer (the module's list is bounded too).
MAX_MECHANISMS = 1024


async def mechanism_list(pool: NodePool, apps: Iterable[App], prefer: App | None) -> list[dict[str, Any]]:
    """``[{"mechanism", "min_key_size", "max_key_size", "flags", …}]`` of the node that serves ``prefer``
    (its home link, else the least loaded one); when no node answers, the last list a node gave."""
    try:
        link: NodeLink | None = await pool.acquire(prefer.home if prefer is not None else None)
    except NodeUnavailable:
        link = None
    if link is not None and link.mechanisms is None:
        await _learn(pool, link, [prefer, *apps] if prefer is not None else list(apps))
    if link is not None and link.mechanisms is not None:
        return link.mechanisms
    known = next((other.mechanisms for other in pool.links if other.mechanisms is not None), None)
    if known is not None:
        return known
    return await _this_software()


async def _learn(pool: NodePool, link: NodeLink, apps: list[App]) -> None:
    epoch = link.epoch
    try:
        reply = await link.request("mechanism.list", {}, None)
    except (NodeUnavailable, NodeTimeout) as exc:
        log.info("mechanism.list on node %s failed: %s", link.name, exc)
        return
    if reply.ok:
        listing = reply.body
    elif reply.code in LOGIN_CODES:
        listing = await _with_a_login(pool, link, apps)
    else:
        log.info("node %s refused mechanism.list: %s", link.name, reply.body)
        return
    if not isinstance(listing, dict) or not isinstance(listing.get("mechanisms"), list):
        return
    if link.epoch == epoch:  # an answer from a connection since replaced is not kept on the new one
        link.mechanisms = [m for m in listing["mechanisms"][:MAX_MECHANISMS] if isinstance(m, dict)]


async def _with_a_login(pool: NodePool, link: NodeLink, apps: list[App]) -> Any:
    """``mechanism.list`` under the login of any application of this host that has one."""
    seen: set[int] = set()
    for app in apps:
        if id(app) in seen or app.logins is None or app.logins.closed:
            continue
        seen.add(id(app))
        try:
            body, _link, _serial = await pool.call("mechanism.list", {}, logins=app.logins, link=link, pinned=True,
                                                   idempotent=True)
        except Exception as exc:  # noqa: BLE001 - try the next login
            log.info("mechanism.list through %s failed: %s", app.logins.identity.username, exc)
            continue
        return body
    return None


async def _this_software() -> list[dict[str, Any]]:
    """The mechanisms this host's copy of the node software lists: only while no node answers
    ``mechanism.list`` without a login and nobody on this host is logged in. Not kept, so the first
    answer of a node replaces it.

    Transitional: once the node serves ``mechanism.list`` without a login (it is public in PKCS#11),
    this fallback and with it the agent's last import of node-side code (``dispatch``, ``mechanisms``)
    go away.
    """
    import strongroom.mechanisms  # noqa: F401 - registers every family
    from strongroom.dispatch.ops.mechanism import list_mechanisms

    return list((await list_mechanisms(None, None))["mechanisms"])
