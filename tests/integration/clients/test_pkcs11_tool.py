"""OpenSC `pkcs11-tool` against a `strongroom up` cluster, through libstrongroom-pkcs11.so.

Every operation runs in the real tool (a subprocess) against the real agent and node; every
result that can be checked outside the HSM is checked with pyca/cryptography, using the public
key read out with `--read-object --type pubkey` (DER SubjectPublicKeyInfo) or a secret key that
was generated *outside* and brought in wrapped (`--unwrap -m RSA-PKCS`), so that its value is
known here.

What this pkcs11-tool version can and cannot do (OpenSC 0.23 on Debian 12):

* `--encrypt`/`--decrypt` with AES-CBC / AES-CBC-PAD and `--iv`: yes. AES-GCM: no (no
  `--aad`/`--tag-bits-len`; it answers "Mechanism AES-GCM illegal or not supported"), so the GCM
  test runs only with a newer pkcs11-tool; python-pkcs11 and PyKCS11 cover GCM
  (test_python_pkcs11.py).
* `--wrap`/`--unwrap`: yes, with `-m AES-KEY-WRAP` (no parameter) and, by number, `-m 0x210A`
  (CKM_AES_KEY_WRAP_PAD; 0.23 has no name for it). `--unwrap -m RSA-PKCS-OAEP` sends no OAEP
  parameters (refused with CKR_MECHANISM_PARAM_INVALID), so keys are brought in with RSA-PKCS.
* `--test` checks signatures only for mechanisms flagged CKF_HW (a software HSM sets none, like
  SoftHSMv2), so it prints "Signatures: not implemented" and tests Verify and Decryption.
* `--test-threads` knows IN, IL, GI, SL, Tn and Pn only (no session or login commands).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap, aes_key_wrap_with_padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

from strongroom.client import Client
from strongroom.constants import CKA, CKM

from ..conftest import LocalCluster, Pkcs11Module, Pkcs11Target, pkcs11_target

PKCS11_TOOL = shutil.which("pkcs11-tool")

pytestmark = pytest.mark.skipif(PKCS11_TOOL is None,
                                reason="OpenSC pkcs11-tool is not installed (apt-get install opensc)")

SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
MESSAGE = b"Strongroom and pkcs11-tool: " + bytes(range(256)) * 3
IV16 = bytes.fromhex("000102030405060708090a0b0c0d0e0f")


@dataclass
class Tool:
    """pkcs11-tool bound to the module, the agent socket, the token label and a crypto user's PIN."""

    module: str
    socket: str
    token_label: str
    pin: str
    workdir: Path

    def run(self, *args: str, login: bool = True, check: bool = True, timeout: float = 90) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
        env["STRONGROOM_AGENT_SOCKET"] = self.socket
        command = [PKCS11_TOOL, "--module", self.module, "--token-label", self.token_label]
        if login:
            command += ["--login", "--pin", self.pin]
        result = subprocess.run([*command, *args], capture_output=True, text=True, env=env, cwd=self.workdir,
                                timeout=timeout)
        output = result.stdout + result.stderr
        if check:
            assert result.returncode == 0, f"pkcs11-tool {' '.join(args)} exited {result.returncode}:\n{output}"
            assert "error:" not in output, output
        return output

    def fails(self, *args: str) -> str:
        """Run a command that must fail; returns its output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
        env["STRONGROOM_AGENT_SOCKET"] = self.socket
        result = subprocess.run([PKCS11_TOOL, "--module", self.module, "--token-label", self.token_label,
                                 "--login", "--pin", self.pin, *args], capture_output=True, text=True, env=env,
                                cwd=self.workdir, timeout=90)
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"pkcs11-tool {' '.join(args)} should have failed:\n{output}"
        return output

    def file(self, name: str, data: bytes | None = None) -> str:
        path = self.workdir / name
        if data is not None:
            path.write_bytes(data)
        return str(path)

    def read(self, name: str) -> bytes:
        return (self.workdir / name).read_bytes()

    def public_key(self, key_id: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        out = self.file(f"pub-{key_id}.der")
        self.run("--read-object", "--type", "pubkey", "--id", key_id, "-o", out)
        key = load_der_public_key(Path(out).read_bytes())
        assert isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey))
        return key

    def sign(self, key_id: str, mechanism: str, data: bytes, *extra: str) -> bytes:
        name = f"sig-{key_id}-{mechanism}-{len(os.listdir(self.workdir))}"
        self.run("--sign", "-m", mechanism, "--id", key_id, "-i", self.file(name + ".in", data),
                 "-o", self.file(name + ".sig"), *extra)
        return self.read(name + ".sig")

    def cipher(self, operation: str, key_id: str, mechanism: str, data: bytes, *extra: str) -> bytes:
        name = f"{operation}-{key_id}-{len(os.listdir(self.workdir))}"
        self.run(f"--{operation}", "-m", mechanism, "--id", key_id, "-i", self.file(name + ".in", data),
                 "-o", self.file(name + ".out"), *extra)
        return self.read(name + ".out")


@pytest.fixture(scope="module")
def tool(pkcs11: Pkcs11Target, tmp_path_factory: pytest.TempPathFactory) -> Tool:
    return Tool(module=str(pkcs11.module), socket=pkcs11.socket, token_label=pkcs11.token_label,
                pin=pkcs11.crypto_user("opensc_tool", "tool-password"), workdir=tmp_path_factory.mktemp("pkcs11-tool"))


@dataclass
class Keys:
    rsa: str = "a1"
    ec: str = "a2"
    aes: str = "a3"
    outputs: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def keys(tool: Tool) -> Keys:
    """RSA-2048 and P-256 key pairs and an AES-256 key, generated by pkcs11-tool."""
    k = Keys()
    outputs = (
        tool.run("--keypairgen", "--key-type", "rsa:2048", "--id", k.rsa, "--label", "tool-rsa"),
        tool.run("--keypairgen", "--key-type", "EC:prime256v1", "--id", k.ec, "--label", "tool-ec"),
        tool.run("--keygen", "--key-type", "AES:32", "--id", k.aes, "--label", "tool-aes"),
    )
    return Keys(outputs=outputs)


@dataclass
class Known:
    """Secret keys whose values the test knows: generated here, brought in wrapped under the RSA key."""

    aes: bytes
    aes_id: str
    kek: bytes
    kek_id: str
    extractable: bytes
    extractable_id: str


@pytest.fixture(scope="module")
def known(tool: Tool, keys: Keys) -> Known:
    public = tool.public_key(keys.rsa)
    assert isinstance(public, rsa.RSAPublicKey)
    values = {"b1": os.urandom(32), "b2": os.urandom(32), "b3": os.urandom(16)}
    extra = {"b1": (), "b2": ("--usage-wrap",), "b3": ("--extractable",)}
    for key_id, value in values.items():
        wrapped = public.encrypt(value, rsa_padding.PKCS1v15())
        output = tool.run("--unwrap", "-m", "RSA-PKCS", "--id", keys.rsa, "-i", tool.file(f"{key_id}.rsa", wrapped),
                          "--key-type", "AES:", "--application-id", key_id, "--application-label",
                          f"known-{key_id}", *extra[key_id])
        assert "Key unwrapped" in output and f"AES length {len(value)}" in output, output
    return Known(aes=values["b1"], aes_id="b1", kek=values["b2"], kek_id="b2", extractable=values["b3"],
                 extractable_id="b3")


def _cbc(key: bytes, iv: bytes, data: bytes, pad: bool = True) -> bytes:
    if pad:
        padder = padding.PKCS7(128).padder()
        data = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


# --- token, keys -------------------------------------------------------------------------------


def test_token_is_found_by_label(tool: Tool) -> None:
    output = tool.run("--list-token-slots", login=False)
    assert f"token label        : {tool.token_label}" in output
    assert "token manufacturer : Strongroom" in output
    assert "login required" in output and "token initialized" in output
    mechanisms = tool.run("--list-mechanisms", login=False)
    for name in ("RSA-PKCS-KEY-PAIR-GEN", "RSA-PKCS-PSS", "RSA-PKCS-OAEP", "ECDSA-SHA256", "AES-CBC-PAD", "AES-GCM",
                 "AES-KEY-WRAP"):
        assert re.search(rf"^\s+{name},", mechanisms, re.M), (name, mechanisms)
    # Listed before any login, with the EC capability flags the agent adds (prime field, named curves).
    assert re.search(r"^\s+ECDSA-SHA256, .*sign, verify, EC F_P, EC OID, EC uncompressed", mechanisms, re.M), mechanisms


def test_wrong_pin_is_refused(tool: Tool) -> None:
    bad = Tool(tool.module, tool.socket, tool.token_label, "opensc_tool:wrong-password", tool.workdir)
    output = bad.fails("--list-objects")
    assert "CKR_PIN_INCORRECT" in output, output


def test_key_generation(tool: Tool, keys: Keys) -> None:
    rsa_out, ec_out, aes_out = keys.outputs
    assert "Key pair generated" in rsa_out and "Public Key Object; RSA 2048 bits" in rsa_out
    assert "Key pair generated" in ec_out and "EC_POINT 256 bits" in ec_out
    assert "EC_PARAMS:  06082a8648ce3d030107" in ec_out  # prime256v1
    assert "Secret Key Object; AES length 32" in aes_out
    for out in (rsa_out, ec_out):
        assert re.search(r"Private Key Object.*?Access:\s+sensitive, always sensitive, never extractable, local",
                         out, re.S), out
    listing = tool.run("--list-objects")
    for label in ("tool-rsa", "tool-ec", "tool-aes"):
        assert f"label:      {label}" in listing
    # Without a login (PKCS#11 v2.40 §6.7) the public objects only: the public keys, and the AES key, which
    # pkcs11-tool makes with CKA_PRIVATE false unless told --private; never a private key.
    public = tool.run("--list-objects", login=False)
    assert "Private Key Object" not in public, public
    assert re.search(r"Public Key Object; RSA 2048 bits.*?label:\s+tool-rsa", public, re.S), public
    assert re.search(r"Public Key Object; EC\s+EC_POINT 256 bits.*?label:\s+tool-ec", public, re.S), public
    # key material never comes out in clear
    assert "CKR_ATTRIBUTE_SENSITIVE" in tool.fails("--read-object", "--type", "secrkey", "--id", keys.aes)
    public = tool.public_key(keys.rsa)
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    ec_public = tool.public_key(keys.ec)
    assert isinstance(ec_public, ec.EllipticCurvePublicKey) and ec_public.curve.name == "secp256r1"


# --- without a login: public objects, public-key operations, digests, random (issue 13 item 1) ------------


def test_public_key_and_verify_without_login(tool: Tool, keys: Keys) -> None:
    """pkcs11-tool --read-object / --verify without --login, as PKCS#11 §6.7 lets a public session."""
    with_login = tool.public_key(keys.ec)
    out = tool.file("pub-nologin.der")
    tool.run("--read-object", "--type", "pubkey", "--id", keys.ec, "-o", out, login=False)
    assert load_der_public_key(Path(out).read_bytes()) == with_login
    signature = tool.sign(keys.ec, "ECDSA-SHA256", MESSAGE, "--signature-format", "openssl")
    verdict = tool.run("--verify", "-m", "ECDSA-SHA256", "--id", keys.ec, "-i", tool.file("nl.in", MESSAGE),
                       "--signature-file", tool.file("nl.sig", signature), "--signature-format", "openssl",
                       login=False)
    assert "Signature is valid" in verdict, verdict
    rsa_sig = tool.sign(keys.rsa, "SHA256-RSA-PKCS", MESSAGE)
    verdict = tool.run("--verify", "-m", "SHA256-RSA-PKCS", "--id", keys.rsa, "-i", tool.file("nl2.in", MESSAGE),
                       "--signature-file", tool.file("nl2.sig", rsa_sig), login=False)
    assert "Signature is valid" in verdict, verdict
    # a private key is not there for a public session
    output = tool.run("--sign", "-m", "SHA256-RSA-PKCS", "--id", keys.rsa, "-i", tool.file("nl3.in", MESSAGE),
                      "-o", tool.file("nl3.sig"), login=False, check=False)
    assert "Signature" not in output or "error" in output.lower(), output


