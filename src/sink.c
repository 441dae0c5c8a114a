/* sink — see sink.h. */
#include "sink.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ===================================================== the built-in jsonl sink ===== */

/* The run log: the start line, then one line per step and per event, each written whole as
 * it comes (no buffer between) so that `pesc view` follows a live run. A line that fails (a
 * full disk) is cut back off: the log ends on its last whole line, still JSONL. */
typedef struct jsonl_sink {
    int fd;
    off_t good;                  /* the bytes up to the end of the last whole line */
    char path[4096];
} jsonl_sink;

static int jsonl_line(jsonl_sink *j, const char *json, char *err, size_t errlen)
{
    if (!json)
        return 0;
    size_t n = strlen(json), done = 0;
    while (done < n + 1) {
        struct iovec part[2] = {{(void *)(json + done), done < n ? n - done : 0},
                                {(void *)"\n", 1}};
        ssize_t wrote = writev(j->fd, part, 2);
        if (wrote < 0 && errno == EINTR)
            continue;
        if (wrote <= 0) {
            int e = wrote < 0 ? errno : ENOSPC;
            if (done > 0 || wrote < 0)   /* what of the line got there goes again */
                (void)!ftruncate(j->fd, j->good);
            snprintf(err, errlen, "%s: %s", j->path, strerror(e));
            return -1;
        }
        done += (size_t)wrote;
    }
    j->good += (off_t)(n + 1);
    return 0;
}

static int jsonl_close(void *self, char *err, size_t errlen)
{
    jsonl_sink *j = self;
    int rc = 0;
    if (close(j->fd) != 0) {
        snprintf(err, errlen, "%s: %s", j->path, strerror(errno));
        rc = -1;
    }
    free(j);
    return rc;
}

/* The log's file: its target, or BASE.jsonl. */
static void jsonl_path(char *path, size_t n, const char *target, const char *base)
{
    if (target)
        snprintf(path, n, "%s", target);
    else
        snprintf(path, n, "%s.jsonl", base);
}

static void cannot_create(char *err, size_t errlen, const char *path, int error)
{
    snprintf(err, errlen, "cannot create the run log %s: %s (name a file where this user may "
             "write)", path, strerror(error));
}

/* A file the user did not name (BASE.jsonl of --sink jsonl) that is already there is not
 * replaced by a fresh run: it may be another run's. */
static void exists_unnamed(char *err, size_t errlen, const char *path)
{
    snprintf(err, errlen, "%s is already there, and this run was not told to replace it: name "
             "the file (--sink jsonl:FILE), remove it, or continue its run with --resume", path);
}

static void being_written(char *err, size_t errlen, const char *path)
{
    snprintf(err, errlen, "the run log %s is being written by another pesc run: name another "
             "file, or let that run end first", path);
}

/* Whether a live run holds path's lock (jsonl_open takes it for as long as it writes). */
static int log_in_use(const char *path)
{
    int fd = pesc_open_if_locked(path);
    if (fd >= 0)
        close(fd);
    return fd >= 0;
}

static void *jsonl_open(const pesc_sink_config *c, const pesc_run_info *run, char *err,
                        size_t errlen)
{
    jsonl_sink *j = xcalloc(1, sizeof *j);
    jsonl_path(j->path, sizeof j->path, c->target, c->base);
    /* a resumed run reads its last byte (see below) */
    int flags = O_CREAT | O_CLOEXEC | (c->resume ? O_RDWR | O_APPEND : O_WRONLY);
    int fd = open(j->path, flags | (c->resume || c->target ? 0 : O_EXCL), 0666);
    if (fd < 0) {
        if (errno == EEXIST)
            exists_unnamed(err, errlen, j->path);
        else
            cannot_create(err, errlen, j->path, errno);
        free(j);
        return NULL;
    }
    /* one run a log: locked before it is emptied, so a second run on it truncates nothing */
    struct stat st;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
        being_written(err, errlen, j->path);
        close(fd);
        free(j);
        return NULL;
    }
    if (!c->resume && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && ftruncate(fd, 0) != 0) {
        cannot_create(err, errlen, j->path, errno);
        close(fd);
        free(j);
        return NULL;
    }
    j->fd = fd;
    /* a line cut short (a kill mid-record) stays one bad line of its own: the start line
     * does not join it */
    char last;
    j->good = c->resume && fstat(fd, &st) == 0 ? st.st_size : 0;
    int cut = j->good > 0 && pread(fd, &last, 1, j->good - 1) == 1 && last != '\n';
    if ((cut && jsonl_line(j, "", err, errlen) != 0) ||
        jsonl_line(j, run->json, err, errlen) != 0) {
        char ignored[64];
        jsonl_close(j, ignored, sizeof ignored);
        return NULL;
    }
    return j;
}

