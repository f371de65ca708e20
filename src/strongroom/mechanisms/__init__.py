"""Mechanism layer: one module per family, each registering its mechanisms (see base.py).

Importing this package registers every mechanism.
"""

from strongroom.mechanisms import aes, des, digest, ec, eddsa, generic, hkdf, hmac, mldsa, mlkem, rsa  # noqa: F401
