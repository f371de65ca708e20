/*
 * Test driver for the PKCS#11 3.x interface of libstrongroom-pkcs11.so (issue 17): dlopens the module and runs
 * one scenario.
 *
 *   p11v3 MODULE PIN SCENARIO
 *
 *   interfaces  (no agent) C_GetFunctionList stays 2.40; C_GetInterfaceList / C_GetInterface before
 *               C_Initialize: "PKCS 11" 3.2 (the default), 3.0 and 2.40, look-ups by name, version and flags,
 *               every pointer of the 3.0 / 3.2 lists set and the same functions in each
 *   v3          (agent, PIN username:password) through the 3.2 list: C_LoginUser, message-based AES-GCM
 *               (generated random and counter IVs written back, tags, size queries, a message in parts,
 *               tampered tag / associated data refused, the result decrypted by v2.40 C_Decrypt too),
 *               C_SessionCancel, a forked child (not initialized until its own C_Initialize, then its own login),
 *               the 3.x functions the module does not offer
 *   restart     (agent) logs in with C_LoginUser, prints RESTART-AGENT, waits for a line on stdin (the test restarts
 *               the agent): the session is still logged in and makes a key
 *   timing      (agent) microseconds per 1 KiB AES-GCM message (3.x and v2.40 ways) and per ML-KEM-768
 *               encapsulation / decapsulation made from C (P11V3_ROUNDS, default 200); nothing asserted on time
 *   hostile     (the test's hostile peer) malformed replies to the message and KEM functions: CKR_DEVICE_ERROR and
 *               nothing written into the caller's buffers
 *
 * One line per check ("ok" or "FAIL"); the exit status is the number of failures (capped at 100).
 */
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "../src/pkcs11_3x.h"

static int g_fail;
static const char *g_pin = "";

static void check(int ok, const char *what, CK_RV rv)
{
    printf("%s %s (rv 0x%lx)\n", ok ? "ok" : "FAIL", what, (unsigned long)rv);
    if (!ok)
        g_fail++;
}

#define EXPECT(call, want, what)                                                                   \
    do {                                                                                           \
        CK_RV rv_ = (call);                                                                        \
        check(rv_ == (want), what, rv_);                                                           \
    } while (0)

typedef CK_RV (*get_interface_list_fn)(CK_INTERFACE_PTR, CK_ULONG_PTR);
typedef CK_RV (*get_interface_fn)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS);

static get_interface_list_fn get_list;
static get_interface_fn get_iface;
static CK_FUNCTION_LIST_PTR F2;

/* Every function pointer of a list (what follows the version) is set. */
static int all_set(const void *list, size_t size)
{
    size_t first = offsetof(CK_FUNCTION_LIST, C_Initialize);
    size_t n = (size - first) / sizeof(void (*)(void));
    for (size_t i = 0; i < n; i++) {
        void (*fn)(void);
        memcpy(&fn, (const char *)list + first + i * sizeof fn, sizeof fn);
        if (!fn)
            return 0;
    }
    return 1;
}

static int scenario_interfaces(void)
{
    CK_RV rv = F2 ? CKR_OK : CKR_GENERAL_ERROR;
    check(F2 && F2->version.major == 2 && F2->version.minor == 40, "C_GetFunctionList answers the 2.40 list", rv);

    CK_ULONG n = 0;
    EXPECT(get_list(NULL, NULL), CKR_ARGUMENTS_BAD, "C_GetInterfaceList without a count");
    EXPECT(get_list(NULL, &n), CKR_OK, "C_GetInterfaceList count (before C_Initialize)");
    check(n == 3, "three interfaces", n);
    CK_INTERFACE list[4];
    CK_ULONG small = 1;
    EXPECT(get_list(list, &small), CKR_BUFFER_TOO_SMALL, "C_GetInterfaceList into a short array");
    check(small == 3, "the count comes back with CKR_BUFFER_TOO_SMALL", small);
    n = 4;
    EXPECT(get_list(list, &n), CKR_OK, "C_GetInterfaceList");
    static const CK_BYTE want[3][2] = {{3, 2}, {3, 0}, {2, 40}};
    for (CK_ULONG i = 0; i < 3 && i < n; i++) {
        const CK_VERSION *v = list[i].pFunctionList;
        check(!strcmp((const char *)list[i].pInterfaceName, "PKCS 11") && v->major == want[i][0] &&
                  v->minor == want[i][1] && list[i].flags == 0,
              "interface \"PKCS 11\" in order 3.2, 3.0, 2.40, no flags", i);
    }
    check(n == 3 && list[2].pFunctionList == (void *)F2, "the 2.40 interface is C_GetFunctionList's list", 0);

    CK_INTERFACE_PTR it = NULL;
    EXPECT(get_iface(NULL, NULL, NULL, 0), CKR_ARGUMENTS_BAD, "C_GetInterface without an output");
    EXPECT(get_iface(NULL, NULL, &it, 0), CKR_OK, "C_GetInterface default");
    check(it && ((CK_VERSION *)it->pFunctionList)->major == 3 && ((CK_VERSION *)it->pFunctionList)->minor == 2,
          "the default interface is 3.2", 0);
    CK_VERSION v30 = {3, 0}, v32 = {3, 2}, v240 = {2, 40}, v31 = {3, 1};
    CK_INTERFACE_PTR i30 = NULL, i32 = NULL, i240 = NULL;
    EXPECT(get_iface((CK_UTF8CHAR_PTR) "PKCS 11", &v30, &i30, 0), CKR_OK, "C_GetInterface PKCS 11 3.0");
    EXPECT(get_iface((CK_UTF8CHAR_PTR) "PKCS 11", &v32, &i32, 0), CKR_OK, "C_GetInterface PKCS 11 3.2");
    EXPECT(get_iface((CK_UTF8CHAR_PTR) "PKCS 11", &v240, &i240, 0), CKR_OK, "C_GetInterface PKCS 11 2.40");
    check(i240 && i240->pFunctionList == (void *)F2, "2.40 by version is C_GetFunctionList's list", 0);
    EXPECT(get_iface((CK_UTF8CHAR_PTR) "PKCS 11", &v31, &it, 0), CKR_ARGUMENTS_BAD, "no 3.1 interface");
    EXPECT(get_iface((CK_UTF8CHAR_PTR) "Vendor", NULL, &it, 0), CKR_ARGUMENTS_BAD, "no vendor interface");
    EXPECT(get_iface(NULL, NULL, &it, CKF_INTERFACE_FORK_SAFE), CKR_ARGUMENTS_BAD,
           "no fork-safe interface (a child calls C_Initialize)");
    if (!i30 || !i32)
        return g_fail;

    CK_FUNCTION_LIST_3_0 *l30 = i30->pFunctionList;
    CK_FUNCTION_LIST_3_2 *l32 = i32->pFunctionList;
    check(all_set(l30, sizeof *l30) && all_set(l32, sizeof *l32), "every function of the 3.0 and 3.2 lists is set", 0);
    check(l30->C_Initialize == F2->C_Initialize && l32->C_Sign == F2->C_Sign && l32->C_GetInfo != F2->C_GetInfo &&
              l30->C_LoginUser == l32->C_LoginUser && l30->C_MessageVerifyFinal == l32->C_MessageVerifyFinal &&
              l32->C_GetInterface == (void *)get_iface && l32->C_UnwrapKeyAuthenticated != NULL,
          "the lists share their functions", 0);
    EXPECT(l32->C_EncapsulateKey(1, NULL, 0, NULL, 0, NULL, NULL, NULL), CKR_CRYPTOKI_NOT_INITIALIZED,
           "C_EncapsulateKey before C_Initialize");
    EXPECT(l32->C_MessageSignInit(1, NULL, 0), CKR_CRYPTOKI_NOT_INITIALIZED, "C_MessageSignInit before C_Initialize");
    return g_fail;
}

