/* safetensors — see safetensors.h.
 *
 * Layout of a file: u64 little-endian header length N, N bytes of JSON object
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
 * then the data region; offsets count from the start of the data region (byte 8 + N).
 *
 * Everything read from the file is untrusted: each offset and size is checked against the
 * mapping before a pointer into it is formed, and all size arithmetic is overflow-checked. */
#include "safetensors.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"
#define ST_METADATA_KEY "__metadata__"

/* ---------------------------------------------------------------------------------------- */
/* dtypes                                                                                   */

static const struct {
    const char *name;
    size_t size;
} dtype_info[ST_DTYPE_COUNT] = {
    [ST_F64] = {"F64", 8},   [ST_F32] = {"F32", 4},   [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2}, [ST_I64] = {"I64", 8},   [ST_I32] = {"I32", 4},
    [ST_I16] = {"I16", 2},   [ST_I8] = {"I8", 1},     [ST_U64] = {"U64", 8},
    [ST_U32] = {"U32", 4},   [ST_U16] = {"U16", 2},   [ST_U8] = {"U8", 1},
    [ST_BOOL] = {"BOOL", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *st_dtype_name(st_dtype dtype)
{
    assert(dtype >= 0 && dtype < ST_DTYPE_COUNT);
    return dtype_info[dtype].name;
}

size_t st_dtype_size(st_dtype dtype)
{
    assert(dtype >= 0 && dtype < ST_DTYPE_COUNT);
    return dtype_info[dtype].size;
}

int st_dtype_parse(const char *name, st_dtype *out)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_info[i].name) == 0) {
            *out = (st_dtype)i;
            return 0;
        }
    }
    return -1;
}

