/* httpd — the HTTP/1.1 server the fetch tests talk to. Listens on two ephemeral ports of
 * 127.0.0.1 (the second plays "another host" for redirects), one thread per connection,
 * one response per connection. Every request is logged, one line each:
 *   port=P t=SECONDS method=M target=T range=R ifrange=I auth=none|ok|bad status=S sent=BYTES
 * (sent: body bytes written), so tests can check what really went over the wire.
 *
 * usage: httpd --root DIR --ports FILE --log FILE [--token T] [--lifetime S]
 * FILE gets "PORT_A PORT_B\n" once both ports listen. Exits on SIGTERM or after S seconds
 * (default 300), so a crashed test never leaves it behind for long.
 *
 * Routes (N counts requests for the exact target, path and query, from 1):
 *   /f/NAME?OPTIONS            ROOT/files/NAME with Range, If-Range and ETag
 *     fail=K&code=C            requests N <= K get status C (with retry_after=S: Retry-After)
 *     cut=K                    requests N <= K send half the body, then close
 *     stall=K                  requests N <= K send half the body, then go silent
 *     send=B                   cut and stall send B body bytes (at most) instead of half:
 *                              cut=99&send=10 is a server that drops after 10 bytes each time
 *     trickle=K                requests N <= K send the body at 5 bytes per second: never
 *                              silent, never getting anywhere
 *     redirect=PORT|self       302 to the same file on 127.0.0.1:PORT, or a relative /f/NAME
 *     v2=1                     requests N >= 2 serve NAME.v2 (the file "changed")
 *     noetag=1                 no ETag
 *     rate=B                   the body at about B bytes per second (a slow link)
 *   /hub/[datasets/]O/N/resolve/R/P   the hub: ROOT/hub/{datasets,models}/O/N/R/P; a repo
 *                              with a .private file needs "Authorization: Bearer TOKEN";
 *                              *.safetensors answer 302 to port B's /lfs/... with
 *                              X-Linked-Etag (P.linked-etag overrides the computed hash)
 *   /lfs/PATH                  ROOT/hub/PATH, plain
 * A request in absolute form (GET http://HOST/PATH, as sent to a proxy) is routed by its path
 * and logged with the whole URL as its target. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fetch_sha256.h"
#include "util.h"

typedef struct server {
    const char *root, *token;
    int ports[2];
    FILE *log;
    double t0;
    pthread_mutex_t lock;
    char **targets;              /* request counts per target */
    int *counts;
    int n_targets;
} server;

typedef struct request {
    char method[16];
    char target[2048];
    char path[2048];             /* decoded, without the query */
    const char *query;           /* into target, "" when none */
    char range[128], if_range[256], authorization[512];
    int port;
    int count;
} request;

typedef struct connection {
    server *s;
    int fd, port;
} connection;

static volatile sig_atomic_t stop_requested;

