"""The ``key`` and ``crypto`` command groups, modelled on CloudHSM CLI.

Keys are chosen with filters, as in CloudHSM CLI: ``--filter attr.label=signing
attr.class=private-key`` or ``--filter key-reference=0x2a``. A command that acts on one
key refuses a filter matching none or several. When a crypto command's filter does not
name a class, only the classes that can do the job are considered (``crypto sign
--filter attr.label=L`` picks the private key of the pair labelled L, ``crypto verify``
its public key).

Attribute names are CloudHSM CLI's, in lower case: ``label``, ``id`` (hex), ``sign``,
``extractable``, ``wrap-with-trusted`` … (see :data:`ATTRIBUTES`). ``class`` takes
``secret-key|public-key|private-key|certificate|data`` and ``key-type`` takes
``rsa|ec|ec-edwards|aes|generic-secret``.

Heavy imports (cryptography, the mechanism modules) stay inside the functions that need
them, so that every other command starts as fast as before.
"""

from __future__ import annotations

import argparse
import base64
import functools
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strongroom.cli.context import AddCommand, Context, Handler
from strongroom.cli.output import CliError, emit, table
from strongroom.client import Client, ClientError
from strongroom.constants import CKA, CKG, CKK, CKM, CKO
from strongroom.errors import HsmError

#: One node call carries at most this much data (mechanisms.base.MAX_DATA); larger inputs
#: go through the multi-part calls in chunks of CHUNK bytes.
MAX_SINGLE_PART = 1 << 20
CHUNK = 512 * 1024

# --- attribute names -------------------------------------------------------------------------

CLASS_NAMES: dict[str, CKO] = {
    "secret-key": CKO.SECRET_KEY,
    "public-key": CKO.PUBLIC_KEY,
    "private-key": CKO.PRIVATE_KEY,
    "certificate": CKO.CERTIFICATE,
    "data": CKO.DATA,
}
KEY_TYPE_NAMES: dict[str, CKK] = {
    "rsa": CKK.RSA,
    "ec": CKK.EC,
    "ec-edwards": CKK.EC_EDWARDS,
    "aes": CKK.AES,
    "generic-secret": CKK.GENERIC_SECRET,
    "ml-dsa": CKK.ML_DSA,
    "ml-kem": CKK.ML_KEM,
    "hkdf": CKK.HKDF,
    "sha3-224-hmac": CKK.SHA3_224_HMAC,
    "sha3-256-hmac": CKK.SHA3_256_HMAC,
    "sha3-384-hmac": CKK.SHA3_384_HMAC,
    "sha3-512-hmac": CKK.SHA3_512_HMAC,
}
#: CKA_PARAMETER_SET values (PKCS#11 3.2: CKP_ML_DSA_44/65/87 = 1/2/3, CKP_ML_KEM_512/768/1024 = 1/2/3) by the
#: number the CLI takes, per key type.
PARAMETER_SETS: dict[CKK, dict[str, int]] = {
    CKK.ML_DSA: {"44": 1, "65": 2, "87": 3},
    CKK.ML_KEM: {"768": 2, "1024": 3},  # ML-KEM-512: not in pyca/cryptography 51, so not in the cluster
}
_CLASS_BY_VALUE = {int(v): k for k, v in CLASS_NAMES.items()}
_KEY_TYPE_BY_VALUE = {int(v): k for k, v in KEY_TYPE_NAMES.items()}


@dataclass(frozen=True)
class Attribute:
    name: str
    cka: CKA
    kind: str  # bool | text | hex | class | key-type

    def parse(self, text: str) -> Any:
        if self.kind == "bool":
            lowered = text.strip().lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise CliError(f"{self.name} takes true or false, not {text!r}")
        if self.kind == "text":
            return text.encode("utf-8")
        if self.kind == "hex":
            return _hex(text, self.name)
        if self.kind == "class":
            return int(_choice(text, CLASS_NAMES, self.name))
        return int(_choice(text, KEY_TYPE_NAMES, self.name))


ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in [
        Attribute("label", CKA.LABEL, "text"),
        Attribute("id", CKA.ID, "hex"),
        Attribute("class", CKA.CLASS, "class"),
        Attribute("key-type", CKA.KEY_TYPE, "key-type"),
        Attribute("token", CKA.TOKEN, "bool"),
        Attribute("private", CKA.PRIVATE, "bool"),
        Attribute("modifiable", CKA.MODIFIABLE, "bool"),
        Attribute("copyable", CKA.COPYABLE, "bool"),
        Attribute("destroyable", CKA.DESTROYABLE, "bool"),
        Attribute("encrypt", CKA.ENCRYPT, "bool"),
        Attribute("decrypt", CKA.DECRYPT, "bool"),
        Attribute("sign", CKA.SIGN, "bool"),
        Attribute("verify", CKA.VERIFY, "bool"),
        Attribute("wrap", CKA.WRAP, "bool"),
        Attribute("unwrap", CKA.UNWRAP, "bool"),
        Attribute("derive", CKA.DERIVE, "bool"),
        Attribute("encapsulate", CKA.ENCAPSULATE, "bool"),
        Attribute("decapsulate", CKA.DECAPSULATE, "bool"),
        Attribute("sensitive", CKA.SENSITIVE, "bool"),
        Attribute("extractable", CKA.EXTRACTABLE, "bool"),
        Attribute("trusted", CKA.TRUSTED, "bool"),
        Attribute("wrap-with-trusted", CKA.WRAP_WITH_TRUSTED, "bool"),
    ]
}

#: What `key list --verbose` (and the output of generate/unwrap/import) shows, in this order.
READABLE: list[tuple[str, CKA]] = [
    ("token", CKA.TOKEN),
    ("private", CKA.PRIVATE),
    ("modifiable", CKA.MODIFIABLE),
    ("copyable", CKA.COPYABLE),
    ("destroyable", CKA.DESTROYABLE),
    ("local", CKA.LOCAL),
    ("encrypt", CKA.ENCRYPT),
    ("decrypt", CKA.DECRYPT),
    ("sign", CKA.SIGN),
    ("verify", CKA.VERIFY),
    ("wrap", CKA.WRAP),
    ("unwrap", CKA.UNWRAP),
    ("derive", CKA.DERIVE),
    ("encapsulate", CKA.ENCAPSULATE),
    ("decapsulate", CKA.DECAPSULATE),
    ("sensitive", CKA.SENSITIVE),
    ("always-sensitive", CKA.ALWAYS_SENSITIVE),
    ("extractable", CKA.EXTRACTABLE),
    ("never-extractable", CKA.NEVER_EXTRACTABLE),
    ("trusted", CKA.TRUSTED),
    ("wrap-with-trusted", CKA.WRAP_WITH_TRUSTED),
    ("key-length-bytes", CKA.VALUE_LEN),
    ("check-value", CKA.CHECK_VALUE),
    ("modulus-size-bits", CKA.MODULUS_BITS),
    ("public-exponent", CKA.PUBLIC_EXPONENT),
    ("modulus", CKA.MODULUS),
    ("curve", CKA.EC_PARAMS),
    ("ec-point", CKA.EC_POINT),
    ("parameter-set", CKA.PARAMETER_SET),
    ("key-gen-mechanism", CKA.KEY_GEN_MECHANISM),
    # Strongroom's vendor attributes: shown under key-info as CloudHSM's key-quorum-values.
    ("manage-key-quorum-value", CKA.STRONGROOM_MANAGE_KEY_QUORUM),
    ("use-key-quorum-value", CKA.STRONGROOM_USE_KEY_QUORUM),
]
QUORUM_VALUES = ("manage-key-quorum-value", "use-key-quorum-value")


