/* test_fetch — the fetch engine against tests/httpd (started by tests/fetch.sh, which also
 * writes the server's files; see there). Every check looks at real outcomes: the bytes on
 * disk, and the server's log of what went over the wire (ranges, tokens, bytes sent).
 *
 * Environment from fetch.sh: PESC_TEST_ROOT (server files), PESC_TEST_LOG (server log),
 * PESC_TEST_PORT_A, PESC_TEST_PORT_B, PESC_TEST_TOKEN. Without them the test is skipped. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fetch.h"
#include "fetch_sha256.h"
#include "stream.h"
#include "util.h"

static int failures;
static const char *root, *log_path, *token;
static int port_a, port_b;
static char base_dir[256];

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (!ok)
        failures++;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return xstrdup(buf);
}

static int exists(const char *path)
{
    return access(path, F_OK) == 0;
}

static int same_file(const char *a, const char *b)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int same = pesc_read_file(a, &x, &nx, NULL) == 0 && pesc_read_file(b, &y, &ny, NULL) == 0 &&
               nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static char *server_file(const char *name)
{
    return fmt("%s/files/%s", root, name);
}

static char *url_a(const char *target)
{
    return fmt("http://127.0.0.1:%d%s", port_a, target);
}

/* A fresh cache directory per scenario. */
static char *new_cache(const char *name)
{
    return fmt("%s/%s", base_dir, name);
}

static fetcher *new_fetcher_retrying(const char *cache, const char *with_token, int jobs,
                                     long stall_s, int retries)
{
    char *endpoint = fmt("http://127.0.0.1:%d/hub", port_a);
    fetch_options o = {.cache_dir = cache, .hf_endpoint = endpoint,
                       .token = with_token ? with_token : "", .jobs = jobs, .retries = retries,
                       .backoff_ms = 20, .stall_s = stall_s};
    pesc_error err = {{0}};
    fetcher *f = fetcher_new(&o, &err);
    free(endpoint);
    if (!f) {
        printf("FAIL fetcher_new: %s\n", err.msg);
        exit(1);
    }
    return f;
}

static fetcher *new_fetcher(const char *cache, const char *with_token, int jobs, long stall_s)
{
    return new_fetcher_retrying(cache, with_token, jobs, stall_s, 3);
}

/* One fetch on a fresh fetcher; rc as fetcher_get. */
static int get(const char *cache, const char *url, const char *sha, const char *with_token,
               char **path, pesc_error *err)
{
    fetcher *f = new_fetcher(cache, with_token, 4, 1);
    int rc = fetcher_get(f, url, sha, path, err);
    fetcher_delete(f);
    return rc;
}

/* ---- the server's log --------------------------------------------------------------------- */

typedef struct hit {
    int port, status;
    double t;
    char target[1024], range[128], ifrange[256], auth[8];
    long long sent;
} hit;

/* Requests the server logged for exactly this target (on port, or any port when 0). */
static int hits_now(const char *target, int port, hit *out, int cap)
{
    FILE *fp = fopen(log_path, "r");
    char line[2048];
    int n = 0;
    while (fp && fgets(line, sizeof line, fp)) {
        hit h;
        char method[16];
        if (sscanf(line, "port=%d t=%lf method=%15s target=%1023s range=%127s ifrange=%255s "
                   "auth=%7s status=%d sent=%lld", &h.port, &h.t, method, h.target, h.range,
                   h.ifrange, h.auth, &h.status, &h.sent) != 9)
            continue;
        if (strcmp(h.target, target) != 0 || (port && h.port != port))
            continue;
        if (n < cap)
            out[n] = h;
        n++;
    }
    if (fp)
        fclose(fp);
    return n;
}

/* The server logs a request after answering it, so give it a moment to catch up. */
static int hits(const char *target, int port, hit *out, int cap, int want)
{
    int n = 0;
    for (int i = 0; i < 100; i++) {
        if ((n = hits_now(target, port, out, cap)) >= want)
            break;
        usleep(20000);
    }
    return n;
}

/* ---- pure parts --------------------------------------------------------------------------- */

static void test_sha256(void)
{
    static const struct {
        const char *text, *hex;
    } vectors[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqr"
         "lmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
    };
    for (size_t i = 0; i < sizeof vectors / sizeof *vectors; i++) {
        char hex[65];
        fetch_sha256_buffer(vectors[i].text, strlen(vectors[i].text), hex);
        check(strcmp(hex, vectors[i].hex) == 0, "sha256 vector %zu", i);
    }
    /* a million 'a', fed in uneven pieces that cross block boundaries */
    char *a = xmalloc(1000000);
    memset(a, 'a', 1000000);
    fetch_sha256 h;
    fetch_sha256_init(&h);
    for (size_t pos = 0, step = 1; pos < 1000000; pos += step, step = step * 7 % 1000 + 1)
        fetch_sha256_update(&h, a + pos, pos + step > 1000000 ? 1000000 - pos : step);
    char hex[65];
    fetch_sha256_hex(&h, hex);
    check(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0,
          "sha256 of a million 'a' in uneven pieces");
    free(a);
}