/* ---- against the agent ------------------------------------------------------------------------------- */

static CK_FUNCTION_LIST_3_2 *L;

static CK_OBJECT_HANDLE aes_key(CK_SESSION_HANDLE s)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG len = 32;
    CK_ATTRIBUTE t[] = {
        {CKA_TOKEN, &no, sizeof no},        {CKA_ENCRYPT, &yes, sizeof yes}, {CKA_DECRYPT, &yes, sizeof yes},
        {CKA_VALUE_LEN, &len, sizeof len},
    };
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_OBJECT_HANDLE key = 0;
    EXPECT(L->C_GenerateKey(s, &gen, t, 4, &key), CKR_OK, "AES-256 session key");
    return key;
}

static int all_zero(const CK_BYTE *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static void login_user(CK_SESSION_HANDLE s)
{
    const char *colon = strchr(g_pin, ':');
    if (!colon) {
        check(0, "the PIN is username:password", 0);
        return;
    }
    CK_UTF8CHAR user[128];
    size_t ulen = (size_t)(colon - g_pin);
    if (ulen >= sizeof user)
        ulen = sizeof user - 1;
    memcpy(user, g_pin, ulen);
    CK_UTF8CHAR_PTR pass = (CK_UTF8CHAR_PTR)(colon + 1);
    CK_ULONG plen = (CK_ULONG)strlen(colon + 1);
    EXPECT(L->C_LoginUser(s, CKU_USER, (CK_UTF8CHAR_PTR) "wrong-password", 14, user, ulen), CKR_PIN_INCORRECT,
           "C_LoginUser with a wrong password");
    EXPECT(L->C_LoginUser(s, CKU_USER, pass, plen, (CK_UTF8CHAR_PTR) "a:b", 3), CKR_PIN_INCORRECT,
           "C_LoginUser with ':' in the user name");
    EXPECT(L->C_LoginUser(s, CKU_USER, pass, plen, user, ulen), CKR_OK, "C_LoginUser(user name, password)");
    CK_SESSION_INFO info;
    EXPECT(L->C_GetSessionInfo(s, &info), CKR_OK, "session info");
    check(info.state == CKS_RW_USER_FUNCTIONS, "the session is a user session", info.state);
    EXPECT(L->C_LoginUser(s, CKU_USER, pass, plen, user, ulen), CKR_USER_ALREADY_LOGGED_IN, "a second C_LoginUser");
    EXPECT(L->C_Logout(s), CKR_OK, "logout");
    EXPECT(L->C_LoginUser(s, CKU_USER, (CK_UTF8CHAR_PTR)g_pin, (CK_ULONG)strlen(g_pin), NULL, 0), CKR_OK,
           "C_LoginUser without a user name takes C_Login's username:password");
}

static CK_GCM_MESSAGE_PARAMS gcm(CK_BYTE *iv, CK_ULONG fixed_bits, CK_GENERATOR_FUNCTION gen, CK_BYTE *tag)
{
    CK_GCM_MESSAGE_PARAMS p = {iv, 12, fixed_bits, gen, tag, 128};
    return p;
}

static void messages(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    static const CK_BYTE plain[] = "message-based AES-GCM through Strongroom, as pkcs11-provider uses it";
    const CK_ULONG plen = sizeof plain - 1;
    static const CK_BYTE aad[] = "header";
    CK_MECHANISM mech = {CKM_AES_GCM, NULL, 0};
    CK_BYTE iv[12] = {0}, tag[16] = {0}, ct[256], pt[256];
    CK_ULONG len;

    CK_GCM_MESSAGE_PARAMS p = gcm(iv, 0, CKG_GENERATE_RANDOM, tag);
    len = sizeof ct;
    EXPECT(L->C_EncryptMessage(s, &p, sizeof p, NULL, 0, (CK_BYTE_PTR)plain, plen, ct, &len),
           CKR_OPERATION_NOT_INITIALIZED, "C_EncryptMessage before C_MessageEncryptInit");
    EXPECT(L->C_MessageEncryptInit(s, &mech, key), CKR_OK, "C_MessageEncryptInit(CKM_AES_GCM)");
    EXPECT(L->C_MessageEncryptInit(s, &mech, key), CKR_OPERATION_ACTIVE, "a second C_MessageEncryptInit");
    EXPECT(L->C_EncryptMessage(s, &p, sizeof p - 1, (CK_BYTE_PTR)aad, 6, (CK_BYTE_PTR)plain, plen, ct, &len),
           CKR_MECHANISM_PARAM_INVALID, "a parameter of the wrong size");
    CK_GCM_MESSAGE_PARAMS odd = p;
    odd.ulTagBits = 100;
    len = sizeof ct;
    EXPECT(L->C_EncryptMessage(s, &odd, sizeof odd, (CK_BYTE_PTR)aad, 6, (CK_BYTE_PTR)plain, plen, ct, &len),
           CKR_MECHANISM_PARAM_INVALID, "a tag of 100 bits");
    len = 0;
    EXPECT(L->C_EncryptMessage(s, &p, sizeof p, (CK_BYTE_PTR)aad, 6, (CK_BYTE_PTR)plain, plen, NULL, &len), CKR_OK,
           "C_EncryptMessage size query");
    check(len == plen && all_zero(iv, 12) && all_zero(tag, 16), "the size, and no IV consumed", len);
    len = 10;
    EXPECT(L->C_EncryptMessage(s, &p, sizeof p, (CK_BYTE_PTR)aad, 6, (CK_BYTE_PTR)plain, plen, ct, &len),
           CKR_BUFFER_TOO_SMALL, "C_EncryptMessage into a short buffer");
    len = sizeof ct;
    EXPECT(L->C_EncryptMessage(s, &p, sizeof p, (CK_BYTE_PTR)aad, 6, (CK_BYTE_PTR)plain, plen, ct, &len), CKR_OK,
           "C_EncryptMessage (generated random IV)");
    check(len == plen && !all_zero(iv, 12) && !all_zero(tag, 16), "the IV and the tag are written back", len);
    CK_BYTE iv1[12], tag1[16], ct1[256];
    memcpy(iv1, iv, 12);
    memcpy(tag1, tag, 16);
    memcpy(ct1, ct, len);
    CK_ULONG ct1_len = len;
    len = sizeof ct;
    EXPECT(L->C_EncryptMessage(s, &p, sizeof p, NULL, 0, (CK_BYTE_PTR)plain, plen, ct, &len), CKR_OK,
           "a second message");
    check(memcmp(iv, iv1, 12) != 0, "a new random IV per message", 0);

    CK_BYTE civ[12] = {0xAA, 0xBB, 0xCC, 0xDD, 9, 9, 9, 9, 9, 9, 9, 9};
    CK_GCM_MESSAGE_PARAMS pc = gcm(civ, 32, CKG_GENERATE_COUNTER, tag);
    len = sizeof ct;
    EXPECT(L->C_EncryptMessage(s, &pc, sizeof pc, NULL, 0, (CK_BYTE_PTR)plain, plen, ct, &len), CKR_OK,
           "counter IV, message 1");
    static const CK_BYTE c0[12] = {0xAA, 0xBB, 0xCC, 0xDD, 0, 0, 0, 0, 0, 0, 0, 0};
    check(!memcmp(civ, c0, 12), "fixed 32 bits, then the counter 0", 0);
    len = sizeof ct;
    EXPECT(L->C_EncryptMessage(s, &pc, sizeof pc, NULL, 0, (CK_BYTE_PTR)plain, plen, ct, &len), CKR_OK,
           "counter IV, message 2");
    check(civ[11] == 1 && civ[0] == 0xAA, "the counter went up", civ[11]);

    /* a message in parts */
    CK_BYTE miv[12] = {0}, mtag[16] = {0}, mct[256];
    CK_GCM_MESSAGE_PARAMS pm = gcm(miv, 0, CKG_GENERATE, mtag);
    EXPECT(L->C_EncryptMessageBegin(s, &pm, sizeof pm, (CK_BYTE_PTR)aad, 6), CKR_OK, "C_EncryptMessageBegin");
    check(!all_zero(miv, 12), "Begin writes the IV back", 0);
    EXPECT(L->C_EncryptMessage(s, &p, sizeof p, NULL, 0, (CK_BYTE_PTR)plain, plen, ct, &len), CKR_OPERATION_ACTIVE,
           "no whole message while one is in parts");
    CK_ULONG a = 20, b = plen - 20, got = 0;
    len = sizeof mct;
    EXPECT(L->C_EncryptMessageNext(s, &pm, sizeof pm, (CK_BYTE_PTR)plain, a, mct, &len, 0), CKR_OK, "part 1");
    got += len;
    len = 0;
    EXPECT(L->C_EncryptMessageNext(s, &pm, sizeof pm, (CK_BYTE_PTR)plain + a, b, NULL, &len, CKF_END_OF_MESSAGE),
           CKR_OK, "last part size query");
    check(len == b && all_zero(mtag, 16), "its size; no tag yet", len);
    len = sizeof mct - got;
    EXPECT(L->C_EncryptMessageNext(s, &pm, sizeof pm, (CK_BYTE_PTR)plain + a, b, mct + got, &len, CKF_END_OF_MESSAGE),
           CKR_OK, "last part");
    got += len;
    check(got == plen && !all_zero(mtag, 16), "all the ciphertext and the tag", got);
    EXPECT(L->C_MessageEncryptFinal(s), CKR_OK, "C_MessageEncryptFinal");
    EXPECT(L->C_EncryptMessage(s, &p, sizeof p, NULL, 0, (CK_BYTE_PTR)plain, plen, ct, &len),
           CKR_OPERATION_NOT_INITIALIZED, "no message after the final");

    /* decryption */
    EXPECT(L->C_MessageDecryptInit(s, &mech, key), CKR_OK, "C_MessageDecryptInit");
    CK_GCM_MESSAGE_PARAMS pd = gcm(iv1, 0, CKG_NO_GENERATE, tag1);
    len = sizeof pt;
    EXPECT(L->C_DecryptMessage(s, &pd, sizeof pd, (CK_BYTE_PTR)aad, 6, ct1, ct1_len, pt, &len), CKR_OK,
           "C_DecryptMessage");
    check(len == plen && !memcmp(pt, plain, plen), "the plaintext back", len);
    EXPECT(L->C_DecryptMessage(s, &pd, sizeof pd, (CK_BYTE_PTR) "HEADER", 6, ct1, ct1_len, pt, &len),
           CKR_ENCRYPTED_DATA_INVALID, "other associated data refused");
    tag1[3] ^= 1;
    len = sizeof pt;
    EXPECT(L->C_DecryptMessage(s, &pd, sizeof pd, (CK_BYTE_PTR)aad, 6, ct1, ct1_len, pt, &len),
           CKR_ENCRYPTED_DATA_INVALID, "a tampered tag refused");
    tag1[3] ^= 1;

    CK_GCM_MESSAGE_PARAMS pmd = gcm(miv, 0, CKG_NO_GENERATE, mtag);
    EXPECT(L->C_DecryptMessageBegin(s, &pmd, sizeof pmd, (CK_BYTE_PTR)aad, 6), CKR_OK, "C_DecryptMessageBegin");
    len = sizeof pt;
    EXPECT(L->C_DecryptMessageNext(s, &pmd, sizeof pmd, mct, a, pt, &len, 0), CKR_OK, "decrypt part 1");
    check(len == 0, "no plaintext before the tag is checked", len);
    len = 0;
    EXPECT(L->C_DecryptMessageNext(s, &pmd, sizeof pmd, mct + a, b, NULL, &len, CKF_END_OF_MESSAGE), CKR_OK,
           "decrypt last part size query");
    check(len == plen, "all the plaintext comes with the last part", len);
    len = sizeof pt;
    EXPECT(L->C_DecryptMessageNext(s, &pmd, sizeof pmd, mct + a, b, pt, &len, CKF_END_OF_MESSAGE), CKR_OK,
           "decrypt last part");
    check(len == plen && !memcmp(pt, plain, plen), "the message in parts decrypts", len);
    EXPECT(L->C_MessageDecryptFinal(s), CKR_OK, "C_MessageDecryptFinal");

    /* the same ciphertext through the v2.40 single-part path */
    CK_BYTE both[300];
    memcpy(both, mct, plen);
    memcpy(both + plen, mtag, 16);
    CK_GCM_PARAMS g240 = {miv, 12, 96, (CK_BYTE_PTR)aad, 6, 128};
    CK_MECHANISM m240 = {CKM_AES_GCM, &g240, sizeof g240};
    EXPECT(L->C_DecryptInit(s, &m240, key), CKR_OK, "C_DecryptInit(CKM_AES_GCM) of the message");
    len = sizeof pt;
    EXPECT(L->C_Decrypt(s, both, plen + 16, pt, &len), CKR_OK, "C_Decrypt of ciphertext||tag");
    check(len == plen && !memcmp(pt, plain, plen), "v2.40 GCM agrees with the message functions", len);
}

/* Messages and parts larger than one node request (1 MiB): the agent sends them in pieces. */
static void big_messages(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    const CK_ULONG n = (5u << 20) / 2; /* 2.5 MiB */
    CK_BYTE *plain = malloc(n), *ct = malloc(n), *back = malloc(n);
    if (!plain || !ct || !back) {
        check(0, "memory for the big messages", 0);
        free(plain), free(ct), free(back);
        return;
    }
    for (CK_ULONG i = 0; i < n; i++)
        plain[i] = (CK_BYTE)(i * 7 + (i >> 12));
    CK_MECHANISM mech = {CKM_AES_GCM, NULL, 0};
    CK_BYTE iv[12] = {0}, tag[16] = {0};
    CK_GCM_MESSAGE_PARAMS p = {iv, 12, 0, CKG_GENERATE_RANDOM, tag, 128};
    CK_ULONG len = n;
    EXPECT(L->C_MessageEncryptInit(s, &mech, key), CKR_OK, "C_MessageEncryptInit (big)");
    EXPECT(L->C_EncryptMessage(s, &p, sizeof p, (CK_BYTE_PTR) "aad", 3, plain, n, ct, &len), CKR_OK,
           "C_EncryptMessage of 2.5 MiB");
    check(len == n && !all_zero(tag, 16), "all of it, and a tag", len);
    CK_BYTE iv2[12] = {0}, tag2[16] = {0};
    CK_GCM_MESSAGE_PARAMS p2 = {iv2, 12, 0, CKG_GENERATE_RANDOM, tag2, 128};
    EXPECT(L->C_EncryptMessageBegin(s, &p2, sizeof p2, NULL, 0), CKR_OK, "C_EncryptMessageBegin (big)");
    CK_ULONG a = (3u << 20) / 2, got = n;
    EXPECT(L->C_EncryptMessageNext(s, &p2, sizeof p2, plain, a, back, &got, 0), CKR_OK, "a 1.5 MiB part");
    CK_ULONG rest = n - got;
    EXPECT(L->C_EncryptMessageNext(s, &p2, sizeof p2, plain + a, n - a, back + got, &rest, CKF_END_OF_MESSAGE),
           CKR_OK, "a 1 MiB last part");
    check(got == a && rest == n - a, "every byte of the parts came out", got + rest);
    EXPECT(L->C_MessageEncryptFinal(s), CKR_OK, "C_MessageEncryptFinal (big)");

    EXPECT(L->C_MessageDecryptInit(s, &mech, key), CKR_OK, "C_MessageDecryptInit (big)");
    CK_GCM_MESSAGE_PARAMS d = {iv, 12, 0, CKG_NO_GENERATE, tag, 128};
    memset(back, 0, n);
    len = n;
    EXPECT(L->C_DecryptMessage(s, &d, sizeof d, (CK_BYTE_PTR) "aad", 3, ct, n, back, &len), CKR_OK,
           "C_DecryptMessage of 2.5 MiB");
    check(len == n && !memcmp(back, plain, n), "the 2.5 MiB come back", len);
    ct[n / 2] ^= 0x80;
    len = n;
    EXPECT(L->C_DecryptMessage(s, &d, sizeof d, (CK_BYTE_PTR) "aad", 3, ct, n, back, &len),
           CKR_ENCRYPTED_DATA_INVALID, "one flipped bit in 2.5 MiB refused");
    EXPECT(L->C_MessageDecryptFinal(s), CKR_OK, "C_MessageDecryptFinal (big)");
    free(plain), free(ct), free(back);
}

static void cancel(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    CK_BYTE iv[16] = {0};
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof iv};
    EXPECT(L->C_EncryptInit(s, &cbc, key), CKR_OK, "C_EncryptInit");
    CK_BYTE out[64];
    CK_ULONG len = sizeof out;
    EXPECT(L->C_EncryptUpdate(s, (CK_BYTE_PTR) "0123456789abcdef0123", 20, out, &len), CKR_OK, "an update");
    EXPECT(L->C_EncryptInit(s, &cbc, key), CKR_OPERATION_ACTIVE, "still active");
    EXPECT(L->C_SessionCancel(s, CKF_ENCRYPT | CKF_FIND_OBJECTS), CKR_OK, "C_SessionCancel(CKF_ENCRYPT)");
    len = sizeof out;
    EXPECT(L->C_EncryptFinal(s, out, &len), CKR_OPERATION_NOT_INITIALIZED, "the encryption is gone");
    EXPECT(L->C_EncryptInit(s, &cbc, key), CKR_OK, "a new C_EncryptInit");
    EXPECT(L->C_FindObjectsInit(s, NULL, 0), CKR_OK, "C_FindObjectsInit");
    EXPECT(L->C_SessionCancel(s, CKF_FIND_OBJECTS), CKR_OK, "C_SessionCancel(CKF_FIND_OBJECTS)");
    CK_OBJECT_HANDLE h[4];
    CK_ULONG n = 0;
    EXPECT(L->C_FindObjects(s, h, 4, &n), CKR_OPERATION_NOT_INITIALIZED, "the find is gone");
    len = sizeof out;
    EXPECT(L->C_EncryptFinal(s, out, &len), CKR_OK, "the other operation was not touched");
    CK_MECHANISM gcm_mech = {CKM_AES_GCM, NULL, 0};
    EXPECT(L->C_MessageEncryptInit(s, &gcm_mech, key), CKR_OK, "C_MessageEncryptInit");
    EXPECT(L->C_SessionCancel(s, CKF_MESSAGE_ENCRYPT), CKR_OK, "C_SessionCancel(CKF_MESSAGE_ENCRYPT)");
    EXPECT(L->C_MessageEncryptInit(s, &gcm_mech, key), CKR_OK, "a new message context after the cancel");
    EXPECT(L->C_MessageEncryptFinal(s), CKR_OK, "its final");
    EXPECT(L->C_SessionCancel(999999, CKF_ENCRYPT), CKR_SESSION_HANDLE_INVALID, "C_SessionCancel of no session");
}

