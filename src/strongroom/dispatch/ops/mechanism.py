"""``mechanism.*``: what this node can do (C_GetMechanismList / C_GetMechanismInfo)."""

from __future__ import annotations

from typing import Any

from strongroom.constants import CKF
from strongroom.dispatch.call import Call
from strongroom.dispatch.table import operation
from strongroom.mechanisms.base import Capability, all_mechanisms
from strongroom.services import policy
from strongroom.services.state import ALL_STATES

_FLAGS = {
    Capability.ENCRYPT: CKF.ENCRYPT,
    Capability.DECRYPT: CKF.DECRYPT,
    Capability.SIGN: CKF.SIGN,
    Capability.VERIFY: CKF.VERIFY,
    Capability.DIGEST: CKF.DIGEST,
    Capability.GENERATE: CKF.GENERATE,
    Capability.GENERATE_KEY_PAIR: CKF.GENERATE_KEY_PAIR,
    Capability.WRAP: CKF.WRAP,
    Capability.UNWRAP: CKF.UNWRAP,
    Capability.DERIVE: CKF.DERIVE,
    Capability.ENCAPSULATE: CKF.ENCAPSULATE,
    Capability.DECAPSULATE: CKF.DECAPSULATE,
}


# Public, as PKCS#11 has it (C_GetMechanismList takes a slot, not a session): clients list
# mechanisms before they log in. The ranges are those the cluster policies let apply now: with
# legacy_algorithms = on, Triple-DES is listed and RSA and EC start lower (RSA-1024, P-192).
@operation("mechanism.list", states=ALL_STATES)
async def list_mechanisms(call: Call, _args: None) -> dict[str, Any]:
    legacy = (await policy.current(call.services.keyring.barrier)).legacy
    mechanisms = []
    for mechanism in all_mechanisms():
        if mechanism.legacy_only and not legacy:
            continue
        # CKF_HW: the operation runs off the caller's host, inside the HSM (as CloudHSM reports).
        flags = int(CKF.HW)
        for capability, flag in _FLAGS.items():
            if capability in mechanism.capabilities:
                flags |= flag
        mechanisms.append({
            "mechanism": int(mechanism.ckm),
            "name": "CKM_" + mechanism.ckm.name,
            "min_key_size": (mechanism.legacy_min_key_size if legacy and mechanism.legacy_min_key_size is not None
                             else mechanism.min_key_size),
            "max_key_size": mechanism.max_key_size,
            "flags": flags,
        })
    return {"mechanisms": mechanisms}
