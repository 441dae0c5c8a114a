/* test_sink — metric sinks as a run sees them: the JSONL log, the csv and tensorboard plugins
 * fed the same records; a sink on a full disk or a bad path is reported once and dropped while
 * the others go on. The TensorBoard file is decoded here independently (our own CRC32C and
 * protobuf reader): framing, both CRCs of every record, the first event's file_version, and
 * every scalar and histogram value. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "plugin.h"
#include "sink.h"
#include "check.h"

static char dir[] = "/tmp/pesc-test-sinkXXXXXX";

enum { L = 2, E = 4, STEPS = 3 };

/* ============================================================ reports of failing sinks ===== */

typedef struct reports {
    int n, csv, tensorboard;
    char last[512];
} reports;

static void on_report(void *ctx, const char *name, const char *message)
{
    reports *r = ctx;
    r->n++;
    r->csv += strcmp(name, "csv") == 0;
    r->tensorboard += strcmp(name, "tensorboard") == 0;
    snprintf(r->last, sizeof r->last, "%s", message);
}

/* ================================================================ the records fed ===== */

static double loss_at(int step) { return 2.0 - 0.25 * step; }

/* the held-out data is scored after step 2 only */
#define EVAL_STEP 2
#define EVAL_LOSS 1.625
#define EVAL_ANSWERS 0.375   /* the share of --eval-generate's answers right, of 8 */

static void fill(stats_record *r, int step)
{
    r->step = step;
    r->total_steps = STEPS;
    r->loss = loss_at(step);
    r->aux_loss = 0.01 * step;
    r->lr = 2e-4;
    r->grad_norm = 0.5 + step;
    r->tokens_per_s = 1000.0 * step;
    r->step_s = 0.1;
    r->elapsed_s = 0.1 * step;
    r->tokens = 128LL * step;
    r->eval_loss = step == EVAL_STEP ? EVAL_LOSS : 0.0;
    r->eval_tokens = step == EVAL_STEP ? 96 : 0;
    r->eval_answer_accuracy = step == EVAL_STEP ? EVAL_ANSWERS : 0.0;
    r->eval_answers = step == EVAL_STEP ? 8 : 0;
    for (int i = 0; i < L * E; i++) {
        r->load[i] = (float)((i % E) + 1) / 10.0f;
        r->norm_down[i] = (float)(i + step);
        r->norm_up[i] = 0.5f * (float)i;
    }
    stats_record_derive(r);
}

/* ======================================================= an independent decoder ===== */

static uint32_t crc_table[256];

static void make_crc_table(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
        crc_table[n] = c;
    }
}

static uint32_t crc32c(const unsigned char *p, size_t n)
{
    uint32_t c = ~0u;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

static uint32_t unmask(uint32_t m)
{
    uint32_t r = m - 0xa282ead8u;
    return (r >> 17) | (r << 15);
}

static uint64_t rd_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

typedef struct cursor {
    const unsigned char *p, *end;
    int bad;
} cursor;

static uint64_t varint(cursor *c)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (c->p >= c->end) {
            c->bad = 1;
            return 0;
        }
        unsigned char b = *c->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return v;
    }
    c->bad = 1;
    return 0;
}

