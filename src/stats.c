/* stats — see stats.h. JSON through jansson: objects are built, then dumped compactly with
 * 9 significant digits, enough for a float to read back bit for bit. */
#include "stats.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "monitor.h"

/* ---- records ------------------------------------------------------------------------------ */

static size_t le(stats_shape s) { return (size_t)s.n_layers * (size_t)s.n_experts; }

/* The (L, E)-sized arrays of a record, in one list so new/copy/json treat them alike. */
#define LE_ARRAYS(r) { &(r)->load, &(r)->first, &(r)->gate, &(r)->norm_down, &(r)->norm_up, \
                       &(r)->update_ratio }
static const char *const le_names[] = {"load", "first", "gate", "norm_down", "norm_up",
                                       "update_ratio"};
#define N_LE 6
#define L_ARRAYS(r) { &(r)->entropy, &(r)->imbalance, &(r)->cv }
static const char *const l_names[] = {"entropy", "imbalance", "cv"};
#define N_L 3

stats_record *stats_record_new(stats_shape shape)
{
    stats_record *r = xcalloc(1, sizeof *r);
    r->shape = shape;
    if (shape.n_experts <= 0 || shape.n_layers <= 0)
        return r;
    float **le_arrays[] = LE_ARRAYS(r);
    for (int i = 0; i < N_LE; i++)
        *le_arrays[i] = xcalloc(le(shape), sizeof(float));
    float **l_arrays[] = L_ARRAYS(r);
    for (int i = 0; i < N_L; i++)
        *l_arrays[i] = xcalloc((size_t)shape.n_layers, sizeof(float));
    if (shape.n_sources > 0)
        r->source_load = xcalloc((size_t)shape.n_sources * le(shape), sizeof(float));
    return r;
}

void stats_record_delete(stats_record *r)
{
    if (!r)
        return;
    float **le_arrays[] = LE_ARRAYS(r);
    for (int i = 0; i < N_LE; i++)
        free(*le_arrays[i]);
    float **l_arrays[] = L_ARRAYS(r);
    for (int i = 0; i < N_L; i++)
        free(*l_arrays[i]);
    free(r->source_load);
    free(r);
}

stats_record *stats_record_fit(stats_record *r, stats_shape shape)
{
    if (r && r->shape.n_layers == shape.n_layers && r->shape.n_experts == shape.n_experts &&
        r->shape.n_sources == shape.n_sources)
        return r;
    stats_record_delete(r);
    return stats_record_new(shape);
}

void stats_record_copy(stats_record *dst, const stats_record *src)
{
    stats_record keep = *dst;
    *dst = *src;
    /* the arrays stay dst's own */
    float **d_le[] = LE_ARRAYS(&keep), **s_le[] = LE_ARRAYS((stats_record *)src);
    float **d_l[] = L_ARRAYS(&keep), **s_l[] = L_ARRAYS((stats_record *)src);
    float **out_le[] = LE_ARRAYS(dst), **out_l[] = L_ARRAYS(dst);
    for (int i = 0; i < N_LE; i++) {
        *out_le[i] = *d_le[i];
        if (*d_le[i] && *s_le[i])
            memcpy(*d_le[i], *s_le[i], le(src->shape) * sizeof(float));
    }
    for (int i = 0; i < N_L; i++) {
        *out_l[i] = *d_l[i];
        if (*d_l[i] && *s_l[i])
            memcpy(*d_l[i], *s_l[i], (size_t)src->shape.n_layers * sizeof(float));
    }
    dst->source_load = keep.source_load;
    if (keep.source_load && src->source_load)
        memcpy(keep.source_load, src->source_load,
               (size_t)src->shape.n_sources * le(src->shape) * sizeof(float));
}

