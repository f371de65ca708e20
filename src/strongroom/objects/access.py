"""Who may do what with an existing object: the one rule every handler asks.

Ownership follows CloudHSM (User Guide, "shareKey"): the crypto user who makes a key owns
it; users it is shared with may *use* it but "cannot delete, export, share or unshare it, or
change its attributes"; admins see token objects and mark keys trusted, but use none.

========  =====================================================  ===========================
Access    what                                                   who
========  =====================================================  ===========================
SEE       find it, read its public attributes                    owner, shared users, admins
                                                                 (admins: token objects)
USE       a cryptographic operation with it, including as the    owner, shared users
          wrapping key of C_WrapKey or the unwrapping key of
          C_UnwrapKey (CloudHSM's trusted-key flow shares a
          wrapping key with application users)
OWN       export it (the key C_WrapKey wraps), derive from it,   owner only
          copy it, change its attributes, share/unshare it,
          destroy it
TRUST     set CKA_TRUSTED                                        admins only
========  =====================================================  ===========================

"Owner" and "shared user" mean the *account*, not only the name: an object records the
account id (``User.uid``) of its owner and of each user it is shared with, so a user deleted
and created again under the same name reaches none of the old account's keys. Records from
before the ids existed name no id and match by name.

Session objects (CKA_TOKEN false) exist only for the login whose PKCS#11 session holds them.

The answers, per PKCS#11 v2.40 §5 and the return values each function may give:

* the caller may not see the object: CKR_OBJECT_HANDLE_INVALID, or CKR_KEY_HANDLE_INVALID
  where the call names a key (the object does not exist for it);
* it sees the object but the access is refused: CKR_ACTION_PROHIBITED for C_CopyObject,
  C_SetAttributeValue, C_DestroyObject and share/unshare (§5.1: "the action may not be taken
  ... because of underlying policy restrictions"); CKR_KEY_NOT_WRAPPABLE for the key C_WrapKey
  would export (the token "is unable to wrap the key as requested"; ACTION_PROHIBITED is not a
  C_WrapKey code); CKR_KEY_FUNCTION_NOT_PERMITTED for the base key of C_DeriveKey (the key "is
  not set to allow" that use by this caller; the agent reports it as C_DeriveKey's
  CKR_KEY_TYPE_INCONSISTENT, as for CKA_DERIVE false).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from strongroom.errors import (
    ActionProhibited,
    HsmError,
    KeyFunctionNotPermitted,
    KeyHandleInvalid,
    KeyNotWrappable,
    ObjectHandleInvalid,
)
from strongroom.objects.model import StoredObject


class Access(enum.Enum):
    SEE = "see"
    USE = "use"
    OWN = "own"
    TRUST = "trust"


@dataclass(frozen=True)
class Actor:
    """The caller: its login's user and account, its role, and which PKCS#11 sessions are its own."""

    name: str
    user_id: str | None
    is_admin: bool
    #: Is this PKCS#11 session (a node p11session handle) one of the caller's login?
    holds_session: Callable[[int], bool] = lambda _handle: False


class Action(enum.Enum):
    """Every operation on an existing object: the access it needs, the refusal when the caller sees the
    object, the refusal when it does not, and what the refusal says."""

    READ = (Access.SEE, ObjectHandleInvalid, ObjectHandleInvalid, "no object with handle {handle}")
    USE_KEY = (Access.USE, ActionProhibited, KeyHandleInvalid, "key {handle} is not usable by this user")
    EXPORT = (Access.OWN, KeyNotWrappable, KeyHandleInvalid,
              "only the owner of key {handle} may export it; a user it is shared with only uses it")
    DERIVE_FROM = (Access.OWN, KeyFunctionNotPermitted, KeyHandleInvalid,
                   "only the owner of key {handle} may derive from it; a user it is shared with only uses it")
    COPY = (Access.OWN, ActionProhibited, ObjectHandleInvalid, "only the owner of object {handle} may copy it")
    SET_ATTRIBUTES = (Access.OWN, ActionProhibited, ObjectHandleInvalid,
                      "only the owner of object {handle} may change it")
    SET_TRUST = (Access.TRUST, ActionProhibited, ObjectHandleInvalid,
                 "only an admin may mark object {handle} trusted")
    DESTROY = (Access.OWN, ActionProhibited, ObjectHandleInvalid, "only the owner of object {handle} may destroy it")
    SHARE = (Access.OWN, ActionProhibited, ObjectHandleInvalid,
             "only the owner of object {handle} may share or unshare it")

    @property
    def access(self) -> Access:
        return self.value[0]

    @property
    def hidden(self) -> type[HsmError]:
        """The error for a handle the caller may not see (or that does not exist)."""
        return self.value[2]

    def not_found(self, handle: int) -> HsmError:
        return self.hidden(f"no {'key' if self.hidden is KeyHandleInvalid else 'object'} with handle {handle}")


def is_owner(obj: StoredObject, actor: Actor) -> bool:
    return (not actor.is_admin and obj.owner == actor.name
            and (obj.owner_id is None or obj.owner_id == actor.user_id))


def is_shared_with(obj: StoredObject, actor: Actor) -> bool:
    if actor.is_admin or actor.name not in obj.shared:
        return False
    account = obj.share_ids.get(actor.name)
    return account is None or account == actor.user_id


def may(obj: StoredObject, actor: Actor, access: Access) -> bool:
    if obj.p11_session is not None and not actor.holds_session(obj.p11_session):
        return False  # another login's session object does not exist for this caller
    if access is Access.SEE:
        return (actor.is_admin and obj.p11_session is None) or is_owner(obj, actor) or is_shared_with(obj, actor)
    if access is Access.USE:
        return is_owner(obj, actor) or is_shared_with(obj, actor)
    if access is Access.OWN:
        return is_owner(obj, actor)
    return actor.is_admin and obj.p11_session is None  # TRUST


def authorize(obj: StoredObject, actor: Actor, action: Action) -> None:
    """Raise the error PKCS#11 names unless ``actor`` may do ``action`` with ``obj``."""
    access, refused, _hidden, message = action.value
    if may(obj, actor, access):
        return
    if not may(obj, actor, Access.SEE):
        raise action.not_found(obj.handle)
    raise refused(message.format(handle=obj.handle))