static double f64(cursor *c)
{
    if (c->end - c->p < 8) {
        c->bad = 1;
        return 0;
    }
    uint64_t bits = rd_le(c->p, 8);
    c->p += 8;
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static float f32(cursor *c)
{
    if (c->end - c->p < 4) {
        c->bad = 1;
        return 0;
    }
    uint32_t bits = (uint32_t)rd_le(c->p, 4);
    c->p += 4;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static cursor bytes(cursor *c)
{
    uint64_t n = varint(c);
    cursor sub = {c->p, c->p + n, 0};
    if (c->bad || n > (uint64_t)(c->end - c->p)) {
        c->bad = 1;
        sub.end = sub.p;
        return sub;
    }
    c->p += n;
    return sub;
}

typedef struct histo {
    double min, max, num, sum, sum_sq;
    double limit[64], bucket[64];
    int n_limit, n_bucket;
} histo;

typedef struct value {
    char tag[64];
    int has_simple, has_histo;
    float simple;
    histo h;
} value;

typedef struct event {
    double wall_time;
    long long step;
    char file_version[32];
    value values[64];
    int n_values;
} event;

static void packed(cursor *c, double *out, int *n)
{
    cursor s = bytes(c);
    while (s.p < s.end && *n < 64)
        out[(*n)++] = f64(&s);
    c->bad |= s.bad;
}

static void decode_histo(cursor c, histo *h, int *bad)
{
    while (c.p < c.end && !c.bad) {
        uint64_t key = varint(&c);
        switch (key) {
        case 1 << 3 | 1: h->min = f64(&c); break;
        case 2 << 3 | 1: h->max = f64(&c); break;
        case 3 << 3 | 1: h->num = f64(&c); break;
        case 4 << 3 | 1: h->sum = f64(&c); break;
        case 5 << 3 | 1: h->sum_sq = f64(&c); break;
        case 6 << 3 | 2: packed(&c, h->limit, &h->n_limit); break;
        case 7 << 3 | 2: packed(&c, h->bucket, &h->n_bucket); break;
        default: c.bad = 1;
        }
    }
    *bad |= c.bad;
}

static void decode_value(cursor c, value *v, int *bad)
{
    while (c.p < c.end && !c.bad) {
        uint64_t key = varint(&c);
        if (key == (1 << 3 | 2)) {
            cursor s = bytes(&c);
            snprintf(v->tag, sizeof v->tag, "%.*s", (int)(s.end - s.p), (const char *)s.p);
        } else if (key == (2 << 3 | 5)) {
            v->simple = f32(&c);
            v->has_simple = 1;
        } else if (key == (5 << 3 | 2)) {
            decode_histo(bytes(&c), &v->h, bad);
            v->has_histo = 1;
        } else {
            c.bad = 1;
        }
    }
    *bad |= c.bad;
}

static int decode_event(const unsigned char *p, size_t n, event *ev)
{
    cursor c = {p, p + n, 0};
    int bad = 0;
    memset(ev, 0, sizeof *ev);
    while (c.p < c.end && !c.bad) {
        uint64_t key = varint(&c);
        if (key == (1 << 3 | 1)) {
            ev->wall_time = f64(&c);
        } else if (key == (2 << 3 | 0)) {
            ev->step = (long long)varint(&c);
        } else if (key == (3 << 3 | 2)) {
            cursor s = bytes(&c);
            snprintf(ev->file_version, sizeof ev->file_version, "%.*s", (int)(s.end - s.p),
                     (const char *)s.p);
        } else if (key == (5 << 3 | 2)) {
            cursor summary = bytes(&c);
            while (summary.p < summary.end && !summary.bad) {
                if (varint(&summary) != (1 << 3 | 2) || ev->n_values == 64) {
                    summary.bad = 1;
                    break;
                }
                decode_value(bytes(&summary), &ev->values[ev->n_values++], &bad);
            }
            bad |= summary.bad;
        } else {
            c.bad = 1;
        }
    }
    return c.bad || bad ? -1 : 0;
}

static const value *find_value(const event *ev, const char *tag)
{
    for (int i = 0; i < ev->n_values; i++)
        if (strcmp(ev->values[i].tag, tag) == 0)
            return &ev->values[i];
    return NULL;
}

enum { CLOCK_SLACK = 3600 };

/* the sinks' clock; time(2) may read a coarser source */
static double real_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void check_step_event(const event *ev, int step, double t0)
{
    CHECK(ev->step == step, "event step %lld, want %d", ev->step, step);
    /* Unix seconds from the real-time clock: neither milliseconds nor time since the start.
       The window is wide because a machine's clock may be stepped (NTP) while the test runs. */
    double now = real_seconds();
    CHECK(ev->wall_time >= t0 - CLOCK_SLACK && ev->wall_time <= now + CLOCK_SLACK,
          "step %d wall_time %.3f, want between %.0f and %.0f", step, ev->wall_time,
          t0 - CLOCK_SLACK, now + CLOCK_SLACK);
    const struct { const char *tag; double want; } scalars[] = {
        {"loss", loss_at(step)}, {"aux_loss", 0.01 * step}, {"lr", 2e-4},
        {"grad_norm", 0.5 + step}, {"tokens_per_s", 1000.0 * step}, {"tokens", 128.0 * step},
        {"load/layer_00/expert_0", 0.1}, {"load/layer_01/expert_3", 0.4}};
    for (size_t i = 0; i < sizeof scalars / sizeof *scalars; i++) {
        const value *v = find_value(ev, scalars[i].tag);
        CHECK(v && v->has_simple && v->simple == (float)scalars[i].want,
              "step %d: %s = %g, want %g", step, scalars[i].tag, v ? v->simple : -1.0,
              scalars[i].want);
    }
    CHECK(find_value(ev, "imbalance/layer_01") && find_value(ev, "entropy/layer_00"),
          "per-layer scalars");
    /* measured at one step: there it is, elsewhere it is left out (NaN, never written) */
    const value *eval = find_value(ev, "eval_loss");
    if (step == EVAL_STEP)
        CHECK(eval && eval->has_simple && eval->simple == (float)EVAL_LOSS,
              "step %d: eval_loss %g", step, eval ? eval->simple : -1.0);
    else
        CHECK(!eval, "step %d: an eval_loss where none was measured", step);
    const value *answers = find_value(ev, "eval_answer_accuracy");
    if (step == EVAL_STEP)
        CHECK(answers && answers->has_simple && answers->simple == (float)EVAL_ANSWERS,
              "step %d: eval_answer_accuracy %g", step, answers ? answers->simple : -1.0);
    else
        CHECK(!answers, "step %d: an eval_answer_accuracy where none was measured", step);
    const value *h = find_value(ev, "adapter_norm/down");
    CHECK(h && h->has_histo, "step %d: adapter_norm/down histogram", step);
    if (!h)
        return;
    double sum = 0, sum_sq = 0, counted = 0;
    for (int i = 0; i < L * E; i++) {
        sum += i + step;
        sum_sq += (double)(i + step) * (i + step);
    }
    for (int k = 0; k < h->h.n_bucket; k++)
        counted += h->h.bucket[k];
    CHECK(h->h.min == step && h->h.max == L * E - 1 + step && h->h.num == L * E &&
          h->h.sum == sum && h->h.sum_sq == sum_sq, "histogram summary of step %d", step);
    CHECK(h->h.n_limit == h->h.n_bucket && h->h.n_bucket > 0 && counted == L * E &&
          h->h.limit[h->h.n_limit - 1] == h->h.max, "histogram buckets of step %d", step);
    for (int k = 1; k < h->h.n_limit; k++)
        CHECK(h->h.limit[k] > h->h.limit[k - 1], "bucket limits ascend");
}

static void check_tensorboard(const char *tb_dir, double t0)
{
    char path[4096] = "";
    DIR *d = opendir(tb_dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strncmp(e->d_name, "events.out.tfevents.", 20) == 0)
            snprintf(path, sizeof path, "%s/%s", tb_dir, e->d_name);
    if (d)
        closedir(d);
    CHECK(path[0], "no events.out.tfevents.* file in %s", tb_dir);
    FILE *f = path[0] ? fopen(path, "rb") : NULL;
    if (!f)
        return;
    static unsigned char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    size_t at = 0;
    int records = 0;
    while (at < n) {
        CHECK(n - at >= 16, "truncated record header at %zu", at);
        if (n - at < 16)
            break;
        uint64_t len = rd_le(buf + at, 8);
        CHECK(unmask((uint32_t)rd_le(buf + at + 8, 4)) == crc32c(buf + at, 8),
              "record %d: length CRC", records);
        CHECK(len <= n - at - 16, "record %d: length %llu past the end", records,
              (unsigned long long)len);
        if (len > n - at - 16)
            break;
        const unsigned char *data = buf + at + 12;
        CHECK(unmask((uint32_t)rd_le(data + len, 4)) == crc32c(data, len),
              "record %d: data CRC", records);
        static event ev;
        CHECK(decode_event(data, len, &ev) == 0, "record %d: not a valid Event proto", records);
        if (records == 0) {
            CHECK(strcmp(ev.file_version, "brain.Event:2") == 0 && ev.step == 0 &&
                  ev.n_values == 0, "first record: file_version '%s'", ev.file_version);
        } else {
            check_step_event(&ev, records, t0);
        }
        records++;
        at += 16 + len;
    }
    CHECK(records == 1 + STEPS, "%d records, want %d", records, 1 + STEPS);
}

/* ======================================================================== csv, jsonl ===== */

static void check_csv(const char *path)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "%s missing", path);
    if (!f)
        return;
    char line[8192];
    int rows = 0;
    const char *want_head = "step,wall_time,elapsed_s,loss,aux_loss,z_loss,lr,grad_norm,"
                            "tokens_per_s,step_s,epoch,tokens,eval_loss,eval_accuracy,"
                            "eval_answer_accuracy,aux_coef,"
                            "entropy/layer_00,"
                            "entropy/layer_01,imbalance/layer_00,imbalance/layer_01,"
                            "load/layer_00/expert_0,";
    CHECK(fgets(line, sizeof line, f) && strncmp(line, want_head, strlen(want_head)) == 0,
          "csv header: %s", line);
    int columns = 1;
    for (char *c = line; *c; c++)
        columns += *c == ',';
    CHECK(columns == 3 + 13 + 2 * L + L * E && strstr(line, "load/layer_01/expert_3\n"),
          "csv: %d columns", columns);
    while (fgets(line, sizeof line, f)) {
        rows++;
        long step;
        double wall, elapsed, loss;
        CHECK(sscanf(line, "%ld,%lf,%lf,%lf", &step, &wall, &elapsed, &loss) == 4 &&
              step == rows && loss == loss_at(rows), "csv row %d: %s", rows, line);
        int n = 1;
        for (char *c = line; *c; c++)
            n += *c == ',';
        CHECK(n == columns, "csv row %d has %d fields", rows, n);
        /* eval_loss, the 13th field: a value after the evaluation, empty on other steps */
        const char *cell = line;
        for (int k = 1; k < 13 && cell; k++)
            cell = strchr(cell, ',') ? strchr(cell, ',') + 1 : NULL;
        CHECK(cell && (rows == EVAL_STEP ? strtod(cell, NULL) == EVAL_LOSS : *cell == ','),
              "csv row %d: eval_loss cell '%.12s'", rows, cell ? cell : "");
        /* eval_answer_accuracy, the 15th, so too */
        for (int k = 13; k < 15 && cell; k++)
            cell = strchr(cell, ',') ? strchr(cell, ',') + 1 : NULL;
        CHECK(cell && (rows == EVAL_STEP ? strtod(cell, NULL) == EVAL_ANSWERS : *cell == ','),
              "csv row %d: eval_answer_accuracy cell '%.12s'", rows, cell ? cell : "");
    }
    CHECK(rows == STEPS, "csv rows %d", rows);
    fclose(f);
}

