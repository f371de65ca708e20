/*
 * The PKCS#11 v2.40 entry points of libstrongroom-pkcs11.so.
 *
 * Every function either answers from constants (docs/agent-protocol.md,
 * "Answered by the module alone") or marshals its arguments into one request
 * to the agent and unmarshals the reply. No crypto, no policy: the agent
 * decides every rv except argument errors the module can see locally.
 */
#include <string.h>

#include <p11-kit/pkcs11.h>

#include "app.h"
#include "marshal.h"
#include "mp.h"
#include "rpc.h"
#include "forward.h"

#define LIB_VERSION_MAJOR 0
#define LIB_VERSION_MINOR 1

static CK_FUNCTION_LIST function_list;

static int get_version(const mp_doc *d, uint32_t node, CK_VERSION *v);

static void blank(unsigned char *field, size_t size, const char *text)
{
    size_t n = strlen(text);
    memset(field, ' ', size);
    memcpy(field, text, n < size ? n : size);
}

/* ---- general purpose -------------------------------------------------------------- */

EXPORT CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
    return lib_initialize(pInitArgs);
}

EXPORT CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
    return lib_finalize(pReserved);
}

EXPORT CK_RV C_GetInfo(CK_INFO_PTR pInfo)
{
    CK_RV rv = state_check();
    if (rv != CKR_OK)
        return rv;
    if (!pInfo)
        return CKR_ARGUMENTS_BAD;
    CK_INFO info;
    memset(&info, 0, sizeof info);
    info.cryptokiVersion.major = CRYPTOKI_VERSION_MAJOR;
    info.cryptokiVersion.minor = CRYPTOKI_VERSION_MINOR;
    blank(info.manufacturerID, sizeof info.manufacturerID, "Strongroom");
    info.flags = 0;
    blank(info.libraryDescription, sizeof info.libraryDescription, "Strongroom PKCS#11 module");
    info.libraryVersion.major = LIB_VERSION_MAJOR;
    info.libraryVersion.minor = LIB_VERSION_MINOR;
    /* The installed Strongroom's version, as the agent tells it; the module's own when it cannot. */
    rpc_t r;
    CK_RV arv;
    if (rpc_begin(&r, "C_GetInfo", 0, RPC_NOTOKEN) == CKR_OK && rpc_call(&r, &arv) == CKR_OK) {
        uint32_t m = mp_elem(&r.doc, r.outputs, 0);
        CK_VERSION v;
        if (arv == CKR_OK && r.nout == 1 && mp_is(&r.doc, m, MP_MAP) &&
            get_version(&r.doc, mp_map_get(&r.doc, m, "library"), &v) == 0)
            info.libraryVersion = v;
        rpc_end(&r, 0);
    }
    *pInfo = info;
    return CKR_OK;
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    if (!ppFunctionList)
        return CKR_ARGUMENTS_BAD;
    *ppFunctionList = &function_list;
    return CKR_OK;
}

/* ---- slots and tokens -------------------------------------------------------------- */

EXPORT CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
    BEGIN("C_GetSlotList", 1, RPC_NOTOKEN);
    REQUIRE(pulCount, CKR_ARGUMENTS_BAD);
    mp_put_bool(&r.enc, tokenPresent != CK_FALSE);
    CALL();
    return finish_ulong_list(&r, arv, pSlotList, pulCount);
}

static int get_version(const mp_doc *d, uint32_t node, CK_VERSION *v)
{
    uint64_t major, minor;
    if (!mp_is(d, node, MP_ARRAY) || d->nodes[node].n != 2 || mp_get_uint(d, mp_elem(d, node, 0), &major) ||
        mp_get_uint(d, mp_elem(d, node, 1), &minor) || major > 255 || minor > 255)
        return -1;
    v->major = (CK_BYTE)major;
    v->minor = (CK_BYTE)minor;
    return 0;
}

EXPORT CK_RV C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
    BEGIN("C_GetSlotInfo", 1, RPC_SLOTINFO);
    REQUIRE(pInfo, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, slotID);
    CALL();
    if (arv != CKR_OK) {
        rpc_end(&r, 0);
        return arv;
    }
    const mp_doc *d = &r.doc;
    uint32_t m = mp_elem(d, r.outputs, 0);
    CK_SLOT_INFO info;
    memset(&info, 0, sizeof info);
    if (r.nout != 1 || !mp_is(d, m, MP_MAP) ||
        pad_field(d, mp_map_get(d, m, "description"), info.slotDescription, sizeof info.slotDescription) ||
        pad_field(d, mp_map_get(d, m, "manufacturer"), info.manufacturerID, sizeof info.manufacturerID) ||
        mp_get_ulong(d, mp_map_get(d, m, "flags"), &info.flags) ||
        get_version(d, mp_map_get(d, m, "hw"), &info.hardwareVersion) ||
        get_version(d, mp_map_get(d, m, "fw"), &info.firmwareVersion))
        return rpc_end(&r, 1);
    *pInfo = info;
    rpc_end(&r, 0);
    return CKR_OK;
}

