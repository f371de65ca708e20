/*
 * pkcs11_bench — one load generator for any PKCS#11 module.
 *
 *   pkcs11_bench MODULE TOKEN_LABEL PIN SECONDS OP:THREADS [OP:THREADS ...]
 *
 * OP is rsa (CKM_SHA256_RSA_PKCS over a 32-byte message, RSA-2048), ecdsa (CKM_ECDSA over a
 * 32-byte digest, P-256) or gcm (CKM_AES_GCM encrypt of 1 KiB, AES-256, 12-byte IV, 128-bit tag).
 *
 * The program dlopens MODULE, finds it through C_GetFunctionList, opens a session on the slot
 * whose token is labelled TOKEN_LABEL, logs in as CKU_USER with PIN, generates one token key of
 * each kind it will use (and checks it once: sign + verify, encrypt + decrypt), then runs each
 * OP:THREADS measurement in turn: THREADS threads, each with its own session, each doing
 * Init + single-part call in a loop for SECONDS after a common start (a short warm-up of each
 * thread's session precedes the start). Per measurement it prints
 *
 *   START op threads
 *   RESULT {"op": ..., "threads": N, "ops": N, "seconds": S, "ops_per_s": X, "p50_us": .., "p99_us": ..,
 *           "cpu_s": S}
 *
 * on stdout (cpu_s: CPU time of this process during the measurement). Keys are destroyed at the
 * end. Exit status 0 only when every call succeeded; any failure prints "ERROR ..." and exits 1.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define MAX_THREADS 64
#define WARMUP_OPS 3

static CK_FUNCTION_LIST_PTR F;
static CK_SLOT_ID slot;
static CK_OBJECT_HANDLE rsa_pub, rsa_priv, ec_pub, ec_priv, aes_key;
static double seconds;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_now(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what, CK_RV rv) {
    printf("ERROR %s: rv=0x%lx\n", what, (unsigned long)rv);
    fflush(stdout);
    exit(1);
}

#define CK(call)                                                                                   \
    do {                                                                                           \
        CK_RV rv_ = (call);                                                                        \
        if (rv_ != CKR_OK) die(#call, rv_);                                                        \
    } while (0)

enum op { OP_RSA, OP_ECDSA, OP_GCM };
static const char *op_names[] = {"rsa", "ecdsa", "gcm"};

/* One operation (Init + single-part call). `ctr` makes each GCM IV unique per thread. */
static CK_RV do_op(CK_SESSION_HANDLE s, enum op op, unsigned tid, uint64_t ctr) {
    static const unsigned char msg[32] = "0123456789abcdef0123456789abcdef";
    static unsigned char plain[1024];
    unsigned char out[1024 + 16];
    CK_ULONG outlen = sizeof out;
    CK_RV rv;
    switch (op) {
    case OP_RSA: {
        CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
        if ((rv = F->C_SignInit(s, &m, rsa_priv)) != CKR_OK) return rv;
        rv = F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof msg, out, &outlen);
        if (rv == CKR_OK && outlen != 256) rv = CKR_GENERAL_ERROR;
        return rv;
    }
    case OP_ECDSA: {
        CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
        if ((rv = F->C_SignInit(s, &m, ec_priv)) != CKR_OK) return rv;
        rv = F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof msg, out, &outlen);
        if (rv == CKR_OK && outlen != 64) rv = CKR_GENERAL_ERROR;
        return rv;
    }
    case OP_GCM: {
        unsigned char iv[12];
        memcpy(iv, &tid, 4);
        memcpy(iv + 4, &ctr, 8);
        CK_GCM_PARAMS g = {iv, sizeof iv, 96, NULL, 0, 128};
        CK_MECHANISM m = {CKM_AES_GCM, &g, sizeof g};
        if ((rv = F->C_EncryptInit(s, &m, aes_key)) != CKR_OK) return rv;
        rv = F->C_Encrypt(s, plain, sizeof plain, out, &outlen);
        if (rv == CKR_OK && outlen != sizeof plain + 16) rv = CKR_GENERAL_ERROR;
        return rv;
    }
    }
    return CKR_GENERAL_ERROR;
}

