"""The cluster services a node worker serves requests with, below the operation handlers (:mod:`strongroom.dispatch`).

One module per concern: the node's configuration, the node registry, the cluster identity, joining
(the clone-key exchange), the peers to ask for the key, backups and store freshness. The node process
(:mod:`strongroom.node`) builds them and hands them to the request pipeline.
"""
