/* Encoding of PKCS#11 arguments (templates, mechanisms) and decoding of outputs. */
#ifndef STRONGROOM_MARSHAL_H
#define STRONGROOM_MARSHAL_H

#include <p11-kit/pkcs11.h>

#include "mp.h"
#include "rpc.h"

/* Most attributes in one template (and in a nested one). */
#define MAX_TEMPLATE 256

/* Is the value of this attribute type a nested template? CKF_ARRAY_ATTRIBUTE
 * types are, except CKA_ALLOWED_MECHANISMS whose value is an array of
 * CK_MECHANISM_TYPE (sent as bin, native CK_ULONGs). */
int attr_is_template(CK_ATTRIBUTE_TYPE type);

/* Byte string argument: NULL with a length is CKR_ARGUMENTS_BAD; above
 * MP_MAX_BYTES is too_long. */
CK_RV put_bytes(mp_enc *e, const void *p, CK_ULONG n, CK_RV too_long);

/* Template argument: array of [type, value]. too_many is returned for more than
 * MAX_TEMPLATE attributes. */
CK_RV put_template(mp_enc *e, const CK_ATTRIBUTE *t, CK_ULONG n, CK_RV too_many);

/* Mechanism argument: [type, params] (CKR_ARGUMENTS_BAD for NULL,
 * CKR_MECHANISM_PARAM_INVALID for a structure of an unknown layout). */
CK_RV put_mechanism(mp_enc *e, const CK_MECHANISM *m);

/* Output capacity: -1 for a NULL buffer, else *len. */
void put_cap(mp_enc *e, const void *buf, const CK_ULONG *len);

/* Finish a call whose outputs are [needed_len, data]; copies data into out. */
CK_RV finish_output(rpc_t *r, CK_RV agent_rv, CK_BYTE_PTR out, CK_ULONG_PTR len);

/* Finish a call whose outputs are [handle] (or [a, b] with two handles). */
CK_RV finish_handles(rpc_t *r, CK_RV agent_rv, CK_ULONG *h1, CK_ULONG *h2);

/* Finish a call whose outputs are [[ulong, ...]] copied with the
 * C_GetSlotList buffer convention (NULL list = count query). */
CK_RV finish_ulong_list(rpc_t *r, CK_RV agent_rv, CK_ULONG *list, CK_ULONG *count);

/* Copy an unpadded bin into a blank-padded fixed field; -1 when too long. */
int pad_field(const mp_doc *d, uint32_t node, unsigned char *field, size_t size);

#endif
