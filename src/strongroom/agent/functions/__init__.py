"""PKCS#11 function handlers, one module per chapter of the specification (Kryoptic's layout),
all registering into one table by function name (:mod:`registry`)."""

from strongroom.agent.functions import crypto, general, keys, message, objects, random, session, v3  # noqa: F401
from strongroom.agent.functions.registry import FUNCTIONS, Connection, dispatch

__all__ = ["FUNCTIONS", "Connection", "dispatch"]
