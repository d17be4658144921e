/* xtl.c: the libxentoollog.so.1 face: a stdio logger with a minimum level. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct shim_logger {
    FILE *f;
    int min_level;
};

void *xtl_createlogger_stdiostream(FILE *f, int min_level, unsigned flags)
{
    (void)flags;
    struct shim_logger *l = calloc(1, sizeof(*l));
    if (l != NULL) {
        l->f = f;
        l->min_level = min_level;
    }
    return l;
}

void xtl_log(void *logger, int level, int errnoval, const char *context, const char *format, ...)
{
    struct shim_logger *l = logger;
    if (l == NULL || level < l->min_level)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, format);
    vsnprintf(msg, sizeof(msg), format, ap);
    va_end(ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    if (errnoval >= 0 && errnoval != 0)
        fprintf(l->f, "%s: %s: %s\n", context ? context : "xentoollog", msg, strerror(errnoval));
    else
        fprintf(l->f, "%s: %s\n", context ? context : "xentoollog", msg);
    fflush(l->f);
}

void xtl_logger_destroy(void *logger)
{
    free(logger);
}
