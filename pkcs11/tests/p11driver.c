/*
 * Test driver for libstrongroom-pkcs11.so: dlopens the module and runs one scenario.
 *
 *   p11driver MODULE PIN SCENARIO
 *
 * Scenarios that need a running agent (STRONGROOM_AGENT_SOCKET) and a crypto
 * user's PIN ("username:password"):
 *   basic      info, slots, token, session, login, AES key, CBC-PAD and GCM
 *              (both parameter layouts) with size queries and BUFFER_TOO_SMALL,
 *              find, attributes (sensitive), random, logout, finalize
 *   threads    8 threads x 200 encrypt/decrypt, each on its own session
 *   fork       CKR_CRYPTOKI_NOT_INITIALIZED in a child until it calls
 *              C_Initialize; the child then uses the parent's token key
 *   badargs    local argument checks, unknown parameter layouts, calls before
 *              C_Initialize, C_Initialize arguments, unsupported functions
 *   templates  nested (array) attributes: CKA_WRAP_TEMPLATE, CKA_ALLOWED_MECHANISMS
 *   endop      every failed call ends its operation, wherever the failure is found (module, agent), but
 *              CKR_BUFFER_TOO_SMALL and a size query; ten threads, one with a 9 MiB single part
 *   bigdata    9 MiB in one update (digest, encrypt, decrypt); a 7.5 MiB single part
 *   restart    prints RESTART-AGENT and waits for a line on stdin (the test restarts the agent):
 *              the same sessions, login and key work afterwards without C_Initialize
 *   conffile   the agent found through the configuration file alone (STRONGROOM_PKCS11_CONF)
 * Without an agent:
 *   noagent    STRONGROOM_AGENT_SOCKET unset / empty / too long / pointing nowhere; the
 *              configuration file (NOAGENT_DIR); each failure explained on stderr
 * Against the test suite's hostile peer (malformed replies; not an agent):
 *   hostile    every malformation -> CKR_DEVICE_ERROR, then the next call works on a new connection
 *   fuzz       randomly corrupted replies: any rv, no crash, no leak
 *
 * One line per check ("ok" or "FAIL"); the exit status is the number of
 * failures (capped at 100), 2 for usage errors.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR F;
static const char *g_pin = "";
static atomic_int g_fail;
static const char *g_prefix = "";
static pthread_mutex_t g_print = PTHREAD_MUTEX_INITIALIZER;

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const char *rvname(CK_RV rv)
{
    switch (rv) {
#define N(x)                                                                                       \
    case x:                                                                                        \
        return #x;
        N(CKR_OK)
        N(CKR_HOST_MEMORY)
        N(CKR_SLOT_ID_INVALID)
        N(CKR_GENERAL_ERROR)
        N(CKR_FUNCTION_FAILED)
        N(CKR_ARGUMENTS_BAD)
        N(CKR_CANT_LOCK)
        N(CKR_ATTRIBUTE_READ_ONLY)
        N(CKR_ATTRIBUTE_SENSITIVE)
        N(CKR_ATTRIBUTE_TYPE_INVALID)
        N(CKR_ATTRIBUTE_VALUE_INVALID)
        N(CKR_ACTION_PROHIBITED)
        N(CKR_DATA_INVALID)
        N(CKR_DATA_LEN_RANGE)
        N(CKR_DEVICE_ERROR)
        N(CKR_DEVICE_MEMORY)
        N(CKR_DEVICE_REMOVED)
        N(CKR_ENCRYPTED_DATA_INVALID)
        N(CKR_ENCRYPTED_DATA_LEN_RANGE)
        N(CKR_FUNCTION_NOT_PARALLEL)
        N(CKR_FUNCTION_NOT_SUPPORTED)
        N(CKR_KEY_HANDLE_INVALID)
        N(CKR_KEY_TYPE_INCONSISTENT)
        N(CKR_KEY_FUNCTION_NOT_PERMITTED)
        N(CKR_MECHANISM_INVALID)
        N(CKR_MECHANISM_PARAM_INVALID)
        N(CKR_OBJECT_HANDLE_INVALID)
        N(CKR_OPERATION_ACTIVE)
        N(CKR_OPERATION_NOT_INITIALIZED)
        N(CKR_PIN_INCORRECT)
        N(CKR_PIN_LEN_RANGE)
        N(CKR_PIN_LOCKED)
        N(CKR_SESSION_CLOSED)
        N(CKR_SESSION_COUNT)
        N(CKR_SESSION_HANDLE_INVALID)
        N(CKR_SESSION_READ_ONLY)
        N(CKR_SIGNATURE_INVALID)
        N(CKR_SIGNATURE_LEN_RANGE)
        N(CKR_TEMPLATE_INCOMPLETE)
        N(CKR_TEMPLATE_INCONSISTENT)
        N(CKR_TOKEN_NOT_PRESENT)
        N(CKR_USER_ALREADY_LOGGED_IN)
        N(CKR_USER_NOT_LOGGED_IN)
        N(CKR_USER_TYPE_INVALID)
        N(CKR_WRAPPED_KEY_LEN_RANGE)
        N(CKR_RANDOM_SEED_NOT_SUPPORTED)
        N(CKR_BUFFER_TOO_SMALL)
        N(CKR_CRYPTOKI_NOT_INITIALIZED)
        N(CKR_CRYPTOKI_ALREADY_INITIALIZED)
        N(CKR_NO_EVENT)
        N(CKR_KEY_INDIGESTIBLE)
        N(CKR_USER_PIN_NOT_INITIALIZED)
        N(CKR_PIN_INVALID)
#undef N
    default:
        return "CKR_?";
    }
}

static void report(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void report(int ok, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&g_print);
    printf("%s%s ", g_prefix, ok ? "ok  " : "FAIL");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
    pthread_mutex_unlock(&g_print);
    if (!ok)
        atomic_fetch_add(&g_fail, 1);
}

static int expect_rv(const char *what, CK_RV got, CK_RV want, int line)
{
    int ok = got == want;
    if (ok)
        report(1, "%s -> %s", what, rvname(got));
    else
        report(0, "%s -> %s (0x%lx), expected %s [line %d]", what, rvname(got), (unsigned long)got, rvname(want),
               line);
    return ok;
}

#define EXPECT(expr, want) expect_rv(#expr, (expr), (want), __LINE__)
#define CHECK(cond, ...) report(!!(cond), __VA_ARGS__)

/* Fail hard: the rest of the scenario cannot run. */
#define REQUIRE_OK(expr)                                                                           \
    do {                                                                                           \
        if (!expect_rv(#expr, (expr), CKR_OK, __LINE__))                                           \
            return;                                                                                \
    } while (0)

static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static CK_OBJECT_CLASS secret_class = CKO_SECRET_KEY;
static CK_KEY_TYPE aes_type = CKK_AES;

/* ---- helpers ---------------------------------------------------------------------------------- */

static CK_SLOT_ID first_slot(void)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = COUNT(slots);
    CK_RV rv = F->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK || n == 0) {
        report(0, "no slot with a token (rv %s, %lu slots)", rvname(rv), (unsigned long)n);
        return (CK_SLOT_ID)-1;
    }
    return slots[0];
}

static CK_RV open_session(CK_SLOT_ID slot, CK_SESSION_HANDLE *s)
{
    return F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s);
}

static CK_RV login(CK_SESSION_HANDLE s)
{
    return F->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)g_pin, (CK_ULONG)strlen(g_pin));
}

static CK_RV gen_aes(CK_SESSION_HANDLE s, const char *label, CK_BBOOL token, CK_OBJECT_HANDLE *key)
{
    CK_MECHANISM mech = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len = 32;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &secret_class, sizeof secret_class},
        {CKA_KEY_TYPE, &aes_type, sizeof aes_type},
        {CKA_VALUE_LEN, &len, sizeof len},
        {CKA_TOKEN, &token, sizeof token},
        {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)},
        {CKA_ENCRYPT, &yes, sizeof yes},
        {CKA_DECRYPT, &yes, sizeof yes},
    };
    return F->C_GenerateKey(s, &mech, t, COUNT(t), key);
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed * 31u + i * 7u + 3u);
}

/* The older 40-byte CK_GCM_PARAMS layout (no ulIvBits), laid out by hand. */
static void gcm40(unsigned char *buf, CK_BYTE_PTR iv, CK_ULONG iv_len, CK_BYTE_PTR aad, CK_ULONG aad_len,
                  CK_ULONG tag_bits)
{
    const size_t P = sizeof(void *), L = sizeof(CK_ULONG);
    memcpy(buf, &iv, P);
    memcpy(buf + P, &iv_len, L);
    memcpy(buf + P + L, &aad, P);
    memcpy(buf + 2 * P + L, &aad_len, L);
    memcpy(buf + 2 * P + 2 * L, &tag_bits, L);
}

static void load_module(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        exit(2);
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList");
    if (!get) {
        fprintf(stderr, "no C_GetFunctionList in %s\n", path);
        exit(2);
    }
    EXPECT(get(NULL), CKR_ARGUMENTS_BAD);
    if (!EXPECT(get(&F), CKR_OK) || !F)
        exit(2);
    CHECK(F->version.major == 2 && F->version.minor == 40, "function list version %d.%d", F->version.major,
          F->version.minor);
    /* every slot of the v2.40 list is filled */
    void (**fp)(void) = (void (**)(void))((char *)F + offsetof(CK_FUNCTION_LIST, C_Initialize));
    size_t n = (sizeof(CK_FUNCTION_LIST) - offsetof(CK_FUNCTION_LIST, C_Initialize)) / sizeof(void *);
    size_t missing = 0;
    for (size_t i = 0; i < n; i++)
        if (!fp[i])
            missing++;
    CHECK(n == 68 && missing == 0, "function list has %zu entries, %zu NULL", n, missing);
}

