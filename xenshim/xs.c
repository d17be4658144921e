/* xs.c: the libxenstore.so.4 face: the domain's target in KiB and the two watches xenpaging sets. */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TARGET_LEAF "/memory/target-tot_pages"
#define RELEASE_DOMAIN "@releaseDomain"

static int gone_fired;

struct xs_handle *xs_open(unsigned long flags)
{
    (void)flags;
    struct shim_xs *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    if (pipe2(h->pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        free(h);
        return NULL;
    }
    /* the reading end blocks (xs_read_watch waits); the writer never does */
    fcntl(h->pipe[0], F_SETFL, fcntl(h->pipe[0], F_GETFL) & ~O_NONBLOCK);
    pthread_mutex_lock(&shim.mu);
    shim.xs = h;
    pthread_mutex_unlock(&shim.mu);
    return (struct xs_handle *)h;
}

void xs_close(struct xs_handle *xsh)
{
    struct shim_xs *h = (struct shim_xs *)xsh;
    if (h == NULL)
        return;
    pthread_mutex_lock(&shim.mu);
    if (shim.xs == h)
        shim.xs = NULL;
    pthread_mutex_unlock(&shim.mu);
    while (h->watches != NULL) {
        struct shim_watch *w = h->watches;
        h->watches = w->next;
        free(w->path);
        free(w->token);
        free(w);
    }
    while (h->head != NULL) {
        struct shim_event *e = h->head;
        h->head = e->next;
        free(e->path);
        free(e->token);
        free(e);
    }
    close(h->pipe[0]);
    close(h->pipe[1]);
    free(h);
}

int xs_fileno(struct xs_handle *xsh)
{
    return ((struct shim_xs *)xsh)->pipe[0];
}

char *xs_get_domain_path(struct xs_handle *xsh, unsigned int domid)
{
    (void)xsh;
    char *path;
    return asprintf(&path, "/local/domain/%u", domid) < 0 ? NULL : path;
}

/* Queue one watch event on the open handle (caller holds shim.mu). */
static void queue_locked(struct shim_xs *h, const char *path, const char *token)
{
    struct shim_event *e = calloc(1, sizeof(*e));
    if (e == NULL || (e->path = strdup(path)) == NULL || (e->token = strdup(token)) == NULL) {
        if (e != NULL)
            free(e->path);
        free(e);
        shim_log("out of memory: watch event on %s dropped", path);
        return;
    }
    if (h->tail)
        h->tail->next = e;
    else
        h->head = e;
    h->tail = e;
    char one = 1;
    if (write(h->pipe[1], &one, 1) < 0)
        shim_log("cannot signal a watch event on %s: %s", path, strerror(errno));
}

void shim_xs_event_locked(const char *path, const char *token)
{
    (void)token;
    struct shim_xs *h = shim.xs;
    if (h == NULL)
        return;
    for (struct shim_watch *w = h->watches; w != NULL; w = w->next)
        if (strcmp(w->path, path) == 0)
            queue_locked(h, path, w->token);
}

void shim_domain_gone_locked(void)
{
    if (gone_fired)
        return;
    gone_fired = 1;
    shim_xs_event_locked(RELEASE_DOMAIN, "");
}

bool xs_watch(struct xs_handle *xsh, const char *path, const char *token)
{
    struct shim_xs *h = (struct shim_xs *)xsh;
    struct shim_watch *w = calloc(1, sizeof(*w));
    if (w == NULL || (w->path = strdup(path)) == NULL || (w->token = strdup(token)) == NULL) {
        if (w != NULL)
            free(w->path);
        free(w);
        errno = ENOMEM;
        return false;
    }
    pthread_mutex_lock(&shim.mu);
    w->next = h->watches;
    h->watches = w;
    queue_locked(h, path, token); /* xenstored fires every new watch once */
    pthread_mutex_unlock(&shim.mu);
    return true;
}

bool xs_unwatch(struct xs_handle *xsh, const char *path, const char *token)
{
    struct shim_xs *h = (struct shim_xs *)xsh;
    pthread_mutex_lock(&shim.mu);
    for (struct shim_watch **p = &h->watches; *p != NULL; p = &(*p)->next) {
        struct shim_watch *w = *p;
        if (strcmp(w->path, path) == 0 && strcmp(w->token, token) == 0) {
            *p = w->next;
            pthread_mutex_unlock(&shim.mu);
            free(w->path);
            free(w->token);
            free(w);
            return true;
        }
    }
    pthread_mutex_unlock(&shim.mu);
    errno = ENOENT;
    return false;
}

char **xs_read_watch(struct xs_handle *xsh, unsigned int *num)
{
    struct shim_xs *h = (struct shim_xs *)xsh;
    char one;
    for (;;) {
        ssize_t got = read(h->pipe[0], &one, 1);
        if (got == 1)
            break;
        if (got < 0 && errno == EINTR)
            continue;
        errno = EIO;
        return NULL;
    }
    pthread_mutex_lock(&shim.mu);
    struct shim_event *e = h->head;
    if (e != NULL) {
        h->head = e->next;
        if (h->head == NULL)
            h->tail = NULL;
    }
    pthread_mutex_unlock(&shim.mu);
    if (e == NULL) {
        errno = EAGAIN;
        return NULL;
    }
    /* one block, as libxenstore returns it: the caller frees it once */
    size_t lp = strlen(e->path) + 1, lt = strlen(e->token) + 1;
    char **vec = malloc(2 * sizeof(char *) + lp + lt);
    if (vec != NULL) {
        char *s = (char *)(vec + 2);
        memcpy(s, e->path, lp);
        memcpy(s + lp, e->token, lt);
        vec[0] = s;
        vec[1] = s + lp;
        *num = 2;
    }
    free(e->path);
    free(e->token);
    free(e);
    return vec;
}

static int is_target_path(const char *path)
{
    char want[64];
    snprintf(want, sizeof(want), "/local/domain/%d" TARGET_LEAF, shim.domid);
    return strcmp(path, want) == 0;
}

void *xs_read(struct xs_handle *xsh, uint32_t t, const char *path, unsigned int *len)
{
    (void)xsh;
    (void)t;
    pthread_mutex_lock(&shim.mu);
    int64_t target = shim.target;
    int match = shim.fd >= 0 && is_target_path(path);
    pthread_mutex_unlock(&shim.mu);
    if (!match || target < 0) {
        errno = ENOENT;
        return NULL;
    }
    char *val;
    int n = asprintf(&val, "%lld", (long long)target * 4); /* xenstore keeps KiB */
    if (n < 0)
        return NULL;
    if (len)
        *len = (unsigned int)n;
    return val;
}

bool xs_write(struct xs_handle *xsh, uint32_t t, const char *path, const void *data,
              unsigned int len)
{
    (void)xsh;
    (void)t;
    (void)data;
    (void)len;
    /* xenpaging asks qemu to flush its map cache: there is no device model here */
    if (shim.verbose)
        shim_log("xenstore write to %s ignored", path);
    return true;
}

bool xs_is_domain_introduced(struct xs_handle *xsh, unsigned int domid)
{
    (void)xsh;
    if (shim.fd < 0 || shim.dead || (int)domid != shim.domid)
        return false;
    struct mp_buf b;
    struct mp_doc reply;
    shim_req_begin(&b, "audit", 2);
    mp_str(&b, "start");
    mp_int(&b, 0);
    mp_str(&b, "count");
    mp_int(&b, 0);
    if (shim_call(&b, &reply) < 0)
        return !(errno == ESRCH || errno == EIO);
    mp_doc_free(&reply);
    return true;
}
