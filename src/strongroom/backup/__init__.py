"""Backups: one file per snapshot of the encrypted store (:mod:`.format`) and a folder of them (:mod:`.catalog`).

A backup holds the barrier's ciphertext as the store keeps it, so it is useless
without the cluster key; this package needs no key at all. Nodes make the bytes,
operators keep the files.
"""

from strongroom.backup.catalog import BackupCatalog, BackupEntry, CatalogProblem, CatalogScan, backup_file_name
from strongroom.backup.format import (
    FILE_EXTENSION,
    FORMAT_VERSION,
    KNOWN_TRIGGERS,
    MAGIC,
    MAX_FILE_BYTES,
    MAX_KEY_BYTES,
    MAX_RECORDS,
    MAX_VALUE_BYTES,
    SIGNATURE_ALGORITHM,
    Backup,
    BackupError,
    BackupHeader,
    BackupRecord,
    decode_backup,
    ecdsa_signer,
    encode_backup,
    read_backup_header,
    verify_backup_file,
    verify_signature,
)

__all__ = [
    "FILE_EXTENSION",
    "FORMAT_VERSION",
    "KNOWN_TRIGGERS",
    "MAGIC",
    "MAX_FILE_BYTES",
    "MAX_KEY_BYTES",
    "MAX_RECORDS",
    "MAX_VALUE_BYTES",
    "SIGNATURE_ALGORITHM",
    "Backup",
    "BackupCatalog",
    "BackupEntry",
    "BackupError",
    "BackupHeader",
    "BackupRecord",
    "CatalogProblem",
    "CatalogScan",
    "backup_file_name",
    "decode_backup",
    "ecdsa_signer",
    "encode_backup",
    "read_backup_header",
    "verify_backup_file",
    "verify_signature",
]
