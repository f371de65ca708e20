/* The steps of a forwarded PKCS#11 call, shared by p11.c (v2.40) and p11v3.c (3.x): each function
 * begins a request, checks and encodes its arguments, sends it and decodes the agent's answer.
 * They return from the calling function on failure, so every entry point reads as a straight line. */
#ifndef STRONGROOM_FORWARD_H
#define STRONGROOM_FORWARD_H

#include "rpc.h"

#define EXPORT __attribute__((visibility("default")))

/* Start a forwarded call; returns from the function on a state error. */
#define BEGIN(fn, nargs, kind)                                                                     \
    rpc_t r;                                                                                       \
    CK_RV rv = rpc_begin(&r, fn, nargs, kind);                                                     \
    if (rv != CKR_OK)                                                                              \
        return rv;

/* A local argument check: abandon the request. */
#define REQUIRE(cond, code)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            rpc_abort(&r);                                                                         \
            return (code);                                                                         \
        }                                                                                          \
    } while (0)

/* An encoder step that may fail with a PKCS#11 code. */
#define ARG(expr)                                                                                  \
    do {                                                                                           \
        CK_RV arg_rv_ = (expr);                                                                    \
        if (arg_rv_ != CKR_OK) {                                                                   \
            rpc_abort(&r);                                                                         \
            return arg_rv_;                                                                        \
        }                                                                                          \
    } while (0)

/* Send; on a module-side failure return it. Leaves the agent's rv in arv. */
#define CALL()                                                                                     \
    CK_RV arv;                                                                                     \
    rv = rpc_call(&r, &arv);                                                                       \
    if (rv != CKR_OK)                                                                              \
        return rv;

#endif