static int jsonl_record(void *self, const pesc_step *step, char *err, size_t errlen)
{
    return jsonl_line(self, step->json, err, errlen);
}

static int jsonl_event(void *self, const pesc_event *event, char *err, size_t errlen)
{
    return jsonl_line(self, event->json, err, errlen);
}

static const pesc_sink_ops jsonl_ops = {
    .size = sizeof jsonl_ops, .open = jsonl_open, .record = jsonl_record,
    .event = jsonl_event, .close = jsonl_close};

static const struct {
    const char *name, *description;
    const pesc_sink_ops *ops;
} builtin_sinks[] = {
    {"jsonl", "the run log (--log FILE): one JSON object a line, man pesc-log(5)", &jsonl_ops},
};
enum { N_BUILTIN_SINKS = (int)(sizeof builtin_sinks / sizeof *builtin_sinks) };

int sinks_builtin(const char *name)
{
    for (int i = 0; i < N_BUILTIN_SINKS; i++)
        if (strcmp(name, builtin_sinks[i].name) == 0)
            return 1;
    return 0;
}

const char *sinks_builtin_name(int i, const char **description)
{
    if (i < 0 || i >= N_BUILTIN_SINKS)
        return NULL;
    if (description)
        *description = builtin_sinks[i].description;
    return builtin_sinks[i].name;
}

/* ================================================================== the sink set ===== */

typedef struct sink_slot {
    char spec[4200];             /* as given: NAME[:TARGET] */
    char name[PESC_PLUGIN_NAME_MAX + 1];
    const pesc_sink_ops *ops;
    void *self;                  /* NULL: never opened or disabled */
} sink_slot;

/* A sink's error: room for a path and its advice (an event's text holds 512 bytes of it) */
enum { MAX_PENDING = 8, SINK_WHY = 1024 };

struct sink_set {
    sink_slot *slots;
    int n, live, failed;
    sink_options opt;
    char *base;
    /* the scalars and histograms of a step, tags made once per shape */
    stats_shape shape;
    pesc_scalar *scalars;
    size_t n_scalars;
    char *tags;                  /* every tag, NUL-separated */
    pesc_histogram histograms[2];
    /* reports not yet sent as events (sent after the dispatch that caused them) */
    char pending[MAX_PENDING][SINK_WHY + 64 + PESC_PLUGIN_NAME_MAX + 3];   /* NAME: message */
    int n_pending;
    long last_step;
    double last_elapsed;
};

