"""Backup files (format, checksums, signature, limits) and the backup catalog (naming, listing, retention)."""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strongroom.backup import (
    MAGIC,
    MAX_KEY_BYTES,
    MAX_RECORDS,
    MAX_VALUE_BYTES,
    SIGNATURE_ALGORITHM,
    Backup,
    BackupCatalog,
    BackupError,
    BackupHeader,
    BackupRecord,
    backup_file_name,
    decode_backup,
    ecdsa_signer,
    encode_backup,
    read_backup_header,
    verify_backup_file,
    verify_signature,
)

CLUSTER = "3f0c9a52-8d7e-4c41-9a43-0d6a2b1e7c55"
OTHER_CLUSTER = "b5e2d0c1-1111-4222-8333-944455556666"
KEY = ec.generate_private_key(ec.SECP384R1())
OTHER_KEY = ec.generate_private_key(ec.SECP384R1())
DAY = 86400.0
NOW = 1_800_000_000.0


def header(n: int = 3, **changes: Any) -> BackupHeader:
    base = BackupHeader(cluster_id=CLUSTER, cluster_name="prod", revision=42, node_id="node-a",
                        trigger="manual", record_count=n, created=NOW)
    return replace(base, **changes)


def records(n: int = 3) -> list[BackupRecord]:
    # Unsorted on purpose: the encoder sorts.
    return [BackupRecord(f"objects/{i:04d}", os.urandom(40 + i), i + 1) for i in reversed(range(n))]


def signed_backup(n: int = 3, **changes: Any) -> bytes:
    return encode_backup(header(n, **changes), records(n), ecdsa_signer(KEY))


def reseal(body: bytes, signature: bytes = b"") -> bytes:
    """Body + trailer with correct digests, as anyone who knows the format can write it."""
    sealed = body + hashlib.sha256(body).digest() + len(signature).to_bytes(2, "big") + signature
    return sealed + hashlib.sha256(sealed).digest()


def header_map(h: BackupHeader) -> dict[str, Any]:
    return {name: getattr(h, name) for name in h.__dataclass_fields__}


def forged(header_fields: dict[str, Any], items: list[Any]) -> bytes:
    """A correctly checksummed, unsigned file with whatever header and records."""
    return reseal(MAGIC + msgpack.packb(header_fields) + msgpack.packb(items))


VALID = signed_backup(4)
VALID_UNSIGNED = encode_backup(header(2), records(2))


# --------------------------------------------------------------------------- round trip and layout


def test_round_trip_signed() -> None:
    h, recs = header(5), records(5)
    backup = decode_backup(encode_backup(h, recs, ecdsa_signer(KEY)))
    assert backup.header == replace(h, signature_algorithm=SIGNATURE_ALGORITHM)
    assert backup.records == sorted(recs, key=lambda r: r.key)
    assert backup.signed
    verify_signature(backup, KEY.public_key())


def test_round_trip_unsigned_and_empty() -> None:
    backup = decode_backup(encode_backup(header(0, revision=0), []))
    assert backup.records == [] and not backup.signed and backup.signature is None
    assert backup.header.revision == 0


def test_round_trip_keeps_optional_metadata() -> None:
    h = header(1, trust_anchor_fingerprint="AB:CD:EF", cluster_certificate_pem="-----BEGIN CERTIFICATE-----\n",
               cluster_name="", trigger="membership")
    assert decode_backup(encode_backup(h, records(1))).header == h


def test_layout_follows_the_spec() -> None:
    """Pinned from the format description, not from the implementation."""
    data = VALID
    assert data.startswith(b"STRONGROOM-BACKUP/1\n")
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data[len(MAGIC):])
    head = unpacker.unpack()
    items = unpacker.unpack()
    body_end = len(MAGIC) + unpacker.tell()
    assert head["format_version"] == 1 and head["record_count"] == len(items) == 4
    assert [item[0] for item in items] == sorted(item[0] for item in items)
    digest = data[body_end : body_end + 32]
    assert digest == hashlib.sha256(data[:body_end]).digest()
    length = int.from_bytes(data[body_end + 32 : body_end + 34], "big")
    signature = data[body_end + 34 : -32]
    assert len(signature) == length > 0
    KEY.public_key().verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    assert decode_backup(data).digest == digest


def test_encoder_rejects_duplicate_keys() -> None:
    recs = [BackupRecord("a", b"1", 1), BackupRecord("a", b"2", 1)]
    with pytest.raises(BackupError, match="appears twice"):
        encode_backup(header(2), recs)