static void unsupported(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    CK_MECHANISM m = {CKM_AES_GCM, NULL, 0};
    CK_ULONG id = 0;
    EXPECT(L->C_MessageSignInit(s, &m, key), CKR_FUNCTION_NOT_SUPPORTED, "C_MessageSignInit");
    EXPECT(L->C_MessageVerifyInit(s, &m, key), CKR_FUNCTION_NOT_SUPPORTED, "C_MessageVerifyInit");
    EXPECT(L->C_VerifySignatureInit(s, &m, key, NULL, 0), CKR_FUNCTION_NOT_SUPPORTED, "C_VerifySignatureInit");
    EXPECT(L->C_AsyncGetID(s, (CK_UTF8CHAR_PTR) "C_Sign", &id), CKR_FUNCTION_NOT_SUPPORTED, "C_AsyncGetID");
    EXPECT(L->C_WrapKeyAuthenticated(s, &m, key, key, NULL, 0, NULL, &id), CKR_FUNCTION_NOT_SUPPORTED,
           "C_WrapKeyAuthenticated");
    CK_MECHANISM kem = {CKM_ML_KEM, NULL, 0};
    CK_OBJECT_HANDLE out = 0;
    CK_ULONG ct_len = 0;
    EXPECT(L->C_EncapsulateKey(s, &kem, key, NULL, 0, NULL, &ct_len, &out), CKR_KEY_TYPE_INCONSISTENT,
           "C_EncapsulateKey with an AES key");
    EXPECT(L->C_EncapsulateKey(s, &kem, key, NULL, 0, NULL, NULL, &out), CKR_ARGUMENTS_BAD,
           "C_EncapsulateKey without a length");
}

