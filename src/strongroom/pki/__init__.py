"""PKI for the cluster's mTLS: the CA, node and client certificates, and their files."""

from strongroom.pki.certs import (
    CAPrivateKey,
    KeyPair,
    PkiError,
    cert_to_pem,
    create_ca,
    fingerprint_sha256,
    issue_client_certificate,
    issue_node_certificate,
    key_to_pem,
    load_certificate,
    load_private_key,
    sign_csr,
    verify_issued_by,
    write_cert,
    write_private_key,
)

__all__ = [
    "CAPrivateKey",
    "KeyPair",
    "PkiError",
    "cert_to_pem",
    "create_ca",
    "fingerprint_sha256",
    "issue_client_certificate",
    "issue_node_certificate",
    "key_to_pem",
    "load_certificate",
    "load_private_key",
    "sign_csr",
    "verify_issued_by",
    "write_cert",
    "write_private_key",
]
