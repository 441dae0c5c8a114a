/* stream — see stream.h. */
#include "stream.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

enum { KIND_PLAIN, KIND_GZIP, KIND_ZSTD };
#define CHUNK (64 * 1024)

struct pesc_stream {
    char *path;
    int fd;
    int kind;
    unsigned char in[CHUNK];     /* raw bytes from the file */
    size_t in_len, in_pos;
    int in_eof;
    z_stream z;
    ZSTD_DStream *zstd;
    size_t zstd_pending;         /* ZSTD_decompressStream's hint: 0 = at a frame boundary */
    int gzip_done;               /* the last gzip member ended cleanly */
    char out[CHUNK];             /* decompressed bytes for getline */
    size_t out_len, out_pos;
    char *line;
    size_t line_cap;
    long line_no;
};

static int fill_input(pesc_stream *s, pesc_error *err)
{
    if (s->in_pos < s->in_len || s->in_eof)
        return 0;
    ssize_t got;
    do
        got = read(s->fd, s->in, sizeof s->in);
    while (got < 0 && errno == EINTR);
    if (got < 0)
        return pesc_fail(err, "%s: %s", s->path, strerror(errno));
    s->in_len = (size_t)got;
    s->in_pos = 0;
    s->in_eof = got == 0;
    return 0;
}

pesc_stream *stream_open(const char *path, pesc_error *err)
{
    return stream_open_as(path, strcmp(path, "-") == 0 ? "standard input" : path, err);
}

pesc_stream *stream_open_as(const char *path, const char *name, pesc_error *err)
{
    int fd = strcmp(path, "-") == 0 ? dup(0) : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        pesc_fail(err, "%s: %s", pesc_path_shown(name), strerror(errno));
        return NULL;
    }
    if (strcmp(path, "-") != 0 && pesc_refuse_device(fd, name, err) != 0) {
        close(fd);
        return NULL;
    }
    pesc_stream *s = xcalloc(1, sizeof *s);
    s->path = xstrdup(name);
    s->fd = fd;
    if (fill_input(s, err) != 0) {
        stream_close(s);
        return NULL;
    }
    const unsigned char *m = s->in;
    if (s->in_len >= 2 && m[0] == 0x1f && m[1] == 0x8b) {
        s->kind = KIND_GZIP;
        if (inflateInit2(&s->z, 15 + 32) != Z_OK) {   /* +32: gzip header detection */
            pesc_fail(err, "%s: cannot start the gzip decoder", s->path);
            stream_close(s);
            return NULL;
        }
    } else if (s->in_len >= 4 && m[0] == 0x28 && m[1] == 0xb5 && m[2] == 0x2f && m[3] == 0xfd) {
        s->kind = KIND_ZSTD;
        s->zstd = ZSTD_createDStream();
        if (!s->zstd || ZSTD_isError(ZSTD_initDStream(s->zstd))) {
            pesc_fail(err, "%s: cannot start the zstd decoder", s->path);
            stream_close(s);
            return NULL;
        }
    }
    /* a name that says compressed over data that is not: a download cut at its first bytes,
     * or a file renamed; read as text it would pass for records */
    size_t n = strlen(name);
    int gz = n > 3 && strcmp(name + n - 3, ".gz") == 0, zst = n > 4 && strcmp(name + n - 4, ".zst") == 0;
    if ((gz && s->kind != KIND_GZIP) || (zst && s->kind != KIND_ZSTD)) {
        pesc_fail(err, "%s: named %s, but it is not %s data (a download cut short, or a file "
                  "renamed? decompress or rename it)", s->path, gz ? ".gz" : ".zst",
                  gz ? "gzip" : "zstd");
        stream_close(s);
        return NULL;
    }
    return s;
}

void stream_close(pesc_stream *s)
{
    if (!s)
        return;
    if (s->kind == KIND_GZIP)
        inflateEnd(&s->z);
    ZSTD_freeDStream(s->zstd);
    if (s->fd >= 0)
        close(s->fd);
    free(s->line);
    free(s->path);
    free(s);
}

static ssize_t read_plain(pesc_stream *s, unsigned char *buf, size_t n, pesc_error *err)
{
    if (fill_input(s, err) != 0)
        return -1;
    size_t take = s->in_len - s->in_pos < n ? s->in_len - s->in_pos : n;
    memcpy(buf, s->in + s->in_pos, take);
    s->in_pos += take;
    return (ssize_t)take;
}

