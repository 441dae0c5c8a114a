/* fetch — see fetch.h.
 *
 * Reads top to bottom: small string and file helpers; URL mapping; the transfer and fetcher
 * objects; the worker thread (start a try, libcurl callbacks, judge a finished try);
 * the public calls; whole models. */
#include "fetch.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "fetch_sha256.h"

#define MAX_REDIRECTS 10
#define MAX_BACKOFF_S 60.0
#define MAX_RETRY_AFTER_S 3600.0
#define PROGRESS_BYTES (64 * 1024)   /* how much further a download must get to count as
                                        progress: see made_progress */
#define PUBLISH_INTERVAL_S 0.1
#define STALL_MIN_BYTES 1024         /* a try that receives less in stall_s seconds is
                                        stalled; see try_stalled */
#define RATE_SAMPLES 7               /* the rate is measured over the last 3 seconds */
#define RATE_SAMPLE_S 0.5
#define MODEL_MARKER ".pesc-complete"

/* ---- small helpers ----------------------------------------------------------------------- */

static char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *str_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int is_sha256_hex(const char *s)
{
    if (!s || strlen(s) != FETCH_SHA256_HEX_LEN)
        return 0;
    for (; *s; s++)
        if (!isxdigit((unsigned char)*s))
            return 0;
    return 1;
}

static void lowercase(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

static const char *env_or_null(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* A number from the environment: unset or empty gives the fallback; anything but a whole
 * number in [min, max] is refused, naming the variable, rather than quietly ignored. */
static int env_long(const char *name, long fallback, long min, long max, long *out,
                    pesc_error *err)
{
    const char *v = env_or_null(name);
    *out = fallback;
    if (!v)
        return 0;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < min || n > max)
        return pesc_fail(err, "%s=%s: expected a whole number from %ld to %ld; fix or unset it",
                         name, v, min, max);
    *out = n;
    return 0;
}

/* Makes every directory of path (which names a directory). */
static int make_dirs(const char *path, pesc_error *err)
{
    char *p = xstrdup(path);
    for (char *slash = p + 1;; slash++) {
        int last = *slash == '\0';
        if (*slash != '/' && !last)
            continue;
        *slash = '\0';
        struct stat st;
        if (mkdir(p, 0755) != 0 && (errno != EEXIST || stat(p, &st) != 0 ||
                                    !S_ISDIR(st.st_mode))) {
            int e = errno == EEXIST ? ENOTDIR : errno;
            pesc_fail(err, "cannot create directory %s: %s", p, strerror(e));
            free(p);
            return -1;
        }
        if (last)
            break;
        *slash = '/';
    }
    free(p);
    return 0;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return xstrdup(".");
    if (slash == path)
        return xstrdup("/");
    char *d = xstrdup(path);
    d[slash - path] = '\0';
    return d;
}

/* Writes a small file whole, through a temporary name and a rename. */
static int write_small_file(const char *path, const char *text)
{
    char *tmp = str_printf("%s.tmp", path);
    FILE *fp = fopen(tmp, "w");
    int ok = fp && fputs(text, fp) >= 0;
    if (fp && fclose(fp) != 0)
        ok = 0;
    if (ok && rename(tmp, path) != 0)
        ok = 0;
    if (!ok)
        unlink(tmp);
    free(tmp);
    return ok ? 0 : -1;
}

/* Hashes the first n bytes of fd from its start. */
static int hash_fd_prefix(int fd, int64_t n, fetch_sha256 *h)
{
    unsigned char buf[1 << 16];
    int64_t pos = 0;
    while (pos < n) {
        size_t want = n - pos < (int64_t)sizeof buf ? (size_t)(n - pos) : sizeof buf;
        ssize_t got = pread(fd, buf, want, (off_t)pos);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        fetch_sha256_update(h, buf, (size_t)got);
        pos += got;
    }
    return 0;
}

static int hash_file(const char *path, char out[FETCH_SHA256_HEX_LEN + 1])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    fetch_sha256 h;
    fetch_sha256_init(&h);
    int rc = hash_fd_prefix(fd, st.st_size, &h);
    close(fd);
    fetch_sha256_hex(&h, out);
    return rc;
}

/* ---- URL mapping ------------------------------------------------------------------------- */

/* Percent-encodes s for a URL path; '/' stays when keep_slash. */
static void append_encoded(char **out, size_t *len, const char *s, int keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t need = *len + 3 * strlen(s) + 1;
    *out = xrealloc(*out, need);
    char *o = *out + *len;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || strchr("-._~", c) || (keep_slash && c == '/')) {
            *o++ = (char)c;
        } else {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o = '\0';
    *len = (size_t)(o - *out);
}

static void append_text(char **out, size_t *len, const char *s)
{
    size_t n = strlen(s);
    *out = xrealloc(*out, *len + n + 1);
    memcpy(*out + *len, s, n + 1);
    *len += n;
}

/* A repository path: no empty part, no "." or "..", no control characters. */
static int valid_repo_path(const char *p)
{
    if (!*p || *p == '/')
        return 0;
    for (const char *s = p; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == '\\')
            return 0;
    const char *part = p;
    for (;;) {
        const char *end = strchr(part, '/');
        size_t n = end ? (size_t)(end - part) : strlen(part);
        if (n == 0 || (n == 1 && part[0] == '.') || (n == 2 && part[0] == '.' && part[1] == '.'))
            return 0;
        if (!end)
            return 1;
        part = end + 1;
    }
}

/* hf://[datasets/]OWNER/NAME[/PATH][@REV] split into its parts (all malloc'ed). */
typedef struct hf_ref {
    int dataset;
    char *owner, *name, *path, *rev;   /* path NULL when the URL names the repository */
} hf_ref;

static void hf_ref_free(hf_ref *r)
{
    free(r->owner);
    free(r->name);
    free(r->path);
    free(r->rev);
    *r = (hf_ref){0};
}

static int hf_parse(const char *url, hf_ref *r, pesc_error *err)
{
    *r = (hf_ref){0};
    const char *s = url + strlen("hf://");
    const char *at = strchr(s, '@');
    char *body = at ? strndup(s, (size_t)(at - s)) : xstrdup(s);
    if (!body)
        abort();
    r->rev = xstrdup(at && at[1] ? at + 1 : "main");
    const char *p = body;
    if (starts_with(p, "datasets/")) {
        r->dataset = 1;
        p += strlen("datasets/");
    }
    const char *slash1 = strchr(p, '/');
    const char *slash2 = slash1 ? strchr(slash1 + 1, '/') : NULL;
    if (!slash1 || slash1 == p || slash1[1] == '\0' || slash1[1] == '/') {
        pesc_fail(err, "%s: expected hf://%sOWNER/NAME/PATH[@REV]", url,
                  r->dataset ? "datasets/" : "[datasets/]");
        goto fail;
    }
    r->owner = strndup(p, (size_t)(slash1 - p));
    r->name = slash2 ? strndup(slash1 + 1, (size_t)(slash2 - slash1 - 1)) : xstrdup(slash1 + 1);
    if (!r->owner || !r->name)
        abort();
    if (slash2 && slash2[1])
        r->path = xstrdup(slash2 + 1);
    if (!valid_repo_path(r->owner) || strchr(r->owner, '/') || !valid_repo_path(r->name) ||
        (r->path && !valid_repo_path(r->path)) || !valid_repo_path(r->rev) ||
        (slash2 && !slash2[1])) {
        pesc_fail(err, "%s: a part of the URL is empty or is '.' or '..'", url);
        goto fail;
    }
    free(body);
    return 0;
fail:
    free(body);
    hf_ref_free(r);
    return -1;
}

/* Keeps what is safe in a file name; everything else becomes '_'. */
static char *safe_file_name(const char *s, size_t n)
{
    char *out = xmalloc(n + 2);
    size_t k = 0;
    if (n == 0 || s[0] == '.')
        out[k++] = '_';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        out[k++] = isalnum(c) || strchr("-._", c) ? (char)c : '_';
    }
    out[k] = '\0';
    return out;
}