/* A forked child: every 3.x call is CKR_CRYPTOKI_NOT_INITIALIZED until the child's own C_Initialize (through the 3.2
 * list), then it logs in with C_LoginUser on a session of its own and encrypts a message with the parent's key
 * handle (a session object of the parent's application is not the child's: it makes its own key). */
static void forked_child(CK_SESSION_HANDLE parent_session, CK_SLOT_ID slot)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        g_fail = 0;
        CK_BYTE iv[12] = {0}, tag[16], out[32];
        CK_GCM_MESSAGE_PARAMS p = {iv, 12, 0, CKG_GENERATE_RANDOM, tag, 128};
        CK_ULONG len = sizeof out;
        EXPECT(L->C_EncryptMessage(parent_session, &p, sizeof p, NULL, 0, (CK_BYTE_PTR) "x", 1, out, &len),
               CKR_CRYPTOKI_NOT_INITIALIZED, "child: C_EncryptMessage before its C_Initialize");
        EXPECT(L->C_LoginUser(parent_session, CKU_USER, (CK_UTF8CHAR_PTR) "p", 1, (CK_UTF8CHAR_PTR) "u", 1),
               CKR_CRYPTOKI_NOT_INITIALIZED, "child: C_LoginUser before its C_Initialize");
        EXPECT(L->C_Initialize(NULL), CKR_OK, "child: C_Initialize");
        CK_SESSION_HANDLE s = 0;
        EXPECT(L->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK, "child: session");
        const char *colon = strchr(g_pin, ':');
        CK_ULONG ulen = colon ? (CK_ULONG)(colon - g_pin) : 0;
        EXPECT(L->C_LoginUser(s, CKU_USER, (CK_UTF8CHAR_PTR)(colon ? colon + 1 : ""),
                              colon ? (CK_ULONG)strlen(colon + 1) : 0, (CK_UTF8CHAR_PTR)g_pin, ulen),
               CKR_OK, "child: C_LoginUser");
        CK_OBJECT_HANDLE key = aes_key(s);
        CK_MECHANISM mech = {CKM_AES_GCM, NULL, 0};
        EXPECT(L->C_MessageEncryptInit(s, &mech, key), CKR_OK, "child: C_MessageEncryptInit");
        len = sizeof out;
        EXPECT(L->C_EncryptMessage(s, &p, sizeof p, NULL, 0, (CK_BYTE_PTR) "x", 1, out, &len), CKR_OK,
               "child: C_EncryptMessage");
        EXPECT(L->C_Finalize(NULL), CKR_OK, "child: C_Finalize");
        fflush(stdout);
        _exit(g_fail > 100 ? 100 : g_fail);
    }
    int status = 0;
    check(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the forked child's checks", (CK_RV)status);
}

