/*
 * The PKCS#11 3.0 and 3.2 entry points of libstrongroom-pkcs11.so: the interfaces ("PKCS 11" 3.2, 3.0 and the
 * v2.40 list C_GetFunctionList keeps returning), C_LoginUser, C_SessionCancel, message-based AES-GCM
 * (C_MessageEncryptInit ... C_MessageDecryptFinal), C_EncapsulateKey / C_DecapsulateKey, and
 * CKR_FUNCTION_NOT_SUPPORTED for the rest of 3.x. As in p11.c: marshalling only, the agent decides.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

#include "app.h"
#include "marshal.h"
#include "mp.h"
#include "pkcs11_3x.h"
#include "rpc.h"
#include "forward.h"

static CK_RV not_supported(void)
{
    CK_RV rv = state_check();
    return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_SUPPORTED;
}

/* ---- interfaces ------------------------------------------------------------------------------------ */

static CK_FUNCTION_LIST_3_0 list_3_0;
static CK_FUNCTION_LIST_3_2 list_3_2;

static CK_UTF8CHAR interface_name[] = "PKCS 11";

/* Filled on first use: the v2.40 list is p11.c's (the very one C_GetFunctionList answers). The first is the
 * default (PKCS#11 3.2 §5.4). No CKF_INTERFACE_FORK_SAFE: a forked child calls C_Initialize again. */
static CK_INTERFACE interfaces[3];

static pthread_once_t interfaces_once = PTHREAD_ONCE_INIT;

static void fill_interfaces(void)
{
    CK_FUNCTION_LIST_PTR v2 = NULL;
    C_GetFunctionList(&v2);
    interfaces[0] = (CK_INTERFACE){interface_name, &list_3_2, 0};
    interfaces[1] = (CK_INTERFACE){interface_name, &list_3_0, 0};
    interfaces[2] = (CK_INTERFACE){interface_name, v2, 0};
}

static CK_ULONG interface_count(void)
{
    pthread_once(&interfaces_once, fill_interfaces); /* works before C_Initialize, from any thread */
    return 3;
}

static CK_VERSION interface_version(const CK_INTERFACE *i)
{
    return *(const CK_VERSION *)i->pFunctionList; /* every function list starts with its version */
}

EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
{
    if (!pulCount)
        return CKR_ARGUMENTS_BAD;
    CK_ULONG n = interface_count();
    if (!pInterfacesList) {
        *pulCount = n;
        return CKR_OK;
    }
    if (*pulCount < n) {
        *pulCount = n;
        return CKR_BUFFER_TOO_SMALL;
    }
    memcpy(pInterfacesList, interfaces, n * sizeof interfaces[0]);
    *pulCount = n;
    return CKR_OK;
}

EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                            CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags)
{
    if (!ppInterface)
        return CKR_ARGUMENTS_BAD;
    CK_ULONG n = interface_count();
    for (CK_ULONG i = 0; i < n; i++) {
        CK_INTERFACE *it = &interfaces[i];
        CK_VERSION v = interface_version(it);
        if (pInterfaceName && strcmp((const char *)pInterfaceName, (const char *)it->pInterfaceName) != 0)
            continue;
        if (pVersion && (pVersion->major != v.major || pVersion->minor != v.minor))
            continue;
        if ((it->flags & flags) != flags)
            continue;
        *ppInterface = it;
        return CKR_OK;
    }
    return CKR_ARGUMENTS_BAD; /* no such interface (PKCS#11 3.2 §5.4.2) */
}

/* ---- session management ---------------------------------------------------------------------------- */

