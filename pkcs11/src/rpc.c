/*
 * Library state, configuration, the connection pool, one request/reply
 * exchange, and reopening the application after an agent restart.
 *
 * Locks: g_lock guards every global below and is only held for short,
 * non-blocking sections (never across socket I/O, except close()).
 * g_init_lock serialises C_Initialize and C_Finalize, which do I/O.
 * g_connect_lock serialises making a connection (connect, hello, and X_Resume
 * when the agent did not know the application), so that no call reaches an
 * agent before the application is reopened in it.
 *
 * Pool: up to POOL_SIZE connections, created on demand; a connection is used
 * by one thread at a time for one request and its reply. Each connection's
 * first request is the C_Initialize hello with the application's app_id.
 *
 * Fork: g_pid is the process that called C_Initialize. A process whose pid
 * differs (a child) sees CKR_CRYPTOKI_NOT_INITIALIZED everywhere and never
 * touches the inherited sockets until it calls C_Initialize, which only
 * close()s its copies (nothing is sent) and starts over with a new app_id. A
 * child's C_Initialize without STRONGROOM_AGENT_SOCKET uses the socket its
 * parent used (nginx's master initializes the module, then forks workers whose
 * environment it cleared).
 *
 * Agent restart: an idle connection is checked before use (the agent closed
 * it: EOF); a connection that fails during a call fails that call
 * (CKR_DEVICE_ERROR). Either way every idle connection is dropped and the next
 * call connects again, waiting up to reconnect_wait (10 s) for the agent to be
 * back. The hello tells whether the agent knew the application; when it did
 * not, the module reopens it first (X_Resume: its sessions under the same
 * handles, its login from the PIN kept in locked memory, app.c). Calls made
 * while the agent stays unreachable fail: CKR_DEVICE_REMOVED (C_GetSlotList:
 * CKR_FUNCTION_FAILED, C_GetSlotInfo: CKR_DEVICE_ERROR).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "rpc.h"

#include <ctype.h>
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
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "app.h"

#define POOL_SIZE 16
/* Above the agent's own node request timeout (120 s) so that its error reply arrives first. */
#define DEFAULT_TIMEOUT_MS 150000
/* How long calls wait for an agent that went away to be back (a restart takes a second or two). */
#define DEFAULT_RECONNECT_MS 10000
#define RECONNECT_STEP_MS 100
#define PROTOCOL_VERSION 1
/* Offsets in the encoded request: [len:4][0x94][0x01][0xce][id:4]... */
#define OFF_ID 7
#define HEAD_LEN 11

#ifndef STRONGROOM_SYSTEM_CONF
#define STRONGROOM_SYSTEM_CONF "/etc/strongroom/pkcs11.conf"
#endif
#ifndef STRONGROOM_DEFAULT_SOCKET
#define STRONGROOM_DEFAULT_SOCKET "/run/strongroom/agent.sock"
#endif
#define MAX_CONF_BYTES 65536

enum { SLOT_EMPTY = 0, SLOT_CONNECTING, SLOT_IDLE, SLOT_BUSY };

struct conn {
    int state;
    int fd;
    uint32_t next_id;
    uint64_t gen;
    uint64_t agent; /* g_agent when it connected: an agent incarnation */
};

struct config {
    uint8_t app_id[16];
    struct sockaddr_un addr;
    socklen_t addrlen;
    int timeout_ms;
    int reconnect_ms;
    char source[160]; /* where the socket path came from, for explanations */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_connect_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cond = PTHREAD_COND_INITIALIZER;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static struct conn g_pool[POOL_SIZE];
static pid_t g_pool_pid;   /* the process whose descriptors are in g_pool */
static int g_initialized;
static pid_t g_pid;
static uint64_t g_gen;     /* changes at every C_Initialize and C_Finalize */
static uint64_t g_agent;   /* changes when a connection to the agent broke */
static int64_t g_reconnect_until; /* calls wait for the agent until then (0: no outage known) */
static int g_outage;       /* a connection broke and none has been made since */
static struct config g_cfg;
static int g_have_cfg;     /* g_cfg holds a socket path a C_Initialize used (a forked child reuses it) */
static atomic_int g_debug;

static int64_t now_ms(void);

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
     * prepare, so the globals are consistent); the other locks may be held by
     * parent threads that do not exist here, and g_cond may have waiters that
     * do not exist either: start those afresh. The pool is left alone (the pid
     * check keeps it unused) until the child calls C_Initialize. */
    pthread_mutex_init(&g_init_lock, NULL);
    pthread_mutex_init(&g_connect_lock, NULL);
    explain_atfork_child();
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

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
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