static int scenario_v3(void)
{
    EXPECT(L->C_Initialize(NULL), CKR_OK, "C_Initialize through the 3.2 list");
    CK_INFO info;
    EXPECT(L->C_GetInfo(&info), CKR_OK, "C_GetInfo through the 3.2 list");
    check(info.cryptokiVersion.major == 3 && info.cryptokiVersion.minor == 2, "it says Cryptoki 3.2", 0);
    EXPECT(F2->C_GetInfo(&info), CKR_OK, "C_GetInfo through the 2.40 list");
    check(info.cryptokiVersion.major == 2 && info.cryptokiVersion.minor == 40, "it says Cryptoki 2.40", 0);
    CK_SLOT_ID slots[4];
    CK_ULONG n = 4;
    EXPECT(L->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK, "slots");
    if (!n)
        return g_fail + 1;
    CK_SESSION_HANDLE s = 0;
    EXPECT(L->C_OpenSession(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK, "session");
    login_user(s);
    CK_MECHANISM_INFO mi;
    EXPECT(L->C_GetMechanismInfo(slots[0], CKM_AES_GCM, &mi), CKR_OK, "CKM_AES_GCM's mechanism info");
    check((mi.flags & (CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT | CKF_MULTI_MESSAGE)) ==
              (CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT | CKF_MULTI_MESSAGE) && (mi.flags & CKF_ENCRYPT),
          "it offers the message-based functions", mi.flags);
    CK_OBJECT_HANDLE key = aes_key(s);
    messages(s, key);
    big_messages(s, key);
    forked_child(s, slots[0]);
    cancel(s, key);
    unsupported(s, key);
    EXPECT(L->C_Finalize(NULL), CKR_OK, "C_Finalize");
    return g_fail;
}

/* ---- against a hostile peer (the test's, not an agent): malformed replies to the 3.x functions ----------------
 * The session handle names the case the peer answers with; every case is CKR_DEVICE_ERROR and leaves the caller's
 * buffers (output, length, IV, tag, key handle) as they were. */

#define SENTINEL 0xEE

static int untouched(const CK_BYTE *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != SENTINEL)
            return 0;
    return 1;
}

