"""Operation handlers, one module per op group (``user.create`` lives in ``user.py``).

Importing this package registers every operation in :data:`strongroom.dispatch.table.OPERATIONS`.
"""

from strongroom.dispatch.ops import (  # noqa: F401
    audit,
    backup,
    cluster,
    crypto,
    hsm,
    kem,
    key,
    kms,
    mechanism,
    node,
    object,
    p11session,
    quorum,
    random,
    session,
    user,
    vaultkv,
)
