/* test_safetensors — round trips through st_write / st_open for every convertible dtype,
 * sharded checkpoint directories, a table of corrupt files that must each be refused with a
 * message naming the file, and a deterministic mutation fuzz loop.
 *
 * Everything is written under a fresh mkdtemp directory in $TMPDIR (or /tmp), never into the
 * source or build tree, and removed at the end. Exit status 0 = pass, 1 = fail. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE    /* nftw */
#endif
#include <dirent.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "check.h"

/* ---------------------------------------------------------------------------------------- */
/* helpers                                                                                  */

static char *path_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *path_printf(const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return xstrdup(buf);
}

static void write_bytes(const char *path, const void *bytes, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(bytes, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "test setup: cannot write %s\n", path);
        exit(1);
    }
}

static void write_text(const char *path, const char *text)
{
    write_bytes(path, text, strlen(text));
}

static void make_dir(const char *path)
{
    if (mkdir(path, 0755) != 0) {
        fprintf(stderr, "test setup: cannot create %s\n", path);
        exit(1);
    }
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st, (void)type, (void)ftw;
    return remove(path);
}

static void remove_tree(const char *dir)
{
    if (nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "warning: could not fully remove %s\n", dir);
}

static int file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Any "*.tmp.*" left in dir means a failed or finished write did not clean up. */
static int temp_files_in(const char *dir)
{
    DIR *d = opendir(dir);
    int count = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        count += strstr(e->d_name, ".tmp.") != NULL;
    if (d)
        closedir(d);
    return count;
}