def _choice(text: str, options: dict[str, Any], what: str) -> Any:
    value = options.get(text.strip().lower())
    if value is None:
        raise CliError(f"unknown {what} {text!r}; valid: {', '.join(options)}")
    return value


def _hex(text: str, what: str) -> bytes:
    cleaned = text.strip()
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise CliError(f"{what} must be hex, not {text!r}") from None


def attribute(name: str) -> Attribute:
    found = ATTRIBUTES.get(name.strip().lower())
    if found is None:
        raise CliError(f"unknown attribute {name!r}; valid names: {', '.join(ATTRIBUTES)}")
    return found


def parse_assignment(text: str, what: str = "attribute") -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise CliError(f"{what} {text!r} is not NAME=VALUE")
    return name.strip(), value


def parse_attributes(items: Iterable[str] | None) -> dict[int, Any]:
    template: dict[int, Any] = {}
    for item in items or ():
        name, value = parse_assignment(item)
        attr = attribute(name)
        template[attr.cka] = attr.parse(value)
    return template


def split_pair_attributes(items: Iterable[str] | None) -> tuple[dict[int, Any], dict[int, Any]]:
    """--attributes of a key pair: ``public.NAME=V`` and ``private.NAME=V`` go to one template,
    unprefixed ones to each template whose class has the attribute (both if neither has it,
    so that the node says what is wrong)."""
    from strongroom.objects.attributes import RULES

    public: dict[int, Any] = {}
    private: dict[int, Any] = {}
    for item in items or ():
        name, value = parse_assignment(item)
        prefix, dot, rest = name.partition(".")
        if dot and prefix.lower() in ("public", "private"):
            attr = attribute(rest)
            (public if prefix.lower() == "public" else private)[attr.cka] = attr.parse(value)
            continue
        attr = attribute(name)
        parsed = attr.parse(value)
        classes = RULES[attr.cka].classes if attr.cka in RULES else frozenset()
        targets = [t for t, cls in ((public, CKO.PUBLIC_KEY), (private, CKO.PRIVATE_KEY)) if cls in classes]
        for target in targets or (public, private):
            target[attr.cka] = parsed
    return public, private


# --- filters ---------------------------------------------------------------------------------


@dataclass
class KeyFilter:
    template: dict[int, Any]
    handle: int | None
    text: str

    @property
    def names_class(self) -> bool:
        return CKA.CLASS in self.template or self.handle is not None


def parse_filter(items: Iterable[str] | None) -> KeyFilter:
    template: dict[int, Any] = {}
    handle: int | None = None
    words = list(items or ())
    for item in words:
        name, value = parse_assignment(item, "filter")
        lowered = name.lower()
        if lowered in ("key-reference", "handle"):
            try:
                handle = int(value.strip(), 0)
            except ValueError:
                raise CliError(f"key-reference must be a number such as 0x2a, not {value!r}") from None
            continue
        lowered = lowered.removeprefix("attr.")
        attr = attribute(lowered)
        template[attr.cka] = attr.parse(value)
    return KeyFilter(template, handle, " ".join(words) or "(none)")


def find_keys(client: Client, key_filter: KeyFilter, classes: Iterable[CKO] | None = None) -> list[dict[str, Any]]:
    views = client.list_objects(key_filter.template)
    if key_filter.handle is not None:
        views = [v for v in views if v["handle"] == key_filter.handle]
    if classes is not None and not key_filter.names_class:
        wanted = {c.name for c in classes}
        views = [v for v in views if v["class"] in wanted]
    return views


def one_key(client: Client, key_filter: KeyFilter, what: str = "key",
            classes: Iterable[CKO] | None = None) -> dict[str, Any]:
    classes = None if classes is None else tuple(classes)
    views = find_keys(client, key_filter, classes)
    hint = ""
    if classes is not None and not key_filter.names_class:
        hint = " (" + " or ".join(_CLASS_BY_VALUE[int(c)] for c in classes) + ")"
    if not views:
        raise CliError(f"no {what}{hint} matches the filter {key_filter.text}")
    if len(views) > 1:
        refs = ", ".join(_ref(v["handle"]) for v in views[:5]) + (", …" if len(views) > 5 else "")
        raise CliError(f"the filter {key_filter.text} matches {len(views)} keys ({refs}); narrow the filter "
                       f"(e.g. attr.class=..., attr.id=... or key-reference=0x...)")
    return views[0]


# --- rendering -------------------------------------------------------------------------------


def _ref(handle: int) -> str:
    return f"0x{handle:08x}"


def _class_name(value: Any) -> str:
    if isinstance(value, str):  # public views carry the CKO name
        name = value
        try:
            value = CKO[name]
        except KeyError:
            return name.lower()
    return _CLASS_BY_VALUE.get(int(value), str(value))


def _key_type_name(value: Any) -> str | None:
    if value is None or value == b"":
        return None
    if isinstance(value, str):
        name = value
        try:
            value = CKK[name]
        except KeyError:
            return name.lower()
    return _KEY_TYPE_BY_VALUE.get(int(value), str(value))


def _curve_name(params: bytes) -> str:
    from strongroom.encoding import ec as ec_mech
    from strongroom.encoding import eddsa

    try:
        return ec_mech.curve_from_params(params).name
    except HsmError:
        pass
    try:
        curve = eddsa.curve_from_params(params)
        return {"edwards25519": "ed25519", "edwards448": "ed448"}.get(curve.name, curve.name)
    except HsmError:
        return params.hex()


def _render(name: str, value: Any) -> Any:
    if name == "curve":
        return _curve_name(value) if value else None
    if name == "public-exponent":
        return int.from_bytes(value, "big") if value else None
    if isinstance(value, bytes):
        return value.hex() if value else ("" if name in ("check-value",) else None)
    return value


def read_attributes(client: Client, handle: int, items: list[tuple[str, CKA]]) -> dict[str, Any]:
    """Readable attributes by CLI name; those the object lacks are left out."""
    result = client.call("object.get_attributes", handle=handle, types=[int(c) for _, c in items])
    values = {int(k): v for k, v in result["attributes"]}
    shown: dict[str, Any] = {}
    for name, cka in items:
        value = values.get(int(cka))
        if value is None:
            continue
        rendered = _render(name, value)
        if rendered is not None:
            shown[name] = rendered
    return shown


def _key_size_bits(attrs: dict[str, Any]) -> int | None:
    if "key-length-bytes" in attrs and isinstance(attrs["key-length-bytes"], int):
        return 8 * attrs["key-length-bytes"]
    bits = attrs.get("modulus-size-bits")
    if isinstance(bits, int):
        return bits
    if attrs.get("modulus"):
        return int(attrs["modulus"], 16).bit_length()
    curve = attrs.get("curve")
    return {"secp256r1": 256, "secp384r1": 384, "secp521r1": 521, "secp256k1": 256, "ed25519": 255,
            "ed448": 448}.get(curve or "")