EXPORT CK_RV C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
    BEGIN("C_GetTokenInfo", 1, RPC_TOKEN);
    REQUIRE(pInfo, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, slotID);
    CALL();
    if (arv != CKR_OK) {
        rpc_end(&r, 0);
        return arv;
    }
    const mp_doc *d = &r.doc;
    uint32_t m = mp_elem(d, r.outputs, 0);
    CK_TOKEN_INFO t;
    memset(&t, 0, sizeof t);
    struct {
        const char *key;
        CK_ULONG *field;
    } ulongs[] = {
        {"flags", &t.flags},
        {"max_session_count", &t.ulMaxSessionCount},
        {"session_count", &t.ulSessionCount},
        {"max_rw_session_count", &t.ulMaxRwSessionCount},
        {"rw_session_count", &t.ulRwSessionCount},
        {"max_pin_len", &t.ulMaxPinLen},
        {"min_pin_len", &t.ulMinPinLen},
        {"total_public_memory", &t.ulTotalPublicMemory},
        {"free_public_memory", &t.ulFreePublicMemory},
        {"total_private_memory", &t.ulTotalPrivateMemory},
        {"free_private_memory", &t.ulFreePrivateMemory},
    };
    int bad = r.nout != 1 || !mp_is(d, m, MP_MAP) ||
              pad_field(d, mp_map_get(d, m, "label"), t.label, sizeof t.label) ||
              pad_field(d, mp_map_get(d, m, "manufacturer"), t.manufacturerID, sizeof t.manufacturerID) ||
              pad_field(d, mp_map_get(d, m, "model"), t.model, sizeof t.model) ||
              pad_field(d, mp_map_get(d, m, "serial"), t.serialNumber, sizeof t.serialNumber) ||
              pad_field(d, mp_map_get(d, m, "utc_time"), t.utcTime, sizeof t.utcTime) ||
              get_version(d, mp_map_get(d, m, "hw"), &t.hardwareVersion) ||
              get_version(d, mp_map_get(d, m, "fw"), &t.firmwareVersion);
    for (size_t i = 0; !bad && i < sizeof ulongs / sizeof ulongs[0]; i++)
        bad = mp_get_ulong(d, mp_map_get(d, m, ulongs[i].key), ulongs[i].field);
    if (bad)
        return rpc_end(&r, 1);
    *pInfo = t;
    rpc_end(&r, 0);
    return CKR_OK;
}

EXPORT CK_RV C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved)
{
    CK_RV rv = state_check();
    if (rv != CKR_OK)
        return rv;
    if (!pSlot || pReserved)
        return CKR_ARGUMENTS_BAD;
    /* The one slot's token (the cluster) never leaves or arrives: no event, ever. Waiting for one that
     * cannot come would block the caller until C_Finalize, which the module does not do. */
    return (flags & CKF_DONT_BLOCK) ? CKR_NO_EVENT : CKR_FUNCTION_NOT_SUPPORTED;
}

EXPORT CK_RV C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount)
{
    BEGIN("C_GetMechanismList", 1, RPC_TOKEN);
    REQUIRE(pulCount, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, slotID);
    CALL();
    return finish_ulong_list(&r, arv, pMechanismList, pulCount);
}

EXPORT CK_RV C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo)
{
    BEGIN("C_GetMechanismInfo", 2, RPC_TOKEN);
    REQUIRE(pInfo, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, slotID);
    mp_put_uint(&r.enc, type);
    CALL();
    if (arv != CKR_OK) {
        rpc_end(&r, 0);
        return arv;
    }
    const mp_doc *d = &r.doc;
    CK_MECHANISM_INFO info;
    if (r.nout != 3 || mp_get_ulong(d, mp_elem(d, r.outputs, 0), &info.ulMinKeySize) ||
        mp_get_ulong(d, mp_elem(d, r.outputs, 1), &info.ulMaxKeySize) ||
        mp_get_ulong(d, mp_elem(d, r.outputs, 2), &info.flags))
        return rpc_end(&r, 1);
    *pInfo = info;
    rpc_end(&r, 0);
    return CKR_OK;
}

EXPORT CK_RV C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel)
{
    (void)slotID;
    (void)pPin;
    (void)ulPinLen;
    (void)pLabel;
    CK_RV rv = state_check();
    return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_SUPPORTED; /* users: `strongroom user ...` */
}

EXPORT CK_RV C_InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
    BEGIN("C_InitPIN", 2, RPC_TOKEN);
    REQUIRE(pPin, CKR_ARGUMENTS_BAD); /* no protected authentication path */
    r.enc.secret = 1;
    mp_put_uint(&r.enc, hSession);
    ARG(put_bytes(&r.enc, pPin, ulPinLen, CKR_PIN_LEN_RANGE));
    return rpc_simple(&r);
}

EXPORT CK_RV C_SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen,
                      CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen)
{
    BEGIN("C_SetPIN", 3, RPC_TOKEN);
    REQUIRE(pOldPin && pNewPin, CKR_ARGUMENTS_BAD);
    r.enc.secret = 1;
    mp_put_uint(&r.enc, hSession);
    ARG(put_bytes(&r.enc, pOldPin, ulOldLen, CKR_PIN_LEN_RANGE));
    ARG(put_bytes(&r.enc, pNewPin, ulNewLen, CKR_PIN_LEN_RANGE));
    rv = rpc_simple(&r);
    if (rv == CKR_OK)
        app_pin_changed(pNewPin, ulNewLen); /* an agent restart logs in with the new password */
    return rv;
}

/* ---- sessions ------------------------------------------------------------------------- */

EXPORT CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
                           CK_SESSION_HANDLE_PTR phSession)
{
    (void)pApplication; /* the module never calls Notify (no surrender callbacks) */
    (void)Notify;
    BEGIN("C_OpenSession", 2, RPC_TOKEN);
    REQUIRE(phSession, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, slotID);
    mp_put_uint(&r.enc, flags);
    CALL();
    rv = finish_handles(&r, arv, phSession, NULL);
    if (rv == CKR_OK)
        app_session_opened(*phSession, slotID, flags);
    return rv;
}

EXPORT CK_RV C_CloseSession(CK_SESSION_HANDLE hSession)
{
    BEGIN("C_CloseSession", 1, RPC_TOKEN);
    mp_put_uint(&r.enc, hSession);
    rv = rpc_simple(&r);
    if (rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED)
        app_session_closed(hSession);
    return rv;
}