/* An idle connection is usable unless the agent closed it (or sent something unasked). */
static int idle_alive(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    int n;
    do
        n = poll(&p, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n == 0)
        return 1;
    dbg("an idle connection to the agent was closed (agent restarted?)");
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
    if (n == 0 || n > MP_MAX_REPLY) {
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

/* A refusal's reason: the one str output (C_Initialize, C_Login, X_Resume), copied to buf. */
static const char *reason_of(const mp_doc *doc, uint32_t outputs, uint32_t nout, char *buf, size_t size)
{
    uint32_t s = mp_elem(doc, outputs, 0);
    if (nout != 1 || !mp_is(doc, s, MP_STR) || size == 0)
        return NULL;
    size_t n = doc->nodes[s].n < size - 1 ? doc->nodes[s].n : size - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = doc->nodes[s].v.p[i];
        buf[i] = (char)(c >= 0x20 && c < 0x7f ? c : '?'); /* nothing but printable ASCII reaches a log */
    }
    buf[n] = 0;
    return buf;
}

enum { HELLO_OK = 0, HELLO_TRANSPORT = -1, HELLO_DENIED = -2 };

/* Connect fd to the agent and send the C_Initialize hello. HELLO_OK with the
 * agent's answer in *hello_rv and whether it knew the application in *known;
 * HELLO_TRANSPORT (errno kept in *err) otherwise. */
static int connect_and_hello(int fd, const struct config *cfg, pid_t pid, CK_RV *hello_rv, int *known, int *err,
                             char *why, size_t why_size)
{
    struct timeval tv = {cfg->timeout_ms / 1000, (cfg->timeout_ms % 1000) * 1000};
    *err = 0;
    *known = 1;
    why[0] = 0;
    /* SO_SNDTIMEO bounds a blocking connect() on a Unix socket whose backlog is full. */
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (const struct sockaddr *)&cfg->addr, cfg->addrlen) != 0) {
        if (errno != EINTR) {
            *err = errno;
            dbg("cannot connect to the agent at %s: %s", cfg->addr.sun_path, strerror(errno));
            return HELLO_TRANSPORT;
        }
        int e = 0;
        socklen_t el = sizeof e;
        if (wait_fd(fd, POLLOUT, now_ms() + cfg->timeout_ms) ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) || e) {
            *err = e ? e : ETIMEDOUT;
            dbg("cannot connect to the agent at %s", cfg->addr.sun_path);
            return HELLO_TRANSPORT;
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
        *err = ENOMEM;
        return HELLO_TRANSPORT;
    }
    uint8_t *reply = NULL;
    mp_doc doc;
    uint32_t outputs, nout;
    int rc = roundtrip(fd, 0, cfg->timeout_ms, &e, &reply, &doc, hello_rv, &outputs, &nout);
    mp_enc_free(&e);
    if (rc != 0) {
        *err = EPROTO;
        return HELLO_TRANSPORT;
    }
    if (*hello_rv == CKR_OK) {
        /* [known]; an agent that says nothing (an older one) knew it: nothing to reopen */
        uint32_t k = mp_elem(&doc, outputs, 0);
        if (nout == 1 && mp_is(&doc, k, MP_BOOL))
            *known = doc.nodes[k].v.u != 0;
    } else {
        reason_of(&doc, outputs, nout, why, why_size);
    }
    mp_doc_free(&doc);
    free(reply);
    return HELLO_OK;
}