static uint32_t float_bits(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

/* A refusal must name the file and fit on one line. */
static void check_refusal(const char *label, const char *msg, const char *path, const char *expect)
{
    if (getenv("PESC_TEST_VERBOSE"))    /* to read the messages a user would see */
        printf("%-45s %s\n", label, msg);
    CHECK(strstr(msg, path) != NULL, "%s: message does not name %s: %s", label, path, msg);
    CHECK(strchr(msg, '\n') == NULL, "%s: message spans lines: %s", label, msg);
    CHECK(!expect || strstr(msg, expect), "%s: message lacks \"%s\": %s", label, expect, msg);
}

static int is_convertible(st_dtype dtype)
{
    return dtype == ST_F32 || dtype == ST_F16 || dtype == ST_BF16 || dtype == ST_F64;
}

/* ---------------------------------------------------------------------------------------- */
/* round trip                                                                               */

/* float16 / bfloat16 inputs with the float32 bit pattern each must convert to. */
static const uint16_t f16_in[] = {0x0000, 0x8000, 0x3C00, 0xC000, 0x7BFF, 0x0400, 0x0001,
                                  0x03FF, 0x8001, 0x7C00, 0xFC00, 0x7E00, 0x3555};
static const uint32_t f16_out[] = {
    0x00000000, 0x80000000, 0x3F800000, 0xC0000000, 0x477FE000, /* 65504 (largest) */
    0x38800000, /* 2^-14, smallest normal */ 0x33800000,        /* 2^-24, smallest subnormal */
    0x387FC000, /* largest subnormal */ 0xB3800000, 0x7F800000, 0xFF800000, 0x7FC00000,
    0x3EAAA000};
static const uint16_t bf16_in[] = {0x3F80, 0xC040, 0x7F80, 0xFF80, 0x7FC0,
                                   0x0001, 0x4049, 0x8000, 0x0080};
static const uint32_t bf16_out[] = {0x3F800000, 0xC0400000, 0x7F800000, 0xFF800000, 0x7FC00000,
                                    0x00010000, 0x40490000, 0x80000000, 0x00800000};
static const float f32_in[] = {1.5f, -0.25f, 3.4e38f, 1e-45f};
static const double f64_in[] = {1.5, -1e300, 1e-50, 0.1, 65504.0};
static const uint32_t f64_out[] = {0x3FC00000, 0xFF800000, 0x00000000, 0x3DCCCCCD, 0x477FE000};
static const int32_t i32_in[] = {1, -2, 3};
static const uint8_t u8_in[] = {1, 2, 3, 4, 5};
static const float scalar_in = 42.0f;

/* 13 F16 values (26 bytes) come first, so the F32 tensor after them starts unaligned. */
static const st_write_tensor roundtrip_tensors[] = {
    {"f16", ST_F16, 1, {13}, f16_in},
    {"f32", ST_F32, 2, {2, 2}, f32_in},
    {"bf16", ST_BF16, 2, {3, 3}, bf16_in},
    {"u8", ST_U8, 1, {5}, u8_in},
    {"f64", ST_F64, 1, {5}, f64_in},
    {"i32", ST_I32, 1, {3}, i32_in},
    {"scalar", ST_F32, 0, {0}, &scalar_in},
    {"empty", ST_F32, 2, {0, 4}, NULL},
};
#define N_ROUNDTRIP ((int)(sizeof roundtrip_tensors / sizeof roundtrip_tensors[0]))

static void check_bits(const st_tensor *t, const uint32_t *expect, size_t n)
{
    float out[16];
    pesc_error err = {{0}};
    CHECK(t->n_elements == n, "%s: %zu elements, expected %zu", t->name, t->n_elements, n);
    if (t->n_elements != n || n > 16)
        return;
    CHECK(st_to_f32(t, out, &err) == 0, "%s: st_to_f32: %s", t->name, err.msg);
    for (size_t i = 0; i < n; i++)
        CHECK(float_bits(out[i]) == expect[i], "%s[%zu]: got 0x%08x, expected 0x%08x", t->name,
              i, float_bits(out[i]), expect[i]);
}

static void check_roundtrip_values(const st_file *f)
{
    uint32_t f32_out[4];
    for (int i = 0; i < 4; i++)
        f32_out[i] = float_bits(f32_in[i]);
    uint32_t scalar_out = float_bits(scalar_in);
    check_bits(st_find(f, "f16"), f16_out, 13);
    check_bits(st_find(f, "bf16"), bf16_out, 9);
    check_bits(st_find(f, "f32"), f32_out, 4);
    check_bits(st_find(f, "f64"), f64_out, 5);
    check_bits(st_find(f, "scalar"), &scalar_out, 1);
    check_bits(st_find(f, "empty"), NULL, 0);

    const st_tensor *u8 = st_find(f, "u8"), *i32 = st_find(f, "i32");
    CHECK(memcmp(u8->data, u8_in, sizeof u8_in) == 0, "u8 bytes differ");
    CHECK(memcmp(i32->data, i32_in, sizeof i32_in) == 0, "i32 bytes differ");
    float out[3];
    pesc_error err = {{0}};
    CHECK(st_to_f32(i32, out, &err) == -1, "I32 must not convert to float32");
    CHECK(strstr(err.msg, "i32") && strstr(err.msg, "I32"), "I32 refusal message: %s", err.msg);
}

static void check_roundtrip_layout(const st_file *f)
{
    CHECK(f->n_tensors == N_ROUNDTRIP, "%d tensors, expected %d", f->n_tensors, N_ROUNDTRIP);
    for (int i = 0; i < f->n_tensors && i < N_ROUNDTRIP; i++) {
        const st_tensor *t = &f->tensors[i];
        const st_write_tensor *w = &roundtrip_tensors[i];
        CHECK(strcmp(t->name, w->name) == 0, "tensor %d is %s, expected %s", i, t->name, w->name);
        CHECK(t->dtype == w->dtype && t->ndim == w->ndim, "%s: dtype or ndim differs", t->name);
        for (int d = 0; d < w->ndim; d++)
            CHECK(t->shape[d] == w->shape[d], "%s: dim %d differs", t->name, d);
        /* data_offsets are contiguous in the order given */
        if (i > 0)
            CHECK((const uint8_t *)t->data == (const uint8_t *)f->tensors[i - 1].data
                                                  + f->tensors[i - 1].nbytes,
                  "%s does not follow %s", t->name, f->tensors[i - 1].name);
    }
    uint64_t header_len;
    memcpy(&header_len, f->map, 8);
    const char *header = (const char *)f->map + 8;
    CHECK(header_len % 8 == 0, "header length %llu is not a multiple of 8",
          (unsigned long long)header_len);
    CHECK(header[0] == '{', "header does not start with '{'");
    CHECK(strncmp(header, "{\"__metadata__\":", 16) == 0, "metadata is not written first");
    const st_tensor *last = &f->tensors[f->n_tensors - 1];
    CHECK((const uint8_t *)last->data + last->nbytes == (const uint8_t *)f->map + f->map_len,
          "file has bytes after the last tensor");
}

static void test_roundtrip(const char *dir)
{
    char *path = pesc_path_join(dir, "roundtrip.safetensors");
    const char *keys[] = {"format", "note"}, *values[] = {"pt", "h\xc3\xa9llo"};
    pesc_error err = {{0}};
    CHECK(st_write(path, roundtrip_tensors, N_ROUNDTRIP, keys, values, 2, &err) == 0,
          "st_write: %s", err.msg);
    CHECK(temp_files_in(dir) == 0, "temporary file left behind after a write");
    st_file f;
    if (st_open(&f, path, &err) != 0) {
        CHECK(0, "st_open of a written file: %s", err.msg);
        free(path);
        return;
    }
    check_roundtrip_layout(&f);
    check_roundtrip_values(&f);
    CHECK(f.n_meta == 2, "%d metadata entries", f.n_meta);
    CHECK(st_meta(&f, "format") && strcmp(st_meta(&f, "format"), "pt") == 0, "meta format");
    CHECK(st_meta(&f, "note") && strcmp(st_meta(&f, "note"), values[1]) == 0, "meta note");
    CHECK(st_meta(&f, "absent") == NULL, "absent metadata found");
    CHECK(st_find(&f, "absent") == NULL, "absent tensor found");
    st_close(&f);
    st_close(&f);    /* a closed struct is zeroed, so closing twice is harmless */
    free(path);
}

/* Tensors without data get their bytes from the fill callback, as if they had been passed;
 * ctx holds each tensor's first value (NULL: the callback fails). */
static int fill_ramp(void *ctx, int index, void *buf, size_t nbytes, pesc_error *err)
{
    const float *starts = ctx;
    if (!starts)
        return pesc_fail(err, "the device is gone");
    float *out = buf;
    for (size_t i = 0; i < nbytes / sizeof *out; i++)
        out[i] = starts[index] + (float)i;
    return 0;
}

static void test_streamed(const char *dir)
{
    static const float starts[3] = {1, 0, 100}, direct[3] = {7, 8, 9};
    char *path = pesc_path_join(dir, "streamed.safetensors");
    const st_write_tensor t[3] = {{"small", ST_F32, 1, {3}, NULL},
                                  {"direct", ST_F32, 1, {3}, direct},
                                  {"large", ST_F32, 2, {4, 5}, NULL}};
    pesc_error err = {{0}};
    CHECK(st_write_streamed(path, t, 3, fill_ramp, (void *)starts, NULL, NULL, 0, &err) == 0,
          "streamed write: %s", err.msg);
    st_file f;
    if (st_open(&f, path, &err) == 0) {
        const st_tensor *small = st_find(&f, "small"), *large = st_find(&f, "large");
        const st_tensor *plain = st_find(&f, "direct");
        float a[3], b[20], c[3];
        CHECK(small && large && plain && st_to_f32(small, a, &err) == 0 &&
              st_to_f32(large, b, &err) == 0 && st_to_f32(plain, c, &err) == 0,
              "streamed tensors missing");
        CHECK(a[0] == 1 && a[2] == 3 && b[0] == 100 && b[19] == 119 && c[1] == 8,
              "streamed values differ: %g %g %g %g %g", a[0], a[2], b[0], b[19], c[1]);
        st_close(&f);
    } else {
        CHECK(0, "st_open of a streamed file: %s", err.msg);
    }
    /* a fill that fails leaves nothing behind: neither the file nor a temporary */
    char *failed = pesc_path_join(dir, "failed.safetensors");
    CHECK(st_write_streamed(failed, t, 3, fill_ramp, NULL, NULL, NULL, 0, &err) == -1 &&
          strstr(err.msg, "device is gone"),
          "failing fill: %s", err.msg);
    CHECK(!file_exists(failed) && temp_files_in(dir) == 0, "a failed fill left a file behind");
    free(failed);
    free(path);
}

/* ---------------------------------------------------------------------------------------- */
/* writer refusals                                                                          */

static void expect_write_refused(const char *label, const char *path,
                                 const st_write_tensor *tensors, int n, const char *expect)
{
    pesc_error err = {{0}};
    CHECK(st_write(path, tensors, n, NULL, NULL, 0, &err) == -1, "%s: write accepted", label);
    check_refusal(label, err.msg, path, expect);
    CHECK(!file_exists(path), "%s: %s exists after a refused write", label, path);
}

/* RLIMIT_FSIZE stands in for a full disk: writes past it fail with EFBIG. */
static void test_full_disk(const char *dir, const char *path)
{
    static uint8_t big[64 * 1024];
    st_write_tensor t = {"big", ST_U8, 1, {sizeof big}, big};
    struct rlimit saved, small;
    if (getrlimit(RLIMIT_FSIZE, &saved) != 0 || saved.rlim_max < 4096) {
        fprintf(stderr, "note: cannot lower RLIMIT_FSIZE, skipping the full-disk check\n");
        return;
    }
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    small = saved;
    small.rlim_cur = 4096;
    setrlimit(RLIMIT_FSIZE, &small);
    pesc_error err = {{0}};
    int rc = st_write(path, &t, 1, NULL, NULL, 0, &err);
    setrlimit(RLIMIT_FSIZE, &saved);
    signal(SIGXFSZ, old_handler);
    CHECK(rc == -1, "write past the file size limit succeeded");
    check_refusal("full disk", err.msg, path, "write failed");
    CHECK(!file_exists(path), "full disk: %s exists", path);
    CHECK(temp_files_in(dir) == 0, "full disk: temporary file left behind");
}

static void test_write_refusals(const char *dir)
{
    static const float data[4];
    char *path = pesc_path_join(dir, "refused.safetensors");
    const st_write_tensor twice[] = {{"a", ST_F32, 1, {2}, data}, {"a", ST_F32, 1, {2}, data}};
    const st_write_tensor reserved[] = {{"__metadata__", ST_F32, 1, {2}, data}};
    const st_write_tensor negative[] = {{"a", ST_F32, 1, {-2}, data}};
    const st_write_tensor too_many[] = {{"a", ST_F32, 9, {1, 1, 1, 1, 1, 1, 1, 1}, data}};
    const st_write_tensor bad_utf8[] = {{"\xff\xfe", ST_F32, 1, {2}, data}};
    expect_write_refused("duplicate name", path, twice, 2, "two tensors");
    expect_write_refused("reserved name", path, reserved, 1, "reserved");
    expect_write_refused("negative dim", path, negative, 1, "negative");
    expect_write_refused("too many dims", path, too_many, 1, "dimensions");
    expect_write_refused("invalid UTF-8 name", path, bad_utf8, 1, "UTF-8");
    char *missing = pesc_path_join(dir, "no-such-dir/x.safetensors");
    expect_write_refused("missing directory", missing, negative + 0, 0, NULL);
    test_full_disk(dir, path);
    free(missing);
    free(path);
}

/* ---------------------------------------------------------------------------------------- */
/* checkpoint directories                                                                   */

static void write_two(const char *path, const char *a, const char *b, const float *values)
{
    const st_write_tensor t[] = {{a, ST_F32, 1, {2}, values}, {b, ST_F32, 1, {2}, values + 2}};
    pesc_error err = {{0}};
    if (st_write(path, t, b ? 2 : 1, NULL, NULL, 0, &err) != 0) {
        fprintf(stderr, "test setup: %s\n", err.msg);
        exit(1);
    }
}

static void test_single_dir(const char *root)
{
    static const float v[4] = {1, 2, 3, 4};
    char *dir = pesc_path_join(root, "single"), *file = pesc_path_join(dir, "model.safetensors");
    make_dir(dir);
    write_two(file, "x", "y", v);
    st_set s;
    pesc_error err = {{0}};
    CHECK(st_set_open(&s, dir, &err) == 0, "single-file set: %s", err.msg);
    const st_file *holder = NULL;
    const st_tensor *y = st_set_find(&s, "y", &holder);
    CHECK(st_set_count(&s) == 2 && s.n_files == 1, "single-file set counts");
    CHECK(y && holder && strcmp(holder->path, file) == 0, "y not found in %s", file);
    CHECK(st_set_find(&s, "z", NULL) == NULL, "z found");
    st_set_close(&s);
    free(file);
    free(dir);
}

static void test_sharded_dir(const char *root)
{
    static const float v[4] = {1, 2, 3, 4};
    char *dir = pesc_path_join(root, "sharded");
    make_dir(dir);
    char *s1 = pesc_path_join(dir, "model-00001-of-00002.safetensors");
    char *s2 = pesc_path_join(dir, "model-00002-of-00002.safetensors");
    char *index = pesc_path_join(dir, "model.safetensors.index.json");
    write_two(s1, "a", "b", v);
    write_two(s2, "c", "extra", v);
    write_text(index, "{\"metadata\": {\"total_size\": 32}, \"weight_map\": {"
                      "\"a\": \"model-00001-of-00002.safetensors\", "
                      "\"c\": \"model-00002-of-00002.safetensors\", "
                      "\"b\": \"model-00001-of-00002.safetensors\"}}");
    st_set s;
    pesc_error err = {{0}};
    CHECK(st_set_open(&s, dir, &err) == 0, "sharded set: %s", err.msg);
    CHECK(s.n_files == 2, "%d shard files open, expected 2", s.n_files);
    CHECK(st_set_count(&s) == 4, "%zu tensors in the set, expected 4", st_set_count(&s));
    const st_file *holder = NULL;
    const st_tensor *c = st_set_find(&s, "c", &holder);
    float out[2] = {0};
    CHECK(c && holder && strcmp(holder->path, s2) == 0, "c not found in shard 2");
    CHECK(c && st_to_f32(c, out, &err) == 0 && out[0] == 1 && out[1] == 2, "c values");
    CHECK(st_set_find(&s, "b", &holder) && strcmp(holder->path, s1) == 0, "b not in shard 1");
    /* a tensor the index leaves out is still found in the one shard that holds it */
    CHECK(st_set_find(&s, "extra", &holder) && strcmp(holder->path, s2) == 0,
          "extra not in shard 2");
    CHECK(st_set_find(&s, "absent", NULL) == NULL, "absent tensor found");
    st_set_close(&s);
    free(index);
    free(s2);
    free(s1);
    free(dir);
}

/* shards for expect_set_refused: s1.safetensors holds a and b, or is corrupt; SECOND_SHARD
 * adds s2.safetensors holding b and c. */
enum { GOOD_SHARD = 0, CORRUPT_SHARD = 1, SECOND_SHARD = 2 };

/* An index with one defect; the message must name `expect_path` (index or shard). */
static void expect_set_refused(const char *root, const char *label, const char *index_json,
                               int shards, const char *expect)
{
    static const float v[4] = {1, 2, 3, 4};
    static int counter;
    int corrupt_shard = shards & CORRUPT_SHARD;
    char *dir = path_printf("%s/badset-%d", root, counter++);
    make_dir(dir);
    char *shard = pesc_path_join(dir, "s1.safetensors");
    char *index = pesc_path_join(dir, "model.safetensors.index.json");
    if (corrupt_shard)
        write_bytes(shard, "\x02\0\0\0\0\0\0\0{]", 10);
    else
        write_two(shard, "a", "b", v);
    if (shards & SECOND_SHARD) {
        char *second = pesc_path_join(dir, "s2.safetensors");
        write_two(second, "b", "c", v);
        free(second);
    }
    write_text(index, index_json);
    st_set s;
    pesc_error err = {{0}};
    CHECK(st_set_open(&s, dir, &err) == -1, "%s: set accepted", label);
    check_refusal(label, err.msg, index, expect);
    CHECK(!corrupt_shard || strstr(err.msg, shard), "%s: message does not name %s: %s", label,
          shard, err.msg);
    CHECK(s.n_files == 0 && s.files == NULL, "%s: failed set is not zeroed", label);
    st_set_close(&s);
    free(index);
    free(shard);
    free(dir);
}

static void test_bad_sets(const char *root)
{
    expect_set_refused(root, "tensor missing from its shard",
                       "{\"weight_map\": {\"a\": \"s1.safetensors\", \"d\": \"s1.safetensors\"}}",
                       0, "\"d\"");
    expect_set_refused(root, "'../' shard",
                       "{\"weight_map\": {\"a\": \"../s1.safetensors\"}}", 0, "../s1");
    expect_set_refused(root, "shard in a subdirectory",
                       "{\"weight_map\": {\"a\": \"sub/s1.safetensors\"}}", 0, "sub/s1");
    expect_set_refused(root, "absolute shard", "{\"weight_map\": {\"a\": \"/etc/passwd\"}}", 0,
                       "/etc/passwd");
    expect_set_refused(root, "shard not a string", "{\"weight_map\": {\"a\": 3}}", 0, "\"a\"");
    expect_set_refused(root, "missing shard file",
                       "{\"weight_map\": {\"a\": \"s9.safetensors\"}}", 0, "s9.safetensors");
    expect_set_refused(root, "index not JSON", "{\"weight_map\": ", 0, "JSON");
    expect_set_refused(root, "index without weight_map", "{\"metadata\": {}}", 0, "weight_map");
    expect_set_refused(root, "empty weight_map", "{\"weight_map\": {}}", 0, "weight_map");
    expect_set_refused(root, "duplicate index key",
                       "{\"weight_map\": {\"a\": \"s1.safetensors\", \"a\": \"s1.safetensors\"}}",
                       0, "duplicate");
    expect_set_refused(root, "corrupt shard", "{\"weight_map\": {\"a\": \"s1.safetensors\"}}",
                       CORRUPT_SHARD, "JSON");
    /* b is in both shards: which copy a reader takes must not depend on the order of files. */
    expect_set_refused(root, "tensor in two shards",
                       "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\", "
                       "\"c\": \"s2.safetensors\"}}",
                       SECOND_SHARD, "tensor \"b\" is in two shards, s1.safetensors and "
                       "s2.safetensors");
    expect_set_refused(root, "tensor in two shards, not in the index",
                       "{\"weight_map\": {\"a\": \"s1.safetensors\", \"c\": \"s2.safetensors\"}}",
                       SECOND_SHARD, "\"b\" is in two shards");

    char *empty = pesc_path_join(root, "not-a-model");
    make_dir(empty);
    st_set s;
    pesc_error err = {{0}};
    CHECK(st_set_open(&s, empty, &err) == -1, "empty directory accepted");
    check_refusal("empty directory", err.msg, empty, "Hugging Face");
    free(empty);
}

/* ---------------------------------------------------------------------------------------- */
/* corrupt files                                                                            */

typedef struct corrupt_case {
    const char *label;
    const char *header;
    size_t header_bytes;    /* 0: strlen(header) */
    size_t data_len;        /* zero bytes after the header */
    int set_length;         /* use `length` instead of the true header length */
    uint64_t length;
    long file_size;         /* truncate to this many bytes; -1: keep all */
    const char *expect;     /* must appear in the message */
} corrupt_case;

#define ENTRY(dtype, shape, offsets) \
    "{\"dtype\":" dtype ",\"shape\":" shape ",\"data_offsets\":" offsets "}"
#define ONE(entry) "{\"weight_a\":" entry "}"
#define VALID ONE(ENTRY("\"F32\"", "[2]", "[0,8]"))

static const corrupt_case corrupt_cases[] = {
    {"empty file", "", 0, 0, 0, 0, 0, "too short"},
    {"file shorter than 8 bytes", "", 0, 0, 0, 0, 3, "too short"},
    {"header length past EOF", "{}", 0, 0, 1, 1000, -1, "runs past"},
    {"header length 2^64-1", VALID, 0, 8, 1, UINT64_MAX, -1, "runs past"},
    {"truncated inside the header", VALID, 0, 8, 0, 0, 8 + 10, "runs past"},
    {"header length shorter than the JSON", VALID, 0, 8, 1, sizeof VALID - 6, -1, "JSON"},
    {"zero header length", "", 0, 8, 0, 0, -1, "JSON"},
    {"non-JSON header", "hello, world", 0, 0, 0, 0, -1, "not valid JSON"},
    {"JSON array header", "[1,2,3]", 0, 0, 0, 0, -1, "not an object"},
    {"JSON string header", "\"abc\"", 0, 0, 0, 0, -1, "JSON"},
    {"NUL byte inside header", "{\"a\0\":1}", 8, 0, 0, 0, -1, "JSON"},
    {"trailing garbage after JSON", "{} x", 0, 0, 0, 0, -1, "JSON"},
    {"entry not an object", "{\"weight_a\": 5}", 0, 0, 0, 0, -1, "weight_a"},
    {"missing dtype", ONE("{\"shape\":[2],\"data_offsets\":[0,8]}"), 0, 8, 0, 0, -1, "dtype"},
    {"dtype not a string", ONE(ENTRY("3", "[2]", "[0,8]")), 0, 8, 0, 0, -1, "dtype"},
    {"unknown dtype", ONE(ENTRY("\"F33\"", "[2]", "[0,8]")), 0, 8, 0, 0, -1, "BF16"},
    {"missing shape", ONE("{\"dtype\":\"F32\",\"data_offsets\":[0,8]}"), 0, 8, 0, 0, -1, "shape"},
    {"shape not an array", ONE(ENTRY("\"F32\"", "2", "[0,8]")), 0, 8, 0, 0, -1, "shape"},
    {"fractional dim", ONE(ENTRY("\"F32\"", "[2.0]", "[0,8]")), 0, 8, 0, 0, -1, "dimension"},
    {"negative dim", ONE(ENTRY("\"F32\"", "[-2]", "[0,8]")), 0, 8, 0, 0, -1, "negative"},
    {"more than ST_MAX_DIMS dims", ONE(ENTRY("\"F32\"", "[1,1,1,1,1,1,1,1,2]", "[0,8]")), 0, 8,
     0, 0, -1, "at most"},
    {"dims overflow the element count",
     ONE(ENTRY("\"F32\"", "[4294967296,4294967296,4294967296]", "[0,8]")), 0, 8, 0, 0, -1,
     "overflows"},
    {"dims overflow the byte size", ONE(ENTRY("\"F32\"", "[4611686018427387904]", "[0,8]")), 0,
     8, 0, 0, -1, "overflows"},
    {"dim too big for JSON", ONE(ENTRY("\"F32\"", "[99999999999999999999]", "[0,8]")), 0, 8, 0,
     0, -1, "JSON"},
    {"missing data_offsets", ONE("{\"dtype\":\"F32\",\"shape\":[2]}"), 0, 8, 0, 0, -1,
     "data_offsets"},
    {"data_offsets not a pair", ONE(ENTRY("\"F32\"", "[2]", "[0,4,8]")), 0, 8, 0, 0, -1,
     "data_offsets"},
    {"data_offsets not integers", ONE(ENTRY("\"F32\"", "[2]", "[\"0\",\"8\"]")), 0, 8, 0, 0, -1,
     "data_offsets"},
    {"negative data_offsets", ONE(ENTRY("\"F32\"", "[2]", "[-8,0]")), 0, 8, 0, 0, -1,
     "data_offsets"},
    {"data_offsets begin after end", ONE(ENTRY("\"F32\"", "[2]", "[8,0]")), 0, 8, 0, 0, -1,
     "end before"},
    {"data_offsets past the data region", ONE(ENTRY("\"F32\"", "[4]", "[0,16]")), 0, 8, 0, 0,
     -1, "run past"},
    {"data_offsets past the region, truncated data", VALID, 0, 8, 0, 0, 8 + sizeof VALID - 1 + 4,
     "run past"},
    {"shape/bytes mismatch", ONE(ENTRY("\"F32\"", "[3]", "[0,8]")), 0, 8, 0, 0, -1,
     "needs 12 bytes"},
    {"overlapping tensors",
     "{\"weight_a\":" ENTRY("\"F32\"", "[2]", "[0,8]") ",\"weight_b\":" ENTRY("\"F32\"", "[2]",
                                                                              "[4,12]") "}",
     0, 12, 0, 0, -1, "overlap"},
    {"tensor inside another",
     "{\"weight_a\":" ENTRY("\"F32\"", "[4]", "[0,16]") ",\"weight_b\":" ENTRY("\"U8\"", "[2]",
                                                                              "[4,6]") "}",
     0, 16, 0, 0, -1, "overlap"},
    /* The tensors must tile the data region: bytes inserted after the header would otherwise
     * shift every weight without a word. */
    {"bytes after the last tensor", VALID, 0, 12, 0, 0, -1, "bytes [8, 12) of the data region"},
    {"bytes before the first tensor", ONE(ENTRY("\"F32\"", "[2]", "[4,12]")), 0, 12, 0, 0, -1,
     "bytes [0, 4) of the data region (before tensor \"weight_a\") are not part of any tensor"},
    {"hole between two tensors",
     "{\"weight_a\":" ENTRY("\"F32\"", "[2]", "[0,8]") ",\"weight_b\":" ENTRY("\"F32\"", "[2]",
                                                                              "[12,20]") "}",
     0, 20, 0, 0, -1, "bytes [8, 12) of the data region (before tensor \"weight_b\")"},
    {"data bytes but no tensors", "{}", 0, 4, 0, 0, -1, "bytes [0, 4)"},
    {"only an empty tensor, then bytes", ONE(ENTRY("\"F32\"", "[0]", "[0,0]")), 0, 4, 0, 0, -1,
     "not part of any tensor"},
    {"metadata not an object", "{\"__metadata__\": [1]}", 0, 0, 0, 0, -1, "__metadata__"},
    {"metadata value not a string", "{\"__metadata__\": {\"k\": 1}}", 0, 0, 0, 0, -1,
     "__metadata__"},
    {"duplicate tensor names", "{\"weight_a\":" ENTRY("\"F32\"", "[2]", "[0,8]") ",\"weight_a\":"
     ENTRY("\"F32\"", "[2]", "[0,8]") "}", 0, 8, 0, 0, -1, "duplicate"},
    {"duplicate key inside an entry",
     ONE("{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}"), 0, 8, 0,
     0, -1, "duplicate"},
    {"control characters in a name", "{\"bad\\nname\": 5}", 0, 0, 0, 0, -1, "bad?name"},
};

static uint8_t *build_file(const char *header, size_t header_bytes, size_t data_len,
                           int set_length, uint64_t length, size_t *len)
{
    uint64_t field = set_length ? length : header_bytes;
    uint8_t *buf = xcalloc(8 + header_bytes + data_len, 1);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(field >> (8 * i));
    memcpy(buf + 8, header, header_bytes);
    *len = 8 + header_bytes + data_len;
    return buf;
}

static void expect_open_refused(const char *label, const char *path, const char *expect)
{
    st_file f;
    pesc_error err = {{0}};
    CHECK(st_open(&f, path, &err) == -1, "%s: accepted", label);
    check_refusal(label, err.msg, path, expect);
    CHECK(f.map == NULL && f.tensors == NULL && f.path == NULL, "%s: not zeroed", label);
    st_close(&f);
}

/* Files that tile their data region exactly open, however the header is padded: the data
 * starts right after the 8 + N header bytes, trailing spaces in the JSON included, and empty
 * tensors may sit at any offset inside the region. */
static void test_tiled_files(const char *dir)
{
    static const char *const headers[] = {
        "{\"a\":" ENTRY("\"F32\"", "[2]", "[0,8]") ",\"b\":" ENTRY("\"F32\"", "[1]", "[8,12]")
        "}     ",
        "{\"b\":" ENTRY("\"F32\"", "[1]", "[8,12]") ",\"e\":" ENTRY("\"F32\"", "[0]", "[4,4]")
        ",\"a\":" ENTRY("\"F32\"", "[2]", "[0,8]") ",\"z\":" ENTRY("\"U8\"", "[0]", "[12,12]")
        "}",
    };
    static const float values[3] = {1, 2, 3};
    for (int i = 0; i < 2; i++) {
        size_t header_bytes = strlen(headers[i]), len;
        uint8_t *bytes = build_file(headers[i], header_bytes, sizeof values, 0, 0, &len);
        memcpy(bytes + 8 + header_bytes, values, sizeof values);
        char *path = path_printf("%s/tiled-%d.safetensors", dir, i);
        write_bytes(path, bytes, len);
        st_file f;
        pesc_error err = {{0}};
        CHECK(st_open(&f, path, &err) == 0, "tiled file %d refused: %s", i, err.msg);
        const st_tensor *b = st_find(&f, "b");
        float out = 0;
        CHECK(b && b->data == (const uint8_t *)f.map + 8 + header_bytes + 8,
              "tiled file %d: b does not start at byte 8 + N + 8", i);
        CHECK(b && st_to_f32(b, &out, &err) == 0 && out == 3, "tiled file %d: b is %g", i,
              (double)out);
        st_close(&f);
        free(path);
        free(bytes);
    }
}

static void test_corrupt_files(const char *dir)
{
    int n = (int)(sizeof corrupt_cases / sizeof corrupt_cases[0]);
    for (int i = 0; i < n; i++) {
        const corrupt_case *c = &corrupt_cases[i];
        size_t header_bytes = c->header_bytes ? c->header_bytes : strlen(c->header), len;
        uint8_t *bytes = build_file(c->header, header_bytes, c->data_len, c->set_length,
                                    c->length, &len);
        if (c->file_size >= 0 && (size_t)c->file_size < len)
            len = (size_t)c->file_size;
        char *path = path_printf("%s/corrupt-%02d.safetensors", dir, i);
        write_bytes(path, bytes, len);
        expect_open_refused(c->label, path, c->expect);
        free(path);
        free(bytes);
    }

    /* Deep nesting must hit jansson's depth limit, not overflow the stack. */
    size_t depth = 100000;
    char *deep = xmalloc(2 * depth + 1);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    deep[2 * depth] = '\0';
    size_t len;
    uint8_t *bytes = build_file(deep, 2 * depth, 0, 0, 0, &len);
    char *path = pesc_path_join(dir, "deep.safetensors");
    write_bytes(path, bytes, len);
    expect_open_refused("deeply nested header", path, "JSON");
    free(path);
    free(bytes);
    free(deep);

    test_tiled_files(dir);

    path = pesc_path_join(dir, "does-not-exist.safetensors");
    expect_open_refused("missing file", path, "cannot open");
    free(path);
    expect_open_refused("directory", dir, "regular file");
}

/* ---------------------------------------------------------------------------------------- */
/* mutation fuzzing                                                                         */

static uint64_t next_random(uint64_t *state)    /* xorshift64: deterministic across runs */
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

static const char json_chars[] = "{}[]\":,-0123456789eE. \\u";

/* Applies one random edit to buf (len bytes, header of header_len bytes); returns new length. */
static size_t mutate(uint8_t *buf, size_t len, size_t header_len, uint64_t *rng)
{
    uint64_t r = next_random(rng);
    switch (r % 6) {
    case 0:    /* flip a bit inside the header */
        buf[8 + next_random(rng) % header_len] ^= (uint8_t)(1u << (next_random(rng) % 8));
        return len;
    case 1:    /* put a JSON-significant character into the header */
        buf[8 + next_random(rng) % header_len] =
            (uint8_t)json_chars[next_random(rng) % (sizeof json_chars - 1)];
        return len;
    case 2:    /* truncate */
        return (size_t)(next_random(rng) % len);
    case 3: {  /* edit the header length near its true value, or anywhere */
        uint64_t field = (r >> 8) & 1 ? header_len + next_random(rng) % 33 - 16 : next_random(rng);
        for (int i = 0; i < 8; i++)
            buf[i] = (uint8_t)(field >> (8 * i));
        return len;
    }
    case 4:    /* overwrite a digit in the header with another digit: shifts offsets/dims */
        for (size_t tries = 0; tries < 64; tries++) {
            size_t at = 8 + next_random(rng) % header_len;
            if (buf[at] >= '0' && buf[at] <= '9') {
                buf[at] = (uint8_t)('0' + next_random(rng) % 10);
                break;
            }
        }
        return len;
    default:   /* random byte in the data region (the file stays valid), or anywhere */
        if ((r >> 8) & 1 && len > 8 + header_len)
            buf[8 + header_len + next_random(rng) % (len - 8 - header_len)] =
                (uint8_t)next_random(rng);
        else
            buf[next_random(rng) % len] = (uint8_t)next_random(rng);
        return len;
    }
}

/* A file that opened must describe tensors lying inside its mapping that convert cleanly. */
static void check_opened(const st_file *f, int iteration)
{
    const uint8_t *lo = (const uint8_t *)f->map + 8, *hi = (const uint8_t *)f->map + f->map_len;
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        const uint8_t *p = t->data;
        CHECK(p >= lo && p <= hi && t->nbytes <= (size_t)(hi - p),
              "fuzz %d: %s lies outside the mapping", iteration, t->name);
        float *out = xmalloc(t->n_elements * sizeof *out);
        pesc_error err = {{0}};
        int rc = st_to_f32(t, out, &err);
        CHECK((rc == 0) == is_convertible(t->dtype), "fuzz %d: %s conversion rc %d", iteration,
              t->name, rc);
        free(out);
    }
}