EXPORT CK_RV C_LoginUser(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                         CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen)
{
    if (!pUsername || !ulUsernameLen) /* no user name: C_Login's rules (username:password in the PIN) */
        return C_Login(hSession, userType, pPin, ulPinLen);
    BEGIN("C_LoginUser", 4, RPC_TOKEN);
    REQUIRE(pPin, CKR_ARGUMENTS_BAD); /* no protected authentication path */
    REQUIRE(!memchr(pUsername, ':', ulUsernameLen), CKR_PIN_INCORRECT); /* no Strongroom user name has one */
    r.enc.secret = 1;
    mp_put_uint(&r.enc, hSession);
    mp_put_uint(&r.enc, userType);
    ARG(put_bytes(&r.enc, pPin, ulPinLen, CKR_PIN_LEN_RANGE));
    ARG(put_bytes(&r.enc, pUsername, ulUsernameLen, CKR_ARGUMENTS_BAD));
    CALL();
    rpc_end(&r, 0);
    if (arv == CKR_OK && (userType == CKU_USER || userType == CKU_SO) && ulUsernameLen + 1 + ulPinLen <= 4096) {
        /* Kept as C_Login's PIN would be (username:password), to log in again after an agent restart. */
        unsigned char *both = malloc(ulUsernameLen + 1 + ulPinLen);
        if (both) {
            memcpy(both, pUsername, ulUsernameLen);
            both[ulUsernameLen] = ':';
            memcpy(both + ulUsernameLen + 1, pPin, ulPinLen);
            app_logged_in(userType, both, ulUsernameLen + 1 + ulPinLen);
            volatile unsigned char *w = both;
            for (CK_ULONG i = 0; i < ulUsernameLen + 1 + ulPinLen; i++)
                w[i] = 0;
            free(both);
        }
    }
    return arv;
}

EXPORT CK_RV C_SessionCancel(CK_SESSION_HANDLE hSession, CK_FLAGS flags)
{
    BEGIN("C_SessionCancel", 2, RPC_TOKEN);
    mp_put_uint(&r.enc, hSession);
    mp_put_uint(&r.enc, flags);
    return rpc_simple(&r);
}

/* ---- message-based encryption and decryption (AES-GCM) -------------------------------------------------- */

/* The mechanism of C_MessageEncryptInit / C_MessageDecryptInit: AES-GCM's parameters come with each message,
 * so its own parameter (NULL, or anything) is not sent; another mechanism goes as put_mechanism sends it. */
static CK_RV put_message_mechanism(mp_enc *e, const CK_MECHANISM *m)
{
    if (!m)
        return CKR_ARGUMENTS_BAD;
    if (m->mechanism != CKM_AES_GCM)
        return put_mechanism(e, m);
    mp_put_array(e, 2);
    mp_put_uint(e, m->mechanism);
    mp_put_nil(e);
    return CKR_OK;
}

/* A message's CK_GCM_MESSAGE_PARAMS, read field by field: {iv, iv_fixed_bits, generator, tag_bits, tag}. The tag
 * is sent only when decrypting (with_tag: the tag to check); encrypting writes it back. */
static CK_RV put_gcm_message(mp_enc *e, const void *param, CK_ULONG len, int with_tag, CK_GCM_MESSAGE_PARAMS *out)
{
    if (!param || len != sizeof(CK_GCM_MESSAGE_PARAMS))
        return CKR_MECHANISM_PARAM_INVALID;
    CK_GCM_MESSAGE_PARAMS g;
    memcpy(&g, param, sizeof g);
    if (!g.pIv || g.ulIvLen == 0 || g.ulIvLen > 256 || g.ulIvFixedBits > 8 * g.ulIvLen || !g.pTag ||
        g.ulTagBits == 0 || g.ulTagBits > 128 || g.ulTagBits % 8)
        return CKR_MECHANISM_PARAM_INVALID;
    mp_put_map(e, 5);
    mp_put_str(e, "iv");
    mp_put_bin(e, g.pIv, g.ulIvLen);
    mp_put_str(e, "iv_fixed_bits");
    mp_put_uint(e, g.ulIvFixedBits);
    mp_put_str(e, "generator");
    mp_put_uint(e, g.ivGenerator);
    mp_put_str(e, "tag_bits");
    mp_put_uint(e, g.ulTagBits);
    mp_put_str(e, "tag");
    if (with_tag)
        mp_put_bin(e, g.pTag, g.ulTagBits / 8);
    else
        mp_put_nil(e);
    if (out)
        *out = g;
    return CKR_OK;
}

/* An output node that is nil, or a bin of exactly n bytes. 0 when it is one of those. */
static int bin_or_nil(const mp_doc *d, uint32_t node, CK_ULONG n, const uint8_t **p)
{
    uint32_t len;
    *p = NULL;
    if (mp_is(d, node, MP_NIL))
        return 0;
    return mp_get_bin(d, node, p, &len) || len != n ? -1 : 0;
}

