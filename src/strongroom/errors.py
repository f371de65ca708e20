"""PKCS#11 return codes and the exceptions that carry them.

This is the one place where an error becomes a ``CKR_*`` code: every layer raises
an :class:`HsmError` subclass (or passes a code), and the dispatcher turns it into
the reply. The numeric values are the PKCS#11 v2.40 ones (checked against the
p11-kit header by ``tests/unit/test_errors.py``).
"""

from __future__ import annotations

import enum


class CKR(enum.IntEnum):
    OK = 0
    CANCEL = 1
    HOST_MEMORY = 2
    SLOT_ID_INVALID = 3
    GENERAL_ERROR = 5
    FUNCTION_FAILED = 6
    ARGUMENTS_BAD = 7
    NO_EVENT = 8
    NEED_TO_CREATE_THREADS = 9
    CANT_LOCK = 0xa
    ATTRIBUTE_READ_ONLY = 0x10
    ATTRIBUTE_SENSITIVE = 0x11
    ATTRIBUTE_TYPE_INVALID = 0x12
    ATTRIBUTE_VALUE_INVALID = 0x13
    ACTION_PROHIBITED = 0x1B
    DATA_INVALID = 0x20
    DATA_LEN_RANGE = 0x21
    DEVICE_ERROR = 0x30
    DEVICE_MEMORY = 0x31
    DEVICE_REMOVED = 0x32
    ENCRYPTED_DATA_INVALID = 0x40
    ENCRYPTED_DATA_LEN_RANGE = 0x41
    FUNCTION_CANCELED = 0x50
    FUNCTION_NOT_PARALLEL = 0x51
    FUNCTION_NOT_SUPPORTED = 0x54
    KEY_HANDLE_INVALID = 0x60
    KEY_SIZE_RANGE = 0x62
    KEY_TYPE_INCONSISTENT = 0x63
    KEY_NOT_NEEDED = 0x64
    KEY_CHANGED = 0x65
    KEY_NEEDED = 0x66
    KEY_INDIGESTIBLE = 0x67
    KEY_FUNCTION_NOT_PERMITTED = 0x68
    KEY_NOT_WRAPPABLE = 0x69
    KEY_UNEXTRACTABLE = 0x6a
    MECHANISM_INVALID = 0x70
    MECHANISM_PARAM_INVALID = 0x71
    OBJECT_HANDLE_INVALID = 0x82
    OPERATION_ACTIVE = 0x90
    OPERATION_NOT_INITIALIZED = 0x91
    PIN_INCORRECT = 0xa0
    PIN_INVALID = 0xa1
    PIN_LEN_RANGE = 0xa2
    PIN_EXPIRED = 0xa3
    PIN_LOCKED = 0xa4
    SESSION_CLOSED = 0xb0
    SESSION_COUNT = 0xb1
    SESSION_HANDLE_INVALID = 0xb3
    SESSION_PARALLEL_NOT_SUPPORTED = 0xb4
    SESSION_READ_ONLY = 0xb5
    SESSION_EXISTS = 0xb6
    SESSION_READ_ONLY_EXISTS = 0xb7
    SESSION_READ_WRITE_SO_EXISTS = 0xb8
    SIGNATURE_INVALID = 0xc0
    SIGNATURE_LEN_RANGE = 0xc1
    TEMPLATE_INCOMPLETE = 0xd0
    TEMPLATE_INCONSISTENT = 0xd1
    TOKEN_NOT_PRESENT = 0xe0
    TOKEN_NOT_RECOGNIZED = 0xe1
    TOKEN_WRITE_PROTECTED = 0xe2
    UNWRAPPING_KEY_SIZE_RANGE = 0xf1
    UNWRAPPING_KEY_TYPE_INCONSISTENT = 0xf2
    USER_ALREADY_LOGGED_IN = 0x100
    USER_NOT_LOGGED_IN = 0x101
    USER_PIN_NOT_INITIALIZED = 0x102
    USER_TYPE_INVALID = 0x103
    USER_ANOTHER_ALREADY_LOGGED_IN = 0x104
    USER_TOO_MANY_TYPES = 0x105
    WRAPPED_KEY_INVALID = 0x110
    WRAPPED_KEY_LEN_RANGE = 0x112
    WRAPPING_KEY_HANDLE_INVALID = 0x113
    WRAPPING_KEY_SIZE_RANGE = 0x114
    WRAPPING_KEY_TYPE_INCONSISTENT = 0x115
    RANDOM_SEED_NOT_SUPPORTED = 0x120
    RANDOM_NO_RNG = 0x121
    DOMAIN_PARAMS_INVALID = 0x130
    CURVE_NOT_SUPPORTED = 0x140
    BUFFER_TOO_SMALL = 0x150
    SAVED_STATE_INVALID = 0x160
    INFORMATION_SENSITIVE = 0x170
    STATE_UNSAVEABLE = 0x180
    CRYPTOKI_NOT_INITIALIZED = 0x190
    CRYPTOKI_ALREADY_INITIALIZED = 0x191
    MUTEX_BAD = 0x1a0
    MUTEX_NOT_LOCKED = 0x1a1
    NEW_PIN_MODE = 0x1b0
    NEXT_OTP = 0x1b1
    EXCEEDED_MAX_ITERATIONS = 0x1c0
    FIPS_SELF_TEST_FAILED = 0x1c1
    LIBRARY_LOAD_FAILED = 0x1c2
    PIN_TOO_WEAK = 0x1c3
    PUBLIC_KEY_INVALID = 0x1c4
    FUNCTION_REJECTED = 0x200
    VENDOR_DEFINED = 0x80000000

    @property
    def spec_name(self) -> str:
        return "CKR_" + self.name


