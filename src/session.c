/* session — see session.h.
 *
 * The trainer thread runs trainer_main: take commands, train one step, publish. Everything
 * both threads touch lives in `shared` under `lock`; the rest of the struct is the
 * trainer's (or, before start and after wait, the owner's). */
#include "session.h"

#include <errno.h>
#include <stddef.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "answers.h"
#include "backend.h"
#include "checkpoint.h"
#include "choices.h"
#include "dataset.h"
#include "fetch_view.h"
#include "model.h"
#include "optim.h"
#include "plugin.h"
#include "sample.h"
#include "sink.h"
#include "template.h"
#include "tokenizer.h"

#define QUEUE 32
/* Halvings of the learning rate, each after --nan-limit non-finite steps in a row, before a
 * run whose steps stay non-finite fails. */
#define NAN_HALVINGS 10

typedef enum command_kind {
    CMD_PAUSE, CMD_RESUME, CMD_LR, CMD_LR_SCALE, CMD_AUX, CMD_SAVE, CMD_EVAL, CMD_STOP,
    CMD_GENERATE
} command_kind;

typedef struct command {
    command_kind kind;
    double value;
    int max_tokens, layer;
    float temperature, top_p;
    char prompt[512];
} command;

struct session {
    train_config cfg;
    /* routing watched for a collapse (watch_routing): each expert's share of its layer's
     * assignments, averaged over about ROUTING_WATCH steps, and the layers already said */
    float *load_mean;            /* (L, E) */
    unsigned char *collapse_said;   /* (L) */
    long load_mean_steps;
    char *model_dir;
    char *tokenizer_path;        /* --tokenizer, downloaded when it was a URL */
    char *data_paths[STATS_MAX_SOURCES];
    ds_source sources[STATS_MAX_SOURCES];
    pesc_backend *backend;
    model m;
    tokenizer *tok;
    const chat_template *tpl;
    dataset *data;
    ds_batch batch;
    /* held-out records, and when they are scored next: those of --eval-data, read into
     * eval_data, or those --eval-split kept out of the dataset */
    char *eval_paths[TRAIN_MAX_EVAL];
    ds_records eval_data;
    const ds_record *eval;
    int n_eval;
    int eval_ends[TRAIN_MAX_EVAL];   /* where each --eval-data file's records end in eval */
    int *eval_order;             /* the records longest first: a pass is as long as its first */
    uint64_t eval_hash;          /* ds_records_hash of them: which data a best is on */
    FILE *samples;               /* --eval-samples: the answers appended to it */
    long long samples_at_eval;   /* its length when the last evaluation began (-1: none) */
    /* --eval-choices: multiple-choice questions scored with them (the file, downloaded) */
    mc_set choices;
    char *choices_path;
    long eval_every;
    int eval_requested;          /* the eval command while running: after the next step */
    int eval_pending;            /* the evaluation due after this step was cut short by a stop
                                    (saved so; a resumed run does it before its first step) */
    /* --keep-best: the best score so far (lower is better: best_of); the step of
     * save_dir/best (-1: none), kept out of rotation, its score, what it is by and the
     * held-out data it is on (best_data); a save due for a new best */
    double best_score, best_kept_score;
    long best_kept;
    int best_kept_by;
    uint64_t best_kept_data;
    int best_due;
    optimizer opt;
    stats_run run;
    pesc_plugins *plugins;       /* --plugin modules and the plugin search path */
    ds_formats *formats;         /* built-in and plugin dataset formats */
    sink_set *sinks;             /* the JSONL log and --sink outputs */
    int save_lock;               /* checkpoint_lock of --save DIR; -1: none */
    struct stat save_dir_id;     /* the directory it was taken in (checkpoint_relock's) */
    int made_save_dir;           /* --save DIR was not there: this run made it */

    /* trainer state */
    long step, start_step, total_steps, nan_skipped, nan_run;
    long long tokens;
    double lr_override, lr_scale, elapsed_before, t_start;
    double last_save;            /* pesc_now() of the last checkpoint; < 0 none (under lock) */
    double paused_at, paused_s;  /* when the pause began; the seconds paused (for the ETA) */
    double stopped_at_start;     /* pesc_stopped_s() when the trainer began */
    double stopped_at_pause;     /* pesc_stopped_s() when the pause began */
    /* what the last checkpoint holds: the step, and the live changes (lr, aux) made by then;
     * the final save is skipped when both still hold */
    long saved_step, live_changes, saved_changes;
    char resume_notes[4096];     /* what a flag replaced of the checkpoint's run, a line a note */
    char memory_note[320];       /* check_memory's estimate against what is free, for the log */
    /* the data's warnings of skipped records, kept until the log is open: notes there and,
     * headless, on stderr, also in the workbench, where stderr is the screen */
    FILE *skips;
    char *skipped_text;
    size_t skipped_len;
    char *last_checkpoint;       /* saved by this run, or resumed from; NULL: none */
    checkpoint_state *resumed;   /* --resume's state: cfg's strings it gave point into it */
    char *resumed_dir;           /* its checkpoint */
    int outputs_taken;           /* 1: its --save, 2: and its --log (adopt_resumed) */
    int inject_nan;
    int paused;
    int generating;              /* a generate runs (commands are taken between its tokens) */
    uint64_t fingerprint;        /* of the base model as loaded */
    stats_record *record;
    float *previous;             /* the last update, before - after, for the update ratio */
    double *norm_sums;           /* (4, L, E) in the backend: the adapters' sums of squares */
    sampler sampler;

    /* shared with other threads */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_mutex_t tok_lock;    /* one encoder of tok at a time (tokenizer.h): once the run
                                    has started, the trainer's (a generate's prompt, a
                                    --eval-choices question) and a generate command's check
                                    of its prompt (session_command's thread) */
    command queue[QUEUE];
    int q_head, q_len;
    int generate_taken;          /* a generate is queued or running: another is refused */
    monitor_view *shared;
    int stop_requested;
    int answering_after_end;     /* training has ended; generate is answered until a stop */
    int closing;                 /* session_wait or session_delete: nothing more is answered */
    session_progress progress;
    double lr_scale_shown;       /* lr_scale as of progress.lr, under lock: a factor's check
                                    (session_command) works on the rate set, not the scaled */
    int lr_by_hand_shown;        /* under lock: the rate was set by an lr command as of
                                    progress, or one is queued, so another ends no schedule */

    pthread_t thread;
    int started;
    int status;
    char error[PESC_ERROR_MAX];
    monitor face;
};

/* ---- publishing (trainer side; the lock is taken here) ------------------------------------ */

