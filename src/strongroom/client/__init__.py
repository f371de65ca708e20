"""Client SDK: ``from strongroom.client import Client`` (blocking) or :class:`AsyncClient`."""

from strongroom.client.calls import AsyncClient
from strongroom.client.connection import AsyncConnection, ClientError, Connection
from strongroom.client.profile import ClientProfile, NodeAddress, ProfileError
from strongroom.client.sdk import Client

__all__ = ["AsyncClient", "AsyncConnection", "Client", "ClientError", "ClientProfile", "Connection", "NodeAddress",
           "ProfileError"]