static int map_hf(const char *url, const char *endpoint, char **request_url, char **cache_path,
                  pesc_error *err)
{
    hf_ref r;
    if (hf_parse(url, &r, err) != 0)
        return -1;
    if (!r.path) {
        pesc_fail(err, "%s: names a repository, not a file; use hf://%sOWNER/NAME/PATH[@REV]",
                  url, r.dataset ? "datasets/" : "");
        hf_ref_free(&r);
        return -1;
    }
    size_t n = 0;
    char *u = NULL;
    append_text(&u, &n, endpoint);
    while (n > 0 && u[n - 1] == '/')
        u[--n] = '\0';
    append_text(&u, &n, r.dataset ? "/datasets/" : "/");
    append_encoded(&u, &n, r.owner, 0);
    append_text(&u, &n, "/");
    append_encoded(&u, &n, r.name, 0);
    append_text(&u, &n, "/resolve/");
    append_encoded(&u, &n, r.rev, 0);
    append_text(&u, &n, "/");
    append_encoded(&u, &n, r.path, 1);

    size_t m = 0;
    char *c = NULL;
    append_text(&c, &m, r.dataset ? "hf/datasets/" : "hf/models/");
    append_text(&c, &m, r.owner);
    append_text(&c, &m, "/");
    append_text(&c, &m, r.name);
    append_text(&c, &m, "/");
    append_encoded(&c, &m, r.rev, 0);
    append_text(&c, &m, "/");
    append_text(&c, &m, r.path);
    hf_ref_free(&r);
    *request_url = u;
    *cache_path = c;
    return 0;
}

