/* msgpack subset: see mp.h. */
#include "mp.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ---- encoder ----------------------------------------------------------------- */

/* The encoder never holds more than one frame plus its 4-byte header. */
#define MP_ENC_LIMIT ((size_t)MP_MAX_FRAME + 4u)

void mp_enc_init(mp_enc *e)
{
    e->buf = NULL;
    e->len = 0;
    e->cap = 0;
    e->err = MP_ENC_OK;
    e->secret = 0;
}

static void wipe(void *p, size_t n)
{
    volatile uint8_t *v = p;
    while (n--)
        *v++ = 0;
}

void mp_enc_free(mp_enc *e)
{
    if (e->secret && e->buf)
        wipe(e->buf, e->cap);
    free(e->buf);
    mp_enc_init(e);
}

static int reserve(mp_enc *e, size_t n)
{
    if (e->err)
        return -1;
    if (n > MP_ENC_LIMIT || e->len > MP_ENC_LIMIT - n) {
        e->err = MP_ENC_TOO_LARGE;
        return -1;
    }
    size_t need = e->len + n;
    if (need <= e->cap)
        return 0;
    size_t cap = e->cap ? e->cap : 256;
    while (cap < need)
        cap *= 2;
    if (cap > MP_ENC_LIMIT)
        cap = MP_ENC_LIMIT;
    uint8_t *p;
    if (e->secret) {
        /* a request holding a PIN leaves no copy behind in memory it gives back */
        p = malloc(cap);
        if (p && e->buf) {
            memcpy(p, e->buf, e->len);
            wipe(e->buf, e->cap);
            free(e->buf);
        }
    } else {
        p = realloc(e->buf, cap);
    }
    if (!p) {
        e->err = MP_ENC_NOMEM;
        return -1;
    }
    e->buf = p;
    e->cap = cap;
    return 0;
}

void mp_put_raw(mp_enc *e, const void *p, size_t n)
{
    if (reserve(e, n))
        return;
    if (n)
        memcpy(e->buf + e->len, p, n);
    e->len += n;
}

static void put_byte(mp_enc *e, uint8_t b) { mp_put_raw(e, &b, 1); }

