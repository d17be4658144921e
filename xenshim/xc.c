/* xc.c: the libxenctrl.so.4.17 face: xenpaging's domctls and mappings as PROTOCOL.md requests. */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef unsigned long xen_pfn_t;
typedef struct xc_interface_core {
    int unused;
} xc_interface;

/* Xen 4.17's xc_domaininfo_t (struct xen_domctl_getdomaininfo, x86): 112 bytes. */
struct shim_domaininfo {
    uint16_t domain, pad1;
    uint32_t flags;
    uint64_t tot_pages, max_pages, outstanding_pages, shr_pages, paged_pages;
    uint64_t shared_info_frame, cpu_time;
    uint32_t nr_online_vcpus, max_vcpu_id, ssidref;
    uint8_t handle[16];
    uint32_t cpupool;
    uint8_t gpaddr_bits, pad2[7];
    uint32_t emulation_flags, misc_flags;
};
_Static_assert(sizeof(struct shim_domaininfo) == 112, "xc_domaininfo_t is 112 bytes in Xen 4.17");

#define XEN_DOMINF_hvm_guest (1u << 1)
#define XEN_DOMINF_running (1u << 5)
#define XEN_DOMINF_hap (1u << 8)
#define HVM_PARAM_PAGING_RING_PFN 27
#define P2M_PAGING_OUT 1
#define P2M_PAGED 2
#define P2M_PAGING_IN_START 3
#define P2M_PAGING_IN 4
#define P2M_BROKEN 7

xc_interface *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags)
{
    (void)logger;
    (void)dombuild_logger;
    (void)open_flags;
    const char *v = getenv("XENSHIM_VERBOSE");
    shim.verbose = v != NULL && *v != '\0' && *v != '0';
    return calloc(1, sizeof(xc_interface));
}

int xc_interface_close(xc_interface *xch)
{
    shim_detach_conn();
    free(xch);
    return 0;
}

static void arm_ring(void)
{
    pthread_mutex_lock(&shim.mu);
    if (!shim.armed && shim.ring != NULL) {
        shim.armed = 1;
        shim.req_prod_pvt = __atomic_load_n((uint32_t *)(void *)shim.ring, __ATOMIC_ACQUIRE);
        shim.rsp_cons = __atomic_load_n((uint32_t *)(void *)(shim.ring + 8), __ATOMIC_ACQUIRE);
        shim_ring_flush_locked();
    }
    pthread_mutex_unlock(&shim.mu);
}

/* `audit` of gfns [start, start+count): the reply (types, counters); 0 or -1 with errno. */
static int audit(int64_t start, int64_t count, struct mp_doc *reply)
{
    struct mp_buf b;
    shim_req_begin(&b, "audit", 2);
    mp_str(&b, "start");
    mp_int(&b, start);
    mp_str(&b, "count");
    mp_int(&b, count);
    return shim_call(&b, reply);
}

static uint64_t counter(const struct mp_doc *d, const char *key)
{
    const struct mp_obj *v = mp_get(&d->root, key);
    return (v != NULL && v->type == MP_INT && v->i > 0) ? (uint64_t)v->i : 0;
}

int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain, unsigned int max_domains,
                          void *info)
{
    (void)xch;
    if (max_domains == 0)
        return 0;
    if (shim.fd < 0 || (int64_t)first_domain > shim.domid) {
        errno = ESRCH;
        return shim.fd < 0 ? -1 : 0;
    }
    struct mp_doc reply;
    if (audit(0, 0, &reply) < 0)
        return errno == ESRCH ? 0 : -1;
    struct shim_domaininfo di;
    memset(&di, 0, sizeof(di));
    di.domain = (uint16_t)shim.domid;
    di.flags = XEN_DOMINF_hvm_guest | XEN_DOMINF_running | XEN_DOMINF_hap;
    di.tot_pages = counter(&reply, "tot_pages");
    di.max_pages = (uint64_t)shim.nr_gfns;
    di.paged_pages = counter(&reply, "paged_pages");
    di.nr_online_vcpus = (uint32_t)shim.vcpus;
    di.max_vcpu_id = shim.vcpus > 0 ? (uint32_t)shim.vcpus - 1 : UINT32_MAX;
    di.gpaddr_bits = 52;
    mp_doc_free(&reply);
    memcpy(info, &di, sizeof(di));
    arm_ring(); /* a pager that never removes the ring gfn has initialised it by now */
    return 1;
}

