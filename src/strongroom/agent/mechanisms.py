"""The token's mechanisms (C_GetMechanismList / C_GetMechanismInfo), as the nodes list them.

The agent carries no mechanism code: it asks a node (``mechanism.list``) and keeps the answer
on that node's link (:attr:`NodeLink.mechanisms`) for the life of the connection, so a node
restarted with other software is asked again, and at most :data:`REFRESH_SECONDS`: the list
follows the cluster policy legacy_algorithms (Triple-DES, RSA-1024, P-192), which an admin
may change at any time.

Applications list mechanisms before they log in: pkcs11-tool ``-M``, Java's SunPKCS11 when the
provider starts (it calls C_GetMechanismInfo for every mechanism to build its services),
python-pkcs11's ``slot.get_mechanisms()``; PKCS#11 asks no session for them at all, and the
node serves ``mechanism.list`` without a login.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any

from strongroom.agent.nodes import NodeLink, NodePool, NodeTimeout, NodeUnavailable
from strongroom.agent.returns import AgentError
from strongroom.agent.state import App
from strongroom.errors import CKR

log = logging.getLogger("strongroom.agent")

#: At most this many mechanisms are taken from a node's answer (the module's list is bounded too).
MAX_MECHANISMS = 1024
#: How long a node's list is kept before it is asked again.
REFRESH_SECONDS = 10.0
_learned: weakref.WeakKeyDictionary[NodeLink, float] = weakref.WeakKeyDictionary()


async def mechanism_list(pool: NodePool, prefer: App | None) -> list[dict[str, Any]]:
    """``[{"mechanism", "min_key_size", "max_key_size", "flags", …}]`` of the node that serves ``prefer``
    (its home link, else the least loaded one); when no node answers, the last list a node gave."""
    try:
        link: NodeLink | None = await pool.acquire(prefer.home if prefer is not None else None)
    except NodeUnavailable:
        link = None
    if link is not None and (link.mechanisms is None
                             or time.monotonic() - _learned.get(link, 0.0) > REFRESH_SECONDS):
        await _learn(link)
    if link is not None and link.mechanisms is not None:
        return link.mechanisms
    known = next((other.mechanisms for other in pool.links if other.mechanisms is not None), None)
    if known is not None:
        return known
    raise AgentError(CKR.DEVICE_REMOVED, "no node of the cluster answers: the token's mechanisms are unknown")


async def _learn(link: NodeLink) -> None:
    epoch = link.epoch
    try:
        reply = await link.request("mechanism.list", {}, None)
    except (NodeUnavailable, NodeTimeout) as exc:
        log.info("mechanism.list on node %s failed: %s", link.name, exc)
        return
    listing = reply.body
    if not reply.ok or not isinstance(listing, dict) or not isinstance(listing.get("mechanisms"), list):
        log.info("node %s did not list its mechanisms: %s", link.name, reply.body)
        return
    if link.epoch == epoch:  # an answer from a connection since replaced is not kept on the new one
        link.mechanisms = [m for m in listing["mechanisms"][:MAX_MECHANISMS] if isinstance(m, dict)]
        _learned[link] = time.monotonic()