EXPORT CK_RV C_CloseAllSessions(CK_SLOT_ID slotID)
{
    BEGIN("C_CloseAllSessions", 1, RPC_TOKEN);
    mp_put_uint(&r.enc, slotID);
    rv = rpc_simple(&r);
    if (rv == CKR_OK)
        app_sessions_closed(slotID);
    return rv;
}

EXPORT CK_RV C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo)
{
    BEGIN("C_GetSessionInfo", 1, RPC_TOKEN);
    REQUIRE(pInfo, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    CALL();
    if (arv != CKR_OK) {
        rpc_end(&r, 0);
        return arv;
    }
    const mp_doc *d = &r.doc;
    CK_SESSION_INFO info;
    if (r.nout != 4 || mp_get_ulong(d, mp_elem(d, r.outputs, 0), &info.slotID) ||
        mp_get_ulong(d, mp_elem(d, r.outputs, 1), &info.state) ||
        mp_get_ulong(d, mp_elem(d, r.outputs, 2), &info.flags) ||
        mp_get_ulong(d, mp_elem(d, r.outputs, 3), &info.ulDeviceError))
        return rpc_end(&r, 1);
    *pInfo = info;
    rpc_end(&r, 0);
    return CKR_OK;
}

EXPORT CK_RV C_GetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState,
                                 CK_ULONG_PTR pulOperationStateLen)
{
    (void)hSession;
    (void)pOperationState;
    (void)pulOperationStateLen;
    CK_RV rv = state_check();
    return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_SUPPORTED;
}

EXPORT CK_RV C_SetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState,
                                 CK_ULONG ulOperationStateLen, CK_OBJECT_HANDLE hEncryptionKey,
                                 CK_OBJECT_HANDLE hAuthenticationKey)
{
    (void)hSession;
    (void)pOperationState;
    (void)ulOperationStateLen;
    (void)hEncryptionKey;
    (void)hAuthenticationKey;
    CK_RV rv = state_check();
    return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_SUPPORTED;
}

static const char *user_name(CK_USER_TYPE t)
{
    return t == CKU_USER ? "CKU_USER" : t == CKU_SO ? "CKU_SO" : t == CKU_CONTEXT_SPECIFIC ? "CKU_CONTEXT_SPECIFIC"
                                                                                          : "an unknown user type";
}

EXPORT CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
    BEGIN("C_Login", 3, RPC_TOKEN);
    /* A NULL PIN asks for a protected authentication path, which the token does not have (no
     * CKF_PROTECTED_AUTHENTICATION_PATH). */
    if (!pPin) {
        rpc_abort(&r);
        explain("C_Login(%s) without a PIN: give the PIN, username:password", user_name(userType));
        return CKR_ARGUMENTS_BAD;
    }
    r.enc.secret = 1;
    mp_put_uint(&r.enc, hSession);
    mp_put_uint(&r.enc, userType);
    ARG(put_bytes(&r.enc, pPin, ulPinLen, CKR_PIN_LEN_RANGE));
    CALL();
    if (arv == CKR_OK) {
        app_logged_in(userType, pPin, ulPinLen); /* kept to log in again after an agent restart */
    } else if (arv != CKR_USER_ALREADY_LOGGED_IN) {
        char why[300];
        const char *reason = rpc_reason(&r, why, sizeof why);
        explain("C_Login(%s) failed (0x%lx): %s", user_name(userType), (unsigned long)arv,
                reason ? reason
                : memchr(pPin, ':', ulPinLen) ? "refused by the agent"
                                               : "the PIN is not in username:password form");
    }
    rpc_end(&r, 0);
    return arv;
}

EXPORT CK_RV C_Logout(CK_SESSION_HANDLE hSession)
{
    BEGIN("C_Logout", 1, RPC_TOKEN);
    mp_put_uint(&r.enc, hSession);
    rv = rpc_simple(&r);
    if (rv == CKR_OK || rv == CKR_USER_NOT_LOGGED_IN)
        app_logged_out();
    return rv;
}

/* ---- objects --------------------------------------------------------------------------- */

EXPORT CK_RV C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                            CK_OBJECT_HANDLE_PTR phObject)
{
    BEGIN("C_CreateObject", 2, RPC_TOKEN);
    REQUIRE(phObject, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    ARG(put_template(&r.enc, pTemplate, ulCount, CKR_TEMPLATE_INCONSISTENT));
    CALL();
    return finish_handles(&r, arv, phObject, NULL);
}

EXPORT CK_RV C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                          CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject)
{
    BEGIN("C_CopyObject", 3, RPC_TOKEN);
    REQUIRE(phNewObject, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    mp_put_uint(&r.enc, hObject);
    ARG(put_template(&r.enc, pTemplate, ulCount, CKR_TEMPLATE_INCONSISTENT));
    CALL();
    return finish_handles(&r, arv, phNewObject, NULL);
}

EXPORT CK_RV C_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject)
{
    BEGIN("C_DestroyObject", 2, RPC_TOKEN);
    mp_put_uint(&r.enc, hSession);
    mp_put_uint(&r.enc, hObject);
    return rpc_simple(&r);
}