#: CKA_KEY_GEN_MECHANISM when the key was not generated in the cluster (CK_UNAVAILABLE_INFORMATION).
_UNAVAILABLE = 0xFFFFFFFFFFFFFFFF


def _mechanism_name(value: int) -> str:
    try:
        return CKM(value).name.lower().replace("_", "-")
    except ValueError:
        return hex(value)


def _describe_origin(attrs: dict[str, Any], key_type: str | None) -> None:
    """Names in place of numbers (the parameter set, the generating mechanism), and the key's origin as the
    cluster recorded it when the key was made: generated inside (CKA_LOCAL, CKA_KEY_GEN_MECHANISM) and never
    out of it in clear (CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE), or made from outside material."""
    parameter_set = attrs.get("parameter-set")
    if isinstance(parameter_set, int) and key_type in ("ml-dsa", "ml-kem"):
        names = {v: f"{key_type.upper()}-{k}" for k, v in PARAMETER_SETS[KEY_TYPE_NAMES[key_type]].items()}
        attrs["parameter-set"] = names.get(parameter_set, parameter_set)
    mechanism_value = attrs.pop("key-gen-mechanism", None)
    generated = isinstance(mechanism_value, int) and mechanism_value != _UNAVAILABLE
    if "local" not in attrs:
        return
    if attrs["local"] and generated:
        assert isinstance(mechanism_value, int)
        origin: dict[str, Any] = {"generated-in-cluster": True, "mechanism": _mechanism_name(mechanism_value)}
    else:
        origin = {"generated-in-cluster": False}
    if "always-sensitive" in attrs:
        origin["never-revealed"] = bool(attrs["always-sensitive"] and attrs.get("never-extractable"))
    attrs["origin"] = origin


def key_entry(client: Client, view: dict[str, Any], verbose: bool) -> dict[str, Any]:
    """One key as CloudHSM CLI shows it: key-reference, key-info (owners, sharing), attributes."""
    attributes: dict[str, Any] = {
        "class": _class_name(view["class"]),
        "key-type": _key_type_name(view.get("key_type")),
        "label": view["label"],
        "id": view["id"],
    }
    quorum_values: dict[str, Any] = {}
    if verbose:
        extra = read_attributes(client, view["handle"], READABLE)
        quorum_values = {name: extra.pop(name) for name in QUORUM_VALUES if name in extra}
        _describe_origin(extra, attributes["key-type"])
        attributes.update(extra)
        size = _key_size_bits(extra)
        if size is not None:
            attributes["key-size-bits"] = size
    else:
        attributes["token"] = view["token"]
    return {
        "key-reference": _ref(view["handle"]),
        "handle": view["handle"],
        "key-info": {"key-owners": [view["owner"]], "shared-users": view["shared_with"],
                     **({"key-quorum-values": quorum_values} if quorum_values else {})},
        "attributes": attributes,
    }


def new_key_entry(client: Client, handle: int) -> dict[str, Any]:
    """The entry of a key this command just made (owned by the caller, shared with nobody)."""
    wanted = [CKA.CLASS, CKA.KEY_TYPE, CKA.LABEL, CKA.ID, CKA.TOKEN]
    result = client.call("object.get_attributes", handle=handle, types=[int(c) for c in wanted])
    raw = {int(k): v for k, v in result["attributes"]}
    key_type = raw.get(CKA.KEY_TYPE)
    view: dict[str, Any] = {
        "handle": handle,
        "class": CKO(raw[CKA.CLASS]).name,
        "key_type": None if key_type in (None, b"") else CKK(key_type).name,
        "label": (raw.get(CKA.LABEL) or b"").decode("utf-8", "replace"),
        "id": (raw.get(CKA.ID) or b"").hex(),
        "owner": client.username,
        "shared_with": [],
        "token": bool(raw.get(CKA.TOKEN)),
    }
    return key_entry(client, view, verbose=True)


def _entry_line(entry: dict[str, Any]) -> str:
    a = entry["attributes"]
    words = [entry["key-reference"], a["class"], a.get("key-type") or ""]
    if a.get("label"):
        words.append(f"label {a['label']!r}")
    return " ".join(w for w in words if w)


def _entries_text(entries: list[dict[str, Any]], verbose: bool) -> str:
    rows = [
        {
            "key-reference": e["key-reference"],
            "class": e["attributes"]["class"],
            "key-type": e["attributes"].get("key-type") or "",
            "label": e["attributes"]["label"],
            "id": e["attributes"]["id"],
            "owner": ",".join(e["key-info"]["key-owners"]),
            "shared-with": ",".join(e["key-info"]["shared-users"]),
        }
        for e in entries
    ]
    text = table(rows, ["key-reference", "class", "key-type", "label", "id", "owner", "shared-with"])
    if verbose:
        for entry in entries:
            text += f"\n\n{_entry_line(entry)}"
            for name, value in entry["attributes"].items():
                if name not in ("class", "key-type", "label"):
                    text += f"\n  {name}: {_text_value(value)}"
    return text


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_text_value(v)}" for k, v in value.items())
    return str(value)


# --- mechanisms --------------------------------------------------------------------------------

HASHES: dict[str, tuple[CKM, CKG, int]] = {
    "sha1": (CKM.SHA_1, CKG.MGF1_SHA1, 20),
    "sha224": (CKM.SHA224, CKG.MGF1_SHA224, 28),
    "sha256": (CKM.SHA256, CKG.MGF1_SHA256, 32),
    "sha384": (CKM.SHA384, CKG.MGF1_SHA384, 48),
    "sha512": (CKM.SHA512, CKG.MGF1_SHA512, 64),
}


@dataclass(frozen=True)
class Mech:
    name: str
    ckm: CKM
    uses: frozenset[str]
    multipart: bool = False
    #: pss | oaep | gcm | cbc | ctr | ml-dsa: how --hash/--iv/--aad/--context become mechanism parameters.
    params: str | None = None
    #: The hash a *-with-hash mechanism is bound to (PSS params must name it).
    bound_hash: str | None = None