/* Finish [needed_len, data, iv, tag] (encrypt) or [needed_len, data] (decrypt): the buffer convention of
 * finish_output, then the IV the token chose and the tag written into the message's parameters. Everything
 * is checked before anything is written. */
static CK_RV finish_message(rpc_t *r, CK_RV arv, CK_BYTE_PTR out, CK_ULONG_PTR out_len, const CK_GCM_MESSAGE_PARAMS *g,
                            int iv_out, int tag_out, int tag_due)
{
    if (arv != CKR_OK && arv != CKR_BUFFER_TOO_SMALL) {
        rpc_end(r, 0);
        return arv;
    }
    const mp_doc *d = &r->doc;
    unsigned long needed;
    uint32_t want = 2u + (iv_out || tag_out ? 2u : 0u);
    if (r->nout != want || mp_get_ulong(d, mp_elem(d, r->outputs, 0), &needed))
        return rpc_end(r, 1);
    uint32_t data = mp_elem(d, r->outputs, 1);
    const uint8_t *iv = NULL, *tag = NULL, *p = NULL;
    uint32_t n = 0;
    if (want == 4 && (bin_or_nil(d, mp_elem(d, r->outputs, 2), g->ulIvLen, &iv) ||
                      bin_or_nil(d, mp_elem(d, r->outputs, 3), g->ulTagBits / 8, &tag)))
        return rpc_end(r, 1);
    if (arv == CKR_BUFFER_TOO_SMALL || !out) {
        if (!mp_is(d, data, MP_NIL) || iv || tag || (arv == CKR_BUFFER_TOO_SMALL && (!out || needed <= *out_len)))
            return rpc_end(r, 1);
        *out_len = needed;
        rpc_end(r, 0);
        return arv;
    }
    if (mp_get_bin(d, data, &p, &n) || n != needed || n > *out_len || (iv_out && !iv) || (tag_due && !tag))
        return rpc_end(r, 1);
    if (n)
        memcpy(out, p, n);
    *out_len = n;
    if (iv)
        memcpy(g->pIv, iv, g->ulIvLen);
    if (tag)
        memcpy(g->pTag, tag, g->ulTagBits / 8);
    rpc_end(r, 0);
    return CKR_OK;
}

static CK_RV message_init(const char *fn, CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key)
{
    BEGIN(fn, 3, RPC_TOKEN);
    mp_put_uint(&r.enc, s);
    ARG(put_message_mechanism(&r.enc, m));
    mp_put_uint(&r.enc, key);
    return rpc_simple(&r);
}

static CK_RV message_simple(const char *fn, CK_SESSION_HANDLE s)
{
    BEGIN(fn, 1, RPC_TOKEN);
    mp_put_uint(&r.enc, s);
    return rpc_simple(&r);
}

/* C_EncryptMessage / C_DecryptMessage: one whole message. */
static CK_RV message_one(const char *fn, int encrypt, CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG param_len,
                         CK_BYTE_PTR aad, CK_ULONG aad_len, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out,
                         CK_ULONG_PTR out_len)
{
    BEGIN(fn, 5, RPC_TOKEN);
    REQUIRE(out_len, CKR_ARGUMENTS_BAD);
    CK_GCM_MESSAGE_PARAMS g;
    mp_put_uint(&r.enc, s);
    ARG(put_gcm_message(&r.enc, param, param_len, !encrypt, &g));
    ARG(put_bytes(&r.enc, aad, aad_len, CKR_DATA_LEN_RANGE));
    ARG(put_bytes(&r.enc, in, in_len, encrypt ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE));
    put_cap(&r.enc, out, out_len);
    CALL();
    return finish_message(&r, arv, out, out_len, &g, encrypt, encrypt, encrypt);
}

/* C_EncryptMessageBegin / C_DecryptMessageBegin: the message's parameters and associated data; an encryption
 * answers the IV it will use ([iv]), written into the parameters now. */
