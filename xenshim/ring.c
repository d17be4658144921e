/* ring.c: Xen's vm_event ring page: hv's mem_event requests put on it in Xen's layout. */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint32_t *ring_idx(int off)
{
    return (uint32_t *)(void *)(shim.ring + off);
}

static uint32_t ring_vcpu(int64_t vcpu_id)
{
    return vcpu_id < 0 ? UINT32_MAX : (uint32_t)vcpu_id;
}

void shim_ring_flush_locked(void)
{
    if (!shim.armed || shim.ring == NULL)
        return;
    int added = 0;
    for (struct shim_req *r = shim.reqs; r != NULL; r = r->next) {
        if (r->on_ring)
            continue;
        if (shim.req_prod_pvt - shim.rsp_cons >= RING_SLOTS)
            break;
        uint8_t *e = shim.ring + RING_HDR + (shim.req_prod_pvt % RING_SLOTS) * RING_ENTRY;
        uint32_t flags = 0, pflags = 0;
        if (r->proto_flags & PROTO_VCPU_PAUSED)
            flags |= VM_EVENT_FLAG_VCPU_PAUSED;
        if (r->proto_flags & PROTO_FOREIGN)
            flags |= VM_EVENT_FLAG_FOREIGN;
        if (r->proto_flags & PROTO_DROP_PAGE)
            pflags |= MEM_PAGING_DROP_PAGE;
        if (r->proto_flags & PROTO_EVICT_FAIL)
            pflags |= MEM_PAGING_EVICT_FAIL;
        uint32_t version = VM_EVENT_VERSION, reason = VM_EVENT_REASON_MEM_PAGING;
        uint32_t vcpu = ring_vcpu(r->vcpu_id);
        uint64_t gfn = (uint64_t)r->gfn;
        memset(e, 0, RING_ENTRY);
        memcpy(e + 0, &version, 4);
        memcpy(e + 4, &flags, 4);
        memcpy(e + 8, &reason, 4);
        memcpy(e + 12, &vcpu, 4);
        memcpy(e + 24, &gfn, 8);
        memcpy(e + 32, &r->xen_p2mt, 4);
        memcpy(e + 36, &pflags, 4);
        shim.req_prod_pvt++;
        r->on_ring = 1;
        added = 1;
    }
    if (added) {
        __atomic_store_n(ring_idx(0), shim.req_prod_pvt, __ATOMIC_RELEASE);
        uint64_t one = 1;
        if (shim.evfd >= 0 && write(shim.evfd, &one, sizeof(one)) < 0)
            shim_log("cannot signal the event channel: %s", strerror(errno));
    }
}

static uint32_t xen_p2mt(const struct mp_obj *name)
{
    if (mp_is_str(name, "paging_out"))
        return 9;
    if (mp_is_str(name, "paged"))
        return 10;
    if (mp_is_str(name, "paging_in_start") || mp_is_str(name, "paging_in"))
        return 11;
    if (mp_is_str(name, "invalid"))
        return 1;
    if (mp_is_str(name, "mmio"))
        return 5;
    if (mp_is_str(name, "broken"))
        return 13;
    return 0;
}

void shim_on_mem_event_locked(const struct mp_obj *ev)
{
    const struct mp_obj *reqs = mp_get(ev, "reqs");
    if (reqs == NULL || reqs->type != MP_ARR)
        return;
    struct shim_req **tail = &shim.reqs;
    while (*tail != NULL)
        tail = &(*tail)->next;
    for (uint32_t k = 0; k < reqs->n; k++) {
        const struct mp_obj *m = &reqs->items[k];
        int64_t seq = shim_int_field(m, "seq", -1);
        int dup = 0;
        for (struct shim_req *r = shim.reqs; r != NULL; r = r->next)
            dup |= r->seq == seq;
        if (seq < 0 || dup)
            continue;
        struct shim_req *r = calloc(1, sizeof(*r));
        if (r == NULL) {
            shim_log("out of memory: request seq %lld dropped", (long long)seq);
            continue;
        }
        r->seq = seq;
        r->gfn = shim_int_field(m, "gfn", -1);
        r->vcpu_id = shim_int_field(m, "vcpu_id", -1);
        r->proto_flags = (uint32_t)shim_int_field(m, "flags", 0);
        r->xen_p2mt = xen_p2mt(mp_get(m, "p2mt"));
        *tail = r;
        tail = &r->next;
    }
    shim_ring_flush_locked();
}

void *shim_ring_map(int prot)
{
    pthread_mutex_lock(&shim.mu);
    if (shim.memfd < 0) {
        shim.memfd = memfd_create("xenshim-ring", MFD_CLOEXEC);
        if (shim.memfd >= 0 && ftruncate(shim.memfd, SHIM_PAGE) == 0)
            shim.ring = mmap(NULL, SHIM_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, shim.memfd, 0);
        if (shim.ring == MAP_FAILED)
            shim.ring = NULL;
        if (shim.ring == NULL && shim.memfd >= 0) {
            close(shim.memfd);
            shim.memfd = -1;
        }
    }
    void *view = NULL;
    if (shim.memfd >= 0) {
        view = mmap(NULL, SHIM_PAGE, prot, MAP_SHARED, shim.memfd, 0);
        if (view == MAP_FAILED)
            view = NULL;
    }
    pthread_mutex_unlock(&shim.mu);
    return view;
}
