/*
 * Library state, the connection pool, and one request/reply exchange.
 *
 * Locks: g_lock guards every global below and is only held for short,
 * non-blocking sections (never across socket I/O, except close()).
 * g_init_lock serialises C_Initialize and C_Finalize, which do I/O.
 *
 * Pool: up to POOL_SIZE connections, created on demand; a connection is used
 * by one thread at a time for one request and its reply. Each connection's
 * first request is the C_Initialize hello with the application's app_id.
 *
 * Fork: g_pid is the process that called C_Initialize. A process whose pid
 * differs (a child) sees CKR_CRYPTOKI_NOT_INITIALIZED everywhere and never
 * touches the inherited sockets until it calls C_Initialize, which only
 * close()s its copies (nothing is sent) and starts over with a new app_id.
 *
 * Lost: when an established connection fails (peer closed, I/O error,
 * timeout, malformed reply) the agent's state for this app_id may be gone (an
 * agent restart, or the last connection closing, ends it). The failing call
 * returns CKR_DEVICE_ERROR, every other connection is closed, and every later
 * call returns CKR_DEVICE_REMOVED until C_Finalize + C_Initialize. The module
 * never silently reconnects under the same app_id.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "rpc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define POOL_SIZE 16
/* Above the agent's own node request timeout (120 s) so that its error reply arrives first. */
#define DEFAULT_TIMEOUT_MS 150000
#define PROTOCOL_VERSION 1
/* Offsets in the encoded request: [len:4][0x94][0x01][0xce][id:4]... */
#define OFF_ID 7
#define HEAD_LEN 11

enum { SLOT_EMPTY = 0, SLOT_CONNECTING, SLOT_IDLE, SLOT_BUSY };

struct conn {
    int state;
    int fd;
    uint32_t next_id;
    uint64_t gen;
};

struct config {
    uint8_t app_id[16];
    struct sockaddr_un addr;
    socklen_t addrlen;
    int timeout_ms;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cond = PTHREAD_COND_INITIALIZER;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static struct conn g_pool[POOL_SIZE];
static pid_t g_pool_pid;   /* the process whose descriptors are in g_pool */
static int g_initialized;
static pid_t g_pid;
static int g_lost;
static uint64_t g_gen;     /* changes at every C_Initialize and C_Finalize */
static struct config g_cfg;
static atomic_int g_debug;

void dbg(const char *fmt, ...)
{
    if (!atomic_load(&g_debug))
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "strongroom-pkcs11[%ld]: ", (long)getpid());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static CK_RV fail_code(rpc_kind k)
{
    return k == RPC_NOTOKEN ? CKR_FUNCTION_FAILED : CKR_DEVICE_ERROR;
}

static CK_RV lost_code(rpc_kind k)
{
    switch (k) {
    case RPC_NOTOKEN: return CKR_FUNCTION_FAILED;
    case RPC_SLOTINFO: return CKR_DEVICE_ERROR;
    default: return CKR_DEVICE_REMOVED;
    }
}

/* ---- fork handling ----------------------------------------------------------- */

static void atfork_prepare(void) { pthread_mutex_lock(&g_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&g_lock); }

static void atfork_child(void)
{
    /* Only the forking thread exists in the child. It holds g_lock (taken in
     * prepare, so the globals are consistent); g_init_lock may be held by a
     * parent thread that is inside C_Initialize/C_Finalize and does not exist
     * here, and g_cond may have waiters that do not exist either: start those
     * afresh. The pool is left alone (the pid check keeps it unused) until
     * the child calls C_Initialize. */
    pthread_mutex_init(&g_init_lock, NULL);
    pthread_cond_init(&g_cond, NULL);
    pthread_mutex_unlock(&g_lock);
}

static void register_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* ---- socket I/O with a deadline ---------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            dbg("timed out waiting for the agent");
            return -1;
        }
        struct pollfd p = {fd, events, 0};
        int n = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (n > 0)
            return 0; /* readable/writable or an error: the next call says which */
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

static int send_all(int fd, const uint8_t *p, size_t n, int64_t deadline)
{
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
        } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, deadline))
                return -1;
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else {
            dbg("send to the agent failed: %s", strerror(errno));
            return -1;
        }
    }
    return 0;
}

