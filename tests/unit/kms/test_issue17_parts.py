"""The gateway's parts added with issue 17, without a cluster: AWS-shaped cluster ids, the 400s that
were 500s (non-finite integers, lone surrogates), timestamps, EXTERNAL key records and metadata,
the import wrapping rules, and the last-usage tracker (a use is never overwritten by an earlier one)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import pytest

from strongroom.kms.arn import CLUSTER_ID_RE, Location, aws_cluster_id, names_cluster
from strongroom.kms.errors import SerializationError, Validation
from strongroom.kms.keyspecs import KEY_SPECS
from strongroom.kms.model import NO_HANDLE, KmsKey, Material, Metadata
from strongroom.kms.ops.imports import _check_wrapping, material_expired, material_id_of
from strongroom.kms.usage import USAGE, UsageTracker
from strongroom.kms.validation import Params, has_lone_surrogate

WHERE = Location("us-east-1", "111122223333")


def test_aws_shaped_cluster_ids() -> None:
    cluster = str(uuid.uuid4())
    shaped = aws_cluster_id(cluster)
    assert CLUSTER_ID_RE.match(shaped) and re.fullmatch(r"cluster-[2-7a-z]{16}", shaped)
    assert 19 <= len(shaped) <= 24  # the model's length limits
    assert aws_cluster_id(cluster) == shaped and aws_cluster_id(shaped) == shaped
    assert names_cluster(cluster, cluster) and names_cluster(shaped, cluster) and names_cluster(shaped.upper(), cluster)
    assert not names_cluster(aws_cluster_id(str(uuid.uuid4())), cluster)
    assert not names_cluster("cluster-234567abcdefg", cluster)


@pytest.mark.parametrize("text", ['{"N": 1e400}', '{"N": -1e400}', '{"N": 1e999}', '{"N": "1"}', '{"N": true}',
                                  '{"N": 1.5}'])
def test_an_integer_that_is_no_integer_is_a_client_error(text: str) -> None:
    with pytest.raises(SerializationError):
        Params(json.loads(text)).integer("N")


def test_lone_surrogates_are_found_in_keys_values_and_lists() -> None:
    for text in ('{"Description": "\\ud800"}', '{"EncryptionContext": {"\\udfff": "v"}}',
                 '{"Tags": [{"TagKey": "a", "TagValue": "x\\udc00"}]}', '["\\ud83d"]'):
        assert has_lone_surrogate(json.loads(text)), text
    for text in ('{"Description": "key \\ud83d\\udd11"}', '{"a": ["b", {"c": 1}], "d": null}', '{"e": "\\u00e9"}'):
        assert not has_lone_surrogate(json.loads(text)), text


def test_timestamps_are_epoch_seconds_or_iso_8601() -> None:
    assert Params({"T": 1_700_000_000}).timestamp("T") == 1_700_000_000.0
    assert Params({"T": "2026-01-02T03:04:05Z"}).timestamp("T") == 1767323045.0
    for bad in (float("inf"), "tomorrow", True, [1]):
        with pytest.raises(SerializationError):
            Params({"T": bad}).timestamp("T")
    params = Params({})
    assert params.timestamp("T", required=True) is None
    with pytest.raises(Validation):
        params.check()


def test_external_keys_in_records_and_metadata() -> None:
    key = KmsKey("k", created=1.0, origin="EXTERNAL", state="PendingImport")
    assert not key.has_material and "ExpirationModel" not in key.metadata(WHERE)
    material = Material(1, 9, material_id_of("k", "kcv:abcdef"), 2.0, None, "kcv:abcdef")
    key.materials, key.state = [material], "Enabled"
    key.expiration_model, key.valid_to = "KEY_MATERIAL_EXPIRES", 500.0
    again = KmsKey.from_record(key.to_record(), 1)
    assert again.materials == [material] and again.has_material
    meta = again.metadata(WHERE)
    assert (meta["Origin"], meta["ExpirationModel"], meta["ValidTo"]) == ("EXTERNAL", "KEY_MATERIAL_EXPIRES", 500.0)
    assert meta["CurrentKeyMaterialId"] == material.material_id and len(material.material_id) == 64
    assert material_expired(again, 500.0) and not material_expired(again, 499.0)
    # Deleted material: no cluster object, its id and fingerprint kept for the reimport check.
    material.handle = NO_HANDLE
    assert material.handles == [] and not material.present
    assert Material.from_record(material.to_record()).fingerprint == "kcv:abcdef"
    assert not material_expired(KmsKey.from_record(key.to_record(), 2), 1e12)
    # Specs AWS's deprecated CustomerMasterKeySpec enum lacks are answered without it.
    pq = KmsKey("p", created=1.0, key_usage="SIGN_VERIFY", key_spec="ML_DSA_65")
    assert "CustomerMasterKeySpec" not in pq.metadata(WHERE) and pq.metadata(WHERE)["KeySpec"] == "ML_DSA_65"
    assert pq.metadata(WHERE)["SigningAlgorithms"] == ["ML_DSA_SHAKE_256"]
    kem = KmsKey("q", created=1.0, key_usage="ENCAPSULATE_DECAPSULATE", key_spec="ML_KEM_768")
    assert kem.metadata(WHERE)["EncapsulationAlgorithms"] == ["ML_KEM"]
    agreement = KmsKey("r", created=1.0, key_usage="KEY_AGREEMENT", key_spec="ECC_NIST_P384")
    assert agreement.metadata(WHERE)["KeyAgreementAlgorithms"] == ["ECDH"]


@pytest.mark.parametrize(("spec", "algorithm", "wrapping", "refused"), [
    ("SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_256", "RSA_2048", False),
    ("RSA_2048", "RSAES_OAEP_SHA_256", "RSA_4096", True),  # RSA material only through RSA_AES
    ("RSA_2048", "RSA_AES_KEY_WRAP_SHA_256", "RSA_2048", False),
    ("ECC_NIST_P521", "RSAES_OAEP_SHA_256", "RSA_2048", True),  # AWS: too long for RSA_2048 and OAEP
    ("ECC_NIST_P521", "RSAES_OAEP_SHA_256", "RSA_3072", False),
    ("HMAC_256", "RSAES_PKCS1_V1_5", "RSA_2048", True),  # no longer supported by AWS
    ("SYMMETRIC_DEFAULT", "SM2PKE", "SM2", True),  # China Regions only
])
def test_wrapping_rules(spec: str, algorithm: str, wrapping: str, refused: bool) -> None:
    if refused:
        with pytest.raises(Validation):
            _check_wrapping(KEY_SPECS[spec], algorithm, wrapping)
    else:
        _check_wrapping(KEY_SPECS[spec], algorithm, wrapping)


class FakeBackend:
    def __init__(self) -> None:
        self.records: dict[str, tuple[dict[str, Any], int]] = {}
        self.commits = 0

    async def record_get(self, key: str) -> tuple[dict[str, Any] | None, int]:
        value, revision = self.records.get(key, (None, 0))
        return value, revision

    async def record_commit(self, changes: list[dict[str, Any]]) -> bool:
        self.commits += 1
        if any(self.records.get(c["key"], (None, 0))[1] != c["expect"] for c in changes):
            return False
        for change in changes:
            self.records[change["key"]] = (change["value"], self.records.get(change["key"], ({}, 0))[1] + 1)
        return True


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_usage_tracker_keeps_the_latest_use() -> None:
    async def main() -> None:
        backend, clock = FakeBackend(), Clock()
        metadata = Metadata(backend)  # type: ignore[arg-type]
        tracker = UsageTracker(metadata, clock=clock)
        other = UsageTracker(Metadata(backend), clock=clock)  # type: ignore[arg-type]  # another gateway
        assert await tracker.last("k") is None
        tracker.note("k", "Encrypt", "req-1")
        tracker.note("k", "ListKeys", "req-x")  # not a tracked operation
        use = await tracker.last("k")  # this gateway's own note, before any flush
        assert use is not None and (use.operation, use.request_id) == ("Encrypt", "req-1")
        clock.now = 1010.0
        other.note("k", "Decrypt", "req-2")
        assert await other.flush() == 1
        assert await tracker.flush() == 0  # its note is older than the stored one: not written
        stored = await tracker.last("k")
        assert stored is not None and (stored.operation, stored.timestamp) == ("Decrypt", 1010.0)
        # Many keys: written in batches of at most 16 records per commit.
        commits = backend.commits
        for index in range(40):
            tracker.note(f"key-{index}", "Sign", f"r{index}")
        assert await tracker.flush() == 40 and backend.commits - commits == 3
        assert backend.records[USAGE + "key-39"][0]["operation"] == "Sign"
        # Tracking starts once for the cluster; a second gateway reads the same moment.
        clock.now = 2000.0
        start = await tracker.tracking_start()
        clock.now = 3000.0
        assert await other.tracking_start() == start == 2000.0

    asyncio.run(main())