static double wall_clock(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Reported once: the callback (or stderr) now, a "sink" event to the others afterwards. */
static void report(sink_set *s, const sink_slot *slot, const char *message)
{
    s->failed++;
    if (s->opt.report)
        s->opt.report(s->opt.report_ctx, slot->name, message);
    else
        fprintf(stderr, "pesc: sink %s: %s\n", slot->name, message);
    if (s->n_pending < MAX_PENDING)
        snprintf(s->pending[s->n_pending++], sizeof s->pending[0], "%s: %s", slot->name,
                 message);
}

static void disable(sink_set *s, sink_slot *slot, const char *why)
{
    char message[SINK_WHY + 64];
    snprintf(message, sizeof message, "%s; the sink is disabled and the run goes on",
             why[0] ? why : "failed without a reason");
    if (slot->self) {
        char ignored[SINK_WHY];
        slot->ops->close(slot->self, ignored, sizeof ignored);
        slot->self = NULL;
        s->live--;
    }
    report(s, slot, message);
}

/* At the run's end: a failure to close is the output's last words lost, not a sink left out
 * of a run that goes on. */
static void close_slot(sink_set *s, sink_slot *slot)
{
    void *self = slot->self;
    char why[SINK_WHY] = "", message[SINK_WHY + 64];
    slot->self = NULL;
    s->live--;
    if (slot->ops->close(self, why, sizeof why) == 0)
        return;
    snprintf(message, sizeof message, "failed to close: %s; its output may be incomplete",
             why[0] ? why : "no reason given");
    report(s, slot, message);
}

static void dispatch_event(sink_set *s, const stats_event *e)
{
    char *json = stats_event_json(e);
    pesc_event event = {.size = sizeof event, .step = e->step, .wall_time = wall_clock(),
                        .elapsed_s = e->elapsed_s, .kind = e->kind, .text = e->text,
                        .json = json};
    for (int i = 0; i < s->n; i++) {
        sink_slot *slot = &s->slots[i];
        char why[SINK_WHY] = "";
        if (slot->self && slot->ops->event && slot->ops->event(slot->self, &event, why,
                                                              sizeof why) != 0)
            disable(s, slot, why);
    }
    free(json);
}

/* The reports of the last dispatch, as events; a sink failing on those queues more, and each
 * sink fails once, so this ends. */
static void send_pending(sink_set *s)
{
    for (int k = 0; k < s->n_pending; k++) {
        stats_event e = {.step = s->last_step, .elapsed_s = s->last_elapsed};
        snprintf(e.kind, sizeof e.kind, "sink");
        snprintf(e.text, sizeof e.text, "%s", s->pending[k]);
        dispatch_event(s, &e);
    }
    s->n_pending = 0;
}

/* ---- scalars and histograms of a record ---------------------------------------------- */

/* eval_loss, eval_accuracy and eval_answer_accuracy are NaN on the steps without a held-out
 * evaluation, without --eval-choices questions and without --eval-generate (pesc-plugin(7)) */
static const char *const fixed_tags[] = {"loss", "aux_loss", "z_loss", "lr", "grad_norm",
                                         "tokens_per_s", "step_s", "epoch", "tokens",
                                         "eval_loss", "eval_accuracy", "eval_answer_accuracy",
                                         "aux_coef"};
enum { N_FIXED = (int)(sizeof fixed_tags / sizeof *fixed_tags) };

static void make_tags(sink_set *s, stats_shape shape)
{
    int L = shape.n_experts > 0 ? shape.n_layers : 0, E = shape.n_experts;
    size_t n = N_FIXED + (size_t)L * 2 + (size_t)L * (size_t)E, room = n * 40, used = 0;
    free(s->scalars);
    free(s->tags);
    s->shape = shape;
    s->scalars = xcalloc(n, sizeof *s->scalars);
    s->tags = xmalloc(room);
    s->n_scalars = 0;
#define TAG(...) (s->scalars[s->n_scalars++].tag = s->tags + used, \
                  used += (size_t)snprintf(s->tags + used, room - used, __VA_ARGS__) + 1)
    for (int i = 0; i < N_FIXED; i++)
        TAG("%s", fixed_tags[i]);
    for (int l = 0; l < L; l++)
        TAG("entropy/layer_%02d", l);
    for (int l = 0; l < L; l++)
        TAG("imbalance/layer_%02d", l);
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++)
            TAG("load/layer_%02d/expert_%d", l, e);
#undef TAG
    s->histograms[0].tag = "adapter_norm/down";
    s->histograms[1].tag = "adapter_norm/up";
}