/* "F64, F32, ..." for the unknown-dtype message. */
static void known_dtypes(char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < ST_DTYPE_COUNT && used < cap; i++) {
        int n = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", dtype_info[i].name);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* little-endian loads and stores (the file is little-endian; data may be unaligned)          */

static uint16_t load_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t load_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t load_u64(const uint8_t *p)
{
    return (uint64_t)load_u32(p) | (uint64_t)load_u32(p + 4) << 32;
}

static void store_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static float float_from_bits(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* ---------------------------------------------------------------------------------------- */
/* error messages                                                                           */

/* Tensor names come from the file: cut them short and replace control characters so that a
 * hostile name can neither push the reason out of the message nor break it over lines. */
static const char *printable(const char *name, char *buf, size_t cap)
{
    size_t n = 0;
    for (; name[n] && n + 4 < cap; n++) {
        unsigned char c = (unsigned char)name[n];
        buf[n] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (name[n]) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

/* "PATH: tensor "NAME": reason" */
static int tensor_fail(pesc_error *err, const char *path, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int tensor_fail(pesc_error *err, const char *path, const char *name, const char *fmt, ...)
{
    char reason[PESC_ERROR_MAX], shown[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return pesc_fail(err, "%s: tensor \"%s\": %s", path, printable(name, shown, sizeof shown),
                     reason);
}

/* ---------------------------------------------------------------------------------------- */
/* reading                                                                                  */

/* The part of the mapping after the header, where data_offsets point. */
typedef struct data_region {
    const uint8_t *start;
    size_t len;
} data_region;

static int map_file(st_file *f, pesc_error *err)
{
    /* O_NONBLOCK: a FIFO is refused below rather than hanging the open */
    int fd = open(f->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return pesc_fail(err, "%s: cannot open: %s", f->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int saved = errno;
        close(fd);
        return pesc_fail(err, "%s: cannot stat: %s", f->path, strerror(saved));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return pesc_fail(err, "%s: not a regular file (expected a .safetensors file)", f->path);
    }
    if (st.st_size < 8) {
        close(fd);
        return pesc_fail(err, "%s: file is %lld bytes, too short for the 8-byte header length; "
                         "it is truncated or not a safetensors file",
                         f->path, (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    close(fd);    /* the mapping keeps the file alive */
    if (map == MAP_FAILED)
        return pesc_fail(err, "%s: cannot map: %s", f->path, strerror(saved));
    f->map = map;
    f->map_len = (size_t)st.st_size;
    return 0;
}

static int parse_header(const st_file *f, json_t **root_out, data_region *region,
                        pesc_error *err)
{
    const uint8_t *bytes = f->map;
    uint64_t header_len = load_u64(bytes);
    if (header_len > f->map_len - 8 && (bytes[0] == '{' || bytes[0] == '[')) {
        const char *base = strrchr(f->path, '/');
        base = base ? base + 1 : f->path;
        return pesc_fail(err, "%s is JSON text, not a safetensors file%s", f->path,
                         strcmp(base, "state.json") == 0 || strcmp(base, "config.json") == 0
                             ? ": give the directory it is in" : "");
    }
    if (header_len > f->map_len - 8)
        return pesc_fail(err, "%s: header length %llu runs past the end of the file (%zu bytes "
                         "follow the length field); the file is truncated or not safetensors",
                         f->path, (unsigned long long)header_len, f->map_len - 8);
    /* json_loadb takes a length, so the header need not be NUL-terminated (it never is). */
    json_error_t jerr;
    json_t *root = json_loadb((const char *)bytes + 8, (size_t)header_len,
                              JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return pesc_fail(err, "%s: header is not valid JSON: %s (line %d, column %d, byte %d of "
                         "the header); the file is corrupt or not safetensors",
                         f->path, jerr.text, jerr.line, jerr.column, jerr.position);
    if (!json_is_object(root)) {
        json_decref(root);
        return pesc_fail(err, "%s: header is JSON but not an object of tensors; the file is "
                         "corrupt or not safetensors", f->path);
    }
    *root_out = root;
    region->start = bytes + 8 + header_len;
    region->len = f->map_len - 8 - (size_t)header_len;
    return 0;
}

static int parse_dtype(const char *path, const char *name, json_t *entry, st_tensor *t,
                       pesc_error *err)
{
    json_t *dtype = json_object_get(entry, "dtype");
    if (!json_is_string(dtype))
        return tensor_fail(err, path, name, "\"dtype\" is missing or not a string");
    if (st_dtype_parse(json_string_value(dtype), &t->dtype) == 0)
        return 0;
    char known[256], shown[64];
    known_dtypes(known, sizeof known);
    return tensor_fail(err, path, name, "unknown dtype \"%s\" (known: %s)",
                       printable(json_string_value(dtype), shown, sizeof shown), known);
}

static int parse_shape(const char *path, const char *name, json_t *entry, st_tensor *t,
                       pesc_error *err)
{
    json_t *shape = json_object_get(entry, "shape");
    if (!json_is_array(shape))
        return tensor_fail(err, path, name, "\"shape\" is missing or not an array");
    size_t ndim = json_array_size(shape);
    if (ndim > ST_MAX_DIMS)
        return tensor_fail(err, path, name, "shape has %zu dimensions; at most %d are supported",
                           ndim, ST_MAX_DIMS);
    size_t count = 1;
    for (size_t i = 0; i < ndim; i++) {
        json_t *dim = json_array_get(shape, i);
        if (!json_is_integer(dim))
            return tensor_fail(err, path, name, "shape dimension %zu is not an integer", i);
        if (json_integer_value(dim) < 0)
            return tensor_fail(err, path, name, "shape dimension %zu is negative (%lld)", i,
                               (long long)json_integer_value(dim));
        t->shape[i] = json_integer_value(dim);
        if (pesc_mul_size(count, (size_t)t->shape[i], &count) != 0)
            return tensor_fail(err, path, name, "shape's element count overflows");
    }
    t->ndim = (int)ndim;
    t->n_elements = count;
    if (pesc_mul_size(count, st_dtype_size(t->dtype), &t->nbytes) != 0)
        return tensor_fail(err, path, name, "shape x dtype size overflows");
    return 0;
}

/* Checks data_offsets against the data region and the shape, then points t->data there. */
static int parse_offsets(const char *path, const char *name, json_t *entry,
                         const data_region *region, st_tensor *t, pesc_error *err)
{
    json_t *offsets = json_object_get(entry, "data_offsets");
    if (!json_is_array(offsets) || json_array_size(offsets) != 2)
        return tensor_fail(err, path, name, "\"data_offsets\" is missing or not a "
                           "[begin, end] pair");
    json_t *begin_json = json_array_get(offsets, 0), *end_json = json_array_get(offsets, 1);
    if (!json_is_integer(begin_json) || !json_is_integer(end_json)
        || json_integer_value(begin_json) < 0 || json_integer_value(end_json) < 0)
        return tensor_fail(err, path, name, "data_offsets are not two non-negative integers");
    uint64_t begin = (uint64_t)json_integer_value(begin_json);
    uint64_t end = (uint64_t)json_integer_value(end_json);
    if (begin > end)
        return tensor_fail(err, path, name, "data_offsets [%llu, %llu] end before they begin",
                           (unsigned long long)begin, (unsigned long long)end);
    if (end > region->len)
        return tensor_fail(err, path, name, "data_offsets [%llu, %llu] run past the data "
                           "region (%zu bytes); the file is truncated or corrupt",
                           (unsigned long long)begin, (unsigned long long)end, region->len);
    if (end - begin != t->nbytes)
        return tensor_fail(err, path, name, "shape needs %zu bytes (%zu elements of %s) but "
                           "data_offsets span %llu", t->nbytes, t->n_elements,
                           st_dtype_name(t->dtype), (unsigned long long)(end - begin));
    t->data = region->start + begin;
    return 0;
}

static int parse_tensor(const char *path, const char *name, json_t *entry,
                        const data_region *region, st_tensor *t, pesc_error *err)
{
    if (!json_is_object(entry))
        return tensor_fail(err, path, name, "entry is not a JSON object (expected "
                           "{\"dtype\", \"shape\", \"data_offsets\"})");
    t->name = xstrdup(name);
    if (parse_dtype(path, name, entry, t, err) != 0 || parse_shape(path, name, entry, t, err) != 0)
        return -1;
    return parse_offsets(path, name, entry, region, t, err);
}

static int parse_metadata(st_file *f, json_t *meta, pesc_error *err)
{
    if (!json_is_object(meta))
        return pesc_fail(err, "%s: " ST_METADATA_KEY " is not an object of strings", f->path);
    size_t n = json_object_size(meta);
    f->meta_keys = xcalloc(n, sizeof *f->meta_keys);
    f->meta_values = xcalloc(n, sizeof *f->meta_values);
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        char shown[128];
        if (!json_is_string(value))
            return pesc_fail(err, "%s: " ST_METADATA_KEY " entry \"%s\" is not a string",
                             f->path, printable(key, shown, sizeof shown));
        f->meta_keys[f->n_meta] = xstrdup(key);
        f->meta_values[f->n_meta] = xstrdup(json_string_value(value));
        f->n_meta++;
    }
    return 0;
}

static int parse_entries(st_file *f, json_t *root, const data_region *region, pesc_error *err)
{
    f->tensors = xcalloc(json_object_size(root), sizeof *f->tensors);
    const char *key;
    json_t *value;
    /* jansson iterates objects in insertion order, so tensors stay in header order. */
    json_object_foreach(root, key, value) {
        if (strcmp(key, ST_METADATA_KEY) == 0) {
            if (parse_metadata(f, value, err) != 0)
                return -1;
            continue;
        }
        /* Counted before parsing so that st_close frees a half-parsed tensor's name. */
        st_tensor *t = &f->tensors[f->n_tensors++];
        if (parse_tensor(f->path, key, value, region, t, err) != 0)
            return -1;
    }
    return 0;
}

typedef struct byte_span {
    size_t begin, end;
    int tensor;
} byte_span;

static int compare_spans(const void *a, const void *b)
{
    const byte_span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* Bytes [begin, end) of the data region that no tensor covers: "before tensor X", "after the
 * last tensor X", or in a file without tensors. */
static int hole_fail(pesc_error *err, const st_file *f, const data_region *region, size_t begin,
                     size_t end, const char *where, const char *neighbour)
{
    char shown[128], context[160] = "";
    if (neighbour)
        snprintf(context, sizeof context, " (%s tensor \"%s\")", where,
                 printable(neighbour, shown, sizeof shown));
    return pesc_fail(err, "%s: bytes [%zu, %zu) of the data region%s are not part of any tensor "
                     "(the data region starts at byte %zu, right after the header): the file is "
                     "corrupt or was written by a broken tool; re-download or re-export it",
                     f->path, begin, end, context,
                     (size_t)(region->start - (const uint8_t *)f->map));
}

/* The tensors must tile the data region exactly, as the format requires and the reference reader
 * checks: two tensors sharing bytes mean a corrupt header, and a hole or trailing bytes mean
 * offsets that count from somewhere else (bytes inserted after the header would otherwise load
 * with every weight shifted). Empty tensors occupy no bytes and are left out. */
static int check_tiling(const st_file *f, const data_region *region, pesc_error *err)
{
    byte_span *spans = xcalloc((size_t)f->n_tensors, sizeof *spans);
    int n = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        if (t->nbytes == 0)
            continue;
        size_t begin = (size_t)((const uint8_t *)t->data - region->start);
        spans[n++] = (byte_span){begin, begin + t->nbytes, i};
    }
    qsort(spans, (size_t)n, sizeof *spans, compare_spans);
    /* Spans [0, i) tile [0, covered), so span i-1 is the one that reaches `covered`. */
    size_t covered = 0;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const char *name = f->tensors[spans[i].tensor].name;
        if (spans[i].begin < covered) {
            char other[128];
            rc = tensor_fail(err, f->path, name,
                             "bytes [%zu, %zu) overlap tensor \"%s\"; the header is corrupt",
                             spans[i].begin, spans[i].end,
                             printable(f->tensors[spans[i - 1].tensor].name, other,
                                       sizeof other));
        } else if (spans[i].begin > covered) {
            rc = hole_fail(err, f, region, covered, spans[i].begin, "before", name);
        }
        covered = spans[i].end;
    }
    if (rc == 0 && covered != region->len)
        rc = hole_fail(err, f, region, covered, region->len, "after the last",
                       n ? f->tensors[spans[n - 1].tensor].name : NULL);
    free(spans);
    return rc;
}

int st_open(st_file *f, const char *path, pesc_error *err)
{
    memset(f, 0, sizeof *f);
    f->path = xstrdup(path);
    json_t *root = NULL;
    data_region region;
    int rc = map_file(f, err);
    if (rc == 0)
        rc = parse_header(f, &root, &region, err);
    if (rc == 0)
        rc = parse_entries(f, root, &region, err);
    if (rc == 0)
        rc = check_tiling(f, &region, err);
    json_decref(root);
    if (rc != 0)
        st_close(f);
    return rc;
}

void st_close(st_file *f)
{
    for (int i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->tensors);
    free(f->meta_keys);
    free(f->meta_values);
    free(f->path);
    if (f->map)
        munmap(f->map, f->map_len);
    memset(f, 0, sizeof *f);
}

/* Linear searches: a checkpoint has at most a few thousand tensors, looked up once each. */
const st_tensor *st_find(const st_file *f, const char *name)
{
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

const char *st_meta(const st_file *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_values[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* conversion to float32                                                                    */

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    if (exponent == 0) {
        /* zero or subnormal: mantissa * 2^-24, exact in float32 */
        float magnitude = (float)mantissa * 0x1p-24f;
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 0x1f)    /* inf or nan; the nan payload is kept */
        return float_from_bits(sign | 0x7f800000u | mantissa << 13);
    return float_from_bits(sign | (exponent + 127 - 15) << 23 | mantissa << 13);
}

int st_to_f32(const st_tensor *t, float *out, pesc_error *err)
{
    const uint8_t *p = t->data;
    size_t n = t->n_elements;
    switch (t->dtype) {
    case ST_F32:
        for (size_t i = 0; i < n; i++)
            out[i] = float_from_bits(load_u32(p + 4 * i));
        return 0;
    case ST_F16:
        for (size_t i = 0; i < n; i++)
            out[i] = f16_to_f32(load_u16(p + 2 * i));
        return 0;
    case ST_BF16:    /* bfloat16 is the top half of a float32 */
        for (size_t i = 0; i < n; i++)
            out[i] = float_from_bits((uint32_t)load_u16(p + 2 * i) << 16);
        return 0;
    case ST_F64:
        for (size_t i = 0; i < n; i++) {
            uint64_t bits = load_u64(p + 8 * i);
            double d;
            memcpy(&d, &bits, sizeof d);
            out[i] = (float)d;
        }
        return 0;
    default: {
        char shown[128];
        return pesc_fail(err, "tensor \"%s\": dtype %s cannot be converted to float32 (only F32, "
                         "F16, BF16 and F64 can)", printable(t->name, shown, sizeof shown),
                         st_dtype_name(t->dtype));
    }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* writing                                                                                  */

static int write_tensor_size(const char *path, const st_write_tensor *t, size_t *nbytes,
                             pesc_error *err)
{
    if (t->dtype < 0 || t->dtype >= ST_DTYPE_COUNT)
        return tensor_fail(err, path, t->name, "invalid dtype %d", (int)t->dtype);
    if (t->ndim < 0 || t->ndim > ST_MAX_DIMS)
        return tensor_fail(err, path, t->name, "%d dimensions; 0 to %d are supported", t->ndim,
                           ST_MAX_DIMS);
    size_t count = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0)
            return tensor_fail(err, path, t->name, "dimension %d is negative", i);
        if (pesc_mul_size(count, (size_t)t->shape[i], &count) != 0)
            return tensor_fail(err, path, t->name, "element count overflows");
    }
    if (pesc_mul_size(count, st_dtype_size(t->dtype), nbytes) != 0)
        return tensor_fail(err, path, t->name, "byte size overflows");
    return 0;
}

static json_t *shape_json(const st_write_tensor *t)
{
    json_t *shape = json_array();
    for (int i = 0; i < t->ndim; i++)
        json_array_append_new(shape, json_integer(t->shape[i]));
    return shape;
}

static int add_metadata(const char *path, json_t *root, const char *const *keys,
                        const char *const *values, int n, pesc_error *err)
{
    json_t *meta = json_object();
    json_object_set_new(root, ST_METADATA_KEY, meta);    /* first, as the reference writes it */
    for (int i = 0; i < n; i++) {
        json_t *value = json_string(values[i]);    /* NULL unless valid UTF-8 */
        if (!value || json_object_set_new(meta, keys[i], value) != 0)
            return pesc_fail(err, "%s: metadata entry \"%s\" is not valid UTF-8", path, keys[i]);
    }
    return 0;
}

/* Adds one tensor entry at *offset and advances it. */
static int add_tensor(const char *path, json_t *root, const st_write_tensor *t, size_t *offset,
                      size_t *nbytes, pesc_error *err)
{
    if (write_tensor_size(path, t, nbytes, err) != 0)
        return -1;
    if (strcmp(t->name, ST_METADATA_KEY) == 0)
        return tensor_fail(err, path, t->name, "name is reserved for the file's metadata");
    if (json_object_get(root, t->name))
        return tensor_fail(err, path, t->name, "name is used by two tensors");
    if (*nbytes > (size_t)INT64_MAX - *offset)
        return tensor_fail(err, path, t->name, "data offsets overflow");
    json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", st_dtype_name(t->dtype),
                              "shape", shape_json(t), "data_offsets",
                              (json_int_t)*offset, (json_int_t)(*offset + *nbytes));
    if (!entry || json_object_set_new(root, t->name, entry) != 0)
        return tensor_fail(err, path, t->name, "name is not valid UTF-8");
    *offset += *nbytes;
    return 0;
}

/* Builds length field + JSON header padded with spaces to a multiple of 8 bytes (so that the
 * data region starts aligned, as the reference implementation does). sizes[i] receives each
 * tensor's byte count. */
static int build_header(const char *path, const st_write_tensor *tensors, int n_tensors,
                        const char *const *meta_keys, const char *const *meta_values, int n_meta,
                        uint8_t **out, size_t *out_len, size_t *sizes, pesc_error *err)
{
    json_t *root = json_object();
    int rc = n_meta > 0 ? add_metadata(path, root, meta_keys, meta_values, n_meta, err) : 0;
    size_t offset = 0;
    for (int i = 0; i < n_tensors && rc == 0; i++)
        rc = add_tensor(path, root, &tensors[i], &offset, &sizes[i], err);
    char *text = rc == 0 ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (rc != 0)
        return -1;
    if (!text)
        return pesc_fail(err, "%s: could not encode the header", path);
    size_t text_len = strlen(text), padded = (text_len + 7) / 8 * 8;
    uint8_t *buf = xmalloc(8 + padded);
    store_u64(buf, padded);
    memcpy(buf + 8, text, text_len);
    memset(buf + 8 + text_len, ' ', padded - text_len);
    free(text);
    *out = buf;
    *out_len = 8 + padded;
    return 0;
}

static int write_all(int fd, const void *buf, size_t len, const char *path, pesc_error *err)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t done = write(fd, p, len);
        if (done < 0 && errno == EINTR)
            continue;
        if (done <= 0) {
            int error = done < 0 ? errno : ENOSPC;
            return pesc_fail(err, "%s: write failed: %s; nothing was written under this "
                             "name%s", path, strerror(error), pesc_write_fix(error));
        }
        p += done;
        len -= (size_t)done;
    }
    return 0;
}

static int write_temp(const char *path, const char *temp, const uint8_t *header,
                      size_t header_len, const st_write_tensor *tensors, const size_t *sizes,
                      int n_tensors, st_fill_fn fill, void *fill_ctx, pesc_error *err)
{
    int fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return pesc_fail(err, "%s: cannot create %s: %s", path, temp, strerror(errno));
    int rc = write_all(fd, header, header_len, path, err);
    size_t staging_len = 0;
    for (int i = 0; i < n_tensors; i++)
        if (!tensors[i].data && sizes[i] > staging_len)
            staging_len = sizes[i];
    void *staging = staging_len ? xmalloc(staging_len) : NULL;
    for (int i = 0; i < n_tensors && rc == 0; i++) {
        const void *data = tensors[i].data;
        if (!data && sizes[i] > 0) {
            rc = fill(fill_ctx, i, staging, sizes[i], err);
            data = staging;
        }
        if (rc == 0)
            rc = write_all(fd, data, sizes[i], path, err);
    }
    free(staging);
    /* Without fsync a crash after rename could leave the final name pointing at a hole. */
    if (rc == 0 && fsync(fd) != 0)
        rc = pesc_fail(err, "%s: fsync failed: %s", path, strerror(errno));
    if (close(fd) != 0 && rc == 0)
        rc = pesc_fail(err, "%s: close failed: %s", path, strerror(errno));
    return rc;
}

/* Makes the rename itself durable. Best effort: some filesystems refuse fsync on directories. */
static void sync_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t len = !slash ? 1 : slash == path ? 1 : (size_t)(slash - path);
    char *dir = xmalloc(len + 1);
    memcpy(dir, slash ? path : ".", len);
    dir[len] = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

int st_write(const char *path, const st_write_tensor *tensors, int n_tensors,
             const char *const *meta_keys, const char *const *meta_values, int n_meta,
             pesc_error *err)
{
    return st_write_streamed(path, tensors, n_tensors, NULL, NULL, meta_keys, meta_values,
                             n_meta, err);
}

int st_write_streamed(const char *path, const st_write_tensor *tensors, int n_tensors,
                      st_fill_fn fill, void *fill_ctx, const char *const *meta_keys,
                      const char *const *meta_values, int n_meta, pesc_error *err)
{
    size_t *sizes = xcalloc((size_t)n_tensors, sizeof *sizes);
    uint8_t *header = NULL;
    size_t header_len = 0;
    if (build_header(path, tensors, n_tensors, meta_keys, meta_values, n_meta, &header,
                     &header_len, sizes, err) != 0) {
        free(sizes);
        return -1;
    }
    for (int i = 0; i < n_tensors; i++)
        assert(tensors[i].data || fill || sizes[i] == 0);
    char temp[4096];
    int rc = 0;
    if ((size_t)snprintf(temp, sizeof temp, "%s.tmp.%ld", path, (long)getpid()) >= sizeof temp)
        rc = pesc_fail(err, "%s: path is too long", path);
    if (rc == 0)
        rc = write_temp(path, temp, header, header_len, tensors, sizes, n_tensors, fill,
                        fill_ctx, err);
    if (rc == 0 && rename(temp, path) != 0)
        rc = pesc_fail(err, "%s: cannot rename %s into place: %s", path, temp, strerror(errno));
    if (rc == 0)
        sync_parent(path);
    else
        unlink(temp);
    free(header);
    free(sizes);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* checkpoint directories                                                                   */

static int open_single(st_set *s, const char *path, pesc_error *err)
{
    s->files = xcalloc(1, sizeof *s->files);
    if (st_open(&s->files[0], path, err) != 0)
        return -1;
    s->n_files = 1;
    return 0;
}

/* A shard name is a file inside the model directory, never a path that could leave it. */
static int check_shard_name(const char *index, const char *tensor, json_t *shard,
                            pesc_error *err)
{
    char shown[128], shown_shard[128];
    printable(tensor, shown, sizeof shown);
    if (!json_is_string(shard))
        return pesc_fail(err, "%s: weight_map entry \"%s\" is not a string (expected a shard "
                         "file name)", index, shown);
    const char *name = json_string_value(shard);
    if (name[0] == '\0' || strchr(name, '/') || strstr(name, ".."))
        return pesc_fail(err, "%s: tensor \"%s\" names shard \"%s\", which is not a plain file "
                         "name in the model directory; refusing it", index, shown,
                         printable(name, shown_shard, sizeof shown_shard));
    return 0;
}

/* Index of the open file for shard `name`, opening it on first use; -1 on error. */
static int shard_file(st_set *s, const char *index, const char **shard_names, const char *name,
                      pesc_error *err)
{
    for (int i = 0; i < s->n_files; i++)
        if (strcmp(shard_names[i], name) == 0)
            return i;
    char *path = pesc_path_join(s->dir, name);
    int rc = st_open(&s->files[s->n_files], path, err);
    free(path);
    if (rc != 0)
        return pesc_fail_prefix(err, "%s", index);    /* the shard's message, after the index */
    shard_names[s->n_files] = name;
    return s->n_files++;
}

static int compare_entries(const void *a, const void *b)
{
    const st_set_entry *x = a, *y = b;
    return strcmp(x->name, y->name);
}

/* The file name of a shard, for messages (the set's files are opened as dir/name). */
static const char *shard_shown(const st_file *f)
{
    const char *slash = strrchr(f->path, '/');
    return slash ? slash + 1 : f->path;
}

/* A tensor in two shards is read from one of them by chance of order (transformers takes the
 * last shard it loads): the two copies may differ, so the set is refused. */
static int check_shared_names(const st_set *s, const char *index, pesc_error *err)
{
    size_t n = 0;
    for (int i = 0; i < s->n_files; i++)
        n += (size_t)s->files[i].n_tensors;
    st_set_entry *all = xcalloc(n, sizeof *all);
    n = 0;
    for (int i = 0; i < s->n_files; i++)
        for (int t = 0; t < s->files[i].n_tensors; t++)
            all[n++] = (st_set_entry){s->files[i].tensors[t].name, i};
    qsort(all, n, sizeof *all, compare_entries);
    int rc = 0;
    for (size_t i = 1; i < n && rc == 0; i++) {
        if (strcmp(all[i - 1].name, all[i].name) != 0)
            continue;
        char shown[128];
        rc = pesc_fail(err, "%s: tensor \"%s\" is in two shards, %s and %s (index and shards "
                       "are out of sync; re-download the model)", index,
                       printable(all[i].name, shown, sizeof shown),
                       shard_shown(&s->files[all[i - 1].file]),
                       shard_shown(&s->files[all[i].file]));
    }
    free(all);
    return rc;
}

static int open_shards(st_set *s, const char *index, json_t *weight_map, pesc_error *err)
{
    size_t n = json_object_size(weight_map);
    if (n == 0)
        return pesc_fail(err, "%s: weight_map names no tensors", index);
    s->files = xcalloc(n, sizeof *s->files);    /* at most one shard per tensor */
    s->weight_map = xcalloc(n, sizeof *s->weight_map);
    const char **shard_names = xcalloc(n, sizeof *shard_names);
    const char *tensor;
    json_t *shard;
    int rc = 0;
    json_object_foreach(weight_map, tensor, shard) {
        int k;
        if (check_shard_name(index, tensor, shard, err) != 0
            || (k = shard_file(s, index, shard_names, json_string_value(shard), err)) < 0) {
            rc = -1;
            break;
        }
        if (!st_find(&s->files[k], tensor)) {
            char shown[128];
            rc = pesc_fail(err, "%s: tensor \"%s\" is listed in shard %s, which does not contain "
                           "it (index and shards are out of sync; re-download the model)",
                           index, printable(tensor, shown, sizeof shown), shard_names[k]);
            break;
        }
        s->weight_map[s->n_weight_map++] = (st_set_entry){xstrdup(tensor), k};
    }
    free(shard_names);
    if (rc != 0)
        return rc;
    /* JSON_REJECT_DUPLICATES keeps the names unique, so bsearch finds the one entry. */
    qsort(s->weight_map, (size_t)s->n_weight_map, sizeof *s->weight_map, compare_entries);
    return check_shared_names(s, index, err);
}

static int open_index(st_set *s, const char *index, pesc_error *err)
{
    char *text;
    size_t len;
    if (pesc_read_file(index, &text, &len, err) != 0)
        return -1;
    json_error_t jerr;
    const char *body = pesc_skip_bom(text, &len);   /* before len is read */
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return pesc_fail(err, "%s: not valid JSON: %s (line %d, column %d)", index, jerr.text,
                         jerr.line, jerr.column);
    json_t *weight_map = json_object_get(root, "weight_map");
    int rc = json_is_object(weight_map)
                 ? open_shards(s, index, weight_map, err)
                 : pesc_fail(err, "%s: \"weight_map\" is missing or not an object "
                             "{tensor: shard file}", index);
    json_decref(root);
    return rc;
}

int st_set_open(st_set *s, const char *dir, pesc_error *err)
{
    memset(s, 0, sizeof *s);
    s->dir = xstrdup(dir);
    char *index = pesc_path_join(dir, ST_INDEX_NAME);
    char *single = pesc_path_join(dir, ST_SINGLE_NAME);
    int rc;
    if (access(index, F_OK) == 0)
        rc = open_index(s, index, err);
    else if (access(single, F_OK) == 0)
        rc = open_single(s, single, err);
    else
        rc = pesc_fail(err, "%s: no " ST_SINGLE_NAME " or " ST_INDEX_NAME " (is this a Hugging "
                       "Face model directory?)", dir);
    free(index);
    free(single);
    if (rc != 0)
        st_set_close(s);
    return rc;
}

void st_set_close(st_set *s)
{
    for (int i = 0; i < s->n_files; i++)
        st_close(&s->files[i]);
    for (int i = 0; i < s->n_weight_map; i++)
        free(s->weight_map[i].name);
    free(s->weight_map);
    free(s->files);
    free(s->dir);
    memset(s, 0, sizeof *s);
}

const st_tensor *st_set_find(const st_set *s, const char *name, const st_file **file)
{
    st_set_entry key = {(char *)name, 0};
    const st_set_entry *named =
        s->n_weight_map ? bsearch(&key, s->weight_map, (size_t)s->n_weight_map,
                                  sizeof *s->weight_map, compare_entries)
                        : NULL;
    if (named) {
        if (file)
            *file = &s->files[named->file];
        return st_find(&s->files[named->file], name);    /* st_set_open made sure it is there */
    }
    /* Not in the index (or no index): open_shards refused names in two shards, so the first
     * file that holds it is the only one. */
    for (int i = 0; i < s->n_files; i++) {
        const st_tensor *t = st_find(&s->files[i], name);
        if (t) {
            if (file)
                *file = &s->files[i];
            return t;
        }
    }
    return NULL;
}

size_t st_set_count(const st_set *s)
{
    size_t count = 0;
    for (int i = 0; i < s->n_files; i++)
        count += (size_t)s->files[i].n_tensors;
    return count;
}