static void expect_map(const char *url, const char *want_request, const char *want_cache)
{
    char *request = NULL, *cache = NULL;
    pesc_error err = {{0}};
    int rc = fetch_map_url(url, "http://127.0.0.1:9/hub/", &request, &cache, &err);
    check(rc == 0 && strcmp(request, want_request) == 0 && strcmp(cache, want_cache) == 0,
          "map %s -> %s, %s (got %s, %s: %s)", url, want_request, want_cache,
          request ? request : "-", cache ? cache : "-", rc ? err.msg : "");
    free(request);
    free(cache);
}

static void expect_refused(const char *url)
{
    char *request = NULL, *cache = NULL;
    pesc_error err = {{0}};
    int rc = fetch_map_url(url, "http://127.0.0.1:9/hub", &request, &cache, &err);
    check(rc == -1 && err.msg[0] && !request && !cache, "refuses %s (%s)", url, err.msg);
}

static void test_map_url(void)
{
    expect_map("hf://datasets/owner/set/data/train.jsonl.gz",
               "http://127.0.0.1:9/hub/datasets/owner/set/resolve/main/data/train.jsonl.gz",
               "hf/datasets/owner/set/main/data/train.jsonl.gz");
    expect_map("hf://owner/model/config.json@v1.0",
               "http://127.0.0.1:9/hub/owner/model/resolve/v1.0/config.json",
               "hf/models/owner/model/v1.0/config.json");
    expect_map("hf://owner/model/a b.txt@refs/pr/1",
               "http://127.0.0.1:9/hub/owner/model/resolve/refs%2Fpr%2F1/a%20b.txt",
               "hf/models/owner/model/refs%2Fpr%2F1/a b.txt");
    char hash[65];
    const char *url = "http://127.0.0.1:8080/dir/file.jsonl?x=1";
    fetch_sha256_buffer(url, strlen(url), hash);
    char *want = fmt("url/127.0.0.1_8080/%.16s/file.jsonl", hash);
    expect_map(url, url, want);
    free(want);
    expect_refused("hf://owner");
    expect_refused("hf://owner/model");
    expect_refused("hf://datasets/owner/set");
    expect_refused("hf://owner/model/../secret");
    expect_refused("hf://owner/../x/y");
    expect_refused("ftp://host/file");
    expect_refused("/local/path");
    check(fetch_is_model_url("hf://owner/model") && fetch_is_model_url("hf://owner/model@v2") &&
          !fetch_is_model_url("hf://owner/model/config.json") &&
          !fetch_is_model_url("hf://datasets/owner/set"), "fetch_is_model_url");
    check(fetch_is_url("https://x/y") && fetch_is_url("hf://a/b/c") && !fetch_is_url("data.jsonl"),
          "fetch_is_url");
}

/* ---- downloads ---------------------------------------------------------------------------- */

static void test_plain_and_reuse(void)
{
    char *cache = new_cache("plain"), *url = url_a("/f/small.txt"), *path = NULL;
    char *want = server_file("small.txt");
    pesc_error err = {{0}};
    int rc = get(cache, url, NULL, NULL, &path, &err);
    check(rc == 0 && same_file(path, want), "plain download (%s)", rc ? err.msg : path);
    char *prefix = fmt("%s/url/127.0.0.1_%d/", cache, port_a);
    check(rc == 0 && strncmp(path, prefix, strlen(prefix)) == 0, "lands in the cache: %s",
          path ? path : "-");
    char *part = fmt("%s.part", path ? path : "x");
    check(!exists(part), "no .part left behind");
    hit h[4];
    int before = hits("/f/small.txt", port_a, h, 4, 1);
    fetcher *f = new_fetcher(cache, NULL, 4, 1);
    char *again = NULL;
    int id = fetcher_add(f, url, NULL, NULL, 0, &err);
    fetcher_wait(f, id, -1);
    fetch_progress p;
    fetcher_snapshot(f, &p, 1);
    rc = fetcher_result(f, id, &again, &err);
    fetcher_delete(f);
    usleep(100000);
    check(rc == 0 && p.state == FETCH_CACHED && hits_now("/f/small.txt", port_a, h, 4) == before,
          "second fetch comes from the cache without a request (state %s)",
          fetch_state_name(p.state));
    free(again);
    free(part);
    free(prefix);
    free(path);
    free(want);
    free(url);
    free(cache);
}

