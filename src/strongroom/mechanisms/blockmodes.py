"""ECB, CBC and CBC_PAD operations over any block cipher context (AES, Triple-DES).

cryptography buffers partial blocks between updates; these classes add what PKCS#11 asks of the
whole message: a length that is a multiple of the block (the return code depends on the direction),
and PKCS#7 padding checked at the end.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import CipherContext

from strongroom.errors import EncryptedDataInvalid, EncryptedDataLenRange, HsmError
from strongroom.mechanisms.base import CipherOperation, check_part


class BlockOp(CipherOperation):
    """ECB/CBC without padding: the whole input must be a multiple of ``block`` bytes."""

    def __init__(self, ctx: CipherContext, block: int, length_error: type[HsmError], what: str) -> None:
        self._ctx = ctx
        self._block = block
        self._length_error = length_error
        self._what = what
        self._total = 0

    def update(self, data: bytes) -> bytes:
        check_part(data)
        self._total += len(data)
        return self._ctx.update(data)

    def final(self) -> bytes:
        if self._total % self._block:
            raise self._length_error(f"{self._what} must be a multiple of {self._block} bytes, got {self._total}")
        return self._ctx.finalize()


class PadEncryptOp(CipherOperation):
    def __init__(self, ctx: CipherContext, block: int) -> None:
        self._ctx = ctx
        self._padder = padding.PKCS7(block * 8).padder()

    def update(self, data: bytes) -> bytes:
        check_part(data)
        return self._ctx.update(self._padder.update(data))

    def final(self) -> bytes:
        return self._ctx.update(self._padder.finalize()) + self._ctx.finalize()


class PadDecryptOp(CipherOperation):
    """The unpadder keeps the last full block back until final, where the padding is checked."""

    def __init__(self, ctx: CipherContext, block: int) -> None:
        self._ctx = ctx
        self._block = block
        self._unpadder = padding.PKCS7(block * 8).unpadder()
        self._total = 0

    def update(self, data: bytes) -> bytes:
        check_part(data)
        self._total += len(data)
        return self._unpadder.update(self._ctx.update(data))

    def final(self) -> bytes:
        if self._total == 0 or self._total % self._block:
            raise EncryptedDataLenRange(
                f"CBC_PAD ciphertext must be a non-zero multiple of {self._block} bytes, got {self._total}"
            )
        rest = self._unpadder.update(self._ctx.finalize())
        try:
            return rest + self._unpadder.finalize()
        except ValueError:
            raise EncryptedDataInvalid("bad PKCS#7 padding") from None
