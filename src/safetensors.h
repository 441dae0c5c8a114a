/* safetensors — reading (mmap, bounds-checked) and writing of .safetensors files, and the
 * set of files that makes up one Hugging Face checkpoint (single file or sharded through
 * model.safetensors.index.json).
 *
 * Owns: parsing and validating headers, dtype conversion to float32, atomic writes.
 * Must not: know about models or configs; every check here is about the file itself.
 *
 * A file is refused, with a one-line reason that names the file (and the tensor where there
 * is one), when its header length runs past the file, the header is not a JSON object,
 * a tensor's offsets are out of range or overlap another's, the tensors leave bytes of the data
 * region uncovered (a hole between them or bytes after the last: the format requires them to
 * tile it exactly), shape x dtype size differs from the byte span, or a dtype is unknown. No
 * input may crash the parser. */
#ifndef PESC_SAFETENSORS_H
#define PESC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define ST_MAX_DIMS 8

typedef enum st_dtype {
    ST_F64, ST_F32, ST_F16, ST_BF16,
    ST_I64, ST_I32, ST_I16, ST_I8,
    ST_U64, ST_U32, ST_U16, ST_U8,
    ST_BOOL, ST_F8_E4M3, ST_F8_E5M2,
    ST_DTYPE_COUNT
} st_dtype;

typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t n_elements;
    size_t nbytes;
    const void *data;            /* points into the file's read-only mapping */
} st_tensor;

typedef struct st_file {
    char *path;
    void *map;                   /* whole file, PROT_READ */
    size_t map_len;
    st_tensor *tensors;          /* in header order */
    int n_tensors;
    char **meta_keys;            /* __metadata__ (string -> string), may be empty */
    char **meta_values;
    int n_meta;
} st_file;

/* Lifetime pair. st_close accepts a zeroed or failed-open struct. */
int st_open(st_file *f, const char *path, pesc_error *err);
void st_close(st_file *f);

const st_tensor *st_find(const st_file *f, const char *name);
const char *st_meta(const st_file *f, const char *key);    /* NULL when absent */

const char *st_dtype_name(st_dtype dtype);                 /* "F32", "BF16", ... */
size_t st_dtype_size(st_dtype dtype);                      /* bytes per element */
int st_dtype_parse(const char *name, st_dtype *out);       /* 0, or -1 when unknown */

/* Converts a tensor to float32 (F32, F16, BF16, F64). Other dtypes are refused with a message
 * naming the tensor. out holds t->n_elements floats. */
int st_to_f32(const st_tensor *t, float *out, pesc_error *err);

/* Writing. Data is copied as given (little-endian host layout). The file appears under its
 * final name only after a complete write (temporary file + fsync + rename), so a full disk
 * never leaves a truncated file behind. meta_keys/values may be NULL when n_meta is 0. */
typedef struct st_write_tensor {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_write_tensor;

int st_write(const char *path, const st_write_tensor *tensors, int n_tensors,
             const char *const *meta_keys, const char *const *meta_values, int n_meta,
             pesc_error *err);

/* st_write for files too large to hold in memory: every tensor whose data is NULL (and whose
 * size is not 0) gets its bytes from fill(ctx, index into tensors, buf, nbytes) just before
 * they are written, one tensor at a time (export streams weights off the device this way).
 * A failing fill fails the write and leaves nothing behind. */
typedef int (*st_fill_fn)(void *ctx, int index, void *buf, size_t nbytes, pesc_error *err);
int st_write_streamed(const char *path, const st_write_tensor *tensors, int n_tensors,
                      st_fill_fn fill, void *fill_ctx, const char *const *meta_keys,
                      const char *const *meta_values, int n_meta, pesc_error *err);

/* A checkpoint directory: model.safetensors, or model.safetensors.index.json and its shards.
 * Every tensor the index names must be in the shard it names, and no tensor may be in two
 * shards (which copy a reader took would depend on the order it opened them in). */
typedef struct st_set_entry {
    char *name;
    int file;                    /* index into files */
} st_set_entry;

typedef struct st_set {
    char *dir;
    st_file *files;
    int n_files;
    st_set_entry *weight_map;    /* the index's, sorted by name; empty for a single file */
    int n_weight_map;
} st_set;

int st_set_open(st_set *s, const char *dir, pesc_error *err);
void st_set_close(st_set *s);

/* Looks a tensor up across the set, in the shard the index names for it (a tensor a shard
 * holds but the index leaves out is found in that shard, as transformers loads it); *file
 * (optional) receives the file that holds it. */
const st_tensor *st_set_find(const st_set *s, const char *name, const st_file **file);
size_t st_set_count(const st_set *s);

#endif