static int recv_all(int fd, uint8_t *p, size_t n, int64_t deadline)
{
    while (n) {
        ssize_t k = recv(fd, p, n, MSG_DONTWAIT);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
        } else if (k == 0) {
            dbg("the agent closed the connection");
            return -1;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (wait_fd(fd, POLLIN, deadline))
                return -1;
        } else if (errno == EINTR) {
            continue;
        } else {
            dbg("receive from the agent failed: %s", strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* Send one frame (buf includes the 4-byte header) and read the reply frame
 * into a new buffer. Returns 0, or -1 when the connection is unusable. */
static int exchange(int fd, const uint8_t *buf, size_t len, int timeout_ms,
                    uint8_t **reply, size_t *reply_len)
{
    int64_t deadline = now_ms() + timeout_ms;
    uint8_t head[4];
    *reply = NULL;
    if (send_all(fd, buf, len, deadline) || recv_all(fd, head, 4, deadline))
        return -1;
    uint32_t n = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
    if (n == 0 || n > MP_MAX_FRAME) {
        dbg("reply frame of %u bytes refused", n);
        return -1;
    }
    uint8_t *p = malloc(n);
    if (!p)
        return -1;
    if (recv_all(fd, p, n, deadline)) {
        free(p);
        return -1;
    }
    *reply = p;
    *reply_len = n;
    return 0;
}

/* Decode a reply and check its envelope [1, id, rv, outputs]. */
static int parse_envelope(const uint8_t *buf, size_t len, uint32_t id, mp_doc *doc,
                          CK_RV *rv, uint32_t *outputs, uint32_t *nout)
{
    if (mp_decode(buf, len, doc) != MP_DEC_OK) {
        dbg("malformed reply");
        return -1;
    }
    uint64_t version, rid;
    unsigned long code;
    uint32_t out = mp_elem(doc, 0, 3);
    if (!mp_is(doc, 0, MP_ARRAY) || doc->nodes[0].n != 4 ||
        mp_get_uint(doc, mp_elem(doc, 0, 0), &version) || version != PROTOCOL_VERSION ||
        mp_get_uint(doc, mp_elem(doc, 0, 1), &rid) || rid != id ||
        mp_get_ulong(doc, mp_elem(doc, 0, 2), &code) || !mp_is(doc, out, MP_ARRAY)) {
        dbg("reply envelope does not match the request");
        mp_doc_free(doc);
        return -1;
    }
    *rv = code;
    *outputs = out;
    *nout = doc->nodes[out].n;
    return 0;
}

static void begin_frame(mp_enc *e, const char *fn, uint32_t nargs)
{
    static const uint8_t head[HEAD_LEN] = {0, 0, 0, 0, 0x94, PROTOCOL_VERSION, 0xce, 0, 0, 0, 0};
    mp_enc_init(e);
    mp_put_raw(e, head, sizeof head);
    mp_put_str(e, fn);
    mp_put_array(e, nargs);
}

static void finish_frame(mp_enc *e, uint32_t id)
{
    size_t body = e->len - 4;
    e->buf[0] = (uint8_t)(body >> 24);
    e->buf[1] = (uint8_t)(body >> 16);
    e->buf[2] = (uint8_t)(body >> 8);
    e->buf[3] = (uint8_t)body;
    e->buf[OFF_ID] = (uint8_t)(id >> 24);
    e->buf[OFF_ID + 1] = (uint8_t)(id >> 16);
    e->buf[OFF_ID + 2] = (uint8_t)(id >> 8);
    e->buf[OFF_ID + 3] = (uint8_t)id;
}

/* One request on fd whose envelope is complete in e; the reply's rv and
 * outputs are returned in doc. 0, or -1 when the connection is unusable. */
static int roundtrip(int fd, uint32_t id, int timeout_ms, mp_enc *e, uint8_t **reply, mp_doc *doc,
                     CK_RV *rv, uint32_t *outputs, uint32_t *nout)
{
    size_t len;
    finish_frame(e, id);
    if (exchange(fd, e->buf, e->len, timeout_ms, reply, &len))
        return -1;
    if (parse_envelope(*reply, len, id, doc, rv, outputs, nout)) {
        free(*reply);
        *reply = NULL;
        return -1;
    }
    return 0;
}

/* Connect fd to the agent and send the C_Initialize hello.
 * Returns 0 with the agent's answer in *hello_rv, or -1 (transport). */
static int connect_and_hello(int fd, const struct config *cfg, pid_t pid, CK_RV *hello_rv)
{
    struct timeval tv = {cfg->timeout_ms / 1000, (cfg->timeout_ms % 1000) * 1000};
    /* SO_SNDTIMEO bounds a blocking connect() on a Unix socket whose backlog is full. */
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (const struct sockaddr *)&cfg->addr, cfg->addrlen) != 0) {
        if (errno != EINTR) {
            dbg("cannot connect to the agent at %s: %s", cfg->addr.sun_path, strerror(errno));
            return -1;
        }
        int err = 0;
        socklen_t el = sizeof err;
        if (wait_fd(fd, POLLOUT, now_ms() + cfg->timeout_ms) ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) || err) {
            dbg("cannot connect to the agent at %s", cfg->addr.sun_path);
            return -1;
        }
    }
    static const uint16_t one = 1;
    mp_enc e;
    begin_frame(&e, "C_Initialize", 4);
    mp_put_bin(&e, cfg->app_id, sizeof cfg->app_id);
    mp_put_uint(&e, (uint64_t)pid);
    mp_put_uint(&e, sizeof(CK_ULONG));
    mp_put_bool(&e, *(const uint8_t *)&one == 1);
    if (e.err) {
        mp_enc_free(&e);
        return -1;
    }
    uint8_t *reply = NULL;
    mp_doc doc;
    uint32_t outputs, nout;
    int rc = roundtrip(fd, 0, cfg->timeout_ms, &e, &reply, &doc, hello_rv, &outputs, &nout);
    mp_enc_free(&e);
    if (rc == 0) {
        mp_doc_free(&doc);
        free(reply);
    }
    return rc;
}