/* url/HOST[_PORT]/HASH16: the cache directory for one http(s) URL (or model base URL). */
static int http_cache_dir(const char *url, char **dir, char **url_path, pesc_error *err)
{
    CURLU *h = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
    int rc = -1;
    if (!h)
        abort();
    if (curl_url_set(h, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(h, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        pesc_fail(err, "%s: not a valid URL", url);
        goto out;
    }
    if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0) {
        pesc_fail(err, "%s: only http, https and hf URLs are supported", url);
        goto out;
    }
    curl_url_get(h, CURLUPART_PORT, &port, 0);
    if (curl_url_get(h, CURLUPART_PATH, &path, 0) != CURLUE_OK)
        path = NULL;
    char hash[FETCH_SHA256_HEX_LEN + 1];
    fetch_sha256_buffer(url, strlen(url), hash);
    hash[16] = '\0';
    char *host_part = safe_file_name(host, strlen(host));
    *dir = port ? str_printf("url/%s_%s/%s", host_part, port, hash)
                : str_printf("url/%s/%s", host_part, hash);
    free(host_part);
    if (url_path)
        *url_path = xstrdup(path ? path : "/");
    rc = 0;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_url_cleanup(h);
    return rc;
}

static int map_http(const char *url, char **request_url, char **cache_path, pesc_error *err)
{
    char *dir, *path;
    if (http_cache_dir(url, &dir, &path, err) != 0)
        return -1;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char *name = *base ? safe_file_name(base, strlen(base)) : xstrdup("index");
    *cache_path = str_printf("%s/%s", dir, name);
    *request_url = xstrdup(url);
    free(name);
    free(dir);
    free(path);
    return 0;
}

int fetch_is_url(const char *s)
{
    return s && (starts_with(s, "hf://") || starts_with(s, "http://") ||
                 starts_with(s, "https://"));
}

int fetch_is_model_url(const char *s)
{
    hf_ref r;
    if (!s || !starts_with(s, "hf://") || hf_parse(s, &r, NULL) != 0)
        return 0;
    int whole_model = !r.dataset && !r.path;
    hf_ref_free(&r);
    return whole_model;
}

int fetch_map_url(const char *url, const char *hf_endpoint, char **request_url,
                  char **cache_path, pesc_error *err)
{
    *request_url = *cache_path = NULL;
    if (starts_with(url, "hf://"))
        return map_hf(url, hf_endpoint ? hf_endpoint : FETCH_HF_DEFAULT_ENDPOINT, request_url,
                      cache_path, err);
    if (starts_with(url, "http://") || starts_with(url, "https://"))
        return map_http(url, request_url, cache_path, err);
    return pesc_fail(err, "%s: not a URL (use hf://, http:// or https://)", url);
}

/* "scheme://host:port", lowercase, with the default port filled in; NULL when unparsable. */
static char *url_origin(const char *url)
{
    CURLU *h = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *origin = NULL;
    if (!h)
        abort();
    if (curl_url_set(h, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(h, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(h, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
        origin = str_printf("%s://%s:%s", scheme, host, port);
        lowercase(origin);
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(h);
    return origin;
}

/* The URL without user name and password, for messages. */
static char *url_for_display(const char *url)
{
    if (starts_with(url, "hf://"))
        return xstrdup(url);
    CURLU *h = curl_url();
    char *clean = NULL;
    if (!h)
        abort();
    if (curl_url_set(h, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_set(h, CURLUPART_USER, NULL, 0) == CURLUE_OK &&
        curl_url_set(h, CURLUPART_PASSWORD, NULL, 0) == CURLUE_OK &&
        curl_url_get(h, CURLUPART_URL, &clean, 0) == CURLUE_OK) {
        char *copy = xstrdup(clean);
        curl_free(clean);
        curl_url_cleanup(h);
        return copy;
    }
    curl_url_cleanup(h);
    return xstrdup(url);
}

/* ---- transfers and the fetcher ----------------------------------------------------------- */

typedef struct transfer {
    /* fixed when added */
    int id;
    char *url;                   /* for messages (no credentials) */
    char *request_url;           /* first hop */
    char *dest, *part, *etag_path;
    char expected_sha[FETCH_SHA256_HEX_LEN + 1];   /* "" when none was given */
    unsigned flags;              /* FETCH_OPTIONAL, FETCH_REPLACE */

    /* the worker's alone */
    CURL *easy;
    struct curl_slist *headers;
    char *current_url;           /* this hop */
    int hop_is_hub;              /* this hop goes to the hub's origin */
    int redirects;
    int refusals;                /* tries in a row whose connection was refused */
    int fd;                      /* the .part file, open (and locked) while in progress */
    fetch_sha256 hash;           /* of the part's first `offset + received` bytes */
    int64_t offset;              /* part bytes before this try */
    int64_t received;            /* bytes this try wrote */
    int failures;                /* tries in a row that made no progress */
    int64_t progress_mark;       /* where the download stood when failures last started
                                    over (bytes kept for the next try) */
    int body_started, body_to_file, restart, write_errno;
    long status;
    int64_t content_length, range_start, range_total;
    char etag[256];              /* this response's ETag */
    char validator[256];         /* ETag of the server that wrote the part: for If-Range */
    char linked_sha[FETCH_SHA256_HEX_LEN + 1];     /* the hub's X-Linked-Etag */
    double retry_after_s;
    double next_try_at, started_at, published_at;
    double last_data_at;         /* when this request last received anything */
    double window_at;            /* start of the current stall window (see try_stalled) */
    int64_t window_bytes;        /* body bytes received since window_at (headers aside) */
    double rate_at[RATE_SAMPLES];   /* ring of (time, bytes on disk) every half second */
    int64_t rate_bytes[RATE_SAMPLES];
    int rate_next, rate_count;
    char errbuf[CURL_ERROR_SIZE];

    /* under the fetcher's lock */
    int cancel;
    fetch_progress pub;
    pesc_error failure;
} transfer;

struct fetcher {
    char *cache_dir, *hf_endpoint, *hub_origin, *token, *ca_file, *ca_dir;
    int jobs, retries;
    long backoff_ms, stall_s, connect_timeout_s;

    CURLM *multi;
    pthread_t thread;
    int thread_started;
    int running;                 /* worker's count of transfers in the multi handle */

    pthread_mutex_t lock;
    pthread_cond_t changed;      /* broadcast when a transfer ends */
    transfer **items;            /* under lock; append-only, pointers stable */
    int n_items, cap_items;
    int quit;
};

int fetch_state_final(fetch_state s)
{
    return s == FETCH_DONE || s == FETCH_CACHED || s == FETCH_ABSENT || s == FETCH_FAILED ||
           s == FETCH_CANCELLED;
}

const char *fetch_state_name(fetch_state s)
{
    static const char *const names[] = {"queued", "running", "retrying", "verifying", "done",
                                        "cached", "absent", "failed", "cancelled"};
    return (unsigned)s < sizeof names / sizeof *names ? names[s] : "?";
}

static void transfer_free(transfer *t)
{
    if (t->easy)
        curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->headers);
    if (t->fd >= 0)
        close(t->fd);
    free(t->url);
    free(t->request_url);
    free(t->dest);
    free(t->part);
    free(t->etag_path);
    free(t->current_url);
    free(t);
}

/* State changes go through here so that the UI sees each one; ending broadcasts. */
static void publish_state(fetcher *f, transfer *t, fetch_state state, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void publish_state(fetcher *f, transfer *t, fetch_state state, const char *fmt, ...)
{
    pthread_mutex_lock(&f->lock);
    t->pub.state = state;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->pub.message, sizeof t->pub.message, fmt, ap);
        va_end(ap);
    }
    if (state == FETCH_FAILED && !t->failure.msg[0])   /* fail_transfer sets it whole first */
        snprintf(t->failure.msg, sizeof t->failure.msg, "%s", t->pub.message);
    if (fetch_state_final(state)) {
        t->pub.rate = 0;
        t->pub.eta_s = -1;
        pthread_cond_broadcast(&f->changed);
    }
    pthread_mutex_unlock(&f->lock);
}

/* Fails with "URL: why", so that every failure names its own download, however many fail
 * for the same reason (pub.message keeps the first 255 bytes for the UI). */
static void fail_transfer(fetcher *f, transfer *t, const pesc_error *why)
{
    pesc_error named;
    pesc_fail(&named, "%s: %s", t->url, why->msg);
    pthread_mutex_lock(&f->lock);   /* whole before FAILED is seen: the UI's copy is cut */
    t->failure = named;
    pthread_mutex_unlock(&f->lock);
    publish_state(f, t, FETCH_FAILED, "%s", named.msg);
}

static void publish_progress(fetcher *f, transfer *t, double now)
{
    int64_t done = t->offset + t->received;
    int64_t total = t->range_total >= 0            ? t->range_total
                    : t->content_length >= 0 && t->body_to_file ? t->offset + t->content_length
                                                                 : -1;
    int last = (t->rate_next + RATE_SAMPLES - 1) % RATE_SAMPLES;
    if (t->rate_count == 0 || now - t->rate_at[last] >= RATE_SAMPLE_S) {
        t->rate_at[t->rate_next] = now;
        t->rate_bytes[t->rate_next] = done;
        t->rate_next = (t->rate_next + 1) % RATE_SAMPLES;
        if (t->rate_count < RATE_SAMPLES)
            t->rate_count++;
    }
    int oldest = (t->rate_next + RATE_SAMPLES - t->rate_count) % RATE_SAMPLES;
    double span = now - t->rate_at[oldest];
    double rate = span > 0.2 ? (double)(done - t->rate_bytes[oldest]) / span : 0;
    pthread_mutex_lock(&f->lock);
    t->pub.rate = rate > 0 ? rate : 0;
    t->pub.done = done;
    if (total >= 0)
        t->pub.total = total;
    t->pub.elapsed_s = now - t->started_at;
    t->pub.eta_s = t->pub.total > 0 && t->pub.rate > 1 ? (double)(t->pub.total - done) /
                                                            t->pub.rate : -1;
    pthread_mutex_unlock(&f->lock);
    t->published_at = now;
}

/* ---- the worker: starting a try ----------------------------------------------------------- */

static size_t on_header(char *line, size_t size, size_t count, void *arg);
static size_t on_body(char *data, size_t size, size_t count, void *arg);

static void close_part(transfer *t)
{
    if (t->fd >= 0)
        close(t->fd);   /* also drops the lock */
    t->fd = -1;
}

/* The .part of a transfer that failed, closed; removed with its ETag when nothing of the
 * file was received (and it is this process's: held open, locked), as there is nothing in
 * it to resume. */
static void close_failed_part(transfer *t)
{
    if (t->fd >= 0 && t->offset == 0) {
        unlink(t->part);
        unlink(t->etag_path);
    }
    close_part(t);
}

/* Opens and locks NAME.part and works out how much of it can be resumed. 1 when another
 * process holds the lock (try again later). */
static int open_part(fetcher *f, transfer *t, pesc_error *err)
{
    char *dir = dir_of(t->dest);
    int rc = make_dirs(dir, err);
    if (rc != 0 && starts_with(t->dest, f->cache_dir))
        pesc_fail_prefix(err, "cache (set XDG_CACHE_HOME to a writable directory)");
    free(dir);
    if (rc != 0)
        return -1;
    t->fd = open(t->part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (t->fd < 0)
        return pesc_fail(err, "cannot write %s: %s", t->part, strerror(errno));
    if (flock(t->fd, LOCK_EX | LOCK_NB) != 0) {
        close_part(t);
        return 1;
    }
    /* the lock holder may have renamed the part to its final name between our open and
     * flock: then this descriptor is the finished file, which must not be touched */
    struct stat st, named;
    if (fstat(t->fd, &st) != 0 || stat(t->part, &named) != 0 || st.st_ino != named.st_ino ||
        st.st_dev != named.st_dev) {
        close_part(t);
        return 1;
    }
    char *etag = NULL;
    size_t len = 0;
    t->validator[0] = '\0';
    if (st.st_size > 0 && pesc_read_file(t->etag_path, &etag, &len, NULL) == 0 && len > 0 &&
        len < sizeof t->validator)
        memcpy(t->validator, etag, len + 1);
    free(etag);
    fetch_sha256_init(&t->hash);
    t->offset = 0;
    if (t->validator[0]) {
        /* resumable: the validator of the server that wrote these bytes is known */
        publish_state(f, t, FETCH_VERIFYING, "hashing the %lld bytes already downloaded",
                      (long long)st.st_size);
        if (hash_fd_prefix(t->fd, st.st_size, &t->hash) == 0)
            t->offset = st.st_size;
        else
            fetch_sha256_init(&t->hash);
    }
    if (t->offset == 0)
        t->validator[0] = '\0';
    return 0;
}

/* A complete file under the final name is reused, unless the caller asked for a new copy;
 * with an expected hash it must match. */
static int reuse_cached(fetcher *f, transfer *t)
{
    struct stat st;
    if ((t->flags & FETCH_REPLACE) || stat(t->dest, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    if (t->expected_sha[0]) {
        publish_state(f, t, FETCH_VERIFYING, "checking the cached copy");
        char got[FETCH_SHA256_HEX_LEN + 1];
        if (hash_file(t->dest, got) != 0 || strcmp(got, t->expected_sha) != 0)
            return 0;   /* a stale copy: download again; the rename replaces it */
    }
    pthread_mutex_lock(&f->lock);
    t->pub.done = t->pub.total = st.st_size;
    pthread_mutex_unlock(&f->lock);
    publish_state(f, t, FETCH_CACHED, t->expected_sha[0] ? "already there, SHA-256 checked"
                                                         : "in the cache");
    return 1;
}

static void set_common_options(fetcher *f, transfer *t)
{
    CURL *e = t->easy;
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, t->current_url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);   /* redirects are judged in judge_try */
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(e, CURLOPT_USERAGENT, "pesc/" PACKAGE_VERSION);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, f->connect_timeout_s);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 256L * 1024);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (f->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, f->ca_file);
    if (f->ca_dir)
        curl_easy_setopt(e, CURLOPT_CAPATH, f->ca_dir);
}

/* Sends one request for t (the first hop of a try, or the next hop after a redirect). */
static void send_request(fetcher *f, transfer *t)
{
    set_common_options(f, t);
    curl_slist_free_all(t->headers);
    t->headers = NULL;
    char *origin = url_origin(t->current_url);
    t->hop_is_hub = origin && f->hub_origin && strcmp(origin, f->hub_origin) == 0;
    free(origin);
    if (t->hop_is_hub && f->token) {
        char *auth = str_printf("Authorization: Bearer %s", f->token);
        t->headers = curl_slist_append(t->headers, auth);
        memset(auth, 0, strlen(auth));
        free(auth);
    }
    if (t->offset > 0) {
        char range[32];
        snprintf(range, sizeof range, "%lld-", (long long)t->offset);
        curl_easy_setopt(t->easy, CURLOPT_RANGE, range);
        char *if_range = str_printf("If-Range: %s", t->validator);
        t->headers = curl_slist_append(t->headers, if_range);
        free(if_range);
    }
    curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
    t->status = 0;
    t->body_started = t->body_to_file = t->restart = t->write_errno = 0;
    t->received = 0;
    t->content_length = t->range_start = t->range_total = -1;
    t->retry_after_s = 0;
    t->errbuf[0] = '\0';
    t->last_data_at = t->window_at = pesc_now();
    t->window_bytes = 0;
    curl_multi_add_handle(f->multi, t->easy);
    f->running++;
}

/* Whether the next try may ask for the rest of the part: without a strong validator a
 * resumed range could splice two versions of a file. */
static int can_resume(const transfer *t)
{
    return t->validator[0] && !starts_with(t->validator, "W/");
}

/* Starts a try of a queued transfer; returns 1 when it now occupies a slot. */
static int start_try(fetcher *f, transfer *t, double now)
{
    pesc_error err = {{0}};
    pthread_mutex_lock(&f->lock);
    int first = t->pub.attempt == 0 && t->fd < 0;
    pthread_mutex_unlock(&f->lock);
    if (first && reuse_cached(f, t))
        return 0;
    if (t->fd < 0) {
        int rc = open_part(f, t, &err);
        if (rc < 0) {
            fail_transfer(f, t, &err);
            return 0;
        }
        if (rc == 1) {
            t->next_try_at = now + 0.5;
            publish_state(f, t, FETCH_QUEUED, "another pesc is downloading %s", t->dest);
            return 0;
        }
    }
    if (!t->easy && !(t->easy = curl_easy_init())) {
        pesc_fail(&err, "libcurl could not start a transfer");
        fail_transfer(f, t, &err);
        return 0;
    }
    if (t->offset > 0 && !can_resume(t)) {
        t->offset = 0;
        fetch_sha256_init(&t->hash);
    }
    if (ftruncate(t->fd, (off_t)t->offset) != 0 ||
        lseek(t->fd, (off_t)t->offset, SEEK_SET) < 0) {
        pesc_fail(&err, "%s: %s", t->part, strerror(errno));
        fail_transfer(f, t, &err);
        return 0;
    }
    free(t->current_url);
    t->current_url = xstrdup(t->request_url);
    t->redirects = 0;
    t->linked_sha[0] = '\0';
    if (first)
        t->started_at = now;
    if (t->pub.attempt == 0)
        t->progress_mark = t->offset;   /* bytes from an earlier run are no progress of ours */
    t->rate_count = t->rate_next = 0;   /* a new try measures its own rate */
    pthread_mutex_lock(&f->lock);
    t->pub.attempt++;
    t->pub.done = t->offset;
    pthread_mutex_unlock(&f->lock);
    publish_state(f, t, FETCH_RUNNING, t->offset > 0 ? "resuming at byte %lld" : "connecting",
                  (long long)t->offset);
    send_request(f, t);
    return 1;
}

/* ---- the worker: libcurl callbacks -------------------------------------------------------- */

/* Every byte of a response, header or body, keeps the try from falling silent; only its
 * body_bytes count towards the data a stall window asks for, and that its message names (see
 * try_stalled). */
static void note_received(transfer *t, size_t body_bytes)
{
    t->last_data_at = pesc_now();
    t->window_bytes += (int64_t)body_bytes;
}

/* "Name: value" when line starts with name (any case); the value trimmed into out. */
static int header_value(const char *line, size_t n, const char *name, char *out, size_t cap)
{
    size_t k = strlen(name);
    if (n <= k || strncasecmp(line, name, k) != 0 || line[k] != ':')
        return 0;
    const char *v = line + k + 1, *end = line + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    size_t len = (size_t)(end - v) < cap - 1 ? (size_t)(end - v) : cap - 1;
    memcpy(out, v, len);
    out[len] = '\0';
    return 1;
}

static size_t on_header(char *line, size_t size, size_t count, void *arg)
{
    transfer *t = arg;
    size_t n = size * count;
    char value[256];
    note_received(t, 0);
    if (n >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        /* a new response (a proxy's CONNECT reply comes first): forget the last one's */
        t->content_length = t->range_start = t->range_total = -1;
        t->etag[0] = '\0';
        t->retry_after_s = 0;
    } else if (header_value(line, n, "Content-Length", value, sizeof value)) {
        t->content_length = strtoll(value, NULL, 10);
    } else if (header_value(line, n, "Content-Range", value, sizeof value)) {
        long long start, end, total;
        if (sscanf(value, "bytes %lld-%lld/%lld", &start, &end, &total) == 3) {
            t->range_start = start;
            t->range_total = total;
        } else if (sscanf(value, "bytes %lld-%lld/*", &start, &end) == 2) {
            t->range_start = start;
        }
    } else if (header_value(line, n, "ETag", value, sizeof value)) {
        snprintf(t->etag, sizeof t->etag, "%s", value);
    } else if (header_value(line, n, "Retry-After", value, sizeof value)) {
        char *end;
        double s = strtod(value, &end);
        if (end == value) {
            time_t when = curl_getdate(value, NULL);
            s = when > 0 ? difftime(when, time(NULL)) : 0;
        }
        t->retry_after_s = s < 0 ? 0 : s > MAX_RETRY_AFTER_S ? MAX_RETRY_AFTER_S : s;
    } else if (t->hop_is_hub && header_value(line, n, "X-Linked-Etag", value, sizeof value)) {
        /* the hub names a large (LFS) file's SHA-256 on the redirect to its storage */
        const char *v = value[0] == '"' ? value + 1 : value;
        char hex[FETCH_SHA256_HEX_LEN + 1] = "";
        if (strlen(v) >= FETCH_SHA256_HEX_LEN)
            memcpy(hex, v, sizeof hex - 1);
        hex[FETCH_SHA256_HEX_LEN] = '\0';
        if (is_sha256_hex(hex) && (v[64] == '\0' || v[64] == '"')) {
            lowercase(hex);
            memcpy(t->linked_sha, hex, sizeof hex);
        }
    }
    return n;
}

/* First body byte of a response: decides whether it goes into the part, and where. */
static int start_body(transfer *t)
{
    t->body_started = 1;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
    if (t->status == 206) {
        if (t->range_start != t->offset) {
            t->restart = 1;   /* not the range asked for: start over */
            return -1;
        }
    } else if (t->status == 200) {
        if (t->offset > 0) {
            /* If-Range did not match (the file changed) or no range support: start over */
            if (ftruncate(t->fd, 0) != 0 || lseek(t->fd, 0, SEEK_SET) < 0) {
                t->write_errno = errno;
                return -1;
            }
            t->offset = 0;
            fetch_sha256_init(&t->hash);
        }
    } else {
        return 0;   /* an error page, a redirect: not data */
    }
    t->body_to_file = 1;
    if (t->status == 200) {
        /* keep the validator so that a later try (even another process) can resume */
        snprintf(t->validator, sizeof t->validator, "%s", t->etag);
        if (t->validator[0])
            write_small_file(t->etag_path, t->validator);
        else
            unlink(t->etag_path);
    }
    return 0;
}

static size_t on_body(char *data, size_t size, size_t count, void *arg)
{
    transfer *t = arg;
    size_t n = size * count;
    note_received(t, n);
    if (!t->body_started && start_body(t) != 0)
        return 0;
    if (!t->body_to_file)
        return n;
    for (size_t written = 0; written < n;) {
        ssize_t w = write(t->fd, data + written, n - written);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            t->write_errno = w < 0 ? errno : EIO;
            return 0;
        }
        fetch_sha256_update(&t->hash, data + written, (size_t)w);
        t->received += w;
        written += (size_t)w;
    }
    return n;
}

/* ---- the worker: judging a finished try --------------------------------------------------- */

/* Whether the try that just failed moved the download on; t->offset is what the next try
 * keeps. A user on a flaky link needs two things: a large download that keeps moving, a few
 * megabytes per connection over many reconnects, must get there; and a server that sends a
 * few bytes and then drops or stalls, every time, must not hold pesc forever. So the count of
 * failed tries starts over only once the download stands PROGRESS_BYTES further than where
 * it stood when the count last started over: small gains add up to that, and bytes that a
 * server without resume sends again from the start are not counted twice. Every new start
 * of the count needs that many more bytes of the file, so the tries are bounded. */
static int made_progress(transfer *t)
{
    if (t->offset < t->progress_mark + PROGRESS_BYTES)
        return 0;
    t->progress_mark = t->offset;
    return 1;
}

/* The failure after the last try: what happened, how often, and what the user can do. */
static void give_up(fetcher *f, transfer *t, const char *why)
{
    int tries = t->failures;
    pthread_mutex_lock(&f->lock);
    int attempts = t->pub.attempt;
    pthread_mutex_unlock(&f->lock);
    const char *plural = tries == 1 ? "y" : "ies";
    char count[96];
    if (attempts > tries)
        snprintf(count, sizeof count, "%d tr%s in a row without progress (%d in all)", tries,
                 plural, attempts);
    else
        snprintf(count, sizeof count, "%d tr%s", tries, plural);
    pesc_error err;
    if (t->offset > 0 && can_resume(t))
        pesc_fail(&err, "%s; gave up after %s; the %lld bytes received are kept in %s: "
                  "run again to resume", why, count, (long long)t->offset, t->part);
    else
        pesc_fail(&err, "%s; gave up after %s; check the URL and the network, then run "
                  "again (PESC_FETCH_RETRIES sets the number of retries)", why, count);
    close_failed_part(t);
    fail_transfer(f, t, &err);
}

static void schedule_retry(fetcher *f, transfer *t, const char *why, double now)
{
    t->failures = made_progress(t) ? 0 : t->failures + 1;
    if (t->failures > f->retries) {
        give_up(f, t, why);
        return;
    }
    int doublings = t->failures > 0 ? t->failures - 1 : 0;
    double delay = (double)f->backoff_ms / 1000.0 * (double)(1 << doublings);
    if (delay > MAX_BACKOFF_S)
        delay = MAX_BACKOFF_S;
    if (t->retry_after_s > delay)
        delay = t->retry_after_s;
    t->next_try_at = now + delay;
    if (t->failures == 0)
        publish_state(f, t, FETCH_RETRY_WAIT, "%s, retrying in %.1f s (progress made)", why,
                      delay);
    else
        publish_state(f, t, FETCH_RETRY_WAIT, "%s, retrying in %.1f s (try %d of %d)", why,
                      delay, t->failures + 1, f->retries + 1);
    pthread_mutex_lock(&f->lock);
    t->pub.retries++;
    memcpy(t->pub.last_retry, t->pub.message, sizeof t->pub.last_retry);
    pthread_mutex_unlock(&f->lock);
}

/* The downloaded part is complete: verify, make it durable, give it its final name. */
static void finish_download(fetcher *f, transfer *t)
{
    pesc_error err = {{0}};
    char got[FETCH_SHA256_HEX_LEN + 1];
    fetch_sha256_hex(&t->hash, got);
    const char *want = t->expected_sha[0] ? t->expected_sha : t->linked_sha[0] ? t->linked_sha
                                                                               : NULL;
    if (want && strcmp(got, want) != 0) {
        close_part(t);
        unlink(t->part);
        unlink(t->etag_path);
        pesc_fail(&err, "SHA-256 mismatch: expected %s, got %s (%s); the download was "
                  "deleted", want, got,
                  t->expected_sha[0] ? "check --sha256" : "as the hub reported");
        fail_transfer(f, t, &err);
        return;
    }
    if (fsync(t->fd) != 0) {
        pesc_fail(&err, "writing %s: %s (the partial download is kept; run again to resume)",
                  t->part, strerror(errno));
        close_failed_part(t);
        fail_transfer(f, t, &err);
        return;
    }
    if (rename(t->part, t->dest) != 0) {
        pesc_fail(&err, "cannot rename %s to %s: %s", t->part, t->dest, strerror(errno));
        close_failed_part(t);
        fail_transfer(f, t, &err);
        return;
    }
    unlink(t->etag_path);
    char *dir = dir_of(t->dest);
    int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) {
        fsync(dir_fd);   /* the rename itself survives a crash */
        close(dir_fd);
    }
    free(dir);
    close_part(t);
    pthread_mutex_lock(&f->lock);
    t->pub.done = t->pub.total = t->offset + t->received;
    pthread_mutex_unlock(&f->lock);
    publish_state(f, t, FETCH_DONE, "downloaded");
}

/* Follows a redirect here rather than in libcurl, so that the token stays with the hub. */
static void follow_redirect(fetcher *f, transfer *t)
{
    char *location = NULL;
    curl_easy_getinfo(t->easy, CURLINFO_REDIRECT_URL, &location);
    pesc_error err;
    if (!location || !(starts_with(location, "http://") || starts_with(location, "https://"))) {
        pesc_fail(&err, "HTTP %ld redirect to %s, which is not an http(s) URL", t->status,
                  location ? "a location" : "nowhere");
        close_failed_part(t);
        fail_transfer(f, t, &err);
        return;
    }
    if (++t->redirects > MAX_REDIRECTS) {
        pesc_fail(&err, "more than %d redirects", MAX_REDIRECTS);
        close_failed_part(t);
        fail_transfer(f, t, &err);
        return;
    }
    char *next = xstrdup(location);   /* owned by the easy handle until the next request */
    free(t->current_url);
    t->current_url = next;
    send_request(f, t);
}

static int retryable_curl_error(CURLcode rc)
{
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_COULDNT_CONNECT:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
        return 1;
    default:
        return 0;
    }
}

static void judge_http_status(fetcher *f, transfer *t, double now)
{
    pesc_error err;
    long s = t->status;
    if (s == 200 || s == 206) {
        if (!t->body_started && start_body(t) != 0) {   /* an empty body */
            t->offset = 0;
            schedule_retry(f, t, "the server sent another range than asked for", now);
            return;
        }
        if (t->range_total >= 0 && t->offset + t->received != t->range_total) {
            t->offset += t->received;
            schedule_retry(f, t, "the connection closed early", now);
            return;
        }
        t->offset += t->received;
        t->received = 0;
        finish_download(f, t);
        return;
    }
    t->offset += t->received;   /* error bodies are not written: received is 0 here */
    if (s == 301 || s == 302 || s == 303 || s == 307 || s == 308) {
        follow_redirect(f, t);
        return;
    }
    if (s == 408 || s == 429 || s >= 500) {
        char why[64];
        snprintf(why, sizeof why, "HTTP %ld%s", s, s == 429 ? " (too many requests)" : "");
        schedule_retry(f, t, why, now);
        return;
    }
    if (s == 416 && t->offset > 0) {
        /* the part is longer than the file: it cannot be part of it */
        t->offset = 0;
        t->validator[0] = '\0';
        fetch_sha256_init(&t->hash);
        schedule_retry(f, t, "HTTP 416 for the resumed range, starting over", now);
        return;
    }
    if (s == 404 && (t->flags & FETCH_OPTIONAL)) {
        if (t->offset == 0)
            unlink(t->part);
        close_part(t);
        publish_state(f, t, FETCH_ABSENT, "not on the server");
        return;
    }
    if ((s == 404 || s == 410) && starts_with(t->url, "hf://"))
        pesc_fail(&err, "not found (HTTP %ld); check the repository, file name and "
                  "revision", s);
    else if (s == 404 || s == 410)
        pesc_fail(&err, "not found (HTTP %ld); check the URL", s);
    else if (s == 401 || s == 403)
        pesc_fail(&err, "HTTP %ld, access denied; %s", s,
                  !t->hop_is_hub ? "the server refused the request"
                  : f->token     ? "HF_TOKEN was sent: check that it can read this repository "
                                   "(gated repositories need their terms accepted)"
                                 : "set HF_TOKEN to a hub token that can read this repository");
    else
        pesc_fail(&err, "HTTP %ld", s);
    close_failed_part(t);
    fail_transfer(f, t, &err);
}

/* A try (one request) has ended with rc; decide what comes next. why: the worker's reason
 * when it ended the try itself (a stall), else NULL for libcurl's. */
static void judge_try(fetcher *f, transfer *t, CURLcode rc, const char *why, double now)
{
    curl_multi_remove_handle(f->multi, t->easy);
    f->running--;
    if (t->status == 0)
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
    long os_errno = 0;
    curl_easy_getinfo(t->easy, CURLINFO_OS_ERRNO, &os_errno);
    int refused = rc == CURLE_COULDNT_CONNECT && os_errno == ECONNREFUSED;
    t->refusals = refused ? t->refusals + 1 : 0;   /* in a row: any other outcome starts over */
    pesc_error err;
    if (t->write_errno) {
        t->offset += t->received;
        pesc_fail(&err, "writing %s: %s (%s; free space and run again)", t->part,
                  strerror(t->write_errno), t->offset > 0 ? "the partial download is kept, "
                  "to resume" : "nothing of it could be written");   /* none: close_failed_part */
        close_failed_part(t);
        fail_transfer(f, t, &err);
        return;
    }
    if (t->restart) {
        t->offset = 0;
        t->validator[0] = '\0';
        fetch_sha256_init(&t->hash);
        schedule_retry(f, t, "the server sent another range than asked for", now);
        return;
    }
    if (rc == CURLE_OK) {
        judge_http_status(f, t, now);
        return;
    }
    t->offset += t->received;
    const char *detail = why ? why : t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc);
    if (t->refusals >= 2) {
        /* refused twice (a second apart): nothing listens there; a dead link would time out,
         * and the whole budget of retries took half a minute to say so */
        pesc_fail(&err, "%s: connection refused twice (check the host and port, and that the "
                  "server, or proxy, is running)", detail);
        close_failed_part(t);
        fail_transfer(f, t, &err);
        return;
    }
    if (retryable_curl_error(rc)) {
        schedule_retry(f, t, detail, now);
        return;
    }
    if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE)
        pesc_fail(&err, "TLS certificate check failed: %s (set CURL_CA_BUNDLE or "
                  "SSL_CERT_FILE to your CA bundle)", detail);
    else if (rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY)
        pesc_fail(&err, "%s (check the URL, the network and proxy settings)", detail);
    else
        pesc_fail(&err, "%s", detail);
    close_failed_part(t);
    fail_transfer(f, t, &err);
}