EXPORT CK_RV C_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize)
{
    BEGIN("C_GetObjectSize", 2, RPC_TOKEN);
    REQUIRE(pulSize, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    mp_put_uint(&r.enc, hObject);
    CALL();
    return finish_handles(&r, arv, pulSize, NULL);
}

/* An attribute's reply entry [value_or_nil, len], checked against the
 * application's buffer before anything is written. */
static int check_attr_reply(const mp_doc *d, uint32_t entry, const CK_ATTRIBUTE *a)
{
    unsigned long len;
    uint32_t value = mp_elem(d, entry, 0);
    if (!mp_is(d, entry, MP_ARRAY) || d->nodes[entry].n != 2 || mp_get_ulong(d, mp_elem(d, entry, 1), &len))
        return -1;
    switch (d->nodes[value].type) {
    case MP_NIL:
        /* a buffer was given: only "unavailable" may come without a value */
        return a->pValue && len != CK_UNAVAILABLE_INFORMATION ? -1 : 0;
    case MP_BIN:
        return attr_is_template(a->type) || !a->pValue || d->nodes[value].n != len || len > a->ulValueLen ? -1 : 0;
    case MP_ARRAY: {
        uint32_t k = d->nodes[value].n;
        if (!attr_is_template(a->type) || !a->pValue || k > MAX_TEMPLATE ||
            (CK_ULONG)k * sizeof(CK_ATTRIBUTE) > a->ulValueLen)
            return -1;
        unsigned long type;
        for (uint32_t j = 0, c = value + 1; j < k; j++, c = d->nodes[c].end)
            if (!mp_is(d, c, MP_ARRAY) || d->nodes[c].n != 2 || mp_get_ulong(d, c + 1, &type) ||
                !mp_is(d, d->nodes[c + 1].end, MP_BIN))
                return -1;
        return 0;
    }
    default:
        return -1;
    }
}

/* Fill an application's array of CK_ATTRIBUTE from a nested template reply
 * (PKCS#11 v2.40 C_GetAttributeValue, array attributes): all pValue NULL
 * -> types and lengths in order; otherwise each element is matched by type. */
static CK_RV fill_nested(CK_ATTRIBUTE *in, const mp_doc *d, uint32_t value)
{
    uint32_t k = d->nodes[value].n;
    int all_null = 1;
    for (uint32_t j = 0; j < k; j++)
        if (in[j].pValue)
            all_null = 0;
    CK_RV rv = CKR_OK;
    for (uint32_t j = 0; j < k; j++) {
        uint32_t found = MP_NONE;
        for (uint32_t i = 0, c = value + 1; i < k; i++, c = d->nodes[c].end) {
            uint32_t t = c + 1;
            if (all_null ? i == j : d->nodes[t].v.u == in[j].type) {
                found = c;
                break;
            }
        }
        if (found == MP_NONE) {
            in[j].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            if (rv == CKR_OK)
                rv = CKR_ATTRIBUTE_TYPE_INVALID;
            continue;
        }
        uint32_t t = found + 1, v = d->nodes[t].end;
        CK_ULONG n = d->nodes[v].n;
        if (all_null) {
            in[j].type = (CK_ATTRIBUTE_TYPE)d->nodes[t].v.u;
            in[j].ulValueLen = n;
        } else if (!in[j].pValue) {
            in[j].ulValueLen = n;
        } else if (in[j].ulValueLen >= n) {
            if (n)
                memcpy(in[j].pValue, d->nodes[v].v.p, n);
            in[j].ulValueLen = n;
        } else {
            in[j].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            if (rv == CKR_OK)
                rv = CKR_BUFFER_TOO_SMALL;
        }
    }
    return rv;
}

EXPORT CK_RV C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                                 CK_ULONG ulCount)
{
    BEGIN("C_GetAttributeValue", 3, RPC_TOKEN);
    REQUIRE(pTemplate || !ulCount, CKR_ARGUMENTS_BAD);
    REQUIRE(ulCount <= MAX_TEMPLATE, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    mp_put_uint(&r.enc, hObject);
    mp_put_array(&r.enc, (uint32_t)ulCount);
    for (CK_ULONG i = 0; i < ulCount; i++) {
        mp_put_array(&r.enc, 2);
        mp_put_uint(&r.enc, pTemplate[i].type);
        put_cap(&r.enc, pTemplate[i].pValue, &pTemplate[i].ulValueLen);
    }
    CALL();
    if (arv != CKR_OK && arv != CKR_ATTRIBUTE_SENSITIVE && arv != CKR_ATTRIBUTE_TYPE_INVALID &&
        arv != CKR_BUFFER_TOO_SMALL) {
        rpc_end(&r, 0);
        return arv;
    }
    const mp_doc *d = &r.doc;
    uint32_t list = mp_elem(d, r.outputs, 0);
    if (r.nout != 1 || !mp_is(d, list, MP_ARRAY) || d->nodes[list].n != ulCount)
        return rpc_end(&r, 1);
    uint32_t c = list + 1;
    for (CK_ULONG i = 0; i < ulCount; i++, c = d->nodes[c].end)
        if (check_attr_reply(d, c, &pTemplate[i]))
            return rpc_end(&r, 1);
    rv = arv;
    c = list + 1;
    for (CK_ULONG i = 0; i < ulCount; i++, c = d->nodes[c].end) {
        uint32_t value = c + 1, len = d->nodes[value].end;
        CK_ATTRIBUTE *a = &pTemplate[i];
        switch (d->nodes[value].type) {
        case MP_BIN:
            if (d->nodes[value].n)
                memcpy(a->pValue, d->nodes[value].v.p, d->nodes[value].n);
            a->ulValueLen = d->nodes[value].n;
            break;
        case MP_ARRAY: {
            CK_RV inner = fill_nested(a->pValue, d, value);
            a->ulValueLen = (CK_ULONG)d->nodes[value].n * sizeof(CK_ATTRIBUTE);
            if (inner != CKR_OK && rv == CKR_OK)
                rv = inner;
            break;
        }
        default: /* nil */
            a->ulValueLen = (CK_ULONG)d->nodes[len].v.u;
            break;
        }
    }
    rpc_end(&r, 0);
    return rv;
}

EXPORT CK_RV C_SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                                 CK_ULONG ulCount)
{
    BEGIN("C_SetAttributeValue", 3, RPC_TOKEN);
    mp_put_uint(&r.enc, hSession);
    mp_put_uint(&r.enc, hObject);
    ARG(put_template(&r.enc, pTemplate, ulCount, CKR_TEMPLATE_INCONSISTENT));
    return rpc_simple(&r);
}