static CK_RV message_begin(const char *fn, int encrypt, CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG param_len,
                           CK_BYTE_PTR aad, CK_ULONG aad_len)
{
    BEGIN(fn, 3, RPC_TOKEN);
    CK_GCM_MESSAGE_PARAMS g;
    mp_put_uint(&r.enc, s);
    ARG(put_gcm_message(&r.enc, param, param_len, 0, &g));
    ARG(put_bytes(&r.enc, aad, aad_len, CKR_DATA_LEN_RANGE));
    CALL();
    if (arv != CKR_OK) {
        rpc_end(&r, 0);
        return arv;
    }
    const uint8_t *iv = NULL;
    if (r.nout != (encrypt ? 1u : 0u) ||
        (encrypt && (bin_or_nil(&r.doc, mp_elem(&r.doc, r.outputs, 0), g.ulIvLen, &iv) || !iv)))
        return rpc_end(&r, 1);
    if (iv)
        memcpy(g.pIv, iv, g.ulIvLen);
    rpc_end(&r, 0);
    return CKR_OK;
}

/* C_EncryptMessageNext / C_DecryptMessageNext: a part; CKF_END_OF_MESSAGE ends the message (an encryption
 * writes the tag into the parameters, a decryption checks the parameters' tag). */
static CK_RV message_next(const char *fn, int encrypt, CK_SESSION_HANDLE s, CK_VOID_PTR param, CK_ULONG param_len,
                          CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len, CK_FLAGS flags)
{
    BEGIN(fn, 5, RPC_TOKEN);
    REQUIRE(out_len, CKR_ARGUMENTS_BAD);
    CK_GCM_MESSAGE_PARAMS g;
    mp_put_uint(&r.enc, s);
    ARG(put_gcm_message(&r.enc, param, param_len, !encrypt && (flags & CKF_END_OF_MESSAGE), &g));
    ARG(put_bytes(&r.enc, in, in_len, encrypt ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE));
    put_cap(&r.enc, out, out_len);
    mp_put_uint(&r.enc, flags);
    CALL();
    return finish_message(&r, arv, out, out_len, &g, 0, encrypt, encrypt && (flags & CKF_END_OF_MESSAGE));
}

EXPORT CK_RV C_MessageEncryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return message_init("C_MessageEncryptInit", hSession, pMechanism, hKey);
}

EXPORT CK_RV C_EncryptMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                              CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pPlaintext,
                              CK_ULONG ulPlaintextLen, CK_BYTE_PTR pCiphertext, CK_ULONG_PTR pulCiphertextLen)
{
    return message_one("C_EncryptMessage", 1, hSession, pParameter, ulParameterLen, pAssociatedData,
                       ulAssociatedDataLen, pPlaintext, ulPlaintextLen, pCiphertext, pulCiphertextLen);
}

EXPORT CK_RV C_EncryptMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                                   CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen)
{
    return message_begin("C_EncryptMessageBegin", 1, hSession, pParameter, ulParameterLen, pAssociatedData,
                         ulAssociatedDataLen);
}

EXPORT CK_RV C_EncryptMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                                  CK_BYTE_PTR pPlaintextPart, CK_ULONG ulPlaintextPartLen, CK_BYTE_PTR pCiphertextPart,
                                  CK_ULONG_PTR pulCiphertextPartLen, CK_FLAGS flags)
{
    return message_next("C_EncryptMessageNext", 1, hSession, pParameter, ulParameterLen, pPlaintextPart,
                        ulPlaintextPartLen, pCiphertextPart, pulCiphertextPartLen, flags);
}

EXPORT CK_RV C_MessageEncryptFinal(CK_SESSION_HANDLE hSession)
{
    return message_simple("C_MessageEncryptFinal", hSession);
}

EXPORT CK_RV C_MessageDecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return message_init("C_MessageDecryptInit", hSession, pMechanism, hKey);
}

EXPORT CK_RV C_DecryptMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                              CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pCiphertext,
                              CK_ULONG ulCiphertextLen, CK_BYTE_PTR pPlaintext, CK_ULONG_PTR pulPlaintextLen)
{
    return message_one("C_DecryptMessage", 0, hSession, pParameter, ulParameterLen, pAssociatedData,
                       ulAssociatedDataLen, pCiphertext, ulCiphertextLen, pPlaintext, pulPlaintextLen);
}

