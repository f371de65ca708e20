"""`strongroom encrypt` / `decrypt` against a real cluster's KMS gateway (`strongroom up --kms`), the AWS
Encryption SDK on the other side of each interoperability test, and 1 GiB through a pipe in flat memory."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest

from tests.integration.conftest import LocalCluster

STRONGROOM = [sys.executable, "-m", "strongroom"]
GIB = 1 << 30
BLOCK = 1 << 20


@dataclass
class Kms:
    cluster: LocalCluster
    key_arn: str
    other_arn: str

    @property
    def summary(self) -> dict[str, Any]:
        return self.cluster.summary

    def env(self) -> dict[str, str]:
        """The CLI's environment: the cluster directory only (no AWS settings of the machine it runs on)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "AWS_"))}
        env["STRONGROOM_DIR"] = str(self.cluster.dir)
        return env

    def run(self, *args: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run([*STRONGROOM, *args], input=stdin, capture_output=True, env=self.env(), timeout=300)
        if check:
            assert result.returncode == 0, result.stderr.decode()
        assert b"Traceback" not in result.stderr, result.stderr.decode()
        return result

    def session(self) -> Any:
        """What an AWS Encryption SDK user configures: a botocore session trusting the gateway's CA."""
        session = botocore.session.Session()
        session.set_config_variable("ca_bundle", self.summary["kms_ca_bundle"])
        session.set_config_variable("region", self.summary["kms_region"])
        session.set_credentials(self.summary["kms_access_key_id"], self.summary["kms_secret_access_key"])
        return session


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kms]:
    cluster = LocalCluster(tmp_path_factory.mktemp("encrypt") / "cluster", up_args=("--kms",))
    cluster.up()
    try:
        summary = cluster.summary
        client = boto3.client("kms", endpoint_url=summary["kms_endpoint"], region_name=summary["kms_region"],
                              aws_access_key_id=summary["kms_access_key_id"],
                              aws_secret_access_key=summary["kms_secret_access_key"],
                              verify=summary["kms_ca_bundle"])
        key = client.create_key(Description="encrypt CLI")["KeyMetadata"]["Arn"]
        other = client.create_key(Description="another key")["KeyMetadata"]["Arn"]
        client.create_alias(AliasName="alias/backups", TargetKeyId=key)
        yield Kms(cluster, key, other)
    finally:
        cluster.down()


@pytest.fixture
def sdk_env(kms: Kms, monkeypatch: pytest.MonkeyPatch) -> Any:
    import aws_encryption_sdk as esdk

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", kms.summary["kms_endpoint"])
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    return esdk


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


# --- round trips -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 200_001])
def test_round_trip(kms: Kms, tmp_path: Path, size: int) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(size))
    made = kms.run("encrypt", "--json", "--key", kms.key_arn, "--context", "purpose=backup", str(plain),
                   str(tmp_path / "enc"))
    summary = json.loads(made.stdout)["data"]
    assert summary["plaintext_bytes"] == size and summary["keys"] == [kms.key_arn]
    ciphertext = (tmp_path / "enc").read_bytes()
    assert ciphertext[:1] == b"\x02"  # the SDK's message format, version 2 (key commitment)
    assert size < 16 or plain.read_bytes() not in ciphertext
    kms.run("decrypt", "--context", "purpose=backup", str(tmp_path / "enc"), str(tmp_path / "dec"))
    assert (tmp_path / "dec").read_bytes() == plain.read_bytes()
    assert (tmp_path / "dec").stat().st_mode & 0o077 == 0  # plaintext out: the owner's only
    assert leftovers(tmp_path) == []


def test_an_alias_and_stdin_stdout(kms: Kms) -> None:
    ciphertext = kms.run("encrypt", "--key", "alias/backups", "-", "-", stdin=b"pg_dump output").stdout
    assert kms.run("decrypt", "--key", "alias/backups", "-", "-", stdin=ciphertext).stdout == b"pg_dump output"
    # Restricted to another key, the same message is refused.
    refused = kms.run("decrypt", "--key", kms.other_arn, "-", "-", stdin=ciphertext, check=False)
    assert refused.returncode != 0 and refused.stdout == b""


# --- 1 GiB through a pipe, memory flat ---------------------------------------------------------------------


