/* stream — reading a file front to back with bounded memory, decompressing .gz (zlib) and
 * .zst (libzstd) on the fly, chosen by the file's magic bytes, not its name.
 *
 * Owns: the file descriptor and the decompressor. Must not: parse what it reads. */
#ifndef PESC_STREAM_H
#define PESC_STREAM_H

#include <stddef.h>
#include <sys/types.h>

#include "util.h"

typedef struct pesc_stream pesc_stream;

/* "-" reads standard input. */
pesc_stream *stream_open(const char *path, pesc_error *err);
/* As stream_open, its messages calling the file name (a temporary copy's path is no name to
 * show). */
pesc_stream *stream_open_as(const char *path, const char *name, pesc_error *err);
void stream_close(pesc_stream *s);

/* Up to n decompressed bytes; returns the count, 0 at the end, -1 on error (corrupt or
 * truncated compressed data, read failure), with a message naming the file. */
ssize_t stream_read(pesc_stream *s, void *buf, size_t n, pesc_error *err);

/* The next line without its '\n' (a final line without one counts), NUL-terminated, in a
 * buffer the stream owns until the next call. Returns its length, -1 at the end, -2 on error.
 * *line_no (optional) receives the 1-based line number. */
ssize_t stream_getline(pesc_stream *s, const char **line, long *line_no, pesc_error *err);

/* What the stream decompresses: "plain", "gzip" or "zstd". */
const char *stream_kind(const pesc_stream *s);
const char *stream_path(const pesc_stream *s);

#endif