int xc_get_hvm_param(xc_interface *xch, uint32_t dom, int param, unsigned long *value)
{
    (void)xch;
    (void)dom;
    if (param != HVM_PARAM_PAGING_RING_PFN) {
        errno = ENOSYS;
        return -1;
    }
    *value = SHIM_RING_PFN;
    return 0;
}

int xc_domain_populate_physmap_exact(xc_interface *xch, uint32_t domid, unsigned long nr_extents,
                                     unsigned int extent_order, unsigned int mem_flags,
                                     xen_pfn_t *extent_start)
{
    (void)xch;
    (void)domid;
    (void)mem_flags;
    if (nr_extents == 1 && extent_order == 0 && extent_start[0] == SHIM_RING_PFN)
        return 0;
    errno = ENOSYS;
    return -1;
}

int xc_domain_decrease_reservation_exact(xc_interface *xch, uint32_t domid,
                                         unsigned long nr_extents, unsigned int extent_order,
                                         xen_pfn_t *extent_start)
{
    (void)xch;
    (void)domid;
    if (nr_extents == 1 && extent_order == 0 && extent_start[0] == SHIM_RING_PFN) {
        arm_ring(); /* xenpaging removes the ring gfn right after initialising the ring */
        return 0;
    }
    errno = ENOSYS;
    return -1;
}

/* The p2m types of gfns [lo, hi] from one `audit`; malloc'd, or NULL with errno. */
static uint8_t *p2m_types(int64_t lo, int64_t hi)
{
    struct mp_doc reply;
    if (audit(lo, hi - lo + 1, &reply) < 0)
        return NULL;
    const struct mp_obj *types = mp_get(&reply.root, "types");
    uint8_t *out = NULL;
    if (types != NULL && types->type == MP_BIN && (int64_t)types->n == hi - lo + 1) {
        out = malloc(types->n);
        if (out != NULL)
            memcpy(out, types->p, types->n);
    }
    mp_doc_free(&reply);
    if (out == NULL)
        errno = EIO;
    return out;
}

/* Whether a gfn hv answered ENOENT for is in a paging state (retry), per Linux's privcmd. */
static int still_paging(uint8_t t)
{
    return t == P2M_PAGED || t == P2M_PAGING_IN_START || t == P2M_PAGING_IN || t == P2M_PAGING_OUT;
}

/* `map` the still-missing gfns (at most 255): 0 when each is copied or still paging, else -1. */
static int map_batch(const xen_pfn_t *arr, uint8_t *mem, uint8_t *missing, int num)
{
    int idx[255], n = 0;
    for (int k = 0; k < num && n < 255; k++)
        if (missing[k])
            idx[n++] = k;
    struct mp_buf b;
    struct mp_doc reply;
    shim_req_begin(&b, "map", 2);
    mp_str(&b, "gfns");
    mp_arr(&b, (uint32_t)n);
    for (int k = 0; k < n; k++)
        mp_int(&b, (int64_t)arr[idx[k]]);
    mp_str(&b, "hold");
    mp_bool(&b, 0);
    if (shim_call(&b, &reply) < 0)
        return -1;
    const struct mp_obj *pages = mp_get(&reply.root, "pages");
    if (pages == NULL || pages->type != MP_ARR || pages->n != (uint32_t)n) {
        mp_doc_free(&reply);
        errno = EIO;
        return -1;
    }
    int rc = 0, absent = 0;
    int64_t lo = INT64_MAX, hi = -1;
    for (int k = 0; k < n; k++) {
        const struct mp_obj *p = &pages->items[k];
        if (p->type == MP_BIN && p->n == SHIM_PAGE) {
            memcpy(mem + (size_t)idx[k] * SHIM_PAGE, p->p, SHIM_PAGE);
            missing[idx[k]] = 0;
            continue;
        }
        int e = shim_errno(p);
        if (e != ENOENT) {
            errno = e;
            rc = -1;
            break;
        }
        int64_t g = (int64_t)arr[idx[k]];
        lo = g < lo ? g : lo;
        hi = g > hi ? g : hi;
        absent++;
    }
    mp_doc_free(&reply);
    if (rc < 0 || absent == 0)
        return rc;
    /* hv answers ENOENT for every frameless gfn; Linux retries only those in a paging
       state and fails the others: one `audit` over the span tells them apart */
    if (hi - lo + 1 > 524288) {
        errno = EINVAL;
        return -1;
    }
    uint8_t *types = p2m_types(lo, hi);
    if (types == NULL)
        return -1;
    for (int k = 0; k < n && rc == 0; k++) {
        if (!missing[idx[k]])
            continue;
        uint8_t t = types[(int64_t)arr[idx[k]] - lo];
        if (!still_paging(t)) {
            errno = t == P2M_BROKEN ? EIO : EINVAL;
            rc = -1;
        }
    }
    free(types);
    return rc;
}