static void publish_event(session *s, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void publish_answer_event(session *s, const char *prompt, const char *answer,
                                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Shown to the front end only: a failing sink reports once, and the sink set itself logs
 * the failure to the sinks still working. */
static void show_event(session *s, const stats_event *e)
{
    pthread_mutex_lock(&s->lock);
    monitor_view *v = s->shared;
    if (v->n_events == MONITOR_EVENTS) {
        memmove(v->events, v->events + 1, (MONITOR_EVENTS - 1) * sizeof *v->events);
        v->n_events--;
    }
    v->events[v->n_events++] = *e;
    v->events[v->n_events - 1].prompt = v->events[v->n_events - 1].answer = NULL;   /* borrowed */
    pthread_mutex_unlock(&s->lock);
}

static void sink_failed(void *ctx, const char *name, const char *message)
{
    session *s = ctx;
    stats_event e = {.step = s->step};
    snprintf(e.kind, sizeof e.kind, "sink");
    snprintf(e.text, sizeof e.text, "%.40s disabled: %.400s", name, message);
    if (s->cfg.headless)
        fprintf(stderr, "pesc train: sink %s: %s\n", name, message);
    show_event(s, &e);
}

/* An event to the sinks and the screen; a generate event's prompt and answer go in the
 * log's line (stats_event). */
static void publish_with(session *s, const char *kind, const char *prompt, const char *answer,
                         const char *fmt, va_list ap)
{
    stats_event e = {.step = s->step, .elapsed_s = s->elapsed_before + pesc_now() - s->t_start,
                     .prompt = prompt, .answer = answer};
    snprintf(e.kind, sizeof e.kind, "%s", kind);
    vsnprintf(e.text, sizeof e.text, fmt, ap);
    if (s->sinks)
        sinks_event(s->sinks, &e);
    show_event(s, &e);
}

static void publish_event(session *s, const char *kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    publish_with(s, kind, NULL, NULL, fmt, ap);
    va_end(ap);
}

/* A headless run's line on stderr; on a terminal, below the progress line being rewritten
 * on stdout rather than after it. */
static void say_headless(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say_headless(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (isatty(STDOUT_FILENO) && isatty(STDERR_FILENO))
        fputc('\n', stderr);
    fputs("pesc train: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* An event the user must not miss: a headless run, whose stdout is progress lines, also
 * says it on stderr. */
static void publish_warning(session *s, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void publish_warning(session *s, const char *kind, const char *fmt, ...)
{
    char text[sizeof ((stats_event *)0)->text];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    publish_event(s, kind, "%s", text);
    if (s->cfg.headless)
        say_headless("%s", text);
}

/* An evaluation's result: a headless run says it on stderr too, with its step (the log need
 * not be there to see held-out numbers). */
static void publish_result(session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void publish_result(session *s, const char *fmt, ...)
{
    char text[sizeof ((stats_event *)0)->text];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    publish_event(s, "eval", "%s", text);
    if (s->cfg.headless)
        say_headless("step %ld: %s", s->step, text);
}

static void set_state(session *s, monitor_state state, const char *message)
{
    pthread_mutex_lock(&s->lock);
    s->shared->state = state;
    s->progress.state = state;
    if (message)
        snprintf(s->shared->message, sizeof s->shared->message, "%.*s",
                 (int)sizeof s->shared->message - 1, message);
    pthread_mutex_unlock(&s->lock);
}

/* Appends a step to the shared history; full scalar history keeps every other point. */
static void publish_step(session *s, const stats_record *r)
{
    pthread_mutex_lock(&s->lock);
    monitor_view *v = s->shared;
    v->last = stats_record_fit(v->last, r->shape);
    stats_record_copy(v->last, r);
    if (v->n_points == MONITOR_HISTORY)
        v->n_points = monitor_points_thin(v->points, v->n_points);
    v->points[v->n_points++] = monitor_point_of(r);
    size_t le = (size_t)r->shape.n_layers * r->shape.n_experts;
    if (le && r->load) {
        if (!v->loads)
            v->loads = xcalloc(MONITOR_LOAD_HISTORY * le, sizeof *v->loads);
        if (v->n_loads == MONITOR_LOAD_HISTORY) {
            memmove(v->loads, v->loads + le, (MONITOR_LOAD_HISTORY - 1) * le * sizeof *v->loads);
            memmove(v->load_steps, v->load_steps + 1, (MONITOR_LOAD_HISTORY - 1) * sizeof(long));
            v->n_loads--;
        }
        memcpy(v->loads + (size_t)v->n_loads * le, r->load, le * sizeof *v->loads);
        v->load_steps[v->n_loads++] = r->step;
    }
    session_progress *p = &s->progress;
    p->step = r->step;
    p->total_steps = r->total_steps;
    p->loss = r->loss;
    p->aux_loss = r->aux_loss;
    p->lr = r->lr;
    s->lr_scale_shown = s->lr_scale;
    s->lr_by_hand_shown = s->lr_override >= 0;
    p->tokens_per_s = r->tokens_per_s;
    p->eta_s = r->eta_s;
    p->elapsed_s = r->elapsed_s;
    p->nan_skipped = s->nan_skipped;
    pthread_mutex_unlock(&s->lock);
}

/* ---- statistics of a step ----------------------------------------------------------------- */

static double resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

/* Loads, gate weights and entropy from the model's routing counts (summed over the step's
 * micro-batches by the caller), and adapter norms with their update ratios. */
static void fill_routing(session *s, stats_record *r, const int *counts, const int *first,
                         const double *gate, const int *source_counts, const double *entropy,
                         int micro)
{
    model *m = &s->m;
    int L = r->shape.n_layers, E = r->shape.n_experts, S = r->shape.n_sources;
    if (!E)
        return;
    size_t R = (size_t)m->pesc.adapter_dim, C = (size_t)m->config.hidden_size;
    /* a layer's experts are consecutive chunks of its down and up tensors (and of previous,
     * which has the trainables' layout): one reduction per tensor, into the backend, and one
     * download for the step (on a GPU a reduction per expert was a wait per expert) */
    size_t LE = (size_t)L * E;
    for (int l = 0; l < L; l++) {
        const float *down = m->pesc_layers[l].down, *up = m->pesc_layers[l].up;
        double *at = s->norm_sums + (size_t)l * E;
        vector_sumsq_chunks(s->backend, at, down, R * C, E);
        vector_sumsq_chunks(s->backend, at + LE, up, C * R, E);
        if (s->previous) {   /* previous holds (before - after) for the trainables */
            vector_sumsq_chunks(s->backend, at + 2 * LE, s->previous + (down - m->train_block),
                                R * C, E);
            vector_sumsq_chunks(s->backend, at + 3 * LE, s->previous + (up - m->train_block),
                                C * R, E);
        }
    }
    double *sums = xmalloc(4 * LE * sizeof *sums);
    backend_download(s->backend, sums, s->norm_sums, (s->previous ? 4 : 2) * LE * sizeof *sums);
    for (int l = 0; l < L; l++) {
        const double *nd = sums + (size_t)l * E, *nu = nd + LE, *dd = nu + LE, *du = dd + LE;
        double total = 0.0, total_first = 0.0;
        for (int e = 0; e < E; e++) {
            total += counts[l * E + e];
            total_first += first[l * E + e];
        }
        for (int e = 0; e < E; e++) {
            int i = l * E + e;
            r->load[i] = total > 0 ? (float)(counts[i] / total) : 0.0f;
            r->first[i] = total_first > 0 ? (float)(first[i] / total_first) : 0.0f;
            r->gate[i] = counts[i] > 0 ? (float)(gate[i] / counts[i]) : 0.0f;
            r->norm_down[i] = (float)sqrt(nd[e]);
            r->norm_up[i] = (float)sqrt(nu[e]);
            if (s->previous) {
                double w = nd[e] + nu[e];
                r->update_ratio[i] = w > 0 ? (float)sqrt((dd[e] + du[e]) / w) : 0.0f;
            }
        }
        r->entropy[l] = (float)(entropy[l] / micro);
        for (int src = 0; src < S; src++) {
            double t = 0.0;
            const int *row = source_counts + ((size_t)src * L + l) * E;
            for (int e = 0; e < E; e++)
                t += row[e];
            for (int e = 0; e < E; e++)
                r->source_load[((size_t)src * L + l) * E + e] = t > 0 ? (float)(row[e] / t) : 0.0f;
        }
    }
    free(sums);
    stats_record_derive(r);
}

/* A layer whose routing has collapsed (an expert past STATS_HOT_SHARE times an even share, or
 * one under STATS_IDLE_SHARE of it, in the loads' mean over about ROUTING_WATCH steps, once
 * that many have passed: a crafted router starts out uneven) is said once, with what to do,
 * in a note event and, headless, on stderr; said again only after it has come back under
 * RECOVERED. The workbench marks the same shares, step by step; this is for a run nobody
 * watches. */
#define ROUTING_WATCH 50
#define RECOVERED 1.5

static void watch_routing(session *s, const stats_record *r)
{
    int L = r->shape.n_layers, E = r->shape.n_experts;
    if (E < 2 || !r->load)
        return;
    if (!s->load_mean) {
        s->load_mean = xcalloc((size_t)L * E, sizeof *s->load_mean);
        s->collapse_said = xcalloc((size_t)L, 1);
    }
    s->load_mean_steps++;
    float a = s->load_mean_steps < ROUTING_WATCH ? 1.0f / (float)s->load_mean_steps
                                                 : 1.0f / ROUTING_WATCH;
    for (int i = 0; i < L * E; i++)
        s->load_mean[i] += a * (r->load[i] - s->load_mean[i]);
    if (s->load_mean_steps < 2 * ROUTING_WATCH)
        return;
    for (int l = 0; l < L; l++) {
        const float *x = s->load_mean + (size_t)l * E;
        int most = 0, idle = 0;
        for (int e = 0; e < E; e++) {
            most = x[e] > x[most] ? e : most;
            idle += x[e] * E < STATS_IDLE_SHARE;
        }
        double hot = x[most] * E;
        if (s->collapse_said[l]) {
            s->collapse_said[l] = hot >= RECOVERED || idle > 0;
            continue;
        }
        if (hot <= STATS_HOT_SHARE && idle == 0)
            continue;
        s->collapse_said[l] = 1;
        char what[96];
        if (idle > 0)
            snprintf(what, sizeof what, "%d of %d experts idle, expert %d at %.1fx an even share",
                     idle, E, most, hot);
        else
            snprintf(what, sizeof what, "expert %d at %.1fx an even share", most, hot);
        publish_warning(s, "note", "routing of layer %d is collapsing at step %ld: %s (the mean "
                        "of the last %d steps); raise the aux coefficient (now %.3g: %s) or lower "
                        "the learning rate", l, r->step, what, ROUTING_WATCH,
                        (double)s->m.pesc.aux_coef, s->cfg.headless
                            ? "the control socket's aux, or --aux-coef on resuming"
                            : "the a key");
    }
}

/* ---- commands ----------------------------------------------------------------------------- */

static int parse_number(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
        end++;
    if (end == s || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

static int out_of_range(char *reply, size_t n, const char *key, const char *value,
                        const char *range)
{
    snprintf(reply, n, "error: generate: %s=%s is out of range: %s", key, value, range);
    return -1;
}

/* A command is one line, so a prompt's line breaks travel as "\n" and its backslashes as
 * "\\" (the workbench writes them so); any other backslash stays as it is. Decodes s[0..len)
 * into out and returns the decoded length, which is cap or more when it did not fit. */
static size_t unescape_prompt(const char *s, size_t len, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++, n++) {
        char c = s[i];
        if (c == '\\' && i + 1 < len && (s[i + 1] == 'n' || s[i + 1] == '\\'))
            c = s[++i] == 'n' ? '\n' : '\\';
        if (n + 1 < cap)
            out[n] = c;
    }
    out[n < cap ? n : cap - 1] = '\0';
    return n;
}

/* generate [max=N] [temp=T] [top_p=P] [layer=L] PROMPT, layer below n_layers */
static int parse_generate(const char *args, int n_layers, command *c, char *reply, size_t n)
{
    c->max_tokens = 64;
    c->temperature = 0.0f;
    c->top_p = 1.0f;
    c->layer = 0;
    const char *p = args;
    for (;;) {
        while (*p == ' ')
            p++;
        const char *eq = strchr(p, '='), *space = strchr(p, ' ');
        if (!eq || (space && space < eq))
            break;
        char key[16];
        snprintf(key, sizeof key, "%.*s", (int)(eq - p), p);
        double v;
        char value[32];
        size_t len = space ? (size_t)(space - eq - 1) : strcspn(eq + 1, "\r\n");
        snprintf(value, sizeof value, "%.*s", (int)len, eq + 1);
        if (len >= sizeof value) {
            snprintf(reply, n, "error: generate: the value of %s is %zu characters, too long for "
                     "a number", key, len);
            return -1;
        }
        if (parse_number(value, &v) != 0) {
            snprintf(reply, n, "error: generate: %s=%s is not a number", key, value);
            return -1;
        }
        int whole = v == floor(v);
        if (!strcmp(key, "max")) {
            if (!whole || v < 1 || v > 4096)
                return out_of_range(reply, n, key, value, "a whole number of tokens, 1 to 4096");
            c->max_tokens = (int)v;
        } else if (!strcmp(key, "temp")) {
            if (v < 0 || v > 10)
                return out_of_range(reply, n, key, value, "0 (greedy) to 10");
            c->temperature = (float)v;
        } else if (!strcmp(key, "top_p")) {
            if (v <= 0 || v > 1)
                return out_of_range(reply, n, key, value, "above 0, at most 1");
            c->top_p = (float)v;
        } else if (!strcmp(key, "layer")) {
            char range[64];
            snprintf(range, sizeof range, "the model's layers are 0 to %d", n_layers - 1);
            if (!whole || v < 0 || v >= n_layers)
                return out_of_range(reply, n, key, value, range);
            c->layer = (int)v;
        } else {
            snprintf(reply, n, "error: generate: unknown setting '%s' (max, temp, top_p, layer)",
                     key);
            return -1;
        }
        p += (eq - p) + 1 + len;
    }
    while (*p == ' ')
        p++;
    size_t len = strcspn(p, "\r\n");
    if (len == 0) {
        snprintf(reply, n, "error: generate needs a prompt");
        return -1;
    }
    len = unescape_prompt(p, len, c->prompt, sizeof c->prompt);
    if (len >= sizeof c->prompt) {
        snprintf(reply, n, "error: generate: the prompt is %zu bytes; at most %zu", len,
                 sizeof c->prompt - 1);
        return -1;
    }
    return 0;
}

/* Validates at once (so the reply can say what is wrong); the trainer applies it later. */
static int parse_command(const char *line, int n_layers, command *c, char *reply, size_t n)
{
    while (*line == ' ')
        line++;
    char word[16];
    size_t len = strcspn(line, " \r\n");
    snprintf(word, sizeof word, "%.*s", (int)(len < sizeof word ? len : sizeof word - 1), line);
    const char *arg = line + len;
    while (*arg == ' ')
        arg++;
    int shown = (int)strcspn(arg, "\r\n");   /* of arg, in a reply */
    shown = shown < 40 ? shown : 40;
    memset(c, 0, sizeof *c);
    static const struct { const char *name; command_kind kind; } plain[] = {
        {"pause", CMD_PAUSE}, {"resume", CMD_RESUME}, {"save", CMD_SAVE}, {"eval", CMD_EVAL},
        {"stop", CMD_STOP}};
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++)
        if (!strcmp(word, plain[i].name)) {
            if (*arg && *arg != '\r' && *arg != '\n') {
                snprintf(reply, n, "error: %s takes no argument", word);
                return -1;
            }
            c->kind = plain[i].kind;
            snprintf(reply, n, "ok: %s", word);
            return 0;
        }
    if (!strcmp(word, "lr")) {
        int relative = *arg == '*';
        if (parse_number(arg + relative, &c->value) != 0 || c->value < 0 ||
            (relative && c->value == 0) || c->value > 10) {
            snprintf(reply, n, "error: lr '%.*s': give a rate from 0 to 10 (lr 1e-4) or a factor "
                     "above 0 up to 10 (lr *0.5)", shown, arg);
            return -1;
        }
        c->kind = relative ? CMD_LR_SCALE : CMD_LR;
        snprintf(reply, n, "ok: lr %s%g", relative ? "*" : "", c->value);
        return 0;
    }
    if (!strcmp(word, "aux")) {
        if (parse_number(arg, &c->value) != 0 || c->value < 0 || c->value > 1e3) {
            snprintf(reply, n, "error: aux '%.*s': give a coefficient from 0 to 1000 (aux 0.02)",
                     shown, arg);
            return -1;
        }
        c->kind = CMD_AUX;
        snprintf(reply, n, "ok: aux %g", c->value);
        return 0;
    }
    if (!strcmp(word, "generate")) {
        if (parse_generate(arg, n_layers, c, reply, n) != 0)
            return -1;
        c->kind = CMD_GENERATE;
        snprintf(reply, n, "ok: generating up to %d tokens (the answer: the log's generate "
                 "event)", c->max_tokens);
        return 0;
    }
    snprintf(reply, n, "error: unknown command '%s' (pause, resume, lr, aux, save, eval, stop, "
             "generate)", word);
    return -1;
}

/* What an lr command at update `step` ends, for its reply and its event: a rate set by hand
 * holds from then on, in place of what the --schedule and its --warmup would still have
 * made of it. "" when they would have made nothing more (a constant schedule past its
 * warmup) or a rate set by hand already held. */
static void lr_schedule_ended(const session *s, long step, int by_hand, char *out, size_t n)
{
    const optim_config *c = &s->cfg.optim;
    int ahead = by_hand ? 0 : optim_schedule_ahead(c, step);
    const char *constant = "; the rate is constant from now on:";
    if (ahead == (OPTIM_AHEAD_DECAY | OPTIM_AHEAD_WARMUP))
        snprintf(out, n, "%s --schedule %s and the rest of --warmup no longer apply", constant,
                 optim_schedule_name(c->schedule));
    else if (ahead == OPTIM_AHEAD_DECAY)
        snprintf(out, n, "%s --schedule %s no longer applies", constant,
                 optim_schedule_name(c->schedule));
    else if (ahead == OPTIM_AHEAD_WARMUP)
        snprintf(out, n, "%s the rest of --warmup no longer applies", constant);
    else
        out[0] = '\0';
}

/* The ids of a prompt, in the run's template; the caller holds tok_lock. */
static int prompt_ids(session *s, const char *prompt, tok_ids *ids, pesc_error *err)
{
    if (!s->tok) {
        if (strncmp(prompt, "ids:", 4) != 0)
            return pesc_fail(err, "this run has no tokenizer; give the prompt as ids:1,2,3");
        for (const char *p = prompt + 4; *p;) {
            char *end;
            long id = strtol(p, &end, 10);
            if (end == p || id < 0 || id >= s->m.config.vocab_size)
                return pesc_fail(err, "prompt ids must be integers below %d",
                                 s->m.config.vocab_size);
            tok_ids_push(ids, (int32_t)id);
            p = *end == ',' ? end + 1 : end;
        }
        return ids->n ? 0 : pesc_fail(err, "empty prompt");
    }
    tpl_message msg = {.role = ROLE_USER, .content = prompt, .len = strlen(prompt)};
    return template_encode_prompt(s->tpl, s->tok, &msg, 1, ids, err);
}

/* A generate whose prompt cannot be answered (ids the model has not, more tokens than its
 * context) is refused in its reply, where an "ok" had the error come in the log seconds
 * later. Encoding a prompt of at most 511 bytes is quick; the trainer holds tok_lock as
 * briefly. 0, or -1 with the reply written. */
static int prompt_refused(session *s, const command *c, char *reply, size_t n)
{
    tok_ids ids = {0};
    pesc_error err = {{0}};
    pthread_mutex_lock(&s->tok_lock);
    int rc = prompt_ids(s, c->prompt, &ids, &err);
    pthread_mutex_unlock(&s->tok_lock);
    if (rc == 0 && model_answer_room(&s->m, ids.n, c->max_tokens, &err) < 0)
        rc = -1;
    tok_ids_free(&ids);
    if (rc != 0)
        snprintf(reply, n, "error: %s", err.msg);
    return rc;
}

void session_command(session *s, const char *line, char *reply, size_t reply_len)
{
    command c;
    if (parse_command(line, s->m.config.n_layers, &c, reply, reply_len) != 0)
        return;
    if (c.kind == CMD_GENERATE && prompt_refused(s, &c, reply, reply_len) != 0)
        return;
    if (c.kind == CMD_SAVE && !s->cfg.save_dir) {   /* cfg is fixed once the session runs */
        snprintf(reply, reply_len, "error: save needs a run started with --save DIR");
        return;
    }
    if (c.kind == CMD_EVAL && s->n_eval == 0 && s->choices.n == 0) {
        snprintf(reply, reply_len, "error: eval needs a run started with --eval-data FILE, "
                 "--eval-split X or --eval-choices FILE");
        return;
    }
    if (c.kind == CMD_EVAL)   /* the trainer decides, after the commands queued before it */
        snprintf(reply, reply_len, "ok: eval after the next step, or at once when paused");
    pesc_error refused;
    pthread_mutex_lock(&s->lock);
    int ended = s->shared->state >= MONITOR_FINISHED;
    if (ended && s->answering_after_end && c.kind != CMD_GENERATE && c.kind != CMD_STOP) {
        snprintf(reply, reply_len, "error: the run has ended; its model still answers prompts "
                 "(generate)");
    } else if (ended && !s->answering_after_end) {
        snprintf(reply, reply_len, "error: the run has ended");
    } else if (s->q_len == QUEUE) {
        snprintf(reply, reply_len, "error: too many commands waiting; try again");
    } else if ((c.kind == CMD_LR || c.kind == CMD_LR_SCALE) &&
               optim_check_lr("lr", c.kind == CMD_LR ? c.value
                                                     : s->progress.lr / s->lr_scale_shown * c.value,
                              s->cfg.optim.weight_decay, &refused) != 0) {
        snprintf(reply, reply_len, "error: %s", refused.msg);   /* the trainer checks again */
    } else if (c.kind == CMD_GENERATE && s->generate_taken) {
        snprintf(reply, reply_len, "error: busy: a generate is already running; send it again "
                 "once its answer is in");
    } else {
        s->queue[(s->q_head + s->q_len++) % QUEUE] = c;
        if (c.kind == CMD_LR || c.kind == CMD_LR_SCALE) {   /* the trainer's event says it too */
            size_t used = strlen(reply);
            lr_schedule_ended(s, s->progress.step, s->lr_by_hand_shown, reply + used,
                              reply_len - used);
            s->lr_by_hand_shown = 1;
        }
        if (c.kind == CMD_STOP)
            s->stop_requested = 1;
        if (c.kind == CMD_GENERATE)
            s->generate_taken = 1;
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->lock);
}

static int take_command(session *s, command *c)
{
    pthread_mutex_lock(&s->lock);
    int got = s->q_len > 0;
    if (got) {
        *c = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % QUEUE;
        s->q_len--;
    }
    pthread_mutex_unlock(&s->lock);
    return got;
}

/* ---- generation --------------------------------------------------------------------------- */

static void generation_append(session *s, const char *text, size_t len, int expert)
{
    pthread_mutex_lock(&s->lock);
    monitor_view *v = s->shared;
    size_t used = strlen(v->generated);
    if (used + len + 1 > sizeof v->generated)
        len = sizeof v->generated - used - 1;
    memcpy(v->generated + used, text, len);
    memset(v->token_expert + used, expert < 0 ? 255 : expert, len);
    v->generated[used + len] = '\0';
    v->n_generated_tokens++;
    pthread_mutex_unlock(&s->lock);
}

static void publish_answer_event(session *s, const char *prompt, const char *answer,
                                 const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    publish_with(s, "generate", prompt, answer, fmt, ap);
    va_end(ap);
}

typedef enum answer_end { ANSWER_WHOLE, ANSWER_CONTEXT_FULL, ANSWER_STOPPED } answer_end;

/* A generation's end: its event, with the prompt and the whole answer in the log's line (so
 * that pesc view shows them for a run without a screen), and a headless run's stderr. One a
 * stop cut short says so: its few tokens (none, when the stop came first) are not what the
 * model would have answered. */
static void publish_answer(session *s, const char *prompt, int produced, answer_end end)
{
    pthread_mutex_lock(&s->lock);
    char *answer = xstrdup(s->shared->generated);
    pthread_mutex_unlock(&s->lock);
    const char *why = end == ANSWER_CONTEXT_FULL ? " (the model's context is full)"
                      : end == ANSWER_STOPPED    ? " (cut short by the stop)"
                                                 : "";
    publish_answer_event(s, prompt, answer, "%d tokens%s for: %.160s", produced, why, prompt);
    if (s->cfg.headless)
        say_headless("step %ld, %d tokens%s for: %.160s:\n%s", s->step, produced, why, prompt,
                     answer);
    free(answer);
}

/* The prompt's ids: through the chat template when there is a tokenizer, else "ids:1,2,3". */
static void process_command(session *s, const command *c);

/* A command the run replied "ok" to while its last step ran, taken once it had ended: said,
 * rather than dropped without a word. */
static void not_after_end(session *s, const command *c)
{
    static const char *const names[] = {"pause", "resume", "lr", "lr", "aux", "save", "eval",
                                        "stop", "generate"};
    publish_event(s, "note", "%s came as the run ended, and was not done", names[c->kind]);
}

/* Runs one prompt to its end: the current weights, no dropout, the sampler's own RNG, so the
 * training that follows is exactly what it would have been without it. */
static void generate(session *s, const command *c)
{
    model *m = &s->m;
    tok_ids ids = {0};
    pesc_error err = {{0}};
    float *logits = xmalloc((size_t)m->config.vocab_size * sizeof *logits);
    int K = m->crafted ? m->pesc.top_k : 1;
    int32_t *experts = xcalloc((size_t)m->config.n_layers * K, sizeof *experts);
    int32_t stops[4];
    int n_stops = s->tok ? template_stop_ids(s->tpl, s->tok, stops, 4) : 0;
    tok_stream stream;
    if (s->tok)
        tok_stream_init(&stream, s->tok, 1);
    s->generating = 1;
    pthread_mutex_lock(&s->lock);
    s->shared->generating = 1;
    snprintf(s->shared->prompt, sizeof s->shared->prompt, "%s", c->prompt);
    s->shared->generated[0] = '\0';
    s->shared->n_generated_tokens = 0;
    s->shared->generation_layer = c->layer < m->config.n_layers ? c->layer : 0;
    pthread_mutex_unlock(&s->lock);
    int layer = c->layer < m->config.n_layers ? c->layer : 0;
    int max_tokens = -1;
    pthread_mutex_lock(&s->tok_lock);
    int encoded = prompt_ids(s, c->prompt, &ids, &err);
    pthread_mutex_unlock(&s->tok_lock);
    if (encoded != 0 ||
        (max_tokens = model_answer_room(m, ids.n, c->max_tokens, &err)) < 0 ||
        model_cache_reset(m, ids.n + max_tokens, &err) != 0 ||
        model_decode(m, ids.ids, ids.n, logits, experts, &err) != 0) {
        publish_event(s, "generate", "error: %s", err.msg);
        goto out;
    }
    sampler_free(&s->sampler);
    sampler_init(&s->sampler, c->temperature, 0, c->top_p, s->cfg.seed ^ 0x6a09e667f3bcc909ull);
    int produced = 0;
    answer_end end = ANSWER_WHOLE;
    for (; produced < max_tokens; produced++) {
        if (s->stop_requested) {   /* here, so that the token made before it is counted */
            end = ANSWER_STOPPED;
            break;
        }
        int32_t next = sampler_next(&s->sampler, logits, m->config.vocab_size);
        if (next < 0) {   /* an overflowing model's NaN: no token, rather than garbage */
            model_fail_logits(m, &err);
            publish_event(s, "generate", "error: %s", err.msg);
            goto out;   /* the error is the answer: no empty one after it */
        }
        int stop = 0;
        for (int i = 0; i < n_stops; i++)
            stop |= next == stops[i];
        if (stop)
            break;
        if (model_decode(m, &next, 1, logits, experts, &err) != 0) {
            publish_event(s, "generate", "error: %s", err.msg);
            goto out;
        }
        /* the expert shown is the one that picked this token at the chosen layer */
        int expert = m->crafted ? experts[layer * K] : -1;
        char text[32];
        size_t len = 0;
        const char *piece = text;
        if (s->tok)
            piece = tok_stream_push(&stream, next, &len);
        else
            len = (size_t)snprintf(text, sizeof text, " %d", next);
        generation_append(s, piece, len, expert);
        command c2;
        while (take_command(s, &c2)) {   /* commands are taken between generated tokens too */
            if (s->answering_after_end && c2.kind != CMD_STOP)
                not_after_end(s, &c2);
            else
                process_command(s, &c2);
        }
    }
    if (s->tok) {
        size_t len = 0;
        const char *rest = tok_stream_flush(&stream, &len);
        if (len)
            generation_append(s, rest, len, -1);
    }
    if (end == ANSWER_WHOLE && max_tokens < c->max_tokens && produced == max_tokens)
        end = ANSWER_CONTEXT_FULL;
    publish_answer(s, c->prompt, produced, end);
out:
    if (s->tok)
        tok_stream_free(&stream);
    s->generating = 0;
    pthread_mutex_lock(&s->lock);
    s->shared->generating = 0;
    s->generate_taken = 0;
    pthread_mutex_unlock(&s->lock);
    free(experts);
    free(logits);
    tok_ids_free(&ids);
}

/* ---- checkpoints -------------------------------------------------------------------------- */

/* path made absolute into buf ("" for NULL; the path as it is when it cannot be resolved). */
static void absolute_path(char *buf, size_t n, const char *path)
{
    char resolved[PATH_MAX];
    snprintf(buf, n, "%s", !path ? "" : realpath(path, resolved) ? resolved : path);
}

/* --keep-best's scores, lower better: the held-out loss, or the share of --eval-generate's
 * answers right negated; and the value a score stands for (or back: its own inverse) */
static double best_of(int best_by, const stats_record *r)
{
    return best_by == TRAIN_BEST_ANSWERS ? -r->eval_answer_accuracy : r->eval_loss;
}

static double best_value(int best_by, double score)
{
    return best_by == TRAIN_BEST_ANSWERS ? -score : score;
}

/* What a best is measured on: the held-out records, and by answers which of them were
 * answered and matched how (a hash; 0 where the records' is not known) */
static uint64_t best_data(const session *s)
{
    if (s->cfg.best_by != TRAIN_BEST_ANSWERS || !s->eval_hash)
        return s->eval_hash;
    uint64_t state = s->eval_hash + ((uint64_t)s->cfg.eval_answers << 2) + s->cfg.eval_match;
    if (s->cfg.eval_answers > 0 && s->cfg.eval_answers < s->n_eval)
        state ^= 0x5e1ec7edull;   /* N drawn by source, not every k-th: another sample than a
                                     checkpoint's from before answered_sample */
    uint64_t h = pesc_splitmix64(&state);
    return h ? h : 1;
}

/* Whether a best measured on DATA is one this run's evaluations can beat: the same (0 on
 * either side: not known, taken as the same) */
static int same_heldout(const session *s, uint64_t data)
{
    return !data || !s->eval_hash || data == best_data(s);
}

/* The best kept is one this run's can beat: by the same measure, on the same data */
static int best_kept_beatable(const session *s)
{
    return s->best_kept >= 0 && s->best_kept_by == s->cfg.best_by &&
           same_heldout(s, s->best_kept_data);
}

static const char *best_what(int best_by)
{
    return best_by == TRAIN_BEST_ANSWERS ? "answers right" : "held-out loss";
}

/* The epochs the run reads, the last step ending at the data's end; 0: a --steps run, which
 * reads on into the next epoch for as long as it goes. */
static int run_epochs(const train_config *c)
{
    return c->steps ? 0 : (c->epochs ? c->epochs : 1);
}

/* The --eval-samples file's length with every answer made so far in it; -1 without one (or
 * with one that is no regular file: /dev/full). */
static long long samples_length(session *s)
{
    struct stat st;
    if (!s->samples)
        return -1;
    fflush(s->samples);   /* one that fails is said after the evaluation */
    if (fstat(fileno(s->samples), &st) != 0 || !S_ISREG(st.st_mode))
        return -1;
    return (long long)st.st_size;
}

static void fill_state(session *s, checkpoint_state *st)
{
    memset(st, 0, sizeof *st);
    st->step = s->step;
    st->total_steps = s->total_steps;
    st->epochs = run_epochs(&s->cfg);
    st->lr_override = s->lr_override;
    st->lr_scale = s->lr_scale;
    st->aux_coef = s->m.pesc.aux_coef;
    st->model_rng = s->m.rng;
    st->cursor = dataset_cursor(s->data);
    st->tokens = s->tokens;
    st->elapsed_s = s->elapsed_before + pesc_now() - s->t_start;
    st->nan_skipped = s->nan_skipped;
    st->eval_pending = s->eval_pending;
    /* a pending evaluation's answers are the resumed run's to write again */
    st->eval_samples_bytes = s->eval_pending && s->samples_at_eval >= 0 ? s->samples_at_eval
                                                                         : samples_length(s);
    st->base_fingerprint = s->fingerprint;
    st->pesc = s->m.pesc;
    st->seq = s->cfg.seq;
    st->batch = s->cfg.batch;
    st->grad_accum = s->cfg.grad_accum;
    st->pack = s->cfg.pack;
    st->eval_split = s->cfg.eval_split;
    /* what save_dir/best holds once this save is in: this one when it is for a new best */
    st->best_step = s->best_due ? s->step : s->best_kept;
    st->best_by = s->best_due ? s->cfg.best_by : s->best_kept_by;
    st->best_value = best_value(st->best_by, s->best_due ? s->best_score : s->best_kept_score);
    st->best_eval_data = s->best_due ? best_data(s) : s->best_kept_data;
    st->run_lr = s->cfg.optim.lr;
    st->run_aux_coef = s->cfg.pesc.aux_coef;
    st->seed = s->cfg.seed;
    /* absolute, so that export finds the base from any directory */
    absolute_path(st->init_config, sizeof st->init_config, s->cfg.init_config);
    if (!s->cfg.init_config)
        absolute_path(st->base_model, sizeof st->base_model, s->model_dir);
    absolute_path(st->tokenizer, sizeof st->tokenizer, s->tokenizer_path);
    /* what --resume alone needs to go on: the local files read (downloads in the cache) */
    const train_config *c = &s->cfg;
    st->n_data = c->n_sources;
    for (int i = 0; i < c->n_sources; i++) {
        absolute_path(st->data[i].path, sizeof st->data[i].path, s->sources[i].path);
        st->data[i].weight = s->sources[i].weight;
    }
    st->n_eval = c->n_eval;
    for (int i = 0; i < c->n_eval; i++)
        absolute_path(st->eval_data[i], sizeof st->eval_data[i], s->eval_paths[i]);
    if (s->choices_path)
        absolute_path(st->eval_choices, sizeof st->eval_choices, s->choices_path);
    if (c->eval_generate)
        train_eval_generate_name(c, st->eval_generate, sizeof st->eval_generate);
    absolute_path(st->eval_samples, sizeof st->eval_samples, c->eval_samples);
    snprintf(st->format, sizeof st->format, "%s", c->format);
    snprintf(st->template_name, sizeof st->template_name, "%s", c->template_name);
    st->schedule = (int)c->optim.schedule;
    st->warmup = c->optim.warmup;
    st->weight_decay = c->optim.weight_decay;
    st->clip = c->optim.clip;
    st->neftune = c->neftune;
    absolute_path(st->save_dir, sizeof st->save_dir, c->save_dir);
    absolute_path(st->log, sizeof st->log, c->log_path);
    st->save_every = c->save_every;
    st->eval_every = c->eval_every;
    st->keep = c->keep;
    st->keep_best = c->keep_best;
    st->keep_best_by = c->best_by;
    st->n_sinks = c->n_sinks;
    for (int i = 0; i < c->n_sinks; i++)
        snprintf(st->sinks[i], sizeof st->sinks[i], "%s", c->sinks[i]);
    st->n_plugins = c->n_plugins;
    for (int i = 0; i < c->n_plugins; i++)
        absolute_path(st->plugins[i], sizeof st->plugins[i], c->plugins[i]);
}

_Static_assert(STATS_MAX_SOURCES <= CHECKPOINT_MAX_DATA && TRAIN_MAX_EVAL <= CHECKPOINT_MAX_EVAL &&
               TRAIN_MAX_SINKS <= CHECKPOINT_MAX_SINKS,
               "a checkpoint records every --data, --eval-data, --sink and --plugin");

/* --save DIR was removed while the run went, and is this run's again (checkpoint_relock):
 * the checkpoints it kept there, its best among them, are gone, so the next evaluation's is
 * the best to beat (unless this save is for one). */
static void save_dir_made_again(session *s)
{
    publish_warning(s, "note", "--save %s was removed while the run was on: made again (the "
                    "checkpoints saved there before went with it)", s->cfg.save_dir);
    s->best_kept = -1;
    if (!s->best_due)
        s->best_score = INFINITY;
}

/* 0, or -1 with the reason in *err (and in the log's events). */
static int save_now(session *s, pesc_error *err)
{
    if (!s->cfg.save_dir) {
        publish_event(s, "save", "not saved: no --save DIR was given");
        return pesc_fail(err, "not saved: no --save DIR was given");
    }
    checkpoint_state st;
    char *where = NULL;
    set_state(s, MONITOR_SAVING, NULL);
    int lock = checkpoint_relock(&s->save_lock, s->cfg.save_dir, &s->save_dir_id, err);
    if (lock == CHECKPOINT_RELOCKED)
        save_dir_made_again(s);
    else if (lock == CHECKPOINT_LOCK_RENEWED)
        publish_warning(s, "note", "the lock file of --save %s was removed while the run was "
                        "on: taken again", s->cfg.save_dir);
    fill_state(s, &st);
    int rc = lock < 0 ? -1 : checkpoint_save(s->cfg.save_dir, s->cfg.keep, s->best_kept, &s->m,
                                             &s->opt, &st, &where, err);
    set_state(s, s->paused ? MONITOR_PAUSED : MONITOR_RUNNING, NULL);
    if (rc != 0) {
        publish_event(s, "error", "save failed: %s", err->msg);
        if (s->best_due) {
            /* the weights that scored it are gone by the next save: the next evaluation has
             * to beat only the best that is kept, where that was on these held-out data */
            s->best_due = 0;
            s->best_score = best_kept_beatable(s) ? s->best_kept_score : INFINITY;
        }
        return -1;
    }
    pthread_mutex_lock(&s->lock);   /* read by snapshots, which count from it */
    s->last_save = pesc_now();
    pthread_mutex_unlock(&s->lock);
    s->saved_step = s->step;
    s->saved_changes = s->live_changes;
    if (s->best_due) {
        /* the checkpoint is in and its state.json names it the best: it is kept out of
         * rotation also when DIR/best cannot point at it, as the error event says */
        pesc_error failed;
        if (checkpoint_mark_best(s->cfg.save_dir, s->cfg.keep, s->step, &failed) != 0)
            publish_warning(s, "error", "%s", failed.msg);
        s->best_kept = s->step;
        s->best_kept_score = s->best_score;
        s->best_kept_by = s->cfg.best_by;
        s->best_kept_data = best_data(s);
        s->best_due = 0;
    }
    if (s->best_kept == s->step)
        publish_event(s, "save", "%s (best: %s %.4f)", where, best_what(s->best_kept_by),
                      best_value(s->best_kept_by, s->best_kept_score));
    else
        publish_event(s, "save", "%s", where);
    free(s->last_checkpoint);
    s->last_checkpoint = where;
    return 0;
}

/* A save the run goes on after, failed or not (the next one may succeed): a failure is an
 * event, and a headless run says it on stderr too. */
static void save_going_on(session *s)
{
    pesc_error failed;
    if (save_now(s, &failed) != 0 && s->cfg.headless)
        fprintf(stderr, "pesc train: save failed, training goes on: %s\n", failed.msg);
}

/* ---- the trainer ------------------------------------------------------------------------- */

static double current_lr(session *s)
{
    double lr = s->lr_override >= 0 ? s->lr_override : optim_lr_at(&s->cfg.optim, s->step);
    return lr * s->lr_scale;
}

/* The rate in force from now on, in the snapshot's last step record, before the next step
 * brings its own: a paused run's status line says what resuming will use. */
static void publish_lr(session *s)
{
    double lr = current_lr(s);
    pthread_mutex_lock(&s->lock);
    if (s->shared->last) {
        s->shared->last->lr = lr;
        s->shared->last->lr_overridden = s->lr_override >= 0;
    }
    s->progress.lr = lr;
    s->lr_scale_shown = s->lr_scale;
    s->lr_by_hand_shown = s->lr_override >= 0;
    pthread_mutex_unlock(&s->lock);
}

static void eval_asked(session *s);

static void process_command(session *s, const command *c)
{
    switch (c->kind) {
    case CMD_PAUSE:
        if (!s->paused) {
            s->paused = 1;
            s->paused_at = pesc_now();
            s->stopped_at_pause = pesc_stopped_s();
            set_state(s, MONITOR_PAUSED, "paused");
            publish_event(s, "pause", "paused at step %ld", s->step);
        }
        break;
    case CMD_RESUME:
        if (s->paused) {
            s->paused = 0;
            /* a Ctrl-Z while paused is counted once, as stopped time */
            s->paused_s += pesc_now() - s->paused_at - (pesc_stopped_s() - s->stopped_at_pause);
            set_state(s, MONITOR_RUNNING, "running");
            publish_event(s, "resume", "resumed at step %ld", s->step);
        }
        break;
    case CMD_LR:
    case CMD_LR_SCALE: {
        double before = current_lr(s) / s->lr_scale;
        double after = c->kind == CMD_LR ? c->value : before * c->value;
        pesc_error refused;   /* factors queued together can go past what each one was */
        if (optim_check_lr("lr", after, s->cfg.optim.weight_decay, &refused)) {
            publish_warning(s, "note", "%s; the rate stays %g", refused.msg, before);
            break;
        }
        char ended[160];
        lr_schedule_ended(s, s->step, s->lr_override >= 0, ended, sizeof ended);
        s->live_changes++;
        s->lr_override = after;
        publish_event(s, "lr", STATS_LR_SET "%s", s->lr_override * s->lr_scale,
                      before * s->lr_scale, ended);
        publish_lr(s);
        break;
    }
    case CMD_AUX:
        s->live_changes++;
        publish_event(s, "aux", STATS_AUX_SET, c->value, s->m.pesc.aux_coef);
        s->m.pesc.aux_coef = (float)c->value;
        pthread_mutex_lock(&s->lock);   /* shown at once, as the LR is, also while paused */
        if (s->shared->last)
            s->shared->last->aux_coef = c->value;
        pthread_mutex_unlock(&s->lock);
        break;
    case CMD_SAVE:
        save_going_on(s);
        break;
    case CMD_EVAL:
        /* not inside a generation: --eval-generate's answers take the KV cache it decodes
         * on; one paused meanwhile is scored when it ends */
        if (s->paused && !s->generating)
            eval_asked(s);
        else
            s->eval_requested = 1;
        break;
    case CMD_STOP: break;   /* stop_requested is already set */
    case CMD_GENERATE:   /* session_command refuses a second one while this one runs */
        generate(s, c);
        if (s->paused && s->eval_requested) {
            s->eval_requested = 0;
            eval_asked(s);
        }
        break;
    }
}

/* Global norm of the gradients, or NaN when any is not finite. */
static double gradient_norm(session *s)
{
    return optim_grad_norm(&s->opt, s->m.grad_block);
}

/* ---- held-out evaluation ------------------------------------------------------------------ */

static int stop_asked(session *s)
{
    pthread_mutex_lock(&s->lock);
    int stop = s->stop_requested;
    pthread_mutex_unlock(&s->lock);
    return stop;
}

/* Scores the held-out records with the weights as they are: one record a row, cut at --seq as
 * training cuts them, --batch rows a pass as long as its longest record, no dropout. The mean
 * next-token loss over the trained tokens goes in r (eval_loss, eval_tokens). 0, 1 when a stop
 * came first (r says nothing), or -1. */
static int evaluate_loss(session *s, stats_record *r, pesc_error *err)
{
    int B = s->cfg.batch;
    int32_t *tokens = xmalloc(2 * (size_t)B * s->cfg.seq * sizeof *tokens);
    double nll = 0, t0 = pesc_now();
    long long count = 0;
    int rc = 0;
    for (int first = 0; first < s->n_eval && rc == 0; first += B) {
        if (stop_asked(s)) {
            rc = 1;
            break;
        }
        int rows = s->n_eval - first < B ? s->n_eval - first : B;
        int T = s->eval[s->eval_order[first]].len;
        T = T < s->cfg.seq ? T : s->cfg.seq;
        int32_t *targets = tokens + (size_t)rows * T;
        for (int i = 0; i < rows; i++) {
            const ds_record *d = &s->eval[s->eval_order[first + i]];
            int len = d->len < T ? d->len : T;
            int32_t *row = tokens + (size_t)i * T, *target = targets + (size_t)i * T;
            memcpy(row, d->ids, (size_t)len * sizeof *row);
            memset(row + len, 0, (size_t)(T - len) * sizeof *row);   /* after the record: */
            model_shift_targets(target, d->ids, d->labels, len);       /* no loss, unseen */
            for (int t = len; t < T; t++)
                target[t] = -100;
        }
        double part;
        long long n;
        if (model_score(&s->m, tokens, targets, rows, T, &part, &n, err) != 0) {
            rc = pesc_fail_prefix(err, "held-out data");
            break;
        }
        nll += part;
        count += n;
    }
    free(tokens);
    if (rc != 0)
        return rc;
    if (count == 0)   /* open_eval made sure some token is trained within --seq */
        return pesc_fail(err, "held-out data: no trained token within --seq %d", s->cfg.seq);
    r->eval_loss = nll / (double)count;
    r->eval_tokens = count;
    publish_result(s, STATS_EVAL_LOSS " over %lld tokens of %d records (%.1f s)",
                  r->eval_loss, count, s->n_eval, pesc_now() - t0);
    return 0;
}

/* One question's options, laid out in the run's template, as one batch of sequences (as pesc
 * eval --choices scores them), as many a pass as a step's --batch x --seq holds (open_choices
 * made sure one does): the run's buffers, not more. Each option's log-likelihood into score. */
static int score_choice(session *s, const mc_question *q, double *score, size_t *bytes,
                        pesc_error *err)
{
    mc_layout l = {.tpl = s->tpl};
    mc_batch b;
    pthread_mutex_lock(&s->tok_lock);
    int made = mc_batch_make(&b, q, &l, s->tok, err);
    pthread_mutex_unlock(&s->tok_lock);
    if (made != 0)
        return -1;
    int rows = (int)((long)s->cfg.batch * s->cfg.seq / b.T), rc = 0;
    rows = rows < 1 ? 1 : rows > b.K ? b.K : rows;
    double nll[MC_MAX_OPTIONS];
    for (int first = 0; rc == 0 && first < b.K; first += rows) {
        int n = b.K - first < rows ? b.K - first : rows;
        rc = model_score_sequences(&s->m, b.tokens + (size_t)first * b.T,
                                   b.targets + (size_t)first * b.T, n, b.T, nll + first, err);
    }
    for (int i = 0; rc == 0 && i < b.K; i++)
        score[i] = -nll[i];
    memcpy(bytes, b.bytes, (size_t)b.K * sizeof *bytes);
    mc_batch_free(&b);
    return rc;
}

/* Scores the --eval-choices questions with the weights as they are: the accuracy goes in r
 * (eval_accuracy, eval_accuracy_norm, eval_questions). 0, 1 when a stop came first, or -1. */
static int evaluate_choices(session *s, stats_record *r, pesc_error *err)
{
    double t0 = pesc_now(), score[MC_MAX_OPTIONS];
    size_t bytes[MC_MAX_OPTIONS];
    mc_tally tally = {0};
    for (int i = 0; i < s->choices.n; i++) {
        if (stop_asked(s))
            return 1;
        const mc_question *q = &s->choices.items[i];
        if (score_choice(s, q, score, bytes, err) != 0)
            return pesc_fail_prefix(err, "--eval-choices %s:%ld", s->cfg.eval_choices, q->line);
        mc_tally_add(&tally, q, score, bytes);
    }
    r->eval_questions = tally.questions;
    r->eval_accuracy = (double)tally.right / (double)tally.questions;
    r->eval_accuracy_norm = (double)tally.right_norm / (double)tally.questions;
    publish_result(s, STATS_EVAL_ACCURACY " (%.4f a byte) on %ld questions, chance %.4f "
                  "(%.1f s)", r->eval_accuracy, r->eval_accuracy_norm, tally.questions,
                  tally.chance / (double)tally.questions, pesc_now() - t0);
    return 0;
}

/* Where held-out record i comes from: its --eval-data file, or with --eval-split its --data
 * source; and that source's name, shortened as the per-source view has it (a demo source's
 * family). */
static int eval_source(const session *s, int i)
{
    if (s->cfg.eval_split > 0)
        return s->eval[i].source;
    int f = 0;
    while (f + 1 < s->cfg.n_eval && i >= s->eval_ends[f])
        f++;
    return f;
}

static int compare_indices(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* --eval-generate M:N: which N (want; 0 all) of the held-out records are answered, into out
 * in file order: in each source a share of N in proportion to its records, drawn at random
 * there with a fixed seed, so the same ones at every evaluation and in every run on this
 * data. Every k-th record instead would follow a pattern of the file's order (the demo's
 * families come round-robin: N = 50 of 300 took one family alone). */
static long answered_sample(const session *s, int n_sources, long want, int *out)
{
    long n = s->n_eval, cum = 0, got = 0;
    if (want <= 0 || want >= n) {
        for (long i = 0; i < n; i++)
            out[i] = (int)i;
        return n;
    }
    int *pool = xmalloc((size_t)n * sizeof *pool);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (int source = 0; source < n_sources; source++) {
        long m = 0;
        for (long i = 0; i < n; i++)
            if (eval_source(s, (int)i) == source)
                pool[m++] = (int)i;
        long quota = want * (cum + m) / n - want * cum / n;
        cum += m;
        for (long k = 0; k < quota; k++) {   /* a partial Fisher-Yates shuffle */
            long j = k + (long)(pesc_splitmix_uniform(&rng) * (double)(m - k));
            int t = pool[k];
            pool[k] = pool[j];
            pool[j] = t;
            out[got++] = pool[k];
        }
    }
    free(pool);
    qsort(out, (size_t)got, sizeof *out, compare_indices);
    return got;
}

static void eval_source_name(const session *s, int source, char *out, size_t n)
{
    const char *path = s->cfg.eval_split > 0 ? s->cfg.sources[source].path
                                              : s->cfg.eval_paths[source];
    const char *slash = strrchr(path, '/');
    if (strncmp(path, "demo:", 5) == 0)
        snprintf(out, n, "%.*s", (int)strcspn(path + 5, ","), path + 5);
    else
        snprintf(out, n, "%s", slash ? slash + 1 : path);
}

/* The share right by source, when the held-out records come from more than one: an event
 * ("arithmetic 0.44, sort 0.60, ..."), of the sources that had answers scored. */
static void publish_answers_by_source(session *s, const ans_tally *by, int n)
{
    char text[sizeof ((stats_event *)0)->text], name[64];
    size_t used = 0;
    int shown = 0;
    for (int i = 0; i < n; i++)
        shown += by[i].scored > 0;
    if (shown < 2)
        return;
    used += (size_t)snprintf(text, sizeof text, "eval answers by source:");
    for (int i = 0, k = 0; i < n && used < sizeof text; i++) {
        if (by[i].scored == 0)
            continue;
        eval_source_name(s, i, name, sizeof name);
        used += (size_t)snprintf(text + used, sizeof text - used, "%s %s %.2f", k++ ? "," : "",
                                 name, (double)by[i].right / (double)by[i].scored);
    }
    publish_result(s, "%s", text);
}

/* ans_answerer's hook: a stop asked ends the answers */
static int stop_answering(void *ctx, long made)
{
    (void)made;
    return stop_asked(ctx);
}

/* --eval-generate: the held-out records' answers, generated greedily with the weights as they
 * are and matched against theirs (answers.h): the share right goes in r (eval_answer_accuracy,
 * eval_answers), and by source in an event. 0, 1 when a stop came first, or -1. */
static int evaluate_answers(session *s, stats_record *r, pesc_error *err)
{
    double t0 = pesc_now();
    ans_answerer a;
    ans_answerer_init(&a, &s->m, s->tok, s->tpl, ANS_BATCH);
    ans_options o = {.match = s->cfg.eval_match, .samples = s->samples, .step = s->step};
    char names[STATS_MAX_SOURCES > TRAIN_MAX_EVAL ? STATS_MAX_SOURCES : TRAIN_MAX_EVAL][64];
    ans_tally by[STATS_MAX_SOURCES > TRAIN_MAX_EVAL ? STATS_MAX_SOURCES : TRAIN_MAX_EVAL] = {{0}};
    int rc = 0, n_sources = s->cfg.eval_split > 0 ? s->cfg.n_sources : s->cfg.n_eval;
    int *picked = xmalloc((size_t)s->n_eval * sizeof *picked);
    long total = answered_sample(s, n_sources, s->cfg.eval_answers, picked);
    const ds_record **records = xcalloc((size_t)total, sizeof *records);
    ans_tally **tallies = xcalloc((size_t)total, sizeof *tallies);
    const char **sources = xcalloc((size_t)total, sizeof *sources);
    for (long i = 0; i < total; i++) {
        int at = picked[i], source = eval_source(s, at);
        records[i] = &s->eval[at];
        tallies[i] = &by[source];
        eval_source_name(s, source, names[source], sizeof names[source]);
        sources[i] = names[source];
    }
    /* a stop is heard between steps */
    a.answered = stop_answering;
    a.ctx = s;
    if (stop_asked(s))
        rc = 1;
    else if ((rc = ans_answer_many(&a, records, tallies, sources, (int)total, &o, err)) < 0)
        pesc_fail_prefix(err, "--eval-generate");
    free(picked);
    free(records);
    free(tallies);
    free(sources);
    /* a full disk is said, and the run goes on (the answers are in the log's tallies) */
    if (s->samples && (fflush(s->samples) != 0 || ferror(s->samples))) {
        publish_warning(s, "error", "--eval-samples %s: %s; the answers of step %ld are not all "
                      "there", s->cfg.eval_samples, strerror(errno), s->step);
        clearerr(s->samples);
    }
    ans_answerer_free(&a);
    model_cache_release(&s->m);   /* the steps' memory again */
    if (rc != 0)
        return rc;
    ans_tally tally = {0};
    for (int i = 0; i < n_sources; i++) {
        tally.right += by[i].right;
        tally.scored += by[i].scored;
        tally.no_answer += by[i].no_answer;
        tally.too_long += by[i].too_long;
    }
    if (tally.scored == 0) {
        publish_result(s, "eval answers: none of %ld records scored (%ld without an answer "
                      "to match, %ld whose prompts fill the model's context)", total,
                      tally.no_answer, tally.too_long);
        return 0;
    }
    r->eval_answers = tally.scored;
    r->eval_answer_accuracy = (double)tally.right / (double)tally.scored;
    char unscored[96] = "";
    if (tally.scored < total)
        snprintf(unscored, sizeof unscored, "; %ld without an answer to match, %ld too long",
                 tally.no_answer, tally.too_long);
    publish_result(s, STATS_EVAL_ANSWERS " (%ld of %ld, %s match%s) (%.1f s)",
                  r->eval_answer_accuracy, tally.right, tally.scored,
                  ans_match_name(s->cfg.eval_match), unscored, pesc_now() - t0);
    publish_answers_by_source(s, by, n_sources);
    return 0;
}

/* What is scored after a step: the held-out records' loss and answers and the questions'
 * accuracy, each the run has. 0, 1 when a stop came first (r says nothing), or -1. */
static int evaluate(session *s, stats_record *r, pesc_error *err)
{
    r->eval_tokens = 0;
    r->eval_questions = 0;
    r->eval_answers = 0;
    s->samples_at_eval = samples_length(s);
    set_state(s, MONITOR_EVALUATING, NULL);   /* the step counter stands still meanwhile */
    int rc = s->n_eval > 0 ? evaluate_loss(s, r, err) : 0;
    if (rc == 0 && s->n_eval > 0 && s->cfg.eval_generate)
        rc = evaluate_answers(s, r, err);
    if (rc == 0 && s->choices.n > 0)
        rc = evaluate_choices(s, r, err);
    set_state(s, s->paused ? MONITOR_PAUSED : MONITOR_RUNNING, NULL);
    if (rc != 0)
        r->eval_tokens = r->eval_questions = r->eval_answers = 0;
    return rc;
}

/* A new best evaluation with --keep-best (the lowest held-out loss, or the most answers
 * right): the next save_now keeps these weights as the best. */
static void note_best(session *s, const stats_record *r)
{
    int measured = s->cfg.best_by == TRAIN_BEST_ANSWERS ? r->eval_answers > 0
                                                         : r->eval_tokens > 0;
    double score = best_of(s->cfg.best_by, r);
    if (s->cfg.keep_best && measured && score < s->best_score) {
        s->best_score = score;
        s->best_due = 1;
    }
}

/* The eval command while paused: at once, with the weights of the step the run stands at. The
 * loss goes to the eval event, onto that step's point of the loss chart when it had none, and
 * to --keep-best (a new lowest is saved now, as that step's checkpoint); the step's record is
 * written already, so the sinks do not see it. evaluate's 0 or 1 (a stop came first), or -1
 * (said in an error event). */
static int eval_paused(session *s)
{
    stats_record r = {0};
    pesc_error err = {{0}};
    int rc = evaluate(s, &r, &err);
    if (rc < 0)
        publish_warning(s, "error", "eval: %s", err.msg);
    if (rc != 0)
        return rc;
    pthread_mutex_lock(&s->lock);
    monitor_view *v = s->shared;
    monitor_point *last = v->n_points > 0 ? &v->points[v->n_points - 1] : NULL;
    if (last && last->step == s->step && isnan(last->eval_loss) && r.eval_tokens > 0)
        last->eval_loss = (float)r.eval_loss;
    if (last && last->step == s->step && isnan(last->eval_accuracy) && r.eval_questions > 0)
        last->eval_accuracy = (float)r.eval_accuracy;
    if (last && last->step == s->step && isnan(last->eval_answers) && r.eval_answers > 0)
        last->eval_answers = (float)r.eval_answer_accuracy;
    pthread_mutex_unlock(&s->lock);
    note_best(s, &r);
    if (s->best_due)
        save_going_on(s);
    return 0;
}

/* The eval command's evaluation while paused; one a stop cuts short is said to be lost (the
 * command is the user's to give again). */
static void eval_asked(session *s)
{
    if (eval_paused(s) == 1)
        publish_warning(s, "note", "the stop cut the evaluation asked for at step %ld short",
                        s->step);
}

/* A resumed run whose checkpoint was saved by a stop during its step's evaluation: that
 * evaluation, with the step's weights, before the next step, as the paused one is (its events
 * are the step's). Done, the run's next checkpoint says so, also when it is of this step. */
static void eval_pending(session *s)
{
    s->eval_pending = 0;   /* before a new best's save in eval_paused */
    double saved_before = s->last_save;   /* (this thread's to write) */
    int rc = eval_paused(s);
    if (rc == 1) {
        s->eval_pending = 1;   /* stopped again */
        publish_warning(s, "note", "the stop cut step %ld's evaluation short again: %s",
                        s->step, s->cfg.save_dir ? "its checkpoint still says so" :
                        "with no --save DIR, no resume can do it");
    }
    else if (s->last_save == saved_before)
        s->live_changes++;     /* the saved state (pending) is this one's no longer; a new
                                  best's save has written this one already */
}

/* After this step: every eval_every steps, after the last, and when the eval command asked. */
static int eval_due(const session *s)
{
    return (s->n_eval > 0 || s->choices.n > 0) &&
           (s->step % s->eval_every == 0 || s->eval_requested ||
                             (s->total_steps > 0 && s->step == s->total_steps));
}

typedef struct step_counts {
    int *counts, *first, *sources;
    double *gate, *entropy;
} step_counts;

static void add_routing(session *s, step_counts *sc)
{
    const model_routing *r = &s->m.routing;
    int L = s->m.config.n_layers, E = s->m.pesc.experts;
    for (int i = 0; i < L * E; i++) {
        sc->counts[i] += r->counts[i];
        sc->first[i] += r->first[i];
        sc->gate[i] += r->gate_sum[i];
    }
    for (int i = 0; i < MODEL_MAX_SOURCES * L * E; i++)
        sc->sources[i] += r->source_counts[i];
    for (int l = 0; l < L; l++)
        sc->entropy[l] += r->entropy[l];
}

/* One optimizer step over grad_accum micro-batches. 0: done a step (or skipped a
 * non-finite one); 1: the data is exhausted; -1: failed (err). */
static int train_step(session *s, pesc_error *err)
{
    model *m = &s->m;
    double t0 = pesc_now(), stopped0 = pesc_stopped_s(), ce = 0.0, aux = 0.0, z = 0.0;
    long long tokens = 0;
    int micro = 0, L = m->config.n_layers, E = m->crafted ? m->pesc.experts : 0;
    step_counts sc = {0};
    if (E) {
        sc.counts = xcalloc((size_t)L * E, sizeof(int));
        sc.first = xcalloc((size_t)L * E, sizeof(int));
        sc.sources = xcalloc((size_t)MODEL_MAX_SOURCES * L * E, sizeof(int));
        sc.gate = xcalloc((size_t)L * E, sizeof(double));
        sc.entropy = xcalloc((size_t)L, sizeof(double));
    }
    int rc = 0;
    model_zero_grad(m);
    for (int a = 0; a < s->cfg.grad_accum; a++) {
        int rows = dataset_next_batch(s->data, &s->batch);
        if (rows == 0)
            break;
        /* rows as long as the longest (of 8s: aligned for a GPU's products and loads) */
        int T = ds_batch_trim(&s->batch, 8);
        model_layout layout = {s->batch.positions, s->batch.doc_ids, s->batch.sources};
        model_losses l;
        if (model_train_step(m, s->batch.ids, s->batch.targets, &layout, rows, T,
                             1.0f / (float)s->cfg.grad_accum, 1, &l, err) != 0) {
            rc = -1;
            goto out;
        }
        ce += l.ce;
        aux += l.aux;
        z += l.z;
        for (int r = 0; r < rows; r++)
            tokens += s->batch.row_tokens[r];
        if (E)
            add_routing(s, &sc);
        micro++;
    }
    if (micro == 0) {
        rc = 1;
        goto out;
    }
    /* each micro-batch added 1/grad_accum of its gradient: the last step of a run whose data
     * ends early holds fewer, and its gradient (and the norm clipped and logged) is the mean
     * of those, not a fraction of it */
    if (micro < s->cfg.grad_accum)
        vector_scale(s->backend, m->grad_block, (float)s->cfg.grad_accum / (float)micro,
                     m->n_train);
    ce /= micro;
    aux /= micro;
    z /= micro;
    if (s->inject_nan > 0) {
        s->inject_nan--;
        vector_scale(s->backend, m->grad_block, NAN, m->n_train);
    }
    double norm = gradient_norm(s), lr = current_lr(s);
    if (!isfinite(norm) || !isfinite(ce) || !isfinite(aux) || !isfinite(z)) {
        s->nan_skipped++;
        s->nan_run++;
        publish_event(s, "nan-skip", "step %ld skipped: non-finite %s (%ld in a row)", s->step + 1,
                      isfinite(ce) ? "gradients" : "loss", s->nan_run);
        int forward = !isfinite(ce) || !isfinite(aux) || !isfinite(z);
        if (forward && s->step == s->start_step && s->nan_run >= s->cfg.nan_limit) {
            /* nothing was updated yet: the model as loaded overflows, which no learning
             * rate mends */
            rc = pesc_fail(err, "step %ld: the loss was not finite on %ld steps in a row "
                           "before any update: the model%s%s overflows on this data as loaded "
                           "(its weights, or the adapters it resumed), not from the learning "
                           "rate%s", s->step + 1, s->nan_run, m->source[0] ? " " : "",
                           m->source, model_device_advice(m));
            goto out;
        }
        if (s->nan_run % s->cfg.nan_limit == 0) {
            /* a model or data that hold NaN or inf would skip steps forever */
            if (s->nan_run / s->cfg.nan_limit > NAN_HALVINGS) {
                /* where to go from: the advice once named "an earlier checkpoint" also when
                 * the run had none */
                char advice[600];
                if (s->last_checkpoint)
                    snprintf(advice, sizeof advice, "resume from %.500s (the last checkpoint) "
                             "with a lower --lr", s->last_checkpoint);
                else
                    snprintf(advice, sizeof advice, "no checkpoint of this run was saved%s: "
                             "start again with a lower --lr", s->cfg.save_dir
                             ? " (--save-every N keeps some on the way)"
                             : " (--save DIR --save-every N keeps some on the way)");
                rc = pesc_fail(err, "step %ld: %ld steps in a row were non-finite, also after "
                               "halving the learning rate %d times: the model has diverged "
                               "or overflows on this data; %s", s->step + 1, s->nan_run,
                               NAN_HALVINGS, advice);
                goto out;
            }
            s->lr_scale *= 0.5;
            publish_warning(s, "lr", STATS_LR_HALVED, current_lr(s), s->cfg.nan_limit);
            publish_lr(s);
        }
        goto out;
    }
    s->nan_run = 0;
    /* previous = before - after, written by the update itself (a copy of the trainables and a
     * subtraction moved 5 times their bytes more) */
    optim_step_norm(&s->opt, m->train_block, m->grad_block, s->previous, lr, norm);
    s->step++;
    s->tokens += tokens;
    stats_record *r = s->record;
    double now = pesc_now(), elapsed = s->elapsed_before + now - s->t_start;
    r->step = s->step;
    r->total_steps = s->total_steps;
    r->epoch = dataset_epochs_done(s->data);
    r->tokens = s->tokens;
    r->loss = ce;
    r->aux_loss = aux;
    r->z_loss = z;
    r->lr = lr;
    r->lr_overridden = s->lr_override >= 0;
    char coef[32];   /* the float as given (0.1, not 0.100000001) */
    snprintf(coef, sizeof coef, "%.7g", (double)s->m.pesc.aux_coef);
    r->aux_coef = strtod(coef, NULL);
    r->grad_norm = norm;
    /* not the time a Ctrl-Z stopped the process */
    double stopped = pesc_stopped_s(), busy = now - t0 - (stopped - stopped0);
    r->step_s = busy > 0 ? busy : now - t0;
    r->tokens_per_s = (double)tokens / r->step_s;
    r->elapsed_s = elapsed;
    /* the pace of this process's steps, not counting a resumed run's earlier ones nor the
     * time it stood paused or stopped */
    r->eta_s = s->total_steps > 0 ? (double)(s->total_steps - s->step) *
                                        (now - s->t_start - s->paused_s -
                                         (stopped - s->stopped_at_start)) /
                                        (double)(s->step - s->start_step) : -1.0;
    r->rss_bytes = resident_bytes();
    backend_memory mem;
    r->device_bytes = backend_memory_info(s->backend, &mem) == 0 ? (double)mem.used : 0.0;
    if (E)
        fill_routing(s, r, sc.counts, sc.first, sc.gate, sc.sources, sc.entropy, micro);
    r->eval_tokens = 0;
    r->eval_questions = 0;
    r->eval_answers = 0;
    if (eval_due(s)) {
        s->eval_requested = 0;
        int evaluated = evaluate(s, r, err);
        if (evaluated < 0) {
            rc = -1;
            goto out;
        }
        s->eval_pending = evaluated == 1;
        if (s->eval_pending)
            publish_warning(s, "note", "the stop cut step %ld's evaluation short: %s", s->step,
                            s->cfg.save_dir ? "its checkpoint says so, and --resume evaluates "
                            "it first" : "with no --save DIR, no resume can do it");
        note_best(s, r);
    }
    if (s->sinks)
        sinks_record(s->sinks, r);
    publish_step(s, r);
    if (E)
        watch_routing(s, r);
    if ((s->cfg.save_every > 0 && s->step % s->cfg.save_every == 0) || s->best_due) {
        save_going_on(s);
    }
out:
    free(sc.counts);
    free(sc.first);
    free(sc.sources);
    free(sc.gate);
    free(sc.entropy);
    return rc;
}

/* After training, in the workbench: the trained model answers prompts until a stop (the
 * screen quits, or session_delete). A stop queued as training ended still ends this; other
 * commands queued then are dropped with a note, the run being over. */
static void answer_until_stopped(session *s)
{
    for (;;) {
        command c;
        while (take_command(s, &c)) {
            if (c.kind == CMD_STOP)
                goto out;
            if (c.kind == CMD_GENERATE)
                generate(s, &c);
            else
                not_after_end(s, &c);
        }
        pthread_mutex_lock(&s->lock);
        if (!s->stop_requested && !s->closing && s->q_len == 0)
            pthread_cond_wait(&s->wake, &s->lock);
        int stop = s->stop_requested || s->closing;
        pthread_mutex_unlock(&s->lock);
        if (stop)
            break;
    }
out:
    pthread_mutex_lock(&s->lock);
    s->answering_after_end = 0;
    pthread_mutex_unlock(&s->lock);
}

static void *trainer_main(void *arg)
{
    session *s = arg;
    pesc_error err = {{0}};
    s->t_start = pesc_now();
    s->stopped_at_start = pesc_stopped_s();
    s->start_step = s->step;
    set_state(s, MONITOR_RUNNING, "running");
    publish_event(s, "begin", "training from step %ld of %ld", s->step, s->total_steps);
    if (s->eval_pending)
        eval_pending(s);
    monitor_state end = MONITOR_FINISHED;
    for (;;) {
        command c;
        while (take_command(s, &c))
            process_command(s, &c);
        pthread_mutex_lock(&s->lock);
        int stop = s->stop_requested;
        if (!stop && s->paused && s->q_len == 0) {
            /* paused: sleep until a command comes */
            pthread_cond_wait(&s->wake, &s->lock);
        }
        pthread_mutex_unlock(&s->lock);
        if (stop) {
            end = MONITOR_STOPPED;
            break;
        }
        if (s->paused)
            continue;
        if (s->total_steps > 0 && s->step >= s->total_steps)
            break;
        int rc = train_step(s, &err);
        if (rc == 1)
            break;
        if (rc < 0) {
            end = MONITOR_FAILED;
            snprintf(s->error, sizeof s->error, "%s", err.msg);
            publish_event(s, "error", "%s", err.msg);
            break;
        }
    }
    /* the final checkpoint, unless the last one already holds this very state (a periodic
     * save on the last step: a second would double a write as large as the trainables) */
    /* (and still there: --save DIR removed since, the paused run's say, it is saved again) */
    int saved = s->saved_step == s->step && s->saved_changes == s->live_changes &&
                checkpoint_there(s->cfg.save_dir, s->step);
    if (end != MONITOR_FAILED && s->cfg.save_dir && !saved && save_now(s, &err) != 0) {
        /* the run's result would be lost without a word: the run fails, naming why */
        end = MONITOR_FAILED;
        snprintf(s->error, sizeof s->error, "the final checkpoint was not saved: %.900s", err.msg);
        publish_event(s, "error", "%s", s->error);
    }
    publish_event(s, end == MONITOR_FINISHED ? "finish" : end == MONITOR_STOPPED ? "stop" : "error",
                  STATS_END_TEXT, s->step);
    s->status = end == MONITOR_FAILED ? 1 : 0;
    pthread_mutex_lock(&s->lock);
    /* before the state, so that no prompt is refused; not when the session is being closed,
     * whose stop ended training */
    s->answering_after_end = s->cfg.answer_after_end && end != MONITOR_FAILED && !s->closing;
    if (s->answering_after_end)
        s->stop_requested = 0;   /* the stop that ended training; the next one ends this */
    pthread_mutex_unlock(&s->lock);
    set_state(s, end, end == MONITOR_FAILED ? s->error : end == MONITOR_STOPPED ? "stopped" : "finished");
    if (s->answering_after_end)
        answer_until_stopped(s);
    return NULL;
}

/* ---- setting up --------------------------------------------------------------------------- */

static int load_tokenizer(session *s, pesc_error *err)
{
    if (s->cfg.tokenizer) {
        if (fetch_view_url_to_cache(s->cfg.tokenizer, &s->tokenizer_path, err) != 0 ||
            !(s->tok = tok_load(s->tokenizer_path, err)))
            return pesc_fail_prefix(err, "--tokenizer");
        return 0;
    }
    char *path = pesc_path_join(s->model_dir, "tokenizer.json");
    int present = access(path, R_OK) == 0;
    free(path);
    if (present && !(s->tok = tok_load_dir(s->model_dir, err)))
        return -1;
    return 0;
}

static int open_data(session *s, pesc_error *err)
{
    const train_config *c = &s->cfg;
    for (int i = 0; i < c->n_sources; i++) {
        s->sources[i] = c->sources[i];
        if (fetch_view_url_to_cache(c->sources[i].path, &s->data_paths[i], err) != 0)
            return pesc_fail_prefix(err, "--data");
        snprintf(s->sources[i].path, sizeof s->sources[i].path, "%s", s->data_paths[i]);
    }
    ds_load_options lo = {.tok = s->tok, .tpl = s->tpl, .vocab_size = s->m.config.vocab_size,
                          .strict = c->strict, .warn = s->skips,
                          .formats = s->formats};
    if (ds_formats_parse(s->formats, c->format, &lo.format, err) != 0)
        return -1;
    for (int i = 0; i < c->n_sources; i++)
        if (ds_source_check(s->formats, lo.format, &s->sources[i], err) != 0)
            return -1;
    ds_options o = {.batch = c->batch, .seq = c->seq, .pack = c->pack, .shuffle = 1,
                    .holdout = c->eval_split,
                    .seed = c->seed, .epochs = run_epochs(c)};
    s->data = dataset_open(s->sources, c->n_sources, &lo, &o, err);
    if (!s->data)
        return pesc_fail_prefix(err, "--data");
    ds_batch_init(&s->batch, c->batch, c->seq);
    return 0;
}

typedef struct eval_entry {
    int len, index;
} eval_entry;

static int longest_first(const void *pa, const void *pb)
{
    const eval_entry *a = pa, *b = pb;
    return a->len != b->len ? (a->len < b->len) - (a->len > b->len) : a->index - b->index;
}

/* The --eval-data files into eval_data. */
static int read_eval_data(session *s, pesc_error *err)
{
    const train_config *c = &s->cfg;
    ds_load_options lo = {.tok = s->tok, .tpl = s->tpl, .vocab_size = s->m.config.vocab_size,
                          .strict = c->strict, .warn = s->skips,
                          .formats = s->formats};
    /* the built-in demo's own format makes its data; held-out files are read as --format
     * says, or auto */
    const char *format = c->given & TRAIN_GIVEN_FORMAT ? c->format : "auto";
    if (ds_formats_parse(s->formats, format, &lo.format, err) != 0)
        return -1;
    for (int i = 0; i < c->n_eval; i++) {
        if (fetch_view_url_to_cache(c->eval_paths[i], &s->eval_paths[i], err) != 0 ||
            dataset_load(&s->eval_data, s->eval_paths[i], &lo, err) != 0)
            return pesc_fail_prefix(err, "--eval-data");
        s->eval_ends[i] = s->eval_data.n;
    }
    return 0;
}

/* The --eval-choices questions: read, and each laid out in the run's template within the
 * model's context, or the run is refused before it starts. */
static int open_choices(session *s, pesc_error *err)
{
    const train_config *c = &s->cfg;
    if (!s->tok)
        return pesc_fail(err, "--eval-choices %s: the questions are text, and the run has no "
                         "tokenizer (its data is token ids): give --tokenizer FILE",
                         c->eval_choices);
    if (fetch_view_url_to_cache(c->eval_choices, &s->choices_path, err) != 0 ||
        mc_load(&s->choices, s->choices_path, 0, err) != 0)
        return pesc_fail_prefix(err, "--eval-choices");
    int context = s->m.config.max_position_embeddings;
    mc_layout l = {.tpl = s->tpl};
    int rc = 0;
    for (int i = 0; rc == 0 && i < s->choices.n; i++) {
        const mc_question *q = &s->choices.items[i];
        mc_batch b;
        if (mc_batch_make(&b, q, &l, s->tok, err) != 0)
            rc = pesc_fail_prefix(err, "--eval-choices %s:%ld", c->eval_choices, q->line);
        else if (context > 0 && b.T > context)
            rc = pesc_fail(err, "--eval-choices %s:%ld: the question is %d tokens, past the "
                           "model's context of %d", c->eval_choices, q->line, b.T, context);
        else if ((long)b.T > (long)c->batch * c->seq)
            rc = pesc_fail(err, "--eval-choices %s:%ld: the question is %d tokens, more than a "
                           "step's --batch %d x --seq %d", c->eval_choices, q->line, b.T,
                           c->batch, c->seq);
        mc_batch_free(&b);
    }
    return rc;
}

/* The held-out records --eval-generate can score: those with an answer after a prompt. */
static int answerable(const session *s)
{
    int32_t stops[4];
    int n_stops = template_stop_ids(s->tpl, s->tok, stops, 4), n = 0, prompt, end;
    for (int i = 0; i < s->n_eval; i++)
        n += ans_split(&s->eval[i], stops, n_stops, &prompt, &end) == 0;
    return n;
}

static int check_output(const session *s, const char *what, const char *path, pesc_error *err);

/* What the run scores: the held-out records (the --eval-data files, read as the training data
 * is: format, template, tokenizer; or the records --eval-split kept out of the --data, at
 * least one trained token within --seq, and with --eval-generate a tokenizer and a record with
 * an answer) and the --eval-choices questions; either refused before the run starts. */
static int open_eval(session *s, pesc_error *err)
{
    const train_config *c = &s->cfg;
    if (c->eval_choices && open_choices(s, err) != 0)
        return -1;
    /* ten evaluations over a run of known length, unless --eval-every says: rounded up, as
     * rounded down a run of 19 steps would be scored after each */
    s->eval_every = c->eval_every;
    if (s->eval_every == 0)
        s->eval_every = s->total_steps >= 10 ? (s->total_steps + 9) / 10 : 1;
    if (!c->n_eval && c->eval_split == 0)
        return 0;
    char what[600];
    if (c->eval_split > 0) {
        s->eval = dataset_held_out(s->data, &s->n_eval);
        snprintf(what, sizeof what, "--eval-split %g", c->eval_split);
    } else if (read_eval_data(s, err) != 0) {
        return -1;
    } else {
        s->eval = s->eval_data.items;
        s->n_eval = s->eval_data.n;
        /* what is refused below is all of them together, not the first */
        char others[48] = "";
        if (c->n_eval > 1)
            snprintf(others, sizeof others, " and %d other file%s", c->n_eval - 1,
                     c->n_eval > 2 ? "s" : "");
        snprintf(what, sizeof what, "--eval-data %.500s%s", c->eval_paths[0], others);
    }
    int trained = 0;
    for (int i = 0; i < s->n_eval && !trained; i++) {
        int first = ds_record_first_predicted(&s->eval[i]);
        trained = first < s->eval[i].len && first < c->seq;
    }
    if (!trained)
        return pesc_fail(err, "%s: %s", what, s->n_eval == 0 ? "no records to score"
                         : "no record has a trained token within --seq (an answer, or text): "
                         "nothing to score");
    if (c->eval_generate && !s->tok)
        return pesc_fail(err, "--eval-generate: the answers are matched as text, and the run has "
                         "no tokenizer: give --tokenizer FILE (the model's tokenizer.json)");
    if (c->eval_generate && answerable(s) == 0)
        return pesc_fail(err, "%s: no record has an answer after a prompt (text records are all "
                         "answer; --eval-generate matches the answers of chat, prompt/completion "
                         "or instruction records)", what);
    if (c->eval_samples && check_output(s, "--eval-samples", c->eval_samples, err) != 0)
        return -1;
    if (c->eval_samples && !ans_samples_file(c->eval_samples))
        return pesc_fail(err, "--eval-samples %s holds other data (its first line is no answer "
                         "line of --eval-samples), which the answers appended would spoil: name "
                         "another file", c->eval_samples);
    if (c->eval_samples && !(s->samples = fopen(c->eval_samples, "a")))
        return pesc_fail(err, "--eval-samples %s: %s (name a file in a writable directory)",
                         c->eval_samples, strerror(errno));
    s->eval_hash = ds_records_hash(s->eval, s->n_eval);
    eval_entry *order = xmalloc((size_t)s->n_eval * sizeof *order);
    for (int i = 0; i < s->n_eval; i++)
        order[i] = (eval_entry){s->eval[i].len, i};
    qsort(order, (size_t)s->n_eval, sizeof *order, longest_first);
    s->eval_order = xmalloc((size_t)s->n_eval * sizeof *s->eval_order);
    for (int i = 0; i < s->n_eval; i++)
        s->eval_order[i] = order[i].index;
    free(order);
    return 0;
}

/* Steps in the run: --steps, or the batches the epochs hold (counted from the lengths). */
static long count_steps(session *s)
{
    if (s->cfg.steps)
        return s->cfg.steps;
    long batches = dataset_count_batches(s->data, s->cfg.batch, s->cfg.seq);
    return (batches + s->cfg.grad_accum - 1) / s->cfg.grad_accum;
}

/* "q,v" into buf: the LoRA sites of a mask. */
static const char *lora_sites(unsigned mask, char *buf, size_t n)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int site = 0; site < LORA_SITES && at < n; site++)
        if (mask & (1u << site))
            at += (size_t)snprintf(buf + at, n - at, "%s%s", at ? "," : "",
                                   pesc_lora_site_name(site));
    return buf;
}

/* What a checkpoint must share with the run that continues it: the base weights, the crafting
 * (the trained tensors' shapes, and the scales that are part of the trained function when
 * the command line asks for others: silently keeping the checkpoint's would ignore the flag)
 * and the batch shape the data cursor counts in. The first difference is named in flags, both
 * values, and what to give. */
static int check_resumable(session *s, const checkpoint_state *st, const char *dir,
                           pesc_error *err)
{
    const pesc_options *a = &st->pesc, *b = &s->m.pesc;
    const train_config *c = &s->cfg;
    /* the data order is the seed's: the cursor would point into another order; and the
     * random weights of an --init-config run are, so its seed comes before its weights */
    int seed_differs = st->seed != c->seed;
    if (seed_differs && (*st->init_config || st->base_fingerprint == s->fingerprint))
        return pesc_fail(err, "--resume %s was saved with --seed %llu; this run asks for "
                         "--seed %llu: give --seed %llu to continue it", dir,
                         (unsigned long long)st->seed, (unsigned long long)c->seed,
                         (unsigned long long)st->seed);
    if (st->base_fingerprint != s->fingerprint) {
        int from_model = *st->base_model != '\0';
        const char *from = from_model ? st->base_model : st->init_config;
        const char *now = c->init_config ? c->init_config : s->model_dir;
        if (*from && pesc_same_file(from, now))   /* the same path: what is there changed */
            return pesc_fail(err, "--resume %s was trained on %s, whose %s changed since "
                             "(the fingerprint differs): put back the %s it was trained on, or "
                             "start a new run without --resume", dir, from,
                             from_model ? "weights have" : "config has",
                             from_model ? "weights" : "config");
        if (*from)
            return pesc_fail(err, "--resume %s was trained on %s; this run loads %s, whose "
                             "weights differ: give %s %s to continue it", dir, from,
                             c->init_config ? c->init_config : s->model_dir,
                             from_model ? "--model" : "--init-config", from);
        return pesc_fail(err, "--resume %s: saved from a different base model than %s", dir,
                         s->model_dir);
    }
    if (a->mode != b->mode)
        return pesc_fail(err, "--resume %s was saved by a --train %s run; this run asks for "
                         "--train %s: give --train %s to continue it", dir,
                         a->mode == TRAIN_FULL ? "full" : "pesc",
                         b->mode == TRAIN_FULL ? "full" : "pesc",
                         a->mode == TRAIN_FULL ? "full" : "pesc");
    /* the numbers to match, in the order they are named; the crafting's only for PESC runs */
    int pesc = a->mode == TRAIN_PESC;
    const struct { const char *flag; double saved, asked; int differs; } match[] = {
        {"--experts", a->experts, b->experts, pesc && a->experts != b->experts},
        {"--top-k", a->top_k, b->top_k, pesc && a->top_k != b->top_k},
        {"--adapter-dim", a->adapter_dim, b->adapter_dim, pesc && a->adapter_dim != b->adapter_dim},
        {"--lora-rank", a->lora_rank, b->lora_rank, pesc && a->lora_rank != b->lora_rank},
        {"--adapter-scale", a->adapter_scale, c->pesc.adapter_scale,
         pesc && (c->pesc.given & PESC_GIVEN_ADAPTER_SCALE) &&
         a->adapter_scale != c->pesc.adapter_scale},
        {"--lora-alpha", a->lora_alpha, c->pesc.lora_alpha,
         pesc && a->lora_rank && (c->pesc.given & PESC_GIVEN_LORA_ALPHA) &&
         a->lora_alpha != c->pesc.lora_alpha},
        {"--seq", st->seq, c->seq, st->seq != c->seq},
        {"--batch", st->batch, c->batch, st->batch != c->batch},
        {"--grad-accum", st->grad_accum, c->grad_accum, st->grad_accum != c->grad_accum}};
    for (size_t i = 0; i < sizeof match / sizeof *match; i++)
        if (match[i].differs)
            return pesc_fail(err, "--resume %s was saved with %s %g; this run asks for %s %g: "
                             "give %s %g to continue it (another value starts a new run: leave "
                             "out --resume)", dir, match[i].flag, match[i].saved, match[i].flag,
                             match[i].asked, match[i].flag, match[i].saved);
    if (pesc && a->lora_rank && a->lora_targets != b->lora_targets) {
        char had[64], has[64];
        return pesc_fail(err, "--resume %s was saved with --lora-targets %s; this run asks for "
                         "--lora-targets %s: give --lora-targets %s to continue it", dir,
                         lora_sites(a->lora_targets, had, sizeof had),
                         lora_sites(b->lora_targets, has, sizeof has), had);
    }
    /* the records held out are not trained on: another choice is other training data */
    if (st->eval_split != c->eval_split) {
        char had[64] = "no --eval-split", asks[64] = "none";
        if (st->eval_split > 0)
            snprintf(had, sizeof had, "--eval-split %g", st->eval_split);
        if (c->eval_split > 0)
            snprintf(asks, sizeof asks, "--eval-split %g", c->eval_split);
        return pesc_fail(err, "--resume %s was saved with %s; this run asks for %s: %s to "
                         "continue it (the held-out records are not trained on)", dir, had, asks,
                         st->eval_split > 0 ? "give that --eval-split" : "leave --eval-split out");
    }
    if (st->pack >= 0 && st->pack != c->pack)
        return pesc_fail(err, "--resume %s was saved %s --pack; this run %s: %s --pack to "
                         "continue it", dir, st->pack ? "with" : "without",
                         c->pack ? "packs" : "does not pack", st->pack ? "add" : "leave out");
    return 0;
}

/* The recorded inputs this run was given otherwise, as the flags that name them, after a
 * data cursor that does not fit ("" when none differ): what to leave out to continue. */
static void inputs_given_otherwise(const session *s, const checkpoint_state *st, char *buf,
                                   size_t n)
{
    const train_config *c = &s->cfg;
    size_t at = 0;
    buf[0] = '\0';
    int data_differ = st->n_data > 0 && st->n_data != c->n_sources;
    for (int i = 0; i < c->n_sources && i < st->n_data && !data_differ; i++)
        data_differ = st->data[i].weight != s->sources[i].weight ||
                      (strcmp(st->data[i].path, s->sources[i].path) != 0 &&
                       !pesc_same_file(st->data[i].path, s->sources[i].path));
    for (int i = 0; data_differ && i < st->n_data && at < n; i++) {
        at += (size_t)snprintf(buf + at, n - at, " --data %.500s", st->data[i].path);
        if (at < n && st->data[i].weight != 1.0)
            at += (size_t)snprintf(buf + at, n - at, ":%g", st->data[i].weight);
    }
    if (at < n && st->format[0] && strcmp(st->format, c->format) != 0)
        at += (size_t)snprintf(buf + at, n - at, " --format %s", st->format);
    if (at < n && st->template_name[0] && strcmp(st->template_name, c->template_name) != 0)
        at += (size_t)snprintf(buf + at, n - at, " --template %s", st->template_name);
    if (at < n && st->tokenizer[0] && !pesc_same_file(st->tokenizer, s->tokenizer_path))
        snprintf(buf + at, n - at, " --tokenizer %.500s", st->tokenizer);
}

/* The first --data file written after the checkpoint in dir was (its state.json), or NULL. */
static const char *data_changed_since(const session *s, const char *dir)
{
    char *state = pesc_path_join(dir, "state.json");
    struct stat saved, data;
    int have = stat(state, &saved) == 0;
    free(state);
    for (int i = 0; have && i < s->cfg.n_sources; i++)
        if (s->data_paths[i] && stat(s->data_paths[i], &data) == 0 &&
            (data.st_mtim.tv_sec > saved.st_mtim.tv_sec ||
             (data.st_mtim.tv_sec == saved.st_mtim.tv_sec &&
              data.st_mtim.tv_nsec > saved.st_mtim.tv_nsec)))
            return s->sources[i].path;
    return NULL;
}

/* After a checkpoint that --resume SAVE_DIR took as its newest could not be read: the older
 * one to resume from instead, in err. */
static void older_checkpoint_hint(const train_config *c, const char *dir, pesc_error *err)
{
    const char *name = dir ? strrchr(dir, '/') : NULL;
    long step;
    if (!name || !c->resume || strcmp(dir, c->resume) == 0 ||
        !checkpoint_name_step(name + 1, &step))
        return;
    char *older = checkpoint_older(c->resume, step);
    if (older)
        pesc_fail_suffix(err, "; the checkpoint before it: --resume %s", older);
    free(older);
}

/* A line of resume_notes, each a note once the log is open (an event's text is one line of
 * at most its size: each note apart fits whole). */
static void add_resume_note(session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_resume_note(session *s, const char *fmt, ...)
{
    size_t n = sizeof s->resume_notes, at = strlen(s->resume_notes);
    if (at + 1 >= n)
        return;
    if (at)
        s->resume_notes[at++] = '\n';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->resume_notes + at, n - at, fmt, ap);
    va_end(ap);
}

static void note_replaced(session *s, const char *flag, const char *now, const char *was)
{
    add_resume_note(s, "%s %s replaces the checkpoint's %s (leave %s out to keep it)", flag, now,
                    was, flag);
}

/* The held-out files as a flag's value ("a.jsonl b.jsonl"), or "none"; "..." ends what n
 * bytes could not hold. */
static void held_out_files(char *buf, size_t n, const char *const *paths, int count)
{
    size_t at = 0;
    snprintf(buf, n, "none");
    for (int i = 0; i < count && at < n; i++)
        at += (size_t)snprintf(buf + at, n - at, "%s%s", i ? " " : "", paths[i]);
    if (at >= n && n > 4)
        memcpy(buf + n - 4, "...", 4);
}

/* Each setting the command line gives again with another value than the checkpoint's run had
 * (not --lr, whose note says what it replaces of the live rate): noted, as the new value is
 * the run's from here on. aux_replaced: --aux-coef replaces the live coefficient. */
static void note_replaced_settings(session *s, const checkpoint_state *st, int aux_replaced)
{
    const train_config *c = &s->cfg;
    const unsigned given = c->given, crafting = c->pesc.given;
    /* -1: not recorded, taken from the command line (a run before --neftune had none) */
    const struct { const char *flag; int given; double now, was; } numbers[] = {
        {"--aux-coef", aux_replaced, s->m.pesc.aux_coef, st->aux_coef},
        {"--weight-decay", (given & TRAIN_GIVEN_WEIGHT_DECAY) && st->weight_decay >= 0,
         c->optim.weight_decay, st->weight_decay},
        {"--clip", (given & TRAIN_GIVEN_CLIP) && st->clip >= 0, c->optim.clip, st->clip},
        {"--neftune", given & TRAIN_GIVEN_NEFTUNE, c->neftune, fmax(st->neftune, 0)},
        {"--adapter-dropout", crafting & PESC_GIVEN_ADAPTER_DROPOUT, c->pesc.adapter_dropout,
         st->pesc.adapter_dropout},
        {"--z-coef", crafting & PESC_GIVEN_Z_COEF, c->pesc.z_coef, st->pesc.z_coef}};
    for (size_t i = 0; i < sizeof numbers / sizeof *numbers; i++) {
        char now[32], was[32];
        if (!numbers[i].given || (float)numbers[i].now == (float)numbers[i].was)
            continue;
        snprintf(now, sizeof now, "%g", numbers[i].now);
        snprintf(was, sizeof was, "%g", numbers[i].was);
        note_replaced(s, numbers[i].flag, now, was);
    }
    /* held-out data the checkpoint's are not: their losses do not continue the run's */
    int eval_differs = c->n_eval != st->n_eval;
    for (int i = 0; i < c->n_eval && !eval_differs; i++)   /* a file, or what a format makes */
        eval_differs = strcmp(st->eval_data[i], s->eval_paths[i]) != 0 &&
                       !pesc_same_file(st->eval_data[i], s->eval_paths[i]);
    if (eval_differs && st->n_data > 0) {   /* (a checkpoint before inputs were recorded: no) */
        char now[180], was[180];   /* the note fits an event's text whole */
        const char *recorded[CHECKPOINT_MAX_EVAL];
        for (int i = 0; i < st->n_eval; i++)
            recorded[i] = st->eval_data[i];
        held_out_files(now, sizeof now, c->eval_paths, c->n_eval);
        held_out_files(was, sizeof was, recorded, st->n_eval);
        note_replaced(s, "--eval-data", now, was);
    }
}

static int resume(session *s, pesc_error *err)
{
    const char *dir = s->resumed_dir;   /* adopt_resumed's */
    const checkpoint_state *st = s->resumed;
    int rc = -1;
    if (check_resumable(s, st, dir, err) != 0)
        goto out;
    if (checkpoint_load(dir, &s->m, &s->opt, err) != 0) {
        older_checkpoint_hint(&s->cfg, dir, err);
        goto out;
    }
    if (dataset_seek(s->data, &st->cursor, err) != 0) {
        char had[1024];
        inputs_given_otherwise(s, st, had, sizeof had);
        const char *changed = had[0] ? NULL : data_changed_since(s, dir);
        if (had[0])   /* the likely reason */
            pesc_fail_suffix(err, " (the run had%s: leave out what differs to read what it "
                             "read)", had);
        else if (changed)   /* the same files, one written since: that is the reason */
            pesc_fail(err, "%s was changed after this checkpoint was saved, and its records are "
                      "no longer those the run read: restore it, or start a new run on it",
                      changed);
        pesc_fail_prefix(err, "--resume %s", dir);
        goto out;
    }
    /* a checkpoint of the last step whose evaluation a stop cut short: this run does that */
    s->eval_pending = st->eval_pending && (s->n_eval > 0 || s->choices.n > 0);
    if (s->total_steps > 0 && st->step >= s->total_steps &&
        !(s->eval_pending && st->step == s->total_steps)) {
        pesc_fail(err, "--resume %s is at step %ld, and this run ends at step %ld: raise --steps "
                  "(or --epochs) to train further", dir, st->step, s->total_steps);
        goto out;
    }
    s->step = st->step;
    s->last_checkpoint = xstrdup(dir);
    char *parent = pesc_parent_dir(dir);
    int own = pesc_same_file(parent, s->cfg.save_dir);
    if (own) {
        /* it is this run's last checkpoint: stopped at once, the run would write it again */
        s->saved_step = st->step;
        s->saved_changes = s->live_changes;
    }
    free(parent);
    /* the live values carry on, unless the command line asks for another --lr or --aux-coef
     * than the run had (a lower --lr after a divergence, say): then the flag's is the run's,
     * and what it replaces is noted once the log is open, as is any other setting given anew. The run's own value repeated (the
     * same command with --resume added) keeps what was set while it went. */
    const train_config *c = &s->cfg;
    int new_lr = (c->given & TRAIN_GIVEN_LR) && (float)st->run_lr != c->optim.lr;
    int new_aux = (c->pesc.given & PESC_GIVEN_AUX_COEF) && (float)st->run_aux_coef != c->pesc.aux_coef;
    if (!new_lr && st->lr_override >= 0 &&
        optim_check_lr("the learning rate set while the run went,", st->lr_override,
                       c->optim.weight_decay, err) != 0) {
        pesc_fail_suffix(err, " (give --lr to replace it)");
        goto out;
    }
    if (!new_lr) {
        s->lr_override = st->lr_override;
        s->lr_scale = st->lr_scale > 0 ? st->lr_scale : 1.0;
    } else if (st->lr_override >= 0 || st->lr_scale != 1.0) {
        add_resume_note(s, "--lr %g replaces the checkpoint's %s %g (leave --lr out to keep it)",
                        (double)c->optim.lr,
                        st->lr_override >= 0 ? "learning rate set while it ran,"
                                             : "learning-rate factor after non-finite steps,",
                        st->lr_override >= 0 ? st->lr_override * st->lr_scale : st->lr_scale);
    }
    if (!new_aux)
        s->m.pesc.aux_coef = (float)st->aux_coef;
    note_replaced_settings(s, st, new_aux);
    s->m.rng = st->model_rng;
    s->tokens = st->tokens;
    s->elapsed_before = st->elapsed_s;
    s->nan_skipped = st->nan_skipped;
    /* the run's best so far stays out of rotation until a new one replaces it, and a new one
     * must beat it; a branch saved elsewhere starts its own DIR/best, since the old best is
     * not in its directory; and a loss on other held-out data is no measure to beat, so the
     * race starts afresh (the note says which it was) */
    if (st->best_step >= 0 && own) {
        s->best_kept = st->best_step;
        s->best_kept_by = st->best_by;
        s->best_kept_score = best_value(st->best_by, st->best_value);
        s->best_kept_data = st->best_eval_data;
        if (best_kept_beatable(s))
            s->best_score = s->best_kept_score;
    }
    if (st->best_step >= 0 && own && !best_kept_beatable(s) && s->cfg.keep_best) {
        add_resume_note(s, "%s of the best so far (%s %.4f at step %ld): %.200s/best starts "
                        "afresh from the next evaluation, and step-%08ld, kept until then, goes "
                        "with the checkpoints --keep rotates out (copy it to keep it)",
                        st->best_by != s->cfg.best_by ? "--best-by differs from that"
                                                      : "the held-out data differ from those",
                        best_what(st->best_by), st->best_value, st->best_step, s->cfg.save_dir,
                        st->best_step);
    }
    rc = 0;
out:
    if (rc != 0)
        pesc_fail_prefix(err, "cannot resume");
    return rc;
}

/* A resumed run whose learning rate at its next step is not what the checkpoint's run would
 * have taken: another --lr, --schedule or --warmup, or --steps given a cosine or linear
 * schedule another length (from one step to the next, the LR may jump by much). Noted with
 * what changed; a rate set live, which carries on, stands above the schedule. */
static void note_schedule_change(session *s)
{
    const checkpoint_state *st = s->resumed;
    if (!st || s->lr_override >= 0 || st->run_lr <= 0 || st->schedule < 0 || st->warmup < 0 ||
        st->total_steps <= 0)
        return;   /* a checkpoint from before these were recorded */
    if (st->lr_override >= 0)
        return;   /* the run's rate was set live: the --lr note says what --lr replaces */
    const optim_config *now = &s->cfg.optim;
    optim_config was = *now;
    was.lr = (float)st->run_lr;
    was.schedule = (optim_schedule)st->schedule;
    was.warmup = st->warmup;
    was.total_steps = st->total_steps;
    double before = optim_lr_at(&was, s->step), after = optim_lr_at(now, s->step);
    if (fabs(after - before) <= 1e-6 * fmax(fabs(before), fabs(after)))
        return;
    char what[256] = "";
    size_t at = 0;
    if (was.lr != now->lr)
        at += (size_t)snprintf(what + at, sizeof what - at, ", --lr %g (was %g)",
                               (double)now->lr, (double)was.lr);
    if (was.schedule != now->schedule && at < sizeof what)
        at += (size_t)snprintf(what + at, sizeof what - at, ", --schedule %s (was %s)",
                               optim_schedule_name(now->schedule),
                               optim_schedule_name(was.schedule));
    if (was.warmup != now->warmup && at < sizeof what)
        at += (size_t)snprintf(what + at, sizeof what - at, ", --warmup %ld (was %ld)",
                               now->warmup, was.warmup);
    if (was.total_steps != now->total_steps && at < sizeof what)
        snprintf(what + at, sizeof what - at, ", %ld steps in all (was %ld)", now->total_steps,
                 was.total_steps);
    publish_warning(s, "note", "the learning rate at step %ld is %.3g, where the run resumed "
                    "would have taken %.3g: %s", s->step + 1, after, before,
                    what[0] ? what + 2 : "its schedule differs");
}

static void describe_run(session *s)
{
    stats_run *r = &s->run;
    const model *m = &s->m;
    snprintf(r->model, sizeof r->model, "%s", s->cfg.model ? s->cfg.model : "demo");
    snprintf(r->backend, sizeof r->backend, "%s", backend_device(s->backend));
    r->shape.n_layers = m->config.n_layers;
    r->shape.n_experts = m->crafted ? m->pesc.experts : 0;
    r->shape.top_k = m->crafted ? m->pesc.top_k : 0;
    r->shape.n_sources = s->cfg.n_sources;
    for (int i = 0; i < s->cfg.n_sources; i++) {
        const char *slash = strrchr(s->cfg.sources[i].path, '/');
        snprintf(r->sources[i], sizeof r->sources[i], "%.127s",
                 slash ? slash + 1 : s->cfg.sources[i].path);
    }
    r->total_steps = s->total_steps;
    r->resumed_step = s->cfg.resume ? s->step : 0;   /* resume() set the checkpoint's */
    r->data_records = dataset_stats(s->data)->records;
    r->data_tokens = dataset_stats(s->data)->tokens;
    r->adapter_dim = m->pesc.adapter_dim;
    r->adapter_scale = m->pesc.adapter_scale;
    const char *ctl = s->cfg.control_path;   /* made later, so joined to the directory here */
    char cwd[PATH_MAX];
    if (ctl && ctl[0] != '/' && getcwd(cwd, sizeof cwd))
        snprintf(r->control, sizeof r->control, "%.*s/%s", (int)(sizeof r->control / 2), cwd,
                 ctl);
    else if (ctl)
        snprintf(r->control, sizeof r->control, "%s", ctl);
}

/* The model: a checkpoint directory, or random weights of a config.json's shape. */
static int load_model(session *s, pesc_error *err)
{
    if (!s->cfg.init_config)
        return model_load(&s->m, s->model_dir, s->backend, err);
    return model_init_config(&s->m, s->cfg.init_config, s->backend, s->cfg.seed, err);
}

/* A model written by pesc export comes crafted: its experts, top-k, adapter width and scale
 * are part of the trained model, so the run takes them; a flag that asks for other values is
 * refused rather than silently ignored. LoRA and the training hyperparameters are the run's. */
static int adopt_crafting(session *s, pesc_error *err)
{
    pesc_options *want = &s->cfg.pesc;
    const pesc_options *has = &s->m.pesc;
    if (want->mode == TRAIN_FULL)
        return pesc_fail(err, "--train full: %s is a crafted PESC model (num_experts %d); full "
                         "mode trains a dense model, so give its dense base", s->model_dir,
                         has->experts);
    static const struct { unsigned bit; const char *flag, *key; } keys[] = {
        {PESC_GIVEN_EXPERTS, "--experts", "num_experts"}, {PESC_GIVEN_TOP_K, "--top-k", "topk"},
        {PESC_GIVEN_ADAPTER_DIM, "--adapter-dim", "adapter_dim"},
        {PESC_GIVEN_ADAPTER_SCALE, "--adapter-scale", "moe_scaling"}};
    const double asked[] = {want->experts, want->top_k, want->adapter_dim, want->adapter_scale};
    const double own[] = {has->experts, has->top_k, has->adapter_dim, has->adapter_scale};
    for (int i = 0; i < 4; i++)
        if ((want->given & keys[i].bit) && asked[i] != own[i])
            return pesc_fail(err, "%s %g: %s/config.json has %s %g, and a crafted model keeps its "
                             "own (leave the flag out)", keys[i].flag, asked[i], s->model_dir,
                             keys[i].key, own[i]);
    want->experts = has->experts;
    want->top_k = has->top_k;
    want->adapter_dim = has->adapter_dim;
    want->adapter_scale = has->adapter_scale;
    return 0;
}

/* --log FILE is the built-in jsonl sink, first; then every --sink. A log that cannot be
 * opened stops the run before it starts; a sink failing later only disables itself. */
/* An output (the log, a sink's file) must not be one of the run's inputs: opening it for
 * writing would truncate a --data file, the tokenizer, or a file of the model directory or
 * the resumed checkpoint before the first step. */
static int check_output(const session *s, const char *what, const char *path, pesc_error *err)
{
    struct stat st;
    if (strcmp(what, "--log") != 0 && s->cfg.log_path && strcmp(path, s->cfg.log_path) == 0)
        return pesc_fail(err, "%s %s is the --log file of this run: name another file", what,
                         path);
    if (stat(path, &st) != 0)
        return 0;   /* a new file: nothing to lose */
    const char *input = NULL;
    for (int i = 0; i < s->cfg.n_sources && !input; i++)
        if (pesc_same_file(path, s->data_paths[i]))
            input = "a --data file";
    for (int i = 0; i < s->cfg.n_eval && !input; i++)
        if (pesc_same_file(path, s->cfg.eval_paths[i]))
            input = "an --eval-data file";
    if (!input && pesc_same_file(path, s->cfg.eval_choices))
        input = "the --eval-choices file";
    if (!input && strcmp(what, "--log") != 0 && pesc_same_file(path, s->cfg.log_path))
        input = "the --log file";
    if (!input && pesc_same_file(path, s->tokenizer_path))
        input = "the --tokenizer file";
    if (!input && pesc_same_file(path, s->cfg.init_config))
        input = "the --init-config file";
    char *dir = pesc_parent_dir(path);
    if (!input && pesc_same_file(dir, s->model_dir))
        input = "a file of the model directory";
    /* the checkpoint itself (a log in the --save directory above it is the run's to append) */
    if (!input && s->resumed_dir &&
        (pesc_same_file(dir, s->resumed_dir) || pesc_same_file(path, s->resumed_dir)))
        input = "a file of the resumed checkpoint";
    /* a checkpoint's directory: its state and its trainables (a state.json alone may be
     * any tool's) */
    char *state = pesc_path_join(dir, "state.json"),
         *trainables = pesc_path_join(dir, "trainables.safetensors");
    int in_checkpoint = !input && access(state, F_OK) == 0 && access(trainables, F_OK) == 0;
    free(state);
    free(trainables);
    free(dir);
    if (input)
        return pesc_fail(err, "%s %s is %s of this run, and writing it would destroy it; name "
                         "another file", what, path, input);
    if (in_checkpoint)
        return pesc_fail(err, "%s %s is a file of a checkpoint (its directory holds state.json "
                         "and trainables.safetensors), and writing it would destroy it; name "
                         "another file", what, path);
    /* a fresh run's sink replaces its file: never a run's log (a resumed run's appends, to
     * its own --sink jsonl:FILE too; the --log is checked in sink.c) */
    if (!s->cfg.resume && strcmp(what, "--log") != 0 && sinks_log_of_run(path, NULL) == 0)
        return pesc_fail(err, "%s %s is a pesc run log, which this sink would replace; name "
                         "another file", what, path);
    return 0;
}

static int open_sinks(session *s, pesc_error *err)
{
    const train_config *c = &s->cfg;
    const char *specs[TRAIN_MAX_SINKS + 1];
    char log_spec[4200];
    int n = 0;
    if (c->log_path) {
        snprintf(log_spec, sizeof log_spec, "jsonl:%s", c->log_path);
        specs[n++] = log_spec;
    }
    if (c->log_path && check_output(s, "--log", c->log_path, err) != 0)
        return -1;
    for (int i = 0; i < c->n_sinks; i++) {
        const char *target = strchr(c->sinks[i], ':');   /* NAME:TARGET */
        if (target && check_output(s, "--sink target", target + 1, err) != 0)
            return -1;
        specs[n++] = c->sinks[i];
    }
    if (n == 0)
        return 0;
    char base[4096];
    sinks_base(base, sizeof base, c->log_path, c->save_dir);
    sink_options o = {.base = base, .plugins = s->plugins, .resume = c->resume != NULL,
                      .strict_open = 1, .first_is_log = c->log_path != NULL,
                      .report = sink_failed, .report_ctx = s};
    s->sinks = sinks_open(specs, n, &s->run, &o, err);
    return s->sinks ? 0 : -1;
}

/* Before anything big is allocated: what training still needs (activations and gradients of
 * one micro-batch, the backend's scratch for them, AdamW's two moments, the update-ratio
 * copy) against what the backend's memory has free. A run that cannot fit is refused with the
 * numbers and what to change; one that fits has them in memory_note, for the log. */
static int check_memory(session *s, pesc_error *err)
{
    const train_config *c = &s->cfg;
    backend_memory mem;
    if (backend_memory_info(s->backend, &mem) != 0)
        return 0;   /* unknown: let the allocations speak */
    size_t acts = model_step_bytes(&s->m, c->batch, c->seq, c->recompute);
    size_t state = s->m.n_train * sizeof(float) * (s->m.crafted ? 3 : 2);
    size_t need = acts + state;
    char need_s[32], acts_s[32], state_s[32], free_s[32], total_s[32], hint[160] = "";
    pesc_format_bytes((double)need, need_s, sizeof need_s);
    pesc_format_bytes((double)acts, acts_s, sizeof acts_s);
    pesc_format_bytes((double)state, state_s, sizeof state_s);
    pesc_format_bytes((double)mem.available, free_s, sizeof free_s);
    pesc_format_bytes((double)mem.total, total_s, sizeof total_s);
    const char *where = strcmp(backend_name(s->backend), "cpu") == 0 ? "the machine" : "the GPU";
    snprintf(s->memory_note, sizeof s->memory_note, "training needs %s more memory "
             "(activations and scratch %s, optimizer state %s); %s has %s free of %s", need_s,
             acts_s, state_s, where, free_s, total_s);
    if (need <= mem.available / 100 * 95)   /* 5% kept for what is not counted */
        return 0;
    if (!c->recompute) {
        char less[32];
        pesc_format_bytes((double)model_step_bytes(&s->m, c->batch, c->seq, 1), less,
                          sizeof less);
        snprintf(hint, sizeof hint, ", or add --recompute (activations %s)", less);
    }
    return pesc_fail(err, "training needs %s more memory (activations and scratch %s for "
                     "--batch %d x --seq %d, optimizer state %s) but %s has %s free: lower "
                     "--batch (raising --grad-accum keeps the batch) or --seq%s",
                     need_s, acts_s, c->batch, c->seq, state_s, where, free_s, hint);
}

/* --save DIR must be writable, not in use by another run (the lock is the session's from
 * now on) and hold no checkpoint this run would overwrite or rotate out without continuing
 * it; checked before any work. */
static int check_save_dir(session *s, pesc_error *err)
{
    const train_config *c = &s->cfg;
    struct stat st;
    s->made_save_dir = stat(c->save_dir, &st) != 0;
    if (checkpoint_prepare(c->save_dir, err) != 0 ||
        (s->save_lock = checkpoint_lock(c->save_dir, err)) < 0) {
        if (s->outputs_taken)   /* not the user's --save: the run's, from its checkpoint */
            pesc_fail_suffix(err, " (the run's own --save, which --resume of its newest "
                             "checkpoint goes on in: give --save DIR to save elsewhere)");
        return -1;
    }
    stat(c->save_dir, &s->save_dir_id);   /* unknown (zero): taken for another one */
    if (!c->resume)
        return checkpoint_claim(c->save_dir, NULL, 0, err);
    return checkpoint_claim(c->save_dir, s->resumed_dir, s->resumed->step, err);
}

/* The crafting's values the command line did not give, from the checkpoint's. */
static void adopt_crafting_of(pesc_options *want, const pesc_options *had)
{
    const unsigned given = want->given;
    pesc_options o = *had;
#define KEEP(bit, field) \
    if (given & (bit)) \
        o.field = want->field
    KEEP(PESC_GIVEN_MODE, mode);
    KEEP(PESC_GIVEN_EXPERTS, experts);
    KEEP(PESC_GIVEN_TOP_K, top_k);
    KEEP(PESC_GIVEN_ADAPTER_DIM, adapter_dim);
    KEEP(PESC_GIVEN_ADAPTER_SCALE, adapter_scale);
    KEEP(PESC_GIVEN_ADAPTER_DROPOUT, adapter_dropout);
    KEEP(PESC_GIVEN_Z_COEF, z_coef);
    KEEP(PESC_GIVEN_LORA_RANK, lora_rank);
    KEEP(PESC_GIVEN_LORA_ALPHA, lora_alpha);
    KEEP(PESC_GIVEN_LORA_TARGETS, lora_targets);
#undef KEEP
    o.aux_coef = want->aux_coef;   /* adopt_resumed's */
    o.given = given;
    *want = o;
}

/* A file the checkpoint recorded and the resumed run reads: 0, or why it cannot, with the
 * flag that names another place. */
static int recorded_file(const char *ckpt, const char *what, const char *flag, const char *path,
                         pesc_error *err)
{
    if (access(path, R_OK) == 0)
        return 0;
    return pesc_fail(err, "%s/state.json: the run's %s %s cannot be read (%s): give %s with its "
                     "new place", ckpt, what, path, strerror(errno), flag);
}

/* A --data or --eval-data source the checkpoint recorded (what: "data", "held-out data"; flag:
 * where to give it anew): a file, or one a format opens itself (demo, demo:FAMILY, a plugin's
 * generated source), as --data decides: the format given again, else the run's. A format this
 * run does not know is named (its plugin was not given again). */
static int recorded_source(const session *s, const checkpoint_state *st, const char *ckpt,
                           const char *what, const char *flag, const char *path,
                           pesc_error *err)
{
    const train_config *c = &s->cfg;
    const char *name = c->given & TRAIN_GIVEN_FORMAT ? c->format
                       : st->format[0]                ? st->format
                                                      : "auto";
    ds_format format;
    if (ds_formats_parse(s->formats, name, &format, err) != 0)
        return pesc_fail_prefix(err, "%s/state.json: the run's %s %s", ckpt, what, path);
    if (ds_source_format(s->formats, format, path) || access(path, R_OK) == 0)
        return 0;
    return pesc_fail(err, "%s/state.json: the run's %s %s cannot be read (%s), and no format "
                     "here opens it: give %s with its new place, or the --plugin FILE whose "
                     "format read it", ckpt, what, path, strerror(errno), flag);
}

/* The run's sinks this run was not given (by name), as a note: --resume takes no --sink or
 * --plugin from the checkpoint (a module is code to run, named on the command line), and a
 * sink left out would stop getting rows without a word. */
static void note_sinks_left_out(session *s, const checkpoint_state *st)
{
    const train_config *c = &s->cfg;
    char missing[1024] = "", plugins[1024] = "";
    size_t used = 0;
    for (int i = 0; i < st->n_sinks; i++) {
        size_t name = strcspn(st->sinks[i], ":");
        int given = 0;
        for (int j = 0; j < c->n_sinks && !given; j++)
            given = strncmp(c->sinks[j], st->sinks[i], name) == 0 &&
                    (c->sinks[j][name] == '\0' || c->sinks[j][name] == ':');
        if (!given && used < sizeof missing)
            used += (size_t)snprintf(missing + used, sizeof missing - used, " --sink %s",
                                     st->sinks[i]);
    }
    if (!missing[0])
        return;
    used = 0;
    for (int i = 0; i < st->n_plugins; i++) {
        int given = 0;
        for (int j = 0; j < c->n_plugins && !given; j++)
            given = pesc_same_file(c->plugins[j], st->plugins[i]);
        if (!given && used < sizeof plugins)
            used += (size_t)snprintf(plugins + used, sizeof plugins - used, "%s--plugin %s",
                                     used ? " " : " (with ", st->plugins[i]);
    }
    add_resume_note(s, "the run also wrote to%s, not given here: --resume takes no --sink or "
                    "--plugin from the checkpoint; give them again%s%s to go on writing there",
                    missing, plugins, plugins[0] ? ")" : "");
}

/* Resumed from the newest checkpoint of a directory its run saved checkpoints in, and given no
 * --save, the run saves on there (also when the directory was moved since) as often as it
 * did, keeping as many, and appends to its log when no --log is given and the directory is
 * where the run had it: what it would have done, not stopped. From an older checkpoint, a
 * branch, it takes neither (saving there would be refused: newer checkpoints are in the
 * way). st->save_dir becomes the directory taken. */
static void take_outputs(session *s, checkpoint_state *st, const char *dir)
{
    train_config *c = &s->cfg;
    if (c->save_dir || !st->save_dir[0])
        return;
    char *parent = pesc_parent_dir(dir), *newest = NULL;
    pesc_error ignored;
    int at_newest = checkpoint_find(parent, &newest, &ignored) == 0 &&
                    pesc_same_file(newest, dir);
    int moved = !pesc_same_file(parent, st->save_dir);
    snprintf(st->save_dir, sizeof st->save_dir, "%s", parent);
    free(newest);
    free(parent);
    if (!at_newest)
        return;
    c->save_dir = st->save_dir;
    if (!(c->given & TRAIN_GIVEN_SAVE_EVERY) && st->save_every >= 0)
        c->save_every = st->save_every;
    if (!(c->given & TRAIN_GIVEN_KEEP) && st->keep >= 1)
        c->keep = st->keep;
    if (!(c->given & TRAIN_GIVEN_KEEP_BEST) && st->keep_best == 1 &&
        (c->n_eval > 0 || c->eval_split > 0))
        c->keep_best = 1;
    if (!(c->given & TRAIN_GIVEN_BEST_BY))
        c->best_by = st->keep_best_by;
    s->outputs_taken = 1;
    if (!c->log_path && st->log[0] && !moved) {
        c->log_path = st->log;
        s->outputs_taken = 2;
    }
}

/* --resume: the run goes on as it was. What the command line does not give again comes from
 * the checkpoint: the base model, tokenizer and chat template, the data, its format and the
 * held-out data, the batches' shape, the seed, the length, the optimizer's settings and the
 * crafting. What is given again must match where it shapes what was saved (check_resumable)
 * and otherwise replaces the run's value. The values taken count as given. A checkpoint from
 * before its inputs were recorded (no data) takes nothing: the command line's, or the demo. */
static int adopt_resumed(session *s, pesc_error *err)
{
    train_config *c = &s->cfg;
    checkpoint_state *st = s->resumed = xmalloc(sizeof *st);
    char *dir = NULL;
    int rc = -1;
    if (checkpoint_find(c->resume, &dir, err) != 0)
        goto out;
    if (checkpoint_read_state(dir, st, err) != 0) {
        older_checkpoint_hint(c, dir, err);
        goto out;
    }
    if (st->n_data == 0) {   /* an earlier pesc's: the command line says it all, as it did */
        if (!c->model && !c->init_config && c->n_sources == 0)
            train_config_demo(c);
        rc = 0;
        goto out;
    }
    if (!c->model && !c->init_config && (st->base_model[0] || st->init_config[0])) {
        checkpoint_base b;
        if (checkpoint_base_find(st, dir, &b, err) != 0)
            goto out;
        checkpoint_base_free(&b);
        if (st->base_model[0])
            c->model = st->base_model;
        else
            c->init_config = st->init_config;
    }
    if (!c->tokenizer && st->tokenizer[0]) {
        if (recorded_file(dir, "tokenizer", "--tokenizer FILE", st->tokenizer, err) != 0)
            goto out;
        c->tokenizer = st->tokenizer;
    }
    if (!(c->given & TRAIN_GIVEN_TEMPLATE) && st->template_name[0]) {
        if (!template_find(st->template_name)) {
            pesc_fail(err, "%s/state.json: template \"%s\" is not one this pesc knows (%s): "
                      "give --template NAME", dir, st->template_name, template_list());
            goto out;
        }
        c->template_name = st->template_name;
        c->given |= TRAIN_GIVEN_TEMPLATE;
    }
    int data_taken = c->n_sources == 0 && st->n_data > 0;
    for (int i = 0; data_taken && i < st->n_data; i++)
        if (recorded_source(s, st, dir, "data", "--data FILE", st->data[i].path, err) != 0)
            goto out;
    if (data_taken) {
        memcpy(c->sources, st->data, (size_t)st->n_data * sizeof *st->data);
        c->n_sources = st->n_data;
    }
    /* the demo's own format reads only its generated data */
    if (!(c->given & TRAIN_GIVEN_FORMAT) && st->format[0] &&
        (data_taken || strcmp(st->format, "demo") != 0)) {
        c->format = st->format;
        c->given |= TRAIN_GIVEN_FORMAT;
    }
    if (c->n_eval == 0 && c->eval_split == 0) {
        for (int i = 0; i < st->n_eval; i++) {
            if (recorded_source(s, st, dir, "held-out data", "--eval-data FILE",
                                st->eval_data[i], err) != 0)
                goto out;
            c->eval_paths[c->n_eval++] = st->eval_data[i];
        }
        c->eval_split = st->eval_split;
    }
    if (!c->eval_choices && st->eval_choices[0]) {
        if (recorded_file(dir, "multiple-choice questions", "--eval-choices FILE",
                          st->eval_choices, err) != 0)
            goto out;
        c->eval_choices = st->eval_choices;
    }
    if (!c->eval_generate && st->eval_generate[0] &&
        train_eval_generate_parse(c, st->eval_generate, err) != 0) {
        pesc_fail_prefix(err, "%s/state.json: eval_generate", dir);
        goto out;
    }
    if (!c->eval_samples && st->eval_samples[0])   /* appended to, as the run did */
        c->eval_samples = st->eval_samples;
    const struct { unsigned bit; int take; } taken[] = {
        {TRAIN_GIVEN_SEQ, 1}, {TRAIN_GIVEN_BATCH, 1}, {TRAIN_GIVEN_GRAD_ACCUM, 1},
        {TRAIN_GIVEN_PACK, st->pack >= 0}, {TRAIN_GIVEN_SEED, 1},
        {TRAIN_GIVEN_LR, st->run_lr >= 0}, {TRAIN_GIVEN_SCHEDULE, st->schedule >= 0},
        {TRAIN_GIVEN_WARMUP, st->warmup >= 0}, {TRAIN_GIVEN_WEIGHT_DECAY, st->weight_decay >= 0},
        {TRAIN_GIVEN_CLIP, st->clip >= 0}, {TRAIN_GIVEN_NEFTUNE, st->neftune >= 0}};
    unsigned take = 0;
    for (size_t i = 0; i < sizeof taken / sizeof *taken; i++)
        if (taken[i].take && !(c->given & taken[i].bit))
            take |= taken[i].bit;
    if (take & TRAIN_GIVEN_SEQ) c->seq = st->seq;
    if (take & TRAIN_GIVEN_BATCH) c->batch = st->batch;
    if (take & TRAIN_GIVEN_GRAD_ACCUM) c->grad_accum = st->grad_accum;
    if (take & TRAIN_GIVEN_PACK) c->pack = st->pack;
    if (take & TRAIN_GIVEN_SEED) c->seed = st->seed;
    if (take & TRAIN_GIVEN_LR) c->optim.lr = (float)st->run_lr;
    if (take & TRAIN_GIVEN_SCHEDULE) c->optim.schedule = (optim_schedule)st->schedule;
    if (take & TRAIN_GIVEN_WARMUP) c->optim.warmup = st->warmup;
    if (take & TRAIN_GIVEN_WEIGHT_DECAY) c->optim.weight_decay = (float)st->weight_decay;
    if (take & TRAIN_GIVEN_CLIP) c->optim.clip = (float)st->clip;
    if (take & TRAIN_GIVEN_NEFTUNE) c->neftune = (float)st->neftune;
    c->given |= take;
    /* a run by epochs goes on by them, so that its last step ends where the data do, as it
     * would have; one by --steps (or from before epochs were recorded) for as many steps */
    if (!c->steps && !c->epochs && st->epochs > 0)
        c->epochs = st->epochs;
    else if (!c->steps && !c->epochs)
        c->steps = st->total_steps;
    if (!(c->given & TRAIN_GIVEN_EVAL_EVERY) && st->eval_every >= 0)
        c->eval_every = st->eval_every;
    take_outputs(s, st, dir);
    note_sinks_left_out(s, st);
    /* the run's flag value; the live one carries on as resume() decides */
    if (!(c->pesc.given & PESC_GIVEN_AUX_COEF) && st->run_aux_coef >= 0)
        c->pesc.aux_coef = (float)st->run_aux_coef;
    if (!(c->pesc.given & PESC_GIVEN_MODE) || c->pesc.mode == st->pesc.mode)
        adopt_crafting_of(&c->pesc, &st->pesc);   /* another mode: check_resumable says so */
    rc = 0;
out:
    if (rc != 0) {
        pesc_fail_prefix(err, "cannot resume");
        free(dir);
    } else {
        s->resumed_dir = dir;
    }
    return rc;
}

static int setup(session *s, pesc_error *err)
{
    train_config *c = &s->cfg;
    /* before resuming: the run's data may be a source a plugin's format opens */
    if (!(s->plugins = plugins_open(c->plugins, c->n_plugins, err)) ||
        !(s->formats = plugins_formats(s->plugins, err)))
        return -1;
    if (c->resume && (adopt_resumed(s, err) != 0 || train_config_check_needs(c, err) != 0))
        return -1;
    if (c->save_dir && check_save_dir(s, err) != 0)
        return -1;
    s->backend = backend_new(c->backend, err);
    if (!s->backend)
        return -1;
    if (c->model) {
        if (fetch_view_resolve_model(c->model, &s->model_dir, err) != 0)
            return -1;
    } else if (c->init_config) {
        s->model_dir = xstrdup(c->init_config);   /* its directory stands in for a model's */
        char *slash = strrchr(s->model_dir, '/');
        if (slash)
            *slash = '\0';
        else
            strcpy(s->model_dir, ".");
    } else {
        s->model_dir = pesc_demo_model_dir();
    }
    pesc_show_phase(c->command, "loading the model from %s", pesc_path_shown(s->model_dir));
    if (load_model(s, err) != 0)
        return -1;
    /* an exported model trains on in its run's template unless --template says otherwise */
    const char *exported = s->m.config.pesc_template;
    if (!(c->given & TRAIN_GIVEN_TEMPLATE) && exported[0]) {
        if (!template_find(exported))
            return pesc_fail(err, "%s/config.json: \"pesc_template\": \"%s\" is not a template "
                             "this pesc knows (%s): give --template NAME", s->model_dir, exported,
                             template_list());
        c->template_name = exported;
        c->given |= TRAIN_GIVEN_TEMPLATE;
    }
    s->tpl = template_find(c->template_name);
    /* the default rows are no longer than the model's context */
    int context = s->m.config.max_position_embeddings;
    if (!(c->given & TRAIN_GIVEN_SEQ) && context >= 2 && c->seq > context)
        c->seq = context;
    pesc_show_phase(c->command, "reading and tokenizing the data");
    if (load_tokenizer(s, err) != 0 || open_data(s, err) != 0)
        return -1;
    pesc_show_phase(c->command, "crafting the model");
    s->fingerprint = checkpoint_fingerprint(&s->m);   /* before full mode trains the weights */
    if (s->m.crafted && adopt_crafting(s, err) != 0)
        return -1;
    /* on an exported model this crafts again, keeping its routers and adapters */
    if (model_craft(&s->m, &c->pesc, c->seed, err) != 0)
        return -1;
    s->m.recompute = c->recompute;
    s->m.neftune = c->neftune;
    if (check_memory(s, err) != 0)
        return -1;
    s->total_steps = count_steps(s);
    c->optim.total_steps = s->total_steps;
    if (c->n_eval || c->eval_split > 0 || c->eval_choices) {
        if (c->n_eval || c->eval_choices)
            pesc_show_phase(c->command, "reading and tokenizing the held-out data");
        if (open_eval(s, err) != 0)
            return -1;
    }
    if (optim_init(&s->opt, s->backend, s->m.n_train, &c->optim, err) != 0)
        return -1;
    if (c->resume)
        pesc_show_phase(c->command, "loading the checkpoint %s", c->resume);
    if (c->resume && resume(s, err) != 0)
        return -1;
    if (s->m.crafted) {
        size_t sums = 4 * (size_t)s->m.config.n_layers * s->m.pesc.experts * sizeof(double);
        s->previous = backend_alloc(s->backend, s->m.n_train * sizeof(float), err);
        if (!s->previous || !(s->norm_sums = backend_alloc(s->backend, sums, err)))
            return -1;
    }
    describe_run(s);
    s->record = stats_record_new(s->run.shape);
    s->shared->run = s->run;
    return 0;
}

/* ---- lifetime ----------------------------------------------------------------------------- */

static int view_snapshot(void *ctx, monitor_view *v);
static void view_command(void *ctx, const char *line, char *reply, size_t n)
{
    session_command(ctx, line, reply, n);
}
static void view_close(void *ctx) { (void)ctx; }

static const monitor_ops session_monitor_ops = {
    .snapshot = view_snapshot, .command = view_command, .close = view_close};

session *session_new(const train_config *c, pesc_error *err)
{
    session *s = xcalloc(1, sizeof *s);
    s->cfg = *c;
    s->lr_override = -1.0;
    s->lr_scale = s->lr_scale_shown = 1.0;
    s->status = 1;
    s->last_save = -1.0;
    s->saved_step = -1;
    s->best_kept = -1;
    s->best_score = INFINITY;
    s->save_lock = -1;
    s->samples_at_eval = -1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->tok_lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    s->shared = monitor_view_new();
    s->shared->state = MONITOR_STARTING;
    s->shared->since_save_s = -1.0;
    s->shared->can_save = c->save_dir != NULL;
    s->face = (monitor){&session_monitor_ops, s};
    s->skips = open_memstream(&s->skipped_text, &s->skipped_len);
    int rc = s->skips ? setup(s, err) : pesc_fail(err, "cannot keep the data's warnings: %s",
                                                  strerror(errno));
    /* the error line, the screen or the progress starts on a clean line */
    pesc_show_phase(s->cfg.command, NULL);
    if (rc != 0) {
        session_delete(s);
        return NULL;
    }
    return s;
}

/* --eval-samples before answers are appended: a last line a kill cut short is cut off, and a
 * resumed run's file loses the answers a run that went past the checkpoint wrote after it of
 * the steps this one does again (of a pending evaluation too): those after the length the
 * checkpoint recorded. */
static int cut_samples(session *s, pesc_error *err)
{
    const checkpoint_state *st = s->resumed;
    long long from = -1;
    long last_step = 0;
    if (st && pesc_same_file(st->eval_samples, s->cfg.eval_samples)) {
        from = st->eval_samples_bytes;
        last_step = st->step - (st->eval_pending ? 1 : 0);
    }
    if (ans_samples_cut(s->cfg.eval_samples, from, last_step, err) != 0) {
        pesc_fail_prefix(err, "--eval-samples");
        return -1;
    }
    return 0;
}

/* Whether raising --seq would let longer records in: 0 below the model's context and pesc's
 * most; else -1 and, into limit (n bytes), which one it is at (the notes then say what helps:
 * records that fit, or a model of a longer context). */
static int seq_at_most(const session *s, char *limit, size_t n)
{
    int seq = s->cfg.seq, context = s->m.config.max_position_embeddings;
    if (context > 0 && seq >= context)
        snprintf(limit, n, "--seq %d is %s the model's context (%d tokens, "
                 "max_position_embeddings)", seq, seq == context ? "all of" : "past", context);
    else if (seq >= TRAIN_MAX_SEQ)
        snprintf(limit, n, "--seq %d is the most pesc takes", seq);
    else
        return 0;
    return -1;
}

int session_start(session *s, pesc_error *err)
{
    /* the outputs last: whatever can refuse the run (and the front end's --control socket,
     * taken between session_new and here) has refused it before a file is truncated */
    s->t_start = pesc_now();   /* the notes below are at the run's start, not the epoch's */
    if (open_sinks(s, err) != 0 || (s->samples && cut_samples(s, err) != 0))
        return -1;
    if (*s->memory_note)
        publish_event(s, "memory", "%s", s->memory_note);
    if (*backend_gpu_passed_over(s->backend))
        publish_warning(s, "note", "--backend auto runs on the CPU: %s",
                        backend_gpu_passed_over(s->backend));
    int context = s->m.config.max_position_embeddings;
    if (context > 0 && s->cfg.seq > context)
        publish_warning(s, "note", "--seq %d is past the model's context of %d tokens "
                        "(max_position_embeddings): it was never trained on later positions",
                        s->cfg.seq, context);
    /* the default template on a model that has its own: trained in a format its prompts
     * (and those of other tools) will not use, unless that is what was wanted */
    const char *own = template_model_other(s->tok, s->cfg.template_name);
    if (own && !(s->cfg.given & TRAIN_GIVEN_TEMPLATE) && strcmp(s->cfg.format, "tokens") != 0 &&
        strcmp(s->cfg.format, "text") != 0)
        publish_warning(s, "note", "the model's chat template (tokenizer_config.json) is %s's, "
                        "and records are rendered with %s (the default): --template %s trains "
                        "in the model's own format; --template %s keeps this, without the note",
                        own, s->cfg.template_name, own, s->cfg.template_name);
    if (s->skips) {   /* each line "warning: FILE:LINE: why (record skipped)", or a count */
        fclose(s->skips);
        s->skips = NULL;
        for (char *line = s->skipped_text, *nl; line && *line; line = nl + 1) {
            nl = strchr(line, '\n');
            if (nl)
                *nl = '\0';
            publish_warning(s, "note", "%s", strncmp(line, "warning: ", 9) ? line : line + 9);
            if (!nl)
                break;
        }
    }
    for (const char *line = s->resume_notes; *line;) {
        int length = (int)strcspn(line, "\n");
        publish_warning(s, "note", "%.*s", length, line);
        line += length + (line[length] == '\n');
    }
    note_schedule_change(s);
    if (s->outputs_taken)   /* where the checkpoints and the log go was not given: say it */
        publish_warning(s, "note", "resumed from the run's newest checkpoint: it saves on to "
                        "%s%s%s, as the run did (--save DIR elsewhere branches off)",
                        s->cfg.save_dir, s->outputs_taken > 1 ? " and logs on to " : "",
                        s->outputs_taken > 1 ? s->cfg.log_path : "");
    /* hours of training on a model of one's own, gone at the end: said at the start (the
     * demo, a model of its own, is left alone) */
    if (!s->cfg.save_dir && (s->cfg.model || s->cfg.resume || s->cfg.init_config))
        publish_warning(s, "note", "no --save DIR: nothing this run trains is kept (--save DIR "
                        "writes checkpoints%s)", s->cfg.resume ? ", its own or the one resumed "
                        "from" : "");
    const ds_stats *data = dataset_stats(s->data);
    /* raising --seq is advice only while it can grow */
    char limit[128], advice[256];
    int seq_can_grow = seq_at_most(s, limit, sizeof limit) == 0;
    if (data->truncated) {   /* tokens no step will see: said, not lost without a word */
        if (seq_can_grow)
            snprintf(advice, sizeof advice, "raise --seq to train on them");
        else
            snprintf(advice, sizeof advice, "%s: split or shorten the records to train on all "
                     "of them, or take a model of a longer context", limit);
        publish_warning(s, "note", "records longer than --seq %d: %ld of %ld, cut to their first "
                        "%d tokens (%lld of %lld tokens never trained on); %s", s->cfg.seq,
                        data->truncated, data->records, s->cfg.seq, data->truncated_tokens,
                        data->tokens, advice);
    }
    if (s->cfg.eval_split > 0)
        publish_event(s, "note", "--eval-split %g: %d records held out of training, scored "
                      "every %ld steps", s->cfg.eval_split, s->n_eval, s->eval_every);
    if (data->answers_cut) {
        if (seq_can_grow)
            snprintf(advice, sizeof advice, ", raise --seq to learn them");
        else
            snprintf(advice, sizeof advice, "; %s: shorten their prompts to learn them, or "
                     "take a model of a longer context", limit);
        publish_warning(s, "note", "records with no answer within --seq %d: %ld of %ld (their "
                        "answers lie past it); they train nothing%s", s->cfg.seq,
                        data->answers_cut, data->records, advice);
    }
    pthread_mutex_lock(&s->lock);   /* the control socket may already be taking commands */
    s->lr_by_hand_shown = s->lr_override >= 0;
    pthread_mutex_unlock(&s->lock);
    int rc = pthread_create(&s->thread, NULL, trainer_main, s);
    if (rc != 0)
        return pesc_fail(err, "cannot start the trainer thread: %s", strerror(rc));
    s->started = 1;
    return 0;
}

int session_wait(session *s)
{
    if (s->started && s->cfg.answer_after_end) {
        /* the workbench waits only as it quits: training stops, nothing more is answered
         * (also when its stop command found the queue full) */
        pthread_mutex_lock(&s->lock);
        s->closing = 1;
        s->stop_requested = 1;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
    }
    if (s->started) {
        pthread_join(s->thread, NULL);
        s->started = 0;
    }
    return s->status;
}

const char *session_error(const session *s) { return s->error; }

void session_delete(session *s)
{
    if (!s)
        return;
    if (s->started) {
        pthread_mutex_lock(&s->lock);
        s->stop_requested = 1;
        s->closing = 1;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        session_wait(s);
    }
    sinks_close(s->sinks);
    free(s->resumed);
    free(s->resumed_dir);
    free(s->load_mean);
    free(s->collapse_said);
    if (s->skips)
        fclose(s->skips);
    free(s->skipped_text);
    stats_record_delete(s->record);
    sampler_free(&s->sampler);
    if (s->backend) {
        backend_free(s->backend, s->previous);
        backend_free(s->backend, s->norm_sums);
    }
    optim_free(&s->opt);
    ds_batch_free(&s->batch);
    dataset_delete(s->data);
    dataset_free(&s->eval_data);
    free(s->eval_order);
    mc_free(&s->choices);
    if (s->samples)
        fclose(s->samples);
    free(s->choices_path);
    for (int i = 0; i < TRAIN_MAX_EVAL; i++)
        free(s->eval_paths[i]);
    tok_delete(s->tok);
    model_free(&s->m);
    ds_formats_delete(s->formats);
    backend_delete(s->backend);
    for (int i = 0; i < STATS_MAX_SOURCES; i++)
        free(s->data_paths[i]);
    free(s->model_dir);
    free(s->tokenizer_path);
    free(s->last_checkpoint);
    monitor_view_delete(s->shared);
    if (s->made_save_dir && s->last_save < 0)   /* refused before it saved: none left */
        checkpoint_unlock_unused(s->save_lock, s->cfg.save_dir);
    else
        checkpoint_unlock(s->save_lock);
    plugins_delete(s->plugins);   /* last: sinks and formats may live in its modules */
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->tok_lock);
    free(s);
}

monitor *session_monitor(session *s) { return &s->face; }

/* A private copy for the caller; arrays are reallocated when the shape changed. */
static int view_snapshot(void *ctx, monitor_view *v)
{
    session *s = ctx;
    pthread_mutex_lock(&s->lock);
    const monitor_view *src = s->shared;
    stats_record *last = v->last;
    float *loads = v->loads;
    /* a live run compares with none: its compared series (the last, and most, of the view)
     * are not copied under the lock */
    memcpy(v, src, offsetof(monitor_view, compared));
    v->last = last;
    v->loads = loads;
    if (src->last) {
        v->last = stats_record_fit(v->last, src->last->shape);
        stats_record_copy(v->last, src->last);
    } else {
        stats_record_delete(v->last);
        v->last = NULL;
    }
    size_t le = (size_t)src->run.shape.n_layers * src->run.shape.n_experts;
    if (src->loads && le) {
        if (!v->loads)
            v->loads = xcalloc(MONITOR_LOAD_HISTORY * le, sizeof *v->loads);
        memcpy(v->loads, src->loads, (size_t)src->n_loads * le * sizeof *v->loads);
    }
    /* counted now, not at the last step: a save while paused, or the final one, is shown */
    v->since_save_s = s->last_save > 0 ? pesc_now() - s->last_save : -1.0;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int session_saves(const session *s)
{
    return s->cfg.save_dir != NULL;
}

void session_get_progress(session *s, session_progress *p)
{
    pthread_mutex_lock(&s->lock);
    *p = s->progress;
    p->state = s->shared->state;
    pthread_mutex_unlock(&s->lock);
}

void session_inject_nan(session *s, int n)
{
    /* read by the trainer between steps; a test sets it before start or while paused */
    s->inject_nan = n;
}