EXPORT CK_RV C_DecryptMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                                   CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen)
{
    return message_begin("C_DecryptMessageBegin", 0, hSession, pParameter, ulParameterLen, pAssociatedData,
                         ulAssociatedDataLen);
}

EXPORT CK_RV C_DecryptMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                                  CK_BYTE_PTR pCiphertextPart, CK_ULONG ulCiphertextPartLen, CK_BYTE_PTR pPlaintextPart,
                                  CK_ULONG_PTR pulPlaintextPartLen, CK_FLAGS flags)
{
    return message_next("C_DecryptMessageNext", 0, hSession, pParameter, ulParameterLen, pCiphertextPart,
                        ulCiphertextPartLen, pPlaintextPart, pulPlaintextPartLen, flags);
}

EXPORT CK_RV C_MessageDecryptFinal(CK_SESSION_HANDLE hSession)
{
    return message_simple("C_MessageDecryptFinal", hSession);
}

/* ---- message-based signing and verification: not offered ------------------------------------------------ */

EXPORT CK_RV C_MessageSignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    (void)hSession, (void)pMechanism, (void)hKey;
    return not_supported();
}

EXPORT CK_RV C_SignMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                           CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
    (void)hSession, (void)pParameter, (void)ulParameterLen, (void)pData, (void)ulDataLen, (void)pSignature,
        (void)pulSignatureLen;
    return not_supported();
}

EXPORT CK_RV C_SignMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen)
{
    (void)hSession, (void)pParameter, (void)ulParameterLen;
    return not_supported();
}

EXPORT CK_RV C_SignMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                               CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                               CK_ULONG_PTR pulSignatureLen)
{
    (void)hSession, (void)pParameter, (void)ulParameterLen, (void)pData, (void)ulDataLen, (void)pSignature,
        (void)pulSignatureLen;
    return not_supported();
}

EXPORT CK_RV C_MessageSignFinal(CK_SESSION_HANDLE hSession)
{
    (void)hSession;
    return not_supported();
}

EXPORT CK_RV C_MessageVerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    (void)hSession, (void)pMechanism, (void)hKey;
    return not_supported();
}

EXPORT CK_RV C_VerifyMessage(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                             CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
    (void)hSession, (void)pParameter, (void)ulParameterLen, (void)pData, (void)ulDataLen, (void)pSignature,
        (void)ulSignatureLen;
    return not_supported();
}

EXPORT CK_RV C_VerifyMessageBegin(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen)
{
    (void)hSession, (void)pParameter, (void)ulParameterLen;
    return not_supported();
}

EXPORT CK_RV C_VerifyMessageNext(CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter, CK_ULONG ulParameterLen,
                                 CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
    (void)hSession, (void)pParameter, (void)ulParameterLen, (void)pData, (void)ulDataLen, (void)pSignature,
        (void)ulSignatureLen;
    return not_supported();
}

EXPORT CK_RV C_MessageVerifyFinal(CK_SESSION_HANDLE hSession)
{
    (void)hSession;
    return not_supported();
}

/* ---- key encapsulation (3.2) ------------------------------------------------------------------------------ */