/* ---- the worker loop ---------------------------------------------------------------------- */

static int is_cancelled(fetcher *f, transfer *t)
{
    pthread_mutex_lock(&f->lock);
    int c = t->cancel;
    pthread_mutex_unlock(&f->lock);
    return c;
}

/* Whether the running try t is stalled at `now`; if so, why says how, for the retry message.
 * Checked here rather than with CURLOPT_LOW_SPEED_*, whose speed is an average over several
 * seconds and which names no byte count. Two ways to stall:
 *   silence: nothing for stall_s seconds (a link that went dead);
 *   a trickle: fewer than STALL_MIN_BYTES of body in a window of stall_s seconds (headers
 *   keep a try from silence, but are not the data it waits for). A server or proxy that
 *   sends a byte every 30 s never falls silent, and would hold a multi-GB download for days.
 *   Windows follow one another from the request on, so a trickle is noticed at most
 *   2 * stall_s after it begins. 1 KiB a minute (17 bytes/s) is far below any real link,
 *   even a congested mobile one, which moves tens of KiB in that time; a lower stall_s
 *   asks for the same 1 KiB sooner (PESC_FETCH_STALL_S=1: 1 KiB/s). */
static int try_stalled(const fetcher *f, transfer *t, double now, char *why, size_t cap)
{
    double stall_s = (double)f->stall_s, window_s = now - t->window_at;
    if (now - t->last_data_at > stall_s) {
        snprintf(why, cap, "stalled: 0 bytes in the last %ld s", f->stall_s);
        return 1;
    }
    if (window_s < stall_s)
        return 0;
    if (t->window_bytes < STALL_MIN_BYTES) {
        snprintf(why, cap, "stalled: %lld bytes in the last %.0f s", (long long)t->window_bytes,
                 window_s);
        return 1;
    }
    t->window_at = now;
    t->window_bytes = 0;
    return 0;
}