static void fill_values(sink_set *s, const stats_record *r)
{
    if (r->shape.n_layers != s->shape.n_layers || r->shape.n_experts != s->shape.n_experts)
        make_tags(s, r->shape);
    double fixed[N_FIXED] = {r->loss, r->aux_loss, r->z_loss, r->lr, r->grad_norm,
                             r->tokens_per_s, r->step_s, r->epoch, (double)r->tokens,
                             r->eval_tokens > 0 ? r->eval_loss : NAN,
                             r->eval_questions > 0 ? r->eval_accuracy : NAN,
                             r->eval_answers > 0 ? r->eval_answer_accuracy : NAN, r->aux_coef};
    size_t k = 0;
    for (int i = 0; i < N_FIXED; i++)
        s->scalars[k++].value = fixed[i];
    int L = s->shape.n_experts > 0 ? s->shape.n_layers : 0, E = s->shape.n_experts;
    for (int l = 0; l < L; l++)
        s->scalars[k++].value = r->entropy ? r->entropy[l] : 0.0;
    for (int l = 0; l < L; l++)
        s->scalars[k++].value = r->imbalance ? r->imbalance[l] : 0.0;
    for (int i = 0; i < L * E; i++)
        s->scalars[k++].value = r->load ? r->load[i] : 0.0;
    s->histograms[0].values = r->norm_down;
    s->histograms[1].values = r->norm_up;
    s->histograms[0].n = s->histograms[1].n = (size_t)L * (size_t)E;
}

/* ---- lifetime -------------------------------------------------------------------------- */

static const pesc_sink_ops *find_ops(const sink_options *o, const char *name)
{
    for (int i = 0; i < N_BUILTIN_SINKS; i++)
        if (strcmp(name, builtin_sinks[i].name) == 0)
            return builtin_sinks[i].ops;
    const pesc_plugin *p = plugins_find(o->plugins, PESC_PLUGIN_SINK, name);
    return p ? p->sink : NULL;
}

/* "csv, tensorboard" of the plugins found, for the unknown-name message. */
static void sink_names(const pesc_plugins *p, char *out, size_t cap)
{
    size_t used = (size_t)snprintf(out, cap, "built-in: jsonl");
    int first = 1;
    for (int i = 0; i < plugins_count(p) && used < cap; i++) {
        const plugin_info *info = plugins_get(p, i);
        if (info->plugin && info->kind == PESC_PLUGIN_SINK) {
            used += (size_t)snprintf(out + used, cap - used, "%s%s", first ? "; plugins: " : ", ",
                                     info->name);
            first = 0;
        }
    }
}

static int parse_spec(sink_set *s, const char *spec, sink_slot *slot, pesc_error *err)
{
    const char *colon = strchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
    if (n == 0 || n > PESC_PLUGIN_NAME_MAX || (colon && !colon[1]) ||
        strlen(spec) >= sizeof slot->spec)
        return pesc_fail(err, "--sink '%s': expected NAME or NAME:TARGET", spec);
    memcpy(slot->name, spec, n);
    slot->name[n] = '\0';
    snprintf(slot->spec, sizeof slot->spec, "%s", spec);
    slot->ops = find_ops(&s->opt, slot->name);
    if (!slot->ops) {
        char names[512];
        sink_names(s->opt.plugins, names, sizeof names);
        return pesc_fail(err, "--sink %s: no sink of that name (%s; see pesc plugins, and "
                         "PESC_PLUGIN_PATH or --plugin FILE for others)", slot->name, names);
    }
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->slots[i].spec, spec) == 0)
            return pesc_fail(err, "--sink %s is given twice", spec);
    return 0;
}

int sinks_check_spec(const pesc_plugins *plugins, const char *spec, pesc_error *err)
{
    sink_set s = {.opt = {.plugins = plugins}};
    sink_slot *slot = xcalloc(1, sizeof *slot);
    int rc = parse_spec(&s, spec, slot, err);
    free(slot);
    return rc;
}

