"""Which CK_RV each PKCS#11 function may return, and turning node errors into them.

The lists follow PKCS#11 v2.40 §5 (each function's "Return values"), with the codes
§5.1 allows every function (CKR_OK, CKR_GENERAL_ERROR, CKR_HOST_MEMORY,
CKR_FUNCTION_FAILED), every function after C_Initialize (CKR_CRYPTOKI_NOT_INITIALIZED),
every function taking a session handle (CKR_SESSION_HANDLE_INVALID,
CKR_DEVICE_REMOVED, CKR_SESSION_CLOSED) and every function using the token
(CKR_DEVICE_MEMORY, CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED). CKR_ARGUMENTS_BAD is
allowed everywhere: it is how a malformed request to the agent is answered.

Two steps, both in :func:`from_node` / :func:`finish`:

1. a node's code is translated for the function (a node speaks of "objects" and
   "keys" without knowing which argument of C_WrapKey it was, reports the cluster
   state as CRYPTOKI_NOT_INITIALIZED, counts logins with SESSION_COUNT …);
2. whatever is still not in the function's list becomes CKR_FUNCTION_FAILED and is
   logged, so an application never sees a code the spec does not promise.
"""

from __future__ import annotations

import logging
from typing import Any

from strongroom.errors import CKR

log = logging.getLogger("strongroom.agent")

#: CKR_UNWRAPPING_KEY_HANDLE_INVALID (0xF0) is missing from strongroom.errors.CKR.
UNWRAPPING_KEY_HANDLE_INVALID = 0xF0
#: CKR_OPERATION_CANCEL_FAILED (PKCS#11 3.0) is missing too.
OPERATION_CANCEL_FAILED = 0x202


