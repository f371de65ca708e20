"""Client SDK: ``from strongroom.client import Client``."""

from strongroom.client.connection import ClientError, Connection
from strongroom.client.profile import ClientProfile, NodeAddress, ProfileError
from strongroom.client.sdk import Client

__all__ = ["Client", "ClientError", "ClientProfile", "Connection", "NodeAddress", "ProfileError"]