int sinks_log_of_run(const char *path, const stats_run *run)
{
    /* a regular file only: /dev/full reads zeros for ever */
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
        return -1;
    stats_run logged;
    int start = stats_log_file_start(path, run ? &logged : NULL);
    if (start < 0)
        return -1;
    if (!run || start == 0)   /* a log's end (tail -n): whose, it does not say */
        return 0;
    const stats_shape *a = &logged.shape, *b = &run->shape;
    /* not by the model's name: a resumed run names the directory its checkpoint recorded
     * (the cache's for an hf:// model, the demo's own where the first run said "demo") */
    int same = a->n_layers == b->n_layers &&
               a->n_experts == b->n_experts && a->top_k == b->top_k &&
               a->n_sources == b->n_sources && logged.adapter_dim == run->adapter_dim;
    for (int i = 0; same && i < a->n_sources && i < STATS_MAX_SOURCES; i++)
        same = strcmp(logged.sources[i], run->sources[i]) == 0;
    return same;
}

/* What opening the built-in log would refuse, asked before any sink opens, so that a run
 * refused for one of its outputs has truncated no other (plugin sinks, whose files only they
 * know, open before the log: what they refuse, they refuse before the log is touched).
 * 0, or -1 with the reason in why. */
static int check_log_output(const sink_set *s, const stats_run *run, const char *target,
                            int is_log, char *why, size_t n)
{
    char path[4096];
    jsonl_path(path, sizeof path, target, s->base);
    struct stat st;
    int mine;
    if (stat(path, &st) == 0) {
        if (!target && !s->opt.resume)
            exists_unnamed(why, n, path);
        else if (log_in_use(path))
            being_written(why, n, path);
        else if (is_log && !s->opt.resume && S_ISREG(st.st_mode) && st.st_size > 0)
            /* named, but another run's log is no less lost: a fresh run starts on none */
            snprintf(why, n, "%s already holds a log (%lld bytes), which a fresh run would "
                     "replace: remove it, name another file, or continue its run with "
                     "--resume", path, (long long)st.st_size);
        else if (is_log && S_ISREG(st.st_mode) && st.st_size > 0 &&
                 (mine = sinks_log_of_run(path, run)) != 1)
            /* a resumed run appends: to its own log, never to data or to another run's */
            snprintf(why, n, "%s %s: a resumed run appends to its own log only; name a new "
                     "file, or leave --log out to go on in the run's own", path,
                     mine < 0 ? "is not a pesc run log (it holds other data)"
                              : "is another run's log (its shape or data differ)");
        else if (S_ISDIR(st.st_mode))
            snprintf(why, n, "%s is a directory; name a file for the run log", path);
        else if (access(path, W_OK) != 0)
            snprintf(why, n, "cannot write the run log %s: %s", path, strerror(errno));
        return why[0] ? -1 : 0;
    }
    char *parent = pesc_parent_dir(path);
    int writable = pesc_dirs_writable(parent) == 0;
    if (!writable)
        cannot_create(why, n, path, errno);
    free(parent);
    return writable ? 0 : -1;
}

/* Whether two paths name one file, made yet or not: the same file, or the same name in the
 * same directory. */
static int same_target(const char *a, const char *b)
{
    if (strcmp(a, b) == 0 || pesc_same_file(a, b))
        return 1;
    const char *na = strrchr(a, '/'), *nb = strrchr(b, '/');
    if (strcmp(na ? na + 1 : a, nb ? nb + 1 : b) != 0)
        return 0;
    char *da = pesc_parent_dir(a), *db = pesc_parent_dir(b);
    int same = pesc_same_file(da, db);
    free(da);
    free(db);
    return same;
}

void sinks_base(char *out, size_t n, const char *log_path, const char *save_dir)
{
    snprintf(out, n, "%s", log_path ? log_path : save_dir ? save_dir : "pesc-run");
    char *dot = strrchr(out, '.');
    if (log_path && dot && strcmp(dot, ".jsonl") == 0)
        *dot = '\0';
}

/* What the sinks pesc ships write beside BASE when given no TARGET (a plugin's own is the
 * plugin's to know). */
static const struct {
    const char *name, *suffix;
} derived_outputs[] = {{"jsonl", ".jsonl"}, {"csv", ".csv"}, {"tensorboard", ".tb"}};