EXPORT CK_RV C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
    BEGIN("C_FindObjectsInit", 2, RPC_TOKEN);
    mp_put_uint(&r.enc, hSession);
    ARG(put_template(&r.enc, pTemplate, ulCount, CKR_ARGUMENTS_BAD));
    return rpc_simple(&r);
}

EXPORT CK_RV C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount,
                           CK_ULONG_PTR pulObjectCount)
{
    BEGIN("C_FindObjects", 2, RPC_TOKEN);
    REQUIRE(pulObjectCount && (phObject || !ulMaxObjectCount), CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    mp_put_uint(&r.enc, ulMaxObjectCount);
    CALL();
    if (arv != CKR_OK) {
        rpc_end(&r, 0);
        return arv;
    }
    const mp_doc *d = &r.doc;
    uint32_t list = mp_elem(d, r.outputs, 0);
    if (r.nout != 1 || !mp_is(d, list, MP_ARRAY) || d->nodes[list].n > ulMaxObjectCount)
        return rpc_end(&r, 1);
    uint32_t n = d->nodes[list].n;
    unsigned long h;
    for (uint32_t i = 0, c = list + 1; i < n; i++, c = d->nodes[c].end)
        if (mp_get_ulong(d, c, &h))
            return rpc_end(&r, 1);
    for (uint32_t i = 0, c = list + 1; i < n; i++, c = d->nodes[c].end)
        phObject[i] = d->nodes[c].v.u;
    *pulObjectCount = n;
    rpc_end(&r, 0);
    return CKR_OK;
}

EXPORT CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE hSession)
{
    BEGIN("C_FindObjectsFinal", 1, RPC_TOKEN);
    mp_put_uint(&r.enc, hSession);
    return rpc_simple(&r);
}

/* ---- cryptographic operations ------------------------------------------------------------ */

/* C_xxxInit(session, mechanism, key) */
static CK_RV op_init(const char *fn, CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE key, int has_key)
{
    BEGIN(fn, has_key ? 3 : 2, RPC_TOKEN);
    mp_put_uint(&r.enc, s);
    ARG(put_mechanism(&r.enc, m));
    if (has_key)
        mp_put_uint(&r.enc, key);
    return rpc_simple(&r);
}

/* A call of an active operation failed where the agent could not see it (the module refused its
 * arguments, or the agent's answer was malformed): it ends the operation all the same (PKCS#11 v2.40
 * §5.2: every failure but CKR_BUFFER_TOO_SMALL and a size query). kind2 for a dual-function call. */
static CK_RV refuse(CK_SESSION_HANDLE s, const char *kind, const char *kind2, CK_RV rv)
{
    for (int i = 0; i < 2; i++) {
        const char *k = i ? kind2 : kind;
        rpc_t r;
        if (!k || rpc_begin(&r, "X_EndOperation", 2, RPC_TOKEN) != CKR_OK)
            continue;
        mp_put_uint(&r.enc, s);
        mp_put_str(&r.enc, k);
        (void)rpc_simple(&r);
    }
    return rv;
}

/* One C_xxx(session, data, cap) -> [needed_len, data] request. */
static CK_RV data_out_once(const char *fn, const char *kind, const char *kind2, CK_SESSION_HANDLE s,
                           CK_BYTE_PTR in, CK_ULONG in_len, CK_RV too_long, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
    BEGIN(fn, 3, RPC_TOKEN);
    mp_put_uint(&r.enc, s);
    CK_RV arg = put_bytes(&r.enc, in, in_len, too_long);
    if (arg != CKR_OK) {
        rpc_abort(&r);
        return refuse(s, kind, kind2, arg);
    }
    put_cap(&r.enc, out, out_len);
    CALL();
    rv = finish_output(&r, arv, out, out_len);
    return r.malformed ? refuse(s, kind, kind2, rv) : rv;
}

/* An upper bound of an encrypt/decrypt update's output (the agent knows the mechanism). */
static CK_RV output_bound(CK_SESSION_HANDLE s, const char *kind, CK_ULONG len, CK_ULONG *bound)
{
    BEGIN("X_OutputBound", 3, RPC_TOKEN);
    mp_put_uint(&r.enc, s);
    mp_put_str(&r.enc, kind);
    mp_put_uint(&r.enc, len);
    CALL();
    if (arv != CKR_OK) {
        rpc_end(&r, 0);
        return arv;
    }
    unsigned long b;
    if (r.nout != 1 || mp_get_ulong(&r.doc, mp_elem(&r.doc, r.outputs, 0), &b))
        return refuse(s, kind, NULL, rpc_end(&r, 1));
    *bound = b;
    rpc_end(&r, 0);
    return CKR_OK;
}

/* C_xxx(session, data, cap) -> [needed_len, data]; an update of any size goes in parts of MP_PART (a size query
 * answers an upper bound; the buffer must hold it before the first part is sent, so nothing is half done). */
static CK_RV op_data_out(const char *fn, const char *kind, const char *kind2, int update, CK_SESSION_HANDLE s,
                         CK_BYTE_PTR in, CK_ULONG in_len, CK_RV too_long, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
    CK_RV rv = state_check();
    if (rv != CKR_OK)
        return rv;
    if (!out_len || (!in && in_len))
        return refuse(s, kind, kind2, CKR_ARGUMENTS_BAD);
    if (!update || kind2 || in_len <= MP_PART)
        return data_out_once(fn, kind, kind2, s, in, in_len, too_long, out, out_len);
    CK_ULONG bound = 0;
    rv = output_bound(s, kind, in_len, &bound);
    if (rv != CKR_OK)
        return rv;
    if (!out) {
        *out_len = bound;
        return CKR_OK;
    }
    if (*out_len < bound) {
        *out_len = bound;
        return CKR_BUFFER_TOO_SMALL;
    }
    CK_ULONG done = 0, left = *out_len;
    for (CK_ULONG pos = 0; pos < in_len; pos += MP_PART) {
        CK_ULONG n = in_len - pos < MP_PART ? in_len - pos : MP_PART, cap = left;
        rv = data_out_once(fn, kind, NULL, s, in + pos, n, too_long, out + done, &cap);
        if (rv == CKR_BUFFER_TOO_SMALL)
            return refuse(s, kind, NULL, CKR_FUNCTION_FAILED); /* the bound was wrong: nothing sensible is left */
        if (rv != CKR_OK)
            return rv; /* the agent ended the operation */
        done += cap;
        left -= cap;
    }
    *out_len = done;
    return CKR_OK;
}

