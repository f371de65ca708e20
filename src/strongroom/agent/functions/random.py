"""Random number generation (PKCS#11 v2.40 §5.15): C_GenerateRandom from the node's CSPRNG, for every
session (a public one through its anonymous login, PKCS#11 §6.7).

C_SeedRandom checks its session, then answers CKR_RANDOM_SEED_NOT_SUPPORTED: the node's
generator is the operating system's, which takes no seed from an application. A request above
the node's 64 KiB per call is split into pipelined node calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

from strongroom.agent.functions.common import stateless
from strongroom.agent.functions.registry import BYTES, ULONG, Context, function
from strongroom.agent.returns import AgentError
from strongroom.errors import CKR

NODE_MAX = 64 * 1024
MAX_RANDOM = 2 << 20  # the largest byte string the protocol carries


@function("C_GenerateRandom", ULONG, ULONG)
async def generate_random(ctx: Context, handle: int, length: int) -> list[Any]:
    ctx.session(handle)
    if length == 0:
        return [b""]
    if length > MAX_RANDOM:
        raise AgentError(CKR.ARGUMENTS_BAD, f"at most {MAX_RANDOM} random bytes per call")
    sizes = [min(NODE_MAX, length - offset) for offset in range(0, length, NODE_MAX)]
    bodies = await asyncio.gather(*(stateless(ctx, "random.generate", {"length": size}) for size in sizes))
    return [b"".join(body["random"] for body in bodies)]


@function("C_SeedRandom", ULONG, BYTES)
async def seed_random(ctx: Context, handle: int, _seed: bytes) -> list[Any]:
    ctx.session(handle)
    raise AgentError(CKR.RANDOM_SEED_NOT_SUPPORTED, "the node's generator takes no seed from an application")
