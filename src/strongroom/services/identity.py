"""The cluster's own identity: a P-384 key pair made inside the first node, certified by the customer.

At ``cluster.initialize`` the node generates the identity key and a CSR signed by
it; the customer signs the CSR with *their* CA and hands back the certificate and
the CA (the trust anchor) with ``cluster.install_certificate``. From then on the
identity key signs what the cluster vouches for (backups), and anyone holding the
trust anchor can check those signatures offline, without the cluster key.

The private key is a barrier record (``cluster/identity``), so it is as safe as
any customer key and travels with backups in encrypted form only.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from strongroom.pki import fingerprint_sha256, is_ca

IDENTITY_KEY = "cluster/identity"
#: Backups and other statements are signed over a SHA-256 digest the caller computed.
DIGEST = hashes.SHA256()


class IdentityError(Exception):
    """A certificate or trust anchor does not fit the cluster's identity."""


@dataclass(frozen=True)
class ClusterIdentity:
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> ClusterIdentity:
        return cls(ec.generate_private_key(ec.SECP384R1()))

    @classmethod
    def from_record(cls, value: dict[str, object]) -> ClusterIdentity:
        der = value["private_key"]
        if not isinstance(der, (bytes, bytearray)):
            raise IdentityError("the cluster identity record holds no DER private key")
        key = serialization.load_der_private_key(bytes(der), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError("the cluster identity record does not hold an EC key")
        return cls(key)

    def to_record(self) -> dict[str, object]:
        der = self.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return {"private_key": der, "algorithm": "ec-p384"}

    def csr(self, cluster_id: str, cluster_name: str) -> bytes:
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, cluster_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"Strongroom cluster {cluster_name}"[:64]),
        ])
        request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(self.private_key, hashes.SHA384())
        return request.public_bytes(serialization.Encoding.PEM)

    def sign_digest(self, digest: bytes) -> bytes:
        return self.private_key.sign(digest, ec.ECDSA(utils.Prehashed(DIGEST)))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()


def verify_digest_signature(public_key: object, digest: bytes, signature: bytes) -> bool:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return False
    try:
        public_key.verify(signature, digest, ec.ECDSA(utils.Prehashed(DIGEST)))
    except InvalidSignature:
        return False
    return True


def check_cluster_certificate(identity: ClusterIdentity, cert_pem: str | bytes,
                              anchor_pem: str | bytes) -> tuple[x509.Certificate, x509.Certificate]:
    """The certificate must certify the identity key and be issued by the trust anchor, a CA."""
    try:
        cert = x509.load_pem_x509_certificate(_bytes(cert_pem))
    except ValueError:
        raise IdentityError("the signed certificate is not a PEM X.509 certificate") from None
    try:
        anchor = x509.load_pem_x509_certificate(_bytes(anchor_pem))
    except ValueError:
        raise IdentityError("the trust anchor is not a PEM X.509 certificate") from None
    if cert.public_key() != identity.public_key():
        raise IdentityError("the signed certificate is not for this cluster's CSR (its public key differs)")
    if not is_ca(anchor):
        raise IdentityError("the trust anchor is not a CA certificate (BasicConstraints CA:TRUE is missing)")
    try:
        cert.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, InvalidSignature):
        raise IdentityError(
            f"the signed certificate was not issued by the trust anchor {fingerprint_sha256(anchor)}") from None
    return cert, anchor


def _bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)