/* C_xxxFinal(session, cap) -> [needed_len, data] */
static CK_RV op_final_out(const char *fn, const char *kind, CK_SESSION_HANDLE s, CK_BYTE_PTR out,
                          CK_ULONG_PTR out_len)
{
    CK_RV st = state_check();
    if (st != CKR_OK)
        return st;
    if (!out_len)
        return refuse(s, kind, NULL, CKR_ARGUMENTS_BAD);
    BEGIN(fn, 2, RPC_TOKEN);
    mp_put_uint(&r.enc, s);
    put_cap(&r.enc, out, out_len);
    CALL();
    rv = finish_output(&r, arv, out, out_len);
    return r.malformed ? refuse(s, kind, NULL, rv) : rv;
}

/* C_xxx(session, bytes[, bytes]) -> []: C_Verify, C_VerifyFinal and the updates without output (any size:
 * an update goes in parts of MP_PART). */
static CK_RV op_bytes(const char *fn, const char *kind, int update, CK_SESSION_HANDLE s, CK_BYTE_PTR a,
                      CK_ULONG a_len, CK_RV a_long, CK_BYTE_PTR b, CK_ULONG b_len, CK_RV b_long, int two)
{
    CK_RV st = state_check();
    if (st != CKR_OK)
        return st;
    if ((!a && a_len) || (two && !b && b_len))
        return refuse(s, kind, NULL, CKR_ARGUMENTS_BAD);
    if (update && a_len > MP_PART) {
        for (CK_ULONG pos = 0; pos < a_len; pos += MP_PART) {
            st = op_bytes(fn, kind, 0, s, a + pos, a_len - pos < MP_PART ? a_len - pos : MP_PART, a_long, NULL, 0,
                          0, 0);
            if (st != CKR_OK)
                return st;
        }
        return CKR_OK;
    }
    BEGIN(fn, two ? 3 : 2, RPC_TOKEN);
    mp_put_uint(&r.enc, s);
    CK_RV arg = put_bytes(&r.enc, a, a_len, a_long);
    if (arg == CKR_OK && two)
        arg = put_bytes(&r.enc, b, b_len, b_long);
    if (arg != CKR_OK) {
        rpc_abort(&r);
        return refuse(s, kind, NULL, arg);
    }
    return rpc_simple(&r);
}

EXPORT CK_RV C_EncryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return op_init("C_EncryptInit", hSession, pMechanism, hKey, 1);
}

EXPORT CK_RV C_Encrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pEncryptedData,
                       CK_ULONG_PTR pulEncryptedDataLen)
{
    return op_data_out("C_Encrypt", "encrypt", NULL, 0, hSession, pData, ulDataLen, CKR_DATA_LEN_RANGE,
                       pEncryptedData, pulEncryptedDataLen);
}

EXPORT CK_RV C_EncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen,
                             CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen)
{
    return op_data_out("C_EncryptUpdate", "encrypt", NULL, 1, hSession, pPart, ulPartLen, CKR_DATA_LEN_RANGE,
                       pEncryptedPart, pulEncryptedPartLen);
}

EXPORT CK_RV C_EncryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastEncryptedPart,
                            CK_ULONG_PTR pulLastEncryptedPartLen)
{
    return op_final_out("C_EncryptFinal", "encrypt", hSession, pLastEncryptedPart, pulLastEncryptedPartLen);
}

EXPORT CK_RV C_DecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return op_init("C_DecryptInit", hSession, pMechanism, hKey, 1);
}

EXPORT CK_RV C_Decrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen,
                       CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen)
{
    return op_data_out("C_Decrypt", "decrypt", NULL, 0, hSession, pEncryptedData, ulEncryptedDataLen,
                       CKR_ENCRYPTED_DATA_LEN_RANGE, pData, pulDataLen);
}

EXPORT CK_RV C_DecryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen,
                             CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen)
{
    return op_data_out("C_DecryptUpdate", "decrypt", NULL, 1, hSession, pEncryptedPart, ulEncryptedPartLen,
                       CKR_ENCRYPTED_DATA_LEN_RANGE, pPart, pulPartLen);
}

EXPORT CK_RV C_DecryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastPart, CK_ULONG_PTR pulLastPartLen)
{
    return op_final_out("C_DecryptFinal", "decrypt", hSession, pLastPart, pulLastPartLen);
}

EXPORT CK_RV C_DigestInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism)
{
    return op_init("C_DigestInit", hSession, pMechanism, 0, 0);
}

EXPORT CK_RV C_Digest(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest,
                      CK_ULONG_PTR pulDigestLen)
{
    return op_data_out("C_Digest", "digest", NULL, 0, hSession, pData, ulDataLen, CKR_DATA_LEN_RANGE, pDigest,
                       pulDigestLen);
}

EXPORT CK_RV C_DigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
    return op_bytes("C_DigestUpdate", "digest", 1, hSession, pPart, ulPartLen, CKR_DATA_LEN_RANGE, NULL, 0, 0, 0);
}

