"""GnuTLS (p11tool, certtool) with keys that live in the cluster.

Keys are generated through the Python SDK; GnuTLS reaches them through the Strongroom PKCS#11 module, either
named directly (`--provider MODULE`, which both p11tool and certtool accept) or registered with p11-kit through
`strongroom pkcs11 p11-kit-config --install --install-dir DIR`. p11-kit reads per-user module files from
`$XDG_CONFIG_HOME/pkcs11/modules` but ignores them when the program runs as root ("skipping user config in
program running as root"); as root the p11-kit test therefore runs the tools under `unshare --user` (uid 65534
inside a user namespace; file access stays the caller's own, so the agent socket still opens).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from strongroom.client import Client
from strongroom.constants import CKA, CKM

from ..conftest import Pkcs11Target

PASSWORD = "pass-word-2"
P256_OID = bytes.fromhex("06082a8648ce3d030107")

pytestmark = [
    pytest.mark.skipif(shutil.which("p11tool") is None or shutil.which("certtool") is None,
                       reason="needs GnuTLS tools (apt-get install gnutls-bin)"),
]


@dataclass
class Hsm:
    target: Pkcs11Target
    user: str
    sdk: Client

    @property
    def module(self) -> str:
        return str(self.target.module)

    @property
    def token(self) -> str:
        return self.target.token_label

    def env(self, pin: str | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("STRONGROOM_", "GNUTLS_", "P11_KIT_")) and k != "OPENSSL_CONF"}
        env["STRONGROOM_AGENT_SOCKET"] = self.target.socket
        if pin is not None:
            env["GNUTLS_PIN"] = pin
        env.update(extra)
        return env

    @property
    def pin(self) -> str:
        return f"{self.user}:{PASSWORD}"

    def uri(self, label: str, kind: str) -> str:
        return f"pkcs11:token={self.token};object={label};type={kind}"


def run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result


def generate(sdk: Client, kind: str, label: str, key_id: bytes) -> None:
    common = {CKA.TOKEN: True, CKA.LABEL: label.encode(), CKA.ID: key_id}
    if kind == "rsa":
        sdk.generate_key_pair(CKM.RSA_PKCS_KEY_PAIR_GEN, {**common, CKA.MODULUS_BITS: 2048}, dict(common))
    else:
        sdk.generate_key_pair(CKM.EC_KEY_PAIR_GEN, {**common, CKA.EC_PARAMS: P256_OID}, dict(common))


@pytest.fixture(scope="module")
def hsm(pkcs11: Pkcs11Target) -> Hsm:
    user = "gnutls_user"
    sdk = pkcs11.cluster.crypto_user(user, PASSWORD)  # an SDK login: the keys are made through it
    for kind, key_id in (("rsa", b"\x31"), ("ec", b"\x32")):
        generate(sdk, kind, f"gnutls-{kind}", key_id)
    return Hsm(pkcs11, user, sdk)


def public_der(pem: bytes) -> bytes:
    return serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def self_signed(hsm: Hsm, kind: str, tmp_path: Path, provider: list[str], wrap: list[str],
                extra_env: dict[str, str] | None = None) -> Path:
    """certtool --generate-self-signed with the key pair in the cluster; returns the certificate's path."""
    label = f"gnutls-{kind}"
    template = tmp_path / "cert.cfg"
    template.write_text(f'cn = "GnuTLS {kind} in Strongroom"\nserial = 11\nexpiration_days = 2\nca\n'
                        "cert_signing_key\nsigning_key\n")
    cert = tmp_path / f"self-{kind}.pem"
    run([*wrap, "certtool", *provider, "--generate-self-signed",
         "--load-privkey", hsm.uri(label, "private"), "--load-pubkey", hsm.uri(label, "public"),
         "--template", str(template), "--outfile", str(cert)], env=hsm.env(hsm.pin, **(extra_env or {})))
    return cert