static void check_jsonl(const char *path)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "%s missing", path);
    if (!f)
        return;
    char line[1 << 14];
    int steps = 0, sink_events = 0, pauses = 0, starts = 0, lines = 0;
    stats_record *r = NULL;
    while (fgets(line, sizeof line, f)) {
        stats_event e;
        stats_run run;
        pesc_error err = {{0}};
        int kind = stats_parse_line(line, &r, &e, &run, &err);
        CHECK(kind > 0, "jsonl line %d: %s", lines + 1, err.msg);
        starts += kind == 3 && lines == 0;
        steps += kind == 1;
        if (kind == 1)
            CHECK(r->step == steps && r->loss == loss_at(steps) &&
                  r->eval_tokens == (steps == EVAL_STEP ? 96 : 0) &&
                  (steps != EVAL_STEP || r->eval_loss == EVAL_LOSS) &&
                  (steps == EVAL_STEP) == (strstr(line, "\"eval_loss\"") != NULL) &&
                  r->eval_answers == (steps == EVAL_STEP ? 8 : 0) &&
                  (steps != EVAL_STEP || r->eval_answer_accuracy == EVAL_ANSWERS) &&
                  (steps == EVAL_STEP) == (strstr(line, "\"eval_answers\"") != NULL),
                  "jsonl step %d: eval %g over %lld, answers %g of %ld", steps, r->eval_loss,
                  r->eval_tokens, r->eval_answer_accuracy, r->eval_answers);
        sink_events += kind == 2 && strcmp(e.kind, "sink") == 0;
        pauses += kind == 2 && strcmp(e.kind, "pause") == 0;
        lines++;
    }
    stats_record_delete(r);
    fclose(f);
    CHECK(starts == 1 && steps == STEPS && pauses == 1, "jsonl: start %d, steps %d, pauses %d",
          starts, steps, pauses);
    CHECK(sink_events == 2, "each failed sink is logged once: %d sink events", sink_events);
}

