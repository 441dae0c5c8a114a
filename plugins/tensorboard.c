/* tensorboard — a metric sink plugin that writes TensorBoard event files.
 *
 * `--sink tensorboard[:DIR]` (default BASE.tb/); then `tensorboard --logdir DIR`. Each open
 * starts a new file DIR/events.out.tfevents.TIME.HOST.PID (TensorBoard reads every such file of
 * a directory as one run, so a resumed run adds one, and a fresh run refuses a DIR that holds
 * one: its steps would be drawn as the other run's). A file that got no step is removed at
 * close.
 *
 * The file is TFRecord framing around Event protocol buffers, written by hand here:
 *   record  = uint64 length (little-endian), uint32 masked_crc32c(length bytes), data,
 *             uint32 masked_crc32c(data);  masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8
 *   Event   = wall_time (1, double), step (2, int64), file_version (3, "brain.Event:2", the
 *             first record only), summary (5) or session_log (6: SessionLog, status (1) START
 *             = 1; a resumed run's second record, at its checkpoint's step + 1, so that
 *             TensorBoard drops the steps a crashed run wrote past the checkpoint)
 *   Summary = repeated Value (1): tag (1), simple_value (2, float) or histo (5, HistogramProto:
 *             min 1, max 2, num 3, sum 4, sum_squares 5, bucket_limit 6 and bucket 7, packed
 *             doubles; bucket i counts values in (bucket_limit[i-1], bucket_limit[i]])
 * One Event per step holds every scalar pesc gives (loss, aux_loss, lr, grad_norm,
 * tokens_per_s, load/layer_NN/expert_E, ...) but those it did not measure at the step (NaN:
 * eval_loss, eval_accuracy and eval_answer_accuracy between evaluations), and the histograms
 * (adapter norms).
 *
 * Built as a libtool module; it links nothing of pesc (plugins/pesc-plugin.h only). */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pesc-plugin.h"

enum { HISTOGRAM_BUCKETS = 30 };
enum { SESSION_START = 1 };      /* SessionLog.SessionStatus START */

/* ============================================================== protobuf writing ===== */

typedef struct pb {
    unsigned char *p;
    size_t n, cap;
    int oom;
} pb;

static void pb_bytes(pb *b, const void *data, size_t n)
{
    if (b->oom || n == 0)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void pb_varint(pb *b, uint64_t v)
{
    unsigned char out[10];
    size_t n = 0;
    do {
        out[n++] = (unsigned char)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
        v >>= 7;
    } while (v);
    pb_bytes(b, out, n);
}

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_BYTES = 2, WIRE_FIXED32 = 5 };

static void pb_key(pb *b, unsigned field, unsigned wire) { pb_varint(b, (uint64_t)field << 3 | wire); }

static void le64(unsigned char *out, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(v >> (8 * i));
}

static void pb_raw_double(pb *b, double v)
{
    uint64_t bits;
    unsigned char out[8];
    memcpy(&bits, &v, sizeof bits);
    le64(out, bits);
    pb_bytes(b, out, 8);
}

static void pb_double(pb *b, unsigned field, double v)
{
    pb_key(b, field, WIRE_FIXED64);
    pb_raw_double(b, v);
}

static void pb_float(pb *b, unsigned field, float v)
{
    uint32_t bits;
    unsigned char out[4];
    memcpy(&bits, &v, sizeof bits);
    for (int i = 0; i < 4; i++)
        out[i] = (unsigned char)(bits >> (8 * i));
    pb_key(b, field, WIRE_FIXED32);
    pb_bytes(b, out, 4);
}

static void pb_string(pb *b, unsigned field, const void *s, size_t n)
{
    pb_key(b, field, WIRE_BYTES);
    pb_varint(b, n);
    pb_bytes(b, s, n);
}

/* ========================================================== CRC32C and framing ===== */

typedef struct tb_sink {
    FILE *f;
    char path[4200];
    long steps;                  /* written; a run that wrote none removes its file */
    uint32_t crc_table[256];     /* Castagnoli, reflected (0x82f63b78) */
    pb event, summary, value, histo;   /* scratch, reused every step */
} tb_sink;

static void crc_init(uint32_t table[256])
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        table[i] = c;
    }
}