def check_certificate(hsm: Hsm, kind: str, cert: Path, tmp_path: Path) -> None:
    """The certificate verifies (GnuTLS and OpenSSL) and carries the cluster key's public half."""
    verified = run(["certtool", "--verify", "--verify-profile", "medium", "--load-ca-certificate", str(cert),
                    "--infile", str(cert)], env=hsm.env())
    assert "Verified" in verified.stdout and "NOT" not in verified.stdout, verified.stdout
    plain = {k: v for k, v in hsm.env().items() if k != "STRONGROOM_AGENT_SOCKET"}
    assert run(["openssl", "verify", "-CAfile", str(cert), str(cert)], env=plain).stdout.strip() == f"{cert}: OK"

    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    exported = tmp_path / "exported-public.pem"   # (without --outfile p11tool waits 3 s before printing it)
    run(["p11tool", "--provider", hsm.module, "--login", "--export-pubkey", hsm.uri(f"gnutls-{kind}", "public"),
         "--outfile", str(exported)], env=hsm.env(hsm.pin))
    assert certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == public_der(
        exported.read_bytes())
    # A certificate signed by another key does not verify against this one: the check above means something.
    other = tmp_path / "other.pem"
    run(["certtool", "--generate-privkey", "--key-type", "ecdsa", "--outfile", str(tmp_path / "other.key")],
        env=hsm.env())
    template = tmp_path / "other.cfg"
    template.write_text('cn = "other"\nca\ncert_signing_key\nexpiration_days = 2\n')
    run(["certtool", "--generate-self-signed", "--load-privkey", str(tmp_path / "other.key"), "--template",
         str(template), "--outfile", str(other)], env=hsm.env())
    refused = run(["certtool", "--verify", "--load-ca-certificate", str(cert), "--infile", str(other)],
                  env=hsm.env(), check=False)
    assert refused.returncode != 0


# --- p11tool -----------------------------------------------------------------------------------------------


def test_p11tool_lists_token(hsm: Hsm) -> None:
    result = run(["p11tool", "--provider", hsm.module, "--list-tokens"], env=hsm.env())
    assert f"token={hsm.token}" in result.stdout, result.stdout
    assert "Manufacturer: Strongroom" in result.stdout
    assert "Requires login" in result.stdout


def test_p11tool_lists_objects_after_login(hsm: Hsm) -> None:
    listing = run(["p11tool", "--provider", hsm.module, "--login", "--list-all", f"pkcs11:token={hsm.token}"],
                  env=hsm.env(hsm.pin)).stdout
    for kind, key_id, description in (("rsa", "%31", "RSA-2048"), ("ec", "%32", "EC/ECDSA-SECP256R1")):
        for object_type, name in (("private", "Private key"), ("public", "Public key")):
            assert f"id={key_id};object=gnutls-{kind};type={object_type}" in listing, listing
            assert f"{name} ({description})" in listing, listing
    # The private keys say they are sensitive and never left the HSM.
    private_blocks = [block for block in listing.split("\n\n") if "type=private" in block]
    assert len(private_blocks) == 2 and all("CKA_NEVER_EXTRACTABLE" in b and "CKA_SENSITIVE" in b
                                            for b in private_blocks), listing

    # Without a login the public objects only (PKCS#11 §6.7): the public keys, never a private one; with a
    # wrong PIN the login fails.
    anonymous = run(["p11tool", "--provider", hsm.module, "--list-all", f"pkcs11:token={hsm.token}"],
                    env=hsm.env(), check=False)
    assert "type=private" not in anonymous.stdout, anonymous.stdout
    for kind, key_id in (("rsa", "%31"), ("ec", "%32")):
        assert f"id={key_id};object=gnutls-{kind};type=public" in anonymous.stdout, anonymous.stdout
    wrong = run(["p11tool", "--provider", hsm.module, "--login", "--list-all", f"pkcs11:token={hsm.token}"],
                env=hsm.env("no_such_user:wrong-password"), check=False)
    assert wrong.returncode != 0 and "type=private" not in wrong.stdout, wrong.stdout + wrong.stderr


