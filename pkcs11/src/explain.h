/*
 * Telling whoever runs the application why something failed, without a debug switch. Its own unit so that
 * the transport (rpc.c) and what the module remembers of its application (app.c) both use it without using
 * each other both ways.
 */
#ifndef STRONGROOM_EXPLAIN_H
#define STRONGROOM_EXPLAIN_H

/* One line on stderr and in syslog, each distinct message once in a row (an application retrying in a loop
 * does not flood). */
void explain(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* In a forked child (rpc.c's atfork handler): the lock may be held by a parent thread that is not here. */
void explain_atfork_child(void);

#endif
