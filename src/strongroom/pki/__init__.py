"""PKI: the customer's CA (or its local stand-in), node and client certificates."""

from strongroom.pki.certs import *  # noqa: F403
from strongroom.pki.certs import __all__  # noqa: F401