static void hostile_message(const char *what, int encrypt, int whole, CK_ULONG k, int size_query, CK_FLAGS flags)
{
    CK_BYTE iv[12], tag[16], out[64], in[5] = {1, 2, 3, 4, 5};
    memset(iv, SENTINEL, sizeof iv);
    memset(tag, SENTINEL, sizeof tag);
    memset(out, SENTINEL, sizeof out);
    CK_GCM_MESSAGE_PARAMS p = {iv, 12, 0, CKG_GENERATE_RANDOM, tag, 128};
    CK_ULONG len = sizeof out;
    CK_RV rv;
    if (whole && encrypt)
        rv = L->C_EncryptMessage(k, &p, sizeof p, NULL, 0, in, 5, size_query ? NULL : out, &len);
    else if (whole)
        rv = L->C_DecryptMessage(k, &p, sizeof p, NULL, 0, in, 5, size_query ? NULL : out, &len);
    else if (encrypt)
        rv = L->C_EncryptMessageNext(k, &p, sizeof p, in, 5, size_query ? NULL : out, &len, flags);
    else
        rv = L->C_DecryptMessageNext(k, &p, sizeof p, in, 5, size_query ? NULL : out, &len, flags);
    char line[160];
    snprintf(line, sizeof line, "%s case %lu: CKR_DEVICE_ERROR, nothing written", what, (unsigned long)k);
    check(rv == CKR_DEVICE_ERROR && len == sizeof out && untouched(out, sizeof out) && untouched(iv, sizeof iv) &&
              untouched(tag, sizeof tag),
          line, rv);
}

