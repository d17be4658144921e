/* mp.c: encode and decode the msgpack subset of PROTOCOL.md frames, with bounds checks. */
#include "mp.h"

#include <stdlib.h>
#include <string.h>

#define MP_MAX_DEPTH 8

void mp_init(struct mp_buf *b)
{
    b->cap = 256;
    b->p = malloc(b->cap);
    b->len = 4;
    b->oom = b->p == NULL;
}

void mp_free(struct mp_buf *b)
{
    free(b->p);
    b->p = NULL;
}

static void put(struct mp_buf *b, const void *src, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap;
        while (b->len + n > cap)
            cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (np == NULL) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void put_be(struct mp_buf *b, uint8_t tag, uint64_t v, int bytes)
{
    uint8_t tmp[9];
    tmp[0] = tag;
    for (int k = 0; k < bytes; k++)
        tmp[1 + k] = (uint8_t)(v >> (8 * (bytes - 1 - k)));
    put(b, tmp, 1 + (size_t)bytes);
}

void mp_map(struct mp_buf *b, uint32_t pairs)
{
    if (pairs < 16) {
        uint8_t t = (uint8_t)(0x80 | pairs);
        put(b, &t, 1);
    } else if (pairs < 65536) {
        put_be(b, 0xde, pairs, 2);
    } else {
        put_be(b, 0xdf, pairs, 4);
    }
}

void mp_arr(struct mp_buf *b, uint32_t n)
{
    if (n < 16) {
        uint8_t t = (uint8_t)(0x90 | n);
        put(b, &t, 1);
    } else if (n < 65536) {
        put_be(b, 0xdc, n, 2);
    } else {
        put_be(b, 0xdd, n, 4);
    }
}

void mp_str(struct mp_buf *b, const char *s)
{
    size_t n = strlen(s);
    if (n < 32) {
        uint8_t t = (uint8_t)(0xa0 | n);
        put(b, &t, 1);
    } else if (n < 256) {
        put_be(b, 0xd9, n, 1);
    } else {
        put_be(b, 0xda, n, 2);
    }
    put(b, s, n);
}

void mp_int(struct mp_buf *b, int64_t v)
{
    if (v >= 0 && v < 128) {
        uint8_t t = (uint8_t)v;
        put(b, &t, 1);
    } else if (v < 0 && v >= -32) {
        uint8_t t = (uint8_t)(int8_t)v;
        put(b, &t, 1);
    } else if (v >= 0) {
        put_be(b, 0xcf, (uint64_t)v, 8);
    } else {
        put_be(b, 0xd3, (uint64_t)v, 8);
    }
}

void mp_bin(struct mp_buf *b, const void *p, uint32_t n)
{
    if (n < 256)
        put_be(b, 0xc4, n, 1);
    else if (n < 65536)
        put_be(b, 0xc5, n, 2);
    else
        put_be(b, 0xc6, n, 4);
    put(b, p, n);
}

void mp_bool(struct mp_buf *b, int v)
{
    uint8_t t = v ? 0xc3 : 0xc2;
    put(b, &t, 1);
}

void mp_nil(struct mp_buf *b)
{
    uint8_t t = 0xc0;
    put(b, &t, 1);
}

int mp_finish(struct mp_buf *b)
{
    if (b->oom)
        return -1;
    uint32_t body = (uint32_t)(b->len - 4);
    b->p[0] = (uint8_t)(body >> 24);
    b->p[1] = (uint8_t)(body >> 16);
    b->p[2] = (uint8_t)(body >> 8);
    b->p[3] = (uint8_t)body;
    return 0;
}

/* ------------------------------------------------------------------ decoding */

struct rd {
    const uint8_t *p, *end;
};

static int need(struct rd *r, size_t n)
{
    return (size_t)(r->end - r->p) >= n ? 0 : -1;
}

static uint64_t be(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int k = 0; k < bytes; k++)
        v = (v << 8) | p[k];
    return v;
}

static void obj_free(struct mp_obj *o)
{
    if (o->type == MP_ARR || o->type == MP_MAP) {
        uint32_t count = o->type == MP_MAP ? 2 * o->n : o->n;
        if (o->items != NULL)
            for (uint32_t k = 0; k < count; k++)
                obj_free(&o->items[k]);
        free(o->items);
        o->items = NULL;
    }
}

static int dec(struct rd *r, struct mp_obj *o, int depth);

static int dec_items(struct rd *r, struct mp_obj *o, uint32_t count, int depth)
{
    if (depth >= MP_MAX_DEPTH || (size_t)(r->end - r->p) < count)
        return -1; /* every item takes at least one byte */
    o->items = calloc(count ? count : 1, sizeof(*o->items));
    if (o->items == NULL)
        return -1;
    for (uint32_t k = 0; k < count; k++)
        if (dec(r, &o->items[k], depth + 1) < 0)
            return -1;
    return 0;
}