def _mechanisms() -> dict[str, Mech]:
    sign = frozenset({"sign", "verify"})
    cipher = frozenset({"encrypt", "decrypt"})
    wraps = frozenset({"wrap", "unwrap"})
    table_: list[Mech] = [
        Mech("rsa-pkcs", CKM.RSA_PKCS, sign | cipher | wraps),
        Mech("rsa-pkcs-pss", CKM.RSA_PKCS_PSS, sign, params="pss"),
        Mech("rsa-oaep", CKM.RSA_PKCS_OAEP, cipher | wraps, params="oaep"),
        Mech("ecdsa", CKM.ECDSA, sign),
        Mech("eddsa", CKM.EDDSA, sign),
        Mech("ml-dsa", CKM.ML_DSA, sign, multipart=True, params="ml-dsa"),
        Mech("cmac", CKM.AES_CMAC, sign, multipart=True),
        Mech("aes-ecb", CKM.AES_ECB, cipher, multipart=True),
        Mech("aes-cbc", CKM.AES_CBC, cipher, multipart=True, params="cbc"),
        Mech("aes-cbc-pad", CKM.AES_CBC_PAD, cipher | wraps, multipart=True, params="cbc"),
        Mech("aes-ctr", CKM.AES_CTR, cipher, multipart=True, params="ctr"),
        Mech("aes-gcm", CKM.AES_GCM, cipher | wraps, multipart=True, params="gcm"),
        Mech("aes-key-wrap", CKM.AES_KEY_WRAP, cipher | wraps),
        Mech("aes-key-wrap-pad", CKM.AES_KEY_WRAP_PAD, cipher | wraps),
    ]
    for h in HASHES:
        upper = "SHA1" if h == "sha1" else h.upper()
        hmac_ckm = CKM.SHA_1_HMAC if h == "sha1" else CKM[f"{upper}_HMAC"]
        table_ += [
            Mech(f"{h}-rsa-pkcs", CKM[f"{upper}_RSA_PKCS"], sign, multipart=True),
            Mech(f"{h}-rsa-pkcs-pss", CKM[f"{upper}_RSA_PKCS_PSS"], sign, multipart=True, params="pss",
                 bound_hash=h),
            Mech(f"ecdsa-{h}", CKM[f"ECDSA_{upper}"], sign, multipart=True),
            Mech(f"{h}-hmac", hmac_ckm, sign, multipart=True),
        ]
    for bits in ("224", "256", "384", "512"):
        table_.append(Mech(f"sha3-{bits}-hmac", CKM[f"SHA3_{bits}_HMAC"], sign, multipart=True))
    return {m.name: m for m in table_}


MECHANISMS = _mechanisms()
#: CloudHSM CLI and common spellings.
MECHANISM_ALIASES = {
    "ed25519": "eddsa",
    "aes-cmac": "cmac",
    "aes-no-pad": "aes-key-wrap",
    "aes-zero-pad": "aes-key-wrap-pad",
    "rsa-pss": "rsa-pkcs-pss",
    "rsa-pkcs-oaep": "rsa-oaep",
    "mldsa": "ml-dsa",
}


def mechanisms_for(use: str) -> list[str]:
    return [name for name, m in MECHANISMS.items() if use in m.uses]


def mechanism(name: str, use: str) -> Mech:
    key = name.strip().lower()
    key = MECHANISM_ALIASES.get(key, key)
    found = MECHANISMS.get(key)
    if found is None or use not in found.uses:
        raise CliError(f"mechanism {name!r} cannot {use}; valid: {', '.join(mechanisms_for(use))}")
    return found


def _iv_arg(args: argparse.Namespace) -> bytes | None:
    iv = getattr(args, "iv", None)
    return None if iv is None else _hex(iv, "--iv")


def mechanism_params(client: Client, mech: Mech, use: str, args: argparse.Namespace) -> tuple[Any, bytes | None]:
    """Parameters for the node, and an IV this command chose (to report) if any."""
    iv = _iv_arg(args)
    aad = getattr(args, "aad", None)
    hash_name = getattr(args, "hash", None)
    if mech.params not in ("cbc", "ctr", "gcm") and iv is not None:
        raise CliError(f"{mech.name} takes no --iv")
    if mech.params != "gcm" and aad is not None:
        raise CliError(f"--aad applies to aes-gcm only, not {mech.name}")
    if mech.params not in ("pss", "oaep") and hash_name is not None:
        raise CliError(f"--hash applies to rsa-pkcs-pss and rsa-oaep, not {mech.name}")
    context = getattr(args, "context", None)
    if mech.params != "ml-dsa" and context is not None:
        raise CliError(f"--context applies to ml-dsa only, not {mech.name}")
    if mech.params == "ml-dsa":
        # CK_SIGN_ADDITIONAL_CONTEXT: FIPS 204's context string (0-255 bytes); signing is hedged.
        if context is None:
            return None, None
        value = _hex(context, "--context")
        if len(value) > 255:
            raise CliError(f"--context is at most 255 bytes, not {len(value)}")
        return {"context": value}, None
    if mech.params == "pss":
        name = hash_name or mech.bound_hash or "sha256"
        if mech.bound_hash and name != mech.bound_hash:
            raise CliError(f"{mech.name} hashes with {mech.bound_hash}; --hash {name} contradicts it")
        ckm, mgf, size = HASHES[name]
        return {"hash": int(ckm), "mgf": int(mgf), "salt_len": size}, None
    if mech.params == "oaep":
        ckm, mgf, _size = HASHES[hash_name or "sha256"]
        return {"hash": int(ckm), "mgf": int(mgf)}, None
    chosen: bytes | None = None
    decrypting = use in ("decrypt", "unwrap")
    if mech.params in ("cbc", "ctr"):
        if iv is None:
            if decrypting:
                raise CliError(f"{mech.name} {'unwrapping' if use == 'unwrap' else 'decryption'} needs --iv "
                               f"(the IV used to encrypt)")
            iv = chosen = client.generate_random(16)  # the HSM's random generator
        if len(iv) != 16:
            raise CliError(f"{mech.name} needs a 16-byte --iv (32 hex digits), not {len(iv)} bytes")
        if mech.params == "cbc":
            return iv, chosen
        return {"counter_bits": args.counter_bits, "cb": iv}, chosen
    if mech.params == "gcm":
        params: dict[str, Any] = {"tag_bits": args.tag_bits}
        if aad is not None:
            params["aad"] = _hex(aad, "--aad")
        if iv is None:
            if decrypting:
                raise CliError("aes-gcm decryption needs --iv (the IV that encrypt reported)")
            if use == "wrap":  # C_WrapKey cannot hand a generated IV back: choose one here
                iv = chosen = client.generate_random(12)
        if iv is not None:
            params["iv"] = iv
        return params, chosen
    return None, None


# --- helpers -----------------------------------------------------------------------------------


def _read(path: str, what: str = "file") -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _write(path: str, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


#: Per client: the login (session token) and the PKCS#11 session this command opened under it.
_P11_SESSIONS: weakref.WeakKeyDictionary[Client, tuple[bytes | None, int]] = weakref.WeakKeyDictionary()


def _p11_session(client: Client) -> int:
    """A PKCS#11 session of this login for session keys (reused in interactive mode)."""
    cached = _P11_SESSIONS.get(client)
    if cached is not None and cached[0] == client.session:
        return cached[1]
    handle = client.open_session()
    _P11_SESSIONS[client] = (client.session, handle)
    return handle


def _safe(handler: Handler) -> Handler:
    """Local failures (a bad PEM, a curve we do not know …) become one-line CLI errors too."""

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace, ctx: Context) -> None:
        try:
            handler(args, ctx)
        except ClientError:
            raise
        except HsmError as exc:
            raise CliError(exc.message, int(exc.code), exc.code.spec_name) from None

    return wrapper


def _base_template(args: argparse.Namespace, label: str | None, quorum: bool = True) -> dict[int, Any]:
    template: dict[int, Any] = {CKA.TOKEN: not args.session}
    for cka, name in ((CKA.STRONGROOM_MANAGE_KEY_QUORUM, "manage_key_quorum_value"),
                      (CKA.STRONGROOM_USE_KEY_QUORUM, "use_key_quorum_value")):
        if quorum and getattr(args, name, None) is not None:
            template[cka] = getattr(args, name)  # the key's quorum values (docs/quorum.md)
    if label is not None:
        template[CKA.LABEL] = label.encode("utf-8")
    if getattr(args, "id", None) is not None:
        template[CKA.ID] = _hex(args.id, "--id")
    return template


