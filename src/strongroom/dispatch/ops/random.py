"""``random.*``: random bytes from the node's CSPRNG (C_GenerateRandom). Crypto users, and sessions that
are not logged in (PKCS#11 gives a public session random numbers); not admins: as in CloudHSM, admins
manage the HSM and never use its cryptography."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from strongroom.auth.users import Role
from strongroom.dispatch.call import Call
from strongroom.dispatch.ops.object import check_public_rate
from strongroom.dispatch.table import operation
from strongroom.errors import DataLenRange

MAX_RANDOM_BYTES = 64 * 1024


@dataclass
class GenerateArgs:
    length: int


@operation("random.generate", args=GenerateArgs, roles=(Role.CRYPTO_USER.value, Role.PUBLIC.value))
async def generate(call: Call, args: GenerateArgs) -> dict[str, Any]:
    check_public_rate(call)
    if not 1 <= args.length <= MAX_RANDOM_BYTES:
        raise DataLenRange(f"ask for 1 to {MAX_RANDOM_BYTES} random bytes")
    return {"random": os.urandom(args.length)}