static void test_resume(void)
{
    const char *target = "/f/big.bin?cut=1&k=resume";
    char *cache = new_cache("resume"), *url = url_a(target), *path = NULL;
    char *want = server_file("big.bin");
    pesc_error err = {{0}};
    int rc = get(cache, url, NULL, NULL, &path, &err);
    check(rc == 0 && same_file(path, want), "resume after a cut connection (%s)",
          rc ? err.msg : "same bytes");
    hit h[4];
    int n = hits(target, port_a, h, 4, 2);
    char range[64];
    snprintf(range, sizeof range, "bytes=%lld-", n >= 1 ? h[0].sent : -1);
    check(n == 2, "two requests for the cut file (got %d)", n);
    check(n == 2 && h[0].sent > 0 && strcmp(h[1].range, range) == 0 &&
          strcmp(h[1].ifrange, "-") != 0 && h[1].status == 206,
          "the second asks for the rest with If-Range (range %s, want %s, status %d)",
          n == 2 ? h[1].range : "-", range, n == 2 ? h[1].status : 0);
    check(n == 2 && h[0].sent + h[1].sent == file_size(want),
          "bytes sent in all equal the file size: resumed, not downloaded twice");
    free(path);
    free(want);
    free(url);
    free(cache);
}

static void test_changed_remote(void)
{
    const char *target = "/f/change.bin?cut=1&v2=1";
    char *cache = new_cache("changed"), *url = url_a(target), *path = NULL;
    char *want = server_file("change.bin.v2");
    pesc_error err = {{0}};
    int rc = get(cache, url, NULL, NULL, &path, &err);
    hit h[4];
    int n = hits(target, port_a, h, 4, 2);
    check(rc == 0 && same_file(path, want), "a file that changed between tries is the new one");
    check(n == 2 && strcmp(h[1].ifrange, "-") != 0 && h[1].status == 200,
          "If-Range did not match: the server sent all of it (status %d)",
          n == 2 ? h[1].status : 0);
    free(path);
    free(want);
    free(url);
    free(cache);
}

static void test_retry_503(void)
{
    const char *target = "/f/small.txt?fail=1&code=503&k=503";
    char *cache = new_cache("r503"), *url = url_a(target), *path = NULL;
    pesc_error err = {{0}};
    int rc = get(cache, url, NULL, NULL, &path, &err);
    hit h[4];
    int n = hits(target, port_a, h, 4, 2);
    check(rc == 0 && n == 2 && h[0].status == 503 && h[1].status == 200,
          "503 then 200: retried once and done (%s)", rc ? err.msg : "ok");
    free(path);
    free(url);
    free(cache);
}

static void test_retry_after_429(void)
{
    const char *target = "/f/small.txt?fail=1&code=429&retry_after=1&k=429";
    char *cache = new_cache("r429"), *url = url_a(target), *path = NULL;
    pesc_error err = {{0}};
    fetcher *f = new_fetcher(cache, NULL, 4, 1);
    int id = fetcher_add(f, url, NULL, NULL, 0, &err);
    int saw_wait = 0;
    while (!fetcher_wait(f, id, 0.05)) {
        fetch_progress p;
        if (fetcher_snapshot(f, &p, 1) == 1 && p.state == FETCH_RETRY_WAIT &&
            strstr(p.message, "429"))
            saw_wait = 1;
    }
    int rc = fetcher_result(f, id, &path, &err);
    fetcher_delete(f);
    hit h[4];
    int n = hits(target, port_a, h, 4, 2);
    check(rc == 0 && n == 2, "429 then 200 (%s)", rc ? err.msg : "ok");
    check(n == 2 && h[1].t - h[0].t >= 0.9, "Retry-After: 1 honoured over a 20 ms backoff "
          "(gap %.3f s)", n == 2 ? h[1].t - h[0].t : -1.0);
    check(saw_wait, "the snapshot showed the wait and its reason");
    free(path);
    free(url);
    free(cache);
}

static void test_give_up(void)
{
    const char *target = "/f/small.txt?fail=99&code=503&k=giveup";
    char *cache = new_cache("giveup"), *url = url_a(target), *path = NULL;
    pesc_error err = {{0}};
    int rc = get(cache, url, NULL, NULL, &path, &err);
    hit h[8];
    int n = hits(target, port_a, h, 8, 4);
    check(rc == -1 && strstr(err.msg, "503") && strstr(err.msg, "gave up") && n == 4,
          "503 forever: 1 + 3 retries, then a clear error (%d requests: %s)", n, err.msg);
    free(url);
    free(cache);
}

/* One fetch of target on port A into a fresh cache, with `retries` retries and a 1 s stall
 * limit; rc as fetcher_get, *requests the number of requests the server logged for target
 * (at least `want`, if that many come). */
