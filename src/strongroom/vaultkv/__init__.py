"""A HashiCorp Vault KV version 2 front door for databases that encrypt themselves.

MariaDB's ``hashicorp_key_management`` plugin and Percona's pg_tde fetch their data keys from a
Vault KV v2 engine. This package serves the few routes they call, as an ordinary client of the
cluster (a crypto user, the *service user*): the node generates every key version, keeps it in
the barrier, checks the client's token on every request and audits every release
(:mod:`strongroom.dispatch.ops.vaultkv`).

* :mod:`.config` — the service's configuration file (``vaultkv.toml``);
* :mod:`.api` — the routes, their Vault-shaped answers and errors, the failure rate limit;
* :mod:`.server` — the HTTPS server (aiohttp) and ``strongroom vault-kv serve``;
* :mod:`.local` — the set-up in a ``strongroom up`` directory (service user, local token, certificate).

The background process of a local cluster is :mod:`strongroom.local.vaultkv`'s; the guide is
docs/tde.md.
"""
