/* evtchn.c: the libxenevtchn.so.1 face: one port, an eventfd; notify turns responses into `resume`. */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

static int version_warned;

typedef struct xenevtchn_handle {
    int bound;
} xenevtchn_handle;

xenevtchn_handle *xenevtchn_open(void *logger, unsigned int flags)
{
    (void)logger;
    (void)flags;
    pthread_mutex_lock(&shim.mu);
    if (shim.evfd < 0) /* a pager may poll the fd before it enables paging */
        shim.evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int fd = shim.evfd;
    pthread_mutex_unlock(&shim.mu);
    return fd < 0 ? NULL : calloc(1, sizeof(xenevtchn_handle));
}

int xenevtchn_close(xenevtchn_handle *xce)
{
    free(xce);
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce)
{
    (void)xce;
    return shim.evfd;
}

int xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid, uint32_t remote_port)
{
    if (shim.fd < 0 || (int)domid != shim.domid || remote_port != SHIM_EVTCHN_PORT) {
        errno = EINVAL;
        return -1;
    }
    xce->bound = 1;
    return SHIM_EVTCHN_PORT;
}

int xenevtchn_unbind(xenevtchn_handle *xce, uint32_t port)
{
    if (!xce->bound || port != SHIM_EVTCHN_PORT) {
        errno = EINVAL;
        return -1;
    }
    xce->bound = 0;
    return 0;
}

int xenevtchn_pending(xenevtchn_handle *xce)
{
    (void)xce;
    uint64_t count;
    if (read(shim.evfd, &count, sizeof(count)) < 0 && errno != EAGAIN)
        return -1;
    return SHIM_EVTCHN_PORT;
}

int xenevtchn_unmask(xenevtchn_handle *xce, uint32_t port)
{
    (void)xce;
    (void)port;
    return 0;
}

/* The pager pushed responses: match each to the request it answers, `resume` them by seq. */
int xenevtchn_notify(xenevtchn_handle *xce, uint32_t port)
{
    (void)xce;
    if (port != SHIM_EVTCHN_PORT || shim.ring == NULL) {
        errno = EINVAL;
        return -1;
    }
    struct shim_req *done = NULL, **done_tail = &done;
    uint32_t n = 0;
    pthread_mutex_lock(&shim.mu);
    uint32_t rsp_prod = __atomic_load_n((uint32_t *)(void *)(shim.ring + 8), __ATOMIC_ACQUIRE);
    if (rsp_prod - shim.rsp_cons > RING_SLOTS) {
        shim_log("response producer %u is %u past our consumer: ring corrupt, ignored", rsp_prod,
                 rsp_prod - shim.rsp_cons);
        rsp_prod = shim.rsp_cons;
    }
    for (; shim.rsp_cons != rsp_prod; shim.rsp_cons++) {
        const uint8_t *e = shim.ring + RING_HDR + (shim.rsp_cons % RING_SLOTS) * RING_ENTRY;
        uint64_t gfn;
        uint32_t vcpu, version;
        memcpy(&gfn, e + 24, 8);
        memcpy(&vcpu, e + 12, 4);
        memcpy(&version, e + 0, 4);
        if (version != VM_EVENT_VERSION && !version_warned) {
            version_warned = 1;
            shim_log("a response carries vm_event version %u, not %d: Xen 4.17 would drop it "
                     "(vm_event_resume); the shim accepts it", version, VM_EVENT_VERSION);
        }
        struct shim_req **p = &shim.reqs;
        while (*p != NULL) {
            struct shim_req *r = *p;
            uint32_t rv = r->vcpu_id < 0 ? UINT32_MAX : (uint32_t)r->vcpu_id;
            if (r->on_ring && (uint64_t)r->gfn == gfn && rv == vcpu)
                break;
            p = &r->next;
        }
        if (*p == NULL) {
            shim_log("response for gfn %#llx vcpu %u answers no request: ignored",
                     (unsigned long long)gfn, vcpu);
            continue;
        }
        struct shim_req *r = *p;
        *p = r->next;
        r->next = NULL;
        *done_tail = r;
        done_tail = &r->next;
        n++;
    }
    shim_ring_flush_locked();
    pthread_mutex_unlock(&shim.mu);
    if (n == 0)
        return 0;

    struct mp_buf b;
    struct mp_doc reply;
    shim_req_begin(&b, "resume", 1);
    mp_str(&b, "rsps");
    mp_arr(&b, n);
    for (struct shim_req *r = done; r != NULL; r = r->next) {
        mp_map(&b, 4);
        mp_str(&b, "seq");
        mp_int(&b, r->seq);
        mp_str(&b, "gfn");
        mp_int(&b, r->gfn);
        mp_str(&b, "vcpu_id");
        mp_int(&b, r->vcpu_id);
        mp_str(&b, "flags");
        mp_int(&b, r->proto_flags);
    }
    int rc = shim_call(&b, &reply);
    int e = errno;
    if (rc == 0) {
        uint32_t k = 0;
        for (struct shim_req *r = done; r != NULL; r = r->next, k++)
            if (shim_result(&reply, k) < 0 && errno != ENOENT)
                shim_log("resume of seq %lld (gfn %#llx): %s", (long long)r->seq,
                         (unsigned long long)r->gfn, strerror(errno));
        mp_doc_free(&reply);
    }
    while (done != NULL) {
        struct shim_req *r = done;
        done = r->next;
        free(r);
    }
    errno = e;
    return rc;
}
