/*
 * The PKCS#11 3.0 and 3.2 interface as far as this module uses it: what the v2.40 header of libp11-kit-dev
 * (<p11-kit/pkcs11.h>) lacks. Written from the tables of the OASIS PKCS #11 Specification Version 3.2
 * (§3 data types, §4 objects, §5 functions and the mechanism sections for ML-DSA, ML-KEM, AES-GCM and HKDF);
 * everything else (the v2.40 types, CK_FUNCTION_LIST) still comes from p11-kit. Names are the spec's, so that
 * code reads like the spec.
 */
#ifndef STRONGROOM_PKCS11_3X_H
#define STRONGROOM_PKCS11_3X_H

#include <p11-kit/pkcs11.h>

#include "pkcs11x.h"

/* ---- interfaces (§3.6, §5.4) ------------------------------------------------------------------- */

/* CK_INTERFACE: a named function list; flags CKF_INTERFACE_FORK_SAFE. */
typedef struct CK_INTERFACE {
    CK_UTF8CHAR *pInterfaceName;
    CK_VOID_PTR pFunctionList;
    CK_FLAGS flags;
} CK_INTERFACE;
typedef CK_INTERFACE *CK_INTERFACE_PTR;
typedef CK_INTERFACE_PTR *CK_INTERFACE_PTR_PTR;

#define CKF_INTERFACE_FORK_SAFE 0x00000001UL

/* ---- new scalar types and values ----------------------------------------------------------------- */

typedef CK_ULONG CK_GENERATOR_FUNCTION;           /* §2.13 (AEAD message IVs) */
#define CKG_NO_GENERATE 0x00000000UL
#define CKG_GENERATE 0x00000001UL
#define CKG_GENERATE_COUNTER 0x00000002UL
#define CKG_GENERATE_RANDOM 0x00000003UL
#define CKG_GENERATE_COUNTER_XOR 0x00000004UL

typedef CK_ULONG CK_HEDGE_TYPE;                   /* ML-DSA / SLH-DSA signing */
#define CKH_HEDGE_PREFERRED 0x00000000UL
#define CKH_HEDGE_REQUIRED 0x00000001UL
#define CKH_DETERMINISTIC_REQUIRED 0x00000002UL

typedef CK_ULONG CK_SESSION_VALIDATION_FLAGS_TYPE; /* C_GetSessionValidationFlags */
typedef CK_FLAGS *CK_FLAGS_PTR;

/* C_EncryptMessageNext / C_DecryptMessageNext: the last part of a message. */
#define CKF_END_OF_MESSAGE 0x00000001UL

/* C_SessionCancel: which operations (the mechanism-info flags, plus finds). */
#define CKF_FIND_OBJECTS 0x00000040UL
#define CKF_MESSAGE_ENCRYPT 0x00000002UL
#define CKF_MESSAGE_DECRYPT 0x00000004UL
#define CKF_MESSAGE_SIGN 0x00000008UL
#define CKF_MESSAGE_VERIFY 0x00000010UL
#define CKF_MULTI_MESSAGE 0x00000020UL

#define CKR_OPERATION_CANCEL_FAILED 0x00000202UL

/* Key types, mechanisms and attributes of the post-quantum families (§6.67 ML-DSA, §6.68 ML-KEM). */
#define CKK_ML_KEM 0x00000049UL
#define CKK_ML_DSA 0x0000004AUL
#define CKA_PARAMETER_SET 0x0000061DUL
#define CKA_ENCAPSULATE 0x00000633UL
#define CKA_DECAPSULATE 0x00000634UL
#define CKA_SEED 0x00000637UL
#define CKM_ML_KEM_KEY_PAIR_GEN 0x0000000FUL
#define CKM_ML_KEM 0x00000017UL
#define CKM_ML_DSA_KEY_PAIR_GEN 0x0000001CUL
#define CKM_ML_DSA 0x0000001DUL
#define CKM_HASH_ML_DSA 0x0000001FUL
#define CKM_HASH_ML_DSA_SHA224 0x00000023UL
#define CKM_HASH_ML_DSA_SHAKE256 0x0000002CUL  /* the pre-hash variants run 0x23 .. 0x2C */
#define CKM_HKDF_DERIVE 0x0000402AUL
#define CKM_HKDF_DATA 0x0000402BUL
#define CKF_HKDF_SALT_NULL 0x00000001UL
#define CKF_HKDF_SALT_DATA 0x00000002UL
#define CKF_HKDF_SALT_KEY 0x00000004UL

/* ---- mechanism parameters -------------------------------------------------------------------------- */