static int get_counting(const char *cache_name, const char *target, int retries, int want,
                        char **path, int *requests, pesc_error *err)
{
    char *cache = new_cache(cache_name), *url = url_a(target);
    fetcher *f = new_fetcher_retrying(cache, NULL, 4, 1, retries);
    int rc = fetcher_get(f, url, NULL, path, err);
    fetcher_delete(f);
    hit h[1];
    usleep(100000);   /* a request too many would show in the log by now */
    *requests = hits(target, port_a, h, 1, want);
    free(url);
    free(cache);
    return rc;
}

/* A server that sends a few bytes and then drops or stalls, every time, is given up on after
 * 1 + retries tries; a download that moves on by more than a few bytes a try goes on. */
static void test_no_progress(void)
{
    const char *target = "/f/big.bin?cut=20&send=10&k=few";
    char *url = url_a(target), *path = NULL;
    pesc_error err = {{0}};
    int n, rc = get_counting("few", target, 3, 4, &path, &n, &err);
    check(rc == -1 && n == 4 && strncmp(err.msg, url, strlen(url)) == 0 &&
          strstr(err.msg, "gave up after 4 tries") && strstr(err.msg, "run again to resume") &&
          !strchr(err.msg, '\n'),
          "10 bytes a try, then a cut: 1 + 3 retries, then one line naming the URL (%d requests: "
          "%s)", n, err.msg);
    free(url);

    /* without resume every try starts over: only getting further than before counts */
    rc = get_counting("over", "/f/big.bin?cut=20&send=100000&noetag=1&k=over", 3, 5, &path, &n,
                      &err);
    check(rc == -1 && n == 5 && strstr(err.msg, "4 tries in a row without progress (5 in all)"),
          "a server without resume that cuts at the same byte each time: the first try is "
          "progress, 4 more are not (%d requests: %s)", n, err.msg);

    rc = get_counting("stallfew", "/f/big.bin?stall=3&send=10&k=stallfew", 1, 2, &path, &n, &err);
    check(rc == -1 && n == 2 && strstr(err.msg, "stalled") && strstr(err.msg, "gave up"),
          "10 bytes a try, then silence: 2 tries with 1 retry (%d requests: %s)", n, err.msg);

    /* 100 kB a connection: many more reconnects than retries, and the file arrives */
    char *want = server_file("big.bin");
    rc = get_counting("steady", "/f/big.bin?cut=99&send=100000&k=steady", 3, 15, &path, &n, &err);
    check(rc == 0 && same_file(path, want) && n == 15,
          "a download that moves on 100 kB a try gets there over 15 tries (%d requests: %s)", n,
          rc ? err.msg : "same bytes");
    free(path);
    free(want);
}

static void test_404(void)
{
    const char *target = "/f/missing.txt";
    char *cache = new_cache("404"), *url = url_a(target), *path = NULL;
    pesc_error err = {{0}};
    int rc = get(cache, url, NULL, NULL, &path, &err);
    hit h[4];
    usleep(200000);
    int n = hits(target, port_a, h, 4, 1);
    check(rc == -1 && strstr(err.msg, url) && strstr(err.msg, "404") && n == 1,
          "404 names the URL, no retry (%d requests: %s)", n, err.msg);
    free(url);
    free(cache);
}

static void test_stall(void)
{
    const char *target = "/f/big.bin?stall=1&k=stall";
    char *cache = new_cache("stall"), *url = url_a(target), *path = NULL;
    char *want = server_file("big.bin");
    pesc_error err = {{0}};
    double t0 = pesc_now();
    int rc = get(cache, url, NULL, NULL, &path, &err);
    double took = pesc_now() - t0;
    hit h[4];
    int n = hits(target, port_a, h, 4, 2);
    check(rc == 0 && same_file(path, want) && took < 10,
          "a stalled transfer times out and resumes (%.1f s: %s)", took, rc ? err.msg : "ok");
    check(n == 2 && strncmp(h[1].range, "bytes=", 6) == 0 && h[1].status == 206,
          "the try after the stall resumed with a range (%s)", n == 2 ? h[1].range : "-");
    free(path);
    free(want);
    free(url);
    free(cache);
}

/* One transfer of target (the server's file `name`) on a fresh fetcher with a 1 s stall
 * limit, waited for at most wait_s: a try that the fetcher never ends must not hang the test.
 * *p is its last progress; returns 1 when it ended with the file, *took the seconds it took. */