static int scenario_hostile(void)
{
    EXPECT(L->C_Initialize(NULL), CKR_OK, "C_Initialize (the hostile peer answers the hello)");
    for (CK_ULONG k = 1; k <= 10; k++)
        hostile_message("C_EncryptMessage", 1, 1, k, 0, 0);
    hostile_message("C_EncryptMessage size query", 1, 1, 11, 1, 0);
    for (CK_ULONG k = 1; k <= 2; k++)
        hostile_message("C_DecryptMessage", 0, 1, k, 0, 0);
    hostile_message("C_EncryptMessageNext (last part)", 1, 0, 1, 0, CKF_END_OF_MESSAGE);
    hostile_message("C_DecryptMessageNext", 0, 0, 1, 0, 0);
    for (CK_ULONG k = 1; k <= 4; k++) {
        CK_BYTE iv[12], tag[16];
        memset(iv, SENTINEL, sizeof iv);
        memset(tag, SENTINEL, sizeof tag);
        CK_GCM_MESSAGE_PARAMS p = {iv, 12, 0, CKG_GENERATE_RANDOM, tag, 128};
        CK_RV rv = L->C_EncryptMessageBegin(k, &p, sizeof p, NULL, 0);
        check(rv == CKR_DEVICE_ERROR && untouched(iv, sizeof iv), "C_EncryptMessageBegin: nothing written", rv);
    }
    CK_MECHANISM kem = {CKM_ML_KEM, NULL, 0};
    for (CK_ULONG k = 1; k <= 4; k++) {
        CK_BYTE ct[64];
        memset(ct, SENTINEL, sizeof ct);
        CK_ULONG len = sizeof ct;
        CK_OBJECT_HANDLE key = 77;
        CK_RV rv = L->C_EncapsulateKey(k, &kem, 5, NULL, 0, k == 3 ? NULL : ct, &len, &key);
        check(rv == CKR_DEVICE_ERROR && len == sizeof ct && key == 77 && untouched(ct, sizeof ct),
              "C_EncapsulateKey: nothing written", rv);
    }
    EXPECT(L->C_Finalize(NULL), CKR_OK, "C_Finalize");
    return g_fail;
}

/* ---- restart: a login made with C_LoginUser survives an agent restart ------------------------------------- */

