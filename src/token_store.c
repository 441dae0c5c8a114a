/* token_store — see token_store.h. */
#include "token_store.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* 1 MiB: large enough that a write costs little per token, small next to any model. */
enum { BUFFER_VALUES = 1 << 18 };

struct token_store {
    int fd;
    char *dir;                   /* where the file was made, for messages */
    int64_t written;             /* values in the file */
    size_t buffered;             /* values in buffer, after the written ones */
    void *map;                   /* (mapped_bytes) read-only view of the file's start */
    size_t mapped_bytes;
    int32_t buffer[BUFFER_VALUES];
};

static const char *temp_dir(void)
{
    const char *dir = getenv("TMPDIR");
    return dir && *dir ? dir : "/tmp";
}

token_store *token_store_new(pesc_error *err)
{
    const char *dir = temp_dir();
    char *path = pesc_path_join(dir, "pesc-tokens-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) {
        pesc_fail(err, "cannot create the token store in %s (%s): set TMPDIR to a writable "
                  "directory with room for the tokenized data", dir, strerror(errno));
        free(path);
        return NULL;
    }
    /* unlinked at once: the open descriptor keeps the file alive, and nothing is left behind
     * however the process ends */
    unlink(path);
    free(path);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    token_store *s = xmalloc(sizeof *s);
    s->fd = fd;
    s->dir = xstrdup(dir);
    s->written = 0;
    s->buffered = 0;
    s->map = NULL;
    s->mapped_bytes = 0;
    return s;
}

void token_store_delete(token_store *s)
{
    if (!s)
        return;
    if (s->map)
        munmap(s->map, s->mapped_bytes);
    close(s->fd);
    free(s->dir);
    free(s);
}

/* One line for the user: where, how much, why, and what to do. */
static int write_failed(const token_store *s, int64_t bytes, int error, pesc_error *err)
{
    const char *fix = error == EFBIG
        ? "set TMPDIR to a file system that takes larger files, or raise the file size "
          "limit (ulimit -f)"
        : "set TMPDIR to a directory with more free space";
    return pesc_fail(err, "the token store in %s cannot grow past %.1f MB (%s): %s", s->dir,
                     (double)bytes / 1e6, strerror(error), fix);
}

/* Writes n values at the file's end. */
static int write_values(token_store *s, const int32_t *values, size_t n, pesc_error *err)
{
    const char *p = (const char *)values;
    size_t left = n * sizeof *values;
    off_t at = (off_t)s->written * (off_t)sizeof *values;
    while (left > 0) {
        ssize_t w = pwrite(s->fd, p, left, at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)   /* a regular file that takes nothing is as full as one that refuses */
            return write_failed(s, (int64_t)at, w < 0 ? errno : ENOSPC, err);
        p += w;
        at += w;
        left -= (size_t)w;
    }
    s->written += (int64_t)n;
    return 0;
}

static int flush(token_store *s, pesc_error *err)
{
    if (s->buffered == 0)
        return 0;
    int rc = write_values(s, s->buffer, s->buffered, err);
    if (rc == 0)
        s->buffered = 0;
    return rc;
}

int token_store_append(token_store *s, const int32_t *values, size_t n, pesc_error *err)
{
    if (n == 0)
        return 0;
    if (s->buffered + n > BUFFER_VALUES && flush(s, err) != 0)
        return -1;
    if (n > BUFFER_VALUES)   /* a very long record goes straight to the file */
        return write_values(s, values, n, err);
    memcpy(s->buffer + s->buffered, values, n * sizeof *values);
    s->buffered += n;
    return 0;
}

int64_t token_store_length(const token_store *s)
{
    return s->written + (int64_t)s->buffered;
}

int token_store_truncate(token_store *s, int64_t length, pesc_error *err)
{
    assert(length >= 0 && length <= token_store_length(s));
    assert((size_t)length * sizeof(int32_t) >= s->mapped_bytes);
    if (length >= s->written) {
        s->buffered = (size_t)(length - s->written);
        return 0;
    }
    s->buffered = 0;
    if (ftruncate(s->fd, (off_t)length * (off_t)sizeof(int32_t)) != 0)
        return pesc_fail(err, "the token store in %s: cannot cut it back (%s)", s->dir,
                         strerror(errno));
    s->written = length;
    return 0;
}

int token_store_map(token_store *s, const int32_t **base, pesc_error *err)
{
    if (flush(s, err) != 0)
        return -1;
    size_t bytes;
    if ((uint64_t)s->written > SIZE_MAX / sizeof(int32_t))
        return pesc_fail(err, "the token store in %s holds more than this system can map",
                         s->dir);
    bytes = (size_t)s->written * sizeof(int32_t);
    if (bytes != s->mapped_bytes) {
        void *map = NULL;
        if (bytes > 0) {
            map = mmap(NULL, bytes, PROT_READ, MAP_SHARED, s->fd, 0);
            if (map == MAP_FAILED)
                return pesc_fail(err, "cannot map the token store in %s (%.1f MB: %s)", s->dir,
                                 (double)bytes / 1e6, strerror(errno));
        }
        if (s->map)
            munmap(s->map, s->mapped_bytes);
        s->map = map;
        s->mapped_bytes = bytes;
    }
    *base = s->map;
    return 0;
}
