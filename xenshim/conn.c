/* conn.c: the one privcmd.sock connection: hello, a reader thread, calls matched by id. */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAME (1u << 20)

struct shim shim = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .cv = PTHREAD_COND_INITIALIZER,
    .wmu = PTHREAD_MUTEX_INITIALIZER,
    .fd = -1,
    .next_id = 1,
    .target = -1,
    .memfd = -1,
    .evfd = -1,
};

struct shim_wait {
    int64_t id;
    int done;
    struct mp_doc doc;
    struct shim_wait *next;
};

static const char *const errnames[] = {
    "EINVAL", "EBUSY", "ENOENT", "ENOMEM", "EAGAIN", "ENODEV", "EPERM",
    "EPROTO", "EIO", "EFAULT", "EEXIST", "ENOSPC", "ESRCH", "ENOSYS",
};
static const int errnums[] = {
    EINVAL, EBUSY, ENOENT, ENOMEM, EAGAIN, ENODEV, EPERM,
    EPROTO, EIO, EFAULT, EEXIST, ENOSPC, ESRCH, ENOSYS,
};

void shim_log(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "xenshim: %s\n", line);
}

int shim_errno(const struct mp_obj *name)
{
    for (size_t k = 0; k < sizeof(errnums) / sizeof(errnums[0]); k++)
        if (mp_is_str(name, errnames[k]))
            return errnums[k];
    return EIO;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double env_seconds(const char *name, double dflt)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return dflt;
    char *end;
    double d = strtod(v, &end);
    return (*end == '\0' && d >= 0) ? d : dflt;
}