void stats_record_derive(stats_record *r)
{
    int L = r->shape.n_layers, E = r->shape.n_experts;
    if (!r->load)
        return;
    for (int l = 0; l < L; l++) {
        const float *row = r->load + (size_t)l * E;
        double sum = 0.0, most = 0.0, sq = 0.0;
        for (int e = 0; e < E; e++) {
            sum += row[e];
            most = row[e] > most ? row[e] : most;
        }
        double mean = sum / E;
        for (int e = 0; e < E; e++)
            sq += (row[e] - mean) * (row[e] - mean);
        r->imbalance[l] = mean > 0 ? (float)(most / mean) : 0.0f;
        r->cv[l] = mean > 0 ? (float)(sqrt(sq / E) / mean) : 0.0f;
    }
}

/* ---- writing ------------------------------------------------------------------------------ */

static json_t *matrix(const float *x, int rows, int cols)
{
    json_t *outer = json_array();
    for (int i = 0; i < rows; i++) {
        json_t *row = json_array();
        for (int j = 0; j < cols; j++)
            json_array_append_new(row, json_real(x[(size_t)i * cols + j]));
        json_array_append_new(outer, row);
    }
    return outer;
}

static char *dump(json_t *obj)
{
    char *text = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(9) | JSON_PRESERVE_ORDER);
    json_decref(obj);
    if (!text) {
        fprintf(stderr, "pesc: out of memory writing a log line\n");
        abort();
    }
    return text;
}

static void set_real(json_t *o, const char *key, double v)
{
    /* JSON has no NaN or infinity: a non-finite value is written as null */
    json_object_set_new(o, key, isfinite(v) ? json_real(v) : json_null());
}

char *stats_record_json(const stats_record *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "step", json_integer(r->step));
    json_object_set_new(o, "total_steps", json_integer(r->total_steps));
    set_real(o, "epoch", r->epoch);
    json_object_set_new(o, "tokens", json_integer(r->tokens));
    set_real(o, "loss", r->loss);
    set_real(o, "aux_loss", r->aux_loss);
    set_real(o, "z_loss", r->z_loss);
    set_real(o, "lr", r->lr);
    json_object_set_new(o, "lr_overridden", json_boolean(r->lr_overridden));
    set_real(o, "aux_coef", r->aux_coef);
    set_real(o, "grad_norm", r->grad_norm);
    set_real(o, "tokens_per_s", r->tokens_per_s);
    set_real(o, "step_s", r->step_s);
    set_real(o, "elapsed_s", r->elapsed_s);
    set_real(o, "eta_s", r->eta_s);
    set_real(o, "rss_bytes", r->rss_bytes);
    set_real(o, "device_bytes", r->device_bytes);
    if (r->eval_tokens > 0) {
        set_real(o, "eval_loss", r->eval_loss);
        json_object_set_new(o, "eval_tokens", json_integer(r->eval_tokens));
    }
    if (r->eval_questions > 0) {
        set_real(o, "eval_accuracy", r->eval_accuracy);
        set_real(o, "eval_accuracy_norm", r->eval_accuracy_norm);
        json_object_set_new(o, "eval_questions", json_integer(r->eval_questions));
    }
    if (r->eval_answers > 0) {
        set_real(o, "eval_answer_accuracy", r->eval_answer_accuracy);
        json_object_set_new(o, "eval_answers", json_integer(r->eval_answers));
    }
    int L = r->shape.n_layers, E = r->shape.n_experts;
    if (r->load) {
        const float *const le_arrays[] = {r->load, r->first, r->gate, r->norm_down, r->norm_up,
                                          r->update_ratio};
        for (int i = 0; i < N_LE; i++)
            json_object_set_new(o, le_names[i], matrix(le_arrays[i], L, E));
        const float *const l_arrays[] = {r->entropy, r->imbalance, r->cv};
        for (int i = 0; i < N_L; i++)
            json_object_set_new(o, l_names[i], matrix(l_arrays[i], 1, L));
        if (r->source_load) {
            json_t *sources = json_array();
            for (int s = 0; s < r->shape.n_sources; s++)
                json_array_append_new(sources, matrix(r->source_load + (size_t)s * L * E, L, E));
            json_object_set_new(o, "source_load", sources);
        }
    }
    return dump(o);
}