@pytest.mark.parametrize(
    ("recs", "match"),
    [
        ([BackupRecord("k" * (MAX_KEY_BYTES + 1), b"", 1)], "byte key"),
        ([BackupRecord("k", b"x" * (MAX_VALUE_BYTES + 1), 1)], "byte value"),
        ([BackupRecord("k", b"", 0)], "version"),
        ([BackupRecord("", b"", 1)], "no key"),
        ([BackupRecord("k", "text", 1)], "not bytes"),  # type: ignore[arg-type]
        ([BackupRecord("\ud800", b"", 1)], "UTF-8"),
    ],
)
def test_encoder_enforces_record_limits(recs: list[BackupRecord], match: str) -> None:
    with pytest.raises(BackupError, match=match):
        encode_backup(header(1), recs)


def test_limits_accept_the_largest_allowed_record() -> None:
    record = BackupRecord("k" * MAX_KEY_BYTES, b"v" * MAX_VALUE_BYTES, 7)
    assert decode_backup(encode_backup(header(1), [record])).records == [record]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"record_count": 5}, "record_count is 5"),
        ({"record_count": MAX_RECORDS + 1}, "record_count"),
        ({"cluster_id": "../etc"}, "cluster_id"),
        ({"backup_id": "not-a-uuid"}, "backup_id"),
        ({"created": float("nan")}, "created"),
        ({"revision": -1}, "revision"),
        ({"trigger": "Manual Backup"}, "trigger"),
        ({"node_id": ""}, "node_id"),
        ({"format_version": 2}, "unsupported format version 2"),
        ({"signature_algorithm": "ecdsa-p384-prehashed-sha256"}, "no signer"),
    ],
)
def test_encoder_refuses_bad_headers(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(BackupError, match=match):
        encode_backup(header(3, **changes), records(3))


def test_encoder_refuses_an_unusable_signature() -> None:
    with pytest.raises(BackupError, match="signer"):
        encode_backup(header(1), records(1), lambda digest: b"")
    with pytest.raises(BackupError, match="cannot sign with"):
        encode_backup(header(1, signature_algorithm="rsa-pss"), records(1), ecdsa_signer(KEY))


# --------------------------------------------------------------------------- decoding damaged files


def test_wrong_magic() -> None:
    with pytest.raises(BackupError, match="not a Strongroom backup"):
        decode_backup(b"PK\x03\x04" + VALID[4:])
    with pytest.raises(BackupError, match="not a Strongroom backup"):
        decode_backup(b"")


def test_unsupported_version() -> None:
    with pytest.raises(BackupError, match="unsupported format version 2"):
        decode_backup(b"STRONGROOM-BACKUP/2\n" + VALID[len(MAGIC):])
    with pytest.raises(BackupError, match="unsupported format version 12"):
        decode_backup(b"STRONGROOM-BACKUP/12\n" + VALID[len(MAGIC):])


@pytest.mark.parametrize("keep", [5, len(MAGIC), len(MAGIC) + 10, len(VALID) // 2, len(VALID) - 1])
def test_truncated_file(keep: int) -> None:
    with pytest.raises(BackupError, match="truncated"):
        decode_backup(VALID[:keep])


def test_appended_bytes_are_detected() -> None:
    with pytest.raises(BackupError, match="checksum mismatch"):
        decode_backup(VALID + b"\0")


def test_size_limit() -> None:
    with pytest.raises(BackupError, match="limit"):
        decode_backup(VALID, max_bytes=len(VALID) - 1)


def test_not_bytes() -> None:
    with pytest.raises(BackupError):
        decode_backup("STRONGROOM-BACKUP/1\n")  # type: ignore[arg-type]


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_any_single_byte_change_is_detected(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from([VALID, VALID_UNSIGNED]))
    index = data.draw(st.integers(0, len(original) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(original)
    damaged[index] ^= flip
    with pytest.raises(BackupError) as caught:
        decode_backup(bytes(damaged))
    if index >= len(MAGIC):
        assert "checksum mismatch" in str(caught.value)


_mutation = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
)


def _mutate(data: bytes, mutation: tuple[str, int, Any]) -> bytes:
    kind, at, arg = mutation
    at %= len(data) + 1
    if kind == "replace":
        return data[:at] + arg + data[at + len(arg) :]
    if kind == "insert":
        return data[:at] + arg + data[at:]
    if kind == "delete":
        return data[:at] + data[at + arg :]
    return data[:at]


@given(st.lists(_mutation, min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
def test_mutated_backups_raise_only_backup_error(mutations: list[tuple[str, int, Any]]) -> None:
    data = VALID
    for mutation in mutations:
        data = _mutate(data, mutation)
    if data == VALID:
        return
    with pytest.raises(BackupError):
        decode_backup(data)


@given(st.binary(max_size=512))
@settings(max_examples=300, deadline=None)
def test_any_bytes_raise_only_backup_error(blob: bytes) -> None:
    for data in (blob, MAGIC + blob):
        with pytest.raises(BackupError):
            decode_backup(data)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
                     st.text(max_size=20), st.binary(max_size=20))
_objects = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


@given(header=_objects, items=_objects, tail=st.binary(max_size=64))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_forged_bodies_with_valid_checksums_raise_only_backup_error(header: Any, items: Any, tail: bytes) -> None:
    """The checksum protects against damage, not against a forger: the parser must hold on its own."""
    for body in (MAGIC + msgpack.packb(header) + msgpack.packb(items), MAGIC + tail):
        try:
            decode_backup(reseal(body))
        except BackupError:
            pass


@given(st.lists(st.tuples(st.text(min_size=1, max_size=5), st.binary(max_size=8), st.integers(-3, 3)),
                max_size=5))
@settings(max_examples=200, deadline=None)
def test_forged_record_lists_are_checked(items: list[tuple[str, bytes, int]]) -> None:
    fields = header_map(header(len(items)))
    triples = [list(item) for item in items]
    keys = [item[0] for item in items]
    valid = keys == sorted(set(keys)) and all(item[2] >= 1 for item in items)
    try:
        backup = decode_backup(forged(fields, triples))
    except BackupError:
        assert not valid
    else:
        assert valid and [r.key for r in backup.records] == keys


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda f, r: ({**f, "format_version": 2}, r), "unsupported format version 2"),
        (lambda f, r: ({**f, "record_count": 4}, r), "announces 4 records"),
        (lambda f, r: ({k: v for k, v in f.items() if k != "revision"}, r), "missing fields"),
        (lambda f, r: ({**f, "extra": 1}, r), "unknown fields"),
        (lambda f, r: ({**f, "revision": True}, r), "revision"),
        (lambda f, r: (f, [r[1], r[0], r[2]]), "out of order"),
        (lambda f, r: (f, [r[0], r[0], r[2]]), "duplicate"),
        (lambda f, r: (f, [r[0], r[1], [r[2][0], r[2][1]]]), "triple"),
        (lambda f, r: (f, [r[0], r[1], [r[2][0], "text", 1]]), "not bytes"),
        (lambda f, r: ({**f, "signature_algorithm": SIGNATURE_ALGORITHM}, r), "disagree"),
        (lambda f, r: ([f], r), "not a map"),
    ],
)
def test_forged_but_checksummed_files_are_rejected_with_a_reason(mangle: Any, match: str) -> None:
    fields = header_map(header(3))
    triples = [[r.key, r.value, r.version] for r in sorted(records(3), key=lambda r: r.key)]
    with pytest.raises(BackupError, match=match):
        decode_backup(forged(*mangle(fields, triples)))


def test_header_with_duplicate_field_is_rejected() -> None:
    fields = header_map(header(0))
    packer = msgpack.Packer()
    head = packer.pack_map_header(len(fields) + 1) + b"".join(
        packer.pack(k) + packer.pack(v) for k, v in fields.items()) + packer.pack("revision") + packer.pack(1)
    with pytest.raises(BackupError, match="twice"):
        decode_backup(reseal(MAGIC + head + packer.pack([])))


# --------------------------------------------------------------------------- signatures


def _certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLUSTER)])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA384()))