/* ---- basic ---------------------------------------------------------------------------------------- */

static void scenario_basic(void)
{
    CK_INFO info;
    EXPECT(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    REQUIRE_OK(F->C_Initialize(NULL));
    EXPECT(F->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED);

    REQUIRE_OK(F->C_GetInfo(&info));
    CHECK(info.cryptokiVersion.major == 2 && info.cryptokiVersion.minor == 40, "cryptokiVersion %d.%d",
          info.cryptokiVersion.major, info.cryptokiVersion.minor);
    CHECK(memcmp(info.manufacturerID, "Strongroom", 10) == 0 && info.manufacturerID[31] == ' ',
          "manufacturerID is blank-padded \"Strongroom\"");

    /* slots: size query, BUFFER_TOO_SMALL, real buffer */
    CK_ULONG n = 0;
    REQUIRE_OK(F->C_GetSlotList(CK_TRUE, NULL, &n));
    CHECK(n >= 1, "%lu slot(s) with a token", (unsigned long)n);
    if (n < 1)
        return;
    CK_SLOT_ID slots[64];
    CK_ULONG small = 0;
    EXPECT(F->C_GetSlotList(CK_TRUE, slots, &small), CKR_BUFFER_TOO_SMALL);
    CHECK(small == n, "BUFFER_TOO_SMALL reports %lu slots", (unsigned long)small);
    CK_ULONG m = COUNT(slots);
    REQUIRE_OK(F->C_GetSlotList(CK_TRUE, slots, &m));
    CHECK(m == n, "slot list has %lu slots", (unsigned long)m);
    CK_SLOT_ID slot = slots[0];

    CK_SLOT_INFO sinfo;
    REQUIRE_OK(F->C_GetSlotInfo(slot, &sinfo));
    CHECK(sinfo.flags & CKF_TOKEN_PRESENT, "slot %lu has a token", (unsigned long)slot);
    CK_TOKEN_INFO tinfo;
    REQUIRE_OK(F->C_GetTokenInfo(slot, &tinfo));
    CHECK(memchr(tinfo.label, 0, sizeof tinfo.label) == NULL, "token label is blank-padded: \"%.32s\"", tinfo.label);
    CHECK(tinfo.flags & CKF_TOKEN_INITIALIZED, "token is initialized (flags 0x%lx)", (unsigned long)tinfo.flags);

    /* mechanisms */
    CK_ULONG nm = 0;
    REQUIRE_OK(F->C_GetMechanismList(slot, NULL, &nm));
    CK_MECHANISM_TYPE *mechs = calloc(nm ? nm : 1, sizeof *mechs);
    CK_ULONG nm2 = nm;
    EXPECT(F->C_GetMechanismList(slot, mechs, &nm2), CKR_OK);
    int has_gcm = 0;
    for (CK_ULONG i = 0; i < nm2; i++)
        has_gcm |= mechs[i] == CKM_AES_GCM;
    free(mechs);
    CHECK(nm2 == nm && has_gcm, "%lu mechanisms, AES_GCM among them", (unsigned long)nm2);
    CK_MECHANISM_INFO minfo;
    EXPECT(F->C_GetMechanismInfo(slot, CKM_AES_GCM, &minfo), CKR_OK);
    CHECK(minfo.flags & CKF_ENCRYPT, "AES_GCM can encrypt (flags 0x%lx)", (unsigned long)minfo.flags);

    /* session and login */
    CK_SESSION_HANDLE s;
    REQUIRE_OK(open_session(slot, &s));
    CK_SESSION_INFO si;
    EXPECT(F->C_GetSessionInfo(s, &si), CKR_OK);
    CHECK(si.state == CKS_RW_PUBLIC_SESSION, "session state %lu (RW public)", (unsigned long)si.state);
    REQUIRE_OK(login(s));
    EXPECT(F->C_GetSessionInfo(s, &si), CKR_OK);
    CHECK(si.state == CKS_RW_USER_FUNCTIONS, "session state %lu (RW user)", (unsigned long)si.state);

    char label[64];
    snprintf(label, sizeof label, "p11driver-basic-%ld", (long)getpid());
    CK_OBJECT_HANDLE key;
    REQUIRE_OK(gen_aes(s, label, CK_FALSE, &key));

    unsigned char plain[40], iv[16], ct[128], back[128];
    fill(plain, sizeof plain, 1);
    fill(iv, sizeof iv, 2);

    /* CBC-PAD: size query, too small, real buffer */
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof iv};
    REQUIRE_OK(F->C_EncryptInit(s, &cbc, key));
    CK_ULONG ctlen = 0;
    EXPECT(F->C_Encrypt(s, plain, sizeof plain, NULL, &ctlen), CKR_OK);
    CHECK(ctlen == 48, "size query: %lu bytes (48 expected)", (unsigned long)ctlen);
    CK_ULONG tiny = 10;
    EXPECT(F->C_Encrypt(s, plain, sizeof plain, ct, &tiny), CKR_BUFFER_TOO_SMALL);
    CHECK(tiny == 48, "BUFFER_TOO_SMALL sets the length to %lu", (unsigned long)tiny);
    ctlen = sizeof ct;
    EXPECT(F->C_Encrypt(s, plain, sizeof plain, ct, &ctlen), CKR_OK);
    CHECK(ctlen == 48, "ciphertext is %lu bytes", (unsigned long)ctlen);
    EXPECT(F->C_Encrypt(s, plain, sizeof plain, ct, &ctlen), CKR_OPERATION_NOT_INITIALIZED);
    REQUIRE_OK(F->C_DecryptInit(s, &cbc, key));
    CK_ULONG blen = sizeof back;
    EXPECT(F->C_Decrypt(s, ct, ctlen, back, &blen), CKR_OK);
    CHECK(blen == sizeof plain && memcmp(back, plain, blen) == 0, "CBC-PAD round trip");

    /* GCM with the 48-byte v2.40 parameters */
    unsigned char aad[] = "header";
    CK_GCM_PARAMS g = {iv, 12, 96, aad, sizeof aad - 1, 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &g, sizeof g};
    CHECK(sizeof g == 2 * sizeof(void *) + 4 * sizeof(CK_ULONG), "CK_GCM_PARAMS is %zu bytes", sizeof g);
    REQUIRE_OK(F->C_EncryptInit(s, &gcm, key));
    ctlen = 0;
    EXPECT(F->C_Encrypt(s, plain, sizeof plain, NULL, &ctlen), CKR_OK);
    CHECK(ctlen == sizeof plain + 16, "GCM size query: %lu bytes", (unsigned long)ctlen);
    ctlen = sizeof ct;
    EXPECT(F->C_Encrypt(s, plain, sizeof plain, ct, &ctlen), CKR_OK);
    REQUIRE_OK(F->C_DecryptInit(s, &gcm, key));
    blen = sizeof back;
    EXPECT(F->C_Decrypt(s, ct, ctlen, back, &blen), CKR_OK);
    CHECK(blen == sizeof plain && memcmp(back, plain, blen) == 0, "GCM (48-byte parameters) round trip");

    /* GCM with the 40-byte layout decrypts the same ciphertext */
    unsigned char g40[2 * sizeof(void *) + 3 * sizeof(CK_ULONG)];
    gcm40(g40, iv, 12, aad, sizeof aad - 1, 128);
    CK_MECHANISM gcm_old = {CKM_AES_GCM, g40, sizeof g40};
    REQUIRE_OK(F->C_DecryptInit(s, &gcm_old, key));
    blen = sizeof back;
    EXPECT(F->C_Decrypt(s, ct, ctlen, back, &blen), CKR_OK);
    CHECK(blen == sizeof plain && memcmp(back, plain, blen) == 0, "GCM (40-byte parameters) round trip");

    /* find by label */
    CK_ATTRIBUTE ft[] = {{CKA_LABEL, label, (CK_ULONG)strlen(label)}};
    REQUIRE_OK(F->C_FindObjectsInit(s, ft, 1));
    CK_OBJECT_HANDLE found[8];
    CK_ULONG nf = 0;
    EXPECT(F->C_FindObjects(s, found, 8, &nf), CKR_OK);
    CHECK(nf == 1 && found[0] == key, "found %lu object(s), the key among them", (unsigned long)nf);
    EXPECT(F->C_FindObjects(s, found, 8, &nf), CKR_OK);
    CHECK(nf == 0, "then no more objects");
    EXPECT(F->C_FindObjectsFinal(s), CKR_OK);

    /* attributes: size query, values, sensitive, too small */
    CK_ULONG vlen = 0;
    CK_ATTRIBUTE q[] = {{CKA_LABEL, NULL, 0}, {CKA_VALUE_LEN, &vlen, sizeof vlen}};
    EXPECT(F->C_GetAttributeValue(s, key, q, 2), CKR_OK);
    CHECK(q[0].ulValueLen == strlen(label), "label size query: %lu", (unsigned long)q[0].ulValueLen);
    CHECK(vlen == 32 && q[1].ulValueLen == sizeof vlen, "CKA_VALUE_LEN is %lu", (unsigned long)vlen);
    char lbuf[64] = {0};
    unsigned char value[64];
    CK_ATTRIBUTE a[] = {{CKA_LABEL, lbuf, sizeof lbuf}, {CKA_VALUE, value, sizeof value}};
    EXPECT(F->C_GetAttributeValue(s, key, a, 2), CKR_ATTRIBUTE_SENSITIVE);
    CHECK(a[0].ulValueLen == strlen(label) && memcmp(lbuf, label, strlen(label)) == 0, "label read back: %.*s",
          (int)strlen(label), lbuf);
    CHECK(a[1].ulValueLen == CK_UNAVAILABLE_INFORMATION, "CKA_VALUE length is CK_UNAVAILABLE_INFORMATION");
    CK_ATTRIBUTE v1[] = {{CKA_VALUE, NULL, 0}};
    EXPECT(F->C_GetAttributeValue(s, key, v1, 1), CKR_ATTRIBUTE_SENSITIVE);
    CHECK(v1[0].ulValueLen == CK_UNAVAILABLE_INFORMATION, "CKA_VALUE size query: CK_UNAVAILABLE_INFORMATION");
    CK_ATTRIBUTE t1[] = {{CKA_LABEL, lbuf, 3}};
    EXPECT(F->C_GetAttributeValue(s, key, t1, 1), CKR_BUFFER_TOO_SMALL);
    CHECK(t1[0].ulValueLen == CK_UNAVAILABLE_INFORMATION, "small label buffer: CK_UNAVAILABLE_INFORMATION");

    unsigned char rnd[32] = {0}, zero[32] = {0};
    EXPECT(F->C_GenerateRandom(s, rnd, sizeof rnd), CKR_OK);
    CHECK(memcmp(rnd, zero, sizeof rnd) != 0, "random bytes are not all zero");

    EXPECT(F->C_DestroyObject(s, key), CKR_OK);
    EXPECT(F->C_Logout(s), CKR_OK);
    EXPECT(F->C_CloseSession(s), CKR_OK);
    EXPECT(F->C_Finalize(NULL), CKR_OK);
    EXPECT(F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
}

/* ---- threads ---------------------------------------------------------------------------------------- */

#define THREADS 8
#define ROUNDS 200

struct worker {
    int id;
    CK_SLOT_ID slot;
    int errors;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE key;
    char label[64];
    CK_RV rv;
    snprintf(label, sizeof label, "p11driver-thread-%ld-%d", (long)getpid(), w->id);
    if ((rv = open_session(w->slot, &s)) != CKR_OK || (rv = gen_aes(s, label, CK_FALSE, &key)) != CKR_OK) {
        report(0, "thread %d: setup failed: %s", w->id, rvname(rv));
        w->errors++;
        return NULL;
    }
    unsigned char plain[64], ct[128], back[128], iv[12], aad[8];
    for (int i = 0; i < ROUNDS && w->errors < 5; i++) {
        fill(plain, sizeof plain, (unsigned)(w->id * 1000 + i));
        fill(aad, sizeof aad, (unsigned)i);
        memset(iv, 0, sizeof iv);
        memcpy(iv, &i, sizeof i);
        iv[8] = (unsigned char)w->id;
        CK_GCM_PARAMS g = {iv, sizeof iv, 96, aad, sizeof aad, 128};
        CK_MECHANISM m = {CKM_AES_GCM, &g, sizeof g};
        CK_ULONG ctlen = sizeof ct, blen = sizeof back;
        if ((rv = F->C_EncryptInit(s, &m, key)) != CKR_OK || (rv = F->C_Encrypt(s, plain, sizeof plain, ct, &ctlen)) ||
            (rv = F->C_DecryptInit(s, &m, key)) != CKR_OK || (rv = F->C_Decrypt(s, ct, ctlen, back, &blen))) {
            report(0, "thread %d round %d: %s", w->id, i, rvname(rv));
            w->errors++;
        } else if (ctlen != sizeof plain + 16 || blen != sizeof plain || memcmp(back, plain, blen) != 0) {
            report(0, "thread %d round %d: wrong round trip", w->id, i);
            w->errors++;
        }
    }
    F->C_DestroyObject(s, key);
    if ((rv = F->C_CloseSession(s)) != CKR_OK) {
        report(0, "thread %d: C_CloseSession: %s", w->id, rvname(rv));
        w->errors++;
    }
    return NULL;
}

static void scenario_threads(void)
{
    CK_C_INITIALIZE_ARGS args = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
    REQUIRE_OK(F->C_Initialize(&args));
    CK_SLOT_ID slot = first_slot();
    CK_SESSION_HANDLE s;
    REQUIRE_OK(open_session(slot, &s));
    REQUIRE_OK(login(s)); /* the login is the application's: every session shares it */
    pthread_t tid[THREADS];
    struct worker w[THREADS];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){i, slot, 0};
        pthread_create(&tid[i], NULL, worker_main, &w[i]);
    }
    int errors = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(tid[i], NULL);
        errors += w[i].errors;
        CHECK(w[i].errors == 0, "thread %d: %d encrypt/decrypt round trips on its own session", i, ROUNDS);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(errors == 0, "%d threads x %d rounds in %.2f s (%.0f calls/s)", THREADS, ROUNDS, secs,
          THREADS * ROUNDS * 4 / (secs > 0 ? secs : 1));
    EXPECT(F->C_Logout(s), CKR_OK);
    EXPECT(F->C_CloseSession(s), CKR_OK);
    EXPECT(F->C_Finalize(NULL), CKR_OK);
}