void *xc_map_foreign_pages(xc_interface *xch, uint32_t dom, int prot, const xen_pfn_t *arr,
                           int num)
{
    (void)xch;
    (void)dom;
    if (num == 1 && arr[0] == SHIM_RING_PFN)
        return shim_ring_map(prot);
    if (num <= 0) {
        errno = EINVAL;
        return NULL;
    }
    if (prot & PROT_WRITE) {
        errno = EPERM; /* guest pages are mapped read-only: PROTOCOL.md's map is a copy */
        return NULL;
    }
    size_t size = (size_t)num * SHIM_PAGE;
    uint8_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *missing = calloc((size_t)num, 1);
    if (mem == MAP_FAILED || missing == NULL) {
        if (mem != MAP_FAILED)
            munmap(mem, size);
        free(missing);
        errno = ENOMEM;
        return NULL;
    }
    memset(missing, 1, (size_t)num);
    useconds_t pause = 100;
    int left = num;
    while (left > 0) {
        if (map_batch(arr, mem, missing, num) < 0) {
            int e = errno;
            munmap(mem, size);
            free(missing);
            errno = e;
            return NULL;
        }
        int before = left;
        left = 0;
        for (int k = 0; k < num; k++)
            left += missing[k];
        if (left > 0 && left == before) {
            usleep(pause);
            pause = pause < 5000 ? pause * 2 : pause;
        } else {
            pause = 100;
        }
    }
    free(missing);
    if (mprotect(mem, size, prot) < 0) {
        munmap(mem, size);
        return NULL;
    }
    return mem;
}

int xc_mem_paging_enable(xc_interface *xch, uint32_t domain_id, uint32_t *port)
{
    (void)xch;
    if (shim_attach((int)domain_id) < 0)
        return -1;
    *port = SHIM_EVTCHN_PORT;
    return 0;
}

int xc_mem_paging_disable(xc_interface *xch, uint32_t domain_id)
{
    (void)xch;
    (void)domain_id;
    struct mp_buf b;
    struct mp_doc reply;
    shim_req_begin(&b, "detach", 0);
    if (shim_call(&b, &reply) < 0)
        return -1;
    mp_doc_free(&reply);
    return 0;
}

static int one_gfn(const char *op, uint64_t gfn, const void *page)
{
    struct mp_buf b;
    struct mp_doc reply;
    shim_req_begin(&b, op, page ? 2 : 1);
    mp_str(&b, "gfns");
    mp_arr(&b, 1);
    mp_int(&b, (int64_t)gfn);
    if (page) {
        mp_str(&b, "pages");
        mp_arr(&b, 1);
        mp_bin(&b, page, SHIM_PAGE);
    }
    if (shim_call(&b, &reply) < 0)
        return -1;
    int rc = shim_result(&reply, 0);
    int e = errno;
    mp_doc_free(&reply);
    errno = e;
    return rc;
}

int xc_mem_paging_nominate(xc_interface *xch, uint32_t domain_id, uint64_t gfn)
{
    (void)xch;
    (void)domain_id;
    return one_gfn("nominate", gfn, NULL);
}

int xc_mem_paging_evict(xc_interface *xch, uint32_t domain_id, uint64_t gfn)
{
    (void)xch;
    (void)domain_id;
    return one_gfn("evict", gfn, NULL);
}

int xc_mem_paging_load(xc_interface *xch, uint32_t domain_id, uint64_t gfn, void *buffer)
{
    (void)xch;
    (void)domain_id;
    if (buffer == NULL) {
        errno = EINVAL;
        return -1;
    }
    return one_gfn("prep", gfn, buffer);
}