/* ============================================================================= main ===== */

static void test_sinks(const pesc_plugins *plugins)
{
    stats_run run = {.shape = {.n_layers = L, .n_experts = E, .top_k = 2, .n_sources = 1},
                     .total_steps = STEPS, .adapter_dim = 8, .adapter_scale = 0.25};
    snprintf(run.model, sizeof run.model, "tiny");
    snprintf(run.backend, sizeof run.backend, "cpu");
    snprintf(run.sources[0], sizeof run.sources[0], "data.jsonl");
    char jsonl[600], csv[600], tb[600], base[600];
    snprintf(jsonl, sizeof jsonl, "jsonl:%s/run.jsonl", dir);
    snprintf(csv, sizeof csv, "csv:%s/metrics.csv", dir);
    snprintf(tb, sizeof tb, "tensorboard:%s/tb/run1", dir);
    snprintf(base, sizeof base, "%s/base", dir);
    const char *specs[] = {jsonl, csv, tb, "csv:/dev/full", "tensorboard:/proc/no/such/dir",
                           "csv"};
    reports rep = {0};
    sink_options o = {.base = base, .plugins = plugins, .report = on_report, .report_ctx = &rep};
    pesc_error err = {{0}};
    double t0 = real_seconds();
    sink_set *s = sinks_open(specs, 6, &run, &o, &err);
    CHECK(s != NULL, "sinks_open: %s", err.msg);
    if (!s)
        return;
    CHECK(rep.tensorboard == 1 && strstr(rep.last, "/proc/no"), "a bad path is reported: %s",
          rep.last);
    CHECK(sinks_active(s) == 5, "open sinks: %d", sinks_active(s));
    stats_record *r = stats_record_new(run.shape);
    for (int step = 1; step <= STEPS; step++) {
        fill(r, step);
        sinks_record(s, r);
        if (step == 1)
            CHECK(rep.csv == 1 && strstr(rep.last, "/dev/full") &&
                  strstr(rep.last, "No space left"), "a full disk is reported: %s", rep.last);
        if (step == 2) {
            stats_event e = {.step = 2, .elapsed_s = 0.2};
            snprintf(e.kind, sizeof e.kind, "pause");
            sinks_event(s, &e);
        }
    }
    CHECK(rep.n == 2 && rep.csv == 1 && rep.tensorboard == 1, "reported once each: %d", rep.n);
    CHECK(sinks_active(s) == 4 && sinks_failed(s) == 2, "active %d failed %d", sinks_active(s),
          sinks_failed(s));
    stats_record_delete(r);
    sinks_close(s);
    char path[700];
    snprintf(path, sizeof path, "%s/run.jsonl", dir);
    check_jsonl(path);
    snprintf(path, sizeof path, "%s/metrics.csv", dir);
    check_csv(path);
    snprintf(path, sizeof path, "%s/base.csv", dir);   /* "csv" alone: BASE.csv */
    check_csv(path);
    snprintf(path, sizeof path, "%s/tb/run1", dir);
    check_tensorboard(path, t0);
}