EXPORT CK_RV C_DigestKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey)
{
    BEGIN("C_DigestKey", 2, RPC_TOKEN);
    mp_put_uint(&r.enc, hSession);
    mp_put_uint(&r.enc, hKey);
    return rpc_simple(&r);
}

EXPORT CK_RV C_DigestFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen)
{
    return op_final_out("C_DigestFinal", "digest", hSession, pDigest, pulDigestLen);
}

EXPORT CK_RV C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return op_init("C_SignInit", hSession, pMechanism, hKey, 1);
}

EXPORT CK_RV C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                    CK_ULONG_PTR pulSignatureLen)
{
    return op_data_out("C_Sign", "sign", NULL, 0, hSession, pData, ulDataLen, CKR_DATA_LEN_RANGE, pSignature,
                       pulSignatureLen);
}

EXPORT CK_RV C_SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
    return op_bytes("C_SignUpdate", "sign", 1, hSession, pPart, ulPartLen, CKR_DATA_LEN_RANGE, NULL, 0, 0, 0);
}

EXPORT CK_RV C_SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
    return op_final_out("C_SignFinal", "sign", hSession, pSignature, pulSignatureLen);
}

EXPORT CK_RV C_SignRecoverInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    (void)hSession;
    (void)pMechanism;
    (void)hKey;
    CK_RV rv = state_check();
    return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_SUPPORTED;
}

EXPORT CK_RV C_SignRecover(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                           CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
    (void)hSession;
    (void)pData;
    (void)ulDataLen;
    (void)pSignature;
    (void)pulSignatureLen;
    CK_RV rv = state_check();
    return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_SUPPORTED;
}

EXPORT CK_RV C_VerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    return op_init("C_VerifyInit", hSession, pMechanism, hKey, 1);
}

EXPORT CK_RV C_Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                      CK_ULONG ulSignatureLen)
{
    return op_bytes("C_Verify", "verify", 0, hSession, pData, ulDataLen, CKR_DATA_LEN_RANGE, pSignature,
                    ulSignatureLen, CKR_SIGNATURE_LEN_RANGE, 1);
}

EXPORT CK_RV C_VerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
    return op_bytes("C_VerifyUpdate", "verify", 1, hSession, pPart, ulPartLen, CKR_DATA_LEN_RANGE, NULL, 0, 0, 0);
}

EXPORT CK_RV C_VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
    return op_bytes("C_VerifyFinal", "verify", 0, hSession, pSignature, ulSignatureLen, CKR_SIGNATURE_LEN_RANGE,
                    NULL, 0, 0, 0);
}

EXPORT CK_RV C_VerifyRecoverInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
    (void)hSession;
    (void)pMechanism;
    (void)hKey;
    CK_RV rv = state_check();
    return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_SUPPORTED;
}

EXPORT CK_RV C_VerifyRecover(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen,
                             CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen)
{
    (void)hSession;
    (void)pSignature;
    (void)ulSignatureLen;
    (void)pData;
    (void)pulDataLen;
    CK_RV rv = state_check();
    return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_SUPPORTED;
}

/* ---- dual-function operations (the agent runs both operations' updates) ---------------------------- */

EXPORT CK_RV C_DigestEncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen,
                                   CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen)
{
    return op_data_out("C_DigestEncryptUpdate", "encrypt", "digest", 1, hSession, pPart, ulPartLen,
                       CKR_DATA_LEN_RANGE, pEncryptedPart, pulEncryptedPartLen);
}

EXPORT CK_RV C_DecryptDigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart,
                                   CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen)
{
    return op_data_out("C_DecryptDigestUpdate", "decrypt", "digest", 1, hSession, pEncryptedPart, ulEncryptedPartLen,
                       CKR_ENCRYPTED_DATA_LEN_RANGE, pPart, pulPartLen);
}

EXPORT CK_RV C_SignEncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen,
                                 CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen)
{
    return op_data_out("C_SignEncryptUpdate", "encrypt", "sign", 1, hSession, pPart, ulPartLen, CKR_DATA_LEN_RANGE,
                       pEncryptedPart, pulEncryptedPartLen);
}

EXPORT CK_RV C_DecryptVerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart,
                                   CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen)
{
    return op_data_out("C_DecryptVerifyUpdate", "decrypt", "verify", 1, hSession, pEncryptedPart, ulEncryptedPartLen,
                       CKR_ENCRYPTED_DATA_LEN_RANGE, pPart, pulPartLen);
}

/* ---- key management ------------------------------------------------------------------------ */