static void write_fuzz_base(const char *path)
{
    static const uint16_t halves[6] = {0x3C00, 0x7C00, 0x0001, 0xFE00, 0x8000, 0x4049};
    static const float floats[4] = {1, -2, 3, -4};
    static const double doubles[2] = {1e300, -0.5};
    static const int8_t bytes[3] = {-1, 0, 1};
    const st_write_tensor t[] = {
        {"layers.0.attn.weight", ST_F32, 2, {2, 2}, floats},
        {"layers.0.norm", ST_F16, 1, {3}, halves},
        {"layers.1.norm", ST_BF16, 3, {1, 1, 3}, halves + 3},
        {"head", ST_F64, 1, {2}, doubles},
        {"mask", ST_I8, 1, {3}, bytes},
        {"nothing", ST_F32, 1, {0}, NULL},
    };
    const char *keys[] = {"format"}, *values[] = {"pt"};
    pesc_error err = {{0}};
    if (st_write(path, t, 6, keys, values, 1, &err) != 0) {
        fprintf(stderr, "test setup: %s\n", err.msg);
        exit(1);
    }
}

static void test_fuzz(const char *dir, int iterations)
{
    char *base_path = pesc_path_join(dir, "fuzz-base.safetensors");
    char *path = pesc_path_join(dir, "fuzz.safetensors");
    write_fuzz_base(base_path);
    char *base;
    size_t base_len;
    pesc_error err = {{0}};
    if (pesc_read_file(base_path, &base, &base_len, &err) != 0) {
        CHECK(0, "%s", err.msg);
        return;
    }
    uint64_t header_len;
    memcpy(&header_len, base, 8);
    uint8_t *buf = xmalloc(base_len);
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    int opened = 0, refused = 0;
    for (int i = 0; i < iterations; i++) {
        memcpy(buf, base, base_len);
        size_t len = base_len;
        for (int edits = 1 + (int)(next_random(&rng) % 3); edits > 0 && len > 0; edits--)
            len = mutate(buf, len, (size_t)header_len, &rng);
        write_bytes(path, buf, len);
        st_file f;
        if (st_open(&f, path, &err) == 0) {
            opened++;
            check_opened(&f, i);
            st_close(&f);
        } else {
            refused++;
            check_refusal("fuzz", err.msg, path, NULL);
        }
    }
    printf("fuzz: %d mutated files, %d opened, %d refused\n", iterations, opened, refused);
    CHECK(iterations < 100 || (opened > 0 && refused > 0),
          "fuzz mutations are not exercising both outcomes");
    free(buf);
    free(base);
    free(path);
    free(base_path);
}

/* ---------------------------------------------------------------------------------------- */

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    char *template = path_printf("%s/pesc-st-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(template)) {
        fprintf(stderr, "cannot create a temporary directory from %s\n", template);
        return 1;
    }
    const char *iterations_env = getenv("PESC_FUZZ_ITERATIONS");
    int iterations = iterations_env ? atoi(iterations_env) : 400;

    test_roundtrip(template);
    test_streamed(template);
    test_write_refusals(template);
    test_single_dir(template);
    test_sharded_dir(template);
    test_bad_sets(template);
    test_corrupt_files(template);
    test_fuzz(template, iterations);

    remove_tree(template);
    free(template);
    if (failures) {
        fprintf(stderr, "test_safetensors: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_safetensors: all checks passed\n");
    return 0;
}