/* Concatenated members (as `cat a.gz b.gz` makes) are read as one stream. */
static ssize_t read_gzip(pesc_stream *s, unsigned char *buf, size_t n, pesc_error *err)
{
    for (;;) {
        if (fill_input(s, err) != 0)
            return -1;
        if (s->in_pos == s->in_len) {
            if (!s->gzip_done)
                return pesc_fail(err, "%s: the gzip data ends early (truncated download?)",
                                 s->path);
            return 0;
        }
        if (s->gzip_done) {   /* another member follows */
            inflateReset(&s->z);
            s->gzip_done = 0;
        }
        s->z.next_in = s->in + s->in_pos;
        s->z.avail_in = (uInt)(s->in_len - s->in_pos);
        s->z.next_out = buf;
        s->z.avail_out = (uInt)n;
        int rc = inflate(&s->z, Z_NO_FLUSH);
        s->in_pos = s->in_len - s->z.avail_in;
        if (rc == Z_STREAM_END)
            s->gzip_done = 1;
        else if (rc != Z_OK && rc != Z_BUF_ERROR)
            return pesc_fail(err, "%s: corrupt gzip data (%s)", s->path,
                             s->z.msg ? s->z.msg : "inflate failed");
        size_t produced = n - s->z.avail_out;
        if (produced > 0)
            return (ssize_t)produced;
    }
}

static ssize_t read_zstd(pesc_stream *s, unsigned char *buf, size_t n, pesc_error *err)
{
    for (;;) {
        if (fill_input(s, err) != 0)
            return -1;
        if (s->in_pos == s->in_len && s->zstd_pending == 0)
            return 0;
        ZSTD_inBuffer in = {s->in, s->in_len, s->in_pos};
        ZSTD_outBuffer out = {buf, n, 0};
        size_t rc = ZSTD_decompressStream(s->zstd, &out, &in);
        if (ZSTD_isError(rc))
            return pesc_fail(err, "%s: corrupt zstd data (%s)", s->path, ZSTD_getErrorName(rc));
        s->in_pos = in.pos;
        s->zstd_pending = rc;
        if (out.pos > 0)
            return (ssize_t)out.pos;
        if (s->in_pos == s->in_len && s->in_eof && rc != 0)
            return pesc_fail(err, "%s: the zstd data ends early (truncated download?)", s->path);
    }
}

ssize_t stream_read(pesc_stream *s, void *buf, size_t n, pesc_error *err)
{
    if (n == 0)
        return 0;
    switch (s->kind) {
    case KIND_GZIP: return read_gzip(s, buf, n, err);
    case KIND_ZSTD: return read_zstd(s, buf, n, err);
    default: return read_plain(s, buf, n, err);
    }
}

ssize_t stream_getline(pesc_stream *s, const char **line, long *line_no, pesc_error *err)
{
    size_t len = 0;
    for (;;) {
        if (s->out_pos == s->out_len) {
            ssize_t got = stream_read(s, s->out, sizeof s->out, err);
            if (got < 0)
                return -2;
            if (got == 0) {
                if (len == 0)
                    return -1;
                break;   /* a last line without '\n' */
            }
            s->out_len = (size_t)got;
            s->out_pos = 0;
        }
        const char *start = s->out + s->out_pos;
        size_t avail = s->out_len - s->out_pos;
        const char *nl = memchr(start, '\n', avail);
        size_t take = nl ? (size_t)(nl - start) : avail;
        if (len + take + 1 > s->line_cap) {
            s->line_cap = (len + take + 1) * 2;
            s->line = xrealloc(s->line, s->line_cap);
        }
        memcpy(s->line + len, start, take);
        len += take;
        s->out_pos += take + (nl ? 1 : 0);
        if (nl)
            break;
    }
    if (!s->line)
        s->line = xcalloc(1, s->line_cap = 1);
    s->line[len] = '\0';
    s->line_no++;
    if (line_no)
        *line_no = s->line_no;
    *line = s->line;
    return (ssize_t)len;
}

const char *stream_kind(const pesc_stream *s)
{
    return s->kind == KIND_GZIP ? "gzip" : s->kind == KIND_ZSTD ? "zstd" : "plain";
}

const char *stream_path(const pesc_stream *s) { return s->path; }