EXPORT CK_RV C_GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate,
                           CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey)
{
    BEGIN("C_GenerateKey", 3, RPC_TOKEN);
    REQUIRE(phKey, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    ARG(put_mechanism(&r.enc, pMechanism));
    ARG(put_template(&r.enc, pTemplate, ulCount, CKR_TEMPLATE_INCONSISTENT));
    CALL();
    return finish_handles(&r, arv, phKey, NULL);
}

EXPORT CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                               CK_ATTRIBUTE_PTR pPublicKeyTemplate, CK_ULONG ulPublicKeyAttributeCount,
                               CK_ATTRIBUTE_PTR pPrivateKeyTemplate, CK_ULONG ulPrivateKeyAttributeCount,
                               CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey)
{
    BEGIN("C_GenerateKeyPair", 4, RPC_TOKEN);
    REQUIRE(phPublicKey && phPrivateKey, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    ARG(put_mechanism(&r.enc, pMechanism));
    ARG(put_template(&r.enc, pPublicKeyTemplate, ulPublicKeyAttributeCount, CKR_TEMPLATE_INCONSISTENT));
    ARG(put_template(&r.enc, pPrivateKeyTemplate, ulPrivateKeyAttributeCount, CKR_TEMPLATE_INCONSISTENT));
    CALL();
    return finish_handles(&r, arv, phPublicKey, phPrivateKey);
}

EXPORT CK_RV C_WrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hWrappingKey,
                       CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen)
{
    BEGIN("C_WrapKey", 5, RPC_TOKEN);
    REQUIRE(pulWrappedKeyLen, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    ARG(put_mechanism(&r.enc, pMechanism));
    mp_put_uint(&r.enc, hWrappingKey);
    mp_put_uint(&r.enc, hKey);
    put_cap(&r.enc, pWrappedKey, pulWrappedKeyLen);
    CALL();
    return finish_output(&r, arv, pWrappedKey, pulWrappedKeyLen);
}

EXPORT CK_RV C_UnwrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hUnwrappingKey,
                         CK_BYTE_PTR pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate,
                         CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
    BEGIN("C_UnwrapKey", 5, RPC_TOKEN);
    REQUIRE(phKey, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    ARG(put_mechanism(&r.enc, pMechanism));
    mp_put_uint(&r.enc, hUnwrappingKey);
    ARG(put_bytes(&r.enc, pWrappedKey, ulWrappedKeyLen, CKR_WRAPPED_KEY_LEN_RANGE));
    ARG(put_template(&r.enc, pTemplate, ulAttributeCount, CKR_TEMPLATE_INCONSISTENT));
    CALL();
    return finish_handles(&r, arv, phKey, NULL);
}

EXPORT CK_RV C_DeriveKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hBaseKey,
                         CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
    BEGIN("C_DeriveKey", 4, RPC_TOKEN);
    REQUIRE(phKey, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    ARG(put_mechanism(&r.enc, pMechanism));
    mp_put_uint(&r.enc, hBaseKey);
    ARG(put_template(&r.enc, pTemplate, ulAttributeCount, CKR_TEMPLATE_INCONSISTENT));
    CALL();
    return finish_handles(&r, arv, phKey, NULL);
}

/* ---- random numbers ------------------------------------------------------------------------- */

EXPORT CK_RV C_SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen)
{
    /* The agent checks the session, then answers CKR_RANDOM_SEED_NOT_SUPPORTED. */
    BEGIN("C_SeedRandom", 2, RPC_TOKEN);
    mp_put_uint(&r.enc, hSession);
    ARG(put_bytes(&r.enc, pSeed, ulSeedLen, CKR_ARGUMENTS_BAD));
    return rpc_simple(&r);
}

EXPORT CK_RV C_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR RandomData, CK_ULONG ulRandomLen)
{
    BEGIN("C_GenerateRandom", 2, RPC_TOKEN);
    REQUIRE(RandomData || !ulRandomLen, CKR_ARGUMENTS_BAD);
    mp_put_uint(&r.enc, hSession);
    mp_put_uint(&r.enc, ulRandomLen);
    CALL();
    if (arv != CKR_OK) {
        rpc_end(&r, 0);
        return arv;
    }
    const uint8_t *p;
    uint32_t n;
    if (r.nout != 1 || mp_get_bin(&r.doc, mp_elem(&r.doc, r.outputs, 0), &p, &n) || n != ulRandomLen)
        return rpc_end(&r, 1);
    if (n)
        memcpy(RandomData, p, n);
    rpc_end(&r, 0);
    return CKR_OK;
}

/* ---- parallel function management (legacy) ----------------------------------------------- */

EXPORT CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE hSession)
{
    (void)hSession;
    CK_RV rv = state_check();
    return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_PARALLEL;
}

EXPORT CK_RV C_CancelFunction(CK_SESSION_HANDLE hSession)
{
    (void)hSession;
    CK_RV rv = state_check();
    return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_PARALLEL;
}

/* ---- the function list ---------------------------------------------------------------------- */

static CK_FUNCTION_LIST function_list = {
    {CRYPTOKI_VERSION_MAJOR, CRYPTOKI_VERSION_MINOR},
    C_Initialize,
    C_Finalize,
    C_GetInfo,
    C_GetFunctionList,
    C_GetSlotList,
    C_GetSlotInfo,
    C_GetTokenInfo,
    C_GetMechanismList,
    C_GetMechanismInfo,
    C_InitToken,
    C_InitPIN,
    C_SetPIN,
    C_OpenSession,
    C_CloseSession,
    C_CloseAllSessions,
    C_GetSessionInfo,
    C_GetOperationState,
    C_SetOperationState,
    C_Login,
    C_Logout,
    C_CreateObject,
    C_CopyObject,
    C_DestroyObject,
    C_GetObjectSize,
    C_GetAttributeValue,
    C_SetAttributeValue,
    C_FindObjectsInit,
    C_FindObjects,
    C_FindObjectsFinal,
    C_EncryptInit,
    C_Encrypt,
    C_EncryptUpdate,
    C_EncryptFinal,
    C_DecryptInit,
    C_Decrypt,
    C_DecryptUpdate,
    C_DecryptFinal,
    C_DigestInit,
    C_Digest,
    C_DigestUpdate,
    C_DigestKey,
    C_DigestFinal,
    C_SignInit,
    C_Sign,
    C_SignUpdate,
    C_SignFinal,
    C_SignRecoverInit,
    C_SignRecover,
    C_VerifyInit,
    C_Verify,
    C_VerifyUpdate,
    C_VerifyFinal,
    C_VerifyRecoverInit,
    C_VerifyRecover,
    C_DigestEncryptUpdate,
    C_DecryptDigestUpdate,
    C_SignEncryptUpdate,
    C_DecryptVerifyUpdate,
    C_GenerateKey,
    C_GenerateKeyPair,
    C_WrapKey,
    C_UnwrapKey,
    C_DeriveKey,
    C_SeedRandom,
    C_GenerateRandom,
    C_GetFunctionStatus,
    C_CancelFunction,
    C_WaitForSlotEvent,
};