def test_signature_verifies_with_the_right_key_only() -> None:
    backup = decode_backup(VALID)
    verify_signature(backup, KEY.public_key())
    verify_signature(backup, _certificate(KEY))
    with pytest.raises(BackupError, match="signature does not verify"):
        verify_signature(backup, OTHER_KEY.public_key())


def test_signature_needs_a_p384_key() -> None:
    with pytest.raises(BackupError, match="P-384"):
        verify_signature(decode_backup(VALID), ec.generate_private_key(ec.SECP256R1()).public_key())


def test_unsigned_backup_does_not_verify() -> None:
    with pytest.raises(BackupError, match="not signed"):
        verify_signature(decode_backup(VALID_UNSIGNED), KEY.public_key())


def test_resealed_forgery_keeps_checksums_but_fails_the_signature() -> None:
    """Change one record, recompute both digests and reuse the old signature."""
    original = decode_backup(VALID)
    changed = [[r.key, r.value, r.version] for r in original.records]
    changed[0][1] = b"\0" * len(changed[0][1])
    body = MAGIC + msgpack.packb(header_map(original.header)) + msgpack.packb(changed)
    assert original.signature is not None
    forgery = decode_backup(reseal(body, original.signature))
    with pytest.raises(BackupError, match="signature does not verify"):
        verify_signature(forgery, KEY.public_key())


