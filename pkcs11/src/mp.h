/*
 * A small msgpack encoder and decoder for the subset of the agent protocol
 * (docs/agent-protocol.md): nil, bool, unsigned integers up to 64 bits, the
 * negative integer -1, bin, str, array and map (str keys only).
 *
 * The decoder turns one frame into a flat tree of nodes in pre-order; every
 * length read from the frame is checked against the bytes that remain before
 * it is used, nesting is limited, and anything outside the subset (floats,
 * ext, other negative numbers, non-str map keys, trailing bytes) is refused.
 */
#ifndef STRONGROOM_MP_H
#define STRONGROOM_MP_H

#include <stddef.h>
#include <stdint.h>

/* Largest request frame (header excluded): a single part of MP_MAX_BYTES and the rest of the request. */
#define MP_MAX_FRAME (9u << 20)
/* Largest reply frame: a multi-part AES-GCM decryption hands over all its plaintext in its final
 * (the node holds up to 16 MiB until the tag verifies; a node's reply to the agent is at most 8 MiB). */
#define MP_MAX_REPLY (12u << 20)
/* Largest single byte string the module sends (single-part data; updates of any size go in parts).
 * 8 MiB: a node's reply to the agent is at most 8 MiB, so an AES-GCM decryption in one part can hand
 * back no more; test suites encrypt 4 MiB in one C_Encrypt (python-pkcs11's). */
#define MP_MAX_BYTES (8u << 20)
/* The largest part of an update the module sends at once (what a node takes in one request). */
#define MP_PART (1u << 20)
/* Deepest nesting accepted in a reply (replies need 5 at most). */
#define MP_MAX_DEPTH 12
/* Most nodes accepted in one reply (a bound on memory: 24 bytes each). */
#define MP_MAX_NODES (1u << 20)

/* ---- encoder ----------------------------------------------------------------- */

enum { MP_ENC_OK = 0, MP_ENC_NOMEM = 1, MP_ENC_TOO_LARGE = 2 };

typedef struct {
    uint8_t *buf;
    size_t len;
    size_t cap;
    int err; /* sticky: MP_ENC_* */
    int secret; /* holds a PIN: wiped when grown or freed */
} mp_enc;

void mp_enc_init(mp_enc *e);
void mp_enc_free(mp_enc *e);
void mp_put_raw(mp_enc *e, const void *p, size_t n);
void mp_put_nil(mp_enc *e);
void mp_put_bool(mp_enc *e, int v);
void mp_put_uint(mp_enc *e, uint64_t v);
void mp_put_neg1(mp_enc *e);
void mp_put_bin(mp_enc *e, const void *p, size_t n);
void mp_put_str(mp_enc *e, const char *s);
void mp_put_array(mp_enc *e, uint32_t n);
void mp_put_map(mp_enc *e, uint32_t n);

/* ---- decoder ----------------------------------------------------------------- */

enum {
    MP_NIL = 1,
    MP_BOOL,
    MP_UINT,
    MP_NEG1,
    MP_BIN,
    MP_STR,
    MP_ARRAY,
    MP_MAP
};

typedef struct {
    uint8_t type;
    uint32_t n;   /* bytes of a bin/str, elements of an array, pairs of a map */
    uint32_t end; /* index of the node after this node's subtree */
    union {
        uint64_t u; /* UINT value, BOOL 0/1 */
        const uint8_t *p; /* BIN/STR bytes (inside the frame) */
    } v;
} mp_node;

typedef struct {
    mp_node *nodes;
    uint32_t count;
    uint32_t cap;
} mp_doc;

#define MP_NONE UINT32_MAX

enum { MP_DEC_OK = 0, MP_DEC_MALFORMED = -1, MP_DEC_NOMEM = -2 };

/* Decode exactly one object spanning buf[0..len). The doc points into buf. */
int mp_decode(const uint8_t *buf, size_t len, mp_doc *doc);
void mp_doc_free(mp_doc *doc);

/* Navigation (indexes into doc->nodes; MP_NONE when absent or of another type). */
static inline const mp_node *mp_at(const mp_doc *d, uint32_t i) { return &d->nodes[i]; }
/* The i-th element of an array node, or MP_NONE. */
uint32_t mp_elem(const mp_doc *d, uint32_t arr, uint32_t i);
/* The value for key in a map node, or MP_NONE. */
uint32_t mp_map_get(const mp_doc *d, uint32_t map, const char *key);
/* Checked accessors: return 0 on success, -1 when the node is MP_NONE or of another type. */
int mp_get_uint(const mp_doc *d, uint32_t i, uint64_t *out);
int mp_get_ulong(const mp_doc *d, uint32_t i, unsigned long *out);
int mp_get_bin(const mp_doc *d, uint32_t i, const uint8_t **p, uint32_t *n);
int mp_is(const mp_doc *d, uint32_t i, int type);

#endif