static int dec_raw(struct rd *r, struct mp_obj *o, enum mp_type t, int lenbytes, uint32_t n)
{
    if (lenbytes) {
        if (need(r, (size_t)lenbytes) < 0)
            return -1;
        n = (uint32_t)be(r->p, lenbytes);
        r->p += lenbytes;
    }
    if (need(r, n) < 0)
        return -1;
    o->type = t;
    o->p = r->p;
    o->n = n;
    r->p += n;
    return 0;
}

static int dec_int(struct rd *r, struct mp_obj *o, int bytes, int sign)
{
    if (need(r, (size_t)bytes) < 0)
        return -1;
    uint64_t v = be(r->p, bytes);
    r->p += bytes;
    o->type = MP_INT;
    if (sign) {
        int shift = 64 - 8 * bytes;
        o->i = shift ? ((int64_t)(v << shift)) >> shift : (int64_t)v;
    } else {
        if (v > INT64_MAX)
            return -1;
        o->i = (int64_t)v;
    }
    return 0;
}

static int dec(struct rd *r, struct mp_obj *o, int depth)
{
    memset(o, 0, sizeof(*o));
    if (need(r, 1) < 0)
        return -1;
    uint8_t t = *r->p++;
    uint32_t n;
    if (t <= 0x7f) {
        o->type = MP_INT;
        o->i = t;
        return 0;
    }
    if (t >= 0xe0) {
        o->type = MP_INT;
        o->i = (int8_t)t;
        return 0;
    }
    if ((t & 0xe0) == 0xa0)
        return dec_raw(r, o, MP_STR, 0, t & 0x1f);
    if ((t & 0xf0) == 0x90) {
        o->type = MP_ARR;
        o->n = t & 0x0f;
        return dec_items(r, o, o->n, depth);
    }
    if ((t & 0xf0) == 0x80) {
        o->type = MP_MAP;
        o->n = t & 0x0f;
        return dec_items(r, o, 2 * o->n, depth);
    }
    switch (t) {
    case 0xc0:
        o->type = MP_NIL;
        return 0;
    case 0xc2:
    case 0xc3:
        o->type = MP_BOOL;
        o->i = t == 0xc3;
        return 0;
    case 0xc4: return dec_raw(r, o, MP_BIN, 1, 0);
    case 0xc5: return dec_raw(r, o, MP_BIN, 2, 0);
    case 0xc6: return dec_raw(r, o, MP_BIN, 4, 0);
    case 0xd9: return dec_raw(r, o, MP_STR, 1, 0);
    case 0xda: return dec_raw(r, o, MP_STR, 2, 0);
    case 0xdb: return dec_raw(r, o, MP_STR, 4, 0);
    case 0xcc: return dec_int(r, o, 1, 0);
    case 0xcd: return dec_int(r, o, 2, 0);
    case 0xce: return dec_int(r, o, 4, 0);
    case 0xcf: return dec_int(r, o, 8, 0);
    case 0xd0: return dec_int(r, o, 1, 1);
    case 0xd1: return dec_int(r, o, 2, 1);
    case 0xd2: return dec_int(r, o, 4, 1);
    case 0xd3: return dec_int(r, o, 8, 1);
    case 0xdc:
    case 0xdd:
    case 0xde:
    case 0xdf: {
        int bytes = (t == 0xdc || t == 0xde) ? 2 : 4;
        if (need(r, (size_t)bytes) < 0)
            return -1;
        n = (uint32_t)be(r->p, bytes);
        r->p += bytes;
        if (t >= 0xde) {
            if (n > UINT32_MAX / 2)
                return -1;
            o->type = MP_MAP;
            o->n = n;
            return dec_items(r, o, 2 * n, depth);
        }
        o->type = MP_ARR;
        o->n = n;
        return dec_items(r, o, n, depth);
    }
    default:
        return -1; /* floats, ext: not in PROTOCOL.md */
    }
}

int mp_decode(struct mp_doc *d, uint8_t *buf, size_t len)
{
    struct rd r = {buf, buf + len};
    d->buf = buf;
    if (dec(&r, &d->root, 0) < 0 || r.p != r.end) {
        mp_doc_free(d);
        return -1;
    }
    return 0;
}

void mp_doc_free(struct mp_doc *d)
{
    obj_free(&d->root);
    free(d->buf);
    d->buf = NULL;
}

int mp_is_str(const struct mp_obj *o, const char *s)
{
    size_t n = strlen(s);
    return o != NULL && o->type == MP_STR && o->n == n && memcmp(o->p, s, n) == 0;
}

const struct mp_obj *mp_get(const struct mp_obj *map, const char *key)
{
    if (map == NULL || map->type != MP_MAP)
        return NULL;
    for (uint32_t k = 0; k < map->n; k++)
        if (mp_is_str(&map->items[2 * k], key))
            return &map->items[2 * k + 1];
    return NULL;
}