def test_unknown_signature_algorithm_is_refused_by_the_verifier() -> None:
    fields = {**header_map(header(0)), "signature_algorithm": "ml-dsa-87"}
    backup = decode_backup(reseal(MAGIC + msgpack.packb(fields) + msgpack.packb([]), b"\1" * 10))
    with pytest.raises(BackupError, match="unsupported signature algorithm"):
        verify_signature(backup, KEY.public_key())


# --------------------------------------------------------------------------- files


def test_verify_backup_file(tmp_path: Path) -> None:
    path = tmp_path / "b.srbk"
    path.write_bytes(VALID)
    backup = verify_backup_file(path)
    assert isinstance(backup, Backup) and len(backup.records) == 4
    header_only, size = read_backup_header(path)
    assert header_only == backup.header and size == len(VALID)
    path.write_bytes(VALID[:-1])
    with pytest.raises(BackupError, match=r"b\.srbk: .*truncated"):
        verify_backup_file(path)
    with pytest.raises(BackupError, match="limit"):
        verify_backup_file(path, max_bytes=100)
    with pytest.raises(BackupError, match="cannot open"):
        verify_backup_file(tmp_path / "missing.srbk")
    with pytest.raises(BackupError, match="not a regular file"):
        verify_backup_file(tmp_path)
    fifo = tmp_path / "fifo.srbk"
    os.mkfifo(fifo)  # must not block waiting for a writer
    with pytest.raises(BackupError, match="not a regular file"):
        read_backup_header(fifo)