static int get_watched(const char *cache_name, const char *target, const char *name,
                       double wait_s, fetch_progress *p, double *took)
{
    char *cache = new_cache(cache_name), *url = url_a(target), *path = NULL;
    char *want = server_file(name);
    pesc_error err = {{0}};
    fetcher *f = new_fetcher(cache, NULL, 4, 1);
    double t0 = pesc_now();
    int id = fetcher_add(f, url, NULL, NULL, 0, &err);
    int ended = id >= 0 && fetcher_wait(f, id, wait_s);
    *took = pesc_now() - t0;
    fetcher_snapshot(f, p, 1);
    int ok = ended && fetcher_result(f, id, &path, &err) == 0 && same_file(path, want);
    fetcher_delete(f);
    free(path);
    free(want);
    free(url);
    free(cache);
    return ok;
}

/* A server that keeps a try alive with a few bytes a second never falls silent; the try
 * counts as stalled once a second (the stall limit) brings under 1 KiB. A slow but real
 * link, 4 KiB a second, is left alone. */
static void test_trickle(void)
{
    const char *target = "/f/big.bin?trickle=1&k=trickle";
    fetch_progress p = {0};
    double took;
    int ok = get_watched("trickle", target, "big.bin", 10, &p, &took);
    long long bytes = -1;
    int matched = 0;
    sscanf(p.last_retry, "stalled: %lld bytes in the last 1 s%n", &bytes, &matched);
    check(ok && took < 5, "5 bytes a second: the try is retried and the file arrives (%.1f s, "
          "state %s)", took, fetch_state_name(p.state));
    /* of the body alone: 5 bytes a second, and the response's headers (over 100 bytes) aside */
    check(p.retries == 1 && matched > 0 && bytes > 0 && bytes <= 10,
          "the retry says how little of the body arrived (%d retries: %s)", p.retries,
          p.last_retry);
    hit h[4];
    int n = hits(target, port_a, h, 4, 2);
    check(n == 2 && strncmp(h[1].range, "bytes=", 6) == 0 && h[1].status == 206,
          "the try after the trickle resumed with a range (%s)", n == 2 ? h[1].range : "-");

    target = "/f/slow.bin?rate=4096&k=slowlink";
    memset(&p, 0, sizeof p);
    ok = get_watched("slowlink", target, "slow.bin", 10, &p, &took);
    n = hits(target, port_a, h, 4, 1);
    check(ok && p.retries == 0 && n == 1 && took > 1.5,
          "4 KiB a second over 2 s: one try, no retry (%.1f s, %d requests: %s)", took, n,
          p.last_retry);
}

static void test_redirect_token(void)
{
    char *target = fmt("/f/redir.txt?redirect=%d", port_b);
    char *cache = new_cache("redirect"), *url = url_a(target), *path = NULL;
    char *want = server_file("redir.txt");
    pesc_error err = {{0}};
    int rc = get(cache, url, NULL, token, &path, &err);
    hit a[4], b[4];
    int na = hits(target, port_a, a, 4, 1), nb = hits("/f/redir.txt", port_b, b, 4, 1);
    check(rc == 0 && same_file(path, want), "redirect to another port followed (%s)",
          rc ? err.msg : "ok");
    check(na == 1 && strcmp(a[0].auth, "ok") == 0, "the token went to the hub's origin (%s)",
          na ? a[0].auth : "-");
    check(nb == 1 && strcmp(b[0].auth, "none") == 0,
          "no Authorization header after the redirect to another origin (%s)",
          nb ? b[0].auth : "-");
    free(path);
    free(want);
    free(url);
    free(cache);
    free(target);

    /* a redirect inside the origin keeps it; a URL on another origin never gets it */
    cache = new_cache("redirect-self");
    url = url_a("/f/self.txt?redirect=self");
    rc = get(cache, url, NULL, token, &path, &err);
    int n = hits("/f/self.txt", port_a, a, 4, 1);
    check(rc == 0 && n == 1 && strcmp(a[0].auth, "ok") == 0,
          "a same-origin redirect keeps the token (%s)", n ? a[0].auth : "-");
    free(path);
    free(url);
    free(cache);
    cache = new_cache("foreign");
    url = fmt("http://127.0.0.1:%d/f/small.txt?k=foreign", port_b);
    rc = get(cache, url, NULL, token, &path, &err);
    n = hits("/f/small.txt?k=foreign", port_b, b, 4, 1);
    check(rc == 0 && n == 1 && strcmp(b[0].auth, "none") == 0,
          "a URL outside the hub's origin gets no token (%s)", n ? b[0].auth : "-");
    free(path);
    free(url);
    free(cache);
}