/* Cancels what was asked to stop, starts what may start; returns the wait until the next
 * scheduled retry (seconds), or 1 when there is none. */
static double schedule(fetcher *f, double now)
{
    pthread_mutex_lock(&f->lock);
    int n = f->n_items;
    pthread_mutex_unlock(&f->lock);
    double next = 1.0;
    for (int i = 0; i < n; i++) {
        pthread_mutex_lock(&f->lock);
        transfer *t = f->items[i];
        fetch_state state = t->pub.state;
        int cancel = t->cancel;
        pthread_mutex_unlock(&f->lock);
        if (fetch_state_final(state))
            continue;
        if (cancel) {
            if (state == FETCH_RUNNING) {
                curl_multi_remove_handle(f->multi, t->easy);
                f->running--;
            }
            t->offset += t->received;
            t->received = 0;
            close_part(t);
            publish_state(f, t, FETCH_CANCELLED, "cancelled");
            continue;
        }
        if (state == FETCH_RUNNING) {
            if (now - t->published_at >= PUBLISH_INTERVAL_S)
                publish_progress(f, t, now);
            char why[96];
            if (try_stalled(f, t, now, why, sizeof why))
                judge_try(f, t, CURLE_OPERATION_TIMEDOUT, why, now);
            continue;
        }
        if (t->next_try_at > now) {
            if (t->next_try_at - now < next)
                next = t->next_try_at - now;
            continue;
        }
        if (f->running < f->jobs)
            start_try(f, t, now);
    }
    return next;
}

