/*
 * The PKCS#11 3.x structures the module marshals that the v2.40 header of
 * libp11-kit-dev (<p11-kit/pkcs11.h>) does not define, written from the OASIS
 * PKCS#11 Specification Version 3.0 (and 3.1) tables. Nothing else.
 */
#ifndef STRONGROOM_PKCS11X_H
#define STRONGROOM_PKCS11X_H

#include <p11-kit/pkcs11.h>

/* PKCS#11 3.0 §2.3.14 (current mechanisms): the parameter of CKM_EDDSA. */
typedef struct CK_EDDSA_PARAMS {
    CK_BBOOL phFlag;
    CK_ULONG ulContextDataLen;
    CK_BYTE_PTR pContextData;
} CK_EDDSA_PARAMS;

#endif