EXPORT CK_RV C_EncapsulateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hPublicKey,
                              CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_BYTE_PTR pCiphertext,
                              CK_ULONG_PTR pulCiphertextLen, CK_OBJECT_HANDLE_PTR phKey)
{
    BEGIN("C_EncapsulateKey", 5, RPC_TOKEN);
    REQUIRE(pulCiphertextLen && phKey, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    ARG(put_mechanism(&r.enc, pMechanism));
    mp_put_uint(&r.enc, hPublicKey);
    ARG(put_template(&r.enc, pTemplate, ulAttributeCount, CKR_TEMPLATE_INCONSISTENT));
    put_cap(&r.enc, pCiphertext, pulCiphertextLen);
    CALL();
    if (arv != CKR_OK && arv != CKR_BUFFER_TOO_SMALL) {
        rpc_end(&r, 0);
        return arv;
    }
    /* [needed_len, ciphertext or nil, key handle or nil]: the key exists only when the ciphertext came. */
    const mp_doc *d = &r.doc;
    unsigned long needed, key = 0;
    const uint8_t *p;
    uint32_t n;
    uint32_t data = mp_elem(d, r.outputs, 1), handle = mp_elem(d, r.outputs, 2);
    if (r.nout != 3 || mp_get_ulong(d, mp_elem(d, r.outputs, 0), &needed))
        return rpc_end(&r, 1);
    if (arv == CKR_BUFFER_TOO_SMALL || !pCiphertext) {
        if (!mp_is(d, data, MP_NIL) || !mp_is(d, handle, MP_NIL) ||
            (arv == CKR_BUFFER_TOO_SMALL && (!pCiphertext || needed <= *pulCiphertextLen)))
            return rpc_end(&r, 1);
        *pulCiphertextLen = needed;
        rpc_end(&r, 0);
        return arv;
    }
    if (mp_get_bin(d, data, &p, &n) || n != needed || n > *pulCiphertextLen || mp_get_ulong(d, handle, &key))
        return rpc_end(&r, 1);
    memcpy(pCiphertext, p, n);
    *pulCiphertextLen = n;
    *phKey = key;
    rpc_end(&r, 0);
    return CKR_OK;
}

EXPORT CK_RV C_DecapsulateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hPrivateKey,
                              CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_BYTE_PTR pCiphertext,
                              CK_ULONG ulCiphertextLen, CK_OBJECT_HANDLE_PTR phKey)
{
    BEGIN("C_DecapsulateKey", 5, RPC_TOKEN);
    REQUIRE(phKey, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    ARG(put_mechanism(&r.enc, pMechanism));
    mp_put_uint(&r.enc, hPrivateKey);
    ARG(put_template(&r.enc, pTemplate, ulAttributeCount, CKR_TEMPLATE_INCONSISTENT));
    ARG(put_bytes(&r.enc, pCiphertext, ulCiphertextLen, CKR_ARGUMENTS_BAD));
    CALL();
    return finish_handles(&r, arv, phKey, NULL);
}

/* ---- the rest of 3.2: not offered ------------------------------------------------------------------------- */

EXPORT CK_RV C_VerifySignatureInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey,
                                   CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
    (void)hSession, (void)pMechanism, (void)hKey, (void)pSignature, (void)ulSignatureLen;
    return not_supported();
}

EXPORT CK_RV C_VerifySignature(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen)
{
    (void)hSession, (void)pData, (void)ulDataLen;
    return not_supported();
}

EXPORT CK_RV C_VerifySignatureUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
    (void)hSession, (void)pPart, (void)ulPartLen;
    return not_supported();
}

EXPORT CK_RV C_VerifySignatureFinal(CK_SESSION_HANDLE hSession)
{
    (void)hSession;
    return not_supported();
}

EXPORT CK_RV C_GetSessionValidationFlags(CK_SESSION_HANDLE hSession, CK_SESSION_VALIDATION_FLAGS_TYPE type,
                                         CK_FLAGS_PTR pFlags)
{
    (void)hSession, (void)type, (void)pFlags;
    return not_supported();
}

EXPORT CK_RV C_AsyncComplete(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pFunctionName, CK_ASYNC_DATA *pResult)
{
    (void)hSession, (void)pFunctionName, (void)pResult;
    return not_supported();
}

EXPORT CK_RV C_AsyncGetID(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pFunctionName, CK_ULONG_PTR pulID)
{
    (void)hSession, (void)pFunctionName, (void)pulID;
    return not_supported();
}

EXPORT CK_RV C_AsyncJoin(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pFunctionName, CK_ULONG ulID, CK_BYTE_PTR pData,
                         CK_ULONG ulData)
{
    (void)hSession, (void)pFunctionName, (void)ulID, (void)pData, (void)ulData;
    return not_supported();
}

EXPORT CK_RV C_WrapKeyAuthenticated(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                    CK_OBJECT_HANDLE hWrappingKey, CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pAssociatedData,
                                    CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen)
{
    (void)hSession, (void)pMechanism, (void)hWrappingKey, (void)hKey, (void)pAssociatedData,
        (void)ulAssociatedDataLen, (void)pWrappedKey, (void)pulWrappedKeyLen;
    return not_supported();
}

