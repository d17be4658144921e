/* mp.h: the msgpack subset PROTOCOL.md frames need (maps, arrays, str, bin, int, bool, nil). */
#ifndef XENSHIM_MP_H
#define XENSHIM_MP_H

#include <stddef.h>
#include <stdint.h>

enum mp_type { MP_NIL, MP_BOOL, MP_INT, MP_STR, MP_BIN, MP_ARR, MP_MAP };

/* A decoded value; strings and bins point into the frame buffer the document owns. */
struct mp_obj {
    enum mp_type type;
    int64_t i;                 /* MP_INT value, MP_BOOL 0/1 */
    const uint8_t *p;          /* MP_STR, MP_BIN bytes */
    uint32_t n;                /* bytes (STR, BIN), elements (ARR), pairs (MAP) */
    struct mp_obj *items;      /* ARR: n items; MAP: 2n items, key then value */
};

struct mp_doc {
    uint8_t *buf;              /* the frame body, owned */
    struct mp_obj root;
};

/* Growable encoder; starts with 4 bytes reserved for the frame's length prefix. */
struct mp_buf {
    uint8_t *p;
    size_t len, cap;
    int oom;
    int64_t id;                /* the request id shim_req_begin put in */
};

void mp_init(struct mp_buf *b);
void mp_free(struct mp_buf *b);
void mp_map(struct mp_buf *b, uint32_t pairs);
void mp_arr(struct mp_buf *b, uint32_t n);
void mp_str(struct mp_buf *b, const char *s);
void mp_int(struct mp_buf *b, int64_t v);
void mp_bin(struct mp_buf *b, const void *p, uint32_t n);
void mp_bool(struct mp_buf *b, int v);
void mp_nil(struct mp_buf *b);
/* Fill in the length prefix; the frame is b->p[0 .. b->len). */
int mp_finish(struct mp_buf *b);

/* Decode exactly one value filling buf[0..len); takes ownership of buf. 0 or -1. */
int mp_decode(struct mp_doc *d, uint8_t *buf, size_t len);
void mp_doc_free(struct mp_doc *d);

/* Lookups on a map: NULL when absent. */
const struct mp_obj *mp_get(const struct mp_obj *map, const char *key);
int mp_is_str(const struct mp_obj *o, const char *s);

#endif