def _pipeline(kms: Kms, total: int) -> tuple[str, str, int, int, float]:
    """generator -> strongroom encrypt - - -> strongroom decrypt - - -> hash; returns (sha256 in, sha256 out,
    peak RSS of encrypt and of decrypt in KiB, seconds). Each 1 MiB block carries its index, so reordered or
    repeated blocks change the hash."""
    encrypt = subprocess.Popen([*STRONGROOM, "encrypt", "--key", kms.key_arn, "-", "-"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kms.env())
    decrypt = subprocess.Popen([*STRONGROOM, "decrypt", "-", "-"], stdin=encrypt.stdout, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=kms.env())
    assert encrypt.stdin is not None and encrypt.stdout is not None and decrypt.stdout is not None
    encrypt.stdout.close()  # decrypt holds the read end now
    sent = hashlib.sha256()
    base = os.urandom(BLOCK)

    def feed() -> None:
        assert encrypt.stdin is not None
        try:
            for index in range(total // BLOCK):
                block = index.to_bytes(8, "big") + base[8:]
                sent.update(block)
                encrypt.stdin.write(block)
            encrypt.stdin.close()
        except BrokenPipeError:
            pass

    started = time.monotonic()
    writer = threading.Thread(target=feed)
    writer.start()
    received = hashlib.sha256()
    while chunk := decrypt.stdout.read(BLOCK):
        received.update(chunk)
    writer.join()
    peaks = []
    for process in (encrypt, decrypt):
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        assert process.returncode == 0, process.stderr.read().decode() if process.stderr else ""
        peaks.append(usage.ru_maxrss)
    return sent.hexdigest(), received.hexdigest(), peaks[0], peaks[1], time.monotonic() - started


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_gib_through_a_pipe_in_flat_memory(kms: Kms) -> None:
    small = _pipeline(kms, 8 * BLOCK)
    assert small[0] == small[1]
    sent, received, encrypt_kib, decrypt_kib, seconds = _pipeline(kms, GIB)
    assert sent == received
    # The same peak as for 8 MiB, give or take allocator noise: nothing grows with the stream.
    assert encrypt_kib < small[2] + 32 * 1024 and decrypt_kib < small[3] + 32 * 1024, (small, encrypt_kib,
                                                                                      decrypt_kib)
    print(f"\n1 GiB: {seconds:.1f} s; peak RSS encrypt {encrypt_kib // 1024} MiB (8 MiB run: {small[2] // 1024}), "
          f"decrypt {decrypt_kib // 1024} MiB (8 MiB run: {small[3] // 1024})")


# --- what must be refused --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sealed(kms: Kms, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    folder = tmp_path_factory.mktemp("sealed")
    plain = os.urandom(300_000)
    (folder / "plain").write_bytes(plain)
    kms.run("encrypt", "--key", kms.key_arn, "--context", "purpose=backup", "--frame-size", "4096",
            str(folder / "plain"), str(folder / "enc"))
    return folder / "enc", plain


def _refused(kms: Kms, data: bytes, folder: Path, *extra: str) -> str:
    (folder / "in").write_bytes(data)
    result = kms.run("decrypt", *extra, str(folder / "in"), str(folder / "out"), check=False)
    assert result.returncode != 0
    assert not (folder / "out").exists() and leftovers(folder) == []
    piped = kms.run("decrypt", *extra, "-", "-", stdin=data, check=False)
    assert piped.returncode != 0
    return result.stderr.decode()


@pytest.mark.parametrize("keep", [0.5, 0.99, -1])
def test_a_truncated_file_is_refused(kms: Kms, sealed: tuple[Path, bytes], tmp_path: Path, keep: float) -> None:
    data = sealed[0].read_bytes()
    cut = data[:-1] if keep == -1 else data[:int(len(data) * keep)]  # mid-body, just before the end, the signature
    message = _refused(kms, cut, tmp_path)
    assert "truncated" in message or "authentication" in message, message


@pytest.mark.parametrize("where", [60, 0.5, -10])
def test_a_flipped_byte_is_refused(kms: Kms, sealed: tuple[Path, bytes], tmp_path: Path, where: float) -> None:
    data = bytearray(sealed[0].read_bytes())
    index = int(where) if where >= 1 or where < 0 else int(len(data) * where)  # header, a frame, the signature
    data[index] ^= 0x01
    _refused(kms, bytes(data), tmp_path)


def test_frames_out_of_order_are_refused(kms: Kms, tmp_path: Path) -> None:
    """Two whole frames swapped: each still authentic on its own, refused for its place."""
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(4096 * 4))
    kms.run("encrypt", "--key", kms.key_arn, "--frame-size", "4096", str(plain), str(tmp_path / "enc"))
    data = (tmp_path / "enc").read_bytes()
    from aws_encryption_sdk.internal.formatting.deserialize import deserialize_header, deserialize_header_auth

    stream = io.BytesIO(data)
    header, _raw = deserialize_header(stream)
    deserialize_header_auth(version=header.version, stream=stream, algorithm=header.algorithm)
    body = stream.tell()
    frame = 4 + header.algorithm.iv_len + 4096 + header.algorithm.auth_len  # sequence number, IV, content, tag
    first, second = data[body:body + frame], data[body + frame:body + 2 * frame]
    assert first[:4] == (1).to_bytes(4, "big") and second[:4] == (2).to_bytes(4, "big")
    swapped = data[:body] + second + first + data[body + 2 * frame:]
    assert "out of order" in _refused(kms, swapped, tmp_path)


def test_a_wrong_context_is_refused_before_any_plaintext(kms: Kms, sealed: tuple[Path, bytes], tmp_path: Path) -> None:
    data = sealed[0].read_bytes()
    message = _refused(kms, data, tmp_path, "--context", "purpose=other")
    assert "purpose=other" in message
    piped = kms.run("decrypt", "--context", "purpose=other", "-", "-", stdin=data, check=False)
    assert piped.returncode != 0 and piped.stdout == b""  # not a byte reached stdout
    assert kms.run("decrypt", "--context", "purpose=backup", "-", "-", stdin=data).stdout == sealed[1]


def test_a_message_with_huge_frames_is_refused(kms: Kms, sdk_env: Any, tmp_path: Path) -> None:
    """A frame is read whole before it is checked: frames above the limit would make memory follow the input."""
    esdk = sdk_env
    client = esdk.EncryptionSDKClient(commitment_policy=esdk.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    provider = esdk.StrictAwsKmsMasterKeyProvider(key_ids=[kms.key_arn], botocore_session=kms.session())
    message, _ = client.encrypt(source=os.urandom(9 << 20), key_provider=provider, frame_length=8 << 20)
    _refused(kms, message, tmp_path)


def test_errors_are_one_line(kms: Kms, tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    unknown = kms.run("encrypt", "--key", "alias/nope", str(tmp_path / "plain"), str(tmp_path / "enc"), check=False)
    assert unknown.returncode != 0 and b"NotFoundException" in unknown.stderr and not (tmp_path / "enc").exists()
    missing = kms.run("encrypt", "--key", kms.key_arn, str(tmp_path / "absent"), str(tmp_path / "enc"), check=False)
    assert missing.returncode != 0 and b"cannot read" in missing.stderr
    same = kms.run("encrypt", "--key", kms.key_arn, str(tmp_path / "plain"), str(tmp_path / "plain"), check=False)
    assert same.returncode != 0 and (tmp_path / "plain").read_bytes() == b"x"


# --- interoperability with the AWS Encryption SDK ----------------------------------------------------------------


def test_sdk_encrypts_and_the_cli_decrypts(kms: Kms, sdk_env: Any, tmp_path: Path) -> None:
    esdk = sdk_env
    client = esdk.EncryptionSDKClient(commitment_policy=esdk.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    provider = esdk.StrictAwsKmsMasterKeyProvider(key_ids=[kms.key_arn], botocore_session=kms.session())
    plain = os.urandom(50_000)
    message, _ = client.encrypt(source=plain, key_provider=provider, encryption_context={"app": "sdk"})
    (tmp_path / "sdk.enc").write_bytes(message)  # the SDK's defaults: 4 KiB frames, ECDSA P-384 signature
    kms.run("decrypt", "--context", "app=sdk", str(tmp_path / "sdk.enc"), str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == plain
    with open(tmp_path / "out", "rb") as source, open(tmp_path / "stream.enc", "wb") as out, client.stream(
            mode="e", source=source, key_provider=provider) as encryptor:
        for chunk in encryptor:
            out.write(chunk)
    assert kms.run("decrypt", str(tmp_path / "stream.enc"), "-").stdout == plain


def test_the_cli_encrypts_and_the_sdk_decrypts(kms: Kms, sdk_env: Any, tmp_path: Path) -> None:
    esdk = sdk_env
    plain = os.urandom(70_000)
    (tmp_path / "plain").write_bytes(plain)
    kms.run("encrypt", "--key", kms.key_arn, "--context", "app=cli", str(tmp_path / "plain"), str(tmp_path / "enc"))
    client = esdk.EncryptionSDKClient(commitment_policy=esdk.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    provider = esdk.StrictAwsKmsMasterKeyProvider(key_ids=[kms.key_arn], botocore_session=kms.session())
    decrypted, header = client.decrypt(source=(tmp_path / "enc").read_bytes(), key_provider=provider)
    assert decrypted == plain and header.encryption_context["app"] == "cli"
    assert header.frame_length == 64 * 1024
    with open(tmp_path / "enc", "rb") as source, client.stream(mode="d", source=source,
                                                               key_provider=provider) as decryptor:
        assert b"".join(decryptor) == plain


# --- the terminal -------------------------------------------------------------------------------------------------


def test_a_progress_bar_on_a_terminal(kms: Kms, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(3 << 20))
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([*STRONGROOM, "encrypt", "--key", kms.key_arn, str(plain), str(tmp_path / "enc")],
                                   stdout=subprocess.DEVNULL, stderr=terminal, env=kms.env())
        os.close(terminal)
        shown = b""
        while True:
            ready, _, _ = select.select([controller], [], [], 60)
            assert ready, "no output on the terminal"
            try:
                data = os.read(controller, 4096)
            except OSError:  # the other end closed
                break
            if not data:
                break
            shown += data
        assert process.wait(60) == 0
    finally:
        os.close(controller)
    assert b"encrypting [" in shown and b"100%" in shown and b"3.0 MiB" in shown, shown
    # Not on a pipe: stderr stays clean for scripts.
    assert kms.run("encrypt", "--key", kms.key_arn, str(plain), str(tmp_path / "enc2")).stderr == b""

