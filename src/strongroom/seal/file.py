"""The ``file`` seal: the key-encryption key lies beside the sealed key, in ``seal.key``.

For local development only. Both files are mode 0600, but anyone who can read the node's
directory — its user, root, a restored disk snapshot, a copied VM image — holds both and
so every key of the cluster. The node's log and ``status`` say so at every start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from strongroom.seal.base import (
    KEK_BYTES,
    KEK_FILE,
    KekProvider,
    SealedIdentity,
    SealError,
    overwrite_and_remove,
    register,
    write_private_file,
)

WARNING = ("seal type 'file': the key-encryption key lies beside the sealed cluster key; anyone who can read "
           "this node's directory can read every key (local development only; use tpm, kms, pkcs11 or shares)")


@register
class FileKek(KekProvider):
    type = "file"

    def create(self, identity: SealedIdentity) -> tuple[bytearray, dict[str, Any]]:
        # Exclusive: two workers sealing at once share one KEK (only one seal wins the race anyway),
        # rather than one replacing the KEK under the other's seal.
        try:
            write_private_file(self.node_dir / KEK_FILE, os.urandom(KEK_BYTES), exclusive=True)
        except FileExistsError:
            pass
        return self.recover(identity, {}), {"file": KEK_FILE}

    def recover(self, identity: SealedIdentity, stored: Mapping[str, Any]) -> bytearray:
        path = self.node_dir / KEK_FILE
        try:
            data = bytearray(path.read_bytes())
        except FileNotFoundError:
            raise SealError(f"{path} is missing: this node cannot open its sealed cluster key") from None
        if len(data) != KEK_BYTES:
            raise SealError(f"{path} is not a {KEK_BYTES}-byte key-encryption key")
        return data

    def destroy(self, stored: Mapping[str, Any]) -> None:
        overwrite_and_remove(self.node_dir / KEK_FILE)

    def describe(self) -> str:
        return "file (development only: the key-encryption key is on the same disk)"