char *stats_event_json(const stats_event *e)
{
    json_t *o = json_object();
    json_object_set_new(o, "event", json_string(e->kind));
    json_object_set_new(o, "step", json_integer(e->step));
    set_real(o, "elapsed_s", e->elapsed_s);
    json_object_set_new(o, "text", json_string(e->text));
    if (e->prompt)
        json_object_set_new(o, "prompt", json_string(e->prompt));
    if (e->answer)
        json_object_set_new(o, "answer", json_string(e->answer));
    return dump(o);
}

int stats_lr_event(const stats_event *e, double *lr, int *by_hand)
{
    int n = 0;
    if (strcmp(e->kind, "lr") != 0 || sscanf(e->text, "learning rate %lf%n", lr, &n) != 1 ||
        n == 0 || !isfinite(*lr) || *lr < 0)
        return -1;
    *by_hand = strncmp(e->text + n, " (was ", 6) == 0;
    return 0;
}

int stats_aux_event(const stats_event *e, double *coef)
{
    int n = 0;
    if (strcmp(e->kind, "aux") != 0 || sscanf(e->text, "aux coefficient %lf%n", coef, &n) != 1 ||
        n == 0 || !isfinite(*coef) || *coef < 0)
        return -1;
    return 0;
}

int stats_eval_event(const stats_event *e, double *loss, double *accuracy, double *answers)
{
    *loss = *accuracy = *answers = NAN;
    if (strcmp(e->kind, "eval") != 0)
        return -1;
    /* %n after the literal: the whole form matched, not only its number */
    double x;
    int n = 0;
    if (sscanf(e->text, "eval loss %lf%n", &x, &n) == 1 && n > 0 && isfinite(x))
        *loss = x;
    else if (n = 0, sscanf(e->text, "eval accuracy %lf%n", &x, &n) == 1 && n > 0 && isfinite(x))
        *accuracy = x;
    else if (n = 0, sscanf(e->text, "eval answers %lf right%n", &x, &n) == 1 && n > 0 &&
             isfinite(x))
        *answers = x;
    else
        return -1;
    return 0;
}

stats_end stats_event_end(const char *kind, const char *text)
{
    int error = strcmp(kind, "error") == 0 || strcmp(kind, "fail") == 0;
    if (!error && strcmp(kind, "finish") != 0 && strcmp(kind, "stop") != 0)
        return STATS_END_NONE;
    return strncmp(text, "at step ", 8) == 0 || !error ? STATS_END_CLOSING : STATS_END_ERROR;
}

char *stats_run_json(const stats_run *run)
{
    json_t *o = json_object();
    json_object_set_new(o, "event", json_string("start"));
    json_object_set_new(o, "model", json_string(run->model));
    json_object_set_new(o, "backend", json_string(run->backend));
    json_object_set_new(o, "layers", json_integer(run->shape.n_layers));
    json_object_set_new(o, "experts", json_integer(run->shape.n_experts));
    json_object_set_new(o, "top_k", json_integer(run->shape.top_k));
    json_object_set_new(o, "adapter_dim", json_integer(run->adapter_dim));
    set_real(o, "adapter_scale", run->adapter_scale);
    json_object_set_new(o, "total_steps", json_integer(run->total_steps));
    json_object_set_new(o, "data_records", json_integer(run->data_records));
    json_object_set_new(o, "data_tokens", json_integer(run->data_tokens));
    json_t *sources = json_array();
    for (int s = 0; s < run->shape.n_sources; s++)
        json_array_append_new(sources, json_string(run->sources[s]));
    json_object_set_new(o, "sources", sources);
    if (run->control[0])
        json_object_set_new(o, "control", json_string(run->control));
    if (run->resumed_step > 0)
        json_object_set_new(o, "resumed_step", json_integer(run->resumed_step));
    return dump(o);
}

/* ---- parsing ------------------------------------------------------------------------------ */

static double real_or(json_t *o, const char *key, double fallback)
{
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : fallback;
}

static long long int_or(json_t *o, const char *key, long long fallback)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? json_integer_value(v) : json_is_real(v) ? (long long)json_real_value(v) : fallback;
}

