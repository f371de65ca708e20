/* Encoding of templates and mechanisms; decoding of common outputs. */
#include "marshal.h"

#include <string.h>

#include "pkcs11_3x.h"

int attr_is_template(CK_ATTRIBUTE_TYPE type)
{
    return (type & CKF_ARRAY_ATTRIBUTE) != 0 && type != CKA_ALLOWED_MECHANISMS;
}

CK_RV put_bytes(mp_enc *e, const void *p, CK_ULONG n, CK_RV too_long)
{
    if (!p && n)
        return CKR_ARGUMENTS_BAD;
    if (n > MP_MAX_BYTES)
        return too_long;
    mp_put_bin(e, p, (size_t)n);
    return CKR_OK;
}

static CK_RV put_template_at(mp_enc *e, const CK_ATTRIBUTE *t, CK_ULONG n, CK_RV too_many, int depth)
{
    if (n && !t)
        return CKR_ARGUMENTS_BAD;
    if (n > MAX_TEMPLATE)
        return too_many;
    mp_put_array(e, (uint32_t)n);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_RV rv;
        mp_put_array(e, 2);
        mp_put_uint(e, t[i].type);
        if (attr_is_template(t[i].type)) {
            if (depth > 0)
                return CKR_TEMPLATE_INCONSISTENT; /* nesting depth 1 */
            if (!t[i].pValue && t[i].ulValueLen)
                return CKR_ARGUMENTS_BAD;
            if (t[i].ulValueLen % sizeof(CK_ATTRIBUTE))
                return CKR_ATTRIBUTE_VALUE_INVALID;
            rv = put_template_at(e, t[i].pValue, t[i].ulValueLen / sizeof(CK_ATTRIBUTE), too_many, depth + 1);
        } else {
            rv = put_bytes(e, t[i].pValue, t[i].ulValueLen, CKR_ATTRIBUTE_VALUE_INVALID);
        }
        if (rv != CKR_OK)
            return rv;
    }
    return CKR_OK;
}

CK_RV put_template(mp_enc *e, const CK_ATTRIBUTE *t, CK_ULONG n, CK_RV too_many)
{
    return put_template_at(e, t, n, too_many, 0);
}

void put_cap(mp_enc *e, const void *buf, const CK_ULONG *len)
{
    if (!buf)
        mp_put_neg1(e);
    else
        mp_put_uint(e, *len);
}

/* ---- mechanisms ------------------------------------------------------------------ */

static int one_of(CK_MECHANISM_TYPE t, const CK_MECHANISM_TYPE *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] == t)
            return 1;
    return 0;
}

static const CK_MECHANISM_TYPE PSS[] = {
    CKM_RSA_PKCS_PSS,        CKM_SHA1_RSA_PKCS_PSS,   CKM_SHA224_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS,
};