def test_read_backup_header_does_not_hash(tmp_path: Path) -> None:
    path = tmp_path / "b.srbk"
    path.write_bytes(VALID[: len(VALID) // 2] + b"\0" * 10)
    assert read_backup_header(path)[0].record_count == 4
    path.write_bytes(b"STRONGROOM-BACKUP/7\nxyz")
    with pytest.raises(BackupError, match="unsupported format version 7"):
        read_backup_header(path)


# --------------------------------------------------------------------------- catalog


def make(created: float, cluster_id: str = CLUSTER, backup_id: str | None = None,
         revision: int = 1) -> tuple[bytes, BackupHeader]:
    h = header(1, created=created, cluster_id=cluster_id, revision=revision,
               backup_id=backup_id or str(uuid.uuid4()))
    return encode_backup(h, records(1), ecdsa_signer(KEY)), h


def test_catalog_write_names_and_protects_files(tmp_path: Path) -> None:
    catalog = BackupCatalog(tmp_path / "backups")
    data, h = make(NOW)
    path = catalog.write(data, h)
    stamp = datetime.datetime.fromtimestamp(NOW, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    assert path == tmp_path / "backups" / CLUSTER / f"{stamp}-{h.backup_id}.srbk"
    assert path.name == backup_file_name(h)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    with pytest.raises(BackupError, match="already"):
        catalog.write(data, h)
    assert path.read_bytes() == data


def test_catalog_write_refuses_bad_data(tmp_path: Path) -> None:
    catalog = BackupCatalog(tmp_path)
    data, h = make(NOW)
    with pytest.raises(BackupError, match="checksum mismatch"):
        catalog.write(data[:-1] + bytes([data[-1] ^ 1]), h)
    with pytest.raises(BackupError, match="does not match"):
        catalog.write(data, replace(h, backup_id=str(uuid.uuid4())))
    assert catalog.list() == []


def test_catalog_list_find_delete(tmp_path: Path) -> None:
    catalog = BackupCatalog(tmp_path)
    ids = ["aaaa0000-0000-4000-8000-000000000001", "aaaa1111-0000-4000-8000-000000000002",
           "bbbb0000-0000-4000-8000-000000000003"]
    for i, backup_id in enumerate(ids):
        catalog.write(*make(NOW + i * 60, backup_id=backup_id, revision=i))
    catalog.write(*make(NOW + 500, cluster_id=OTHER_CLUSTER))

    listed = catalog.list(CLUSTER)
    assert [e.backup_id for e in listed] == ids[::-1]  # newest first
    assert listed[0].revision == 2 and listed[0].signed and listed[0].size == listed[0].path.stat().st_size
    assert listed[0].as_dict()["created_utc"].endswith("Z")
    assert len(catalog.list()) == 4 and catalog.list()[0].cluster_id == OTHER_CLUSTER
    assert catalog.newest(CLUSTER) == listed[0]
    assert catalog.newest("no-such-cluster") is None

    assert catalog.find("bbbb").backup_id == ids[2]
    assert catalog.find(ids[0].upper()).backup_id == ids[0]
    with pytest.raises(BackupError, match="ambiguous"):
        catalog.find("aaaa")
    with pytest.raises(BackupError, match="no backup"):
        catalog.find("cccc")
    with pytest.raises(BackupError, match="no backup"):
        catalog.find("bbbb", cluster_id=OTHER_CLUSTER)

    with pytest.raises(BackupError, match="whole backup id"):
        catalog.delete("bbbb")
    deleted = catalog.delete(ids[2])
    assert deleted.backup_id == ids[2] and not deleted.path.exists()
    assert [e.backup_id for e in catalog.list(CLUSTER)] == ids[:2][::-1]
    with pytest.raises(BackupError, match="no backup"):
        catalog.delete(ids[2])


def test_catalog_reports_unreadable_and_misplaced_files(tmp_path: Path) -> None:
    catalog = BackupCatalog(tmp_path)
    good = catalog.write(*make(NOW))
    (good.parent / "junk.srbk").write_bytes(b"hello")
    data, h = make(NOW + 1)
    (good.parent / f"renamed-{h.backup_id}.srbk").write_bytes(data)
    (good.parent / ".partial.srbk.1234.tmp").write_bytes(b"")
    (good.parent / "notes.txt").write_text("ignored")
    scan = catalog.scan(CLUSTER)
    assert [e.path for e in scan.entries] == [good]
    assert sorted(p.path.name for p in scan.problems) == sorted(["junk.srbk", f"renamed-{h.backup_id}.srbk"])
    assert any("not a Strongroom backup" in p.message for p in scan.problems)
    assert catalog.apply_retention(CLUSTER, 0, now=NOW + 10 * DAY) == []  # never touches problems
    assert (good.parent / "junk.srbk").exists()
    with pytest.raises(BackupError, match="not a cluster id"):
        catalog.list("../x")


def test_retention_keeps_the_newest_even_when_all_are_old(tmp_path: Path) -> None:
    catalog = BackupCatalog(tmp_path)
    for i in range(3):
        catalog.write(*make(NOW + i * DAY))
    newest = catalog.newest(CLUSTER)
    deleted = catalog.apply_retention(CLUSTER, retention_days=7, now=NOW + 100 * DAY)
    assert len(deleted) == 2
    assert catalog.list(CLUSTER) == [newest]
    assert catalog.apply_retention(CLUSTER, retention_days=0, now=NOW + 1000 * DAY) == []
    assert catalog.list(CLUSTER) == [newest]


def test_retention_deletes_only_old_backups(tmp_path: Path) -> None:
    catalog = BackupCatalog(tmp_path)
    ages = [40, 31, 29, 10, 1]  # days before "now"
    for age in ages:
        catalog.write(*make(NOW - age * DAY))
    catalog.write(*make(NOW - 100 * DAY, cluster_id=OTHER_CLUSTER))
    deleted = catalog.apply_retention(CLUSTER, retention_days=30, now=NOW)
    assert sorted(round((NOW - e.created) / DAY) for e in deleted) == [31, 40]
    assert sorted(round((NOW - e.created) / DAY) for e in catalog.list(CLUSTER)) == [1, 10, 29]
    assert len(catalog.list(OTHER_CLUSTER)) == 1  # other clusters untouched
    assert catalog.apply_retention("empty-cluster", 1, now=NOW) == []
    with pytest.raises(ValueError):
        catalog.apply_retention(CLUSTER, -1)


def test_retention_keeps_the_newest_intact_backup_when_the_newest_is_damaged(tmp_path: Path) -> None:
    catalog = BackupCatalog(tmp_path)
    paths = [catalog.write(*make(NOW - age * DAY)) for age in (50, 40, 35)]
    damaged = bytearray(paths[2].read_bytes())
    damaged[-40] ^= 1
    paths[2].write_bytes(bytes(damaged))
    deleted = catalog.apply_retention(CLUSTER, retention_days=30, now=NOW)
    assert [e.path for e in deleted] == [paths[0]]
    assert {e.path for e in catalog.list(CLUSTER)} == {paths[1], paths[2]}
