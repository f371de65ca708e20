"""Random number generation (PKCS#11 v2.40 §5.15): C_GenerateRandom from the node's CSPRNG.

C_SeedRandom is answered by the module (CKR_RANDOM_SEED_NOT_SUPPORTED). A request above
the node's 64 KiB per call is split into pipelined node calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

from strongroom.agent.functions.common import require_user, stateless
from strongroom.agent.functions.registry import ULONG, Context, function
from strongroom.agent.returns import AgentError
from strongroom.errors import CKR

NODE_MAX = 64 * 1024
MAX_RANDOM = 2 << 20  # the largest byte string the protocol carries


@function("C_GenerateRandom", ULONG, ULONG)
async def generate_random(ctx: Context, handle: int, length: int) -> list[Any]:
    ctx.session(handle)
    require_user(ctx)
    if length == 0:
        return [b""]
    if length > MAX_RANDOM:
        raise AgentError(CKR.ARGUMENTS_BAD, f"at most {MAX_RANDOM} random bytes per call")
    sizes = [min(NODE_MAX, length - offset) for offset in range(0, length, NODE_MAX)]
    bodies = await asyncio.gather(*(stateless(ctx, "random.generate", {"length": size}) for size in sizes))
    return [b"".join(body["random"] for body in bodies)]