static const CK_MECHANISM_TYPE MAC_GENERAL[] = {
    CKM_MD2_HMAC_GENERAL,        CKM_MD5_HMAC_GENERAL,        CKM_SHA_1_HMAC_GENERAL,
    CKM_RIPEMD128_HMAC_GENERAL,  CKM_RIPEMD160_HMAC_GENERAL,  CKM_SHA224_HMAC_GENERAL,
    CKM_SHA256_HMAC_GENERAL,     CKM_SHA384_HMAC_GENERAL,     CKM_SHA512_HMAC_GENERAL,
    CKM_SHA512_224_HMAC_GENERAL, CKM_SHA512_256_HMAC_GENERAL, CKM_AES_CMAC_GENERAL,
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* A byte string inside a mechanism parameter. */
static int param_bytes_ok(const void *p, CK_ULONG n)
{
    return (p || !n) && n <= MP_MAX_BYTES;
}

static CK_RV put_gcm(mp_enc *e, const unsigned char *p, CK_ULONG len)
{
    const unsigned char *iv, *aad;
    CK_ULONG iv_len, aad_len, tag_bits;
    const size_t P = sizeof(void *), L = sizeof(CK_ULONG);
    if (!p)
        return CKR_MECHANISM_PARAM_INVALID;
    if (len == sizeof(CK_GCM_PARAMS)) {
        /* v2.40 layout: pIv, ulIvLen, ulIvBits, pAAD, ulAADLen, ulTagBits */
        CK_GCM_PARAMS g;
        memcpy(&g, p, sizeof g);
        iv = g.pIv;
        iv_len = g.ulIvLen;
        aad = g.pAAD;
        aad_len = g.ulAADLen;
        tag_bits = g.ulTagBits;
    } else if (len == 2 * P + 3 * L) {
        /* the older layout without ulIvBits: pIv, ulIvLen, pAAD, ulAADLen, ulTagBits */
        memcpy(&iv, p, P);
        memcpy(&iv_len, p + P, L);
        memcpy(&aad, p + P + L, P);
        memcpy(&aad_len, p + 2 * P + L, L);
        memcpy(&tag_bits, p + 2 * P + 2 * L, L);
    } else {
        return CKR_MECHANISM_PARAM_INVALID;
    }
    if (!param_bytes_ok(iv, iv_len) || !param_bytes_ok(aad, aad_len))
        return CKR_MECHANISM_PARAM_INVALID;
    mp_put_map(e, 3);
    mp_put_str(e, "iv");
    mp_put_bin(e, iv, iv_len);
    mp_put_str(e, "aad");
    mp_put_bin(e, aad, aad_len);
    mp_put_str(e, "tag_bits");
    mp_put_uint(e, tag_bits);
    return CKR_OK;
}

/* CKM_ML_DSA and the HashML-DSA variants (PKCS#11 3.2): CK_SIGN_ADDITIONAL_CONTEXT, or for the generic
 * CKM_HASH_ML_DSA CK_HASH_SIGN_ADDITIONAL_CONTEXT, as {"hedge", "context"[, "hash"]}; nil without a parameter
 * (the wire form agreed in the issue 17 notes, pkcs11-3-params.md). */
static CK_RV put_sign_context(mp_enc *e, CK_MECHANISM_TYPE type, const unsigned char *p, CK_ULONG len)
{
    int generic = type == CKM_HASH_ML_DSA;
    if (!p || !len) {
        if (generic)
            return CKR_MECHANISM_PARAM_INVALID; /* the generic variant needs its hash */
        mp_put_nil(e);
        return CKR_OK;
    }
    CK_HASH_SIGN_ADDITIONAL_CONTEXT c;
    memset(&c, 0, sizeof c);
    if (len == sizeof(CK_HASH_SIGN_ADDITIONAL_CONTEXT) && generic) {
        memcpy(&c, p, sizeof c);
    } else if (len == sizeof(CK_SIGN_ADDITIONAL_CONTEXT) && !generic) {
        CK_SIGN_ADDITIONAL_CONTEXT s;
        memcpy(&s, p, sizeof s);
        c.hedgeVariant = s.hedgeVariant;
        c.pContext = s.pContext;
        c.ulContextLen = s.ulContextLen;
    } else {
        return CKR_MECHANISM_PARAM_INVALID;
    }
    if (!param_bytes_ok(c.pContext, c.ulContextLen) || c.ulContextLen > 255)
        return CKR_MECHANISM_PARAM_INVALID; /* FIPS 204: a context string is at most 255 bytes */
    mp_put_map(e, generic ? 3 : 2);
    mp_put_str(e, "hedge");
    mp_put_uint(e, c.hedgeVariant);
    mp_put_str(e, "context");
    mp_put_bin(e, c.pContext, c.ulContextLen);
    if (generic) {
        mp_put_str(e, "hash");
        mp_put_uint(e, c.hash);
    }
    return CKR_OK;
}

/* CKM_HKDF_DERIVE / CKM_HKDF_DATA: CK_HKDF_PARAMS as {"extract", "expand", "prf", "salt_type", "salt",
 * "salt_key", "info"} (salt nil unless CKF_HKDF_SALT_DATA, salt_key nil unless CKF_HKDF_SALT_KEY). */
static CK_RV put_hkdf(mp_enc *e, const unsigned char *p, CK_ULONG len)
{
    if (!p || len != sizeof(CK_HKDF_PARAMS))
        return CKR_MECHANISM_PARAM_INVALID;
    CK_HKDF_PARAMS h;
    memcpy(&h, p, sizeof h);
    if (!param_bytes_ok(h.pInfo, h.ulInfoLen) ||
        (h.ulSaltType == CKF_HKDF_SALT_DATA && !param_bytes_ok(h.pSalt, h.ulSaltLen)))
        return CKR_MECHANISM_PARAM_INVALID;
    mp_put_map(e, 7);
    mp_put_str(e, "extract");
    mp_put_bool(e, h.bExtract != CK_FALSE);
    mp_put_str(e, "expand");
    mp_put_bool(e, h.bExpand != CK_FALSE);
    mp_put_str(e, "prf");
    mp_put_uint(e, h.prfHashMechanism);
    mp_put_str(e, "salt_type");
    mp_put_uint(e, h.ulSaltType);
    mp_put_str(e, "salt");
    if (h.ulSaltType == CKF_HKDF_SALT_DATA)
        mp_put_bin(e, h.pSalt, h.ulSaltLen);
    else
        mp_put_nil(e);
    mp_put_str(e, "salt_key");
    if (h.ulSaltType == CKF_HKDF_SALT_KEY)
        mp_put_uint(e, h.hSaltKey);
    else
        mp_put_nil(e);
    mp_put_str(e, "info");
    mp_put_bin(e, h.pInfo, h.ulInfoLen);
    return CKR_OK;
}

CK_RV put_mechanism(mp_enc *e, const CK_MECHANISM *m)
{
    if (!m)
        return CKR_ARGUMENTS_BAD;
    const unsigned char *p = m->pParameter;
    CK_ULONG len = m->ulParameterLen;
    if (!p && len)
        return CKR_MECHANISM_PARAM_INVALID;

    mp_put_array(e, 2);
    mp_put_uint(e, m->mechanism);

    if (m->mechanism == CKM_AES_GCM)
        return put_gcm(e, p, len);

    if (one_of(m->mechanism, PSS, COUNT(PSS))) {
        if (!p || len != sizeof(CK_RSA_PKCS_PSS_PARAMS))
            return CKR_MECHANISM_PARAM_INVALID;
        CK_RSA_PKCS_PSS_PARAMS s;
        memcpy(&s, p, sizeof s);
        mp_put_map(e, 3);
        mp_put_str(e, "hash");
        mp_put_uint(e, s.hashAlg);
        mp_put_str(e, "mgf");
        mp_put_uint(e, s.mgf);
        mp_put_str(e, "salt_len");
        mp_put_uint(e, s.sLen);
        return CKR_OK;
    }

    if (m->mechanism == CKM_RSA_PKCS_OAEP) {
        if (!p || len != sizeof(CK_RSA_PKCS_OAEP_PARAMS))
            return CKR_MECHANISM_PARAM_INVALID;
        CK_RSA_PKCS_OAEP_PARAMS o;
        memcpy(&o, p, sizeof o);
        if (!param_bytes_ok(o.pSourceData, o.ulSourceDataLen))
            return CKR_MECHANISM_PARAM_INVALID;
        mp_put_map(e, 4);
        mp_put_str(e, "hash");
        mp_put_uint(e, o.hashAlg);
        mp_put_str(e, "mgf");
        mp_put_uint(e, o.mgf);
        mp_put_str(e, "source");
        mp_put_uint(e, o.source);
        mp_put_str(e, "source_data");
        mp_put_bin(e, o.pSourceData, o.ulSourceDataLen);
        return CKR_OK;
    }

    if (m->mechanism == CKM_ECDH1_DERIVE) {
        if (!p || len != sizeof(CK_ECDH1_DERIVE_PARAMS))
            return CKR_MECHANISM_PARAM_INVALID;
        CK_ECDH1_DERIVE_PARAMS d;
        memcpy(&d, p, sizeof d);
        if (!param_bytes_ok(d.pSharedData, d.ulSharedDataLen) || !param_bytes_ok(d.pPublicData, d.ulPublicDataLen))
            return CKR_MECHANISM_PARAM_INVALID;
        mp_put_map(e, 3);
        mp_put_str(e, "kdf");
        mp_put_uint(e, d.kdf);
        mp_put_str(e, "shared_data");
        mp_put_bin(e, d.pSharedData, d.ulSharedDataLen);
        mp_put_str(e, "public_data");
        mp_put_bin(e, d.pPublicData, d.ulPublicDataLen);
        return CKR_OK;
    }

    if (m->mechanism == CKM_AES_CTR) {
        if (!p || len != sizeof(CK_AES_CTR_PARAMS))
            return CKR_MECHANISM_PARAM_INVALID;
        CK_AES_CTR_PARAMS c;
        memcpy(&c, p, sizeof c);
        mp_put_map(e, 2);
        mp_put_str(e, "counter_bits");
        mp_put_uint(e, c.ulCounterBits);
        mp_put_str(e, "cb");
        mp_put_bin(e, c.cb, sizeof c.cb);
        return CKR_OK;
    }

    if (m->mechanism == CKM_EDDSA && p && len) {
        /* PKCS#11 3.0: CK_EDDSA_PARAMS, optional (pure Ed25519 without it) */
        if (len != sizeof(CK_EDDSA_PARAMS))
            return CKR_MECHANISM_PARAM_INVALID;
        CK_EDDSA_PARAMS d;
        memcpy(&d, p, sizeof d);
        if (!param_bytes_ok(d.pContextData, d.ulContextDataLen))
            return CKR_MECHANISM_PARAM_INVALID;
        mp_put_map(e, 2);
        mp_put_str(e, "ph_flag");
        mp_put_bool(e, d.phFlag != CK_FALSE);
        mp_put_str(e, "context_data");
        mp_put_bin(e, d.pContextData, d.ulContextDataLen);
        return CKR_OK;
    }

    if (m->mechanism == CKM_ML_DSA || m->mechanism == CKM_HASH_ML_DSA ||
        (m->mechanism >= CKM_HASH_ML_DSA_SHA224 && m->mechanism <= CKM_HASH_ML_DSA_SHAKE256))
        return put_sign_context(e, m->mechanism, p, len);

    if (m->mechanism == CKM_HKDF_DERIVE || m->mechanism == CKM_HKDF_DATA)
        return put_hkdf(e, p, len);

    if (one_of(m->mechanism, MAC_GENERAL, COUNT(MAC_GENERAL))) {
        CK_ULONG mac_len; /* CK_MAC_GENERAL_PARAMS is a CK_ULONG */
        if (!p || len != sizeof mac_len)
            return CKR_MECHANISM_PARAM_INVALID;
        memcpy(&mac_len, p, sizeof mac_len);
        mp_put_map(e, 1);
        mp_put_str(e, "mac_len");
        mp_put_uint(e, mac_len);
        return CKR_OK;
    }

    /* any other mechanism: the raw parameter bytes, or nil */
    if (!p || !len) {
        mp_put_nil(e);
        return CKR_OK;
    }
    if (len > MP_MAX_BYTES)
        return CKR_MECHANISM_PARAM_INVALID;
    mp_put_bin(e, p, len);
    return CKR_OK;
}

/* ---- outputs ------------------------------------------------------------------------ */

CK_RV finish_output(rpc_t *r, CK_RV agent_rv, CK_BYTE_PTR out, CK_ULONG_PTR len)
{
    if (agent_rv != CKR_OK && agent_rv != CKR_BUFFER_TOO_SMALL) {
        rpc_end(r, 0);
        return agent_rv;
    }
    const mp_doc *d = &r->doc;
    unsigned long needed;
    uint32_t data = mp_elem(d, r->outputs, 1);
    if (r->nout != 2 || mp_get_ulong(d, mp_elem(d, r->outputs, 0), &needed))
        return rpc_end(r, 1);
    if (agent_rv == CKR_BUFFER_TOO_SMALL) {
        /* only when a buffer was given and it is really too small */
        if (!out || !mp_is(d, data, MP_NIL) || needed <= *len)
            return rpc_end(r, 1);
        *len = needed;
    } else if (!out) {
        if (!mp_is(d, data, MP_NIL))
            return rpc_end(r, 1);
        *len = needed;
    } else {
        const uint8_t *p;
        uint32_t n;
        if (mp_get_bin(d, data, &p, &n) || n != needed || n > *len)
            return rpc_end(r, 1);
        if (n)
            memcpy(out, p, n);
        *len = n;
    }
    rpc_end(r, 0);
    return agent_rv;
}

CK_RV finish_handles(rpc_t *r, CK_RV agent_rv, CK_ULONG *h1, CK_ULONG *h2)
{
    if (agent_rv != CKR_OK) {
        rpc_end(r, 0);
        return agent_rv;
    }
    const mp_doc *d = &r->doc;
    unsigned long a, b = 0;
    if (r->nout != (h2 ? 2u : 1u) || mp_get_ulong(d, mp_elem(d, r->outputs, 0), &a) ||
        (h2 && mp_get_ulong(d, mp_elem(d, r->outputs, 1), &b)))
        return rpc_end(r, 1);
    *h1 = a;
    if (h2)
        *h2 = b;
    rpc_end(r, 0);
    return CKR_OK;
}

CK_RV finish_ulong_list(rpc_t *r, CK_RV agent_rv, CK_ULONG *list, CK_ULONG *count)
{
    if (agent_rv != CKR_OK) {
        rpc_end(r, 0);
        return agent_rv;
    }
    const mp_doc *d = &r->doc;
    uint32_t arr = mp_elem(d, r->outputs, 0);
    if (r->nout != 1 || !mp_is(d, arr, MP_ARRAY))
        return rpc_end(r, 1);
    uint32_t n = d->nodes[arr].n;
    unsigned long v;
    for (uint32_t i = 0, c = arr + 1; i < n; i++, c = d->nodes[c].end)
        if (mp_get_ulong(d, c, &v))
            return rpc_end(r, 1);
    CK_RV rv = CKR_OK;
    if (list && *count < n) {
        rv = CKR_BUFFER_TOO_SMALL;
    } else if (list) {
        for (uint32_t i = 0, c = arr + 1; i < n; i++, c = d->nodes[c].end)
            list[i] = d->nodes[c].v.u;
    }
    *count = n;
    rpc_end(r, 0);
    return rv;
}

int pad_field(const mp_doc *d, uint32_t node, unsigned char *field, size_t size)
{
    const uint8_t *p;
    uint32_t n;
    if (mp_get_bin(d, node, &p, &n) || n > size)
        return -1;
    memset(field, ' ', size);
    if (n)
        memcpy(field, p, n);
    return 0;
}