/* --- one measurement ----------------------------------------------------------------------- */

struct worker {
    pthread_t th;
    unsigned tid;
    enum op op;
    uint64_t ops;
    double *lat; /* microseconds */
    size_t lat_cap;
    CK_RV failed;
    const char *failed_at;
};

static pthread_barrier_t ready;
static double t_start, t_deadline;

static void *run_worker(void *arg) {
    struct worker *w = arg;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_RV rv = F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    int opened = rv == CKR_OK;
    uint64_t ctr = (uint64_t)1 << 40; /* IVs of the warm-up and check calls stay below this */
    if (rv != CKR_OK) {
        w->failed = rv, w->failed_at = "C_OpenSession";
    } else {
        for (int i = 0; i < WARMUP_OPS && rv == CKR_OK; i++) rv = do_op(s, w->op, w->tid, ctr++);
        if (rv != CKR_OK) w->failed = rv, w->failed_at = "warm-up";
    }
    pthread_barrier_wait(&ready); /* main sets t_start/t_deadline, then everyone goes */
    pthread_barrier_wait(&ready);
    if (w->failed == CKR_OK) {
        double t = now();
        while (t < t_deadline) {
            rv = do_op(s, w->op, w->tid, ctr++);
            double t2 = now();
            if (rv != CKR_OK) {
                w->failed = rv, w->failed_at = op_names[w->op];
                break;
            }
            if (w->ops == w->lat_cap) {
                w->lat_cap = w->lat_cap ? w->lat_cap * 2 : 65536;
                w->lat = realloc(w->lat, w->lat_cap * sizeof *w->lat);
                if (!w->lat) die("realloc", 0);
            }
            w->lat[w->ops++] = (t2 - t) * 1e6;
            t = t2;
        }
    }
    if (opened) F->C_CloseSession(s);
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void measure(enum op op, unsigned nthreads) {
    struct worker ws[MAX_THREADS];
    memset(ws, 0, sizeof ws);
    printf("START %s %u\n", op_names[op], nthreads);
    fflush(stdout);
    pthread_barrier_init(&ready, NULL, nthreads + 1);
    for (unsigned i = 0; i < nthreads; i++) {
        ws[i].tid = i;
        ws[i].op = op;
        if (pthread_create(&ws[i].th, NULL, run_worker, &ws[i]) != 0) die("pthread_create", 0);
    }
    pthread_barrier_wait(&ready);
    double cpu0 = cpu_now();
    t_start = now();
    t_deadline = t_start + seconds;
    pthread_barrier_wait(&ready);
    for (unsigned i = 0; i < nthreads; i++) pthread_join(ws[i].th, NULL);
    double elapsed = now() - t_start, cpu = cpu_now() - cpu0;
    pthread_barrier_destroy(&ready);

    uint64_t total = 0;
    for (unsigned i = 0; i < nthreads; i++) {
        if (ws[i].failed != CKR_OK) {
            printf("ERROR thread %u: %s: rv=0x%lx\n", i, ws[i].failed_at, (unsigned long)ws[i].failed);
            fflush(stdout);
            exit(1);
        }
        total += ws[i].ops;
    }
    double *all = malloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    for (unsigned i = 0; i < nthreads; i++) {
        memcpy(all + k, ws[i].lat, ws[i].ops * sizeof *all);
        k += ws[i].ops;
        free(ws[i].lat);
    }
    qsort(all, total, sizeof *all, cmp_double);
    double p50 = total ? all[total / 2] : 0, p99 = total ? all[(size_t)((double)total * 0.99)] : 0;
    free(all);
    printf("RESULT {\"op\": \"%s\", \"threads\": %u, \"ops\": %llu, \"seconds\": %.3f, "
           "\"ops_per_s\": %.1f, \"p50_us\": %.1f, \"p99_us\": %.1f, \"cpu_s\": %.3f}\n",
           op_names[op], nthreads, (unsigned long long)total, elapsed, (double)total / elapsed, p50,
           p99, cpu);
    fflush(stdout);
}

/* --- set-up ----------------------------------------------------------------------------------- */

static CK_SLOT_ID find_slot(const char *label) {
    CK_ULONG n = 0;
    CK(F->C_GetSlotList(CK_TRUE, NULL, &n));
    CK_SLOT_ID *ids = calloc(n ? n : 1, sizeof *ids);
    CK(F->C_GetSlotList(CK_TRUE, ids, &n));
    char want[32];
    memset(want, ' ', sizeof want);
    memcpy(want, label, strlen(label) < 32 ? strlen(label) : 32);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (F->C_GetTokenInfo(ids[i], &ti) == CKR_OK && memcmp(ti.label, want, 32) == 0) {
            CK_SLOT_ID id = ids[i];
            free(ids);
            return id;
        }
    }
    printf("ERROR no token labelled '%s' among %lu slots\n", label, (unsigned long)n);
    exit(1);
}