/* ---- fork ------------------------------------------------------------------------------------------- */

static CK_RV encrypt_once(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    unsigned char iv[16], plain[32], ct[64];
    fill(iv, sizeof iv, 9);
    fill(plain, sizeof plain, 10);
    CK_MECHANISM m = {CKM_AES_CBC_PAD, iv, sizeof iv};
    CK_ULONG len = sizeof ct;
    CK_RV rv = F->C_EncryptInit(s, &m, key);
    return rv != CKR_OK ? rv : F->C_Encrypt(s, plain, sizeof plain, ct, &len);
}

static atomic_int g_busy_errors;

static void *busy_thread(void *arg)
{
    CK_OBJECT_HANDLE key = *(CK_OBJECT_HANDLE *)arg;
    CK_SESSION_HANDLE s;
    CK_SLOT_ID slot = first_slot();
    if (open_session(slot, &s) != CKR_OK) {
        atomic_fetch_add(&g_busy_errors, 1);
        return NULL;
    }
    for (int i = 0; i < 40; i++)
        if (encrypt_once(s, key) != CKR_OK)
            atomic_fetch_add(&g_busy_errors, 1);
    if (F->C_CloseSession(s) != CKR_OK)
        atomic_fetch_add(&g_busy_errors, 1);
    return NULL;
}