static void collect_finished(fetcher *f)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(f->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        transfer *t = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        CURLcode rc = msg->data.result;
        double now = pesc_now();
        publish_progress(f, t, now);
        if (is_cancelled(f, t))
            continue;   /* schedule() takes it out */
        judge_try(f, t, rc, NULL, now);
    }
}

static void *worker_main(void *arg)
{
    fetcher *f = arg;
    for (;;) {
        pthread_mutex_lock(&f->lock);
        int quit = f->quit;
        pthread_mutex_unlock(&f->lock);
        if (quit)
            break;
        int still;
        curl_multi_perform(f->multi, &still);
        collect_finished(f);
        /* after judging, so that a retry due in 20 ms is not slept through; libcurl's own
         * timers (a handle just added) cut the poll short as well */
        double wait_s = schedule(f, pesc_now());
        if (f->running > 0 && wait_s > PUBLISH_INTERVAL_S)
            wait_s = PUBLISH_INTERVAL_S;
        curl_multi_poll(f->multi, NULL, 0, (int)(wait_s * 1000) + 1, NULL);
    }
    /* shutting down: whatever still runs stops here, its part kept for a later resume */
    pthread_mutex_lock(&f->lock);
    int n = f->n_items;
    pthread_mutex_unlock(&f->lock);
    for (int i = 0; i < n; i++) {
        pthread_mutex_lock(&f->lock);
        transfer *t = f->items[i];
        fetch_state state = t->pub.state;
        pthread_mutex_unlock(&f->lock);
        if (fetch_state_final(state))
            continue;
        if (state == FETCH_RUNNING)
            curl_multi_remove_handle(f->multi, t->easy);
        close_part(t);
        publish_state(f, t, FETCH_CANCELLED, "cancelled");
    }
    return NULL;
}

/* ---- public calls ------------------------------------------------------------------------- */

static char *default_cache_dir(pesc_error *err)
{
    const char *xdg = env_or_null("XDG_CACHE_HOME");
    if (xdg && xdg[0] == '/')
        return str_printf("%s/pesc", xdg);
    const char *home = env_or_null("HOME");
    if (home)
        return str_printf("%s/.cache/pesc", home);
    pesc_fail(err, "no cache directory: set XDG_CACHE_HOME (or HOME)");
    return NULL;
}

fetcher *fetcher_new(const fetch_options *options, pesc_error *err)
{
    fetch_options o = options ? *options : (fetch_options){0};
    long retries, backoff_ms, stall_s;
    if (env_long("PESC_FETCH_RETRIES", 5, 0, 30, &retries, err) != 0 ||
        env_long("PESC_FETCH_BACKOFF_MS", 1000, 0, 3600000, &backoff_ms, err) != 0 ||
        env_long("PESC_FETCH_STALL_S", 60, 1, 86400, &stall_s, err) != 0)
        return NULL;
    char *cache_dir = o.cache_dir ? xstrdup(o.cache_dir) : default_cache_dir(err);
    if (!cache_dir)
        return NULL;
    while (strlen(cache_dir) > 1 && cache_dir[strlen(cache_dir) - 1] == '/')
        cache_dir[strlen(cache_dir) - 1] = '\0';
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(cache_dir);
        pesc_fail(err, "libcurl failed to initialize");
        return NULL;
    }
    fetcher *f = xcalloc(1, sizeof *f);
    f->cache_dir = cache_dir;
    const char *endpoint = o.hf_endpoint ? o.hf_endpoint : env_or_null("PESC_HF_ENDPOINT");
    if (!endpoint)
        endpoint = env_or_null("HF_ENDPOINT");
    f->hf_endpoint = xstrdup(endpoint ? endpoint : FETCH_HF_DEFAULT_ENDPOINT);
    f->hub_origin = url_origin(f->hf_endpoint);
    const char *token = o.token ? o.token : env_or_null("HF_TOKEN");
    f->token = token && *token ? xstrdup(token) : NULL;
    const char *ca = env_or_null("CURL_CA_BUNDLE");
    f->ca_file = ca ? xstrdup(ca) : env_or_null("SSL_CERT_FILE") ? xstrdup(getenv("SSL_CERT_FILE"))
                                                                 : NULL;
    f->ca_dir = env_or_null("SSL_CERT_DIR") ? xstrdup(getenv("SSL_CERT_DIR")) : NULL;
    f->jobs = o.jobs > 0 ? o.jobs : 4;
    f->retries = o.retries > 0 ? o.retries : o.retries < 0 ? 0 : (int)retries;
    if (f->retries > 30)
        f->retries = 30;
    f->backoff_ms = o.backoff_ms > 0 ? o.backoff_ms : backoff_ms;
    f->stall_s = o.stall_s > 0 ? o.stall_s : stall_s;
    f->connect_timeout_s = o.connect_timeout_s > 0 ? o.connect_timeout_s : 30;
    pthread_mutex_init(&f->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&f->changed, &attr);
    pthread_condattr_destroy(&attr);
    f->multi = curl_multi_init();
    if (!f->multi) {
        pesc_fail(err, "libcurl could not create a multi handle");
        fetcher_delete(f);
        return NULL;
    }
    if (pthread_create(&f->thread, NULL, worker_main, f) != 0) {
        pesc_fail(err, "cannot start the download thread: %s", strerror(errno));
        fetcher_delete(f);
        return NULL;
    }
    f->thread_started = 1;
    return f;
}