/* spec's output into out: its TARGET, or BASE.x for a NAME alone that pesc knows, without a
 * trailing '/' (a directory TARGET); 0, or -1 when it is not known. */
static int spec_output(const char *spec, const char *base, char *out, size_t n)
{
    const char *colon = strchr(spec, ':');
    size_t name = colon ? (size_t)(colon - spec) : strlen(spec);
    out[0] = '\0';
    if (colon)
        snprintf(out, n, "%s", colon + 1);
    for (size_t i = 0; !colon && base && i < sizeof derived_outputs / sizeof *derived_outputs;
         i++)
        if (strlen(derived_outputs[i].name) == name &&
            strncmp(spec, derived_outputs[i].name, name) == 0)
            snprintf(out, n, "%s%s", base, derived_outputs[i].suffix);
    for (size_t len = strlen(out); len > 1 && out[len - 1] == '/'; len--)
        out[len - 1] = '\0';
    return out[0] ? 0 : -1;
}

int sinks_same_output(const char *a, const char *b, const char *base)
{
    size_t name = strcspn(a, ":");
    if (strncmp(a, b, name) != 0 || (b[name] != ':' && b[name] != '\0'))
        return 0;
    char output_a[4200], output_b[4200];
    return spec_output(a, base, output_a, sizeof output_a) == 0 &&
           spec_output(b, base, output_b, sizeof output_b) == 0 &&
           same_target(output_a, output_b);
}

/* The error of output i (strict_open): "--log: why" or "--sink SPEC: why". */
static int open_failed(const sink_set *s, int i, const char *why, pesc_error *err)
{
    int log = i == 0 && s->opt.first_is_log;
    return pesc_fail(err, "%s%s: %s", log ? "--log" : "--sink ", log ? "" : s->slots[i].spec,
                     why[0] ? why : "cannot open");
}

sink_set *sinks_open(const char *const *specs, int n_specs, const stats_run *run,
                     const sink_options *o, pesc_error *err)
{
    sink_set *s = xcalloc(1, sizeof *s);
    if (o)
        s->opt = *o;
    s->base = xstrdup(s->opt.base && *s->opt.base ? s->opt.base : "pesc-run");
    s->opt.base = s->base;
    s->slots = xcalloc(n_specs > 0 ? (size_t)n_specs : 1, sizeof *s->slots);
    for (int i = 0; i < n_specs; i++) {
        if (parse_spec(s, specs[i], &s->slots[s->n], err) != 0) {
            sinks_close(s);
            return NULL;
        }
        s->n++;
    }
    make_tags(s, run->shape);

    const char *sources[STATS_MAX_SOURCES];
    int n_sources = run->shape.n_sources < STATS_MAX_SOURCES ? run->shape.n_sources
                                                             : STATS_MAX_SOURCES;
    for (int i = 0; i < n_sources; i++)
        sources[i] = run->sources[i];
    char *json = stats_run_json(run);
    pesc_run_info info = {
        .size = sizeof info, .n_layers = run->shape.n_layers, .n_experts = run->shape.n_experts,
        .top_k = run->shape.top_k, .n_sources = n_sources, .sources = sources,
        .model = run->model, .backend = run->backend, .total_steps = run->total_steps,
        .adapter_dim = run->adapter_dim, .adapter_scale = run->adapter_scale, .json = json};
    int rc = 0;
    for (int i = 0; i < s->n && s->opt.strict_open && rc == 0; i++) {
        if (s->slots[i].ops != &jsonl_ops)
            continue;
        const char *colon = strchr(s->slots[i].spec, ':');
        char why[4096 + 256] = "", path[4096], other[4096];   /* room for a path */
        jsonl_path(path, sizeof path, colon ? colon + 1 : NULL, s->base);
        /* two JSONL outputs on one file would interleave: say which they are */
        for (int j = 0; j < i && rc == 0; j++) {
            const char *c2 = strchr(s->slots[j].spec, ':');
            jsonl_path(other, sizeof other, c2 ? c2 + 1 : NULL, s->base);
            if (s->slots[j].ops == &jsonl_ops && same_target(path, other)) {
                snprintf(why, sizeof why, "it would write %.2000s, which %.1000s already writes; "
                         "the log has every record: drop this --sink, or name another file "
                         "(--sink jsonl:FILE)", path,
                         j == 0 && s->opt.first_is_log ? "--log" : s->slots[j].spec);
                rc = open_failed(s, i, why, err);
            }
        }
        if (rc == 0 && check_log_output(s, run, colon ? colon + 1 : NULL,
                                        i == 0 && s->opt.first_is_log, why, sizeof why) != 0)
            rc = open_failed(s, i, why, err);
    }
    /* plugins first, the log last (see check_log_output) */
    for (int pass = 0; pass < 2 && rc == 0; pass++)
        for (int i = 0; i < s->n && rc == 0; i++) {
            sink_slot *slot = &s->slots[i];
            if ((slot->ops == &jsonl_ops) != pass)
                continue;
            const char *colon = strchr(slot->spec, ':');
            pesc_sink_config config = {.size = sizeof config, .target = colon ? colon + 1 : NULL,
                                       .base = s->base, .resume = s->opt.resume,
                                       .resumed_step = s->opt.resume ? run->resumed_step : 0};
            char why[SINK_WHY] = "";
            /* the directory a target or BASE.x lies in, made as --save's is (a failure is
             * the sink's to report, naming its file) */
            char *dir = pesc_parent_dir(config.target ? config.target : config.base);
            pesc_make_dirs(dir);
            free(dir);
            slot->self = slot->ops->open(&config, &info, why, sizeof why);
            if (slot->self)
                s->live++;
            else if (s->opt.strict_open)
                rc = open_failed(s, i, why, err);
            else
                disable(s, slot, why);
        }
    free(json);
    if (rc != 0) {
        s->n_pending = 0;
        s->opt.report = NULL;
        sinks_close(s);
        return NULL;
    }
    send_pending(s);
    return s;
}

