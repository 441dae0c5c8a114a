/* token_store — the token ids and labels of a dataset, kept in a temporary file instead of the
 * heap, so that a dataset of any size loads in bounded memory.
 *
 * The file is made with mkstemp in $TMPDIR (default /tmp) and unlinked at once: nothing is
 * left behind, even after kill -9. Values are appended through a buffer and read back through
 * a read-only shared mapping of everything appended so far (token_store_map); the pages live
 * in the page cache, which the kernel writes back and drops under memory pressure, so they
 * never count as the process's own (anonymous) memory. A full disk is an error that names the
 * directory and says to set TMPDIR.
 *
 * Owns: the file, its write buffer and its mapping. Must not: know what a record is (the
 * dataset keeps where each record starts). */
#ifndef PESC_TOKEN_STORE_H
#define PESC_TOKEN_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct token_store token_store;

/* An empty store in $TMPDIR (or /tmp). An error names the directory and how to fix it. */
token_store *token_store_new(pesc_error *err);
void token_store_delete(token_store *s);

/* Appends n values. A write that fails (disk full, a file size limit) is an error naming the
 * directory; what was appended before stays. */
int token_store_append(token_store *s, const int32_t *values, size_t n, pesc_error *err);

/* Values appended so far; a value's offset is the length before it was appended. */
int64_t token_store_length(const token_store *s);

/* Forgets the values after the first `length` (a load that failed half way). The mapped
 * part must not be cut. */
int token_store_truncate(token_store *s, int64_t length, pesc_error *err);

/* Writes out the buffer and maps every value appended so far: *base (NULL while the store is
 * empty) holds value i at base[i]. The previous mapping is gone: pointers into it must be
 * taken again from the new base. */
int token_store_map(token_store *s, const int32_t **base, pesc_error *err);

#endif