/* ---- the pool ------------------------------------------------------------------- */

static int new_socket(void)
{
    return socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

/* Close every idle connection (g_lock held). */
static void close_idle_locked(void)
{
    for (int i = 0; i < POOL_SIZE; i++) {
        if (g_pool[i].state == SLOT_IDLE) {
            close(g_pool[i].fd);
            g_pool[i].fd = -1;
            g_pool[i].state = SLOT_EMPTY;
        }
    }
}

static int usable_locked(void) { return g_initialized && g_pid == getpid(); }

static CK_RV conn_acquire(struct conn **out, rpc_kind kind)
{
    CK_RV rv;
    pthread_mutex_lock(&g_lock);
    for (;;) {
        if (!usable_locked()) {
            rv = CKR_CRYPTOKI_NOT_INITIALIZED;
            break;
        }
        if (g_lost) {
            rv = lost_code(kind);
            break;
        }
        struct conn *idle = NULL, *empty = NULL;
        for (int i = 0; i < POOL_SIZE && !idle; i++) {
            if (g_pool[i].state == SLOT_IDLE && g_pool[i].gen == g_gen)
                idle = &g_pool[i];
            else if (g_pool[i].state == SLOT_EMPTY && !empty)
                empty = &g_pool[i];
        }
        if (idle) {
            idle->state = SLOT_BUSY;
            *out = idle;
            rv = CKR_OK;
            break;
        }
        if (empty) {
            struct config cfg = g_cfg;
            uint64_t gen = g_gen;
            pid_t pid = g_pid;
            int fd = new_socket();
            if (fd < 0) {
                dbg("socket: %s", strerror(errno));
                rv = fail_code(kind);
                break;
            }
            empty->state = SLOT_CONNECTING; /* the fd is recorded for a fork meanwhile */
            empty->fd = fd;
            empty->gen = gen;
            pthread_mutex_unlock(&g_lock);
            CK_RV hello = CKR_OK;
            int rc = connect_and_hello(fd, &cfg, pid, &hello);
            pthread_mutex_lock(&g_lock);
            if (rc != 0 || hello != CKR_OK) {
                if (rc == 0)
                    dbg("the agent refused a new connection's hello: rv 0x%lx", (unsigned long)hello);
                close(fd);
                empty->fd = -1;
                empty->state = SLOT_EMPTY;
                pthread_cond_broadcast(&g_cond);
                rv = fail_code(kind);
                break;
            }
            if (gen != g_gen || !usable_locked() || g_lost) {
                /* finalized (or lost) meanwhile: look again */
                close(fd);
                empty->fd = -1;
                empty->state = SLOT_EMPTY;
                pthread_cond_broadcast(&g_cond);
                continue;
            }
            empty->next_id = 1;
            empty->state = SLOT_BUSY;
            *out = empty;
            rv = CKR_OK;
            break;
        }
        pthread_cond_wait(&g_cond, &g_lock);
    }
    pthread_mutex_unlock(&g_lock);
    return rv;
}

static void conn_release(struct conn *c, int broken)
{
    pthread_mutex_lock(&g_lock);
    int current = c->gen == g_gen && usable_locked();
    if (broken || !current || g_lost) {
        close(c->fd);
        c->fd = -1;
        c->state = SLOT_EMPTY;
        if (broken && current && !g_lost) {
            dbg("connection to the agent lost: CKR_DEVICE_REMOVED until C_Finalize + C_Initialize");
            g_lost = 1;
            close_idle_locked();
        }
    } else {
        c->state = SLOT_IDLE;
    }
    pthread_cond_broadcast(&g_cond);
    pthread_mutex_unlock(&g_lock);
}

/* ---- requests ------------------------------------------------------------------ */

CK_RV state_check(void)
{
    pthread_mutex_lock(&g_lock);
    CK_RV rv = usable_locked() ? CKR_OK : CKR_CRYPTOKI_NOT_INITIALIZED;
    pthread_mutex_unlock(&g_lock);
    return rv;
}

CK_RV rpc_begin(rpc_t *r, const char *fn, uint32_t nargs, rpc_kind kind)
{
    memset(r, 0, sizeof *r);
    r->fn = fn;
    r->kind = kind;
    r->outputs = MP_NONE;
    pthread_mutex_lock(&g_lock);
    CK_RV rv = !usable_locked() ? CKR_CRYPTOKI_NOT_INITIALIZED : g_lost ? lost_code(kind) : CKR_OK;
    pthread_mutex_unlock(&g_lock);
    if (rv != CKR_OK)
        return rv;
    begin_frame(&r->enc, fn, nargs);
    return CKR_OK;
}

void rpc_abort(rpc_t *r)
{
    mp_enc_free(&r->enc);
}

CK_RV rpc_enc_error(const rpc_t *r)
{
    return r->enc.err == MP_ENC_NOMEM ? CKR_HOST_MEMORY : CKR_DATA_LEN_RANGE;
}

CK_RV rpc_call(rpc_t *r, CK_RV *agent_rv)
{
    CK_RV rv;
    if (r->enc.err) {
        rv = rpc_enc_error(r);
        rpc_abort(r);
        return rv;
    }
    rv = conn_acquire(&r->conn, r->kind);
    if (rv != CKR_OK) {
        rpc_abort(r);
        return rv;
    }
    struct conn *c = r->conn;
    uint32_t id = c->next_id++;
    pthread_mutex_lock(&g_lock);
    int timeout_ms = g_cfg.timeout_ms;
    pthread_mutex_unlock(&g_lock);
    int rc = roundtrip(c->fd, id, timeout_ms, &r->enc, &r->reply, &r->doc, agent_rv, &r->outputs, &r->nout);
    mp_enc_free(&r->enc);
    if (rc) {
        dbg("%s: transport failure", r->fn);
        conn_release(c, 1);
        r->conn = NULL;
        return fail_code(r->kind);
    }
    return CKR_OK;
}

CK_RV rpc_end(rpc_t *r, int malformed)
{
    if (malformed)
        dbg("%s: malformed reply outputs", r->fn);
    mp_doc_free(&r->doc);
    free(r->reply);
    r->reply = NULL;
    if (r->conn) {
        conn_release(r->conn, malformed);
        r->conn = NULL;
    }
    return malformed ? fail_code(r->kind) : CKR_OK;
}

CK_RV rpc_simple(rpc_t *r)
{
    CK_RV arv;
    CK_RV rv = rpc_call(r, &arv);
    if (rv != CKR_OK)
        return rv;
    rpc_end(r, 0);
    return arv;
}

/* ---- C_Initialize / C_Finalize ---------------------------------------------------- */

static int random_bytes(uint8_t *p, size_t n)
{
    while (n) {
        ssize_t k = getrandom(p, n, 0);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        p += k;
        n -= (size_t)k;
    }
    if (!n)
        return 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    while (n) {
        ssize_t k = read(fd, p, n);
        if (k <= 0) {
            if (k < 0 && errno == EINTR)
                continue;
            close(fd);
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    close(fd);
    return 0;
}

static int parse_timeout_ms(const char *s)
{
    if (!s || !*s)
        return DEFAULT_TIMEOUT_MS;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v > 0) || v > 86400.0) {
        dbg("ignoring STRONGROOM_PKCS11_TIMEOUT=%s (seconds, 0 < t <= 86400)", s);
        return DEFAULT_TIMEOUT_MS;
    }
    int ms = (int)(v * 1000.0);
    return ms < 1 ? 1 : ms;
}

/* Configuration from the environment: CKR_GENERAL_ERROR when unusable. */
static CK_RV read_config(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    const char *path = getenv("STRONGROOM_AGENT_SOCKET");
    if (!path || !*path) {
        dbg("STRONGROOM_AGENT_SOCKET is not set");
        return CKR_GENERAL_ERROR;
    }
    size_t n = strlen(path);
    if (n >= sizeof cfg->addr.sun_path) {
        dbg("STRONGROOM_AGENT_SOCKET is longer than a Unix socket path may be");
        return CKR_GENERAL_ERROR;
    }
    cfg->addr.sun_family = AF_UNIX;
    memcpy(cfg->addr.sun_path, path, n + 1);
    cfg->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    cfg->timeout_ms = parse_timeout_ms(getenv("STRONGROOM_PKCS11_TIMEOUT"));
    if (random_bytes(cfg->app_id, sizeof cfg->app_id)) {
        dbg("no randomness for the app_id");
        return CKR_FUNCTION_FAILED;
    }
    return CKR_OK;
}

static CK_RV check_init_args(CK_VOID_PTR init_args)
{
    if (!init_args)
        return CKR_OK;
    const CK_C_INITIALIZE_ARGS *a = init_args;
    if (a->pReserved)
        return CKR_ARGUMENTS_BAD;
    int given = (a->CreateMutex != NULL) + (a->DestroyMutex != NULL) + (a->LockMutex != NULL) +
                (a->UnlockMutex != NULL);
    if (given != 0 && given != 4)
        return CKR_ARGUMENTS_BAD;
    /* We lock with pthreads only: application mutexes without OS locking cannot be honoured. */
    if (given == 4 && !(a->flags & CKF_OS_LOCKING_OK))
        return CKR_CANT_LOCK;
    /* CKF_LIBRARY_CANT_CREATE_OS_THREADS: fine, the module never creates threads. */
    return CKR_OK;
}

CK_RV lib_initialize(CK_VOID_PTR init_args)
{
    CK_RV rv = check_init_args(init_args);
    if (rv != CKR_OK)
        return rv;
    pthread_once(&g_once, register_atfork);
    const char *d = getenv("STRONGROOM_PKCS11_DEBUG");
    atomic_store(&g_debug, d && *d && strcmp(d, "0") != 0);

    pthread_mutex_lock(&g_init_lock);
    pthread_mutex_lock(&g_lock);
    pid_t pid = getpid();
    if (g_initialized && g_pid == pid) {
        pthread_mutex_unlock(&g_lock);
        pthread_mutex_unlock(&g_init_lock);
        return CKR_CRYPTOKI_ALREADY_INITIALIZED;
    }
    if (g_pool_pid != pid) {
        /* Descriptors inherited from the parent (or none): close our copies
         * without sending anything; the parent's connections are unaffected. */
        for (int i = 0; i < POOL_SIZE; i++) {
            if (g_pool[i].state != SLOT_EMPTY && g_pool[i].fd >= 0)
                close(g_pool[i].fd);
            g_pool[i].state = SLOT_EMPTY;
            g_pool[i].fd = -1;
        }
        g_pool_pid = pid;
        if (g_initialized)
            dbg("C_Initialize in a child: inherited connections closed");
    }
    g_initialized = 0;
    pthread_mutex_unlock(&g_lock);

    struct config cfg;
    rv = read_config(&cfg);
    if (rv != CKR_OK) {
        pthread_mutex_unlock(&g_init_lock);
        return rv;
    }

    /* Reserve a slot for the first connection (so that a fork meanwhile knows its fd). */
    pthread_mutex_lock(&g_lock);
    struct conn *c = NULL;
    for (;;) {
        for (int i = 0; i < POOL_SIZE && !c; i++)
            if (g_pool[i].state == SLOT_EMPTY)
                c = &g_pool[i];
        if (c)
            break;
        pthread_cond_wait(&g_cond, &g_lock); /* only calls of a finalized generation hold slots */
    }
    int fd = new_socket();
    if (fd < 0) {
        pthread_mutex_unlock(&g_lock);
        pthread_mutex_unlock(&g_init_lock);
        return CKR_FUNCTION_FAILED;
    }
    c->state = SLOT_CONNECTING;
    c->fd = fd;
    c->gen = g_gen + 1;
    pthread_mutex_unlock(&g_lock);

    CK_RV hello = CKR_OK;
    int rc = connect_and_hello(fd, &cfg, pid, &hello);

    pthread_mutex_lock(&g_lock);
    if (rc != 0 || hello != CKR_OK) {
        close(fd);
        c->fd = -1;
        c->state = SLOT_EMPTY;
        pthread_cond_broadcast(&g_cond);
        pthread_mutex_unlock(&g_lock);
        pthread_mutex_unlock(&g_init_lock);
        if (rc != 0)
            return CKR_FUNCTION_FAILED; /* agent unreachable: a later retry may succeed */
        dbg("the agent answered C_Initialize with 0x%lx", (unsigned long)hello);
        return hello;
    }
    g_cfg = cfg;
    g_gen++;
    c->gen = g_gen;
    c->next_id = 1;
    c->state = SLOT_IDLE;
    g_pid = pid;
    g_lost = 0;
    g_initialized = 1;
    pthread_mutex_unlock(&g_lock);
    pthread_mutex_unlock(&g_init_lock);
    return CKR_OK;
}

CK_RV lib_finalize(CK_VOID_PTR reserved)
{
    pthread_mutex_lock(&g_init_lock);
    pthread_mutex_lock(&g_lock);
    if (!usable_locked()) {
        pthread_mutex_unlock(&g_lock);
        pthread_mutex_unlock(&g_init_lock);
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    }
    if (reserved) {
        pthread_mutex_unlock(&g_lock);
        pthread_mutex_unlock(&g_init_lock);
        return CKR_ARGUMENTS_BAD;
    }
    struct conn *c = NULL;
    if (!g_lost) {
        for (int i = 0; i < POOL_SIZE && !c; i++)
            if (g_pool[i].state == SLOT_IDLE && g_pool[i].gen == g_gen)
                c = &g_pool[i];
        if (c)
            c->state = SLOT_BUSY;
    }
    close_idle_locked();
    g_initialized = 0;
    g_lost = 0;
    g_gen++; /* connections still in use by other threads close when released */
    int timeout_ms = g_cfg.timeout_ms;
    memset(g_cfg.app_id, 0, sizeof g_cfg.app_id);
    pthread_cond_broadcast(&g_cond);
    pthread_mutex_unlock(&g_lock);

    if (c) {
        /* Tell the agent; the answer changes nothing (closing the last
         * connection of an app_id ends its state anyway). */
        mp_enc e;
        begin_frame(&e, "C_Finalize", 0);
        if (!e.err) {
            uint8_t *reply = NULL;
            mp_doc doc;
            CK_RV arv;
            uint32_t outputs, nout;
            if (roundtrip(c->fd, c->next_id++, timeout_ms, &e, &reply, &doc, &arv, &outputs, &nout) == 0) {
                mp_doc_free(&doc);
                free(reply);
            }
        }
        mp_enc_free(&e);
        conn_release(c, 0); /* closes it: its generation is over */
    }
    pthread_mutex_unlock(&g_init_lock);
    return CKR_OK;
}