class AgentError(Exception):
    """A PKCS#11 error answer (outputs ``[]``)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or _name(code))
        self.code = int(code)

    @property
    def message(self) -> str:
        return str(self.args[0])


def _name(code: int) -> str:
    if code == UNWRAPPING_KEY_HANDLE_INVALID:
        return "CKR_UNWRAPPING_KEY_HANDLE_INVALID"
    try:
        return CKR(code).spec_name
    except ValueError:
        return hex(code)


def _set(*codes: int) -> frozenset[int]:
    return frozenset(int(c) for c in codes)


UNIVERSAL = _set(CKR.OK, CKR.GENERAL_ERROR, CKR.HOST_MEMORY, CKR.FUNCTION_FAILED, CKR.ARGUMENTS_BAD,
                 CKR.CRYPTOKI_NOT_INITIALIZED)
TOKEN = _set(CKR.DEVICE_MEMORY, CKR.DEVICE_ERROR, CKR.DEVICE_REMOVED)
SESSION = TOKEN | _set(CKR.SESSION_HANDLE_INVALID, CKR.SESSION_CLOSED)

_INIT_WITH_KEY = _set(
    CKR.FUNCTION_CANCELED, CKR.KEY_FUNCTION_NOT_PERMITTED, CKR.KEY_HANDLE_INVALID, CKR.KEY_SIZE_RANGE,
    CKR.KEY_TYPE_INCONSISTENT, CKR.MECHANISM_INVALID, CKR.MECHANISM_PARAM_INVALID, CKR.OPERATION_ACTIVE,
    CKR.PIN_EXPIRED, CKR.USER_NOT_LOGGED_IN,
)
_OUTPUT = _set(CKR.BUFFER_TOO_SMALL, CKR.FUNCTION_CANCELED, CKR.OPERATION_ACTIVE, CKR.OPERATION_NOT_INITIALIZED)
_MAKE_OBJECT = _set(
    CKR.ATTRIBUTE_READ_ONLY, CKR.ATTRIBUTE_TYPE_INVALID, CKR.ATTRIBUTE_VALUE_INVALID, CKR.CURVE_NOT_SUPPORTED,
    CKR.DOMAIN_PARAMS_INVALID, CKR.FUNCTION_CANCELED, CKR.MECHANISM_INVALID, CKR.MECHANISM_PARAM_INVALID,
    CKR.OPERATION_ACTIVE, CKR.PIN_EXPIRED, CKR.SESSION_READ_ONLY, CKR.TEMPLATE_INCOMPLETE,
    CKR.TEMPLATE_INCONSISTENT, CKR.TOKEN_WRITE_PROTECTED, CKR.USER_NOT_LOGGED_IN,
)

ALLOWED: dict[str, frozenset[int]] = {
    "C_GetInfo": frozenset(),
    "X_EndOperation": SESSION,
    "X_OutputBound": SESSION | _set(CKR.OPERATION_NOT_INITIALIZED),
    "X_Resume": _set(CKR.SLOT_ID_INVALID, CKR.OPERATION_ACTIVE),
    "C_Initialize": _set(CKR.OK, CKR.GENERAL_ERROR, CKR.HOST_MEMORY, CKR.FUNCTION_FAILED, CKR.ARGUMENTS_BAD,
                         CKR.CANT_LOCK, CKR.CRYPTOKI_ALREADY_INITIALIZED, CKR.NEED_TO_CREATE_THREADS),
    "C_Finalize": frozenset(),
    "C_GetSlotList": _set(CKR.BUFFER_TOO_SMALL),
    "C_GetSlotInfo": _set(CKR.DEVICE_ERROR, CKR.SLOT_ID_INVALID),
    "C_GetTokenInfo": TOKEN | _set(CKR.SLOT_ID_INVALID, CKR.TOKEN_NOT_PRESENT, CKR.TOKEN_NOT_RECOGNIZED),
    "C_GetMechanismList": TOKEN | _set(CKR.BUFFER_TOO_SMALL, CKR.SLOT_ID_INVALID, CKR.TOKEN_NOT_PRESENT,
                                       CKR.TOKEN_NOT_RECOGNIZED),
    "C_GetMechanismInfo": TOKEN | _set(CKR.MECHANISM_INVALID, CKR.SLOT_ID_INVALID, CKR.TOKEN_NOT_PRESENT,
                                       CKR.TOKEN_NOT_RECOGNIZED),
    "C_OpenSession": TOKEN | _set(CKR.SESSION_COUNT, CKR.SESSION_PARALLEL_NOT_SUPPORTED,
                                  CKR.SESSION_READ_WRITE_SO_EXISTS, CKR.SLOT_ID_INVALID, CKR.TOKEN_NOT_PRESENT,
                                  CKR.TOKEN_NOT_RECOGNIZED, CKR.TOKEN_WRITE_PROTECTED),
    "C_CloseSession": SESSION,
    "C_CloseAllSessions": TOKEN | _set(CKR.SLOT_ID_INVALID, CKR.TOKEN_NOT_PRESENT),
    "C_GetSessionInfo": SESSION,
    "C_Login": SESSION | _set(
        CKR.FUNCTION_CANCELED, CKR.OPERATION_NOT_INITIALIZED, CKR.PIN_INCORRECT, CKR.PIN_LOCKED,
        CKR.SESSION_READ_ONLY_EXISTS, CKR.USER_ALREADY_LOGGED_IN, CKR.USER_ANOTHER_ALREADY_LOGGED_IN,
        CKR.USER_PIN_NOT_INITIALIZED, CKR.USER_TOO_MANY_TYPES, CKR.USER_TYPE_INVALID,
    ),
    "C_Logout": SESSION | _set(CKR.USER_NOT_LOGGED_IN),
    "C_SetPIN": SESSION | _set(CKR.FUNCTION_CANCELED, CKR.PIN_INCORRECT, CKR.PIN_INVALID, CKR.PIN_LEN_RANGE,
                               CKR.PIN_LOCKED, CKR.SESSION_READ_ONLY, CKR.TOKEN_WRITE_PROTECTED),
    "C_CreateObject": SESSION | _set(
        CKR.ATTRIBUTE_READ_ONLY, CKR.ATTRIBUTE_TYPE_INVALID, CKR.ATTRIBUTE_VALUE_INVALID,
        CKR.CURVE_NOT_SUPPORTED, CKR.DOMAIN_PARAMS_INVALID, CKR.OPERATION_ACTIVE, CKR.PIN_EXPIRED,
        CKR.SESSION_READ_ONLY, CKR.TEMPLATE_INCOMPLETE, CKR.TEMPLATE_INCONSISTENT, CKR.TOKEN_WRITE_PROTECTED,
        CKR.USER_NOT_LOGGED_IN,
    ),
    "C_CopyObject": SESSION | _set(
        CKR.ACTION_PROHIBITED, CKR.ATTRIBUTE_READ_ONLY, CKR.ATTRIBUTE_TYPE_INVALID, CKR.ATTRIBUTE_VALUE_INVALID,
        CKR.OBJECT_HANDLE_INVALID, CKR.OPERATION_ACTIVE, CKR.PIN_EXPIRED, CKR.SESSION_READ_ONLY,
        CKR.TEMPLATE_INCONSISTENT, CKR.TOKEN_WRITE_PROTECTED, CKR.USER_NOT_LOGGED_IN,
    ),
    "C_DestroyObject": SESSION | _set(CKR.ACTION_PROHIBITED, CKR.OBJECT_HANDLE_INVALID, CKR.OPERATION_ACTIVE,
                                      CKR.PIN_EXPIRED, CKR.SESSION_READ_ONLY, CKR.TOKEN_WRITE_PROTECTED),
    "C_GetObjectSize": SESSION | _set(CKR.INFORMATION_SENSITIVE, CKR.OBJECT_HANDLE_INVALID),
    "C_GetAttributeValue": SESSION | _set(CKR.ATTRIBUTE_SENSITIVE, CKR.ATTRIBUTE_TYPE_INVALID,
                                          CKR.BUFFER_TOO_SMALL, CKR.OBJECT_HANDLE_INVALID, CKR.OPERATION_ACTIVE),
    "C_SetAttributeValue": SESSION | _set(
        CKR.ACTION_PROHIBITED, CKR.ATTRIBUTE_READ_ONLY, CKR.ATTRIBUTE_TYPE_INVALID, CKR.ATTRIBUTE_VALUE_INVALID,
        CKR.OBJECT_HANDLE_INVALID, CKR.OPERATION_ACTIVE, CKR.SESSION_READ_ONLY, CKR.TEMPLATE_INCONSISTENT,
        CKR.TOKEN_WRITE_PROTECTED, CKR.USER_NOT_LOGGED_IN,
    ),
    "C_FindObjectsInit": SESSION | _set(CKR.ATTRIBUTE_TYPE_INVALID, CKR.ATTRIBUTE_VALUE_INVALID,
                                        CKR.OPERATION_ACTIVE, CKR.PIN_EXPIRED),
    "C_FindObjects": SESSION | _set(CKR.OPERATION_NOT_INITIALIZED),
    "C_FindObjectsFinal": SESSION | _set(CKR.OPERATION_NOT_INITIALIZED),
    "C_EncryptInit": SESSION | _INIT_WITH_KEY,
    "C_Encrypt": SESSION | _OUTPUT | _set(CKR.DATA_INVALID, CKR.DATA_LEN_RANGE),
    "C_EncryptUpdate": SESSION | _OUTPUT | _set(CKR.DATA_LEN_RANGE),
    "C_EncryptFinal": SESSION | _OUTPUT | _set(CKR.DATA_LEN_RANGE),
    "C_DecryptInit": SESSION | _INIT_WITH_KEY,
    "C_Decrypt": SESSION | _OUTPUT | _set(CKR.ENCRYPTED_DATA_INVALID, CKR.ENCRYPTED_DATA_LEN_RANGE,
                                          CKR.USER_NOT_LOGGED_IN),
    "C_DecryptUpdate": SESSION | _OUTPUT | _set(CKR.ENCRYPTED_DATA_INVALID, CKR.ENCRYPTED_DATA_LEN_RANGE,
                                                CKR.USER_NOT_LOGGED_IN),
    "C_DecryptFinal": SESSION | _OUTPUT | _set(CKR.ENCRYPTED_DATA_INVALID, CKR.ENCRYPTED_DATA_LEN_RANGE,
                                               CKR.USER_NOT_LOGGED_IN),
    "C_DigestInit": SESSION | _set(CKR.FUNCTION_CANCELED, CKR.MECHANISM_INVALID, CKR.MECHANISM_PARAM_INVALID,
                                   CKR.OPERATION_ACTIVE, CKR.PIN_EXPIRED, CKR.USER_NOT_LOGGED_IN),
    "C_Digest": SESSION | _OUTPUT,
    "C_DigestUpdate": SESSION | _set(CKR.FUNCTION_CANCELED, CKR.OPERATION_ACTIVE, CKR.OPERATION_NOT_INITIALIZED),
    "C_DigestFinal": SESSION | _OUTPUT,
    "C_SignInit": SESSION | _INIT_WITH_KEY,
    "C_Sign": SESSION | _OUTPUT | _set(CKR.DATA_INVALID, CKR.DATA_LEN_RANGE, CKR.USER_NOT_LOGGED_IN,
                                       CKR.FUNCTION_REJECTED),
    "C_SignUpdate": SESSION | _set(CKR.DATA_LEN_RANGE, CKR.FUNCTION_CANCELED, CKR.OPERATION_ACTIVE,
                                   CKR.OPERATION_NOT_INITIALIZED, CKR.USER_NOT_LOGGED_IN),
    "C_SignFinal": SESSION | _OUTPUT | _set(CKR.DATA_LEN_RANGE, CKR.USER_NOT_LOGGED_IN, CKR.FUNCTION_REJECTED),
    "C_VerifyInit": SESSION | _INIT_WITH_KEY,
    "C_Verify": SESSION | _set(CKR.DATA_INVALID, CKR.DATA_LEN_RANGE, CKR.FUNCTION_CANCELED, CKR.OPERATION_ACTIVE,
                               CKR.OPERATION_NOT_INITIALIZED, CKR.SIGNATURE_INVALID, CKR.SIGNATURE_LEN_RANGE),
    "C_VerifyUpdate": SESSION | _set(CKR.DATA_LEN_RANGE, CKR.FUNCTION_CANCELED, CKR.OPERATION_ACTIVE,
                                     CKR.OPERATION_NOT_INITIALIZED),
    "C_VerifyFinal": SESSION | _set(CKR.DATA_LEN_RANGE, CKR.FUNCTION_CANCELED, CKR.OPERATION_ACTIVE,
                                    CKR.OPERATION_NOT_INITIALIZED, CKR.SIGNATURE_INVALID, CKR.SIGNATURE_LEN_RANGE),
    "C_GenerateKey": SESSION | _MAKE_OBJECT,
    "C_GenerateKeyPair": SESSION | _MAKE_OBJECT,
    "C_WrapKey": SESSION | _set(
        CKR.BUFFER_TOO_SMALL, CKR.FUNCTION_CANCELED, CKR.KEY_HANDLE_INVALID, CKR.KEY_NOT_WRAPPABLE,
        CKR.KEY_SIZE_RANGE, CKR.KEY_UNEXTRACTABLE, CKR.MECHANISM_INVALID, CKR.MECHANISM_PARAM_INVALID,
        CKR.OPERATION_ACTIVE, CKR.PIN_EXPIRED, CKR.USER_NOT_LOGGED_IN, CKR.WRAPPING_KEY_HANDLE_INVALID,
        CKR.WRAPPING_KEY_SIZE_RANGE, CKR.WRAPPING_KEY_TYPE_INCONSISTENT,
    ),
    "C_UnwrapKey": SESSION | _MAKE_OBJECT | _set(
        CKR.BUFFER_TOO_SMALL, UNWRAPPING_KEY_HANDLE_INVALID, CKR.UNWRAPPING_KEY_SIZE_RANGE,
        CKR.UNWRAPPING_KEY_TYPE_INCONSISTENT, CKR.WRAPPED_KEY_INVALID, CKR.WRAPPED_KEY_LEN_RANGE,
    ),
    "C_DeriveKey": SESSION | _MAKE_OBJECT | _set(CKR.KEY_HANDLE_INVALID, CKR.KEY_SIZE_RANGE,
                                                 CKR.KEY_TYPE_INCONSISTENT),
    "C_GenerateRandom": SESSION | _set(CKR.FUNCTION_CANCELED, CKR.OPERATION_ACTIVE, CKR.RANDOM_NO_RNG,
                                       CKR.USER_NOT_LOGGED_IN),
    "C_SeedRandom": SESSION | _set(CKR.FUNCTION_CANCELED, CKR.OPERATION_ACTIVE, CKR.RANDOM_SEED_NOT_SUPPORTED,
                                   CKR.RANDOM_NO_RNG, CKR.USER_NOT_LOGGED_IN),
    "C_InitPIN": SESSION | _set(CKR.FUNCTION_CANCELED, CKR.PIN_INVALID, CKR.PIN_LEN_RANGE, CKR.SESSION_READ_ONLY,
                                CKR.TOKEN_WRITE_PROTECTED, CKR.USER_NOT_LOGGED_IN),
    "C_DigestKey": SESSION | _set(CKR.FUNCTION_CANCELED, CKR.KEY_HANDLE_INVALID, CKR.KEY_INDIGESTIBLE,
                                  CKR.KEY_SIZE_RANGE, CKR.OPERATION_ACTIVE, CKR.OPERATION_NOT_INITIALIZED),
    "C_DigestEncryptUpdate": SESSION | _OUTPUT | _set(CKR.DATA_LEN_RANGE),
    "C_DecryptDigestUpdate": SESSION | _OUTPUT | _set(CKR.ENCRYPTED_DATA_INVALID, CKR.ENCRYPTED_DATA_LEN_RANGE),
    "C_SignEncryptUpdate": SESSION | _OUTPUT | _set(CKR.DATA_LEN_RANGE, CKR.USER_NOT_LOGGED_IN),
    "C_DecryptVerifyUpdate": SESSION | _OUTPUT | _set(CKR.DATA_LEN_RANGE, CKR.ENCRYPTED_DATA_INVALID,
                                                      CKR.ENCRYPTED_DATA_LEN_RANGE),
    # PKCS#11 3.0 and 3.2 (functions/v3.py, functions/message.py).
    "C_LoginUser": SESSION | _set(
        CKR.OPERATION_NOT_INITIALIZED, CKR.PIN_INCORRECT, CKR.PIN_LOCKED, CKR.PIN_EXPIRED,
        CKR.SESSION_READ_ONLY_EXISTS, CKR.USER_ALREADY_LOGGED_IN, CKR.USER_ANOTHER_ALREADY_LOGGED_IN,
        CKR.USER_PIN_NOT_INITIALIZED, CKR.USER_TOO_MANY_TYPES, CKR.USER_TYPE_INVALID, CKR.FUNCTION_CANCELED),
    "C_SessionCancel": SESSION | _set(OPERATION_CANCEL_FAILED),
    "C_MessageEncryptInit": SESSION | _INIT_WITH_KEY,
    "C_MessageDecryptInit": SESSION | _INIT_WITH_KEY,
    "C_EncryptMessage": SESSION | _OUTPUT | _set(CKR.DATA_LEN_RANGE, CKR.MECHANISM_PARAM_INVALID),
    "C_DecryptMessage": SESSION | _OUTPUT | _set(CKR.ENCRYPTED_DATA_INVALID, CKR.ENCRYPTED_DATA_LEN_RANGE,
                                                 CKR.MECHANISM_PARAM_INVALID, CKR.USER_NOT_LOGGED_IN),
    "C_EncryptMessageBegin": SESSION | _OUTPUT | _set(CKR.MECHANISM_PARAM_INVALID),
    "C_DecryptMessageBegin": SESSION | _OUTPUT | _set(CKR.MECHANISM_PARAM_INVALID, CKR.USER_NOT_LOGGED_IN),
    "C_EncryptMessageNext": SESSION | _OUTPUT | _set(CKR.DATA_LEN_RANGE, CKR.MECHANISM_PARAM_INVALID),
    "C_DecryptMessageNext": SESSION | _OUTPUT | _set(CKR.ENCRYPTED_DATA_INVALID, CKR.ENCRYPTED_DATA_LEN_RANGE,
                                                     CKR.MECHANISM_PARAM_INVALID, CKR.USER_NOT_LOGGED_IN),
    "C_MessageEncryptFinal": SESSION | _set(CKR.OPERATION_NOT_INITIALIZED),
    "C_MessageDecryptFinal": SESSION | _set(CKR.OPERATION_NOT_INITIALIZED),
    "C_EncapsulateKey": SESSION | _MAKE_OBJECT | _set(
        CKR.BUFFER_TOO_SMALL, CKR.KEY_HANDLE_INVALID, CKR.KEY_SIZE_RANGE, CKR.KEY_TYPE_INCONSISTENT,
        CKR.KEY_FUNCTION_NOT_PERMITTED),
    "C_DecapsulateKey": SESSION | _MAKE_OBJECT | _set(
        CKR.ENCRYPTED_DATA_INVALID, CKR.ENCRYPTED_DATA_LEN_RANGE, CKR.KEY_HANDLE_INVALID, CKR.KEY_SIZE_RANGE,
        CKR.KEY_TYPE_INCONSISTENT, CKR.KEY_FUNCTION_NOT_PERMITTED),
}

#: The module's own requests (X_*: ending an operation, output bounds, reopening an application): never an
#: application's answer, so any code goes (the module maps them).
INTERNAL = frozenset({"X_EndOperation", "X_OutputBound", "X_Resume"})


#: Multi-part calls on a mechanism that only works in one part. The spec (§5.1) makes
#: CKR_FUNCTION_NOT_SUPPORTED the answer of anything the library cannot do, and clients
#: (OpenSC's pkcs11-tool --test) rely on it here rather than on a generic failure.
_PARTS = frozenset({"C_EncryptUpdate", "C_DecryptUpdate", "C_SignUpdate", "C_VerifyUpdate", "C_DigestUpdate",
                    "C_EncryptFinal", "C_DecryptFinal", "C_SignFinal", "C_VerifyFinal", "C_DigestFinal"})
_NOT_SUPPORTED = frozenset({int(CKR.FUNCTION_NOT_SUPPORTED)})


def allowed(function: str) -> frozenset[int]:
    extra = _NOT_SUPPORTED if function in _PARTS else frozenset()
    return UNIVERSAL | ALLOWED.get(function, frozenset()) | extra


# --- node code -> the function's code -----------------------------------------------------

_DECRYPT = ("C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal")
_KEY_INIT = ("C_EncryptInit", "C_DecryptInit", "C_SignInit", "C_VerifyInit", "C_DeriveKey")
_MAKERS = ("C_GenerateKey", "C_GenerateKeyPair")

#: (function or None for every function, node code) -> code for the application.
_TRANSLATE: dict[tuple[str | None, int], int] = {
    # The node speaks of the cluster, not of this library's initialization.
    (None, CKR.CRYPTOKI_NOT_INITIALIZED): CKR.DEVICE_ERROR,
    (None, CKR.TOKEN_NOT_RECOGNIZED): CKR.DEVICE_ERROR,
    (None, CKR.FIPS_SELF_TEST_FAILED): CKR.DEVICE_ERROR,
    # Too many logins or PKCS#11 sessions on the node: the token is out of room.
    (None, CKR.SESSION_COUNT): CKR.DEVICE_MEMORY,
    ("C_Login", CKR.CRYPTOKI_NOT_INITIALIZED): CKR.USER_PIN_NOT_INITIALIZED,
    ("C_Login", CKR.PIN_LEN_RANGE): CKR.PIN_INCORRECT,
    ("C_Login", CKR.PIN_INVALID): CKR.PIN_INCORRECT,
    ("C_Login", CKR.ARGUMENTS_BAD): CKR.PIN_INCORRECT,
    ("C_SetPIN", CKR.ARGUMENTS_BAD): CKR.PIN_INVALID,
    # C_InitPIN: the user named is not one (the node's user.change_password: ARGUMENTS_BAD); the SO may not
    # change this user (ACTION_PROHIBITED).
    ("C_InitPIN", CKR.ARGUMENTS_BAD): CKR.PIN_INVALID,
    ("C_InitPIN", CKR.ACTION_PROHIBITED): CKR.PIN_INVALID,
    # The caller sees the key but may not use it (an admin's view of a key, another user's key it was not
    # shared): the init's "the key does not allow this".
    **{(f, CKR.ACTION_PROHIBITED): CKR.KEY_FUNCTION_NOT_PERMITTED
       for f in ("C_EncryptInit", "C_DecryptInit", "C_SignInit", "C_VerifyInit")},
    # C_CreateObject of a secret or private key: the class is not one that may be created.
    # The held credentials stopped working (password changed elsewhere): as after a logout,
    # the application's handles to private objects are invalid.
    **{(f, CKR.USER_NOT_LOGGED_IN): CKR.OBJECT_HANDLE_INVALID
       for f in ("C_GetAttributeValue", "C_GetObjectSize", "C_DestroyObject")},
    ("C_CreateObject", CKR.ACTION_PROHIBITED): CKR.ATTRIBUTE_VALUE_INVALID,
    ("C_CreateObject", CKR.PUBLIC_KEY_INVALID): CKR.ATTRIBUTE_VALUE_INVALID,
    ("C_DeriveKey", CKR.PUBLIC_KEY_INVALID): CKR.MECHANISM_PARAM_INVALID,
    ("C_DeriveKey", CKR.KEY_FUNCTION_NOT_PERMITTED): CKR.KEY_TYPE_INCONSISTENT,
    **{(f, CKR.OBJECT_HANDLE_INVALID): CKR.KEY_HANDLE_INVALID for f in _KEY_INIT},
    # PKCS#11 3.x: C_LoginUser answers as C_Login; the message and KEM functions name their key as the inits do.
    ("C_LoginUser", CKR.CRYPTOKI_NOT_INITIALIZED): CKR.USER_PIN_NOT_INITIALIZED,
    ("C_LoginUser", CKR.PIN_LEN_RANGE): CKR.PIN_INCORRECT,
    ("C_LoginUser", CKR.PIN_INVALID): CKR.PIN_INCORRECT,
    ("C_LoginUser", CKR.ARGUMENTS_BAD): CKR.PIN_INCORRECT,
    **{(f, CKR.OBJECT_HANDLE_INVALID): CKR.KEY_HANDLE_INVALID
       for f in ("C_MessageEncryptInit", "C_MessageDecryptInit", "C_EncapsulateKey", "C_DecapsulateKey")},
    **{(f, CKR.ACTION_PROHIBITED): CKR.KEY_FUNCTION_NOT_PERMITTED
       for f in ("C_MessageEncryptInit", "C_MessageDecryptInit", "C_EncapsulateKey", "C_DecapsulateKey")},
    **{(f, CKR.DATA_LEN_RANGE): CKR.ENCRYPTED_DATA_LEN_RANGE for f in ("C_DecryptMessage", "C_DecryptMessageNext")},
    **{(f, CKR.DATA_INVALID): CKR.ENCRYPTED_DATA_INVALID for f in ("C_DecryptMessage", "C_DecryptMessageNext")},
    ("C_DecapsulateKey", CKR.DATA_LEN_RANGE): CKR.ENCRYPTED_DATA_LEN_RANGE,
    ("C_DecapsulateKey", CKR.DATA_INVALID): CKR.ENCRYPTED_DATA_INVALID,
    **{(f, CKR.DATA_LEN_RANGE): CKR.ENCRYPTED_DATA_LEN_RANGE for f in _DECRYPT},
    **{(f, CKR.DATA_INVALID): CKR.ENCRYPTED_DATA_INVALID for f in _DECRYPT},
    **{(f, CKR.KEY_SIZE_RANGE): CKR.ATTRIBUTE_VALUE_INVALID for f in _MAKERS},
    **{(f, CKR.PUBLIC_KEY_INVALID): CKR.ATTRIBUTE_VALUE_INVALID for f in _MAKERS},
    # C_WrapKey: the node's OBJECT_HANDLE_INVALID is the key to wrap; a wrapping key of the
    # wrong kind (or with CKA_WRAP false) is the wrapping key's type problem.
    ("C_WrapKey", CKR.OBJECT_HANDLE_INVALID): CKR.KEY_HANDLE_INVALID,
    ("C_WrapKey", CKR.KEY_TYPE_INCONSISTENT): CKR.WRAPPING_KEY_TYPE_INCONSISTENT,
    ("C_WrapKey", CKR.KEY_FUNCTION_NOT_PERMITTED): CKR.WRAPPING_KEY_TYPE_INCONSISTENT,
    ("C_UnwrapKey", CKR.OBJECT_HANDLE_INVALID): UNWRAPPING_KEY_HANDLE_INVALID,
    ("C_UnwrapKey", CKR.KEY_HANDLE_INVALID): UNWRAPPING_KEY_HANDLE_INVALID,
    ("C_UnwrapKey", CKR.KEY_TYPE_INCONSISTENT): CKR.UNWRAPPING_KEY_TYPE_INCONSISTENT,
    ("C_UnwrapKey", CKR.KEY_FUNCTION_NOT_PERMITTED): CKR.UNWRAPPING_KEY_TYPE_INCONSISTENT,
    ("C_UnwrapKey", CKR.KEY_SIZE_RANGE): CKR.UNWRAPPING_KEY_SIZE_RANGE,
    ("C_UnwrapKey", CKR.ENCRYPTED_DATA_INVALID): CKR.WRAPPED_KEY_INVALID,
    ("C_UnwrapKey", CKR.ENCRYPTED_DATA_LEN_RANGE): CKR.WRAPPED_KEY_LEN_RANGE,
    ("C_UnwrapKey", CKR.DATA_LEN_RANGE): CKR.WRAPPED_KEY_LEN_RANGE,
}


def translate(function: str, code: int) -> int:
    """The code the application gets for a node's ``code`` in ``function`` (before the filter)."""
    mapped = _TRANSLATE.get((function, code))
    if mapped is None:
        mapped = _TRANSLATE.get((None, code), code)
    return int(mapped)


def finish(function: str, code: int, detail: Any = None) -> int:
    """The last word: a code outside the function's list becomes CKR_FUNCTION_FAILED (logged)."""
    if code in allowed(function) or function in INTERNAL:
        return code
    log.warning("%s: %s is not a return value of this function; answering CKR_FUNCTION_FAILED (%s)",
                function, _name(code), detail if detail is not None else "no detail")
    return int(CKR.FUNCTION_FAILED)