static int scenario_restart(void)
{
    EXPECT(L->C_Initialize(NULL), CKR_OK, "C_Initialize");
    CK_SLOT_ID slot = 0;
    CK_ULONG n = 1;
    EXPECT(L->C_GetSlotList(CK_TRUE, &slot, &n), CKR_OK, "slot");
    CK_SESSION_HANDLE s = 0;
    EXPECT(L->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK, "session");
    const char *colon = strchr(g_pin, ':');
    CK_ULONG ulen = colon ? (CK_ULONG)(colon - g_pin) : 0;
    EXPECT(L->C_LoginUser(s, CKU_USER, (CK_UTF8CHAR_PTR)(colon ? colon + 1 : ""), colon ? (CK_ULONG)strlen(colon + 1) : 0,
                          (CK_UTF8CHAR_PTR)g_pin, ulen),
           CKR_OK, "C_LoginUser");
    printf("RESTART-AGENT\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        check(0, "the test's go-ahead", 0);
    CK_SESSION_INFO info;
    EXPECT(L->C_GetSessionInfo(s, &info), CKR_OK, "the session after the agent restarted");
    check(info.state == CKS_RW_USER_FUNCTIONS, "still logged in (the module kept username:password)", info.state);
    CK_OBJECT_HANDLE key = aes_key(s);
    check(key != 0, "a key made under the reopened login", key);
    EXPECT(L->C_Finalize(NULL), CKR_OK, "C_Finalize");
    return g_fail;
}

/* ---- timing (numbers for the report; nothing is asserted on time) ----------------------------------------- */

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int scenario_timing(void)
{
    const char *env = getenv("P11V3_ROUNDS");
    int rounds = env && atoi(env) > 0 ? atoi(env) : 200;
    EXPECT(L->C_Initialize(NULL), CKR_OK, "C_Initialize");
    CK_SLOT_ID slot = 0;
    CK_ULONG n = 1;
    EXPECT(L->C_GetSlotList(CK_TRUE, &slot, &n), CKR_OK, "slot");
    CK_SESSION_HANDLE s = 0;
    EXPECT(L->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK, "session");
    EXPECT(L->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)g_pin, (CK_ULONG)strlen(g_pin)), CKR_OK, "login");
    CK_OBJECT_HANDLE key = aes_key(s);
    CK_BYTE data[1024], out[1100], iv[12] = {0}, tag[16];
    memset(data, 0x5a, sizeof data);
    CK_MECHANISM mech = {CKM_AES_GCM, NULL, 0};
    EXPECT(L->C_MessageEncryptInit(s, &mech, key), CKR_OK, "C_MessageEncryptInit");
    CK_GCM_MESSAGE_PARAMS p = {iv, 12, 0, CKG_GENERATE_RANDOM, tag, 128};
    int bad = 0;
    double t0 = now_us();
    for (int i = 0; i < rounds; i++) {
        CK_ULONG len = sizeof out;
        bad += L->C_EncryptMessage(s, &p, sizeof p, NULL, 0, data, sizeof data, out, &len) != CKR_OK;
    }
    double message_us = (now_us() - t0) / rounds;
    check(!bad, "C_EncryptMessage rounds", (CK_RV)bad);
    EXPECT(L->C_MessageEncryptFinal(s), CKR_OK, "C_MessageEncryptFinal");

    CK_GCM_PARAMS g = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM m240 = {CKM_AES_GCM, &g, sizeof g};
    bad = 0;
    t0 = now_us();
    for (int i = 0; i < rounds; i++) {
        CK_ULONG len = sizeof out;
        iv[0] = (CK_BYTE)i, iv[1] = (CK_BYTE)(i >> 8); /* a new IV per message, as the application must */
        bad += L->C_EncryptInit(s, &m240, key) != CKR_OK;
        bad += L->C_Encrypt(s, data, sizeof data, out, &len) != CKR_OK;
    }
    double v240_us = (now_us() - t0) / rounds;
    check(!bad, "C_EncryptInit + C_Encrypt rounds", (CK_RV)bad);

    CK_ULONG ps = 2; /* CKP_ML_KEM_768 */
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    CK_ATTRIBUTE pub_t[] = {{CKA_TOKEN, &no, sizeof no}, {CKA_PARAMETER_SET, &ps, sizeof ps},
                            {CKA_ENCAPSULATE, &yes, sizeof yes}};
    CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &no, sizeof no}, {CKA_DECAPSULATE, &yes, sizeof yes}};
    CK_MECHANISM gen = {CKM_ML_KEM_KEY_PAIR_GEN, NULL, 0}, kem = {CKM_ML_KEM, NULL, 0};
    CK_OBJECT_HANDLE pub = 0, priv = 0;
    EXPECT(L->C_GenerateKeyPair(s, &gen, pub_t, 3, priv_t, 2, &pub, &priv), CKR_OK, "an ML-KEM-768 pair (C)");
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG klen = 32;
    CK_ATTRIBUTE secret_t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt},
                               {CKA_TOKEN, &no, sizeof no}, {CKA_VALUE_LEN, &klen, sizeof klen}};
    int kem_rounds = rounds / 4 > 0 ? rounds / 4 : 1;
    CK_BYTE ct[1088];
    bad = 0;
    double enc_us = 0, dec_us = 0;
    for (int i = 0; i < kem_rounds; i++) {
        CK_ULONG ct_len = 0;
        CK_OBJECT_HANDLE k1 = 0, k2 = 0;
        double a = now_us();
        bad += L->C_EncapsulateKey(s, &kem, pub, secret_t, 4, NULL, &ct_len, &k1) != CKR_OK || ct_len != 1088;
        bad += L->C_EncapsulateKey(s, &kem, pub, secret_t, 4, ct, &ct_len, &k1) != CKR_OK;
        double b = now_us();
        bad += L->C_DecapsulateKey(s, &kem, priv, secret_t, 4, ct, ct_len, &k2) != CKR_OK;
        dec_us += now_us() - b;
        enc_us += b - a;
        bad += L->C_DestroyObject(s, k1) != CKR_OK;
        bad += L->C_DestroyObject(s, k2) != CKR_OK;
    }
    check(!bad, "C_EncapsulateKey (size query, then the call) and C_DecapsulateKey rounds (C)", (CK_RV)bad);
    printf("timing: 1 KiB AES-GCM: C_EncryptMessage %.0f us, C_EncryptInit+C_Encrypt %.0f us; ML-KEM-768: "
           "C_EncapsulateKey (size query + call) %.0f us, C_DecapsulateKey %.0f us (%d / %d rounds)\n",
           message_us, v240_us, enc_us / kem_rounds, dec_us / kem_rounds, rounds, kem_rounds);
    EXPECT(L->C_Finalize(NULL), CKR_OK, "C_Finalize");
    return g_fail;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODULE PIN SCENARIO\n", argv[0]);
        return 2;
    }
    g_pin = argv[2];
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    get_list = (get_interface_list_fn)dlsym(lib, "C_GetInterfaceList");
    get_iface = (get_interface_fn)dlsym(lib, "C_GetInterface");
    if (!gfl || !get_list || !get_iface) {
        fprintf(stderr, "the module lacks C_GetFunctionList, C_GetInterfaceList or C_GetInterface\n");
        return 2;
    }
    gfl(&F2);
    int failures;
    const char *scenario = argv[3];
    if (!strcmp(scenario, "interfaces")) {
        failures = scenario_interfaces();
    } else if (!strcmp(scenario, "v3") || !strcmp(scenario, "hostile") || !strcmp(scenario, "timing") ||
               !strcmp(scenario, "restart")) {
        CK_VERSION v = {3, 2};
        CK_INTERFACE_PTR it = NULL;
        if (get_iface((CK_UTF8CHAR_PTR) "PKCS 11", &v, &it, 0) != CKR_OK || !it) {
            fprintf(stderr, "no PKCS 11 3.2 interface\n");
            return 2;
        }
        L = it->pFunctionList;
        failures = !strcmp(scenario, "v3")        ? scenario_v3()
                   : !strcmp(scenario, "hostile") ? scenario_hostile()
                   : !strcmp(scenario, "restart") ? scenario_restart()
                                                  : scenario_timing();
    } else {
        fprintf(stderr, "unknown scenario %s\n", scenario);
        return 2;
    }
    printf("%s: %d failure(s)\n", scenario, failures);
    dlclose(lib);
    return failures > 100 ? 100 : failures;
}