/* AES-GCM in the message-based functions (§2.13.x): one per message. */
typedef struct CK_GCM_MESSAGE_PARAMS {
    CK_BYTE_PTR pIv;
    CK_ULONG ulIvLen;
    CK_ULONG ulIvFixedBits;
    CK_GENERATOR_FUNCTION ivGenerator;
    CK_BYTE_PTR pTag;
    CK_ULONG ulTagBits;
} CK_GCM_MESSAGE_PARAMS;

/* CKM_ML_DSA and CKM_HASH_ML_DSA_<hash>: hedging and FIPS 204's context string. */
typedef struct CK_SIGN_ADDITIONAL_CONTEXT {
    CK_HEDGE_TYPE hedgeVariant;
    CK_BYTE_PTR pContext;
    CK_ULONG ulContextLen;
} CK_SIGN_ADDITIONAL_CONTEXT;

/* CKM_HASH_ML_DSA (the generic pre-hash variant): the above plus the hash. */
typedef struct CK_HASH_SIGN_ADDITIONAL_CONTEXT {
    CK_HEDGE_TYPE hedgeVariant;
    CK_BYTE_PTR pContext;
    CK_ULONG ulContextLen;
    CK_MECHANISM_TYPE hash;
} CK_HASH_SIGN_ADDITIONAL_CONTEXT;

/* CKM_HKDF_DERIVE / CKM_HKDF_DATA. */
typedef struct CK_HKDF_PARAMS {
    CK_BBOOL bExtract;
    CK_BBOOL bExpand;
    CK_MECHANISM_TYPE prfHashMechanism;
    CK_ULONG ulSaltType;
    CK_BYTE_PTR pSalt;
    CK_ULONG ulSaltLen;
    CK_OBJECT_HANDLE hSaltKey;
    CK_BYTE_PTR pInfo;
    CK_ULONG ulInfoLen;
} CK_HKDF_PARAMS;

/* C_AsyncComplete's result (only named: the module answers CKR_FUNCTION_NOT_SUPPORTED). */
typedef struct CK_ASYNC_DATA {
    CK_ULONG ulVersion;
    CK_BYTE_PTR pValue;
    CK_ULONG ulValue;
    CK_OBJECT_HANDLE hObject;
    CK_OBJECT_HANDLE hAdditionalObject;
} CK_ASYNC_DATA;

/* ---- the function lists (§3.6: CK_FUNCTION_LIST_3_0 is the v2.40 list followed by the 3.0 functions;
 * CK_FUNCTION_LIST_3_2 adds the 3.2 functions after those) ------------------------------------------------ */

#define SR_FN(name, ...) CK_RV (*name)(__VA_ARGS__)

