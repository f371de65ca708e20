"""The services a node worker serves requests with, below the operation handlers (:mod:`strongroom.dispatch`).

One module per concern: the node's configuration (``config``), its health and counters (``health``), the
audit writer (``auditor``), the cluster key's life cycle (``keyring``) and the cluster state (``state``),
logins and PKCS#11 sessions (``sessions``), revocation, the node registry, the cluster identity, joining
(the clone-key exchange, ``join``) and the peers asked for the key, backups and store freshness. The node
process (:mod:`strongroom.node.worker`) builds them; handlers reach them through
:class:`strongroom.dispatch.call.Services`.
"""