EXPORT CK_RV C_UnwrapKeyAuthenticated(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                      CK_OBJECT_HANDLE hUnwrappingKey, CK_BYTE_PTR pWrappedKey,
                                      CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount,
                                      CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen,
                                      CK_OBJECT_HANDLE_PTR phKey)
{
    (void)hSession, (void)pMechanism, (void)hUnwrappingKey, (void)pWrappedKey, (void)ulWrappedKeyLen,
        (void)pTemplate, (void)ulAttributeCount, (void)pAssociatedData, (void)ulAssociatedDataLen, (void)phKey;
    return not_supported();
}

/* ---- the 3.x function lists --------------------------------------------------------------------------------- */

/* C_GetInfo through a 3.x list: the spec wants CK_INFO's cryptokiVersion to match the list's version, while the
 * v2.40 list (C_GetFunctionList's) keeps answering 2.40. */
static CK_RV get_info_as(CK_INFO_PTR pInfo, CK_BYTE major, CK_BYTE minor)
{
    CK_RV rv = C_GetInfo(pInfo);
    if (rv == CKR_OK) {
        pInfo->cryptokiVersion.major = major;
        pInfo->cryptokiVersion.minor = minor;
    }
    return rv;
}

static CK_RV get_info_3_0(CK_INFO_PTR pInfo)
{
    return get_info_as(pInfo, 3, 0);
}

static CK_RV get_info_3_2(CK_INFO_PTR pInfo)
{
    return get_info_as(pInfo, 3, 2);
}

#define SR_LIST_2_40(get_info)                                                                               \
    C_Initialize, C_Finalize, get_info, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo,     \
        C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN, C_SetPIN, C_OpenSession, C_CloseSession, \
        C_CloseAllSessions, C_GetSessionInfo, C_GetOperationState, C_SetOperationState, C_Login, C_Logout,    \
        C_CreateObject, C_CopyObject, C_DestroyObject, C_GetObjectSize, C_GetAttributeValue,                  \
        C_SetAttributeValue, C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal, C_EncryptInit, C_Encrypt,  \
        C_EncryptUpdate, C_EncryptFinal, C_DecryptInit, C_Decrypt, C_DecryptUpdate, C_DecryptFinal,           \
        C_DigestInit, C_Digest, C_DigestUpdate, C_DigestKey, C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, \
        C_SignFinal, C_SignRecoverInit, C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal, \
        C_VerifyRecoverInit, C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate,                   \
        C_SignEncryptUpdate, C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair, C_WrapKey, C_UnwrapKey, \
        C_DeriveKey, C_SeedRandom, C_GenerateRandom, C_GetFunctionStatus, C_CancelFunction, C_WaitForSlotEvent

#define SR_LIST_3_0                                                                                          \
    C_GetInterfaceList, C_GetInterface, C_LoginUser, C_SessionCancel, C_MessageEncryptInit, C_EncryptMessage, \
        C_EncryptMessageBegin, C_EncryptMessageNext, C_MessageEncryptFinal, C_MessageDecryptInit,             \
        C_DecryptMessage, C_DecryptMessageBegin, C_DecryptMessageNext, C_MessageDecryptFinal,                 \
        C_MessageSignInit, C_SignMessage, C_SignMessageBegin, C_SignMessageNext, C_MessageSignFinal,          \
        C_MessageVerifyInit, C_VerifyMessage, C_VerifyMessageBegin, C_VerifyMessageNext, C_MessageVerifyFinal

static CK_FUNCTION_LIST_3_0 list_3_0 = {{3, 0}, SR_LIST_2_40(get_info_3_0), SR_LIST_3_0};

static CK_FUNCTION_LIST_3_2 list_3_2 = {
    {3, 2},
    SR_LIST_2_40(get_info_3_2),
    SR_LIST_3_0,
    C_EncapsulateKey,
    C_DecapsulateKey,
    C_VerifySignatureInit,
    C_VerifySignature,
    C_VerifySignatureUpdate,
    C_VerifySignatureFinal,
    C_GetSessionValidationFlags,
    C_AsyncComplete,
    C_AsyncGetID,
    C_AsyncJoin,
    C_WrapKeyAuthenticated,
    C_UnwrapKeyAuthenticated,
};
