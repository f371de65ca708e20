/*
 * The connection pool and one request/reply exchange with the agent
 * (docs/agent-protocol.md), the library state (initialized, pid, app_id), the
 * configuration (where the agent is), reopening the application in an agent
 * that restarted, and explaining failures to the application's operator.
 */
#ifndef STRONGROOM_RPC_H
#define STRONGROOM_RPC_H

#include <p11-kit/pkcs11.h>

#include "mp.h"

/* How a failure of the transport is reported, per function (the spec lists
 * CKR_DEVICE_* only for functions that use a token or a session). */
typedef enum {
    RPC_TOKEN = 0,  /* fail: CKR_DEVICE_ERROR, agent gone: CKR_DEVICE_REMOVED */
    RPC_SLOTINFO,   /* fail: CKR_DEVICE_ERROR, agent gone: CKR_DEVICE_ERROR */
    RPC_NOTOKEN     /* fail: CKR_FUNCTION_FAILED, agent gone: CKR_FUNCTION_FAILED (C_GetSlotList) */
} rpc_kind;

struct conn;

typedef struct {
    const char *fn;
    rpc_kind kind;
    mp_enc enc;
    struct conn *conn;
    uint8_t *reply;
    mp_doc doc;
    uint32_t outputs; /* node index of the reply's outputs array */
    uint32_t nout;    /* its length */
    int malformed;    /* rpc_end found the reply's outputs malformed (the agent answered, wrongly) */
} rpc_t;

/* Library state checks for functions answered locally. */
CK_RV state_check(void);

/* Start a request: checks the state (CKR_CRYPTOKI_NOT_INITIALIZED) and writes
 * the envelope up to the args array header of nargs elements. On error nothing
 * needs freeing. */
CK_RV rpc_begin(rpc_t *r, const char *fn, uint32_t nargs, rpc_kind kind);
/* Abandon a request before sending (local argument error). */
void rpc_abort(rpc_t *r);
/* Send the request and read the reply. Returns CKR_OK and the agent's rv in
 * *agent_rv when a well-formed envelope came back (r->outputs set; the caller
 * must call rpc_end), or the module's error (the rpc is already ended). */
CK_RV rpc_call(rpc_t *r, CK_RV *agent_rv);
/* Finish: release the connection; malformed != 0 drops it (the reply did not
 * match the protocol). Returns the code the function must return for a
 * malformed reply (CKR_DEVICE_ERROR or CKR_FUNCTION_FAILED), or CKR_OK. */
CK_RV rpc_end(rpc_t *r, int malformed);

/* Convenience: send, then end; for functions whose outputs are [] or ignored. */
CK_RV rpc_simple(rpc_t *r);

/* The error code a local encoding failure maps to (CKR_HOST_MEMORY / CKR_DATA_LEN_RANGE). */
CK_RV rpc_enc_error(const rpc_t *r);

/* The reason an agent gave with a refusal (the reply's one str output), or NULL; valid until rpc_end. */
const char *rpc_reason(const rpc_t *r, char *buf, size_t size);

/* C_Initialize / C_Finalize. */
CK_RV lib_initialize(CK_VOID_PTR init_args);
CK_RV lib_finalize(CK_VOID_PTR reserved);

/* Debug log to stderr when STRONGROOM_PKCS11_DEBUG is set. */
void dbg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* explain(): a failure told to whoever runs the application (explain.h). */
#include "explain.h"

#endif