void fetcher_delete(fetcher *f)
{
    if (!f)
        return;
    if (f->thread_started) {
        pthread_mutex_lock(&f->lock);
        f->quit = 1;
        pthread_mutex_unlock(&f->lock);
        curl_multi_wakeup(f->multi);
        pthread_join(f->thread, NULL);
    }
    for (int i = 0; i < f->n_items; i++)
        transfer_free(f->items[i]);
    free(f->items);
    if (f->multi)
        curl_multi_cleanup(f->multi);
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->changed);
    if (f->token)
        memset(f->token, 0, strlen(f->token));
    free(f->token);
    free(f->cache_dir);
    free(f->hf_endpoint);
    free(f->hub_origin);
    free(f->ca_file);
    free(f->ca_dir);
    free(f);
    curl_global_cleanup();
}

const char *fetcher_cache_dir(const fetcher *f)
{
    return f->cache_dir;
}

const char *fetcher_hf_endpoint(const fetcher *f)
{
    return f->hf_endpoint;
}

/* The name to show for a transfer: the repository path of an hf:// file, else the URL's
 * last part. */
static void display_name(const char *url, char *out, size_t cap)
{
    const char *s = url;
    if (starts_with(url, "hf://")) {
        s += strlen("hf://");
        if (starts_with(s, "datasets/"))
            s += strlen("datasets/");
    } else {
        const char *q = strpbrk(url, "?#");
        size_t n = q ? (size_t)(q - url) : strlen(url);
        const char *slash = url + n;
        while (slash > url && slash[-1] != '/')
            slash--;
        snprintf(out, cap, "%.*s", (int)(url + n - slash), slash);
        if (*out)
            return;
    }
    snprintf(out, cap, "%s", s);
}

int fetcher_add(fetcher *f, const char *url, const char *dest, const char *sha256,
                unsigned flags, pesc_error *err)
{
    if (sha256 && !is_sha256_hex(sha256))
        return pesc_fail(err, "%s: expected SHA-256 must be 64 hex digits", url);
    char *request_url, *cache_path;
    if (fetch_map_url(url, f->hf_endpoint, &request_url, &cache_path, err) != 0)
        return -1;
    char *final = dest ? xstrdup(dest) : pesc_path_join(f->cache_dir, cache_path);
    free(cache_path);

    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < f->n_items; i++) {
        transfer *old = f->items[i];
        fetch_state s = old->pub.state;
        if (strcmp(old->dest, final) == 0 && s != FETCH_FAILED && s != FETCH_CANCELLED) {
            int id = old->id;
            pthread_mutex_unlock(&f->lock);
            free(final);
            free(request_url);
            return id;
        }
    }
    pthread_mutex_unlock(&f->lock);

    transfer *t = xcalloc(1, sizeof *t);
    t->fd = -1;
    t->url = url_for_display(url);
    t->request_url = request_url;
    t->dest = final;
    t->part = str_printf("%s.part", final);
    t->etag_path = str_printf("%s.part.etag", final);
    if (sha256) {
        snprintf(t->expected_sha, sizeof t->expected_sha, "%s", sha256);
        lowercase(t->expected_sha);
    }
    t->flags = flags;
    t->content_length = t->range_start = t->range_total = -1;
    t->pub.state = FETCH_QUEUED;
    t->pub.total = -1;
    t->pub.eta_s = -1;
    display_name(t->url, t->pub.name, sizeof t->pub.name);
    snprintf(t->pub.url, sizeof t->pub.url, "%s", t->url);
    snprintf(t->pub.message, sizeof t->pub.message, "queued");

    pthread_mutex_lock(&f->lock);
    if (f->n_items == f->cap_items) {
        f->cap_items = f->cap_items ? 2 * f->cap_items : 16;
        f->items = xrealloc(f->items, (size_t)f->cap_items * sizeof *f->items);
    }
    t->id = t->pub.id = f->n_items;
    f->items[f->n_items++] = t;
    pthread_mutex_unlock(&f->lock);
    curl_multi_wakeup(f->multi);
    return t->id;
}

static int ended_locked(fetcher *f, int id)
{
    if (id != FETCH_ALL)
        return id < 0 || id >= f->n_items || fetch_state_final(f->items[id]->pub.state);
    for (int i = 0; i < f->n_items; i++)
        if (!fetch_state_final(f->items[i]->pub.state))
            return 0;
    return 1;
}

int fetcher_wait(fetcher *f, int id, double timeout_s)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_s >= 0) {
        double whole = (double)(long)timeout_s;
        deadline.tv_sec += (time_t)whole;
        deadline.tv_nsec += (long)((timeout_s - whole) * 1e9);
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&f->lock);
    int ended;
    while (!(ended = ended_locked(f, id))) {
        if (timeout_s < 0)
            pthread_cond_wait(&f->changed, &f->lock);
        else if (pthread_cond_timedwait(&f->changed, &f->lock, &deadline) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&f->lock);
    return ended;
}

int fetcher_result(fetcher *f, int id, char **path, pesc_error *err)
{
    if (path)
        *path = NULL;
    pthread_mutex_lock(&f->lock);
    if (id < 0 || id >= f->n_items) {
        pthread_mutex_unlock(&f->lock);
        return pesc_fail(err, "no download with id %d", id);
    }
    transfer *t = f->items[id];
    int rc;
    switch (t->pub.state) {
    case FETCH_DONE:
    case FETCH_CACHED:
        if (path)
            *path = xstrdup(t->dest);
        rc = 0;
        break;
    case FETCH_ABSENT: rc = 1; break;
    case FETCH_FAILED:
        if (err)
            *err = t->failure;
        rc = -1;
        break;
    case FETCH_CANCELLED: rc = pesc_fail(err, "%s: download cancelled", t->url); break;
    default: rc = pesc_fail(err, "%s: download still in progress", t->url); break;
    }
    pthread_mutex_unlock(&f->lock);
    return rc;
}

void fetcher_cancel(fetcher *f, int id)
{
    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < f->n_items; i++)
        if (id == FETCH_ALL || i == id)
            f->items[i]->cancel = 1;
    pthread_mutex_unlock(&f->lock);
    curl_multi_wakeup(f->multi);
}

int fetcher_snapshot(fetcher *f, fetch_progress *out, int cap)
{
    pthread_mutex_lock(&f->lock);
    int n = f->n_items;
    for (int i = 0; i < n && i < cap; i++)
        out[i] = f->items[i]->pub;
    pthread_mutex_unlock(&f->lock);
    return n;
}

int fetcher_get(fetcher *f, const char *url, const char *sha256, char **path,
                pesc_error *err)
{
    int id = fetcher_add(f, url, NULL, sha256, 0, err);
    if (id < 0)
        return -1;
    fetcher_wait(f, id, -1);
    return fetcher_result(f, id, path, err);
}

/* ---- whole models -------------------------------------------------------------------------- */

static const char *const model_optional_files[] = {
    "tokenizer.json", "tokenizer_config.json", "generation_config.json",
    "special_tokens_map.json"};

/* Where a model's files come from and go to. */
typedef struct model_source {
    char *dir;                   /* the cache directory that will hold the model */
    char *url_prefix;            /* file URL = prefix + name + suffix */
    char *url_suffix;
} model_source;

static void model_source_free(model_source *m)
{
    free(m->dir);
    free(m->url_prefix);
    free(m->url_suffix);
}

