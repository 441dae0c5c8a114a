/* test_stream — plain, gzip (also two concatenated members) and zstd files read back line by
 * line, byte-identical; truncated and corrupt compressed files refused with the file's name. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "stream.h"
#include "check.h"

static char dir[256];

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        perror(path);
        exit(99);
    }
    fclose(f);
}

/* Lines of varied length, one longer than the reader's 64 KiB chunk, no final newline. */
static char *make_text(size_t *len)
{
    size_t cap = 400000, n = 0;
    char *text = malloc(cap);
    for (int i = 0; i < 2000; i++)
        n += (size_t)snprintf(text + n, cap - n, "{\"line\": %d, \"text\": \"%.*s\"}\n", i,
                              i % 97, "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"
                                      "0123456789abcdefghijklmnopqrstuvwxyz0123456789");
    memset(text + n, 'x', 70000);
    n += 70000;
    text[n] = '\0';
    *len = n;
    return text;
}

static void read_back(const char *path, const char *text, size_t len, const char *kind)
{
    pesc_error err;
    pesc_stream *s = stream_open(path, &err);
    CHECK(s != NULL, "%s: %s", path, err.msg);
    if (!s)
        return;
    CHECK(strcmp(stream_kind(s), kind) == 0, "%s detected as %s", path, stream_kind(s));
    size_t pos = 0;
    long lines = 0, line_no = 0;
    const char *line;
    ssize_t n;
    int same = 1;
    while ((n = stream_getline(s, &line, &line_no, &err)) >= 0) {
        lines++;
        same = same && pos + (size_t)n <= len && memcmp(text + pos, line, (size_t)n) == 0;
        pos += (size_t)n + 1;
    }
    CHECK(n == -1, "%s: %s", path, err.msg);
    CHECK(same && pos == len + 1 && lines == 2001 && line_no == 2001,
          "%s: content differs (%ld lines)", path, lines);
    stream_close(s);
}

static void expect_refusal(const char *path, const char *needle)
{
    pesc_error err = {{0}};
    pesc_stream *s = stream_open(path, &err);
    ssize_t n = 0;
    const char *line;
    while (s && (n = stream_getline(s, &line, NULL, &err)) >= 0)
        ;
    CHECK(!s || n == -2, "%s was read without complaint", path);
    CHECK(strstr(err.msg, path) && strstr(err.msg, needle), "message \"%s\" lacks %s or %s",
          err.msg, path, needle);
    stream_close(s);
}

int main(void)
{
    snprintf(dir, sizeof dir, "%s/pesc-stream.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir))
        return 99;
    size_t len, zlen;
    char *text = make_text(&len);
    char path[512], path2[512];

    snprintf(path, sizeof path, "%s/plain.jsonl", dir);
    write_file(path, text, len);
    read_back(path, text, len, "plain");

    /* gzip, as two concatenated members */
    uLong bound = compressBound(len) + 64;
    unsigned char *gz = malloc(2 * bound);
    size_t half = len / 2, total = 0;
    for (int part = 0; part < 2; part++) {
        z_stream z = {0};
        deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
        z.next_in = (unsigned char *)text + (part ? half : 0);
        z.avail_in = (uInt)(part ? len - half : half);
        z.next_out = gz + total;
        z.avail_out = (uInt)(2 * bound - total);
        deflate(&z, Z_FINISH);
        total += z.total_out;
        deflateEnd(&z);
    }
    snprintf(path, sizeof path, "%s/data.jsonl.gz", dir);
    write_file(path, gz, total);
    read_back(path, text, len, "gzip");
    snprintf(path2, sizeof path2, "%s/cut.gz", dir);
    write_file(path2, gz, total - 40);
    expect_refusal(path2, "ends early");
    gz[total / 3] ^= 0x55;
    gz[total / 3 + 1] ^= 0xaa;
    snprintf(path2, sizeof path2, "%s/bad.gz", dir);
    write_file(path2, gz, total);
    expect_refusal(path2, "gzip");

    void *zs = malloc(ZSTD_compressBound(len));
    zlen = ZSTD_compress(zs, ZSTD_compressBound(len), text, len, 3);
    snprintf(path, sizeof path, "%s/data.jsonl.zst", dir);
    write_file(path, zs, zlen);
    read_back(path, text, len, "zstd");
    snprintf(path2, sizeof path2, "%s/cut.zst", dir);
    write_file(path2, zs, zlen - 30);
    expect_refusal(path2, "zstd");

    snprintf(path2, sizeof path2, "%s/missing.jsonl", dir);
    expect_refusal(path2, "No such file");

    free(text); free(gz); free(zs);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        printf("note: could not remove %s\n", dir);
    printf("%d failure%s\n", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