static void on_term(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* ---- small helpers ----------------------------------------------------------------------- */

static int send_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The value of NAME in a query string "a=1&b=2", or NULL. */
static const char *query_param(const char *query, const char *name, char *out, size_t cap)
{
    size_t k = strlen(name);
    for (const char *p = query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
        if (strncmp(p, name, k) == 0 && p[k] == '=') {
            const char *v = p + k + 1;
            size_t n = strcspn(v, "&");
            snprintf(out, cap, "%.*s", (int)n, v);
            return out;
        }
    }
    return NULL;
}

static long query_long(const char *query, const char *name, long fallback)
{
    char v[64];
    return query_param(query, name, v, sizeof v) ? strtol(v, NULL, 10) : fallback;
}

static void percent_decode(char *s)
{
    char *o = s;
    for (; *s; s++) {
        unsigned hi, lo;
        if (s[0] == '%' && sscanf(s + 1, "%1x%1x", &hi, &lo) == 2) {
            *o++ = (char)(hi << 4 | lo);
            s += 2;
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static void log_request(server *s, const request *r, int status, long long sent)
{
    const char *auth = !r->authorization[0] ? "none" : "bad";
    char want[600];
    snprintf(want, sizeof want, "Bearer %s", s->token ? s->token : "");
    if (r->authorization[0] && s->token && strcmp(r->authorization, want) == 0)
        auth = "ok";
    pthread_mutex_lock(&s->lock);
    fprintf(s->log, "port=%d t=%.3f method=%s target=%s range=%s ifrange=%s auth=%s status=%d "
            "sent=%lld\n", r->port, pesc_now() - s->t0, r->method, r->target,
            r->range[0] ? r->range : "-", r->if_range[0] ? r->if_range : "-", auth, status,
            sent);
    fflush(s->log);
    pthread_mutex_unlock(&s->lock);
}

static int count_request(server *s, const char *target)
{
    pthread_mutex_lock(&s->lock);
    int i = 0;
    while (i < s->n_targets && strcmp(s->targets[i], target) != 0)
        i++;
    if (i == s->n_targets) {
        s->targets = xrealloc(s->targets, (size_t)(i + 1) * sizeof *s->targets);
        s->counts = xrealloc(s->counts, (size_t)(i + 1) * sizeof *s->counts);
        s->targets[i] = xstrdup(target);
        s->counts[i] = 0;
        s->n_targets++;
    }
    int n = ++s->counts[i];
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* ---- responses --------------------------------------------------------------------------- */

static void respond_simple(connection *c, const request *r, int status, const char *extra)
{
    char head[1024], body[64];
    int n = snprintf(body, sizeof body, "status %d\n", status);
    int h = snprintf(head, sizeof head, "HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s"
                     "Connection: close\r\n\r\n", status, n, extra ? extra : "");
    long long sent = 0;
    if (send_all(c->fd, head, (size_t)h) == 0 && send_all(c->fd, body, (size_t)n) == 0)
        sent = n;
    log_request(c->s, r, status, sent);
}

/* Waits (up to 30 s) for the client to give up on a silent connection. */
static void wait_for_hangup(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char buf[256];
    for (int i = 0; i < 300 && !stop_requested; i++) {
        if (poll(&p, 1, 100) > 0 && recv(fd, buf, sizeof buf, 0) <= 0)
            return;
    }
}

#define TRICKLE_RATE 5               /* bytes per second of trickle=K */

/* How serve_file misbehaves: the /f/ options; all 0 is a plain, correct server. */
typedef struct file_behaviour {
    int no_etag, cut, stall;
    long long send;              /* body bytes before a cut or stall; 0: half the body */
    long rate;                   /* body bytes per second; 0: as fast as the socket takes */
} file_behaviour;

/* Sends n bytes; with a rate, in tenth-of-a-second slices (a byte at a time below 10 bytes
 * per second). */
static int send_paced(int fd, const char *data, size_t n, long rate)
{
    size_t slice = rate > 0 ? (size_t)(rate / 10 > 0 ? rate / 10 : 1) : n;
    long pause_ns = rate > 0 ? (long)(1e9 * (double)slice / (double)rate) : 0;
    struct timespec pause = {pause_ns / 1000000000L, pause_ns % 1000000000L};
    for (size_t at = 0; at < n; at += slice) {
        size_t k = n - at < slice ? n - at : slice;
        if (send_all(fd, data + at, k) != 0)
            return -1;
        if (rate > 0 && at + k < n)
            nanosleep(&pause, NULL);
    }
    return 0;
}

/* Serves a file with Range/If-Range, behaving as `how` says. */
static void serve_file(connection *c, const request *r, const char *file,
                       const file_behaviour *how, const char *extra_headers)
{
    char *data = NULL;
    size_t size = 0;
    if (pesc_read_file(file, &data, &size, NULL) != 0) {
        respond_simple(c, r, 404, NULL);
        return;
    }
    char hash[FETCH_SHA256_HEX_LEN + 1], etag[32] = "";
    fetch_sha256_buffer(data, size, hash);
    if (!how->no_etag)
        snprintf(etag, sizeof etag, "\"%.16s\"", hash);
    long long start = 0, end = (long long)size - 1;
    int partial = 0;
    if (r->range[0] && (!r->if_range[0] || strcmp(r->if_range, etag) == 0)) {
        long long a, b;
        if (sscanf(r->range, "bytes=%lld-%lld", &a, &b) == 2) {
            start = a;
            end = b < end ? b : end;
            partial = 1;
        } else if (sscanf(r->range, "bytes=%lld-", &a) == 1) {
            start = a;
            partial = 1;
        }
        if (partial && start >= (long long)size) {
            char extra[96];
            snprintf(extra, sizeof extra, "Content-Range: bytes */%zu\r\n", size);
            respond_simple(c, r, 416, extra);
            free(data);
            return;
        }
    }
    long long length = end - start + 1;
    char head[1024], range_header[128] = "", etag_header[64] = "";
    if (partial)
        snprintf(range_header, sizeof range_header, "Content-Range: bytes %lld-%lld/%zu\r\n",
                 start, end, size);
    if (etag[0])
        snprintf(etag_header, sizeof etag_header, "ETag: %s\r\n", etag);
    int status = partial ? 206 : 200;
    int h = snprintf(head, sizeof head, "HTTP/1.1 %d X\r\nContent-Length: %lld\r\n%s%s%s"
                     "Accept-Ranges: bytes\r\nConnection: close\r\n\r\n", status, length,
                     range_header, etag_header, extra_headers ? extra_headers : "");
    long long body = length, sent = 0;
    if (how->cut || how->stall)
        body = how->send <= 0 ? length / 2 : how->send < length ? how->send : length;
    if (send_all(c->fd, head, (size_t)h) == 0 &&
        send_paced(c->fd, data + start, (size_t)body, how->rate) == 0)
        sent = body;
    if (how->stall)
        wait_for_hangup(c->fd);
    log_request(c->s, r, status, sent);
    free(data);
}

static void route_files(connection *c, const request *r)
{
    const char *name = r->path + strlen("/f/");
    char value[64];
    long n = r->count;
    if (strstr(name, "..")) {
        respond_simple(c, r, 400, NULL);
        return;
    }
    if (query_param(r->query, "redirect", value, sizeof value)) {
        char location[2300];
        if (strcmp(value, "self") == 0)
            snprintf(location, sizeof location, "Location: /f/%s\r\n", name);
        else
            snprintf(location, sizeof location, "Location: http://127.0.0.1:%s/f/%s\r\n", value,
                     name);
        respond_simple(c, r, 302, location);
        return;
    }
    if (n <= query_long(r->query, "fail", 0)) {
        char extra[64] = "";
        long after = query_long(r->query, "retry_after", -1);
        if (after >= 0)
            snprintf(extra, sizeof extra, "Retry-After: %ld\r\n", after);
        respond_simple(c, r, (int)query_long(r->query, "code", 503), extra);
        return;
    }
    char file[4096];
    snprintf(file, sizeof file, "%s/files/%s%s", c->s->root, name,
             n >= 2 && query_long(r->query, "v2", 0) ? ".v2" : "");
    file_behaviour b = {.no_etag = query_long(r->query, "noetag", 0) != 0,
                        .cut = n <= query_long(r->query, "cut", 0),
                        .stall = n <= query_long(r->query, "stall", 0),
                        .send = query_long(r->query, "send", 0),
                        .rate = n <= query_long(r->query, "trickle", 0)
                                     ? TRICKLE_RATE
                                     : query_long(r->query, "rate", 0)};
    serve_file(c, r, file, &b, NULL);
}

/* The hub: /hub/[datasets/]OWNER/NAME/resolve/REV/PATH. */
static void route_hub(connection *c, const request *r)
{
    const char *p = r->path + strlen("/hub/");
    const char *kind = "models";
    if (strncmp(p, "datasets/", 9) == 0) {
        kind = "datasets";
        p += 9;
    }
    char owner[256], name[256], rev[256];
    int used = 0;
    if (sscanf(p, "%255[^/]/%255[^/]/resolve/%255[^/]/%n", owner, name, rev, &used) != 3 ||
        used == 0 || strstr(p, "..")) {
        respond_simple(c, r, 404, NULL);
        return;
    }
    const char *file_path = p + used;
    char repo[4096], file[8192], marker[4200];
    snprintf(repo, sizeof repo, "%s/hub/%s/%s/%s", c->s->root, kind, owner, name);
    snprintf(file, sizeof file, "%s/%s/%s", repo, rev, file_path);
    snprintf(marker, sizeof marker, "%s/.private", repo);
    if (file_exists(marker)) {
        char want[600];
        snprintf(want, sizeof want, "Bearer %s", c->s->token ? c->s->token : "");
        if (strcmp(r->authorization, want) != 0) {
            respond_simple(c, r, 401, NULL);
            return;
        }
    }
    if (!file_exists(file)) {
        respond_simple(c, r, 404, NULL);
        return;
    }
    size_t n = strlen(file_path);
    if (n > 12 && strcmp(file_path + n - 12, ".safetensors") == 0) {
        /* large files live elsewhere: the hub redirects and names their SHA-256 */
        char hash[FETCH_SHA256_HEX_LEN + 1], override[8300], *text = NULL, *data = NULL;
        size_t len;
        snprintf(override, sizeof override, "%s.linked-etag", file);
        if (pesc_read_file(override, &text, &len, NULL) == 0) {
            snprintf(hash, sizeof hash, "%s", text);
        } else if (pesc_read_file(file, &data, &len, NULL) == 0) {
            fetch_sha256_buffer(data, len, hash);
        } else {
            hash[0] = '\0';
        }
        free(text);
        free(data);
        char extra[9000];
        snprintf(extra, sizeof extra, "X-Linked-Etag: \"%s\"\r\nLocation: http://127.0.0.1:%d"
                 "/lfs/%s/%s/%s/%s/%s\r\n", hash, c->s->ports[1], kind, owner, name, rev,
                 file_path);
        respond_simple(c, r, 302, extra);
        return;
    }
    serve_file(c, r, file, &(file_behaviour){0}, NULL);
}

static void route_lfs(connection *c, const request *r)
{
    const char *rest = r->path + strlen("/lfs/");
    char file[4096];
    if (strstr(rest, "..")) {
        respond_simple(c, r, 400, NULL);
        return;
    }
    snprintf(file, sizeof file, "%s/hub/%s", c->s->root, rest);
    serve_file(c, r, file, &(file_behaviour){0}, NULL);
}

/* ---- connections ------------------------------------------------------------------------- */

static void header_into(const char *head, const char *name, char *out, size_t cap)
{
    size_t k = strlen(name);
    out[0] = '\0';
    for (const char *line = strstr(head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, name, k) == 0 && h[k] == ':') {
            const char *v = h + k + 1;
            while (*v == ' ')
                v++;
            size_t n = strcspn(v, "\r\n");
            snprintf(out, cap, "%.*s", (int)n, v);
            return;
        }
    }
}

static int read_request(connection *c, request *r)
{
    char head[16384];
    size_t n = 0;
    head[0] = '\0';
    while (!strstr(head, "\r\n\r\n")) {
        if (n + 1 >= sizeof head)
            return -1;
        ssize_t got = recv(c->fd, head + n, sizeof head - 1 - n, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        n += (size_t)got;
        head[n] = '\0';
    }
    *r = (request){.port = c->port};
    if (sscanf(head, "%15s %2047s", r->method, r->target) != 2)
        return -1;
    header_into(head, "Range", r->range, sizeof r->range);
    header_into(head, "If-Range", r->if_range, sizeof r->if_range);
    header_into(head, "Authorization", r->authorization, sizeof r->authorization);
    const char *origin_form = r->target;
    if (strncmp(r->target, "http://", 7) == 0) {   /* absolute form: we were asked as a proxy */
        const char *slash = strchr(r->target + 7, '/');
        origin_form = slash ? slash : "/";
    }
    snprintf(r->path, sizeof r->path, "%s", origin_form);
    char *q = strchr(r->path, '?');
    if (q)
        *q = '\0';
    const char *tq = strchr(r->target, '?');
    r->query = tq ? tq + 1 : "";
    percent_decode(r->path);
    r->count = count_request(c->s, r->target);
    return 0;
}

static void *connection_main(void *arg)
{
    connection *c = arg;
    request r;
    if (read_request(c, &r) == 0) {
        if (strcmp(r.method, "GET") != 0)
            respond_simple(c, &r, 405, NULL);
        else if (strncmp(r.path, "/f/", 3) == 0)
            route_files(c, &r);
        else if (strncmp(r.path, "/hub/", 5) == 0)
            route_hub(c, &r);
        else if (strncmp(r.path, "/lfs/", 5) == 0)
            route_lfs(c, &r);
        else
            respond_simple(c, &r, 404, NULL);
    }
    shutdown(c->fd, SHUT_WR);
    close(c->fd);
    free(c);
    return NULL;
}

static int listen_local(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        perror("httpd: listen on 127.0.0.1");
        exit(99);
    }
    *port = ntohs(a.sin_port);
    return fd;
}

int main(int argc, char **argv)
{
    server s = {.t0 = pesc_now()};
    const char *ports_file = NULL, *log_file = NULL;
    double lifetime = 300;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--root") == 0)
            s.root = argv[i + 1];
        else if (strcmp(argv[i], "--ports") == 0)
            ports_file = argv[i + 1];
        else if (strcmp(argv[i], "--log") == 0)
            log_file = argv[i + 1];
        else if (strcmp(argv[i], "--token") == 0)
            s.token = argv[i + 1];
        else if (strcmp(argv[i], "--lifetime") == 0)
            lifetime = atof(argv[i + 1]);
    }
    if (!s.root || !ports_file || !log_file) {
        fprintf(stderr, "usage: httpd --root DIR --ports FILE --log FILE [--token T] "
                "[--lifetime S]\n");
        return 2;
    }
    s.log = fopen(log_file, "a");
    if (!s.log) {
        perror(log_file);
        return 99;
    }
    pthread_mutex_init(&s.lock, NULL);
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct pollfd listeners[2];
    for (int i = 0; i < 2; i++)
        listeners[i] = (struct pollfd){.fd = listen_local(&s.ports[i]), .events = POLLIN};

    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", ports_file);
    FILE *pf = fopen(tmp, "w");
    if (!pf || fprintf(pf, "%d %d\n", s.ports[0], s.ports[1]) < 0 || fclose(pf) != 0 ||
        rename(tmp, ports_file) != 0) {
        perror(ports_file);
        return 99;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (!stop_requested && pesc_now() - s.t0 < lifetime) {
        if (poll(listeners, 2, 200) <= 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (!(listeners[i].revents & POLLIN))
                continue;
            int fd = accept(listeners[i].fd, NULL, NULL);
            if (fd < 0)
                continue;
            connection *c = xmalloc(sizeof *c);
            *c = (connection){.s = &s, .fd = fd, .port = s.ports[i]};
            pthread_t thread;
            if (pthread_create(&thread, &attr, connection_main, c) != 0) {
                close(fd);
                free(c);
            }
        }
    }
    /* connection threads may still run; the process ends with them */
    pthread_mutex_lock(&s.lock);
    fflush(s.log);
    pthread_mutex_unlock(&s.lock);
    return 0;
}