static int model_source_init(fetcher *f, const char *url, model_source *m, pesc_error *err)
{
    *m = (model_source){0};
    if (starts_with(url, "hf://")) {
        hf_ref r;
        if (hf_parse(url, &r, err) != 0)
            return -1;
        if (r.dataset) {
            hf_ref_free(&r);
            return pesc_fail(err, "%s: a dataset repository; a model needs hf://OWNER/NAME", url);
        }
        const char *sub = r.path ? r.path : "";
        const char *sep = r.path ? "/" : "";
        char *rev = NULL;
        size_t n = 0;
        append_encoded(&rev, &n, r.rev, 0);
        m->dir = str_printf("%s/hf/models/%s/%s/%s%s%s", f->cache_dir, r.owner, r.name, rev,
                            sep, sub);
        m->url_prefix = str_printf("hf://%s/%s/%s%s", r.owner, r.name, sub, sep);
        m->url_suffix = str_printf("@%s", r.rev);
        free(rev);
        hf_ref_free(&r);
        return 0;
    }
    if (!starts_with(url, "http://") && !starts_with(url, "https://"))
        return pesc_fail(err, "%s: not a URL (use hf://OWNER/NAME or an http(s) directory URL)",
                         url);
    size_t len = strlen(url);
    char *base = len && url[len - 1] == '/' ? xstrdup(url) : str_printf("%s/", url);
    char *rel;
    if (http_cache_dir(base, &rel, NULL, err) != 0) {
        free(base);
        return -1;
    }
    m->dir = pesc_path_join(f->cache_dir, rel);
    m->url_prefix = base;
    m->url_suffix = xstrdup("");
    free(rel);
    return 0;
}

static int model_add(fetcher *f, const model_source *m, const char *name, int optional,
                     pesc_error *err)
{
    char *url = str_printf("%s%s%s", m->url_prefix, name, m->url_suffix);
    char *dest = pesc_path_join(m->dir, name);
    int id = fetcher_add(f, url, dest, NULL, optional ? FETCH_OPTIONAL : 0, err);
    free(url);
    free(dest);
    return id;
}

/* Shard names of an index file, each once, checked to stay inside the model directory. */
static int index_shards(const char *index_path, char ***names, int *count, pesc_error *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(index_path, 0, &jerr);
    json_t *map = root ? json_object_get(root, "weight_map") : NULL;
    *names = NULL;
    *count = 0;
    if (!json_is_object(map)) {
        json_decref(root);
        return pesc_fail(err, "%s: not a safetensors index (no \"weight_map\" object)",
                         index_path);
    }
    const char *key;
    json_t *value;
    json_object_foreach(map, key, value) {
        const char *shard = json_string_value(value);
        if (!shard || !valid_repo_path(shard)) {
            for (int i = 0; i < *count; i++)
                free((*names)[i]);
            free(*names);
            json_decref(root);
            return pesc_fail(err, "%s: tensor %s names a bad shard file", index_path, key);
        }
        int seen = 0;
        for (int i = 0; i < *count && !seen; i++)
            seen = strcmp((*names)[i], shard) == 0;
        if (seen)
            continue;
        *names = xrealloc(*names, (size_t)(*count + 1) * sizeof **names);
        (*names)[(*count)++] = xstrdup(shard);
    }
    json_decref(root);
    return 0;
}

/* The marker lists the files of a complete model; with it, no network is needed. */
static int model_complete(const char *dir)
{
    char *marker = pesc_path_join(dir, MODEL_MARKER);
    char *text = NULL;
    size_t len;
    int ok = pesc_read_file(marker, &text, &len, NULL) == 0 && len > 0;
    for (char *line = ok ? strtok(text, "\n") : NULL; ok && line; line = strtok(NULL, "\n")) {
        char *path = pesc_path_join(dir, line);
        ok = access(path, R_OK) == 0;
        free(path);
    }
    free(text);
    free(marker);
    return ok;
}

/* Waits for the ids (files of which the first n_required must come; the others may be
 * absent); present[i] says whether file i came. The first failure is reported. */
static int wait_files(fetcher *f, const int *ids, int n, int n_required, int *present,
                      pesc_error *err)
{
    int rc = 0;
    for (int i = 0; i < n; i++) {
        fetcher_wait(f, ids[i], -1);
        pesc_error e = {{0}};
        int r = fetcher_result(f, ids[i], NULL, &e);
        present[i] = r == 0;
        if ((r < 0 || (r == 1 && i < n_required)) && rc == 0) {
            if (r == 1)
                pesc_fail(&e, "download %d: missing", ids[i]);
            *err = e;
            rc = -1;
        }
    }
    return rc;
}

int fetcher_get_tokenizer(fetcher *f, const char *url, char **dir, pesc_error *err)
{
    static const char *const names[] = {"tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json"};
    enum { n = sizeof names / sizeof *names };
    model_source m;
    if (model_source_init(f, url, &m, err) != 0)
        return -1;
    int ids[n], present[n], rc = -1;
    for (int i = 0; i < n; i++)
        if ((ids[i] = model_add(f, &m, names[i], i > 0, err)) < 0)
            goto out;
    if (wait_files(f, ids, n, 1, present, err) != 0)
        goto out;
    *dir = m.dir;
    m.dir = NULL;
    rc = 0;
out:
    model_source_free(&m);
    return rc;
}

int fetcher_get_model(fetcher *f, const char *url, char **dir, pesc_error *err)
{
    model_source m;
    if (model_source_init(f, url, &m, err) != 0)
        return -1;
    if (model_complete(m.dir)) {
        *dir = m.dir;
        m.dir = NULL;
        model_source_free(&m);
        return 0;
    }
    enum { n_optional = sizeof model_optional_files / sizeof *model_optional_files };
    const char *names[n_optional + 2];
    int ids[n_optional + 2], present[n_optional + 2];
    char **shards = NULL;
    int n_shards = 0, rc = -1, n = 0;
    names[n++] = "config.json";   /* first: the one required file of this round */
    names[n++] = "model.safetensors.index.json";
    for (int i = 0; i < n_optional; i++)
        names[n++] = model_optional_files[i];
    for (int i = 0; i < n; i++)
        if ((ids[i] = model_add(f, &m, names[i], i > 0, err)) < 0)
            goto out;
    if (wait_files(f, ids, n, 1, present, err) != 0)
        goto out;

    char *index = pesc_path_join(m.dir, names[1]);
    int sharded = present[1];
    int shard_rc = sharded ? index_shards(index, &shards, &n_shards, err) : 0;
    free(index);
    if (shard_rc != 0)
        goto out;
    if (!sharded) {
        int id = model_add(f, &m, "model.safetensors", 1, err);
        if (id < 0)
            goto out;
        int got;
        if (wait_files(f, &id, 1, 0, &got, err) != 0)
            goto out;
        if (!got) {
            pesc_fail(err, "%s: the repository has neither model.safetensors nor "
                      "model.safetensors.index.json (pesc reads safetensors checkpoints)", url);
            goto out;
        }
    } else {
        int *shard_ids = xmalloc((size_t)n_shards * sizeof *shard_ids);
        int *shard_present = xmalloc((size_t)n_shards * sizeof *shard_present);
        int ok = 1;
        for (int i = 0; i < n_shards && ok; i++)
            ok = (shard_ids[i] = model_add(f, &m, shards[i], 0, err)) >= 0;
        if (ok)
            ok = wait_files(f, shard_ids, n_shards, n_shards, shard_present, err) == 0;
        free(shard_ids);
        free(shard_present);
        if (!ok)
            goto out;
    }

    /* remember what made the model complete */
    size_t len = 0;
    char *list = NULL;
    for (int i = 0; i < n; i++)
        if (present[i]) {
            append_text(&list, &len, names[i]);
            append_text(&list, &len, "\n");
        }
    if (!sharded)
        append_text(&list, &len, "model.safetensors\n");
    for (int i = 0; i < n_shards; i++) {
        append_text(&list, &len, shards[i]);
        append_text(&list, &len, "\n");
    }
    char *marker = pesc_path_join(m.dir, MODEL_MARKER);
    write_small_file(marker, list);   /* without it the next run only asks the network again */
    free(marker);
    free(list);
    *dir = m.dir;
    m.dir = NULL;
    rc = 0;
out:
    for (int i = 0; i < n_shards; i++)
        free(shards[i]);
    free(shards);
    model_source_free(&m);
    return rc;
}

/* ---- one-call helpers ---------------------------------------------------------------------- */

int fetch_url_to_cache(const char *url, char **path, pesc_error *err)
{
    if (!fetch_is_url(url)) {
        *path = xstrdup(url);
        return 0;
    }
    fetcher *f = fetcher_new(NULL, err);
    if (!f)
        return -1;
    int rc = fetcher_get(f, url, NULL, path, err);
    fetcher_delete(f);
    return rc;
}

int fetch_resolve_model(const char *url, char **dir, pesc_error *err)
{
    if (!fetch_is_url(url)) {
        *dir = xstrdup(url);
        return 0;
    }
    fetcher *f = fetcher_new(NULL, err);
    if (!f)
        return -1;
    int rc = fetcher_get_model(f, url, dir, err);
    fetcher_delete(f);
    return rc;
}
