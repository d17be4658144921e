/* mp_check.c: test driver for xenshim's msgpack decoder: frames on stdin, one rendering a line.
   Each input is a 4-byte big-endian length and that many bytes; the output line is "bad" or
   the value rendered canonically (the Python test renders msgpack's own decoding the same). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mp.h"

static void hex(const uint8_t *p, uint32_t n)
{
    for (uint32_t k = 0; k < n; k++)
        printf("%02x", p[k]);
}

static void render(const struct mp_obj *o)
{
    switch (o->type) {
    case MP_NIL: printf("nil"); break;
    case MP_BOOL: printf(o->i ? "true" : "false"); break;
    case MP_INT: printf("%lld", (long long)o->i); break;
    case MP_STR: printf("s'"); hex(o->p, o->n); printf("'"); break;
    case MP_BIN: printf("b'"); hex(o->p, o->n); printf("'"); break;
    case MP_ARR:
        printf("[");
        for (uint32_t k = 0; k < o->n; k++) {
            if (k)
                printf(",");
            render(&o->items[k]);
        }
        printf("]");
        break;
    case MP_MAP:
        printf("{");
        for (uint32_t k = 0; k < o->n; k++) {
            if (k)
                printf(",");
            render(&o->items[2 * k]);
            printf(":");
            render(&o->items[2 * k + 1]);
        }
        printf("}");
        break;
    }
}

int main(void)
{
    uint8_t hdr[4];
    while (fread(hdr, 1, 4, stdin) == 4) {
        uint32_t n = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
        uint8_t *buf = malloc(n ? n : 1);
        if (buf == NULL || fread(buf, 1, n, stdin) != n)
            return 2;
        struct mp_doc d;
        if (mp_decode(&d, buf, n) < 0) {
            printf("bad\n");
            continue;
        }
        render(&d.root);
        printf("\n");
        mp_doc_free(&d);
    }
    return 0;
}
