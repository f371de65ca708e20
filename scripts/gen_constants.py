#!/usr/bin/env python3
"""Generate src/strongroom/constants.py from the maintained PKCS#11 header of p11-kit.

Run after upgrading the header (Debian package libp11-kit-dev):
    python3 scripts/gen_constants.py [/usr/include/p11-kit-1/p11-kit/pkcs11.h]
It overwrites the file; `git diff src/strongroom/constants.py` then shows what the new header
changed (nothing, on the header the committed file was made from). No test runs this: a header
update is a deliberate step. Return codes (CKR_*) are not generated: they live, with the errors
that carry them, in src/strongroom/errors.py.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HEADER = Path("/usr/include/p11-kit-1/p11-kit/pkcs11.h")
OUTPUT = Path(__file__).resolve().parent.parent / "src" / "strongroom" / "constants.py"
PREFIXES = ["CKA", "CKM", "CKK", "CKO", "CKF", "CKG", "CKD", "CKZ", "CKC", "CKU", "CKS", "CKP"]
DEFINE = re.compile(r"^#define\s+(CK[A-Z]_[A-Za-z0-9_]+)\s+(.+?)\s*$", re.M)


def parse(header: str) -> dict[str, dict[str, int]]:
    values: dict[str, int] = {}
    for name, expr in DEFINE.findall(header):
        expr = re.sub(r"/\*.*?\*/", "", expr).strip()
        py = re.sub(r"\(\s*unsigned long\s*\)", "", expr)
        py = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)[uU]?[lL]{0,2}\b", r"\1", py)
        py = re.sub(r"\b(CK[A-Z]_[A-Za-z0-9_]+)\b",
                    lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), py)
        if re.fullmatch(r"[0-9xa-fA-F()|<>\s+~]+", py):
            try:
                values[name] = eval(py, {"__builtins__": {}})
            except SyntaxError:
                pass
    groups: dict[str, dict[str, int]] = {p: {} for p in PREFIXES}
    for name, value in values.items():
        prefix, _, rest = name.partition("_")
        if prefix in groups and ((value >= 0 and rest and not rest[0].isdigit()) or rest[:1].isdigit()):
            groups[prefix][rest] = value
    return groups


#: PKCS#11 3.0/3.2 identifiers that p11-kit 0.24's v2.40 header lacks and the node uses (ML-KEM, ML-DSA,
#: SHA-3, HKDF), written from the OASIS PKCS#11 3.2 specification's tables. Parameter sets (CKP_ML_DSA_44 = 1,
#: CKP_ML_KEM_512 = 1 ...) share values across families and are kept with their mechanisms
#: (strongroom.mechanisms.mldsa / mlkem). Once the project's own 3.x header exists, read it here instead.
ADDITIONS_3_2 = {
    "CKK_ML_KEM": 0x49, "CKK_ML_DSA": 0x4A,
    "CKM_ML_KEM_KEY_PAIR_GEN": 0x0F, "CKM_ML_KEM": 0x17, "CKM_ML_DSA_KEY_PAIR_GEN": 0x1C, "CKM_ML_DSA": 0x1D,
    "CKA_PARAMETER_SET": 0x61D, "CKA_ENCAPSULATE": 0x633, "CKA_DECAPSULATE": 0x634, "CKA_SEED": 0x637,
    "CKF_ENCAPSULATE": 0x10000000, "CKF_DECAPSULATE": 0x20000000,
    # PKCS#11 3.0 (kept in 3.2): SHA-3 digests, HMACs, their key types and key generation; HKDF.
    "CKM_SHA3_256": 0x2B0, "CKM_SHA3_256_HMAC": 0x2B1,
    "CKM_SHA3_256_HMAC_GENERAL": 0x2B2, "CKM_SHA3_256_KEY_GEN": 0x2B3,
    "CKM_SHA3_224": 0x2B5, "CKM_SHA3_224_HMAC": 0x2B6,
    "CKM_SHA3_224_HMAC_GENERAL": 0x2B7, "CKM_SHA3_224_KEY_GEN": 0x2B8,
    "CKM_SHA3_384": 0x2C0, "CKM_SHA3_384_HMAC": 0x2C1,
    "CKM_SHA3_384_HMAC_GENERAL": 0x2C2, "CKM_SHA3_384_KEY_GEN": 0x2C3,
    "CKM_SHA3_512": 0x2D0, "CKM_SHA3_512_HMAC": 0x2D1,
    "CKM_SHA3_512_HMAC_GENERAL": 0x2D2, "CKM_SHA3_512_KEY_GEN": 0x2D3,
    "CKK_SHA3_224_HMAC": 0x36, "CKK_SHA3_256_HMAC": 0x37, "CKK_SHA3_384_HMAC": 0x38, "CKK_SHA3_512_HMAC": 0x39,
    "CKM_HKDF_DERIVE": 0x402A, "CKM_HKDF_DATA": 0x402B, "CKM_HKDF_KEY_GEN": 0x402C, "CKK_HKDF": 0x42,
}


#: Strongroom's vendor-defined attributes (CKA_VENDOR_DEFINED | 0x53520000 + n, "SR"): a key's quorum values,
#: CloudHSM's manage-key-quorum-value and use-key-quorum-value (docs/quorum.md).
VENDOR = {
    "CKA_STRONGROOM_MANAGE_KEY_QUORUM": 0x80000000 | 0x53520001,
    "CKA_STRONGROOM_USE_KEY_QUORUM": 0x80000000 | 0x53520002,
}


def add_3_2(groups: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    for name, value in {**ADDITIONS_3_2, **VENDOR}.items():
        prefix, _, rest = name.partition("_")
        groups[prefix].setdefault(rest, value)
    return groups


#: Names the spec deprecated in favour of another with the same value; the current name is
#: listed first so that it is the one IntEnum reports (CKK.EC, not CKK.ECDSA).
DEPRECATED = {"CKK": {"ECDSA", "CAST5"}, "CKA": {"ECDSA_PARAMS"}, "CKM": {"ECDSA_KEY_PAIR_GEN"}}


def render(groups: dict[str, dict[str, int]]) -> str:
    lines = [
        '"""PKCS#11 constants (v2.40 + the 3.0 additions p11-kit knows), generated from p11-kit\'s header.',
        "",
        "The PKCS#11 3.x additions the node uses (ML-KEM, ML-DSA, SHA-3, HKDF) come from the script's ADDITIONS_3_2,",
        "and Strongroom's vendor-defined attributes from its VENDOR.",
        "",
        "Do not edit: run scripts/gen_constants.py. Names drop the prefix (``CKA.LABEL`` is ``CKA_LABEL``);",
        "names that start with a digit keep a leading underscore. Aliases share a value; IntEnum keeps",
        "the first name as canonical.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import enum",
    ]
    for prefix in PREFIXES:
        deprecated = DEPRECATED.get(prefix, set())
        members = dict(sorted(groups[prefix].items(), key=lambda item: item[0] in deprecated))
        if not members:
            continue
        lines += ["", "", f"class {prefix}(enum.IntEnum):"]
        for name, value in members.items():
            ident = name if not name[0].isdigit() else "_" + name
            lines.append(f"    {ident} = {value:#x}")
    return "\n".join(lines) + "\n"


def main() -> None:
    header = Path(sys.argv[1]) if len(sys.argv) > 1 else HEADER
    OUTPUT.write_text(render(add_3_2(parse(header.read_text()))))
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
