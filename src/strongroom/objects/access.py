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

**Public objects** (``CKA_PRIVATE`` false; PKCS#11 v2.40 §6.7): while the cluster policy
``public_objects`` is ``visible`` (the default), every caller SEEs them, and every caller but an admin
may USE a public object that is a *public key* (verify, encrypt, wrap *with* it). A caller that is not
logged in — an agent's anonymous PKCS#11 session (``session.open_public``, :data:`PUBLIC_NAME`) — sees
public objects and its own session objects and nothing else: it can never see, use or make a private
object. A public caller touching a private object it cannot see gets CKR_USER_NOT_LOGGED_IN where it
asks to use the object (as SoftHSMv2 answers), the handle errors above otherwise. With the policy
``hidden`` nobody is public and ``CKA_PRIVATE`` false grants nothing (CloudHSM's rule).

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

from strongroom.constants import CKA, CKO
from strongroom.errors import (
    ActionProhibited,
    HsmError,
    KeyFunctionNotPermitted,
    KeyHandleInvalid,
    KeyNotWrappable,
    ObjectHandleInvalid,
    UserNotLoggedIn,
)
from strongroom.objects.model import StoredObject

#: The name a caller that is not logged in goes by (owner of its public session objects, audit actor).
#: No username can be it: usernames are letters, digits and '_'.
PUBLIC_NAME = "(public)"


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
    #: Not logged in: an anonymous PKCS#11 session (public objects and its own session objects only).
    public: bool = False
    #: The cluster policy ``public_objects`` is ``visible``: CKA_PRIVATE false opens an object to everyone.
    sees_public: bool = True

    @classmethod
    def anonymous(cls, holds_session: Callable[[int], bool], sees_public: bool = True) -> Actor:
        return cls(PUBLIC_NAME, None, False, holds_session, public=True, sees_public=sees_public)


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


def is_public_object(obj: StoredObject) -> bool:
    """CKA_PRIVATE false (an object that does not say is private)."""
    return not obj.attributes.get(CKA.PRIVATE, True)


def is_public_key(obj: StoredObject) -> bool:
    return obj.object_class is CKO.PUBLIC_KEY and is_public_object(obj)


def may(obj: StoredObject, actor: Actor, access: Access) -> bool:
    if obj.p11_session is not None and not actor.holds_session(obj.p11_session):
        return False  # another login's session object does not exist for this caller
    if actor.public:
        # Its own session objects (public by construction), and public objects of the token.
        own = obj.p11_session is not None and obj.owner == actor.name and obj.owner_id is None
        if access is Access.SEE:
            return own or (actor.sees_public and is_public_object(obj))
        if access is Access.USE:
            return own or (actor.sees_public and is_public_key(obj))
        return own and access is Access.OWN
    opened = actor.sees_public and is_public_object(obj)
    if access is Access.SEE:
        return ((actor.is_admin and obj.p11_session is None) or is_owner(obj, actor) or is_shared_with(obj, actor)
                or opened)
    if access is Access.USE:
        return (is_owner(obj, actor) or is_shared_with(obj, actor)
                or (opened and not actor.is_admin and obj.object_class is CKO.PUBLIC_KEY))
    if access is Access.OWN:
        return is_owner(obj, actor)
    return actor.is_admin and obj.p11_session is None  # TRUST


def authorize(obj: StoredObject, actor: Actor, action: Action) -> None:
    """Raise the error PKCS#11 names unless ``actor`` may do ``action`` with ``obj``."""
    access, refused, _hidden, message = action.value
    if may(obj, actor, access):
        return
    if not may(obj, actor, Access.SEE):
        if actor.public and action is not Action.READ and obj.p11_session is None and not is_public_object(obj):
            raise UserNotLoggedIn(f"object {obj.handle} is private: log in to use it")
        raise action.not_found(obj.handle)
    raise refused(message.format(handle=obj.handle))