static uint32_t masked_crc(const uint32_t table[256], const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++)
        c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    c ^= 0xffffffffu;
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static int write_record(tb_sink *t, const pb *data, char *err, size_t errlen)
{
    unsigned char head[12], tail[4];
    if (data->oom) {
        snprintf(err, errlen, "%s: out of memory", t->path);
        return -1;
    }
    le64(head, data->n);
    uint32_t c = masked_crc(t->crc_table, head, 8);
    for (int i = 0; i < 4; i++)
        head[8 + i] = (unsigned char)(c >> (8 * i));
    c = masked_crc(t->crc_table, data->p, data->n);
    for (int i = 0; i < 4; i++)
        tail[i] = (unsigned char)(c >> (8 * i));
    errno = 0;
    if (fwrite(head, 1, 12, t->f) != 12 || fwrite(data->p, 1, data->n, t->f) != data->n ||
        fwrite(tail, 1, 4, t->f) != 4 || fflush(t->f) != 0) {
        snprintf(err, errlen, "%s: %s", t->path, strerror(errno ? errno : EIO));
        return -1;
    }
    return 0;
}

/* ============================================================================ sink ===== */

static int make_dirs(const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char was = *p;
            *p = '\0';
            if (mkdir(path, 0777) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "%s: %s", path, strerror(errno));
                return -1;
            }
            *p = was;
            if (!was)
                break;
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: not a directory", dir);
        return -1;
    }
    return 0;
}

/* The latest TIME of the event files dir holds, -1 for none. TensorBoard reads every one of a
 * directory as one run (a fresh run's would be merged into another's), in the order of their
 * names: a resumed run's file, whose SessionLog START purges what its crash left, must sort
 * after them, also when it is made in the same second. */
static long newest_events(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    long newest = -1;
    while (d && (e = readdir(d)))
        if (strncmp(e->d_name, "events.out.tfevents.", 20) == 0) {
            long time = strtol(e->d_name + 20, NULL, 10);
            newest = time > newest ? time : newest;
        }
    if (d)
        closedir(d);
    return newest;
}

static double now_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void tb_free(tb_sink *t)
{
    free(t->event.p);
    free(t->summary.p);
    free(t->value.p);
    free(t->histo.p);
    free(t);
}

static void *tb_open(const pesc_sink_config *config, const pesc_run_info *run, char *err,
                     size_t errlen)
{
    (void)run;
    char dir[4096], host[256] = "localhost";
    if (config->target)
        snprintf(dir, sizeof dir, "%s", config->target);
    else
        snprintf(dir, sizeof dir, "%s.tb", config->base ? config->base : "pesc-run");
    if (make_dirs(dir, err, errlen) != 0)
        return NULL;
    long newest = newest_events(dir);
    if (!config->resume && newest >= 0) {
        snprintf(err, errlen, "%s already holds TensorBoard event files, which TensorBoard "
                 "would merge with this run's: name another directory (--sink tensorboard:DIR), "
                 "remove them, or continue its run with --resume", dir);
        return NULL;
    }
    tb_sink *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    gethostname(host, sizeof host - 1);
    double wall = now_wall();
    long stamp = (long)wall > newest ? (long)wall : newest + 1;
    snprintf(t->path, sizeof t->path, "%s/events.out.tfevents.%010ld.%s.%ld", dir, stamp, host,
             (long)getpid());
    crc_init(t->crc_table);
    t->f = fopen(t->path, "wb");
    if (!t->f) {
        snprintf(err, errlen, "%s: %s", t->path, strerror(errno));
        tb_free(t);
        return NULL;
    }
    pb first = {0};
    pb_double(&first, 1, wall);
    pb_key(&first, 2, WIRE_VARINT);
    pb_varint(&first, 0);
    pb_string(&first, 3, "brain.Event:2", 13);
    int rc = write_record(t, &first, err, errlen);
    long resumed_step = PESC_PLUGIN_HAS(config, pesc_sink_config, resumed_step)
                            ? config->resumed_step : 0;
    if (rc == 0 && config->resume && resumed_step > 0) {
        /* TensorBoard purges the run's events at or past a START's step: those a crashed run
         * wrote after the checkpoint, which this one writes again */
        pb pb_session = {0}, start = {0};
        pb_key(&pb_session, 1, WIRE_VARINT);
        pb_varint(&pb_session, SESSION_START);
        pb_double(&start, 1, wall);
        pb_key(&start, 2, WIRE_VARINT);
        pb_varint(&start, (uint64_t)resumed_step + 1);
        pb_string(&start, 6, pb_session.p, pb_session.n);
        start.oom |= pb_session.oom;
        rc = write_record(t, &start, err, errlen);
        free(pb_session.p);
        free(start.p);
    }
    free(first.p);
    if (rc != 0) {
        fclose(t->f);
        tb_free(t);
        return NULL;
    }
    return t;
}