# --- key commands ----------------------------------------------------------------------------------


@_safe
def cmd_key_generate_pair(args: argparse.Namespace, ctx: Context) -> None:
    public_label = args.public_label or args.label
    private_label = args.private_label or args.label
    if public_label is None or private_label is None:
        raise CliError("give --label (or both --public-label and --private-label)")
    public_attrs, private_attrs = split_pair_attributes(args.attributes)
    public = _base_template(args, public_label, quorum=False)
    private = _base_template(args, private_label)
    kind = args.pair_type
    if kind == "ec" and args.curve == "ed25519":
        kind = "ed25519"
    if kind == "rsa":
        ckm = CKM.RSA_PKCS_KEY_PAIR_GEN
        public[CKA.MODULUS_BITS] = args.modulus_size_bits
        exponent = args.public_exponent
        public[CKA.PUBLIC_EXPONENT] = exponent.to_bytes(max(1, (exponent.bit_length() + 7) // 8), "big")
    elif kind in ("ml-dsa", "ml-kem"):
        key_type = KEY_TYPE_NAMES[kind]
        ckm = CKM.ML_DSA_KEY_PAIR_GEN if kind == "ml-dsa" else CKM.ML_KEM_KEY_PAIR_GEN
        public[CKA.PARAMETER_SET] = PARAMETER_SETS[key_type][args.parameter_set]
    elif kind == "ec":
        from cryptography.hazmat.primitives.asymmetric import ec

        from strongroom.encoding.ec import params_for_curve

        curves: dict[str, Callable[[], ec.EllipticCurve]] = {
            "secp256r1": ec.SECP256R1, "prime256v1": ec.SECP256R1, "secp384r1": ec.SECP384R1,
            "secp521r1": ec.SECP521R1, "secp256k1": ec.SECP256K1}
        ckm = CKM.EC_KEY_PAIR_GEN
        public[CKA.EC_PARAMS] = params_for_curve(curves[args.curve]())
    else:
        from strongroom.encoding.eddsa import ED25519

        ckm = CKM.EC_EDWARDS_KEY_PAIR_GEN
        public[CKA.EC_PARAMS] = ED25519.params
    public.update(public_attrs)
    private.update(private_attrs)
    client = ctx.logged_in(args)
    session = _p11_session(client) if args.session else None
    public_handle, private_handle = client.generate_key_pair(ckm, public, private, session=session)
    data = {"public_key": new_key_entry(client, public_handle), "private_key": new_key_entry(client, private_handle)}
    emit(data, as_json=args.json, text=f"generated {kind} key pair:\n  public  {_entry_line(data['public_key'])}"
                                        f"\n  private {_entry_line(data['private_key'])}")


@_safe
def cmd_key_generate_symmetric(args: argparse.Namespace, ctx: Context) -> None:
    template = _base_template(args, args.label)
    template[CKA.VALUE_LEN] = args.key_length_bytes
    template.update(parse_attributes(args.attributes))
    ckm = CKM.AES_KEY_GEN if args.key_type == "aes" else CKM.GENERIC_SECRET_KEY_GEN
    client = ctx.logged_in(args)
    session = _p11_session(client) if args.session else None
    handle = client.generate_key(ckm, template, session=session)
    entry = new_key_entry(client, handle)
    emit({"key": entry}, as_json=args.json, text=f"generated {_entry_line(entry)}")


@_safe
def cmd_key_list(args: argparse.Namespace, ctx: Context) -> None:
    key_filter = parse_filter(args.filter)
    client = ctx.logged_in(args)
    views = find_keys(client, key_filter)
    if args.max_items is not None:
        views = views[: max(0, args.max_items)]
    entries = [key_entry(client, view, args.verbose) for view in views]
    emit({"matched_keys": entries, "total_key_count": len(entries)}, as_json=args.json,
         text=_entries_text(entries, args.verbose))


@_safe
def cmd_key_delete(args: argparse.Namespace, ctx: Context) -> None:
    client = ctx.logged_in(args)
    view = one_key(client, parse_filter(args.filter))
    client.destroy_object(view["handle"])
    emit({"message": "key deleted", "key-reference": _ref(view["handle"])}, as_json=args.json,
         text=f"deleted {_ref(view['handle'])} ({_class_name(view['class'])} {view['label']!r})")


def _sharing(share: bool) -> Handler:
    @_safe
    def handler(args: argparse.Namespace, ctx: Context) -> None:
        client = ctx.logged_in(args)
        view = one_key(client, parse_filter(args.filter))
        action = client.share if share else client.unshare
        shared = action(view["handle"], args.username)
        verb = "shared" if share else "unshared"
        emit({"key-reference": _ref(view["handle"]), "shared-users": shared}, as_json=args.json,
             text=f"{verb} {_ref(view['handle'])} {'with' if share else 'from'} {args.username}; "
                  f"shared with: {', '.join(shared) or 'nobody'}")

    return handler


@_safe
def cmd_key_set_attribute(args: argparse.Namespace, ctx: Context) -> None:
    attr = attribute(args.name)
    value = attr.parse(args.value)
    client = ctx.logged_in(args)
    view = one_key(client, parse_filter(args.filter))
    client.set_attributes(view["handle"], {attr.cka: value})
    emit({"message": "attribute set", "key-reference": _ref(view["handle"]), "name": attr.name,
          "value": args.value}, as_json=args.json, text=f"set {attr.name}={args.value} on {_ref(view['handle'])}")


WRAPPING_CLASSES = (CKO.SECRET_KEY, CKO.PUBLIC_KEY)
UNWRAPPING_CLASSES = (CKO.SECRET_KEY, CKO.PRIVATE_KEY)
WRAPPABLE_CLASSES = (CKO.SECRET_KEY, CKO.PRIVATE_KEY)
UNWRAP_TARGETS: dict[str, tuple[CKO, CKK]] = {
    "aes": (CKO.SECRET_KEY, CKK.AES),
    "generic-secret": (CKO.SECRET_KEY, CKK.GENERIC_SECRET),
    "rsa-private": (CKO.PRIVATE_KEY, CKK.RSA),
    "ec-private": (CKO.PRIVATE_KEY, CKK.EC),
    "ed25519-private": (CKO.PRIVATE_KEY, CKK.EC_EDWARDS),
    "ml-dsa-private": (CKO.PRIVATE_KEY, CKK.ML_DSA),
    "ml-kem-private": (CKO.PRIVATE_KEY, CKK.ML_KEM),
}


@_safe
def cmd_key_wrap(args: argparse.Namespace, ctx: Context) -> None:
    mech = mechanism(args.mechanism, "wrap")
    client = ctx.logged_in(args)
    target = one_key(client, parse_filter(args.filter), "key to wrap", WRAPPABLE_CLASSES)
    wrapping = one_key(client, parse_filter(args.wrapping_filter), "wrapping key", WRAPPING_CLASSES)
    params, chosen_iv = mechanism_params(client, mech, "wrap", args)
    wrapped = client.wrap_key(mech.ckm, wrapping["handle"], target["handle"], params)
    data: dict[str, Any] = {"key-reference": _ref(target["handle"]),
                            "wrapping-key-reference": _ref(wrapping["handle"]), "mechanism": mech.name,
                            "bytes": len(wrapped)}
    if chosen_iv is not None:
        data["iv"] = chosen_iv.hex()
    if args.path:
        _write(args.path, wrapped)
        data["path"] = args.path
        text = f"wrapped {_ref(target['handle'])} with {_ref(wrapping['handle'])} ({mech.name}): " \
               f"{len(wrapped)} bytes written to {args.path}"
    else:
        data["wrapped_key_data"] = base64.b64encode(wrapped).decode()
        text = data["wrapped_key_data"]
    if chosen_iv is not None:
        text += f"\niv: {chosen_iv.hex()}"
    emit(data, as_json=args.json, text=text)


@_safe
def cmd_key_unwrap(args: argparse.Namespace, ctx: Context) -> None:
    mech = mechanism(args.mechanism, "unwrap")
    object_class, key_type = UNWRAP_TARGETS[args.key_type_class]
    wrapped = _read(args.data_path, "wrapped key")
    template = _base_template(args, args.label)
    template[CKA.CLASS] = int(object_class)
    template[CKA.KEY_TYPE] = int(key_type)
    template.update(parse_attributes(args.attributes))
    client = ctx.logged_in(args)
    unwrapping = one_key(client, parse_filter(args.wrapping_filter), "unwrapping key", UNWRAPPING_CLASSES)
    params, _ = mechanism_params(client, mech, "unwrap", args)
    session = _p11_session(client) if args.session else None
    handle = client.unwrap_key(mech.ckm, unwrapping["handle"], wrapped, template, params, session=session)
    entry = new_key_entry(client, handle)
    emit({"key": entry}, as_json=args.json, text=f"unwrapped {_entry_line(entry)}")


@_safe
def cmd_key_import_public(args: argparse.Namespace, ctx: Context) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem, rsa

    from strongroom.encoding import ec as ec_mech
    from strongroom.encoding import eddsa as eddsa_mech
    from strongroom.encoding import rsa as rsa_mech
    from strongroom.mechanisms import mldsa as mldsa_mech
    from strongroom.mechanisms import mlkem as mlkem_mech

    pem = _read(args.pem, "PEM file")
    try:
        public = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise CliError(f"{args.pem} is not a PEM public key: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None
    if isinstance(public, rsa.RSAPublicKey):
        key_type = CKK.RSA
        values = rsa_mech.key_attributes(public)
        values.pop(CKA.MODULUS_BITS, None)  # computed by the token; C_CreateObject may not give it
    elif isinstance(public, ec.EllipticCurvePublicKey):
        key_type, values = CKK.EC, ec_mech.key_attributes(public)
    elif isinstance(public, ed25519.Ed25519PublicKey):
        key_type, values = CKK.EC_EDWARDS, eddsa_mech.key_attributes(public)
    elif isinstance(public, mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey):
        key_type, values = CKK.ML_DSA, mldsa_mech.key_attributes(public)
    elif isinstance(public, mlkem.MLKEM768PublicKey | mlkem.MLKEM1024PublicKey):
        key_type, values = CKK.ML_KEM, mlkem_mech.key_attributes(public)
    else:
        raise CliError(f"{args.pem}: only RSA, EC, Ed25519, ML-DSA and ML-KEM public keys can be imported")
    values.pop(CKA.PUBLIC_KEY_INFO, None)  # maintained by the token from the key's values
    template = _base_template(args, args.label)
    template.update({CKA.CLASS: int(CKO.PUBLIC_KEY), CKA.KEY_TYPE: int(key_type)})
    template.update(values)
    template.update(parse_attributes(args.attributes))
    client = ctx.logged_in(args)
    session = _p11_session(client) if args.session else None
    handle = client.create_object(template, session=session)
    entry = new_key_entry(client, handle)
    emit({"key": entry}, as_json=args.json, text=f"imported {_entry_line(entry)}")


@_safe
def cmd_key_export_public(args: argparse.Namespace, ctx: Context) -> None:
    from cryptography.hazmat.primitives import serialization

    from strongroom.objects.keys import public_key_from_attributes

    client = ctx.logged_in(args)
    view = one_key(client, parse_filter(args.filter), "public key", (CKO.PUBLIC_KEY,))
    if view["class"] != CKO.PUBLIC_KEY.name:
        raise CliError(f"{_ref(view['handle'])} is a {_class_name(view['class'])}; export-public needs a public key")
    key_type = CKK[view["key_type"]]
    wanted = {CKK.RSA: [CKA.MODULUS, CKA.PUBLIC_EXPONENT], CKK.ML_DSA: [CKA.PARAMETER_SET, CKA.VALUE],
              CKK.ML_KEM: [CKA.PARAMETER_SET, CKA.VALUE]}.get(key_type, [CKA.EC_PARAMS, CKA.EC_POINT])
    attrs = client.get_attributes(view["handle"], wanted)
    public = public_key_from_attributes(key_type, attrs)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    data: dict[str, Any] = {"key-reference": _ref(view["handle"]), "pem": pem.decode()}
    if args.path:
        _write(args.path, pem)
        data["path"] = args.path
    emit(data, as_json=args.json,
         text=f"wrote the public key {_ref(view['handle'])} to {args.path}" if args.path else pem.decode().rstrip())


# --- crypto commands ------------------------------------------------------------------------------

KEY_CLASSES_FOR = {
    "sign": (CKO.PRIVATE_KEY, CKO.SECRET_KEY),
    "verify": (CKO.PUBLIC_KEY, CKO.SECRET_KEY),
    "encrypt": (CKO.PUBLIC_KEY, CKO.SECRET_KEY),
    "decrypt": (CKO.PRIVATE_KEY, CKO.SECRET_KEY),
}


def _run(client: Client, kind: str, mech: Mech, handle: int, data: bytes, params: Any,
         signature: bytes | None = None) -> dict[str, Any]:
    """One call when the input fits, the multi-part calls otherwise."""
    if len(data) <= MAX_SINGLE_PART:
        if kind == "sign":
            return {"signature": client.sign(handle, mech.ckm, data, params)}
        if kind == "verify":
            assert signature is not None
            client.verify(handle, mech.ckm, data, signature, params)
            return {"valid": True}
        if kind == "encrypt":
            return {**client.encrypt(handle, mech.ckm, data, params)}
        return {"data": client.decrypt(handle, mech.ckm, data, params)}
    if not mech.multipart:
        raise CliError(f"{mech.name} takes at most {MAX_SINGLE_PART} bytes (the input is {len(data)} bytes); "
                       f"use a hash-and-sign or multi-part mechanism")
    parts = [data[i: i + CHUNK] for i in range(0, len(data), CHUNK)]
    session = client.open_session()
    try:
        return client.multipart(kind, session, mech.ckm, parts, key=handle, params=params, signature=signature)
    finally:
        try:
            client.close_session(session)
        except ClientError:
            pass


def _crypto(kind: str) -> Handler:
    @_safe
    def handler(args: argparse.Namespace, ctx: Context) -> None:
        mech = mechanism(args.mechanism, kind)
        data = _read(args.data_path, "data")
        signature = _read(args.signature_path, "signature") if kind == "verify" else None
        client = ctx.logged_in(args)
        view = one_key(client, parse_filter(args.filter), "key", KEY_CLASSES_FOR[kind])
        params, chosen_iv = mechanism_params(client, mech, kind, args)
        result = _run(client, kind, mech, view["handle"], data, params, signature)
        ref = _ref(view["handle"])
        out: dict[str, Any] = {"key-reference": ref, "mechanism": mech.name}
        if kind == "sign":
            sig = result["signature"]
            out.update(signature=base64.b64encode(sig).decode(), signature_hex=sig.hex(), bytes=len(sig))
            if args.signature_path:
                _write(args.signature_path, sig)
                out["signature_path"] = args.signature_path
                text = f"signed with {ref} ({mech.name}): {len(sig)}-byte signature written to {args.signature_path}"
            else:
                text = out["signature"]
        elif kind == "verify":
            out["valid"] = True
            text = f"signature verified with {ref} ({mech.name})"
        else:
            output = result["data"]
            _write(args.output_path, output)
            out.update(output_path=args.output_path, bytes=len(output))
            verb = "encrypted" if kind == "encrypt" else "decrypted"
            text = f"{verb} {len(data)} bytes with {ref} ({mech.name}): {len(output)} bytes written to " \
                   f"{args.output_path}"
            iv = result.get("iv") or chosen_iv
            if kind == "encrypt" and iv is not None:
                out["iv"] = iv.hex()
                text += f"\niv: {iv.hex()}"
        emit(out, as_json=args.json, text=text)

    return handler


# --- key encapsulation (PKCS#11 3.2 C_EncapsulateKey / C_DecapsulateKey) ------------------------------

KEM_MECHANISMS = {"ml-kem": CKM.ML_KEM}


def _shared_secret_template(args: argparse.Namespace) -> dict[int, Any]:
    template = _base_template(args, args.label, quorum=False)
    template[CKA.CLASS] = int(CKO.SECRET_KEY)
    template[CKA.KEY_TYPE] = int(KEY_TYPE_NAMES[args.key_type])
    if args.key_length_bytes is not None:
        template[CKA.VALUE_LEN] = args.key_length_bytes
    template.update(parse_attributes(args.attributes))
    return template


@_safe
def cmd_crypto_encapsulate(args: argparse.Namespace, ctx: Context) -> None:
    """A fresh shared secret under a public ML-KEM key: its ciphertext to a file, the secret as a new key."""
    template = _shared_secret_template(args)
    client = ctx.logged_in(args)
    view = one_key(client, parse_filter(args.filter), "public key", (CKO.PUBLIC_KEY,))
    session = _p11_session(client) if args.session else None
    ciphertext, handle = client.encapsulate_key(KEM_MECHANISMS[args.mechanism], view["handle"], template,
                                                session=session)
    _write(args.ciphertext_path, ciphertext)
    entry = new_key_entry(client, handle)
    emit({"key": entry, "ciphertext_path": args.ciphertext_path, "bytes": len(ciphertext)}, as_json=args.json,
         text=f"encapsulated with {_ref(view['handle'])}: {len(ciphertext)}-byte ciphertext written to "
              f"{args.ciphertext_path}; the shared secret is {_entry_line(entry)}")


@_safe
def cmd_crypto_decapsulate(args: argparse.Namespace, ctx: Context) -> None:
    """The shared secret a ciphertext holds for a private ML-KEM key, as a new key."""
    ciphertext = _read(args.ciphertext_path, "ciphertext")
    template = _shared_secret_template(args)
    client = ctx.logged_in(args)
    view = one_key(client, parse_filter(args.filter), "private key", (CKO.PRIVATE_KEY,))
    session = _p11_session(client) if args.session else None
    handle = client.decapsulate_key(KEM_MECHANISMS[args.mechanism], view["handle"], ciphertext, template,
                                    session=session)
    entry = new_key_entry(client, handle)
    emit({"key": entry}, as_json=args.json,
         text=f"decapsulated with {_ref(view['handle'])}: the shared secret is {_entry_line(entry)}")


# --- parser ---------------------------------------------------------------------------------------

FILTER_HELP = "attr.NAME=VALUE ... or key-reference=0x... (names: " + ", ".join(ATTRIBUTES) + ")"
ATTRIBUTES_HELP = "NAME=VALUE ... (names: " + ", ".join(ATTRIBUTES) + ")"


def _filter_arg(p: argparse.ArgumentParser, *names: str, required: bool = True, dest: str = "filter",
                help_text: str = FILTER_HELP) -> None:
    p.add_argument(*names, dest=dest, nargs="+", metavar="FILTER", required=required, help=help_text)


def _key_options(p: argparse.ArgumentParser, attributes_help: str = ATTRIBUTES_HELP) -> None:
    p.add_argument("--session", action="store_true",
                   help="a session key (gone at logout) instead of a token key")
    p.add_argument("--id", help="CKA_ID, hex")
    p.add_argument("--attributes", nargs="+", metavar="NAME=VALUE", help=attributes_help)
    p.add_argument("--manage-key-quorum-value", type=int, metavar="M",
                   help="approvals (2-8) to wrap, unwrap with, share, unshare, change or delete the key (private key "
                        "of a pair)")
    p.add_argument("--use-key-quorum-value", type=int, metavar="M", help="approvals (2-8) to use the key")


def _cipher_options(p: argparse.ArgumentParser, ciphers: bool = True) -> None:
    if ciphers:
        p.add_argument("--iv", help="hex; aes-cbc/aes-cbc-pad/aes-ctr (16 bytes) and aes-gcm "
                                    "(encryption: generated and reported when omitted)")
        p.add_argument("--aad", help="aes-gcm additional authenticated data, hex")
        p.add_argument("--tag-bits", type=int, default=128, help="aes-gcm tag length (default 128)")
        p.add_argument("--counter-bits", type=int, default=128, help="aes-ctr counter width (default 128)")
    p.add_argument("--hash", choices=list(HASHES),
                   help="hash of rsa-oaep and rsa-pkcs-pss (default sha256; MGF1 with the same hash, "
                        "PSS salt as long as the hash)")


def register(sub: Any, add: AddCommand) -> None:
    """Add the ``key`` and ``crypto`` groups to the top-level subparsers (called by build_parser)."""
    key = sub.add_parser("key", help="generate, find, share, wrap and delete keys").add_subparsers(
        dest="key_command", required=True, metavar="KEY_COMMAND")

    pair = key.add_parser("generate-asymmetric-pair",
                          help="generate an RSA, EC, Ed25519, ML-DSA or ML-KEM key pair").add_subparsers(
        dest="pair_type", required=True, metavar="TYPE")
    pair_help = ("NAME=VALUE ...; public.NAME=V / private.NAME=V for one key, unprefixed for each key that has "
                 "the attribute (names: " + ", ".join(ATTRIBUTES) + ")")
    for kind, text in (("rsa", "an RSA key pair"), ("ec", "an EC key pair"), ("ed25519", "an Ed25519 key pair"),
                       ("ml-dsa", "an ML-DSA (FIPS 204) key pair"), ("ml-kem", "an ML-KEM (FIPS 203) key pair")):
        p = add(pair, kind, cmd_key_generate_pair, f"generate {text} (token keys unless --session)")
        p.add_argument("--label", help="label of both keys")
        p.add_argument("--public-label", help="label of the public key (default --label)")
        p.add_argument("--private-label", help="label of the private key (default --label)")
        _key_options(p, pair_help)
        if kind == "rsa":
            p.add_argument("--modulus-size-bits", type=int, default=2048, help="2048 to 4096 (default 2048)")
            p.add_argument("--public-exponent", type=int, default=65537, help="default 65537")
        elif kind == "ec":
            p.add_argument("--curve", required=True,
                           choices=["secp256r1", "prime256v1", "secp384r1", "secp521r1", "secp256k1", "ed25519"])
        elif kind == "ml-dsa":
            p.add_argument("--parameter-set", choices=list(PARAMETER_SETS[CKK.ML_DSA]), default="65",
                           help="ML-DSA-44, -65 or -87 (default 65)")
        elif kind == "ml-kem":
            p.add_argument("--parameter-set", choices=list(PARAMETER_SETS[CKK.ML_KEM]), default="768",
                           help="ML-KEM-768 or -1024 (default 768; ML-KEM-512 is not offered)")
        p.set_defaults(pair_type=kind)

    sym = key.add_parser("generate-symmetric", help="generate an AES or generic secret key").add_subparsers(
        dest="key_type", required=True, metavar="TYPE")
    for kind in ("aes", "generic-secret"):
        p = add(sym, kind, cmd_key_generate_symmetric, f"generate a{'n' if kind == 'aes' else ''} {kind} key")
        p.add_argument("--label", required=True)
        p.add_argument("--key-length-bytes", type=int, required=True,
                       help="16, 24 or 32 for AES; 1 to 512 for generic secrets")
        _key_options(p)
        p.set_defaults(key_type=kind)

    p = add(key, "list", cmd_key_list, "list the keys you can see (admins: every token key)")
    _filter_arg(p, "--filter", required=False)
    p.add_argument("--verbose", action="store_true", help="show every readable attribute")
    p.add_argument("--max-items", type=int, help="show at most this many keys")

    p = add(key, "delete", cmd_key_delete, "delete one key (owner only)")
    _filter_arg(p, "--filter")

    for name, share in (("share", True), ("unshare", False)):
        p = add(key, name, _sharing(share), f"{name} one key {'with' if share else 'from'} a crypto user (owner only)")
        _filter_arg(p, "--filter")
        p.add_argument("--username", required=True)

    p = add(key, "set-attribute", cmd_key_set_attribute,
            "change one attribute of one key (admins: trusted only)")
    _filter_arg(p, "--filter")
    p.add_argument("--name", required=True, help="attribute name (" + ", ".join(ATTRIBUTES) + ")")
    p.add_argument("--value", required=True)

    p = add(key, "wrap", cmd_key_wrap, "write a wrapped (encrypted) copy of an extractable key")
    _filter_arg(p, "--filter", "--payload-filter", help_text="the key to wrap: " + FILTER_HELP)
    _filter_arg(p, "--wrapping-filter", "--wrapping-key-filter", dest="wrapping_filter",
                help_text="the wrapping key: " + FILTER_HELP)
    p.add_argument("--mechanism", required=True, help=", ".join(mechanisms_for("wrap")))
    p.add_argument("--path", help="file for the wrapped bytes (default: print them, base64)")
    _cipher_options(p)

    p = add(key, "unwrap", cmd_key_unwrap, "import a wrapped key")
    _filter_arg(p, "--wrapping-filter", "--unwrapping-filter", "--wrapping-key-filter", dest="wrapping_filter",
                help_text="the unwrapping key: " + FILTER_HELP)
    p.add_argument("--mechanism", required=True, help=", ".join(mechanisms_for("unwrap")))
    p.add_argument("--data-path", required=True, help="file with the wrapped bytes")
    p.add_argument("--key-type-class", required=True, choices=list(UNWRAP_TARGETS))
    p.add_argument("--label", required=True)
    _key_options(p)
    _cipher_options(p)

    p = add(key, "import-public", cmd_key_import_public, "import an RSA, EC or Ed25519 public key from PEM")
    p.add_argument("--pem", "--path", dest="pem", required=True, help="PEM file (SubjectPublicKeyInfo)")
    p.add_argument("--label", required=True)
    _key_options(p)

    p = add(key, "export-public", cmd_key_export_public, "write a public key as PEM")
    _filter_arg(p, "--filter")
    p.add_argument("--path", help="PEM file to write (default: print it)")

    crypto = sub.add_parser("crypto", help="sign, verify, encrypt, decrypt, encapsulate and decapsulate "
                                           "(crypto users)").add_subparsers(
        dest="crypto_command", required=True, metavar="CRYPTO_COMMAND")
    for kind in ("sign", "verify", "encrypt", "decrypt"):
        p = add(crypto, kind, _crypto(kind), f"{kind} a file with a key in the HSM")
        _filter_arg(p, "--filter", "--key-filter")
        note = ("; rsa-pkcs, rsa-pkcs-pss and ecdsa take prepared input (a DigestInfo for rsa-pkcs, "
                "a digest for the others), the rest hash the data themselves") if kind in ("sign", "verify") else ""
        p.add_argument("--mechanism", required=True, help=", ".join(mechanisms_for(kind)) + note)
        p.add_argument("--data-path", required=True, help="input file")
        if kind == "sign":
            p.add_argument("--signature-path", help="write the signature here (default: print it, base64)")
        elif kind == "verify":
            p.add_argument("--signature-path", required=True, help="file with the signature")
        else:
            p.add_argument("--output-path", required=True, help="output file")
        _cipher_options(p, ciphers=kind in ("encrypt", "decrypt"))
        if kind in ("sign", "verify"):
            p.add_argument("--context", help="ml-dsa context string (FIPS 204 ctx), hex, at most 255 bytes")

    for kind, handler, text in (
            ("encapsulate", cmd_crypto_encapsulate,
             "make a shared secret under a public ML-KEM key: the ciphertext to a file, the secret as a new key"),
            ("decapsulate", cmd_crypto_decapsulate,
             "recover the shared secret of a ciphertext with a private ML-KEM key, as a new key")):
        p = add(crypto, kind, handler, text)
        _filter_arg(p, "--filter", "--key-filter")
        p.add_argument("--mechanism", default="ml-kem", choices=list(KEM_MECHANISMS), help="default ml-kem")
        p.add_argument("--ciphertext-path", required=True,
                       help="file for the ciphertext" if kind == "encapsulate" else "file with the ciphertext")
        p.add_argument("--label", required=True, help="label of the new secret key")
        p.add_argument("--key-type", choices=["aes", "generic-secret", "hkdf"], default="aes",
                       help="type of the new secret key (default aes)")
        p.add_argument("--key-length-bytes", type=int,
                       help="leading bytes of the 32-byte secret to keep (default all 32)")
        p.add_argument("--session", action="store_true", help="a session key (gone at logout) instead of a token key")
        p.add_argument("--id", help="CKA_ID, hex")
        p.add_argument("--attributes", nargs="+", metavar="NAME=VALUE", help=ATTRIBUTES_HELP)