static void make_keys(CK_SESSION_HANDLE s, int need[3]) {
    CK_BBOOL yes = CK_TRUE;
    char label[64];
    snprintf(label, sizeof label, "pkcs11-bench-%ld", (long)getpid());
    CK_ULONG llen = strlen(label);
    if (need[OP_RSA]) {
        CK_ULONG bits = 2048;
        CK_BYTE e[] = {1, 0, 1};
        CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
        CK_ATTRIBUTE pub[] = {{CKA_TOKEN, &yes, 1}, {CKA_VERIFY, &yes, 1}, {CKA_LABEL, label, llen},
                              {CKA_MODULUS_BITS, &bits, sizeof bits}, {CKA_PUBLIC_EXPONENT, e, 3}};
        CK_ATTRIBUTE priv[] = {{CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SENSITIVE, &yes, 1},
                               {CKA_SIGN, &yes, 1}, {CKA_LABEL, label, llen}};
        CK(F->C_GenerateKeyPair(s, &m, pub, 5, priv, 5, &rsa_pub, &rsa_priv));
    }
    if (need[OP_ECDSA]) {
        CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
        CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
        CK_ATTRIBUTE pub[] = {{CKA_TOKEN, &yes, 1}, {CKA_VERIFY, &yes, 1}, {CKA_LABEL, label, llen},
                              {CKA_EC_PARAMS, p256, sizeof p256}};
        CK_ATTRIBUTE priv[] = {{CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SENSITIVE, &yes, 1},
                               {CKA_SIGN, &yes, 1}, {CKA_LABEL, label, llen}};
        CK(F->C_GenerateKeyPair(s, &m, pub, 4, priv, 5, &ec_pub, &ec_priv));
    }
    if (need[OP_GCM]) {
        CK_ULONG len = 32;
        CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
        CK_ATTRIBUTE t[] = {{CKA_TOKEN, &yes, 1},       {CKA_PRIVATE, &yes, 1},
                            {CKA_SENSITIVE, &yes, 1},   {CKA_ENCRYPT, &yes, 1},
                            {CKA_DECRYPT, &yes, 1},     {CKA_LABEL, label, llen},
                            {CKA_VALUE_LEN, &len, sizeof len}};
        CK(F->C_GenerateKey(s, &m, t, 7, &aes_key));
    }
}

