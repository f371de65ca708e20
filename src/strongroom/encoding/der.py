"""Minimal strict DER: the few fixed shapes that PKCS#11 attributes need.

pyca/cryptography has no general DER encoder, so the values we write or parse ourselves (an
OBJECT IDENTIFIER or PrintableString as a whole value, an OCTET STRING) go through these small
TLV helpers; that is encoding, all cryptography is the library's. Used by the mechanisms on
the node and by the tools and the KMS gateway that describe keys the same way.
"""

from __future__ import annotations

TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_PRINTABLE_STRING = 0x13


def der_encode(tag: int, content: bytes) -> bytes:
    """One DER TLV with a definite, minimal length."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def der_decode(tag: int, data: bytes) -> bytes:
    """The content of the single TLV that ``data`` must be, exactly; ValueError otherwise.

    Strict DER: definite minimal length, nothing after the value. Lengths above 0xFFFF
    are refused since no value we parse comes close.
    """
    if len(data) < 2 or data[0] != tag:
        raise ValueError(f"expected a DER value with tag 0x{tag:02x}")
    first = data[1]
    if first < 0x80:
        length, offset = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 2:
            raise ValueError("indefinite or oversized DER length")
        field = data[2 : 2 + count]
        if len(field) != count or field[0] == 0:
            raise ValueError("truncated or non-minimal DER length")
        length, offset = int.from_bytes(field, "big"), 2 + count
        if length < 0x80:
            raise ValueError("non-minimal DER length")
    if len(data) - offset != length:
        raise ValueError("DER length does not match the data")
    return bytes(data[offset:])


def der_oid(dotted: str) -> bytes:
    """DER of an OBJECT IDENTIFIER given in dotted form (base-128 arcs, X.690 §8.19)."""
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return der_encode(TAG_OID, bytes(body))


def der_printable(name: str) -> bytes:
    return der_encode(TAG_PRINTABLE_STRING, name.encode("ascii"))


def as_bytes(value: object) -> bytes | None:
    return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None