void sinks_record(sink_set *s, const stats_record *r)
{
    if (!s || s->live == 0)
        return;
    s->last_step = r->step;
    s->last_elapsed = r->elapsed_s;
    fill_values(s, r);
    char *json = stats_record_json(r);
    pesc_step step = {.size = sizeof step, .step = r->step, .wall_time = wall_clock(),
                      .elapsed_s = r->elapsed_s, .scalars = s->scalars,
                      .n_scalars = s->n_scalars, .histograms = s->histograms,
                      .n_histograms = s->histograms[0].values && s->histograms[1].values ? 2 : 0,
                      .json = json};
    for (int i = 0; i < s->n; i++) {
        sink_slot *slot = &s->slots[i];
        char why[SINK_WHY] = "";
        if (slot->self && slot->ops->record(slot->self, &step, why, sizeof why) != 0)
            disable(s, slot, why);
    }
    free(json);
    send_pending(s);
}

void sinks_event(sink_set *s, const stats_event *e)
{
    if (!s || s->live == 0)
        return;
    s->last_step = e->step;
    s->last_elapsed = e->elapsed_s;
    dispatch_event(s, e);
    send_pending(s);
}

void sinks_close(sink_set *s)
{
    if (!s)
        return;
    /* the logs last, so that they record the others' failures to close */
    for (int i = 0; i < s->n; i++)
        if (s->slots[i].self && s->slots[i].ops != &jsonl_ops)
            close_slot(s, &s->slots[i]);
    send_pending(s);
    for (int i = 0; i < s->n; i++)
        if (s->slots[i].self)
            close_slot(s, &s->slots[i]);
    s->n_pending = 0;   /* nobody is left to hear a log's own */
    free(s->slots);
    free(s->scalars);
    free(s->tags);
    free(s->base);
    free(s);
}

int sinks_active(const sink_set *s) { return s ? s->live : 0; }
int sinks_failed(const sink_set *s) { return s ? s->failed : 0; }