#define SR_FUNCTIONS_2_40                                                                                    \
    SR_FN(C_Initialize, CK_VOID_PTR);                                                                       \
    SR_FN(C_Finalize, CK_VOID_PTR);                                                                         \
    SR_FN(C_GetInfo, CK_INFO_PTR);                                                                          \
    SR_FN(C_GetFunctionList, CK_FUNCTION_LIST_PTR_PTR);                                                     \
    SR_FN(C_GetSlotList, CK_BBOOL, CK_SLOT_ID_PTR, CK_ULONG_PTR);                                            \
    SR_FN(C_GetSlotInfo, CK_SLOT_ID, CK_SLOT_INFO_PTR);                                                     \
    SR_FN(C_GetTokenInfo, CK_SLOT_ID, CK_TOKEN_INFO_PTR);                                                   \
    SR_FN(C_GetMechanismList, CK_SLOT_ID, CK_MECHANISM_TYPE_PTR, CK_ULONG_PTR);                             \
    SR_FN(C_GetMechanismInfo, CK_SLOT_ID, CK_MECHANISM_TYPE, CK_MECHANISM_INFO_PTR);                        \
    SR_FN(C_InitToken, CK_SLOT_ID, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR);                             \
    SR_FN(C_InitPIN, CK_SESSION_HANDLE, CK_UTF8CHAR_PTR, CK_ULONG);                                         \
    SR_FN(C_SetPIN, CK_SESSION_HANDLE, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR, CK_ULONG);               \
    SR_FN(C_OpenSession, CK_SLOT_ID, CK_FLAGS, CK_VOID_PTR, CK_NOTIFY, CK_SESSION_HANDLE_PTR);              \
    SR_FN(C_CloseSession, CK_SESSION_HANDLE);                                                               \
    SR_FN(C_CloseAllSessions, CK_SLOT_ID);                                                                  \
    SR_FN(C_GetSessionInfo, CK_SESSION_HANDLE, CK_SESSION_INFO_PTR);                                        \
    SR_FN(C_GetOperationState, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);                               \
    SR_FN(C_SetOperationState, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE); \
    SR_FN(C_Login, CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR_PTR, CK_ULONG);                             \
    SR_FN(C_Logout, CK_SESSION_HANDLE);                                                                     \
    SR_FN(C_CreateObject, CK_SESSION_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG, CK_OBJECT_HANDLE_PTR);             \
    SR_FN(C_CopyObject, CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG, CK_OBJECT_HANDLE_PTR); \
    SR_FN(C_DestroyObject, CK_SESSION_HANDLE, CK_OBJECT_HANDLE);                                            \
    SR_FN(C_GetObjectSize, CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_ULONG_PTR);                              \
    SR_FN(C_GetAttributeValue, CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG);            \
    SR_FN(C_SetAttributeValue, CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG);            \
    SR_FN(C_FindObjectsInit, CK_SESSION_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG);                                \
    SR_FN(C_FindObjects, CK_SESSION_HANDLE, CK_OBJECT_HANDLE_PTR, CK_ULONG, CK_ULONG_PTR);                  \
    SR_FN(C_FindObjectsFinal, CK_SESSION_HANDLE);                                                           \
    SR_FN(C_EncryptInit, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);                            \
    SR_FN(C_Encrypt, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);                  \
    SR_FN(C_EncryptUpdate, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);            \
    SR_FN(C_EncryptFinal, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);                                    \
    SR_FN(C_DecryptInit, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);                            \
    SR_FN(C_Decrypt, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);                  \
    SR_FN(C_DecryptUpdate, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);            \
    SR_FN(C_DecryptFinal, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);                                    \
    SR_FN(C_DigestInit, CK_SESSION_HANDLE, CK_MECHANISM_PTR);                                               \
    SR_FN(C_Digest, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);                   \
    SR_FN(C_DigestUpdate, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);                                        \
    SR_FN(C_DigestKey, CK_SESSION_HANDLE, CK_OBJECT_HANDLE);                                                \
    SR_FN(C_DigestFinal, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);                                     \
    SR_FN(C_SignInit, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);                               \
    SR_FN(C_Sign, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);                     \
    SR_FN(C_SignUpdate, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);                                          \
    SR_FN(C_SignFinal, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);                                       \
    SR_FN(C_SignRecoverInit, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);                        \
    SR_FN(C_SignRecover, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);              \
    SR_FN(C_VerifyInit, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);                             \
    SR_FN(C_Verify, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);                       \
    SR_FN(C_VerifyUpdate, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);                                        \
    SR_FN(C_VerifyFinal, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);                                         \
    SR_FN(C_VerifyRecoverInit, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);                      \
    SR_FN(C_VerifyRecover, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);            \
    SR_FN(C_DigestEncryptUpdate, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);      \
    SR_FN(C_DecryptDigestUpdate, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);      \
    SR_FN(C_SignEncryptUpdate, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);        \
    SR_FN(C_DecryptVerifyUpdate, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);      \
    SR_FN(C_GenerateKey, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_ATTRIBUTE_PTR, CK_ULONG, CK_OBJECT_HANDLE_PTR); \
    SR_FN(C_GenerateKeyPair, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_ATTRIBUTE_PTR, CK_ULONG, CK_ATTRIBUTE_PTR, \
          CK_ULONG, CK_OBJECT_HANDLE_PTR, CK_OBJECT_HANDLE_PTR);                                           \
    SR_FN(C_WrapKey, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE, CK_BYTE_PTR,  \
          CK_ULONG_PTR);                                                                                    \
    SR_FN(C_UnwrapKey, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_BYTE_PTR, CK_ULONG,        \
          CK_ATTRIBUTE_PTR, CK_ULONG, CK_OBJECT_HANDLE_PTR);                                                \
    SR_FN(C_DeriveKey, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG,   \
          CK_OBJECT_HANDLE_PTR);                                                                            \
    SR_FN(C_SeedRandom, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);                                          \
    SR_FN(C_GenerateRandom, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);                                      \
    SR_FN(C_GetFunctionStatus, CK_SESSION_HANDLE);                                                          \
    SR_FN(C_CancelFunction, CK_SESSION_HANDLE);                                                             \
    SR_FN(C_WaitForSlotEvent, CK_FLAGS, CK_SLOT_ID_PTR, CK_VOID_PTR);

