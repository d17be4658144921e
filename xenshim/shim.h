/* shim.h: the process-wide state the four Xen library faces share (one privcmd.sock pager link). */
#ifndef XENSHIM_SHIM_H
#define XENSHIM_SHIM_H

#include <pthread.h>
#include <stdint.h>

#include "mp.h"

#define SHIM_PAGE 4096
/* Xen's vm_event ring in one page: 64-byte header, 400-byte entries, 8 of them. */
#define RING_HDR 64
#define RING_ENTRY 400
#define RING_SLOTS 8
#define VM_EVENT_VERSION 7
#define VM_EVENT_REASON_MEM_PAGING 3
#define VM_EVENT_FLAG_VCPU_PAUSED (1u << 0)
#define VM_EVENT_FLAG_FOREIGN (1u << 1)
#define MEM_PAGING_DROP_PAGE (1u << 0)
#define MEM_PAGING_EVICT_FAIL (1u << 1)
/* PROTOCOL.md §5 flag bits */
#define PROTO_VCPU_PAUSED 1
#define PROTO_DROP_PAGE 2
#define PROTO_EVICT_FAIL 4
#define PROTO_FOREIGN 8
/* The ring's gfn (HVM_PARAM_PAGING_RING_PFN): past every gfn hv allows (2**28). */
#define SHIM_RING_PFN (1ul << 32)
#define SHIM_EVTCHN_PORT 1

/* One request hv put on the ring that xenpaging has not answered yet. */
struct shim_req {
    int64_t seq, gfn, vcpu_id; /* vcpu_id -1: no guest vCPU */
    uint32_t proto_flags;
    uint32_t xen_p2mt;
    int on_ring;
    struct shim_req *next;
};

struct shim_watch {
    char *path, *token;
    struct shim_watch *next;
};

struct shim_event {
    char *path, *token;
    struct shim_event *next;
};

struct shim_xs {
    int pipe[2];
    struct shim_watch *watches;
    struct shim_event *head, *tail;
};

struct shim {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_mutex_t wmu; /* one frame written at a time */
    int fd;              /* privcmd.sock, -1 before enable */
    int dead;            /* hv closed it, or it broke */
    int reader_running;
    pthread_t reader;
    int64_t next_id;
    struct shim_wait *waits;
    /* the domain, from the pager hello */
    int domid;
    int64_t nr_gfns, vcpus, ring_size, epoch;
    int64_t target; /* pages; -1 until the first target event */
    /* the ring page (a memfd: the pager's map and ours are separate views) */
    int memfd;
    uint8_t *ring;
    int armed; /* the pager initialised its back ring: requests may go on it */
    uint32_t req_prod_pvt, rsp_cons;
    struct shim_req *reqs; /* oldest first */
    int evfd;              /* the event channel's fd (an eventfd) */
    struct shim_xs *xs;    /* the open xenstore handle, if any */
    int verbose;
};

extern struct shim shim;

void shim_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Connect, start the reader, say hello as the domain's pager; 0 or -1 with errno. */
int shim_attach(int domid);
/* Send a request (built by the caller after mp_map(...)) and wait for the reply.
   Returns 0 with *reply filled (ok true), or -1 with errno (an errno name from hv, or EIO). */
int shim_call(struct mp_buf *b, struct mp_doc *reply);
/* Start a request frame {"op": op, "id": <assigned later>, ...pairs more}. */
void shim_req_begin(struct mp_buf *b, const char *op, uint32_t more_pairs);
int shim_errno(const struct mp_obj *name);
/* Per-element result of a batch answer: 0 or -1 with errno set. */
int shim_result(const struct mp_doc *reply, uint32_t k);
void shim_detach_conn(void);
int64_t shim_int_field(const struct mp_obj *map, const char *key, int64_t dflt);
/* A `mem_event` from hv: its requests queued, and put on the ring while it has room. */
void shim_on_mem_event_locked(const struct mp_obj *ev);
/* Put queued requests on the ring while it has room; signal the event channel. */
void shim_ring_flush_locked(void);
void shim_xs_event_locked(const char *path, const char *token);
void shim_domain_gone_locked(void);
/* The gfn and the pages a handle may map: the ring page view for the pager. */
void *shim_ring_map(int prot);

#endif