/* A sink that cannot close at the run's end is reported in words for the end, and the log,
 * closed after it, records that as a "sink" event. */
static void test_close_failure(const pesc_plugins *plugins)
{
    stats_run run = {.shape = {.n_layers = L, .n_experts = E, .top_k = 2, .n_sources = 1},
                     .total_steps = STEPS, .adapter_dim = 8, .adapter_scale = 0.25};
    snprintf(run.sources[0], sizeof run.sources[0], "data.jsonl");
    char jsonl[620], path[600];   /* "jsonl:" and the path */
    snprintf(path, sizeof path, "%s/close.jsonl", dir);
    snprintf(jsonl, sizeof jsonl, "jsonl:%s", path);
    const char *specs[] = {jsonl, "closefail"};
    reports rep = {0};
    sink_options o = {.plugins = plugins, .report = on_report, .report_ctx = &rep};
    pesc_error err = {{0}};
    sink_set *s = sinks_open(specs, 2, &run, &o, &err);
    CHECK(s != NULL, "sinks_open: %s", err.msg);
    if (!s)
        return;
    stats_record *r = stats_record_new(run.shape);
    fill(r, 1);
    sinks_record(s, r);
    stats_record_delete(r);
    sinks_close(s);
    CHECK(rep.n == 1 && strstr(rep.last, "failed to close: closefail: its last write failed; "
                                         "its output may be incomplete"),
          "a failed close is reported for the run's end: %d, %s", rep.n, rep.last);
    FILE *f = fopen(path, "r");
    char line[1 << 14];
    int logged = 0;
    while (f && fgets(line, sizeof line, f))
        logged += strstr(line, "\"sink\"") && strstr(line, "closefail: failed to close") != NULL;
    if (f)
        fclose(f);
    CHECK(logged == 1, "the log records the failed close once: %d", logged);
}