static void put_be(mp_enc *e, uint8_t tag, uint64_t v, int bytes)
{
    uint8_t b[9];
    b[0] = tag;
    for (int i = 0; i < bytes; i++)
        b[1 + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    mp_put_raw(e, b, (size_t)bytes + 1);
}

void mp_put_nil(mp_enc *e) { put_byte(e, 0xc0); }
void mp_put_bool(mp_enc *e, int v) { put_byte(e, v ? 0xc3 : 0xc2); }
void mp_put_neg1(mp_enc *e) { put_byte(e, 0xff); }

void mp_put_uint(mp_enc *e, uint64_t v)
{
    if (v < 0x80)
        put_byte(e, (uint8_t)v);
    else if (v <= 0xff)
        put_be(e, 0xcc, v, 1);
    else if (v <= 0xffff)
        put_be(e, 0xcd, v, 2);
    else if (v <= 0xffffffffu)
        put_be(e, 0xce, v, 4);
    else
        put_be(e, 0xcf, v, 8);
}

void mp_put_bin(mp_enc *e, const void *p, size_t n)
{
    if (n > 0xffffffffu) {
        if (!e->err)
            e->err = MP_ENC_TOO_LARGE;
        return;
    }
    if (n <= 0xff)
        put_be(e, 0xc4, n, 1);
    else if (n <= 0xffff)
        put_be(e, 0xc5, n, 2);
    else
        put_be(e, 0xc6, n, 4);
    mp_put_raw(e, p, n);
}

void mp_put_str(mp_enc *e, const char *s)
{
    size_t n = strlen(s);
    if (n < 32)
        put_byte(e, (uint8_t)(0xa0 | n));
    else if (n <= 0xff)
        put_be(e, 0xd9, n, 1);
    else if (n <= 0xffff)
        put_be(e, 0xda, n, 2);
    else if (n <= 0xffffffffu)
        put_be(e, 0xdb, n, 4);
    else {
        if (!e->err)
            e->err = MP_ENC_TOO_LARGE;
        return;
    }
    mp_put_raw(e, s, n);
}

void mp_put_array(mp_enc *e, uint32_t n)
{
    if (n < 16)
        put_byte(e, (uint8_t)(0x90 | n));
    else if (n <= 0xffff)
        put_be(e, 0xdc, n, 2);
    else
        put_be(e, 0xdd, n, 4);
}

void mp_put_map(mp_enc *e, uint32_t n)
{
    if (n < 16)
        put_byte(e, (uint8_t)(0x80 | n));
    else if (n <= 0xffff)
        put_be(e, 0xde, n, 2);
    else
        put_be(e, 0xdf, n, 4);
}

/* ---- decoder ----------------------------------------------------------------- */

typedef struct {
    const uint8_t *buf;
    size_t len;
    size_t pos;
    mp_doc *doc;
    int err;
} dec;

static size_t remaining(const dec *d) { return d->len - d->pos; }

static int read_be(dec *d, int bytes, uint64_t *out)
{
    if (remaining(d) < (size_t)bytes)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | d->buf[d->pos + (size_t)i];
    d->pos += (size_t)bytes;
    *out = v;
    return 0;
}

static uint32_t new_node(dec *d)
{
    mp_doc *doc = d->doc;
    if (doc->count >= MP_MAX_NODES) {
        d->err = MP_DEC_MALFORMED;
        return MP_NONE;
    }
    if (doc->count == doc->cap) {
        uint32_t cap = doc->cap ? doc->cap * 2 : 32;
        if (cap > MP_MAX_NODES)
            cap = MP_MAX_NODES;
        mp_node *p = realloc(doc->nodes, (size_t)cap * sizeof *p);
        if (!p) {
            d->err = MP_DEC_NOMEM;
            return MP_NONE;
        }
        doc->nodes = p;
        doc->cap = cap;
    }
    uint32_t i = doc->count++;
    memset(&doc->nodes[i], 0, sizeof doc->nodes[i]);
    return i;
}

static int parse(dec *d, int depth);

/* A bin or str of n bytes at the current position. */
static int take_bytes(dec *d, uint32_t idx, uint8_t type, uint64_t n)
{
    if (n > remaining(d))
        return -1;
    d->doc->nodes[idx].type = type;
    d->doc->nodes[idx].n = (uint32_t)n;
    d->doc->nodes[idx].v.p = d->buf + d->pos;
    d->pos += (size_t)n;
    return 0;
}

static int take_container(dec *d, uint32_t idx, uint8_t type, uint64_t n, int depth)
{
    /* Every element takes at least one byte: refuse impossible counts before looping. */
    uint64_t elems = type == MP_MAP ? n * 2 : n;
    if (elems > remaining(d) || depth >= MP_MAX_DEPTH)
        return -1;
    d->doc->nodes[idx].type = type;
    d->doc->nodes[idx].n = (uint32_t)n;
    for (uint64_t i = 0; i < elems; i++) {
        uint32_t child = d->doc->count;
        if (parse(d, depth + 1))
            return -1;
        if (type == MP_MAP && (i % 2) == 0 && d->doc->nodes[child].type != MP_STR)
            return -1; /* map keys are str only */
    }
    return 0;
}

static int take_int(dec *d, uint32_t idx, int bytes)
{
    uint64_t raw;
    if (read_be(d, bytes, &raw))
        return -1;
    int64_t v;
    switch (bytes) {
    case 1: v = (int8_t)(uint8_t)raw; break;
    case 2: v = (int16_t)(uint16_t)raw; break;
    case 4: v = (int32_t)(uint32_t)raw; break;
    default: v = (int64_t)raw; break;
    }
    if (v >= 0) {
        d->doc->nodes[idx].type = MP_UINT;
        d->doc->nodes[idx].v.u = (uint64_t)v;
        return 0;
    }
    if (v == -1) {
        d->doc->nodes[idx].type = MP_NEG1;
        return 0;
    }
    return -1;
}

static int parse(dec *d, int depth)
{
    if (remaining(d) < 1)
        return -1;
    uint32_t idx = new_node(d);
    if (idx == MP_NONE)
        return -1;
    uint8_t b = d->buf[d->pos++];
    uint64_t n;
    int rc;
    mp_node *node = &d->doc->nodes[idx];

    if (b <= 0x7f) {
        node->type = MP_UINT;
        node->v.u = b;
        rc = 0;
    } else if (b >= 0xe0) {
        if (b != 0xff)
            return -1; /* the only negative number in the protocol is -1 */
        node->type = MP_NEG1;
        rc = 0;
    } else if ((b & 0xf0) == 0x80) {
        rc = take_container(d, idx, MP_MAP, b & 0x0f, depth);
    } else if ((b & 0xf0) == 0x90) {
        rc = take_container(d, idx, MP_ARRAY, b & 0x0f, depth);
    } else if ((b & 0xe0) == 0xa0) {
        rc = take_bytes(d, idx, MP_STR, b & 0x1f);
    } else {
        switch (b) {
        case 0xc0: node->type = MP_NIL; rc = 0; break;
        case 0xc2: node->type = MP_BOOL; node->v.u = 0; rc = 0; break;
        case 0xc3: node->type = MP_BOOL; node->v.u = 1; rc = 0; break;
        case 0xc4: rc = read_be(d, 1, &n) || take_bytes(d, idx, MP_BIN, n); break;
        case 0xc5: rc = read_be(d, 2, &n) || take_bytes(d, idx, MP_BIN, n); break;
        case 0xc6: rc = read_be(d, 4, &n) || take_bytes(d, idx, MP_BIN, n); break;
        case 0xcc: node->type = MP_UINT; rc = read_be(d, 1, &node->v.u); break;
        case 0xcd: node->type = MP_UINT; rc = read_be(d, 2, &node->v.u); break;
        case 0xce: node->type = MP_UINT; rc = read_be(d, 4, &node->v.u); break;
        case 0xcf: node->type = MP_UINT; rc = read_be(d, 8, &node->v.u); break;
        case 0xd0: rc = take_int(d, idx, 1); break;
        case 0xd1: rc = take_int(d, idx, 2); break;
        case 0xd2: rc = take_int(d, idx, 4); break;
        case 0xd3: rc = take_int(d, idx, 8); break;
        case 0xd9: rc = read_be(d, 1, &n) || take_bytes(d, idx, MP_STR, n); break;
        case 0xda: rc = read_be(d, 2, &n) || take_bytes(d, idx, MP_STR, n); break;
        case 0xdb: rc = read_be(d, 4, &n) || take_bytes(d, idx, MP_STR, n); break;
        case 0xdc: rc = read_be(d, 2, &n) || take_container(d, idx, MP_ARRAY, n, depth); break;
        case 0xdd: rc = read_be(d, 4, &n) || take_container(d, idx, MP_ARRAY, n, depth); break;
        case 0xde: rc = read_be(d, 2, &n) || take_container(d, idx, MP_MAP, n, depth); break;
        case 0xdf: rc = read_be(d, 4, &n) || take_container(d, idx, MP_MAP, n, depth); break;
        default: rc = -1; break; /* floats, ext, 0xc1 */
        }
    }
    if (rc)
        return -1;
    /* nodes may have moved (realloc): index again */
    d->doc->nodes[idx].end = d->doc->count;
    return 0;
}

int mp_decode(const uint8_t *buf, size_t len, mp_doc *doc)
{
    doc->nodes = NULL;
    doc->count = 0;
    doc->cap = 0;
    dec d = {buf, len, 0, doc, MP_DEC_OK};
    if (len == 0 || parse(&d, 0) || d.pos != len) {
        int err = d.err == MP_DEC_NOMEM ? MP_DEC_NOMEM : MP_DEC_MALFORMED;
        mp_doc_free(doc);
        return err;
    }
    return MP_DEC_OK;
}

void mp_doc_free(mp_doc *doc)
{
    free(doc->nodes);
    doc->nodes = NULL;
    doc->count = 0;
    doc->cap = 0;
}

uint32_t mp_elem(const mp_doc *d, uint32_t arr, uint32_t i)
{
    if (arr == MP_NONE || arr >= d->count || d->nodes[arr].type != MP_ARRAY || i >= d->nodes[arr].n)
        return MP_NONE;
    uint32_t c = arr + 1;
    while (i--)
        c = d->nodes[c].end;
    return c;
}

uint32_t mp_map_get(const mp_doc *d, uint32_t map, const char *key)
{
    if (map == MP_NONE || map >= d->count || d->nodes[map].type != MP_MAP)
        return MP_NONE;
    size_t klen = strlen(key);
    uint32_t c = map + 1;
    for (uint32_t i = 0; i < d->nodes[map].n; i++) {
        const mp_node *k = &d->nodes[c];
        uint32_t val = k->end;
        if (k->type == MP_STR && k->n == klen && memcmp(k->v.p, key, klen) == 0)
            return val;
        c = d->nodes[val].end;
    }
    return MP_NONE;
}

int mp_is(const mp_doc *d, uint32_t i, int type)
{
    return i != MP_NONE && i < d->count && d->nodes[i].type == type;
}

int mp_get_uint(const mp_doc *d, uint32_t i, uint64_t *out)
{
    if (!mp_is(d, i, MP_UINT))
        return -1;
    *out = d->nodes[i].v.u;
    return 0;
}

int mp_get_ulong(const mp_doc *d, uint32_t i, unsigned long *out)
{
    uint64_t v;
    if (mp_get_uint(d, i, &v) || v > ULONG_MAX)
        return -1;
    *out = (unsigned long)v;
    return 0;
}

int mp_get_bin(const mp_doc *d, uint32_t i, const uint8_t **p, uint32_t *n)
{
    if (!mp_is(d, i, MP_BIN))
        return -1;
    *p = d->nodes[i].v.p;
    *n = d->nodes[i].n;
    return 0;
}