class HsmError(Exception):
    """An error that travels to the caller as a PKCS#11 return code plus a message."""

    code: CKR = CKR.GENERAL_ERROR

    def __init__(self, message: str, code: CKR | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code.spec_name


def _error(name: str, ckr: CKR, doc: str) -> type[HsmError]:
    return type(name, (HsmError,), {"code": ckr, "__doc__": doc})


ArgumentsBad = _error("ArgumentsBad", CKR.ARGUMENTS_BAD, "A request is malformed or has wrong types.")
FunctionNotSupported = _error("FunctionNotSupported", CKR.FUNCTION_NOT_SUPPORTED, "Unknown operation.")
DeviceError = _error("DeviceError", CKR.DEVICE_ERROR, "The node cannot serve (self-test failure, store, audit).")
DataLenRange = _error("DataLenRange", CKR.DATA_LEN_RANGE, "Input longer than a limit.")
UserNotLoggedIn = _error("UserNotLoggedIn", CKR.USER_NOT_LOGGED_IN, "The call needs a login.")
UserTypeInvalid = _error("UserTypeInvalid", CKR.USER_TYPE_INVALID, "Wrong role for the call or unknown role.")
PinIncorrect = _error("PinIncorrect", CKR.PIN_INCORRECT, "Unknown user or wrong password.")
PinLocked = _error("PinLocked", CKR.PIN_LOCKED, "Account locked after too many failed logins.")
PinLenRange = _error("PinLenRange", CKR.PIN_LEN_RANGE, "Password outside the length rules.")
PinInvalid = _error("PinInvalid", CKR.PIN_INVALID, "Password with characters outside the rules.")
SessionHandleInvalid = _error("SessionHandleInvalid", CKR.SESSION_HANDLE_INVALID, "Unknown or expired session.")
SessionCount = _error("SessionCount", CKR.SESSION_COUNT, "Too many sessions.")
ActionProhibited = _error("ActionProhibited", CKR.ACTION_PROHIBITED, "The policy forbids this action.")
CryptokiNotInitialized = _error(
    "CryptokiNotInitialized", CKR.CRYPTOKI_NOT_INITIALIZED, "The cluster is not initialized/activated."
)
TokenNotRecognized = _error("TokenNotRecognized", CKR.TOKEN_NOT_RECOGNIZED, "Stored state is unreadable or altered.")
AttributeValueInvalid = _error(
    "AttributeValueInvalid", CKR.ATTRIBUTE_VALUE_INVALID, "A field's value breaks the rules."
)
FipsSelfTestFailed = _error("FipsSelfTestFailed", CKR.FIPS_SELF_TEST_FAILED, "A power-on self-test failed.")
MechanismInvalid = _error("MechanismInvalid", CKR.MECHANISM_INVALID, "Unknown mechanism or not allowed here.")
MechanismParamInvalid = _error(
    "MechanismParamInvalid", CKR.MECHANISM_PARAM_INVALID, "Mechanism parameters are malformed or out of range."
)
KeyTypeInconsistent = _error("KeyTypeInconsistent", CKR.KEY_TYPE_INCONSISTENT, "Wrong key type for the mechanism.")
KeySizeRange = _error("KeySizeRange", CKR.KEY_SIZE_RANGE, "Key size outside what the mechanism supports.")
KeyFunctionNotPermitted = _error(
    "KeyFunctionNotPermitted", CKR.KEY_FUNCTION_NOT_PERMITTED, "The key's attributes forbid this use."
)
KeyHandleInvalid = _error("KeyHandleInvalid", CKR.KEY_HANDLE_INVALID, "No such key (or not visible to you).")
ObjectHandleInvalid = _error("ObjectHandleInvalid", CKR.OBJECT_HANDLE_INVALID, "No such object (or not visible).")
DataInvalid = _error("DataInvalid", CKR.DATA_INVALID, "Input data is invalid for the mechanism.")
EncryptedDataInvalid = _error("EncryptedDataInvalid", CKR.ENCRYPTED_DATA_INVALID, "Ciphertext is invalid.")
EncryptedDataLenRange = _error(
    "EncryptedDataLenRange", CKR.ENCRYPTED_DATA_LEN_RANGE, "Ciphertext length is invalid."
)
SignatureInvalid = _error("SignatureInvalid", CKR.SIGNATURE_INVALID, "The signature does not verify.")
SignatureLenRange = _error("SignatureLenRange", CKR.SIGNATURE_LEN_RANGE, "The signature has the wrong length.")
WrappedKeyInvalid = _error("WrappedKeyInvalid", CKR.WRAPPED_KEY_INVALID, "The wrapped key does not unwrap.")
WrappedKeyLenRange = _error("WrappedKeyLenRange", CKR.WRAPPED_KEY_LEN_RANGE, "Wrapped key length is invalid.")
KeyNotWrappable = _error("KeyNotWrappable", CKR.KEY_NOT_WRAPPABLE, "This key cannot be wrapped.")
KeyUnextractable = _error("KeyUnextractable", CKR.KEY_UNEXTRACTABLE, "The key is not extractable.")
CurveNotSupported = _error("CurveNotSupported", CKR.CURVE_NOT_SUPPORTED, "Unsupported elliptic curve.")
DomainParamsInvalid = _error("DomainParamsInvalid", CKR.DOMAIN_PARAMS_INVALID, "Invalid domain parameters.")
TemplateIncomplete = _error("TemplateIncomplete", CKR.TEMPLATE_INCOMPLETE, "A required attribute is missing.")
TemplateInconsistent = _error("TemplateInconsistent", CKR.TEMPLATE_INCONSISTENT, "Attributes contradict each other.")
AttributeTypeInvalid = _error("AttributeTypeInvalid", CKR.ATTRIBUTE_TYPE_INVALID, "Unknown attribute.")
AttributeReadOnly = _error("AttributeReadOnly", CKR.ATTRIBUTE_READ_ONLY, "The attribute cannot be set or changed.")
AttributeSensitive = _error("AttributeSensitive", CKR.ATTRIBUTE_SENSITIVE, "The attribute value is never revealed.")
OperationActive = _error("OperationActive", CKR.OPERATION_ACTIVE, "Another operation is active in the session.")
OperationNotInitialized = _error(
    "OperationNotInitialized", CKR.OPERATION_NOT_INITIALIZED, "No such operation was initialized."
)
PublicKeyInvalid = _error("PublicKeyInvalid", CKR.PUBLIC_KEY_INVALID, "The public key (or point) is invalid.")
