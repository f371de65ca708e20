"""docs/issuing-ca.md, executed: every fenced `sh` block of the guide, in order, against a fresh cluster
(so the guide cannot drift from what works), then checks of what it made with pyca/cryptography and the SDK."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from strongroom.client import Client
from strongroom.constants import CKA, CKO
from tests.integration.conftest import LocalCluster, Pkcs11Module

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "issuing-ca.md"
ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")
CA_PASSWORD = "ca-operator-pw1"

pytestmark = [
    pytest.mark.skipif(any(shutil.which(tool) is None for tool in ("openssl", "certtool", "pkcs11-tool")),
                       reason="needs openssl, gnutls-bin (certtool) and opensc (pkcs11-tool)"),
    pytest.mark.skipif(not ENGINE.exists(),
                       reason="needs the libp11 engine (apt-get install libengine-pkcs11-openssl)"),
]


def shell_blocks(markdown: str) -> list[str]:
    """The fenced ```sh blocks, in order (other fences — text, tables of output — are not commands)."""
    return re.findall(r"^```sh\n(.*?)^```$", markdown, flags=re.S | re.M)


def test_the_guide_has_the_steps_it_promises() -> None:
    blocks = shell_blocks(GUIDE.read_text())
    text = "\n".join(blocks)
    assert len(blocks) >= 12
    for command in ("openssl genpkey", "pkcs11-tool --module", "-engine pkcs11", "openssl ca -batch",
                    "certtool --provider", "--generate-crl", "-gencrl", "issuing-ca-2", "--delete-object",
                    "strongroom backup create"):
        assert command in text, command


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_command_of_the_guide_runs(pkcs11_module: Pkcs11Module, tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.up()
    try:
        assert Path(cluster.summary["pkcs11_module"]).resolve() == pkcs11_module.path.resolve()
        work = tmp_path / "ca"
        work.mkdir()
        script = "set -euo pipefail\n" + "\n".join(shell_blocks(GUIDE.read_text()))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("STRONGROOM_", "GNUTLS_")) and k != "OPENSSL_CONF"}
        env.update(STRONGROOM_DIR=str(cluster.dir), ADMIN_PASSWORD=cluster.summary["admin_password"],
                   CA_PASSWORD=CA_PASSWORD, ROOT_PASSPHRASE="root passphrase, offline",
                   PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}")
        result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        assert "Traceback" not in result.stderr
        check_what_the_guide_made(work, cluster)
    finally:
        cluster.down()


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _crl(path: Path) -> x509.CertificateRevocationList:
    data = path.read_bytes()
    return x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)


def check_what_the_guide_made(work: Path, cluster: LocalCluster) -> None:
    root = _cert(work / "root" / "root.crt")
    issuing_1, issuing_2 = _cert(work / "issuing" / "issuing-1.crt"), _cert(work / "issuing" / "issuing-2.crt")
    www, client, api = _cert(work / "www.crt"), _cert(work / "client.crt"), _cert(work / "api.crt")
    for child, parent in ((issuing_1, root), (issuing_2, root), (www, issuing_1), (client, issuing_1),
                          (api, issuing_2)):
        child.verify_directly_issued_by(parent)
    assert issuing_1.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert not www.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(issuing_1.public_key(), ec.EllipticCurvePublicKey)

    # The CRLs, signed in the cluster by CA 1: OpenSSL's names www.example.com, certtool's the client.
    openssl_crl = _crl(work / "issuing" / "issuing-1.crl")
    assert openssl_crl.is_signature_valid(issuing_1.public_key())
    assert openssl_crl.get_revoked_certificate_by_serial_number(www.serial_number) is not None
    assert openssl_crl.get_revoked_certificate_by_serial_number(client.serial_number) is None
    assert openssl_crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 0x1001  # the 2nd
    gnutls_crl = _crl(work / "issuing" / "issuing-1-gnutls.crl")
    assert gnutls_crl.is_signature_valid(issuing_1.public_key())
    assert gnutls_crl.get_revoked_certificate_by_serial_number(client.serial_number) is not None
    assert _crl(work / "root" / "root.crl").is_signature_valid(root.public_key())

    # The issuing key is the cluster's: sensitive, never extractable; CA 1's key is gone after the rotation.
    with Client.from_dir(cluster.dir, timeout=30) as sdk:
        sdk.login("ca_operator", CA_PASSWORD)
        labels = {}
        for handle in sdk.find_objects({CKA.CLASS: int(CKO.PRIVATE_KEY)}):
            attributes = sdk.get_attributes(handle, [CKA.LABEL, CKA.SENSITIVE, CKA.EXTRACTABLE])
            labels[bytes(attributes[CKA.LABEL]).decode()] = (attributes[CKA.SENSITIVE], attributes[CKA.EXTRACTABLE])
        sdk.logout()
    assert labels == {"issuing-ca-2": (True, False)}, labels
    assert (work / "issuing-keys.srbk").stat().st_size > 0 and (work / "ca-files.tar.gz").stat().st_size > 0
    assert not any(p.name in ("root.key", "ca.pin") for p in (work / "issuing").rglob("*"))
