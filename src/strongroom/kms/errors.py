"""AWS KMS errors: one exception class per ``__type``, with its HTTP status, in one place.

The body of an error is ``{"__type": code, "message": text}``; botocore takes the code from
``__type`` and the message from ``message``. Client errors are 400, faults 500/503.
"""

from __future__ import annotations


class KmsError(Exception):
    code = "KMSInternalException"
    status = 400

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, str]:
        return {"__type": self.code, "message": self.message}


def _error(code: str, status: int = 400) -> type[KmsError]:
    cls = type(code, (KmsError,), {"code": code, "status": status, "__doc__": f"AWS {code} ({status})."})
    ERRORS[code] = cls
    return cls


ERRORS: dict[str, type[KmsError]] = {}

# Authentication (the request never reaches an operation).
MissingAuthenticationToken = _error("MissingAuthenticationTokenException")
IncompleteSignature = _error("IncompleteSignatureException")
InvalidSignature = _error("InvalidSignatureException")
UnrecognizedClient = _error("UnrecognizedClientException")
AccessDenied = _error("AccessDeniedException")
# Protocol.
SerializationError = _error("SerializationException")
UnknownOperation = _error("UnknownOperationException")
# Modelled KMS errors.
NotFound = _error("NotFoundException")
Disabled = _error("DisabledException")
InvalidState = _error("KMSInvalidStateException")
InvalidCiphertext = _error("InvalidCiphertextException")
IncorrectKey = _error("IncorrectKeyException")
InvalidKeyUsage = _error("InvalidKeyUsageException")
Validation = _error("ValidationException")
AlreadyExists = _error("AlreadyExistsException")
InvalidArn = _error("InvalidArnException")
InvalidAliasName = _error("InvalidAliasNameException")
InvalidMarker = _error("InvalidMarkerException")
UnsupportedOperation = _error("UnsupportedOperationException")
TagError = _error("TagException")
LimitExceeded = _error("LimitExceededException")
DryRunOperation = _error("DryRunOperationException")
InvalidGrantToken = _error("InvalidGrantTokenException")
InvalidGrantId = _error("InvalidGrantIdException")
MalformedPolicyDocument = _error("MalformedPolicyDocumentException")
Throttling = _error("ThrottlingException")
# Asymmetric keys and HMAC (Verify / VerifyMac that do not verify; AWS's message is empty).
KmsInvalidSignature = _error("KMSInvalidSignatureException")
KmsInvalidMac = _error("KMSInvalidMacException")
# Imported key material.
ExpiredImportToken = _error("ExpiredImportTokenException")
InvalidImportToken = _error("InvalidImportTokenException")
IncorrectKeyMaterial = _error("IncorrectKeyMaterialException")
# Custom key stores.
CustomKeyStoreNotFound = _error("CustomKeyStoreNotFoundException")
CustomKeyStoreInvalidState = _error("CustomKeyStoreInvalidStateException")
CustomKeyStoreHasCMKs = _error("CustomKeyStoreHasCMKsException")
CustomKeyStoreNameInUse = _error("CustomKeyStoreNameInUseException")
CloudHsmClusterNotFound = _error("CloudHsmClusterNotFoundException")
CloudHsmClusterInUse = _error("CloudHsmClusterInUseException")
CloudHsmClusterNotActive = _error("CloudHsmClusterNotActiveException")
CloudHsmClusterNotRelated = _error("CloudHsmClusterNotRelatedException")
IncorrectTrustAnchor = _error("IncorrectTrustAnchorException")
# Faults (botocore retries these).
InternalError = _error("KMSInternalException", 500)
KeyUnavailable = _error("KeyUnavailableException", 500)
DependencyTimeout = _error("DependencyTimeoutException", 503)

#: The message AWS gives for a wrong KeyId on Decrypt/ReEncrypt.
INCORRECT_KEY_MESSAGE = "The key ID in the request does not identify a CMK that can perform this operation."