static void test_checksum(void)
{
    char *cache = new_cache("sha"), *url = url_a("/f/small.txt?k=sha"), *path = NULL;
    char *file = server_file("small.txt"), *data = NULL, hex[65];
    size_t len = 0;
    pesc_read_file(file, &data, &len, NULL);
    fetch_sha256_buffer(data, len, hex);
    pesc_error err = {{0}};
    const char *wrong = "0000000000000000000000000000000000000000000000000000000000000000";
    int rc = get(cache, url, wrong, NULL, &path, &err);
    char *request, *rel;
    fetch_map_url(url, NULL, &request, &rel, NULL);
    char *dest = fmt("%s/%s", cache, rel), *part = fmt("%s.part", dest);
    check(rc == -1 && strstr(err.msg, "SHA-256 mismatch") && !exists(dest) && !exists(part),
          "a wrong checksum fails and leaves no file (%s)", err.msg);
    rc = get(cache, url, hex, NULL, &path, &err);
    check(rc == 0 && same_file(path, file), "the right checksum passes");
    free(path);
    rc = get(cache, url, wrong, NULL, &path, &err);
    check(rc == -1 && strstr(err.msg, "SHA-256 mismatch") && same_file(dest, file),
          "a cached file that does not match is not taken, and stays as it was");
    free(request);
    free(rel);
    free(dest);
    free(part);
    free(data);
    free(file);
    free(url);
    free(cache);
}

static void test_gzip_dataset(void)
{
    char *cache = new_cache("gzip"), *path = NULL;
    pesc_error err = {{0}};
    int rc = get(cache, "hf://datasets/tester/chat/train.jsonl.gz", NULL, NULL, &path, &err);
    char *want_path = fmt("%s/hf/datasets/tester/chat/main/train.jsonl.gz", cache);
    check(rc == 0 && strcmp(path, want_path) == 0, "hf:// dataset file through "
          "PESC_HF_ENDPOINT (%s)", rc ? err.msg : path);
    char *plain = server_file("data.jsonl");
    pesc_stream *got = rc == 0 ? stream_open(path, &err) : NULL;
    pesc_stream *want = stream_open(plain, &err);
    int lines = 0, equal = got && want;
    while (equal) {
        const char *a, *b;
        ssize_t na = stream_getline(got, &a, NULL, &err);
        ssize_t nb = stream_getline(want, &b, NULL, &err);
        if (na != nb || (na >= 0 && memcmp(a, b, (size_t)na) != 0) || na == -2) {
            equal = 0;
            break;
        }
        if (na == -1)
            break;
        lines++;
    }
    check(equal && lines >= 3 && strcmp(stream_kind(got), "gzip") == 0,
          "the downloaded .gz reads back through stream_open, line for line (%d lines)", lines);
    if (got)
        stream_close(got);
    if (want)
        stream_close(want);
    free(path);
    rc = get(cache, "hf://datasets/tester/chat/train.jsonl@v1", NULL, NULL, &path, &err);
    hit h[2];
    int n = hits("/hub/datasets/tester/chat/resolve/v1/train.jsonl", port_a, h, 2, 1);
    check(rc == 0 && n == 1, "@REV picks the revision (%s)", rc ? err.msg : "ok");
    free(path);
    free(plain);
    free(want_path);
    free(cache);
}

static int count_all_requests(void)
{
    FILE *fp = fopen(log_path, "r");
    int n = 0, c;
    while (fp && (c = fgetc(fp)) != EOF)
        n += c == '\n';
    if (fp)
        fclose(fp);
    return n;
}