static void fork_child(CK_OBJECT_HANDLE key, const char *label)
{
    g_prefix = "child: ";
    atomic_store(&g_fail, 0);
    CK_INFO info;
    CK_ULONG n = 0;
    CK_SESSION_HANDLE s;
    EXPECT(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT(F->C_GetSlotList(CK_TRUE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT(F->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT(encrypt_once(1, key), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT(F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
    /* as an nginx worker: its master cleared the environment; the parent's socket is used */
    unsetenv("STRONGROOM_AGENT_SOCKET");
    setenv("STRONGROOM_PKCS11_CONF", "/nonexistent/strongroom/pkcs11.conf", 1);
    if (!EXPECT(F->C_Initialize(NULL), CKR_OK))
        _exit(1);
    EXPECT(F->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    CK_SLOT_ID slot = first_slot();
    if (EXPECT(open_session(slot, &s), CKR_OK) && EXPECT(login(s), CKR_OK)) {
        EXPECT(encrypt_once(s, key), CKR_OK);
        CK_ATTRIBUTE ft[] = {{CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)}};
        CK_OBJECT_HANDLE found[4];
        CK_ULONG nf = 0;
        if (EXPECT(F->C_FindObjectsInit(s, ft, 1), CKR_OK)) {
            EXPECT(F->C_FindObjects(s, found, 4, &nf), CKR_OK);
            EXPECT(F->C_FindObjectsFinal(s), CKR_OK);
        }
        CHECK(nf == 1 && found[0] == key, "the child finds the parent's token key under the same handle");
        EXPECT(F->C_Logout(s), CKR_OK);
        EXPECT(F->C_CloseSession(s), CKR_OK);
    }
    EXPECT(F->C_Finalize(NULL), CKR_OK);
    fflush(stdout);
    int f = atomic_load(&g_fail);
    _exit(f > 100 ? 100 : f);
}

static void scenario_fork(void)
{
    REQUIRE_OK(F->C_Initialize(NULL));
    CK_SLOT_ID slot = first_slot();
    CK_SESSION_HANDLE s;
    REQUIRE_OK(open_session(slot, &s));
    REQUIRE_OK(login(s));
    char label[64];
    snprintf(label, sizeof label, "p11driver-fork-%ld-%ld", (long)getpid(), (long)time(NULL));
    CK_OBJECT_HANDLE key, found[4];
    REQUIRE_OK(gen_aes(s, label, CK_TRUE, &key));
    CK_ATTRIBUTE ft[] = {{CKA_LABEL, label, (CK_ULONG)strlen(label)}};
    CK_ULONG nf = 0;
    REQUIRE_OK(F->C_FindObjectsInit(s, ft, 1));
    EXPECT(F->C_FindObjects(s, found, 4, &nf), CKR_OK);
    EXPECT(F->C_FindObjectsFinal(s), CKR_OK);
    CHECK(nf == 1 && found[0] == key, "parent finds its token key");

    /* Other threads are in the middle of calls (the pool holds several
     * connections, some in use) while the process forks. */
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, busy_thread, &key);

    /* a child that only exits: its copies of the sockets close, the parent's stay */
    fflush(stdout);
    pid_t quiet = fork();
    if (quiet == 0)
        _exit(0);
    int status = 0;
    waitpid(quiet, &status, 0);
    EXPECT(encrypt_once(s, key), CKR_OK);

    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        report(0, "fork failed");
        return;
    }
    if (pid == 0)
        fork_child(key, label);
    /* the parent keeps working while the child runs */
    for (int i = 0; i < 5; i++)
        EXPECT(encrypt_once(s, key), CKR_OK);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child exited with status %d",
          WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    CHECK(atomic_load(&g_busy_errors) == 0, "4 parent threads kept working across the forks (%d errors)",
          atomic_load(&g_busy_errors));

    CK_SESSION_INFO si;
    EXPECT(F->C_GetSessionInfo(s, &si), CKR_OK);
    CHECK(si.state == CKS_RW_USER_FUNCTIONS, "parent is still logged in (state %lu)", (unsigned long)si.state);
    EXPECT(encrypt_once(s, key), CKR_OK);
    EXPECT(F->C_DestroyObject(s, key), CKR_OK);
    EXPECT(F->C_Logout(s), CKR_OK);
    EXPECT(F->C_CloseSession(s), CKR_OK);
    EXPECT(F->C_Finalize(NULL), CKR_OK);
}

/* ---- badargs ------------------------------------------------------------------------------------------ */

static CK_RV dummy_create(CK_VOID_PTR_PTR m) { *m = NULL; return CKR_OK; }
static CK_RV dummy_mutex(CK_VOID_PTR m) { (void)m; return CKR_OK; }

static void scenario_badargs(void)
{
    CK_INFO info;
    CK_ULONG n = 0;
    CK_SESSION_HANDLE s = 0;
    CK_SLOT_ID slot = 0;
    CK_BYTE buf[64];
    CK_ULONG blen = sizeof buf;

    /* before C_Initialize */
    EXPECT(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT(F->C_GetSlotList(CK_TRUE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT(F->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT(F->C_Encrypt(1, buf, 16, buf, &blen), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT(F->C_SeedRandom(1, buf, 4), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT(F->C_InitToken(0, buf, 4, buf), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT(F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);

    /* C_Initialize arguments */
    CK_C_INITIALIZE_ARGS a;
    memset(&a, 0, sizeof a);
    a.pReserved = &a;
    EXPECT(F->C_Initialize(&a), CKR_ARGUMENTS_BAD);
    memset(&a, 0, sizeof a);
    a.CreateMutex = dummy_create;
    EXPECT(F->C_Initialize(&a), CKR_ARGUMENTS_BAD); /* some callbacks but not all */
    a.DestroyMutex = dummy_mutex;
    a.LockMutex = dummy_mutex;
    a.UnlockMutex = dummy_mutex;
    EXPECT(F->C_Initialize(&a), CKR_CANT_LOCK); /* application locking only */
    a.flags = CKF_OS_LOCKING_OK;
    EXPECT(F->C_Initialize(&a), CKR_OK); /* either: the module uses OS locking */
    EXPECT(F->C_Finalize(&a), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_Finalize(NULL), CKR_OK);
    memset(&a, 0, sizeof a);
    a.flags = CKF_LIBRARY_CANT_CREATE_OS_THREADS;
    if (!EXPECT(F->C_Initialize(&a), CKR_OK))
        return;
    EXPECT(F->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED);

    /* NULL pointers */
    EXPECT(F->C_GetInfo(NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_GetSlotList(CK_TRUE, NULL, NULL), CKR_ARGUMENTS_BAD);
    slot = first_slot();
    EXPECT(F->C_GetSlotInfo(slot, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_GetTokenInfo(slot, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_GetMechanismList(slot, NULL, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_GetMechanismInfo(slot, CKM_AES_GCM, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, NULL), CKR_ARGUMENTS_BAD);
    if (!EXPECT(open_session(slot, &s), CKR_OK))
        return;
    EXPECT(F->C_GetSessionInfo(s, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_Login(s, CKU_USER, NULL, 5), CKR_ARGUMENTS_BAD);
    if (!EXPECT(login(s), CKR_OK))
        return;

    CK_OBJECT_HANDLE key = 0;
    CK_MECHANISM keygen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG len32 = 32;
    CK_ATTRIBUTE kt[] = {{CKA_VALUE_LEN, &len32, sizeof len32}};
    EXPECT(F->C_GenerateKey(s, NULL, kt, 1, &key), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_GenerateKey(s, &keygen, kt, 1, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_GenerateKey(s, &keygen, NULL, 2, &key), CKR_ARGUMENTS_BAD);
    CK_ATTRIBUTE nullval[] = {{CKA_LABEL, NULL, 5}};
    EXPECT(F->C_GenerateKey(s, &keygen, nullval, 1, &key), CKR_ARGUMENTS_BAD);
    CK_MECHANISM keygen_null = {CKM_AES_KEY_GEN, NULL, 8};
    EXPECT(F->C_GenerateKey(s, &keygen_null, kt, 1, &key), CKR_MECHANISM_PARAM_INVALID);

    /* templates: too many attributes, nesting, bad array lengths */
    static CK_ATTRIBUTE many[257];
    for (size_t i = 0; i < COUNT(many); i++)
        many[i] = (CK_ATTRIBUTE){CKA_LABEL, "x", 1};
    EXPECT(F->C_GenerateKey(s, &keygen, many, 257, &key), CKR_TEMPLATE_INCONSISTENT);
    CK_ATTRIBUTE inner[] = {{CKA_WRAP_TEMPLATE, NULL, 0}};
    CK_ATTRIBUTE nested[] = {{CKA_WRAP_TEMPLATE, inner, sizeof inner}};
    EXPECT(F->C_GenerateKey(s, &keygen, nested, 1, &key), CKR_TEMPLATE_INCONSISTENT);
    CK_ATTRIBUTE odd[] = {{CKA_UNWRAP_TEMPLATE, inner, sizeof inner - 1}};
    EXPECT(F->C_GenerateKey(s, &keygen, odd, 1, &key), CKR_ATTRIBUTE_VALUE_INVALID);

    if (!EXPECT(gen_aes(s, "p11driver-badargs", CK_FALSE, &key), CKR_OK))
        return;

    /* mechanism parameters of unknown layouts: refused locally */
    unsigned char iv[12] = {0}, raw[64] = {0};
    CK_GCM_PARAMS g = {iv, sizeof iv, 96, NULL, 0, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &g, 24};
    EXPECT(F->C_EncryptInit(s, &m, key), CKR_MECHANISM_PARAM_INVALID);
    m.ulParameterLen = sizeof g + 1;
    EXPECT(F->C_EncryptInit(s, &m, key), CKR_MECHANISM_PARAM_INVALID);
    m.pParameter = NULL;
    m.ulParameterLen = sizeof g;
    EXPECT(F->C_EncryptInit(s, &m, key), CKR_MECHANISM_PARAM_INVALID);
    m.pParameter = NULL;
    m.ulParameterLen = 0;
    EXPECT(F->C_EncryptInit(s, &m, key), CKR_MECHANISM_PARAM_INVALID);
    CK_GCM_PARAMS g_null_iv = {NULL, 12, 96, NULL, 0, 128};
    CK_MECHANISM m2 = {CKM_AES_GCM, &g_null_iv, sizeof g_null_iv};
    EXPECT(F->C_EncryptInit(s, &m2, key), CKR_MECHANISM_PARAM_INVALID);
    CK_GCM_PARAMS g_null_aad = {iv, 12, 96, NULL, 4, 128};
    m2.pParameter = &g_null_aad;
    EXPECT(F->C_EncryptInit(s, &m2, key), CKR_MECHANISM_PARAM_INVALID);
    CK_MECHANISM pss = {CKM_SHA256_RSA_PKCS_PSS, raw, sizeof(CK_RSA_PKCS_PSS_PARAMS) - 1};
    EXPECT(F->C_SignInit(s, &pss, key), CKR_MECHANISM_PARAM_INVALID);
    CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, raw, 8};
    EXPECT(F->C_EncryptInit(s, &oaep, key), CKR_MECHANISM_PARAM_INVALID);
    CK_RSA_PKCS_OAEP_PARAMS op = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 3};
    CK_MECHANISM oaep2 = {CKM_RSA_PKCS_OAEP, &op, sizeof op};
    EXPECT(F->C_EncryptInit(s, &oaep2, key), CKR_MECHANISM_PARAM_INVALID);
    CK_MECHANISM ctr = {CKM_AES_CTR, raw, 16};
    EXPECT(F->C_EncryptInit(s, &ctr, key), CKR_MECHANISM_PARAM_INVALID);
    CK_MECHANISM hmac = {CKM_SHA256_HMAC_GENERAL, raw, 4};
    EXPECT(F->C_SignInit(s, &hmac, key), CKR_MECHANISM_PARAM_INVALID);
    CK_MECHANISM cmac = {CKM_AES_CMAC_GENERAL, NULL, 0};
    EXPECT(F->C_SignInit(s, &cmac, key), CKR_MECHANISM_PARAM_INVALID);
    CK_MECHANISM ecdh = {CKM_ECDH1_DERIVE, raw, 12};
    EXPECT(F->C_DeriveKey(s, &ecdh, key, kt, 1, &key), CKR_MECHANISM_PARAM_INVALID);
    EXPECT(F->C_EncryptInit(s, NULL, key), CKR_ARGUMENTS_BAD);

    /* data operations: NULL buffers and lengths, oversized input */
    EXPECT(F->C_Encrypt(s, buf, 16, buf, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_Encrypt(s, NULL, 16, buf, &blen), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_EncryptFinal(s, buf, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_Sign(s, buf, 16, buf, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_Verify(s, buf, 16, NULL, 16), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_DigestUpdate(s, NULL, 3), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_WrapKey(s, &keygen, key, key, buf, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_UnwrapKey(s, &keygen, key, buf, 16, kt, 1, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_GenerateKeyPair(s, &keygen, kt, 1, kt, 1, &key, NULL), CKR_ARGUMENTS_BAD);
    size_t big_len = (8u << 20) + 1; /* above the largest single part the module sends */
    unsigned char *big = calloc(1, big_len);
    CK_ULONG out_len = 16;
    EXPECT(F->C_Encrypt(s, big, (CK_ULONG)big_len, buf, &out_len), CKR_DATA_LEN_RANGE);
    EXPECT(F->C_Decrypt(s, big, (CK_ULONG)big_len, buf, &out_len), CKR_ENCRYPTED_DATA_LEN_RANGE);
    EXPECT(F->C_Verify(s, buf, 16, big, (CK_ULONG)big_len), CKR_SIGNATURE_LEN_RANGE);
    free(big);

    /* objects */
    CK_OBJECT_HANDLE objs[4];
    EXPECT(F->C_FindObjects(s, NULL, 4, &n), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_FindObjects(s, objs, 4, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_GetAttributeValue(s, key, NULL, 1), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_SetAttributeValue(s, key, NULL, 1), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_FindObjectsInit(s, NULL, 1), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_CreateObject(s, kt, 1, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_CopyObject(s, key, kt, 1, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_GetObjectSize(s, key, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_GenerateRandom(s, NULL, 16), CKR_ARGUMENTS_BAD);

    /* C_SeedRandom checks its session and arguments first */
    EXPECT(F->C_SeedRandom(s, buf, 4), CKR_RANDOM_SEED_NOT_SUPPORTED);
    EXPECT(F->C_SeedRandom(s + 1000, buf, 4), CKR_SESSION_HANDLE_INVALID);
    EXPECT(F->C_SeedRandom(s, NULL, 4), CKR_ARGUMENTS_BAD);

    /* answered by the module alone, or refused as the operations they need are not active */
    EXPECT(F->C_GetFunctionStatus(s), CKR_FUNCTION_NOT_PARALLEL);
    EXPECT(F->C_CancelFunction(s), CKR_FUNCTION_NOT_PARALLEL);
    EXPECT(F->C_InitToken(slot, buf, 4, buf), CKR_FUNCTION_NOT_SUPPORTED);
    EXPECT(F->C_InitPIN(s, buf, 4), CKR_USER_NOT_LOGGED_IN); /* the SO's */
    EXPECT(F->C_InitPIN(s, NULL, 4), CKR_ARGUMENTS_BAD);
    blen = sizeof buf;
    EXPECT(F->C_GetOperationState(s, buf, &blen), CKR_FUNCTION_NOT_SUPPORTED);
    EXPECT(F->C_SetOperationState(s, buf, 4, 0, 0), CKR_FUNCTION_NOT_SUPPORTED);
    EXPECT(F->C_DigestEncryptUpdate(s, buf, 4, buf, &blen), CKR_OPERATION_NOT_INITIALIZED);
    EXPECT(F->C_DecryptDigestUpdate(s, buf, 4, buf, &blen), CKR_OPERATION_NOT_INITIALIZED);
    EXPECT(F->C_SignEncryptUpdate(s, buf, 4, buf, &blen), CKR_OPERATION_NOT_INITIALIZED);
    EXPECT(F->C_DecryptVerifyUpdate(s, buf, 4, buf, &blen), CKR_OPERATION_NOT_INITIALIZED);
    CK_MECHANISM rsa = {CKM_RSA_PKCS, NULL, 0};
    EXPECT(F->C_SignRecoverInit(s, &rsa, key), CKR_FUNCTION_NOT_SUPPORTED);
    EXPECT(F->C_SignRecover(s, buf, 4, buf, &blen), CKR_FUNCTION_NOT_SUPPORTED);
    EXPECT(F->C_VerifyRecoverInit(s, &rsa, key), CKR_FUNCTION_NOT_SUPPORTED);
    EXPECT(F->C_VerifyRecover(s, buf, 4, buf, &blen), CKR_FUNCTION_NOT_SUPPORTED);
    EXPECT(F->C_DigestKey(s, key), CKR_OPERATION_NOT_INITIALIZED);
    CK_SLOT_ID ev;
    EXPECT(F->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL), CKR_NO_EVENT);
    EXPECT(F->C_WaitForSlotEvent(0, &ev, NULL), CKR_FUNCTION_NOT_SUPPORTED);

    /* the session still works after all of that */
    EXPECT(encrypt_once(s, key), CKR_OK);
    EXPECT(F->C_DestroyObject(s, key), CKR_OK);
    EXPECT(F->C_Logout(s), CKR_OK);
    EXPECT(F->C_CloseSession(s), CKR_OK);
    EXPECT(F->C_Finalize(NULL), CKR_OK);
    EXPECT(F->C_InitToken(slot, buf, 4, buf), CKR_CRYPTOKI_NOT_INITIALIZED);
}

/* ---- templates (array attributes) --------------------------------------------------------------------- */

static const CK_ATTRIBUTE *find_attr(const CK_ATTRIBUTE *t, size_t n, CK_ATTRIBUTE_TYPE type)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].type == type)
            return &t[i];
    return NULL;
}

static void scenario_templates(void)
{
    REQUIRE_OK(F->C_Initialize(NULL));
    CK_SLOT_ID slot = first_slot();
    CK_SESSION_HANDLE s;
    REQUIRE_OK(open_session(slot, &s));
    REQUIRE_OK(login(s));

    CK_ULONG len = 32;
    CK_ATTRIBUTE wrap_t[] = {
        {CKA_CLASS, &secret_class, sizeof secret_class},
        {CKA_KEY_TYPE, &aes_type, sizeof aes_type},
    };
    CK_MECHANISM_TYPE allowed[] = {CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD};
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &secret_class, sizeof secret_class},
        {CKA_KEY_TYPE, &aes_type, sizeof aes_type},
        {CKA_VALUE_LEN, &len, sizeof len},
        {CKA_TOKEN, &no, sizeof no},
        {CKA_WRAP, &yes, sizeof yes},
        {CKA_UNWRAP, &yes, sizeof yes},
        {CKA_WRAP_TEMPLATE, wrap_t, sizeof wrap_t},
        {CKA_ALLOWED_MECHANISMS, allowed, sizeof allowed},
    };
    CK_MECHANISM keygen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_OBJECT_HANDLE key;
    REQUIRE_OK(F->C_GenerateKey(s, &keygen, t, COUNT(t), &key));

    /* sizes */
    CK_ATTRIBUTE q[] = {{CKA_WRAP_TEMPLATE, NULL, 0}, {CKA_ALLOWED_MECHANISMS, NULL, 0}};
    EXPECT(F->C_GetAttributeValue(s, key, q, 2), CKR_OK);
    CHECK(q[0].ulValueLen == 2 * sizeof(CK_ATTRIBUTE), "CKA_WRAP_TEMPLATE size: %lu bytes (2 attributes)",
          (unsigned long)q[0].ulValueLen);
    CHECK(q[1].ulValueLen == sizeof allowed, "CKA_ALLOWED_MECHANISMS size: %lu bytes", (unsigned long)q[1].ulValueLen);

    /* an array too small for the template */
    CK_ATTRIBUTE one[1];
    memset(one, 0, sizeof one);
    CK_ATTRIBUTE q1[] = {{CKA_WRAP_TEMPLATE, one, sizeof one}};
    EXPECT(F->C_GetAttributeValue(s, key, q1, 1), CKR_BUFFER_TOO_SMALL);
    CHECK(q1[0].ulValueLen == CK_UNAVAILABLE_INFORMATION, "too small an array: CK_UNAVAILABLE_INFORMATION");

    /* types and lengths (inner pValue NULL) */
    CK_ATTRIBUTE inner[2];
    memset(inner, 0, sizeof inner);
    CK_ATTRIBUTE q2[] = {{CKA_WRAP_TEMPLATE, inner, sizeof inner}};
    EXPECT(F->C_GetAttributeValue(s, key, q2, 1), CKR_OK);
    const CK_ATTRIBUTE *ic = find_attr(inner, 2, CKA_CLASS), *ik = find_attr(inner, 2, CKA_KEY_TYPE);
    CHECK(q2[0].ulValueLen == sizeof inner && ic && ik && ic->ulValueLen == sizeof(CK_ULONG) &&
              ik->ulValueLen == sizeof(CK_ULONG),
          "nested types and lengths filled in");

    /* values */
    CK_OBJECT_CLASS cls = 0;
    CK_KEY_TYPE kty = 0;
    CK_ATTRIBUTE inner2[] = {{CKA_KEY_TYPE, &kty, sizeof kty}, {CKA_CLASS, &cls, sizeof cls}};
    CK_MECHANISM_TYPE got[4] = {0};
    CK_ATTRIBUTE q3[] = {{CKA_WRAP_TEMPLATE, inner2, sizeof inner2}, {CKA_ALLOWED_MECHANISMS, got, sizeof got}};
    EXPECT(F->C_GetAttributeValue(s, key, q3, 2), CKR_OK);
    CHECK(cls == CKO_SECRET_KEY && kty == CKK_AES && inner2[0].ulValueLen == sizeof kty,
          "nested values read back (class %lu, key type %lu)", (unsigned long)cls, (unsigned long)kty);
    CHECK(q3[1].ulValueLen == sizeof allowed && got[0] == CKM_AES_KEY_WRAP && got[1] == CKM_AES_KEY_WRAP_PAD,
          "CKA_ALLOWED_MECHANISMS read back as CK_MECHANISM_TYPEs");

    /* a nested buffer too small */
    unsigned char small[1];
    CK_ATTRIBUTE inner3[] = {{CKA_CLASS, small, sizeof small}, {CKA_KEY_TYPE, &kty, sizeof kty}};
    CK_ATTRIBUTE q4[] = {{CKA_WRAP_TEMPLATE, inner3, sizeof inner3}};
    EXPECT(F->C_GetAttributeValue(s, key, q4, 1), CKR_BUFFER_TOO_SMALL);
    CHECK(inner3[0].ulValueLen == CK_UNAVAILABLE_INFORMATION, "small nested buffer: CK_UNAVAILABLE_INFORMATION");

    EXPECT(F->C_DestroyObject(s, key), CKR_OK);
    EXPECT(F->C_Logout(s), CKR_OK);
    EXPECT(F->C_CloseSession(s), CKR_OK);
    EXPECT(F->C_Finalize(NULL), CKR_OK);
}

/* ---- noagent ------------------------------------------------------------------------------------------ */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        report(0, "cannot write %s", path);
        return;
    }
    fputs(text, f);
    fclose(f);
}

/* NOAGENT_DIR: a directory of the test's where configuration files go. Every failed C_Initialize explains
 * itself on stderr (the test reads it). */
static void scenario_noagent(void)
{
    CK_INFO info;
    const char *dir = getenv("NOAGENT_DIR") ? getenv("NOAGENT_DIR") : "/tmp";
    char conf[512], text[600];
    snprintf(conf, sizeof conf, "%s/pkcs11.conf", dir);
    unsetenv("STRONGROOM_AGENT_SOCKET");
    setenv("STRONGROOM_PKCS11_CONF", "/nonexistent/strongroom/pkcs11.conf", 1);
    /* neither variable nor file: the default path, where no agent listens (here) */
    EXPECT(F->C_Initialize(NULL), CKR_FUNCTION_FAILED);
    EXPECT(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    setenv("STRONGROOM_AGENT_SOCKET", "", 1); /* empty: as unset */
    EXPECT(F->C_Initialize(NULL), CKR_FUNCTION_FAILED);
    char longpath[300];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[sizeof longpath - 1] = 0;
    setenv("STRONGROOM_AGENT_SOCKET", longpath, 1);
    EXPECT(F->C_Initialize(NULL), CKR_GENERAL_ERROR);
    setenv("STRONGROOM_AGENT_SOCKET", "/nonexistent/strongroom-agent.sock", 1);
    EXPECT(F->C_Initialize(NULL), CKR_FUNCTION_FAILED);
    EXPECT(F->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT(F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
    /* the configuration file names the socket; the variable still wins when set */
    unsetenv("STRONGROOM_AGENT_SOCKET");
    setenv("STRONGROOM_PKCS11_CONF", conf, 1);
    snprintf(text, sizeof text, "# test\nsocket = %s/from-conf.sock\ntimeout = 5\n", dir);
    write_file(conf, text);
    EXPECT(F->C_Initialize(NULL), CKR_FUNCTION_FAILED);
    /* a file that is not key = value, or a bad value: a configuration error */
    write_file(conf, "socket /x\n");
    EXPECT(F->C_Initialize(NULL), CKR_GENERAL_ERROR);
    write_file(conf, "timeout = -3\n");
    EXPECT(F->C_Initialize(NULL), CKR_GENERAL_ERROR);
    /* a socket nobody may open: permission denied is a configuration error too */
    snprintf(text, sizeof text, "socket = %s/denied/agent.sock\n", dir);
    write_file(conf, text);
    if (getenv("NOAGENT_DENIED"))
        EXPECT(F->C_Initialize(NULL), CKR_GENERAL_ERROR);
    EXPECT(F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
}

/* ---- denied: STRONGROOM_AGENT_SOCKET names a socket this user may not open ------------------------------- */

static void scenario_denied(void)
{
    setenv("STRONGROOM_PKCS11_CONF", "/nonexistent/strongroom/pkcs11.conf", 1);
    EXPECT(F->C_Initialize(NULL), CKR_GENERAL_ERROR);
}

/* ---- conffile: the socket from the configuration file, against the agent -------------------------------- */

static void scenario_conffile(void)
{
    const char *dir = getenv("NOAGENT_DIR") ? getenv("NOAGENT_DIR") : "/tmp";
    const char *sock = getenv("STRONGROOM_AGENT_SOCKET");
    char conf[512], text[600];
    if (!sock) {
        report(0, "conffile needs STRONGROOM_AGENT_SOCKET (written into the file, then unset)");
        return;
    }
    snprintf(conf, sizeof conf, "%s/pkcs11.conf", dir);
    snprintf(text, sizeof text, "socket = %s\n", sock);
    write_file(conf, text);
    setenv("STRONGROOM_PKCS11_CONF", conf, 1);
    unsetenv("STRONGROOM_AGENT_SOCKET");
    REQUIRE_OK(F->C_Initialize(NULL));
    CK_SESSION_HANDLE s;
    REQUIRE_OK(open_session(first_slot(), &s));
    EXPECT(login(s), CKR_OK);
    EXPECT(F->C_CloseSession(s), CKR_OK);
    EXPECT(F->C_Finalize(NULL), CKR_OK);
}

/* ---- endop: a failed call ends its operation, wherever the failure is found -------------------------------- */

static CK_RV cbc_init(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, int decrypt)
{
    static unsigned char iv[16];
    CK_MECHANISM m = {CKM_AES_CBC_PAD, iv, sizeof iv};
    return decrypt ? F->C_DecryptInit(s, &m, key) : F->C_EncryptInit(s, &m, key);
}

static CK_RV digest_init(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = {CKM_SHA256, NULL, 0};
    return F->C_DigestInit(s, &m);
}

struct bigone {
    CK_SLOT_ID slot;
    CK_OBJECT_HANDLE key;
    int big;
    CK_RV rv;
};

static void *encrypt_thread(void *arg)
{
    struct bigone *b = arg;
    CK_SESSION_HANDLE s;
    size_t n = b->big ? (9u << 20) : 1000;
    unsigned char *in = calloc(1, n), *out = calloc(1, n + 32);
    CK_ULONG len = (CK_ULONG)n + 32;
    if ((b->rv = open_session(b->slot, &s)) == CKR_OK && (b->rv = cbc_init(s, b->key, 0)) == CKR_OK) {
        b->rv = F->C_Encrypt(s, in, (CK_ULONG)n, out, &len);
        if (!b->big && b->rv == CKR_OK)
            b->rv = cbc_init(s, b->key, 0); /* and it ended: a new one starts */
        F->C_CloseSession(s);
    }
    free(in);
    free(out);
    return NULL;
}

static void scenario_endop(void)
{
    REQUIRE_OK(F->C_Initialize(NULL));
    CK_SLOT_ID slot = first_slot();
    CK_SESSION_HANDLE s;
    REQUIRE_OK(open_session(slot, &s));
    REQUIRE_OK(login(s));
    CK_OBJECT_HANDLE key;
    REQUIRE_OK(gen_aes(s, "p11driver-endop", CK_FALSE, &key));
    unsigned char buf[256] = {0}, out[512];
    CK_ULONG len;

    /* refused by the module (a NULL length pointer): the operation ends */
    REQUIRE_OK(cbc_init(s, key, 0));
    EXPECT(F->C_Encrypt(s, buf, 16, out, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(cbc_init(s, key, 0), CKR_OK);
    EXPECT(F->C_EncryptUpdate(s, buf, 16, out, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(cbc_init(s, key, 0), CKR_OK);
    len = sizeof out;
    EXPECT(F->C_EncryptUpdate(s, buf, 16, out, &len), CKR_OK);
    EXPECT(F->C_EncryptFinal(s, out, NULL), CKR_ARGUMENTS_BAD);
    len = sizeof out;
    EXPECT(F->C_EncryptFinal(s, out, &len), CKR_OPERATION_NOT_INITIALIZED);
    REQUIRE_OK(cbc_init(s, key, 1));
    EXPECT(F->C_Decrypt(s, buf, 32, out, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(F->C_DecryptUpdate(s, buf, 16, out, &len), CKR_OPERATION_NOT_INITIALIZED);
    REQUIRE_OK(digest_init(s));
    EXPECT(F->C_Digest(s, buf, 16, out, NULL), CKR_ARGUMENTS_BAD);
    len = sizeof out;
    EXPECT(F->C_Digest(s, buf, 16, out, &len), CKR_OPERATION_NOT_INITIALIZED); /* was CKR_OK */
    REQUIRE_OK(digest_init(s));
    EXPECT(F->C_DigestFinal(s, out, NULL), CKR_ARGUMENTS_BAD);
    EXPECT(digest_init(s), CKR_OK);
    EXPECT(F->C_DigestUpdate(s, NULL, 4), CKR_ARGUMENTS_BAD);
    EXPECT(digest_init(s), CKR_OK);
    /* refused by the module: a single part larger than it sends */
    size_t big_len = (8u << 20) + 1;
    unsigned char *big = calloc(1, big_len), *bigout = calloc(1, big_len + 32);
    len = (CK_ULONG)big_len + 32;
    EXPECT(F->C_Digest(s, big, (CK_ULONG)big_len, bigout, &len), CKR_DATA_LEN_RANGE);
    EXPECT(digest_init(s), CKR_OK);
    REQUIRE_OK(cbc_init(s, key, 0));
    EXPECT(F->C_Encrypt(s, big, (CK_ULONG)big_len, bigout, &len), CKR_DATA_LEN_RANGE);
    EXPECT(cbc_init(s, key, 0), CKR_OK);
    /* refused by the agent (no such key for C_DigestKey): the digest ends too */
    EXPECT(F->C_DigestKey(s, 0x7fffffff), CKR_KEY_HANDLE_INVALID);
    len = sizeof out;
    EXPECT(F->C_DigestFinal(s, out, &len), CKR_OPERATION_NOT_INITIALIZED);
    /* ... but not a size query nor a buffer too small */
    REQUIRE_OK(digest_init(s));
    len = 0;
    EXPECT(F->C_Digest(s, buf, 16, NULL, &len), CKR_OK);
    CHECK(len == 32, "digest size query: %lu", (unsigned long)len);
    len = 4;
    EXPECT(F->C_Digest(s, buf, 16, out, &len), CKR_BUFFER_TOO_SMALL);
    len = sizeof out;
    EXPECT(F->C_Digest(s, buf, 16, out, &len), CKR_OK);

    /* ten threads encrypting on their own sessions, one with 9 MiB in one part: only that one fails */
    len = sizeof out;
    EXPECT(F->C_EncryptFinal(s, out, &len), CKR_OK); /* the encryption begun after the 8 MiB refusal */
    pthread_t t[10];
    struct bigone b[10];
    for (int i = 0; i < 10; i++) {
        b[i] = (struct bigone){slot, key, i == 3, CKR_OK};
        pthread_create(&t[i], NULL, encrypt_thread, &b[i]);
    }
    int others = 0;
    for (int i = 0; i < 10; i++) {
        pthread_join(t[i], NULL);
        if (i != 3 && b[i].rv == CKR_OK)
            others++;
    }
    CHECK(b[3].rv == CKR_DATA_LEN_RANGE, "the 9 MiB single part: %s", rvname(b[3].rv));
    CHECK(others == 9, "the nine others encrypted and began again: %d", others);
    free(big);
    free(bigout);
    EXPECT(F->C_Logout(s), CKR_OK);
    EXPECT(F->C_CloseSession(s), CKR_OK);
    EXPECT(F->C_Finalize(NULL), CKR_OK);
}

/* ---- bigdata: multi-part data of any size; single parts up to 8 MiB ---------------------------------- */

static void scenario_bigdata(void)
{
    REQUIRE_OK(F->C_Initialize(NULL));
    CK_SLOT_ID slot = first_slot();
    CK_SESSION_HANDLE s;
    REQUIRE_OK(open_session(slot, &s));
    REQUIRE_OK(login(s));
    CK_OBJECT_HANDLE key;
    REQUIRE_OK(gen_aes(s, "p11driver-bigdata", CK_FALSE, &key));
    size_t n = (9u << 20) + 5; /* 9 MiB and a bit, in one update */
    unsigned char *plain = malloc(n), *ct = malloc(n + 64), *back = malloc(n + 64);
    fill(plain, n, 77);

    /* a digest of 9 MiB in one C_DigestUpdate equals the one of the same data in small parts */
    unsigned char d1[32], d2[32];
    CK_ULONG l1 = sizeof d1, l2 = sizeof d2;
    REQUIRE_OK(digest_init(s));
    EXPECT(F->C_DigestUpdate(s, plain, (CK_ULONG)n), CKR_OK);
    EXPECT(F->C_DigestFinal(s, d1, &l1), CKR_OK);
    REQUIRE_OK(digest_init(s));
    for (size_t pos = 0; pos < n; pos += 100000)
        F->C_DigestUpdate(s, plain + pos, (CK_ULONG)(n - pos < 100000 ? n - pos : 100000));
    EXPECT(F->C_DigestFinal(s, d2, &l2), CKR_OK);
    CHECK(l1 == 32 && l2 == 32 && memcmp(d1, d2, 32) == 0, "9 MiB digested in one update = in small ones");

    /* encryption: 9 MiB in one C_EncryptUpdate (size query: an upper bound), decryption in one update */
    CK_ULONG clen = 0;
    REQUIRE_OK(cbc_init(s, key, 0));
    EXPECT(F->C_EncryptUpdate(s, plain, (CK_ULONG)n, NULL, &clen), CKR_OK);
    CHECK(clen >= n && clen <= n + 16, "size query of a 9 MiB update: %lu (an upper bound)", (unsigned long)clen);
    CK_ULONG small = (CK_ULONG)n - 1;
    EXPECT(F->C_EncryptUpdate(s, plain, (CK_ULONG)n, ct, &small), CKR_BUFFER_TOO_SMALL);
    clen = (CK_ULONG)n + 64;
    EXPECT(F->C_EncryptUpdate(s, plain, (CK_ULONG)n, ct, &clen), CKR_OK);
    CK_ULONG tail = (CK_ULONG)n + 64 - clen;
    EXPECT(F->C_EncryptFinal(s, ct + clen, &tail), CKR_OK);
    clen += tail;
    CHECK(clen == (n / 16 + 1) * 16, "CBC-PAD ciphertext of %zu bytes is %lu", n, (unsigned long)clen);
    CK_ULONG blen = (CK_ULONG)n + 64;
    REQUIRE_OK(cbc_init(s, key, 1));
    EXPECT(F->C_DecryptUpdate(s, ct, clen, back, &blen), CKR_OK);
    CK_ULONG btail = (CK_ULONG)n + 64 - blen;
    EXPECT(F->C_DecryptFinal(s, back + blen, &btail), CKR_OK);
    CHECK(blen + btail == n && memcmp(back, plain, n) == 0, "9 MiB round trip in one update each way");

    /* a single part of 7.5 MiB, near the largest (the agent runs it on the node in parts) */
    size_t m = (15u << 19);
    CK_ULONG sl = (CK_ULONG)m + 64, sb = (CK_ULONG)m + 64;
    REQUIRE_OK(cbc_init(s, key, 0));
    EXPECT(F->C_Encrypt(s, plain, (CK_ULONG)m, ct, &sl), CKR_OK);
    REQUIRE_OK(cbc_init(s, key, 1));
    EXPECT(F->C_Decrypt(s, ct, sl, back, &sb), CKR_OK);
    CHECK(sb == m && memcmp(back, plain, m) == 0, "7.5 MiB single-part round trip");
    free(plain);
    free(ct);
    free(back);
    EXPECT(F->C_Logout(s), CKR_OK);
    EXPECT(F->C_CloseSession(s), CKR_OK);
    EXPECT(F->C_Finalize(NULL), CKR_OK);
}

/* ---- restart: the agent restarts under the application ------------------------------------------------------
 * The driver logs in, makes a token key, opens two sessions (one read-only), prints "RESTART-AGENT" and waits for a
 * line on stdin: the test restarts the agent meanwhile. Then the same sessions, login and key work, and a new
 * session does too; nothing was initialized again. */

static void scenario_restart(void)
{
    REQUIRE_OK(F->C_Initialize(NULL));
    CK_SLOT_ID slot = first_slot();
    CK_SESSION_HANDLE s, ro;
    REQUIRE_OK(open_session(slot, &s));
    REQUIRE_OK(F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ro));
    REQUIRE_OK(login(s));
    char label[64];
    snprintf(label, sizeof label, "p11driver-restart-%ld", (long)getpid());
    CK_OBJECT_HANDLE key;
    REQUIRE_OK(gen_aes(s, label, CK_TRUE, &key));
    EXPECT(encrypt_once(s, key), CKR_OK);
    printf("RESTART-AGENT\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) {
        report(0, "no go-ahead on stdin");
        return;
    }
    /* the first call may wait for the agent; none fails */
    EXPECT(encrypt_once(s, key), CKR_OK);
    CK_SESSION_INFO si;
    EXPECT(F->C_GetSessionInfo(s, &si), CKR_OK);
    CHECK(si.state == CKS_RW_USER_FUNCTIONS, "still logged in after the agent restart (state %lu)",
          (unsigned long)si.state);
    EXPECT(F->C_GetSessionInfo(ro, &si), CKR_OK);
    CHECK(si.state == CKS_RO_USER_FUNCTIONS, "the read-only session too (state %lu)", (unsigned long)si.state);
    EXPECT(encrypt_once(ro, key), CKR_OK);
    CK_SESSION_HANDLE s2;
    EXPECT(open_session(slot, &s2), CKR_OK);
    CHECK(s2 != s && s2 != ro, "a new session gets a new handle");
    EXPECT(encrypt_once(s2, key), CKR_OK);
    EXPECT(login(s2), CKR_USER_ALREADY_LOGGED_IN);
    EXPECT(F->C_DestroyObject(s, key), CKR_OK);
    EXPECT(F->C_Logout(s), CKR_OK);
    EXPECT(F->C_CloseAllSessions(slot), CKR_OK);
    EXPECT(F->C_Finalize(NULL), CKR_OK);
}

/* ---- hostile peer --------------------------------------------------------------------------------------- *
 * The test suite's peer answers the hello, then answers selected calls with
 * malformed replies; the slot id or session handle picks the malformation. */

/* A malformed reply fails its call (want_fail) and drops that connection; the next call is made on a new one
 * (the peer answers C_GetSessionInfo(99) properly): nothing stays broken, nothing needs re-initializing. */
static int lost_cycle(const char *what, CK_RV got, CK_RV want_fail)
{
    int ok = got == want_fail;
    if (!ok)
        report(0, "%s -> %s, expected %s", what, rvname(got), rvname(want_fail));
    CK_SESSION_INFO si;
    CK_RV later = F->C_GetSessionInfo(99, &si);
    if (later != CKR_SESSION_HANDLE_INVALID) {
        report(0, "%s: then C_GetSessionInfo -> %s", what, rvname(later));
        ok = 0;
    }
    if (ok)
        report(1, "%s -> %s, then the next call reconnects", what, rvname(got));
    return ok;
}

static void scenario_hostile(void)
{
    REQUIRE_OK(F->C_Initialize(NULL));
    char what[96];
    /* C_GetSlotInfo(k): k = 1..HOSTILE_SLOT_CASES malformed envelopes and frames */
    int cases = atoi(getenv("HOSTILE_SLOT_CASES") ? getenv("HOSTILE_SLOT_CASES") : "0");
    for (int k = 1; k <= cases; k++) {
        CK_SLOT_INFO si;
        memset(&si, 0xa5, sizeof si);
        snprintf(what, sizeof what, "C_GetSlotInfo malformation %d", k);
        CK_SLOT_INFO before = si;
        lost_cycle(what, F->C_GetSlotInfo((CK_SLOT_ID)k, &si), CKR_DEVICE_ERROR);
        CHECK(memcmp(&si, &before, sizeof si) == 0, "C_GetSlotInfo malformation %d left the output untouched", k);
    }
    /* C_GetSlotList with a malformed reply: CKR_FUNCTION_FAILED (no DEVICE codes for it) */
    CK_ULONG n;
    lost_cycle("C_GetSlotList malformed", F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_FUNCTION_FAILED);
    /* C_GetTokenInfo */
    CK_TOKEN_INFO ti;
    for (int k = 1; k <= 3; k++) {
        snprintf(what, sizeof what, "C_GetTokenInfo malformation %d", k);
        lost_cycle(what, F->C_GetTokenInfo((CK_SLOT_ID)k, &ti), CKR_DEVICE_ERROR);
    }
    /* C_GetMechanismList */
    CK_MECHANISM_TYPE mechs[4];
    CK_ULONG nm = 4;
    lost_cycle("C_GetMechanismList malformed", F->C_GetMechanismList(1, mechs, &nm), CKR_DEVICE_ERROR);
    /* output buffers: C_Encrypt(session k) */
    unsigned char in[8] = {0}, out[16];
    for (int k = 1; k <= 7; k++) {
        CK_ULONG len = sizeof out;
        snprintf(what, sizeof what, "C_Encrypt malformation %d", k);
        lost_cycle(what, F->C_Encrypt((CK_SESSION_HANDLE)k, in, sizeof in, k == 7 ? NULL : out, &len),
                   CKR_DEVICE_ERROR);
        CHECK(len == sizeof out, "C_Encrypt malformation %d left the length untouched", k);
    }
    /* C_GetAttributeValue(session k) */
    for (int k = 1; k <= 8; k++) {
        unsigned char lbuf[8];
        CK_ATTRIBUTE innerbuf[1];
        memset(innerbuf, 0, sizeof innerbuf);
        CK_ATTRIBUTE t[] = {{CKA_LABEL, lbuf, sizeof lbuf}, {CKA_WRAP_TEMPLATE, innerbuf, sizeof innerbuf}};
        snprintf(what, sizeof what, "C_GetAttributeValue malformation %d", k);
        lost_cycle(what, F->C_GetAttributeValue((CK_SESSION_HANDLE)k, 1, t, 2), CKR_DEVICE_ERROR);
        CHECK(t[0].ulValueLen == sizeof lbuf && t[1].ulValueLen == sizeof innerbuf,
              "C_GetAttributeValue malformation %d left the template untouched", k);
    }
    /* C_FindObjects: more handles than asked for */
    CK_OBJECT_HANDLE objs[2];
    CK_ULONG nf = 0;
    lost_cycle("C_FindObjects too many handles", F->C_FindObjects(1, objs, 2, &nf), CKR_DEVICE_ERROR);
    /* C_GenerateRandom: wrong length */
    unsigned char rnd[16];
    lost_cycle("C_GenerateRandom wrong length", F->C_GenerateRandom(1, rnd, sizeof rnd), CKR_DEVICE_ERROR);
    /* C_OpenSession(slot k) */
    for (int k = 1; k <= 2; k++) {
        CK_SESSION_HANDLE s = 0;
        snprintf(what, sizeof what, "C_OpenSession malformation %d", k);
        lost_cycle(what, F->C_OpenSession((CK_SLOT_ID)k, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_DEVICE_ERROR);
    }
    /* an agent error code passes through untouched, and nothing is lost */
    CK_SESSION_INFO si;
    EXPECT(F->C_GetSessionInfo(99, &si), CKR_SESSION_HANDLE_INVALID);
    EXPECT(F->C_GetSessionInfo(99, &si), CKR_SESSION_HANDLE_INVALID);
    EXPECT(F->C_Finalize(NULL), CKR_OK);
}

/* ---- fuzz: corrupted replies ------------------------------------------------------------------------------ */

static unsigned long long rng_state = 88172645463325252ull;
static unsigned rnd_u(unsigned n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state % n);
}

static void scenario_fuzz(void)
{
    int rounds = atoi(getenv("FUZZ_ROUNDS") ? getenv("FUZZ_ROUNDS") : "300");
    int reinit = 0, crashes = 0, bad_out = 0;
    if (F->C_Initialize(NULL) != CKR_OK) {
        report(0, "C_Initialize failed");
        return;
    }
    for (int i = 0; i < rounds; i++) {
        CK_RV rv = CKR_OK;
        unsigned char buf[64], lbuf[16];
        CK_ULONG len = rnd_u(2) ? sizeof buf : 4, n = 4;
        CK_SLOT_ID slots[4];
        CK_MECHANISM_TYPE mechs[8];
        CK_SESSION_HANDLE s;
        CK_SLOT_INFO si;
        CK_TOKEN_INFO ti;
        CK_SESSION_INFO ssi;
        CK_MECHANISM_INFO mi;
        CK_OBJECT_HANDLE objs[4], h;
        CK_ATTRIBUTE inner[2];
        memset(inner, 0, sizeof inner);
        CK_ATTRIBUTE t[] = {{CKA_LABEL, rnd_u(2) ? lbuf : NULL, sizeof lbuf},
                            {CKA_WRAP_TEMPLATE, rnd_u(2) ? inner : NULL, sizeof inner},
                            {CKA_VALUE_LEN, buf, sizeof(CK_ULONG)}};
        CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
        switch (rnd_u(12)) {
        case 0: rv = F->C_GetSlotList(CK_TRUE, rnd_u(2) ? slots : NULL, &n); break;
        case 1: rv = F->C_GetSlotInfo(1, &si); break;
        case 2: rv = F->C_GetTokenInfo(1, &ti); break;
        case 3: {
            CK_MECHANISM_TYPE *list = rnd_u(2) ? mechs : NULL;
            n = 4;
            rv = F->C_GetMechanismList(1, list, &n);
            if (rv == CKR_OK && list && n > 4)
                bad_out++;
            break;
        }
        case 4: rv = F->C_GetMechanismInfo(1, CKM_AES_GCM, &mi); break;
        case 5: rv = F->C_OpenSession(1, CKF_SERIAL_SESSION, NULL, NULL, &s); break;
        case 6: rv = F->C_GetSessionInfo(1, &ssi); break;
        case 7: {
            CK_BYTE_PTR o = rnd_u(2) ? buf : NULL;
            CK_ULONG cap = len;
            rv = F->C_Encrypt(1, buf, 16, o, &len);
            if (rv == CKR_OK && o && len > cap)
                bad_out++;
            break;
        }
        case 8:
            rv = F->C_GetAttributeValue(1, 1, t, 3);
            for (int j = 0; j < 3; j++)
                if (t[j].pValue && t[j].ulValueLen != CK_UNAVAILABLE_INFORMATION && t[j].ulValueLen > sizeof lbuf &&
                    j != 1)
                    bad_out++;
            break;
        case 9: rv = F->C_FindObjects(1, objs, 4, &n); if (rv == CKR_OK && n > 4) bad_out++; break;
        case 10: rv = F->C_GenerateRandom(1, buf, 16); break;
        default: rv = F->C_GenerateKey(1, &m, t + 2, 1, &h); break;
        }
        if (rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED || rv == CKR_FUNCTION_FAILED) {
            F->C_Finalize(NULL);
            if (F->C_Initialize(NULL) != CKR_OK) {
                crashes++;
                break;
            }
            reinit++;
        }
    }
    F->C_Finalize(NULL);
    CHECK(crashes == 0 && bad_out == 0, "%d fuzz rounds, %d re-initializations, %d bad outputs", rounds, reinit,
          bad_out);
}

/* ---- main ---------------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODULE PIN basic|threads|fork|badargs|templates|endop|bigdata|restart|conffile|"
                        "noagent|hostile|fuzz\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    g_pin = argv[2];
    load_module(argv[1]);
    const char *sc = argv[3];
    if (!strcmp(sc, "basic"))
        scenario_basic();
    else if (!strcmp(sc, "threads"))
        scenario_threads();
    else if (!strcmp(sc, "fork"))
        scenario_fork();
    else if (!strcmp(sc, "badargs"))
        scenario_badargs();
    else if (!strcmp(sc, "templates"))
        scenario_templates();
    else if (!strcmp(sc, "noagent"))
        scenario_noagent();
    else if (!strcmp(sc, "conffile"))
        scenario_conffile();
    else if (!strcmp(sc, "denied"))
        scenario_denied();
    else if (!strcmp(sc, "endop"))
        scenario_endop();
    else if (!strcmp(sc, "bigdata"))
        scenario_bigdata();
    else if (!strcmp(sc, "restart"))
        scenario_restart();
    else if (!strcmp(sc, "hostile"))
        scenario_hostile();
    else if (!strcmp(sc, "fuzz"))
        scenario_fuzz();
    else {
        fprintf(stderr, "unknown scenario %s\n", sc);
        return 2;
    }
    int f = atomic_load(&g_fail);
    printf("%s: %d failure(s)\n", sc, f);
    return f > 100 ? 100 : f;
}
