#include "explain.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

static pthread_mutex_t g_explain_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_last_explained[512];

void explain(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&g_explain_lock);
    int repeat = strcmp(msg, g_last_explained) == 0;
    if (!repeat)
        snprintf(g_last_explained, sizeof g_last_explained, "%s", msg);
    pthread_mutex_unlock(&g_explain_lock);
    if (repeat)
        return;
    fprintf(stderr, "strongroom-pkcs11[%ld]: %s\n", (long)getpid(), msg);
    syslog(LOG_USER | LOG_WARNING, "strongroom-pkcs11: %s", msg);
}

void explain_atfork_child(void)
{
    pthread_mutex_init(&g_explain_lock, NULL);
}
