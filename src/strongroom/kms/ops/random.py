"""GenerateRandom: random bytes from the cluster's CSPRNG (``random.generate``)."""

from __future__ import annotations

from typing import Any

from strongroom.kms.context import Context, kms_operation
from strongroom.kms.errors import Validation
from strongroom.kms.ops.common import b64, refuse_recipient

MAX_BYTES = 1024


@kms_operation("GenerateRandom", keyless=True)
async def generate_random(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    if p.body.get("NumberOfBytes") is None:
        raise Validation("NumberOfBytes is required.")
    length = p.integer("NumberOfBytes", minimum=1, maximum=MAX_BYTES)
    store = p.string("CustomKeyStoreId", max_len=64)
    p.check()
    refuse_recipient(p)
    assert length is not None
    if store is not None:
        from strongroom.kms.ops.keystores import store_random

        return {"Plaintext": b64(await store_random(ctx, store, length))}
    return {"Plaintext": b64(await ctx.backend.cluster.generate_random(length))}