static void test_models(void)
{
    char *cache = new_cache("models"), *dir = NULL;
    pesc_error err = {{0}};
    fetcher *f = new_fetcher(cache, NULL, 4, 1);
    int rc = fetcher_get_model(f, "hf://tester/tiny", &dir, &err);
    fetcher_delete(f);
    check(rc == -1 && strstr(err.msg, "HF_TOKEN") && strstr(err.msg, "401"),
          "a private model without a token: 401 with a hint at HF_TOKEN (%s)", err.msg);

    f = new_fetcher(cache, token, 4, 1);
    rc = fetcher_get_model(f, "hf://tester/tiny", &dir, &err);
    fetcher_delete(f);
    char *want_dir = fmt("%s/hf/models/tester/tiny/main", cache);
    check(rc == 0 && strcmp(dir, want_dir) == 0, "sharded model resolved (%s)",
          rc ? err.msg : dir);
    static const char *const present[] = {"config.json", "tokenizer.json",
                                          "model.safetensors.index.json",
                                          "model-00001-of-00002.safetensors",
                                          "model-00002-of-00002.safetensors"};
    for (size_t i = 0; rc == 0 && i < sizeof present / sizeof *present; i++) {
        char *got = fmt("%s/%s", dir, present[i]);
        char *want = fmt("%s/hub/models/tester/tiny/main/%s", root, present[i]);
        check(same_file(got, want), "model file %s", present[i]);
        free(got);
        free(want);
    }
    char *absent = fmt("%s/tokenizer_config.json", want_dir);
    check(!exists(absent), "an optional file the repository lacks is simply absent");
    hit h[4];
    int n = hits("/lfs/models/tester/tiny/main/model-00001-of-00002.safetensors", port_b, h, 4,
                 1);
    check(n == 1 && strcmp(h[0].auth, "none") == 0,
          "shards came from the storage port without the token (%s)", n ? h[0].auth : "-");
    n = hits("/hub/tester/tiny/resolve/main/config.json", port_a, h, 4, 2);
    check(n == 2 && strcmp(h[1].auth, "ok") == 0, "the hub itself got the token");

    int before = count_all_requests();
    char *again = NULL;
    f = new_fetcher(cache, token, 4, 1);
    rc = fetcher_get_model(f, "hf://tester/tiny", &again, &err);
    fetcher_delete(f);
    check(rc == 0 && count_all_requests() == before, "a complete model is reused offline");
    free(again);
    free(dir);
    free(absent);
    free(want_dir);

    rc = fetch_resolve_model("/some/local/dir", &dir, &err);
    check(rc == 0 && strcmp(dir, "/some/local/dir") == 0, "a local model path passes through");
    free(dir);

    f = new_fetcher(cache, NULL, 4, 1);
    rc = fetcher_get_model(f, "hf://tester/single@main", &dir, &err);
    char *weights = rc == 0 ? fmt("%s/model.safetensors", dir) : xstrdup("-");
    char *tok = rc == 0 ? fmt("%s/tokenizer_config.json", dir) : xstrdup("-");
    check(rc == 0 && exists(weights) && exists(tok), "single-file model (%s)",
          rc ? err.msg : dir);
    free(weights);
    free(tok);
    free(dir);
    rc = fetcher_get_model(f, "hf://tester/badsha", &dir, &err);
    check(rc == -1 && strstr(err.msg, "SHA-256 mismatch") && strstr(err.msg, "hub"),
          "the hub's X-Linked-Etag is checked (%s)", err.msg);
    rc = fetcher_get_model(f, "hf://tester/noweights", &dir, &err);
    check(rc == -1 && strstr(err.msg, "neither model.safetensors"),
          "a repository without safetensors is refused (%s)", err.msg);
    fetcher_delete(f);
    free(cache);
}

typedef struct watcher {
    fetcher *f;
    int stop, max_running, samples;
    pthread_mutex_t lock;
} watcher;

static void *watch(void *arg)
{
    watcher *w = arg;
    fetch_progress p[16];
    for (;;) {
        pthread_mutex_lock(&w->lock);
        int stop = w->stop;
        pthread_mutex_unlock(&w->lock);
        if (stop)
            return NULL;
        int n = fetcher_snapshot(w->f, p, 16), running = 0;
        for (int i = 0; i < n && i < 16; i++)
            running += p[i].state == FETCH_RUNNING;
        if (running > w->max_running)
            w->max_running = running;
        w->samples++;
        usleep(1000);
    }
}

static void test_parallel(void)
{
    char *cache = new_cache("parallel"), *cache2 = new_cache("parallel2");
    fetcher *f = new_fetcher(cache, NULL, 2, 1);
    fetcher *g = new_fetcher(cache2, NULL, 3, 1);   /* two fetchers live side by side */
    watcher w = {.f = f};
    pthread_mutex_init(&w.lock, NULL);
    pthread_t thread;
    pthread_create(&thread, NULL, watch, &w);
    pesc_error err = {{0}};
    int ids[6], other[2];
    for (int i = 0; i < 6; i++) {
        char *url = fmt("http://127.0.0.1:%d/f/big.bin?k=par%d", port_a, i);
        ids[i] = fetcher_add(f, url, NULL, NULL, 0, &err);
        if (i < 2)
            other[i] = fetcher_add(g, url, NULL, NULL, 0, &err);
        free(url);
    }
    char *url = fmt("http://127.0.0.1:%d/f/big.bin?k=par0", port_a);
    check(fetcher_add(f, url, NULL, NULL, 0, &err) == ids[0], "the same file twice is one "
          "transfer");
    free(url);
    fetcher_wait(f, FETCH_ALL, -1);
    fetcher_wait(g, FETCH_ALL, -1);
    pthread_mutex_lock(&w.lock);
    w.stop = 1;
    pthread_mutex_unlock(&w.lock);
    pthread_join(thread, NULL);
    fetch_progress p[8];
    int n = fetcher_snapshot(f, p, 8), all_done = n == 6;
    long long size = 0;
    char *want = server_file("big.bin");
    size = file_size(want);
    for (int i = 0; i < n && i < 8; i++)
        all_done &= p[i].state == FETCH_DONE && p[i].done == size && p[i].total == size;
    check(all_done, "six parallel downloads done, progress says size of size (%d)", n);
    check(w.max_running <= 2, "never more than --jobs 2 at once "
          "(max %d over %d snapshots)", w.max_running, w.samples);
    for (int i = 0; i < 2; i++) {
        char *path = NULL;
        int rc = fetcher_result(g, other[i], &path, &err);
        check(rc == 0 && same_file(path, want), "second fetcher's download %d", i);
        free(path);
    }
    for (int i = 0; i < 6; i++) {
        char *path = NULL;
        fetcher_result(f, ids[i], &path, &err);
        check(same_file(path, want), "parallel download %d", i);
        free(path);
    }
    fetcher_delete(f);
    fetcher_delete(g);
    pthread_mutex_destroy(&w.lock);
    free(want);
    free(cache);
    free(cache2);
}