/* A run log is told by its first record's fields, not its bytes: the log the sink wrote, the
 * same re-serialised with spaces (json.dumps), after a byte order mark, with CRLF line ends
 * and without its start line (tail -n) is one; datasets, also ones with a "step" or an
 * "event" of their own, are not. */
static int log_file_of(const char *name, const char *text)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
    return stats_is_log_file(path);
}

static void test_log_detection(void)
{
    char path[700], line[1 << 14], *second = NULL;
    snprintf(path, sizeof path, "%s/run.jsonl", dir);
    CHECK(stats_is_log_file(path), "the log the jsonl sink wrote is a log");
    FILE *f = fopen(path, "r");
    for (int i = 0; f && i < 2 && fgets(line, sizeof line, f); i++)
        second = i == 1 ? strdup(line) : NULL;   /* the first step's record */
    if (f)
        fclose(f);
    CHECK(second && log_file_of("tail.jsonl", second), "a log without its start line is one: %s",
          second ? second : "(no second line)");
    free(second);
    static const struct { const char *name, *text; int is_log; } cases[] = {
        {"spaced.jsonl", "{\"event\": \"start\", \"model\": \"m\", \"total_steps\": 5}\n", 1},
        {"bom.jsonl", "\xef\xbb\xbf\n{\"event\":\"start\",\"total_steps\":5}\r\n", 1},
        {"crlf.jsonl", "{ \"step\": 3, \"event\": \"save\", \"text\": \"saved\" }\r\n", 1},
        {"step.jsonl", "{\"loss\": null, \"step\": 7, \"lr\": 0.1, \"grad_norm\": null, "
         "\"tokens_per_s\": 9}\n", 1},
        {"text.jsonl", "{\"text\": \"{\\\"event\\\":\\\"start\\\"\"}\n", 0},
        {"steps.jsonl", "{\"step\": 1, \"text\": \"add the flour\"}\n", 0},
        {"events.jsonl", "{\"event\": \"concert\", \"step\": 2, \"text\": \"x\"}\n", 0},
        {"started.jsonl", "{\"event\": \"start\", \"text\": \"a race\"}\n", 0},
        {"array.json", "[{\"event\": \"start\", \"total_steps\": 5}]\n", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        CHECK(log_file_of(cases[i].name, cases[i].text) == cases[i].is_log, "%s must%s be a log",
              cases[i].name, cases[i].is_log ? "" : " not");
}

static void test_bad_specs(const pesc_plugins *plugins)
{
    stats_run run = {.shape = {.n_layers = L, .n_experts = E, .top_k = 2}};
    sink_options o = {.base = dir, .plugins = plugins};
    pesc_error err = {{0}};
    const char *unknown[] = {"nope"};
    CHECK(!sinks_open(unknown, 1, &run, &o, &err) && strstr(err.msg, "--sink nope") &&
          strstr(err.msg, "tensorboard"), "unknown sink: %s", err.msg);
    const char *malformed[] = {":x"};
    CHECK(!sinks_open(malformed, 1, &run, &o, &err) && strstr(err.msg, "NAME:TARGET"),
          "malformed: %s", err.msg);
    const char *twice[] = {"csv:/tmp/x.csv", "csv:/tmp/x.csv"};
    CHECK(!sinks_open(twice, 2, &run, &o, &err) && strstr(err.msg, "twice"), "twice: %s",
          err.msg);
    const char *bad_path[] = {"jsonl:/proc/no/such/run.jsonl"};
    o.strict_open = 1;
    CHECK(!sinks_open(bad_path, 1, &run, &o, &err) && strstr(err.msg, "/proc/no/such"),
          "strict open: %s", err.msg);
    o.plugins = NULL;
    const char *plugin_sink[] = {"csv"};
    CHECK(!sinks_open(plugin_sink, 1, &run, &o, &err), "no plugins, no csv");
}

/* A file the run was not told to write (BASE.jsonl, BASE.csv) that is already there is not
 * replaced by a fresh run; a resumed one appends. A sink refused leaves the log untouched. */
static void test_unnamed_outputs(const pesc_plugins *plugins)
{
    stats_run run = {.shape = {.n_layers = L, .n_experts = E, .top_k = 2}};
    char base[600], path[700], log[700];
    snprintf(base, sizeof base, "%s/old", dir);
    sink_options o = {.base = base, .plugins = plugins, .strict_open = 1};
    pesc_error err = {{0}};
    const char *names[] = {"jsonl", "csv"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s.%s", base, names[i]);
        FILE *f = fopen(path, "w");
        fputs("precious\n", f);
        fclose(f);
        o.resume = 0;
        CHECK(!sinks_open(&names[i], 1, &run, &o, &err) && strstr(err.msg, path) &&
              strstr(err.msg, "already there") && strstr(err.msg, "--resume"),
              "a fresh run and an existing %s: %s", path, err.msg);
        o.resume = 1;
        sinks_close(sinks_open(&names[i], 1, &run, &o, &err));
        f = fopen(path, "r");
        char line[64] = "";
        CHECK(f && fgets(line, sizeof line, f) && strcmp(line, "precious\n") == 0,
              "%s: the first line is now '%s'", path, line);
        if (f)
            fclose(f);
    }
    /* a fresh run's named log that holds one is refused whole, before any sink opens */
    snprintf(log, sizeof log, "jsonl:%s/kept.jsonl", dir);
    FILE *f = fopen(log + 6, "w");
    fputs("precious\n", f);
    fclose(f);
    const char *specs[] = {log, "csv"};
    o.resume = 0;
    o.first_is_log = 1;
    CHECK(!sinks_open(specs, 2, &run, &o, &err) && strstr(err.msg, "--log: ") &&
          strstr(err.msg, "kept.jsonl already holds a log (9 bytes)"),
          "a log that holds one refused: %s", err.msg);
    f = fopen(log + 6, "r");
    char line[64] = "";
    CHECK(f && fgets(line, sizeof line, f) && strcmp(line, "precious\n") == 0,
          "a run refused for its log truncated it: '%s'", line);
    if (f)
        fclose(f);
    /* the log is named first but opens last: the csv refused, nothing is written to it */
    f = fopen(log + 6, "w");
    fclose(f);
    CHECK(!sinks_open(specs, 2, &run, &o, &err) && strstr(err.msg, "--sink csv: "),
          "the csv refused beside a log: %s", err.msg);
    struct stat st;
    CHECK(stat(log + 6, &st) == 0 && st.st_size == 0, "a run refused for its csv wrote the log");
}

/* The outputs' directories: made as mkdir -p does; a file in the way refused, naming it so */
static void test_make_dirs(void)
{
    char deep[512], file[512], under[512];
    snprintf(deep, sizeof deep, "%s/made/a//b/", dir);
    snprintf(file, sizeof file, "%s/a-file", dir);
    snprintf(under, sizeof under, "%s/a-file/x/y", dir);
    FILE *f = fopen(file, "w");
    if (f)
        fclose(f);
    struct stat st;
    CHECK(pesc_dirs_writable(deep) == 0 && stat(deep, &st) != 0,
          "a missing directory under a writable one can be made, and asking makes nothing");
    CHECK(pesc_make_dirs(deep) == 0 && stat(deep, &st) == 0 && S_ISDIR(st.st_mode) &&
              pesc_make_dirs(deep) == 0 && pesc_dirs_writable(deep) == 0,
          "mkdir -p %s, twice", deep);
    errno = 0;
    CHECK(pesc_dirs_writable(under) != 0 && errno == ENOTDIR, "a file above: ENOTDIR (%d)", errno);
    errno = 0;
    CHECK(pesc_make_dirs(under) != 0 && errno == ENOTDIR, "a file in the way: ENOTDIR (%d)", errno);
    errno = 0;
    CHECK(pesc_make_dirs(file) != 0 && errno == ENOTDIR, "the file itself: ENOTDIR (%d)", errno);
}

int main(void)
{
    make_crc_table();
    /* the decoder's own CRC32C against the standard check value */
    if (crc32c((const unsigned char *)"123456789", 9) != 0xe3069283u) {
        fprintf(stderr, "test_sink: the test's CRC32C is wrong\n");
        return 99;
    }
    if (!mkdtemp(dir))
        return 99;
    const char *b = getenv("top_builddir");
    char plugins_dir[2048];
    snprintf(plugins_dir, sizeof plugins_dir, "%s/plugins", b ? b : ".");
    pesc_plugins *plugins = plugins_new();
    if (plugins_scan_dir(plugins, plugins_dir, "test") < 2 ||
        !plugins_find(plugins, PESC_PLUGIN_SINK, "csv") ||
        !plugins_find(plugins, PESC_PLUGIN_SINK, "tensorboard")) {
        fprintf(stderr, "test_sink: the csv and tensorboard modules are not built in %s\n",
                plugins_dir);
        return 99;
    }
    test_make_dirs();
    test_sinks(plugins);
    test_log_detection();
    test_bad_specs(plugins);
    test_unnamed_outputs(plugins);
    char closefail[2100];
    snprintf(closefail, sizeof closefail, "%s/tests/plugins/working/.libs/close_fails.so",
             b ? b : ".");
    pesc_error err = {{0}};
    CHECK(plugins_load_file(plugins, closefail, "test", &err) == 0, "%s", err.msg);
    if (!err.msg[0])
        test_close_failure(plugins);
    plugins_delete(plugins);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        failures++;
    if (failures) {
        fprintf(stderr, "test_sink: %d failures\n", failures);
        return 1;
    }
    printf("test_sink: jsonl, csv and tensorboard written and decoded; failing sinks dropped\n");
    return 0;
}