static void copy_string(char *dst, size_t n, json_t *v)
{
    snprintf(dst, n, "%s", json_is_string(v) ? json_string_value(v) : "");
}

/* Reads rows x cols numbers; a missing or mis-shaped array leaves zeros and returns -1. */
static int read_matrix(json_t *a, float *out, int rows, int cols)
{
    if (!json_is_array(a) || (int)json_array_size(a) != rows)
        return -1;
    for (int i = 0; i < rows; i++) {
        json_t *row = json_array_get(a, (size_t)i);
        if (!json_is_array(row) || (int)json_array_size(row) != cols)
            return -1;
        for (int j = 0; j < cols; j++)
            out[(size_t)i * cols + j] = (float)json_number_value(json_array_get(row, (size_t)j));
    }
    return 0;
}

static int parse_run(json_t *o, stats_run *run)
{
    memset(run, 0, sizeof *run);
    copy_string(run->model, sizeof run->model, json_object_get(o, "model"));
    copy_string(run->backend, sizeof run->backend, json_object_get(o, "backend"));
    copy_string(run->control, sizeof run->control, json_object_get(o, "control"));
    run->shape.n_layers = (int)int_or(o, "layers", 0);
    run->shape.n_experts = (int)int_or(o, "experts", 0);
    run->shape.top_k = (int)int_or(o, "top_k", 0);
    run->adapter_dim = (int)int_or(o, "adapter_dim", 0);
    run->adapter_scale = real_or(o, "adapter_scale", 0.0);
    run->total_steps = (long)int_or(o, "total_steps", 0);
    run->data_records = (long)int_or(o, "data_records", 0);
    run->data_tokens = int_or(o, "data_tokens", 0);
    run->resumed_step = (long)int_or(o, "resumed_step", 0);
    json_t *sources = json_object_get(o, "sources");
    size_t n = json_is_array(sources) ? json_array_size(sources) : 0;
    run->shape.n_sources = (int)(n < STATS_MAX_SOURCES ? n : STATS_MAX_SOURCES);
    for (int s = 0; s < run->shape.n_sources; s++)
        copy_string(run->sources[s], sizeof run->sources[s], json_array_get(sources, (size_t)s));
    return 3;
}

/* The shape a step line implies: from its load array and source list. */
static stats_shape shape_of(json_t *o)
{
    stats_shape s = {0};
    json_t *load = json_object_get(o, "load");
    if (json_is_array(load) && json_array_size(load) > 0) {
        s.n_layers = (int)json_array_size(load);
        s.n_experts = (int)json_array_size(json_array_get(load, 0));
    }
    json_t *src = json_object_get(o, "source_load");
    s.n_sources = json_is_array(src) ? (int)json_array_size(src) : 0;
    if (s.n_sources > STATS_MAX_SOURCES)
        s.n_sources = STATS_MAX_SOURCES;
    return s;
}