def test_public_key_and_certificate_without_login(hsm: Hsm, tmp_path: Path) -> None:
    """p11tool without --login: export a public key object; a certificate written by the user (after a login) is
    listed and exported by anyone; certtool issues a certificate for the cluster's public key read without a
    login. (p11tool's --export-pubkey, the public key *of a private key*, asks for the login itself.)"""
    exported = tmp_path / "public.pem"
    run(["p11tool", "--provider", hsm.module, "--export", hsm.uri("gnutls-ec", "public"),
         "--outfile", str(exported)], env=hsm.env())
    with_login = tmp_path / "public-login.pem"
    run(["p11tool", "--provider", hsm.module, "--login", "--export-pubkey", hsm.uri("gnutls-ec", "public"),
         "--outfile", str(with_login)], env=hsm.env(hsm.pin))
    assert public_der(exported.read_bytes()) == public_der(with_login.read_bytes())

    # a CA outside; a certificate for the cluster key's public half, made without touching the token's login
    run(["certtool", "--generate-privkey", "--key-type", "ecdsa", "--outfile", str(tmp_path / "ca.key")],
        env=hsm.env())
    ca_template = tmp_path / "ca.cfg"
    ca_template.write_text('cn = "outside CA"\nca\ncert_signing_key\nexpiration_days = 2\n')
    run(["certtool", "--generate-self-signed", "--load-privkey", str(tmp_path / "ca.key"), "--template",
         str(ca_template), "--outfile", str(tmp_path / "ca.pem")], env=hsm.env())
    leaf_template = tmp_path / "leaf.cfg"
    leaf_template.write_text('cn = "leaf in Strongroom"\nserial = 21\nexpiration_days = 2\nsigning_key\n')
    leaf = tmp_path / "leaf.pem"
    run(["certtool", "--provider", hsm.module, "--generate-certificate", "--load-pubkey",
         hsm.uri("gnutls-ec", "public"), "--load-ca-privkey", str(tmp_path / "ca.key"), "--load-ca-certificate",
         str(tmp_path / "ca.pem"), "--template", str(leaf_template), "--outfile", str(leaf)], env=hsm.env())
    certificate = x509.load_pem_x509_certificate(leaf.read_bytes())
    assert certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo) == \
        public_der(exported.read_bytes())

    # the user stores the certificate beside its key (a public object), anybody finds and exports it
    run(["p11tool", "--provider", hsm.module, "--login", "--write", "--load-certificate", str(leaf),
         "--label", "gnutls-leaf", "--id", "32", f"pkcs11:token={hsm.token}"], env=hsm.env(hsm.pin))
    certs = run(["p11tool", "--provider", hsm.module, "--list-all-certs", f"pkcs11:token={hsm.token}"],
                env=hsm.env()).stdout
    assert "object=gnutls-leaf;type=cert" in certs, certs
    back = tmp_path / "back.pem"
    run(["p11tool", "--provider", hsm.module, "--export", f"pkcs11:token={hsm.token};object=gnutls-leaf;type=cert",
         "--outfile", str(back)], env=hsm.env())
    assert x509.load_pem_x509_certificate(back.read_bytes()) == certificate


# --- certtool --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_certtool_self_signed_with_provider(hsm: Hsm, kind: str, tmp_path: Path) -> None:
    cert = self_signed(hsm, kind, tmp_path, provider=["--provider", hsm.module], wrap=[])
    check_certificate(hsm, kind, cert, tmp_path)


def _user_namespace_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode == 0


def test_certtool_through_p11kit_registration(hsm: Hsm, tmp_path: Path) -> None:
    """`strongroom pkcs11 p11-kit-config --install --install-dir` + p11-kit's per-user configuration."""
    config_home = tmp_path / "config"
    installed = hsm.target.cluster.cli("pkcs11", "p11-kit-config", "--install", "--install-dir",
                                       str(config_home / "pkcs11" / "modules"))
    assert installed[0] == 0, installed
    module_file = config_home / "pkcs11" / "modules" / "strongroom.module"
    assert f"module: {hsm.module}" in module_file.read_text()

    wrap: list[str] = []
    if os.geteuid() == 0:
        if not _user_namespace_works():
            pytest.skip("p11-kit ignores per-user modules for root, and `unshare --user` is not available")
        wrap = ["unshare", "--user"]
    extra = {"XDG_CONFIG_HOME": str(config_home), "HOME": str(tmp_path)}

    tokens = run([*wrap, "p11tool", "--list-tokens"], env=hsm.env(**extra)).stdout
    assert f"token={hsm.token}" in tokens and f"Module: {hsm.module}" in tokens, tokens

    cert = self_signed(hsm, "ec", tmp_path, provider=[], wrap=wrap, extra_env=extra)
    check_certificate(hsm, "ec", cert, tmp_path)