def test_digest_and_random_without_login(tool: Tool) -> None:
    digest = tool.file("hash.out")
    tool.run("--hash", "-m", "SHA256", "-i", tool.file("hash.in", MESSAGE), "-o", digest, login=False)
    assert Path(digest).read_bytes() == _sha256(MESSAGE)
    random_out = tool.file("random.out")
    tool.run("--generate-random", "64", "-o", random_out, login=False)
    assert len(Path(random_out).read_bytes()) == 64


def test_certificate_written_then_read_without_login(tool: Tool, keys: Keys) -> None:
    """A certificate is a public object: written by a logged-in user, read and listed by anyone."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    signer = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tool public certificate")])
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(signer.public_key())
            .serial_number(4711).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(signer, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    tool.run("--write-object", tool.file("cert.der", der), "--type", "cert", "--id", "f1", "--label", "tool-cert")
    listing = tool.run("--list-objects", "--type", "cert", login=False)
    assert "label:      tool-cert" in listing, listing
    out = tool.file("cert-back.der")
    tool.run("--read-object", "--type", "cert", "--id", "f1", "-o", out, login=False)
    assert Path(out).read_bytes() == der


# --- keys imported in clear (issue 13 item 7) ----------------------------------------------------------


def test_secret_key_written_in_clear_is_usable_and_readable(tool: Tool) -> None:
    """C_CreateObject of a secret key (pkcs11-tool --write-object --type secrkey): its value works like the one
    outside; made with CKA_SENSITIVE false (pkcs11-tool's default) and CKA_EXTRACTABLE true, CKA_VALUE reads
    back (pkcs11-tool --read-object); made --sensitive, never."""
    value, iv, data = os.urandom(32), os.urandom(16), os.urandom(50)
    tool.run("--write-object", tool.file("aes.key", value), "--type", "secrkey", "--key-type", "AES:32",
             "--id", "f2", "--label", "tool-imported", "--usage-decrypt", "--extractable")
    assert tool.cipher("encrypt", "f2", "AES-CBC-PAD", data, "--iv", iv.hex()) == _cbc(value, iv, data)
    back = tool.file("aes.back")
    tool.run("--read-object", "--type", "secrkey", "--id", "f2", "-o", back)
    assert Path(back).read_bytes() == value
    tool.run("--write-object", tool.file("aes2.key", os.urandom(16)), "--type", "secrkey", "--key-type", "AES:16",
             "--id", "f3", "--label", "tool-imported-sensitive", "--extractable", "--sensitive")
    assert "CKR_ATTRIBUTE_SENSITIVE" in tool.fails("--read-object", "--type", "secrkey", "--id", "f3", "-o",
                                                   tool.file("never.back"))


# --- signatures, verified outside ------------------------------------------------------------


def test_rsa_pkcs_sign(tool: Tool, keys: Keys) -> None:
    public = tool.public_key(keys.rsa)
    assert isinstance(public, rsa.RSAPublicKey)
    digest_info = SHA256_DIGEST_INFO + _sha256(MESSAGE)
    signature = tool.sign(keys.rsa, "RSA-PKCS", digest_info)
    assert len(signature) == 256
    public.verify(signature, MESSAGE, rsa_padding.PKCS1v15(), hashes.SHA256())
    assert public.recover_data_from_signature(signature, rsa_padding.PKCS1v15(), None) == digest_info


def test_sha256_rsa_pkcs_sign_and_verify(tool: Tool, keys: Keys) -> None:
    public = tool.public_key(keys.rsa)
    assert isinstance(public, rsa.RSAPublicKey)
    signature = tool.sign(keys.rsa, "SHA256-RSA-PKCS", MESSAGE)
    public.verify(signature, MESSAGE, rsa_padding.PKCS1v15(), hashes.SHA256())
    # deterministic: the same as RSA-PKCS over the DigestInfo
    assert signature == tool.sign(keys.rsa, "RSA-PKCS", SHA256_DIGEST_INFO + _sha256(MESSAGE))
    # and the HSM verifies it (and refuses a damaged one)
    sig_file = tool.file("s256.sig", signature)
    good = tool.run("--verify", "-m", "SHA256-RSA-PKCS", "--id", keys.rsa, "-i", tool.file("s256.in", MESSAGE),
                    "--signature-file", sig_file)
    assert "Signature is valid" in good
    damaged = bytearray(signature)
    damaged[10] ^= 1
    bad = tool.run("--verify", "-m", "SHA256-RSA-PKCS", "--id", keys.rsa, "-i", tool.file("s256.in", MESSAGE),
                   "--signature-file", tool.file("s256.bad", bytes(damaged)))
    assert "Invalid signature" in bad and "Signature is valid" not in bad


def test_rsa_pss_sign(tool: Tool, keys: Keys) -> None:
    public = tool.public_key(keys.rsa)
    assert isinstance(public, rsa.RSAPublicKey)
    pss = rsa_padding.PSS(mgf=rsa_padding.MGF1(hashes.SHA256()), salt_length=32)
    # RSA-PKCS-PSS signs a digest of the hash's size
    raw = tool.sign(keys.rsa, "RSA-PKCS-PSS", _sha256(MESSAGE), "--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256",
                    "--salt-len", "32")
    public.verify(raw, _sha256(MESSAGE), pss, Prehashed(hashes.SHA256()))
    public.verify(raw, MESSAGE, pss, hashes.SHA256())
    # SHA256-RSA-PKCS-PSS hashes inside (pkcs11-tool takes the hash from the mechanism)
    hashed = tool.sign(keys.rsa, "SHA256-RSA-PKCS-PSS", MESSAGE, "--mgf", "MGF1-SHA256", "--salt-len", "32")
    public.verify(hashed, MESSAGE, pss, hashes.SHA256())
    assert raw != hashed  # randomized salt
    with pytest.raises(InvalidSignature):
        public.verify(hashed, MESSAGE + b"!", pss, hashes.SHA256())
    # a salt length other than the digest's
    short = tool.sign(keys.rsa, "RSA-PKCS-PSS", _sha256(MESSAGE), "--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256",
                      "--salt-len", "0")
    public.verify(short, MESSAGE, rsa_padding.PSS(mgf=rsa_padding.MGF1(hashes.SHA256()), salt_length=0),
                  hashes.SHA256())


def test_ecdsa_sign(tool: Tool, keys: Keys) -> None:
    public = tool.public_key(keys.ec)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    digest = _sha256(MESSAGE)
    # raw ECDSA over a digest; `--signature-format openssl` writes DER
    der = tool.sign(keys.ec, "ECDSA", digest, "--signature-format", "openssl")
    assert der[0] == 0x30
    public.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    # the default format is r||s, 32 bytes each on P-256
    rs = tool.sign(keys.ec, "ECDSA", digest)
    assert len(rs) == 64
    public.verify(encode_dss_signature(int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big")), digest,
                  ec.ECDSA(Prehashed(hashes.SHA256())))
    # ECDSA-SHA256 hashes inside
    hashed = tool.sign(keys.ec, "ECDSA-SHA256", MESSAGE, "--signature-format", "openssl")
    public.verify(hashed, MESSAGE, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(hashed, MESSAGE + b"!", ec.ECDSA(hashes.SHA256()))
    # and the HSM verifies the DER form too
    verdict = tool.run("--verify", "-m", "ECDSA-SHA256", "--id", keys.ec, "-i", tool.file("ec.in", MESSAGE),
                       "--signature-file", tool.file("ec.sig", hashed), "--signature-format", "openssl")
    assert "Signature is valid" in verdict


# --- RSA decryption of data encrypted outside ----------------------------------------------------


def test_rsa_oaep_sha256_decrypt(tool: Tool, keys: Keys) -> None:
    public = tool.public_key(keys.rsa)
    assert isinstance(public, rsa.RSAPublicKey)
    secret = b"OAEP(SHA-256) from outside " + os.urandom(16)
    oaep = rsa_padding.OAEP(mgf=rsa_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    clear = tool.cipher("decrypt", keys.rsa, "RSA-PKCS-OAEP", public.encrypt(secret, oaep),
                        "--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256")
    assert clear == secret


def test_rsa_pkcs_decrypt(tool: Tool, keys: Keys) -> None:
    public = tool.public_key(keys.rsa)
    assert isinstance(public, rsa.RSAPublicKey)
    secret = os.urandom(48)
    assert tool.cipher("decrypt", keys.rsa, "RSA-PKCS", public.encrypt(secret, rsa_padding.PKCS1v15())) == secret


# --- AES ----------------------------------------------------------------------------------------


def test_aes_cbc_pad_round_trip(tool: Tool, keys: Keys) -> None:
    data = os.urandom(100)  # not a multiple of the block size
    iv = ["--iv", IV16.hex()]
    sealed = tool.cipher("encrypt", keys.aes, "AES-CBC-PAD", data, *iv)
    assert len(sealed) == 112 and sealed[:100] != data
    assert tool.cipher("decrypt", keys.aes, "AES-CBC-PAD", sealed, *iv) == data
    # another IV, another ciphertext
    other = tool.cipher("encrypt", keys.aes, "AES-CBC-PAD", data, "--iv", os.urandom(16).hex())
    assert other != sealed


def test_aes_cbc_pad_matches_outside(tool: Tool, known: Known) -> None:
    data = os.urandom(77)
    iv = os.urandom(16)
    sealed = tool.cipher("encrypt", known.aes_id, "AES-CBC-PAD", data, "--iv", iv.hex())
    assert sealed == _cbc(known.aes, iv, data)
    outside = _cbc(known.aes, iv, data[:50])
    assert tool.cipher("decrypt", known.aes_id, "AES-CBC-PAD", outside, "--iv", iv.hex()) == data[:50]
    # unpadded CBC over whole blocks
    assert tool.cipher("encrypt", known.aes_id, "AES-CBC", data[:64], "--iv", iv.hex()) == _cbc(
        known.aes, iv, data[:64], pad=False)


def _tool_help() -> str:
    assert PKCS11_TOOL is not None
    result = subprocess.run([PKCS11_TOOL, "--help"], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


def test_aes_gcm_round_trip(tool: Tool, known: Known) -> None:
    usage = _tool_help()
    if "--aad" not in usage or "--tag-bits-len" not in usage:
        # Debian 12's OpenSC 0.23 cannot pass GCM parameters (--aad/--tag-bits-len arrived in 0.24): what it
        # can check is that the token offers AES-GCM for encryption and decryption. The round trip itself
        # runs through python-pkcs11 and PyKCS11; with a newer pkcs11-tool it runs here too.
        listed = [line for line in tool.run("--list-mechanisms", login=False).splitlines() if "AES-GCM" in line]
        assert listed and "encrypt" in listed[0] and "decrypt" in listed[0], listed
        return
    data, iv, aad = os.urandom(61), os.urandom(12), b"header"
    args = ["--iv", iv.hex(), "--aad", aad.hex(), "--tag-bits-len", "128"]
    sealed = tool.cipher("encrypt", known.aes_id, "AES-GCM", data, *args)
    assert sealed == AESGCM(known.aes).encrypt(iv, data, aad)
    assert tool.cipher("decrypt", known.aes_id, "AES-GCM", sealed, *args) == data


# --- AES key wrap ---------------------------------------------------------------------------------


def test_aes_key_wrap_matches_rfc3394_and_rfc5649(tool: Tool, known: Known) -> None:
    wrapped = tool.file("kw.out")
    tool.run("--wrap", "-m", "AES-KEY-WRAP", "--id", known.kek_id, "--application-id", known.extractable_id,
             "-o", wrapped)
    assert Path(wrapped).read_bytes() == aes_key_wrap(known.kek, known.extractable)
    # CKM_AES_KEY_WRAP_PAD (0x210A; pkcs11-tool 0.23 has no name for it): RFC 5649
    padded = tool.file("kwp.out")
    tool.run("--wrap", "-m", "0x210A", "--id", known.kek_id, "--application-id", known.extractable_id, "-o", padded)
    assert Path(padded).read_bytes() == aes_key_wrap_with_padding(known.kek, known.extractable)


def test_aes_key_unwrap_of_keys_wrapped_outside(tool: Tool, known: Known) -> None:
    iv = os.urandom(16)
    data = os.urandom(40)
    for mechanism, key_id, value, wrap in (("AES-KEY-WRAP", "c1", os.urandom(32), aes_key_wrap),
                                           ("0x210A", "c2", os.urandom(24), aes_key_wrap_with_padding)):
        output = tool.run("--unwrap", "-m", mechanism, "--id", known.kek_id,
                          "-i", tool.file(f"{key_id}.wrapped", wrap(known.kek, value)), "--key-type", "AES:",
                          "--application-id", key_id, "--application-label", f"unwrapped-{key_id}")
        assert "Key unwrapped" in output and f"AES length {len(value)}" in output, output
        assert tool.cipher("encrypt", key_id, "AES-CBC-PAD", data, "--iv", iv.hex()) == _cbc(value, iv, data)
    # a damaged wrapping is refused
    damaged = bytearray(aes_key_wrap(known.kek, os.urandom(32)))
    damaged[5] ^= 1
    output = tool.fails("--unwrap", "-m", "AES-KEY-WRAP", "--id", known.kek_id,
                        "-i", tool.file("damaged.wrapped", bytes(damaged)), "--key-type", "AES:",
                        "--application-id", "c3")
    assert "CKR_WRAPPED_KEY_INVALID" in output, output


def test_aes_key_wrap_round_trip_inside(tool: Tool, keys: Keys) -> None:
    tool.run("--keygen", "--key-type", "AES:32", "--id", "d1", "--label", "tool-kek", "--usage-wrap")
    tool.run("--keygen", "--key-type", "AES:16", "--id", "d2", "--label", "tool-wrapped", "--extractable")
    wrapped = tool.file("d2.wrapped")
    tool.run("--wrap", "-m", "AES-KEY-WRAP", "--id", "d1", "--application-id", "d2", "-o", wrapped)
    assert len(Path(wrapped).read_bytes()) == 24
    tool.run("--unwrap", "-m", "AES-KEY-WRAP", "--id", "d1", "-i", wrapped, "--key-type", "AES:",
             "--application-id", "d3", "--application-label", "tool-unwrapped")
    data = os.urandom(33)
    assert tool.cipher("encrypt", "d2", "AES-CBC-PAD", data, "--iv", IV16.hex()) == tool.cipher(
        "encrypt", "d3", "AES-CBC-PAD", data, "--iv", IV16.hex())
    # a key that is not extractable (pkcs11-tool's default, CKA_EXTRACTABLE false) is never wrapped
    output = tool.fails("--wrap", "-m", "AES-KEY-WRAP", "--id", "d1", "--application-id", keys.aes,
                        "-o", tool.file("never.wrapped"))
    assert "CKR_KEY_UNEXTRACTABLE" in output, output


# --- pkcs11-tool's own test suites -----------------------------------------------------------


def test_builtin_test_suite(tool: Tool, keys: Keys) -> None:
    output = tool.run("--test")
    assert "No errors" in output, output
    # each section goes through the user's private keys (in the token's order) and tests the RSA one
    verify = output[output.index("Verify (currently only for RSA)"):output.index("Decryption (currently only for RSA)")]
    decryption = output[output.index("Decryption (currently only for RSA)"):output.index("No errors")]
    key_line = r"testing key \d+ \(tool-rsa\)( with 1 mechanism)?\n"
    assert re.search(key_line + r"\s+RSA-PKCS: OK\n", verify), output
    assert re.search(key_line + r"\s+RSA-PKCS: OK\n\s+RSA-PKCS-OAEP: .*\nOK\n", decryption), output
    assert "all 4 digest functions seem to work" in output



def _rsa_pair(client: Client, key_id: bytes, label: str) -> tuple[int, int]:
    """An RSA-2048 pair for encryption and signatures, made through the SDK (which, unlike pkcs11-tool, tells
    the handles); without an ID when ``key_id`` is empty, as the CLI makes pairs (CloudHSM: id empty)."""
    public: dict[int, object] = {CKA.TOKEN: True, CKA.LABEL: label.encode(), CKA.MODULUS_BITS: 2048,
                                 CKA.ENCRYPT: True, CKA.VERIFY: True}
    private: dict[int, object] = {CKA.TOKEN: True, CKA.LABEL: label.encode(), CKA.DECRYPT: True, CKA.SIGN: True}
    if key_id:
        public[CKA.ID] = private[CKA.ID] = key_id
    return client.generate_key_pair(CKM.RSA_PKCS_KEY_PAIR_GEN, public, private)


def _decrypted_with_every_rsa_mechanism(output: str, label: str) -> bool:
    """pkcs11-tool --test's decryption section went through RSA-PKCS and both OAEP runs (the second with a label)."""
    decryption = output[output.index("Decryption (currently only for RSA)"):]
    return re.search(rf"testing key \d+ \({re.escape(label)}\)\n\s+RSA-PKCS: OK\n"
                     r"\s+RSA-PKCS-OAEP: .*\nOK\n\s+RSA-PKCS-OAEP: .*\nOK\n", decryption) is not None


def test_builtin_test_suite_beside_other_users_keys_with_the_same_id(tool: Tool, keys: Keys,
                                                                      pkcs11: Pkcs11Target) -> None:
    """A shared cluster: other users' RSA public keys carry the ID of this user's pair, and a logged-in user
    sees them (public objects, PKCS#11 v2.40 §6.7). pkcs11-tool --test finds the public key of a private key as
    the *first* one C_FindObjects gives for its CKA_ID, encrypts to it with OpenSSL and asks C_Decrypt with the
    private key. Handles are random, and C_FindObjects gave them in handle order: in most clusters another
    user's key came first and C_Decrypt answered CKR_ENCRYPTED_DATA_INVALID (CI: the RSA-OAEP-with-label step,
    2 of ~6 runs). The caller's own objects come first (then other users' public ones), as in CloudHSM (a
    crypto user sees only its own and shared keys) and SoftHSMv2 (one user per token)."""
    key_id = bytes.fromhex("e7")
    neighbours = [pkcs11.cluster.crypto_user(f"tool_neighbour_{i}", "neighbour-password") for i in range(3)]
    lowest = min(_rsa_pair(n, key_id, f"neighbour-{i}")[0] for i, n in enumerate(neighbours))
    own = pkcs11.cluster.client()
    own.login(*tool.pin.split(":", 1))
    # The CI condition made certain: in handle order a neighbour's public key comes before the user's own.
    for _ in range(40):
        public, private = _rsa_pair(own, key_id, "tool-rsa-shared-id")
        if public > lowest:
            break
        own.destroy_object(private)
        own.destroy_object(public)
    else:
        pytest.fail("40 key pairs all got a handle below the neighbours' lowest")
    try:
        output = tool.run("--test")
        assert "No errors" in output, output
        assert _decrypted_with_every_rsa_mechanism(output, "tool-rsa-shared-id"), output
        listing = tool.run("--list-objects", "--type", "pubkey", "--id", key_id.hex())
        assert listing.index("tool-rsa-shared-id") < min(listing.index(f"neighbour-{i}") for i in range(3)), listing
    finally:
        own.destroy_object(private)
        own.destroy_object(public)


def test_builtin_test_suite_with_a_key_pair_without_id(pkcs11_module: Pkcs11Module, cluster: LocalCluster,
                                                       tmp_path: Path) -> None:
    """The README's flow on a cluster of its own: the user's first RSA pair made without an ID (the CLI's
    `key generate-asymmetric-pair`, like CloudHSM's), then one with --id 01. For a private key with an empty
    CKA_ID pkcs11-tool searches public keys by class alone and takes the first; in handle order that was the
    --id 01 pair's key in some clusters (the README's CI failure, same step). The caller's objects come oldest
    first, so its first public key is its first pair's. (With an older RSA public key than an ID-less pair,
    pkcs11-tool still pairs them wrongly, as it does on SoftHSMv2: it pairs keys by CKA_ID.)"""
    target = pkcs11_target(cluster, pkcs11_module)
    pin = target.crypto_user("readme_alice", "correct horse")
    alice = cluster.client()
    alice.login("readme_alice", "correct horse")
    for _ in range(40):
        without_id = _rsa_pair(alice, b"", "reports")
        web = _rsa_pair(alice, b"\x01", "web")
        if web[0] < without_id[0]:  # the CI condition: in handle order, the newer pair's public key first
            break
        for handle in (*web, *without_id):
            alice.destroy_object(handle)
    else:
        pytest.fail("40 tries, and the second pair's public key never got the lower handle")
    tool = Tool(str(target.module), target.socket, target.token_label, pin, tmp_path)
    output = tool.run("--test")
    assert "No errors" in output, output
    for label in ("reports", "web"):
        assert _decrypted_with_every_rsa_mechanism(output, label), output

def test_builtin_ec_test(tool: Tool) -> None:
    output = tool.run("--session-rw", "--test-ec", "--id", "e1", "--label", "tool-test-ec", "--key-type",
                      "EC:prime256v1")
    assert "==> OK" in output, output
    assert "tool-test-ec" not in tool.run("--list-objects")  # it deletes its keys again


def test_fork(tool: Tool, keys: Keys) -> None:
    """The child of a fork re-initializes (C_Initialize in the child); the parent keeps working after it."""
    public = tool.public_key(keys.rsa)
    assert isinstance(public, rsa.RSAPublicKey)
    out = tool.file("fork.sig")
    output = tool.run("--test-fork", "--sign", "-m", "SHA256-RSA-PKCS", "--id", keys.rsa,
                      "-i", tool.file("fork.in", MESSAGE), "-o", out)
    assert "Calling C_Initialize in forked child process" in output
    public.verify(Path(out).read_bytes(), MESSAGE, rsa_padding.PKCS1v15(), hashes.SHA256())


def test_threads(tool: Tool, keys: Keys) -> None:
    """Threads calling C_Initialize (with and without CKF_OS_LOCKING_OK), C_GetInfo, C_GetSlotList and
    C_GetTokenInfo while the main thread runs `--test` (login, digests, verify, decrypt)."""
    threads = ["--test-threads", "ILGISLT0"] * 4 + ["--test-threads", "INGISLT0"] * 2
    output = tool.run(*threads, "--test", timeout=110)
    assert "test_threads all threads have ended with CKR_OK" in output, output
    finished = re.findall(r"test_threads thread:(\d+) state:-1, rv:(\S+)", output)
    assert sorted({int(n) for n, _ in finished}) == list(range(6)), output
    assert {rv for _, rv in finished} == {"CKR_OK"}, output
    assert len(re.findall(r"Test thread \d C_GetSlotList returned CKR_OK", output)) >= 6
    assert "No errors" in output, output


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()