static int parse_step(json_t *o, stats_record **rp)
{
    stats_shape shape = shape_of(o);
    stats_record *r = *rp = stats_record_fit(*rp, shape);
    r->step = (long)int_or(o, "step", 0);
    r->total_steps = (long)int_or(o, "total_steps", 0);
    r->epoch = real_or(o, "epoch", 0.0);
    r->tokens = int_or(o, "tokens", 0);
    r->loss = real_or(o, "loss", NAN);
    r->aux_loss = real_or(o, "aux_loss", 0.0);
    r->z_loss = real_or(o, "z_loss", 0.0);
    r->lr = real_or(o, "lr", 0.0);
    r->lr_overridden = json_is_true(json_object_get(o, "lr_overridden"));
    r->aux_coef = real_or(o, "aux_coef", NAN);
    r->grad_norm = real_or(o, "grad_norm", NAN);
    r->tokens_per_s = real_or(o, "tokens_per_s", 0.0);
    r->step_s = real_or(o, "step_s", 0.0);
    r->elapsed_s = real_or(o, "elapsed_s", 0.0);
    r->eta_s = real_or(o, "eta_s", -1.0);
    r->rss_bytes = real_or(o, "rss_bytes", 0.0);
    r->device_bytes = real_or(o, "device_bytes", 0.0);
    r->eval_tokens = int_or(o, "eval_tokens", 0);
    r->eval_loss = r->eval_tokens > 0 ? real_or(o, "eval_loss", NAN) : 0.0;
    r->eval_questions = (long)int_or(o, "eval_questions", 0);
    r->eval_accuracy = r->eval_questions > 0 ? real_or(o, "eval_accuracy", NAN) : 0.0;
    r->eval_accuracy_norm = r->eval_questions > 0 ? real_or(o, "eval_accuracy_norm", NAN) : 0.0;
    r->eval_answers = (long)int_or(o, "eval_answers", 0);
    r->eval_answer_accuracy = r->eval_answers > 0 ? real_or(o, "eval_answer_accuracy", NAN)
                                                  : 0.0;
    if (r->load) {
        int L = shape.n_layers, E = shape.n_experts;
        float *const le_arrays[] = {r->load, r->first, r->gate, r->norm_down, r->norm_up,
                                    r->update_ratio};
        for (int i = 0; i < N_LE; i++)
            read_matrix(json_object_get(o, le_names[i]), le_arrays[i], L, E);
        float *const l_arrays[] = {r->entropy, r->imbalance, r->cv};
        for (int i = 0; i < N_L; i++)
            read_matrix(json_object_get(o, l_names[i]), l_arrays[i], 1, L);
        json_t *src = json_object_get(o, "source_load");
        for (int s = 0; s < shape.n_sources; s++)
            read_matrix(json_array_get(src, (size_t)s), r->source_load + (size_t)s * L * E, L, E);
    }
    return 1;
}

int stats_parse_line(const char *line, stats_record **r, stats_event *e, stats_run *run,
                     pesc_error *err)
{
    json_error_t jerr;
    json_t *o = json_loads(line, 0, &jerr);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        return pesc_fail(err, "not a JSON object (column %d: %s)", jerr.column,
                         o ? "an array or value" : jerr.text);
    }
    int kind;
    json_t *event = json_object_get(o, "event");
    if (json_is_string(event) && strcmp(json_string_value(event), "start") == 0) {
        kind = parse_run(o, run);
    } else if (json_is_string(event)) {
        memset(e, 0, sizeof *e);
        copy_string(e->kind, sizeof e->kind, event);
        copy_string(e->text, sizeof e->text, json_object_get(o, "text"));
        e->step = (long)int_or(o, "step", 0);
        e->elapsed_s = real_or(o, "elapsed_s", 0.0);
        kind = 2;
    } else if (json_object_get(o, "step") && json_object_get(o, "loss")) {
        kind = parse_step(o, r);
    } else {
        kind = pesc_fail(err, "neither a step record (step, loss) nor an event");
    }
    json_decref(o);
    return kind;
}

/* The event kinds a log holds (pesc-log(5)); "fail" is an older name of "error". */
static const char *const event_kinds[] = {
    "start", "begin", "memory", "pause", "resume", "lr", "aux", "save", "eval", "nan-skip",
    "generate", "sink", "note", "error", "fail", "stop", "finish"};

static int known_event(const char *kind)
{
    for (size_t i = 0; i < sizeof event_kinds / sizeof *event_kinds; i++)
        if (strcmp(kind, event_kinds[i]) == 0)
            return 1;
    return 0;
}

int stats_is_log_record(const json_t *o)
{
    json_t *obj = (json_t *)o;   /* jansson's getters take no const */
    if (!json_is_object(obj))
        return 0;
    const char *event = json_string_value(json_object_get(obj, "event"));
    int step = json_is_integer(json_object_get(obj, "step"));
    if (event && strcmp(event, "start") == 0)
        return json_is_integer(json_object_get(obj, "total_steps"));
    if (event)
        return step && known_event(event);
    static const char *const step_keys[] = {"loss", "lr", "grad_norm", "tokens_per_s"};
    for (size_t i = 0; i < sizeof step_keys / sizeof *step_keys; i++)
        if (!json_object_get(obj, step_keys[i]))   /* null counts: a number not finite */
            return 0;
    return step;
}