#define SR_FUNCTIONS_3_0                                                                                     \
    SR_FN(C_GetInterfaceList, CK_INTERFACE_PTR, CK_ULONG_PTR);                                              \
    SR_FN(C_GetInterface, CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);                 \
    SR_FN(C_LoginUser, CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR, CK_ULONG); \
    SR_FN(C_SessionCancel, CK_SESSION_HANDLE, CK_FLAGS);                                                    \
    SR_FN(C_MessageEncryptInit, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);                     \
    SR_FN(C_EncryptMessage, CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR,   \
          CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);                                                             \
    SR_FN(C_EncryptMessageBegin, CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);          \
    SR_FN(C_EncryptMessageNext, CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, \
          CK_ULONG_PTR, CK_FLAGS);                                                                          \
    SR_FN(C_MessageEncryptFinal, CK_SESSION_HANDLE);                                                        \
    SR_FN(C_MessageDecryptInit, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);                     \
    SR_FN(C_DecryptMessage, CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR,   \
          CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);                                                             \
    SR_FN(C_DecryptMessageBegin, CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);          \
    SR_FN(C_DecryptMessageNext, CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, \
          CK_ULONG_PTR, CK_FLAGS);                                                                          \
    SR_FN(C_MessageDecryptFinal, CK_SESSION_HANDLE);                                                        \
    SR_FN(C_MessageSignInit, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);                        \
    SR_FN(C_SignMessage, CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR,      \
          CK_ULONG_PTR);                                                                                    \
    SR_FN(C_SignMessageBegin, CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG);                                    \
    SR_FN(C_SignMessageNext, CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR,  \
          CK_ULONG_PTR);                                                                                    \
    SR_FN(C_MessageSignFinal, CK_SESSION_HANDLE);                                                           \
    SR_FN(C_MessageVerifyInit, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);                      \
    SR_FN(C_VerifyMessage, CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR,    \
          CK_ULONG);                                                                                        \
    SR_FN(C_VerifyMessageBegin, CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG);                                  \
    SR_FN(C_VerifyMessageNext, CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, \
          CK_ULONG);                                                                                        \
    SR_FN(C_MessageVerifyFinal, CK_SESSION_HANDLE);

#define SR_FUNCTIONS_3_2                                                                                     \
    SR_FN(C_EncapsulateKey, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG, \
          CK_BYTE_PTR, CK_ULONG_PTR, CK_OBJECT_HANDLE_PTR);                                                 \
    SR_FN(C_DecapsulateKey, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG, \
          CK_BYTE_PTR, CK_ULONG, CK_OBJECT_HANDLE_PTR);                                                     \
    SR_FN(C_VerifySignatureInit, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_BYTE_PTR, CK_ULONG); \
    SR_FN(C_VerifySignature, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);                                     \
    SR_FN(C_VerifySignatureUpdate, CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);                               \
    SR_FN(C_VerifySignatureFinal, CK_SESSION_HANDLE);                                                       \
    SR_FN(C_GetSessionValidationFlags, CK_SESSION_HANDLE, CK_SESSION_VALIDATION_FLAGS_TYPE, CK_FLAGS_PTR);  \
    SR_FN(C_AsyncComplete, CK_SESSION_HANDLE, CK_UTF8CHAR_PTR, CK_ASYNC_DATA *);                            \
    SR_FN(C_AsyncGetID, CK_SESSION_HANDLE, CK_UTF8CHAR_PTR, CK_ULONG_PTR);                                  \
    SR_FN(C_AsyncJoin, CK_SESSION_HANDLE, CK_UTF8CHAR_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);                \
    SR_FN(C_WrapKeyAuthenticated, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE,  \
          CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);                                                \
    SR_FN(C_UnwrapKeyAuthenticated, CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_BYTE_PTR,     \
          CK_ULONG, CK_ATTRIBUTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_OBJECT_HANDLE_PTR);

typedef struct CK_FUNCTION_LIST_3_0 {
    CK_VERSION version;
    SR_FUNCTIONS_2_40
    SR_FUNCTIONS_3_0
} CK_FUNCTION_LIST_3_0;

typedef struct CK_FUNCTION_LIST_3_2 {
    CK_VERSION version;
    SR_FUNCTIONS_2_40
    SR_FUNCTIONS_3_0
    SR_FUNCTIONS_3_2
} CK_FUNCTION_LIST_3_2;

/* The 3.x entry points (the v2.40 ones are declared by p11-kit). */
#undef SR_FN
#define SR_FN(name, ...) CK_RV name(__VA_ARGS__)
SR_FUNCTIONS_3_0
SR_FUNCTIONS_3_2
#undef SR_FN

#endif