static int read_full(int fd, void *p, size_t n)
{
    uint8_t *q = p;
    while (n > 0) {
        ssize_t got = read(fd, q, n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        q += got;
        n -= (size_t)got;
    }
    return 0;
}

static int write_full(int fd, const void *p, size_t n)
{
    const uint8_t *q = p;
    while (n > 0) {
        ssize_t put = send(fd, q, n, MSG_NOSIGNAL);
        if (put < 0 && errno == EINTR)
            continue;
        if (put <= 0)
            return -1;
        q += put;
        n -= (size_t)put;
    }
    return 0;
}

int64_t shim_int_field(const struct mp_obj *map, const char *key, int64_t dflt)
{
    const struct mp_obj *v = mp_get(map, key);
    return (v != NULL && v->type == MP_INT) ? v->i : dflt;
}

/* ------------------------------------------------------------------ the reader */

static void *reader_main(void *arg)
{
    (void)arg;
    for (;;) {
        uint8_t hdr[4];
        if (read_full(shim.fd, hdr, 4) < 0)
            break;
        uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
        if (len == 0 || len > MAX_FRAME) {
            shim_log("bad frame length %u from hv", len);
            break;
        }
        uint8_t *buf = malloc(len);
        if (buf == NULL || read_full(shim.fd, buf, len) < 0) {
            free(buf);
            break;
        }
        struct mp_doc doc;
        if (mp_decode(&doc, buf, len) < 0 || doc.root.type != MP_MAP) {
            if (doc.buf != NULL)
                mp_doc_free(&doc);
            shim_log("undecodable frame from hv");
            break;
        }
        const struct mp_obj *id = mp_get(&doc.root, "id");
        const struct mp_obj *ev = mp_get(&doc.root, "ev");
        int keep = 0;
        pthread_mutex_lock(&shim.mu);
        if (id != NULL && id->type == MP_INT) {
            for (struct shim_wait *w = shim.waits; w != NULL; w = w->next)
                if (w->id == id->i && !w->done) {
                    w->doc = doc;
                    w->done = 1;
                    keep = 1;
                    break;
                }
        } else if (mp_is_str(ev, "mem_event")) {
            shim_on_mem_event_locked(&doc.root);
        } else if (mp_is_str(ev, "target")) {
            shim.target = shim_int_field(&doc.root, "tot_pages", shim.target);
            char path[64];
            snprintf(path, sizeof(path), "/local/domain/%d/memory/target-tot_pages", shim.domid);
            shim_xs_event_locked(path, "");
        } else if (id != NULL && id->type == MP_NIL) {
            shim_log("hv closed the connection: %.*s",
                     (int)(mp_get(&doc.root, "msg") ? mp_get(&doc.root, "msg")->n : 0),
                     mp_get(&doc.root, "msg") ? (const char *)mp_get(&doc.root, "msg")->p : "");
        }
        pthread_cond_broadcast(&shim.cv);
        pthread_mutex_unlock(&shim.mu);
        if (!keep)
            mp_doc_free(&doc);
    }
    pthread_mutex_lock(&shim.mu);
    shim.dead = 1;
    shim_domain_gone_locked();
    pthread_cond_broadcast(&shim.cv);
    pthread_mutex_unlock(&shim.mu);
    return NULL;
}

void shim_req_begin(struct mp_buf *b, const char *op, uint32_t more_pairs)
{
    mp_init(b);
    pthread_mutex_lock(&shim.mu);
    b->id = shim.next_id++;
    pthread_mutex_unlock(&shim.mu);
    mp_map(b, 2 + more_pairs);
    mp_str(b, "op");
    mp_str(b, op);
    mp_str(b, "id");
    mp_int(b, b->id);
}

int shim_call(struct mp_buf *b, struct mp_doc *reply)
{
    struct shim_wait w = {.id = b->id};
    memset(reply, 0, sizeof(*reply));
    if (mp_finish(b) < 0) {
        mp_free(b);
        errno = ENOMEM;
        return -1;
    }
    pthread_mutex_lock(&shim.mu);
    if (shim.fd < 0 || shim.dead) {
        pthread_mutex_unlock(&shim.mu);
        mp_free(b);
        errno = shim.fd < 0 ? ENODEV : EIO;
        return -1;
    }
    w.next = shim.waits;
    shim.waits = &w;
    pthread_mutex_unlock(&shim.mu);

    pthread_mutex_lock(&shim.wmu);
    int wrote = write_full(shim.fd, b->p, b->len);
    pthread_mutex_unlock(&shim.wmu);
    mp_free(b);

    pthread_mutex_lock(&shim.mu);
    if (wrote < 0)
        shutdown(shim.fd, SHUT_RDWR); /* the reader sees it and marks the link dead */
    while (!w.done && !shim.dead)
        pthread_cond_wait(&shim.cv, &shim.mu);
    for (struct shim_wait **p = &shim.waits; *p != NULL; p = &(*p)->next)
        if (*p == &w) {
            *p = w.next;
            break;
        }
    pthread_mutex_unlock(&shim.mu);
    if (!w.done) {
        errno = EIO;
        return -1;
    }
    const struct mp_obj *ok = mp_get(&w.doc.root, "ok");
    if (ok == NULL || ok->type != MP_BOOL || !ok->i) {
        int e = shim_errno(mp_get(&w.doc.root, "err"));
        if (e == ESRCH) {
            pthread_mutex_lock(&shim.mu);
            shim_domain_gone_locked();
            pthread_mutex_unlock(&shim.mu);
        }
        mp_doc_free(&w.doc);
        errno = e;
        return -1;
    }
    *reply = w.doc;
    return 0;
}

int shim_result(const struct mp_doc *reply, uint32_t k)
{
    const struct mp_obj *res = mp_get(&reply->root, "results");
    if (res == NULL || res->type != MP_ARR || k >= res->n) {
        errno = EIO;
        return -1;
    }
    const struct mp_obj *v = &res->items[k];
    if (v->type == MP_INT && v->i == 0)
        return 0;
    errno = shim_errno(v);
    return -1;
}

/* ------------------------------------------------------------------ attach */

static int connect_sock(void)
{
    const char *dir = getenv("XENSHIM_RUN_DIR");
    if (dir == NULL || *dir == '\0') {
        shim_log("XENSHIM_RUN_DIR is not set (hv's run directory)");
        errno = ENODEV;
        return -1;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if ((size_t)snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/privcmd.sock", dir) >= sizeof(sa.sun_path)) {
        shim_log("run directory path too long for a Unix socket: %s", dir);
        errno = ENAMETOOLONG;
        return -1;
    }
    double deadline = now() + env_seconds("XENSHIM_CONNECT_TIMEOUT", 10.0);
    useconds_t pause = 10000;
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return fd;
        int e = errno;
        close(fd);
        if ((e != ENOENT && e != ECONNREFUSED && e != EINTR) || now() > deadline) {
            shim_log("cannot connect to %s: %s", sa.sun_path, strerror(e));
            errno = e;
            return -1;
        }
        usleep(pause);
        pause = pause < 200000 ? pause * 2 : pause;
    }
}

static int hello(int domid, int64_t *epoch)
{
    struct mp_buf b;
    struct mp_doc reply;
    shim_req_begin(&b, "hello", 3);
    mp_str(&b, "v");
    mp_int(&b, 1);
    mp_str(&b, "role");
    mp_str(&b, "pager");
    mp_str(&b, "domid");
    mp_int(&b, domid);
    if (shim_call(&b, &reply) < 0)
        return -1;
    pthread_mutex_lock(&shim.mu);
    shim.domid = domid;
    shim.nr_gfns = shim_int_field(&reply.root, "nr_gfns", 0);
    shim.vcpus = shim_int_field(&reply.root, "vcpus", 0);
    shim.ring_size = shim_int_field(&reply.root, "ring_size", 0);
    pthread_mutex_unlock(&shim.mu);
    *epoch = shim_int_field(&reply.root, "epoch", 0);
    mp_doc_free(&reply);
    return 0;
}

int shim_attach(int domid)
{
    if (shim.fd >= 0) {
        errno = EBUSY;
        return -1;
    }
    pthread_mutex_lock(&shim.mu);
    if (shim.evfd < 0)
        shim.evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int evfd = shim.evfd;
    pthread_mutex_unlock(&shim.mu);
    if (evfd < 0)
        return -1;
    int fd = connect_sock();
    if (fd < 0)
        return -1;
    shim.fd = fd;
    shim.dead = 0;
    shim.domid = domid;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the pager's signal handlers run on its threads */
    int rc = pthread_create(&shim.reader, NULL, reader_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        close(fd);
        shim.fd = -1;
        errno = rc;
        return -1;
    }
    shim.reader_running = 1;
    double deadline = now() + env_seconds("XENSHIM_HELLO_TIMEOUT", 3.0);
    useconds_t pause = 20000;
    int64_t epoch = 0;
    while (hello(domid, &epoch) < 0) {
        int e = errno;
        if (e != EBUSY || now() > deadline) {
            shim_log("hello as pager of domain %d refused: %s", domid, strerror(e));
            shim_detach_conn();
            errno = e;
            return -1;
        }
        usleep(pause);
        pause = pause < 320000 ? pause * 2 : pause;
    }
    /* hv sends the target right after the hello reply; xenpaging reads it soon after */
    pthread_mutex_lock(&shim.mu);
    shim.epoch = epoch;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    while (shim.target < 0 && !shim.dead)
        if (pthread_cond_timedwait(&shim.cv, &shim.mu, &until) != 0)
            break;
    pthread_mutex_unlock(&shim.mu);
    if (shim.ring_size > RING_SLOTS)
        shim_log("hv's ring has %lld slots, Xen's page holds %d: the rest wait in the shim",
                 (long long)shim.ring_size, RING_SLOTS);
    if (shim.verbose)
        shim_log("attached to domain %d (epoch %lld, %lld gfns)", domid, (long long)epoch,
                 (long long)shim.nr_gfns);
    return 0;
}

void shim_detach_conn(void)
{
    if (shim.fd < 0)
        return;
    shutdown(shim.fd, SHUT_RDWR);
    if (shim.reader_running) {
        pthread_join(shim.reader, NULL);
        shim.reader_running = 0;
    }
    close(shim.fd);
    pthread_mutex_lock(&shim.mu);
    shim.fd = -1;
    while (shim.reqs != NULL) {
        struct shim_req *r = shim.reqs;
        shim.reqs = r->next;
        free(r);
    }
    pthread_mutex_unlock(&shim.mu);
}
