/* The application's sessions and login, remembered for X_Resume (see app.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "app.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "explain.h"

/* As many sessions as the agent gives one application. */
#define MAX_SESSIONS 1024
/* Longest PIN kept ("username:password"); longer ones are not kept (no transparent re-login). */
#define MAX_PIN 1024

struct session {
    CK_SESSION_HANDLE handle;
    CK_SLOT_ID slot;
    CK_FLAGS flags;
};

static pthread_mutex_t a_lock = PTHREAD_MUTEX_INITIALIZER;
static struct session a_sessions[MAX_SESSIONS];
static size_t a_count;
static long a_login_type = -1;   /* CKU_USER / CKU_SO, or -1 */

/* The locked page: [len: size_t][pin bytes]. */
static unsigned char *a_page;
static size_t a_page_size;
static int a_page_failed;

static void atfork_prepare(void) { pthread_mutex_lock(&a_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&a_lock); }

static void atfork_child(void)
{
    /* The page is zero in the child (MADV_WIPEONFORK, or wiped here where the kernel lacks it); the child
     * is another application: it logs in for itself. */
    if (a_page)
        memset(a_page, 0, a_page_size);
    a_login_type = -1;
    a_count = 0;
    pthread_mutex_init(&a_lock, NULL);
}

static pthread_once_t a_once = PTHREAD_ONCE_INIT;

static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

/* Wipe in a way the compiler cannot drop. */
static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

static int page_ready(void)
{
    if (a_page)
        return 1;
    if (a_page_failed)
        return 0;
    long size = sysconf(_SC_PAGESIZE);
    a_page_size = size > 0 && (size_t)size >= sizeof(size_t) + MAX_PIN ? (size_t)size : 4096;
    while (a_page_size < sizeof(size_t) + MAX_PIN)
        a_page_size *= 2;
    void *p = mmap(NULL, a_page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        a_page_failed = 1;
        explain("cannot allocate memory for the PIN: after an agent restart the application must log in again");
        return 0;
    }
    if (mlock(p, a_page_size) != 0) {
        munmap(p, a_page_size);
        a_page_failed = 1;
        explain("cannot lock memory for the PIN (mlock; RLIMIT_MEMLOCK?): it is not kept, so after an agent "
                "restart the application must log in again");
        return 0;
    }
#ifdef MADV_DONTDUMP
    madvise(p, a_page_size, MADV_DONTDUMP);
#endif
#ifdef MADV_WIPEONFORK
    madvise(p, a_page_size, MADV_WIPEONFORK); /* where the kernel lacks it, atfork_child wipes */
#endif
    a_page = p;
    return 1;
}

static void pin_forget_locked(void)
{
    if (a_page)
        wipe(a_page, a_page_size);
}

static void pin_keep_locked(const unsigned char *pin, CK_ULONG len)
{
    pin_forget_locked();
    if (!pin || len == 0 || len > MAX_PIN || !page_ready())
        return;
    size_t n = (size_t)len;
    memcpy(a_page, &n, sizeof n);
    memcpy(a_page + sizeof n, pin, n);
}

static size_t pin_len_locked(void)
{
    size_t n = 0;
    if (a_page)
        memcpy(&n, a_page, sizeof n);
    return n <= MAX_PIN ? n : 0;
}

void app_reset(void)
{
    pthread_once(&a_once, register_atfork);
    pthread_mutex_lock(&a_lock);
    pin_forget_locked();
    a_login_type = -1;
    a_count = 0;
    pthread_mutex_unlock(&a_lock);
}

void app_session_opened(CK_SESSION_HANDLE handle, CK_SLOT_ID slot, CK_FLAGS flags)
{
    pthread_mutex_lock(&a_lock);
    if (a_count < MAX_SESSIONS)
        a_sessions[a_count++] = (struct session){handle, slot, flags};
    pthread_mutex_unlock(&a_lock);
}

static void logged_out_locked(void)
{
    a_login_type = -1;
    pin_forget_locked();
}

void app_session_closed(CK_SESSION_HANDLE handle)
{
    pthread_mutex_lock(&a_lock);
    for (size_t i = 0; i < a_count; i++) {
        if (a_sessions[i].handle == handle) {
            a_sessions[i] = a_sessions[--a_count];
            break;
        }
    }
    if (a_count == 0)
        logged_out_locked();
    pthread_mutex_unlock(&a_lock);
}

void app_sessions_closed(CK_SLOT_ID slot)
{
    pthread_mutex_lock(&a_lock);
    for (size_t i = 0; i < a_count;) {
        if (a_sessions[i].slot == slot)
            a_sessions[i] = a_sessions[--a_count];
        else
            i++;
    }
    logged_out_locked(); /* C_CloseAllSessions ends the login (the agent logs out) */
    pthread_mutex_unlock(&a_lock);
}

void app_logged_in(CK_USER_TYPE type, const unsigned char *pin, CK_ULONG len)
{
    if (type != CKU_USER && type != CKU_SO)
        return;
    pthread_mutex_lock(&a_lock);
    a_login_type = (long)type;
    pin_keep_locked(pin, len);
    pthread_mutex_unlock(&a_lock);
}

void app_logged_out(void)
{
    pthread_mutex_lock(&a_lock);
    logged_out_locked();
    pthread_mutex_unlock(&a_lock);
}

void app_pin_changed(const unsigned char *new_pin, CK_ULONG len)
{
    /* As the agent reads C_SetPIN's new PIN: "password", or "username:password" naming the same user. */
    pthread_mutex_lock(&a_lock);
    size_t old = pin_len_locked();
    if (a_login_type < 0 || old == 0 || !new_pin || len == 0 || len > MAX_PIN) {
        pthread_mutex_unlock(&a_lock);
        return;
    }
    const unsigned char *pin = a_page + sizeof(size_t);
    size_t user = 0;
    while (user < old && pin[user] != ':')
        user++;
    unsigned char buf[2 * MAX_PIN + 1];
    size_t n;
    const unsigned char *colon = memchr(new_pin, ':', len);
    if (colon && (size_t)(colon - new_pin) == user && strncasecmp((const char *)new_pin, (const char *)pin, user) == 0) {
        memcpy(buf, new_pin, len); /* username:password of the same user */
        n = len;
    } else {
        memcpy(buf, pin, user);
        buf[user] = ':';
        memcpy(buf + user + 1, new_pin, len);
        n = user + 1 + len;
    }
    pin_keep_locked(buf, n);
    wipe(buf, sizeof buf);
    pthread_mutex_unlock(&a_lock);
}

int app_has_state(void)
{
    pthread_mutex_lock(&a_lock);
    int has = a_count > 0 || a_login_type >= 0;
    pthread_mutex_unlock(&a_lock);
    return has;
}

void app_encode_resume(mp_enc *e)
{
    pthread_mutex_lock(&a_lock);
    mp_put_array(e, (uint32_t)a_count);
    for (size_t i = 0; i < a_count; i++) {
        mp_put_array(e, 3);
        mp_put_uint(e, a_sessions[i].handle);
        mp_put_uint(e, a_sessions[i].slot);
        mp_put_uint(e, a_sessions[i].flags);
    }
    size_t n = pin_len_locked();
    if (a_login_type >= 0 && n) {
        mp_put_array(e, 2);
        mp_put_uint(e, (uint64_t)a_login_type);
        mp_put_bin(e, a_page + sizeof(size_t), n);
    } else {
        mp_put_nil(e);
    }
    pthread_mutex_unlock(&a_lock);
}