static void test_cancel_and_resume_later(void)
{
    const char *target = "/f/big.bin?stall=1&k=later";
    char *cache = new_cache("later"), *url = url_a(target);
    pesc_error err = {{0}};
    fetcher *f = new_fetcher(cache, NULL, 4, 30);
    int id = fetcher_add(f, url, NULL, NULL, 0, &err);
    fetch_progress p = {0};
    double t0 = pesc_now();
    /* wait until half the file has arrived and the server went silent */
    while (pesc_now() - t0 < 10) {
        fetcher_snapshot(f, &p, 1);
        if (p.state == FETCH_RUNNING && p.total > 0 && p.done * 2 >= p.total)
            break;
        usleep(10000);
    }
    fetcher_cancel(f, id);
    int ended = fetcher_wait(f, id, 5);
    fetcher_snapshot(f, &p, 1);
    check(ended && p.state == FETCH_CANCELLED, "cancel stops a stalled transfer (state %s)",
          fetch_state_name(p.state));
    fetcher_delete(f);
    char *request, *rel;
    fetch_map_url(url, NULL, &request, &rel, NULL);
    char *part = fmt("%s/%s.part", cache, rel);
    long long kept = file_size(part);
    check(kept > 0, "the partial download is kept (%lld bytes)", kept);

    /* a new fetcher (as a new run of pesc would) resumes from the part on disk */
    char *path = NULL, *want = server_file("big.bin");
    int rc = get(cache, url, NULL, NULL, &path, &err);
    hit h[4];
    int n = hits(target, port_a, h, 4, 2);
    char range[64];
    snprintf(range, sizeof range, "bytes=%lld-", kept);
    check(rc == 0 && same_file(path, want), "the next run completes the file (%s)",
          rc ? err.msg : "ok");
    check(n == 2 && strcmp(h[1].range, range) == 0 && h[1].sent + kept == file_size(want),
          "and asked only for the missing bytes (%s)", n == 2 ? h[1].range : "-");
    free(path);
    free(want);
    free(part);
    free(request);
    free(rel);
    free(url);
    free(cache);
}

static void test_unwritable_cache(void)
{
    char *blocker = fmt("%s/not-a-directory", base_dir);
    FILE *fp = fopen(blocker, "w");
    if (fp)
        fclose(fp);
    char *cache = fmt("%s/cache", blocker), *url = url_a("/f/small.txt?k=unwritable");
    char *path = NULL;
    pesc_error err = {{0}};
    int rc = get(cache, url, NULL, NULL, &path, &err);
    check(rc == -1 && strncmp(err.msg, url, strlen(url)) == 0 &&
          strstr(err.msg, "XDG_CACHE_HOME") && strstr(err.msg, "Not a directory"),
          "an unusable cache directory is a clear error that names the URL (%s)", err.msg);
    free(url);
    free(cache);
    free(blocker);
}

int main(void)
{
    test_sha256();
    test_map_url();
    root = getenv("PESC_TEST_ROOT");
    log_path = getenv("PESC_TEST_LOG");
    token = getenv("PESC_TEST_TOKEN");
    const char *a = getenv("PESC_TEST_PORT_A"), *b = getenv("PESC_TEST_PORT_B");
    if (!root || !log_path || !token || !a || !b) {
        printf("skip: the server tests run from tests/fetch.sh\n");
        return failures ? 1 : 77;
    }
    port_a = atoi(a);
    port_b = atoi(b);
    snprintf(base_dir, sizeof base_dir, "%s/test_fetch.XXXXXX", getenv("TMPDIR") ?
             getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(base_dir)) {
        perror("mkdtemp");
        return 99;
    }
    test_plain_and_reuse();
    test_resume();
    test_changed_remote();
    test_retry_503();
    test_retry_after_429();
    test_give_up();
    test_no_progress();
    test_404();
    test_stall();
    test_trickle();
    test_redirect_token();
    test_checksum();
    test_gzip_dataset();
    test_models();
    test_parallel();
    test_cancel_and_resume_later();
    test_unwritable_cache();
    char *rm = fmt("rm -rf '%s'", base_dir);
    if (system(rm) != 0)
        printf("note: could not remove %s\n", base_dir);
    free(rm);
    printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