/* One correct answer of each kind before anything is timed. */
static void check_keys(CK_SESSION_HANDLE s, int need[3]) {
    static const unsigned char msg[32] = "0123456789abcdef0123456789abcdef";
    unsigned char sig[512], ct[1024 + 16], back[1024 + 16], plain[1024];
    CK_ULONG n;
    memset(plain, 0, sizeof plain);
    if (need[OP_RSA]) {
        CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
        n = sizeof sig;
        CK(F->C_SignInit(s, &m, rsa_priv));
        CK(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof msg, sig, &n));
        CK(F->C_VerifyInit(s, &m, rsa_pub));
        CK(F->C_Verify(s, (CK_BYTE_PTR)msg, sizeof msg, sig, n));
    }
    if (need[OP_ECDSA]) {
        CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
        n = sizeof sig;
        CK(F->C_SignInit(s, &m, ec_priv));
        CK(F->C_Sign(s, (CK_BYTE_PTR)msg, sizeof msg, sig, &n));
        CK(F->C_VerifyInit(s, &m, ec_pub));
        CK(F->C_Verify(s, (CK_BYTE_PTR)msg, sizeof msg, sig, n));
    }
    if (need[OP_GCM]) {
        unsigned char iv[12] = {0xff, 0xff, 0xff, 0xff, 1}; /* tid 0xffffffff: no worker uses it */
        CK_GCM_PARAMS g = {iv, sizeof iv, 96, NULL, 0, 128};
        CK_MECHANISM m = {CKM_AES_GCM, &g, sizeof g};
        n = sizeof ct;
        CK(F->C_EncryptInit(s, &m, aes_key));
        CK(F->C_Encrypt(s, plain, sizeof plain, ct, &n));
        CK_ULONG bn = sizeof back;
        CK(F->C_DecryptInit(s, &m, aes_key));
        CK(F->C_Decrypt(s, ct, n, back, &bn));
        if (bn != sizeof plain || memcmp(back, plain, bn) != 0) die("GCM round trip", 0);
    }
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s MODULE TOKEN_LABEL PIN SECONDS OP:THREADS...\n"
                        "  OP: rsa | ecdsa | gcm\n", argv[0]);
        return 2;
    }
    seconds = atof(argv[4]);
    int nmeas = argc - 5, need[3] = {0, 0, 0};
    enum op ops[64];
    unsigned threads[64];
    if (nmeas > 64) nmeas = 64;
    for (int i = 0; i < nmeas; i++) {
        char name[16];
        unsigned t;
        if (sscanf(argv[5 + i], "%15[a-z]:%u", name, &t) != 2 || t < 1 || t > MAX_THREADS) {
            fprintf(stderr, "bad measurement '%s'\n", argv[5 + i]);
            return 2;
        }
        int found = -1;
        for (int k = 0; k < 3; k++)
            if (strcmp(name, op_names[k]) == 0) found = k;
        if (found < 0) {
            fprintf(stderr, "unknown op '%s'\n", name);
            return 2;
        }
        ops[i] = (enum op)found, threads[i] = t, need[found] = 1;
    }

    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("ERROR dlopen: %s\n", dlerror());
        return 1;
    }
    CK_C_GetFunctionList gfl;
    *(void **)&gfl = dlsym(lib, "C_GetFunctionList"); /* POSIX's way to get a function from dlsym */
    if (!gfl) {
        printf("ERROR no C_GetFunctionList in %s\n", argv[1]);
        return 1;
    }
    CK(gfl(&F));
    CK_C_INITIALIZE_ARGS init = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
    CK(F->C_Initialize(&init));
    slot = find_slot(argv[2]);

    CK_SESSION_HANDLE s;
    CK(F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    CK(F->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)argv[3], strlen(argv[3])));
    double t0 = now();
    make_keys(s, need);
    check_keys(s, need);
    printf("SETUP {\"keygen_and_check_s\": %.3f}\n", now() - t0);
    fflush(stdout);

    for (int i = 0; i < nmeas; i++) measure(ops[i], threads[i]);

    CK_OBJECT_HANDLE all[] = {rsa_pub, rsa_priv, ec_pub, ec_priv, aes_key};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i] != CK_INVALID_HANDLE) CK(F->C_DestroyObject(s, all[i]));
    CK(F->C_Logout(s));
    CK(F->C_CloseSession(s));
    CK(F->C_Finalize(NULL));
    printf("DONE\n");
    return 0;
}