/* Reopen the application in an agent that did not know it (X_Resume on fd). */
static void resume(int fd, const struct config *cfg)
{
    mp_enc e;
    begin_frame(&e, "X_Resume", 2);
    e.secret = 1;
    app_encode_resume(&e);
    if (e.err) {
        mp_enc_free(&e);
        return;
    }
    uint8_t *reply = NULL;
    mp_doc doc;
    CK_RV rv;
    uint32_t outputs, nout;
    if (roundtrip(fd, 1, cfg->timeout_ms, &e, &reply, &doc, &rv, &outputs, &nout) == 0) {
        char why[200];
        if (rv != CKR_OK)
            explain("the agent restarted and could not reopen this application's sessions (0x%lx): %s",
                    (unsigned long)rv, reason_of(&doc, outputs, nout, why, sizeof why) ? why : "no reason given");
        else
            dbg("application reopened in the agent");
        mp_doc_free(&doc);
        free(reply);
    }
    mp_enc_free(&e);
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

/* A connection to agent incarnation `agent` broke (g_lock held): every idle one goes, the next call connects
 * again (and waits for the agent a while). */
static void broken_locked(uint64_t agent)
{
    if (agent != g_agent)
        return; /* already known */
    g_agent++;
    g_outage = 1;
    g_reconnect_until = now_ms() + g_cfg.reconnect_ms;
    close_idle_locked();
}

static int usable_locked(void) { return g_initialized && g_pid == getpid(); }

static const char *connect_advice(int err)
{
    switch (err) {
    case ENOENT: return "no such socket (is the agent running? set STRONGROOM_AGENT_SOCKET or socket = in "
                        STRONGROOM_SYSTEM_CONF ")";
    case ECONNREFUSED: return "nothing listens there (the agent is not running?)";
    case EACCES:
    case EPERM: return "permission denied: the agent's socket is mode 0660 (run the application as the agent's "
                       "user or in its group)";
    case ETIMEDOUT: return "no answer in time";
    case EPROTO: return "the agent's answer was not understood";
    default: return strerror(err);
    }
}

/* Make a new connection in slot c (reserved as SLOT_CONNECTING by the caller, g_lock not held). Returns
 * CKR_OK with the connection SLOT_BUSY, or the call's error with the slot released. */
static CK_RV establish(struct conn *c, rpc_kind kind)
{
    pthread_mutex_lock(&g_connect_lock);
    CK_RV rv = CKR_OK;
    for (;;) {
        pthread_mutex_lock(&g_lock);
        if (!usable_locked()) {
            rv = CKR_CRYPTOKI_NOT_INITIALIZED;
            pthread_mutex_unlock(&g_lock);
            break;
        }
        struct config cfg = g_cfg;
        uint64_t gen = g_gen;
        pid_t pid = g_pid;
        int outage = g_outage;
        int64_t until = g_reconnect_until;
        int fd = new_socket();
        if (fd < 0) {
            pthread_mutex_unlock(&g_lock);
            dbg("socket: %s", strerror(errno));
            rv = fail_code(kind);
            break;
        }
        c->fd = fd; /* recorded for a fork meanwhile */
        pthread_mutex_unlock(&g_lock);

        CK_RV hello = CKR_OK;
        int known = 1, err = 0;
        char why[200];
        int rc = connect_and_hello(fd, &cfg, pid, &hello, &known, &err, why, sizeof why);
        if (rc == HELLO_OK && hello == CKR_OK && !known && app_has_state())
            resume(fd, &cfg);

        pthread_mutex_lock(&g_lock);
        if (rc == HELLO_OK && hello == CKR_OK && gen == g_gen && usable_locked()) {
            c->gen = gen;
            c->agent = g_agent;
            c->next_id = 2; /* 0: the hello, 1: X_Resume */
            c->state = SLOT_BUSY;
            if (g_outage)
                explain("connected to the agent at %s again%s", cfg.addr.sun_path,
                        known ? "" : "; the application's sessions and login were reopened");
            g_outage = 0;
            g_reconnect_until = 0;
            pthread_mutex_unlock(&g_lock);
            break;
        }
        close(fd);
        c->fd = -1;
        if (gen != g_gen || !usable_locked()) {
            pthread_mutex_unlock(&g_lock);
            rv = CKR_CRYPTOKI_NOT_INITIALIZED;
            break;
        }
        pthread_mutex_unlock(&g_lock);
        if (rc == HELLO_OK) {
            explain("the agent at %s refused a connection (0x%lx)%s%s", cfg.addr.sun_path, (unsigned long)hello,
                    why[0] ? ": " : "", why);
            rv = fail_code(kind);
            break;
        }
        if (outage && now_ms() < until) {
            sleep_ms(RECONNECT_STEP_MS); /* the agent is restarting: give it a moment */
            continue;
        }
        explain("cannot reach the agent at %s (%s): %s", cfg.addr.sun_path, cfg.source, connect_advice(err));
        rv = outage ? lost_code(kind) : fail_code(kind);
        break;
    }
    pthread_mutex_unlock(&g_connect_lock);
    if (rv != CKR_OK) {
        pthread_mutex_lock(&g_lock);
        c->fd = -1;
        c->state = SLOT_EMPTY;
        pthread_cond_broadcast(&g_cond);
        pthread_mutex_unlock(&g_lock);
    }
    return rv;
}

static CK_RV conn_acquire(struct conn **out, rpc_kind kind)
{
    pthread_mutex_lock(&g_lock);
    for (;;) {
        if (!usable_locked()) {
            pthread_mutex_unlock(&g_lock);
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        }
        struct conn *idle = NULL, *empty = NULL;
        for (int i = 0; i < POOL_SIZE && !idle; i++) {
            if (g_pool[i].state == SLOT_IDLE && g_pool[i].gen == g_gen && g_pool[i].agent == g_agent)
                idle = &g_pool[i];
            else if (g_pool[i].state == SLOT_EMPTY && !empty)
                empty = &g_pool[i];
        }
        if (idle) {
            idle->state = SLOT_BUSY;
            pthread_mutex_unlock(&g_lock);
            if (idle_alive(idle->fd)) {
                *out = idle;
                return CKR_OK;
            }
            pthread_mutex_lock(&g_lock);
            close(idle->fd);
            idle->fd = -1;
            idle->state = SLOT_EMPTY;
            broken_locked(idle->agent);
            pthread_cond_broadcast(&g_cond);
            continue;
        }
        if (empty) {
            empty->state = SLOT_CONNECTING;
            empty->fd = -1;
            pthread_mutex_unlock(&g_lock);
            CK_RV rv = establish(empty, kind);
            if (rv == CKR_OK)
                *out = empty;
            return rv;
        }
        pthread_cond_wait(&g_cond, &g_lock);
    }
}

static void conn_release(struct conn *c, int broken)
{
    pthread_mutex_lock(&g_lock);
    int current = c->gen == g_gen && usable_locked();
    if (broken || !current || c->agent != g_agent) {
        close(c->fd);
        c->fd = -1;
        c->state = SLOT_EMPTY;
        if (broken && current)
            broken_locked(c->agent);
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
    CK_RV rv = state_check();
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
    if (malformed) {
        dbg("%s: malformed reply outputs", r->fn);
        r->malformed = 1;
    }
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

const char *rpc_reason(const rpc_t *r, char *buf, size_t size)
{
    if (!r->reply || r->outputs == MP_NONE)
        return NULL;
    return reason_of(&r->doc, r->outputs, r->nout, buf, size);
}

/* ---- configuration ---------------------------------------------------------------------- */

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

/* Seconds (fractions allowed) as milliseconds; -1 when not a number in (0, max]. */
static int parse_seconds_ms(const char *s, double max)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    while (*end == ' ' || *end == '\t')
        end++;
    if (errno || end == s || *end || !(v > 0) || v > max)
        return -1;
    int ms = (int)(v * 1000.0);
    return ms < 1 ? 1 : ms;
}

struct file_settings {
    char socket[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
    int timeout_ms;
    int reconnect_ms;
};

static char *trim(char *s)
{
    while (*s && isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = 0;
    return s;
}

/* The configuration file (STRONGROOM_PKCS11_CONF, else the system's): "key = value" lines, '#' comments.
 * Absent: 0 with nothing set. Unreadable or malformed: -1 (explained). */
static int read_file(const char *path, struct file_settings *out)
{
    memset(out, 0, sizeof *out);
    out->timeout_ms = out->reconnect_ms = -1;
    FILE *f = fopen(path, "re");
    if (!f) {
        if (errno == ENOENT || errno == ENOTDIR)
            return 0;
        explain("cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    char line[1024];
    int lineno = 0, bad = 0;
    size_t total = 0;
    while (!bad && fgets(line, sizeof line, f)) {
        lineno++;
        total += strlen(line);
        if (total > MAX_CONF_BYTES || (!strchr(line, '\n') && !feof(f))) {
            explain("%s: line %d is too long (or the file is larger than %d bytes)", path, lineno, MAX_CONF_BYTES);
            bad = 1;
            break;
        }
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char *text = trim(line);
        if (!*text)
            continue;
        char *eq = strchr(text, '=');
        if (!eq) {
            explain("%s: line %d is not 'key = value'", path, lineno);
            bad = 1;
            break;
        }
        *eq = 0;
        char *key = trim(text), *value = trim(eq + 1);
        if (!strcmp(key, "socket")) {
            if (!*value || strlen(value) >= sizeof out->socket - 1) {
                explain("%s: line %d: socket is empty or longer than a Unix socket path may be", path, lineno);
                bad = 1;
            } else {
                snprintf(out->socket, sizeof out->socket, "%s", value);
            }
        } else if (!strcmp(key, "timeout")) {
            if ((out->timeout_ms = parse_seconds_ms(value, 86400.0)) < 0) {
                explain("%s: line %d: timeout is seconds, 0 < t <= 86400", path, lineno);
                bad = 1;
            }
        } else if (!strcmp(key, "reconnect_wait")) {
            if ((out->reconnect_ms = parse_seconds_ms(value, 3600.0)) < 0) {
                explain("%s: line %d: reconnect_wait is seconds, 0 < t <= 3600", path, lineno);
                bad = 1;
            }
        } else {
            explain("%s: line %d: unknown setting %s (ignored)", path, lineno, key);
        }
    }
    fclose(f);
    return bad ? -1 : 0;
}

/* Where the agent is, in this order: STRONGROOM_AGENT_SOCKET; the socket this process's last C_Initialize
 * used (a forked child's parent, e.g. nginx's master: it cleared its workers' environment); socket = in
 * the configuration file; the default path. CKR_GENERAL_ERROR when unusable (explained). */
static CK_RV read_config(struct config *cfg, const struct config *inherited)
{
    memset(cfg, 0, sizeof *cfg);
    const char *conf_path = getenv("STRONGROOM_PKCS11_CONF");
    if (!conf_path || !*conf_path)
        conf_path = STRONGROOM_SYSTEM_CONF;
    struct file_settings file;
    if (read_file(conf_path, &file))
        return CKR_GENERAL_ERROR;

    const char *path = getenv("STRONGROOM_AGENT_SOCKET");
    if (path && *path) {
        snprintf(cfg->source, sizeof cfg->source, "STRONGROOM_AGENT_SOCKET");
    } else if (inherited) {
        path = inherited->addr.sun_path;
        /* a forked child's parent (nginx's master), or an earlier C_Initialize of this process */
        snprintf(cfg->source, sizeof cfg->source, "the socket this process (or its parent) used before");
    } else if (file.socket[0]) {
        path = file.socket;
        snprintf(cfg->source, sizeof cfg->source, "socket = in %s", conf_path);
    } else {
        path = STRONGROOM_DEFAULT_SOCKET;
        snprintf(cfg->source, sizeof cfg->source, "the default; STRONGROOM_AGENT_SOCKET and %s name none",
                 conf_path);
    }
    size_t n = strlen(path);
    if (n >= sizeof cfg->addr.sun_path) {
        explain("C_Initialize: the agent socket path from %s is longer than a Unix socket path may be (%zu bytes)",
                cfg->source, n);
        return CKR_GENERAL_ERROR;
    }
    cfg->addr.sun_family = AF_UNIX;
    memcpy(cfg->addr.sun_path, path, n + 1);
    cfg->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);

    const char *t = getenv("STRONGROOM_PKCS11_TIMEOUT");
    int ms = parse_seconds_ms(t, 86400.0);
    if (t && *t && ms < 0)
        explain("ignoring STRONGROOM_PKCS11_TIMEOUT=%s (seconds, 0 < t <= 86400)", t);
    cfg->timeout_ms = ms > 0 ? ms : file.timeout_ms > 0 ? file.timeout_ms : DEFAULT_TIMEOUT_MS;
    const char *w = getenv("STRONGROOM_PKCS11_RECONNECT_WAIT");
    ms = parse_seconds_ms(w, 3600.0);
    if (w && *w && ms < 0)
        explain("ignoring STRONGROOM_PKCS11_RECONNECT_WAIT=%s (seconds, 0 < t <= 3600)", w);
    cfg->reconnect_ms = ms > 0 ? ms : file.reconnect_ms > 0 ? file.reconnect_ms : DEFAULT_RECONNECT_MS;

    if (random_bytes(cfg->app_id, sizeof cfg->app_id)) {
        explain("C_Initialize: no randomness for the application id");
        return CKR_FUNCTION_FAILED;
    }
    return CKR_OK;
}

/* ---- C_Initialize / C_Finalize ---------------------------------------------------- */

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
    struct config inherited = g_cfg;
    int have_inherited = g_have_cfg;
    pthread_mutex_unlock(&g_lock);
    app_reset(); /* a new application: nothing to reopen */

    struct config cfg;
    rv = read_config(&cfg, have_inherited ? &inherited : NULL);
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
        explain("C_Initialize: socket(): %s", strerror(errno));
        return CKR_FUNCTION_FAILED;
    }
    c->state = SLOT_CONNECTING;
    c->fd = fd;
    c->gen = g_gen + 1;
    pthread_mutex_unlock(&g_lock);

    CK_RV hello = CKR_OK;
    int known = 1, err = 0;
    char why[200];
    int rc = connect_and_hello(fd, &cfg, pid, &hello, &known, &err, why, sizeof why);

    pthread_mutex_lock(&g_lock);
    if (rc != HELLO_OK || hello != CKR_OK) {
        close(fd);
        c->fd = -1;
        c->state = SLOT_EMPTY;
        pthread_cond_broadcast(&g_cond);
        pthread_mutex_unlock(&g_lock);
        pthread_mutex_unlock(&g_init_lock);
        if (rc != HELLO_OK) {
            explain("C_Initialize: cannot reach the agent at %s (%s): %s", cfg.addr.sun_path, cfg.source,
                    connect_advice(err));
            /* no permission: configuration, a retry cannot help; otherwise the agent may start later */
            return err == EACCES || err == EPERM ? CKR_GENERAL_ERROR : CKR_FUNCTION_FAILED;
        }
        explain("C_Initialize: the agent at %s refused the application (0x%lx)%s%s", cfg.addr.sun_path,
                (unsigned long)hello, why[0] ? ": " : "", why);
        return hello;
    }
    g_cfg = cfg;
    g_have_cfg = 1;
    g_gen++;
    c->gen = g_gen;
    c->agent = g_agent;
    c->next_id = 1;
    c->state = SLOT_IDLE;
    g_pid = pid;
    g_outage = 0;
    g_reconnect_until = 0;
    g_initialized = 1;
    pthread_mutex_unlock(&g_lock);
    pthread_mutex_unlock(&g_init_lock);
    dbg("initialized: agent at %s (%s)", cfg.addr.sun_path, cfg.source);
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
    for (int i = 0; i < POOL_SIZE && !c; i++)
        if (g_pool[i].state == SLOT_IDLE && g_pool[i].gen == g_gen && g_pool[i].agent == g_agent)
            c = &g_pool[i];
    if (c)
        c->state = SLOT_BUSY;
    close_idle_locked();
    g_initialized = 0;
    g_outage = 0;
    g_reconnect_until = 0;
    g_gen++; /* connections still in use by other threads close when released */
    int timeout_ms = g_cfg.timeout_ms;
    memset(g_cfg.app_id, 0, sizeof g_cfg.app_id);
    pthread_cond_broadcast(&g_cond);
    pthread_mutex_unlock(&g_lock);
    app_reset();

    if (c && idle_alive(c->fd)) {
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
    }
    if (c)
        conn_release(c, 0); /* closes it: its generation is over */
    pthread_mutex_unlock(&g_init_lock);
    return CKR_OK;
}
