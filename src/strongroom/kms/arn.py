"""Key identifiers as AWS KMS accepts them, and the ARNs responses carry.

Accepted forms: key id (a UUID), multi-Region key id (``mrk-`` + 32 hex), key ARN
``arn:<partition>:kms:<region>:<account>:key/<id>``, alias name ``alias/<name>`` and alias ARN
``arn:<partition>:kms:<region>:<account>:alias/<name>``. A syntactically bad id is
``NotFoundException "Invalid keyId '…'"`` (not a ValidationException), an ARN of another
region ``NotFoundException "Invalid arn <region>"``, a malformed ARN ``InvalidArnException``.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass

from strongroom.kms.errors import InvalidArn, NotFound

KEY_ID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
MRK_ID_RE = re.compile(r"^mrk-[0-9a-f]{32}\Z")
ALIAS_PATTERN = r"^[a-zA-Z0-9:/_-]+$"
ARN_RE = re.compile(r"^arn:([^:]+):([^:]*):([^:]*):([^:]*):(.+)\Z")
ACCOUNT_RE = re.compile(r"^[0-9]{12}\Z")


@dataclass(frozen=True)
class Location:
    """Where this endpoint is: ARNs name its partition, region and account."""

    region: str
    account: str
    partition: str = "aws"

    def key_arn(self, key_id: str) -> str:
        return f"arn:{self.partition}:kms:{self.region}:{self.account}:key/{key_id}"

    def alias_arn(self, alias_name: str) -> str:
        return f"arn:{self.partition}:kms:{self.region}:{self.account}:{alias_name}"


@dataclass(frozen=True)
class KeyRef:
    """A parsed identifier: a key (``value`` = lower-case UUID) or an alias (``value`` = ``alias/…``)."""

    kind: str  # "key" | "alias"
    value: str
    text: str  # as the client wrote it

    @property
    def is_alias(self) -> bool:
        return self.kind == "alias"


def new_key_id() -> str:
    return str(uuid.uuid4())


#: AWS's shape of a CloudHSM cluster id (the model's pattern for CloudHsmClusterId).
CLUSTER_ID_RE = re.compile(r"^cluster-[2-7a-zA-Z]{11,16}\Z")


def aws_cluster_id(cluster_id: str) -> str:
    """The AWS-shaped id of a cluster: ``cluster-`` and the first 80 bits of its UUID in base32 (16 of
    a-z2-7), so clients that check the model's pattern accept it. An AWS-shaped id stays as it is."""
    if CLUSTER_ID_RE.match(cluster_id):
        return cluster_id
    try:
        raw = uuid.UUID(cluster_id).bytes
    except ValueError:
        return cluster_id
    return "cluster-" + base64.b32encode(raw[:10]).decode().lower()


def names_cluster(given: str, cluster_id: str) -> bool:
    """Whether ``given`` (the cluster's UUID, or its AWS-shaped id in any case) names ``cluster_id``."""
    return given == cluster_id or given.lower() == aws_cluster_id(cluster_id)


def parse_identifier(text: str, where: Location, *, allow_alias: bool = True) -> KeyRef:
    """Parse a KeyId (any accepted form); ``allow_alias=False`` for operations that take only keys."""
    if text.startswith("arn:"):
        return _parse_arn(text, where, allow_alias)
    if text.startswith("alias/"):
        if not allow_alias:
            raise NotFound(f"Invalid keyId '{text}'")
        return KeyRef("alias", text, text)
    if KEY_ID_RE.match(text):
        return KeyRef("key", text.lower(), text)
    if MRK_ID_RE.match(text):
        # Well-formed, but this endpoint has no multi-Region keys.
        raise NotFound(f"Key '{where.key_arn(text)}' does not exist")
    raise NotFound(f"Invalid keyId '{text}'")


def _parse_arn(text: str, where: Location, allow_alias: bool) -> KeyRef:
    match = ARN_RE.match(text)
    if match is None:
        raise InvalidArn(f"ARN {text} is not a valid KMS key or alias ARN.")
    partition, service, region, account, resource = match.groups()
    if service != "kms" or not ACCOUNT_RE.match(account) or not region:
        raise InvalidArn(f"ARN {text} is not a valid KMS key or alias ARN.")
    if partition != where.partition or region != where.region:
        raise NotFound(f"Invalid arn {region}")
    if account != where.account:
        raise NotFound(f"Key '{text}' does not exist" if resource.startswith("key/")
                       else f"Alias {text} is not found.")
    if resource.startswith("key/"):
        key_id = resource[4:]
        if KEY_ID_RE.match(key_id):
            return KeyRef("key", key_id.lower(), text)
        if MRK_ID_RE.match(key_id):
            raise NotFound(f"Key '{text}' does not exist")
        raise NotFound(f"Invalid keyId '{text}'")
    if resource.startswith("alias/"):
        if not allow_alias:
            raise NotFound(f"Invalid keyId '{text}'")
        return KeyRef("alias", resource, text)
    raise InvalidArn(f"ARN {text} is not a valid KMS key or alias ARN.")


def parse_alias_name(text: str, where: Location) -> str:
    """An alias given by name or ARN (DeleteAlias/UpdateAlias take names; ListAliases filters)."""
    if text.startswith("arn:"):
        ref = _parse_arn(text, where, True)
        if not ref.is_alias:
            raise NotFound(f"Alias {text} is not found.")
        return ref.value
    return text