/* HistogramProto of the finite values into h; 0 when there is none. */
static int histogram(pb *h, const float *values, size_t n)
{
    double lo = INFINITY, hi = -INFINITY, num = 0, sum = 0, sum_sq = 0;
    for (size_t i = 0; i < n; i++) {
        double v = values[i];
        if (!isfinite(v))
            continue;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
        num += 1;
        sum += v;
        sum_sq += v * v;
    }
    if (num == 0)
        return 0;
    int buckets = hi > lo ? HISTOGRAM_BUCKETS : 1;
    double width = (hi - lo) / buckets, count[HISTOGRAM_BUCKETS] = {0};
    for (size_t i = 0; i < n; i++) {
        double v = values[i];
        if (!isfinite(v))
            continue;
        /* bucket k holds (lo + k*width, lo + (k+1)*width]; lo itself goes to bucket 0 */
        int k = buckets == 1 ? 0 : (int)ceil((v - lo) / width) - 1;
        count[k < 0 ? 0 : k >= buckets ? buckets - 1 : k] += 1;
    }
    h->n = 0;
    pb_double(h, 1, lo);
    pb_double(h, 2, hi);
    pb_double(h, 3, num);
    pb_double(h, 4, sum);
    pb_double(h, 5, sum_sq);
    pb_key(h, 6, WIRE_BYTES);
    pb_varint(h, (uint64_t)buckets * 8);
    for (int k = 0; k < buckets; k++)
        pb_raw_double(h, k == buckets - 1 ? hi : lo + (k + 1) * width);
    pb_key(h, 7, WIRE_BYTES);
    pb_varint(h, (uint64_t)buckets * 8);
    for (int k = 0; k < buckets; k++)
        pb_raw_double(h, count[k]);
    return 1;
}

static int tb_record(void *self, const pesc_step *step, char *err, size_t errlen)
{
    tb_sink *t = self;
    t->summary.n = 0;
    for (size_t i = 0; i < step->n_scalars; i++) {
        if (step->scalars[i].value != step->scalars[i].value)
            continue;   /* NaN: not measured at this step (eval_loss between evaluations) */
        t->value.n = 0;
        pb_string(&t->value, 1, step->scalars[i].tag, strlen(step->scalars[i].tag));
        pb_float(&t->value, 2, (float)step->scalars[i].value);
        pb_string(&t->summary, 1, t->value.p, t->value.n);
    }
    for (size_t i = 0; i < step->n_histograms; i++) {
        const pesc_histogram *hg = &step->histograms[i];
        if (!hg->values || !histogram(&t->histo, hg->values, hg->n))
            continue;
        t->value.n = 0;
        pb_string(&t->value, 1, hg->tag, strlen(hg->tag));
        pb_string(&t->value, 5, t->histo.p, t->histo.n);
        pb_string(&t->summary, 1, t->value.p, t->value.n);
    }
    t->event.n = 0;
    pb_double(&t->event, 1, step->wall_time);
    pb_key(&t->event, 2, WIRE_VARINT);
    pb_varint(&t->event, (uint64_t)step->step);
    pb_string(&t->event, 5, t->summary.p, t->summary.n);
    if (t->value.oom || t->summary.oom || t->histo.oom)
        t->event.oom = 1;
    if (write_record(t, &t->event, err, errlen) != 0)
        return -1;
    t->steps++;
    return 0;
}

static int tb_close(void *self, char *err, size_t errlen)
{
    tb_sink *t = self;
    int rc = 0;
    errno = 0;
    if (fclose(t->f) != 0) {
        snprintf(err, errlen, "%s: %s", t->path, strerror(errno ? errno : EIO));
        rc = -1;
    }
    /* a run refused for another output, or stopped before its first step, leaves no event
     * file behind that its next run would be refused for */
    if (t->steps == 0)
        unlink(t->path);
    tb_free(t);
    return rc;
}

static const pesc_sink_ops tb_ops = {
    .size = sizeof tb_ops, .open = tb_open, .record = tb_record, .close = tb_close};

static const pesc_plugin tb_plugin = {
    .abi_version = PESC_PLUGIN_ABI_VERSION, .size = sizeof tb_plugin,
    .kind = PESC_PLUGIN_SINK, .name = "tensorboard", .version = "1.0",
    .description = "TensorBoard event files: scalars and adapter-norm histograms "
                   "(tensorboard[:DIR], default BASE.tb/)",
    .sink = &tb_ops};

PESC_PLUGIN_DEFINE(tb_plugin)