/* A log's lines are short but for a step's routing arrays (a few kB a layer): a first line
 * past this is no log's, and a file without newlines (a binary one) is not read whole. */
#define FIRST_LINE_MAX ((size_t)16 << 20)

/* The next line of f (its newline kept) into *line, grown as needed: 0, or -1 at the end,
 * past FIRST_LINE_MAX or at a NUL byte (no log holds one; a zero-filled file is not read
 * whole). */
static int bounded_line(FILE *f, char **line, size_t *cap)
{
    size_t n = 0;
    for (int c; (c = getc(f)) != EOF;) {
        if (c == '\0' || n + 2 > FIRST_LINE_MAX)
            return -1;
        if (n + 2 > *cap) {
            *cap = *cap ? 2 * *cap : 4096;
            *line = xrealloc(*line, *cap);
        }
        (*line)[n++] = (char)c;
        if (c == '\n')
            break;
    }
    if (n == 0)
        return -1;
    (*line)[n] = '\0';
    return 0;
}

/* The start line's run, when text is one (run may be NULL: only whether it is). */
static int start_line(const char *text, const json_t *o, stats_run *run)
{
    const char *event = json_string_value(json_object_get((json_t *)o, "event"));
    if (!event || strcmp(event, "start") != 0)
        return 0;
    if (!run)
        return 1;
    stats_record *r = NULL;
    stats_event e;
    pesc_error ignored;
    int kind = stats_parse_line(text, &r, &e, run, &ignored);
    stats_record_delete(r);
    return kind == 3;
}

int stats_log_file_start(const char *path, stats_run *run)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    int found = -1, first = 1;
    while (bounded_line(f, &line, &cap) == 0) {
        const char *text = first ? pesc_skip_bom(line, NULL) : line;
        first = 0;
        if (text[strspn(text, " \t\r\n")] == '\0')
            continue;   /* a blank line */
        json_t *o = json_loads(text, 0, NULL);   /* white space (a CR) around it is JSON's */
        if (stats_is_log_record(o))
            found = start_line(text, o, run);
        json_decref(o);
        break;
    }
    free(line);
    fclose(f);
    return found;
}

int stats_is_log_file(const char *path)
{
    return stats_log_file_start(path, NULL) >= 0;
}

/* ---- monitor views ------------------------------------------------------------------------ */

monitor_point monitor_point_of(const stats_record *r)
{
    return (monitor_point){.step = r->step, .loss = (float)r->loss,
                           .aux_loss = (float)r->aux_loss, .lr = (float)r->lr,
                           .grad_norm = (float)r->grad_norm,
                           .tokens_per_s = (float)r->tokens_per_s,
                           .eval_loss = r->eval_tokens > 0 ? (float)r->eval_loss : NAN,
                           .eval_accuracy = r->eval_questions > 0 ? (float)r->eval_accuracy
                                                                  : NAN,
                           .eval_answers = r->eval_answers > 0 ? (float)r->eval_answer_accuracy
                                                               : NAN};
}

int monitor_points_thin(monitor_point *p, int n)
{
    for (int i = 0; i < n / 2; i++) {
        monitor_point earlier = p[2 * i];
        p[i] = p[2 * i + 1];
        if (isnan(p[i].eval_loss))
            p[i].eval_loss = earlier.eval_loss;
        if (isnan(p[i].eval_accuracy))
            p[i].eval_accuracy = earlier.eval_accuracy;
        if (isnan(p[i].eval_answers))
            p[i].eval_answers = earlier.eval_answers;
    }
    return n / 2;
}

monitor_view *monitor_view_new(void)
{
    return xcalloc(1, sizeof(monitor_view));
}

void monitor_view_delete(monitor_view *v)
{
    if (!v)
        return;
    stats_record_delete(v->last);
    free(v->loads);
    free(v);
}
