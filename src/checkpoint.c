/* checkpoint — see checkpoint.h. */
#include "checkpoint.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "train_options.h"
#include "template.h"

#define STATE_FILE "state.json"
#define TRAINABLES_FILE "trainables.safetensors"
#define OPTIMIZER_FILE "optimizer.safetensors"
#define LOCK_FILE ".lock"            /* checkpoint_lock's; not a checkpoint */

/* ---- state.json --------------------------------------------------------------------------- */

static json_t *hex64(uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%016" PRIx64, v);
    return json_string(buf);
}

/* key: the n strings, left out when there are none */
static void add_strings(json_t *obj, const char *key, const char (*items)[4096], int n)
{
    if (n == 0)
        return;
    json_t *list = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(list, json_string(items[i]));
    json_object_set_new(obj, key, list);
}

static char *state_json(const checkpoint_state *st)
{
    json_t *o = json_object();
    json_object_set_new(o, "step", json_integer(st->step));
    json_object_set_new(o, "total_steps", json_integer(st->total_steps));
    json_object_set_new(o, "lr_override", st->lr_override >= 0 ? json_real(st->lr_override) : json_null());
    json_object_set_new(o, "lr_scale", json_real(st->lr_scale));
    json_object_set_new(o, "aux_coef", json_real(st->aux_coef));
    json_object_set_new(o, "model_rng", hex64(st->model_rng));
    json_t *cur = json_object();
    json_object_set_new(cur, "epoch", json_integer(st->cursor.epoch));
    json_object_set_new(cur, "position", json_integer(st->cursor.position));
    json_object_set_new(cur, "fingerprint", hex64(st->cursor.fingerprint));
    json_object_set_new(cur, "content", hex64(st->cursor.content));
    json_object_set_new(o, "data_cursor", cur);
    json_object_set_new(o, "tokens", json_integer(st->tokens));
    json_object_set_new(o, "elapsed_s", json_real(st->elapsed_s));
    json_object_set_new(o, "nan_skipped", json_integer(st->nan_skipped));
    if (st->eval_pending)
        json_object_set_new(o, "eval_pending", json_true());
    if (st->eval_samples_bytes >= 0)
        json_object_set_new(o, "eval_samples_bytes", json_integer(st->eval_samples_bytes));
    if (st->best_by == 1)   /* by answers (by loss, as before it could be otherwise: absent) */
        json_object_set_new(o, "best_by", json_string("answers"));
    if (st->best_step >= 0) {
        json_object_set_new(o, st->best_by == 1 ? "best_eval_answers" : "best_eval_loss",
                            json_real(st->best_value));
        json_object_set_new(o, "best_step", json_integer(st->best_step));
        if (st->best_eval_data)
            json_object_set_new(o, "best_eval_data", hex64(st->best_eval_data));
    }
    json_object_set_new(o, "base_fingerprint", hex64(st->base_fingerprint));
    json_t *run = json_object();
    const pesc_options *p = &st->pesc;
    json_object_set_new(run, "train", json_string(p->mode == TRAIN_FULL ? "full" : "pesc"));
    json_object_set_new(run, "experts", json_integer(p->experts));
    json_object_set_new(run, "top_k", json_integer(p->top_k));
    json_object_set_new(run, "adapter_dim", json_integer(p->adapter_dim));
    json_object_set_new(run, "adapter_scale", json_real(p->adapter_scale));
    json_object_set_new(run, "adapter_dropout", json_real(p->adapter_dropout));
    json_object_set_new(run, "z_coef", json_real(p->z_coef));
    json_object_set_new(run, "lora_rank", json_integer(p->lora_rank));
    json_object_set_new(run, "lora_alpha", json_real(p->lora_alpha));
    json_object_set_new(run, "lora_targets", json_integer(p->lora_targets));
    json_object_set_new(run, "seq", json_integer(st->seq));
    json_object_set_new(run, "batch", json_integer(st->batch));
    json_object_set_new(run, "grad_accum", json_integer(st->grad_accum));
    if (st->epochs > 0)
        json_object_set_new(run, "epochs", json_integer(st->epochs));
    if (st->pack >= 0)
        json_object_set_new(run, "pack", json_boolean(st->pack));
    if (st->eval_split > 0)
        json_object_set_new(run, "eval_split", json_real(st->eval_split));
    if (st->run_lr >= 0)
        json_object_set_new(run, "lr", json_real(st->run_lr));
    if (st->run_aux_coef >= 0)
        json_object_set_new(run, "aux_coef", json_real(st->run_aux_coef));
    json_object_set_new(run, "seed", hex64(st->seed));
    json_object_set_new(run, "model",
                        st->base_model[0] ? json_string(st->base_model) : json_null());
    if (st->init_config[0])
        json_object_set_new(run, "init_config", json_string(st->init_config));
    if (st->tokenizer[0])
        json_object_set_new(run, "tokenizer", json_string(st->tokenizer));
    if (st->n_data > 0) {
        json_t *data = json_array();
        for (int i = 0; i < st->n_data; i++)
            json_array_append_new(data, json_pack("{s:s,s:f}", "path", st->data[i].path,
                                                  "weight", st->data[i].weight));
        json_object_set_new(run, "data", data);
    }
    add_strings(run, "sinks", st->sinks, st->n_sinks);
    add_strings(run, "plugins", st->plugins, st->n_plugins);
    if (st->n_eval > 0) {
        json_t *eval = json_array();
        for (int i = 0; i < st->n_eval; i++)
            json_array_append_new(eval, json_string(st->eval_data[i]));
        json_object_set_new(run, "eval_data", eval);
    }
    if (st->eval_choices[0])
        json_object_set_new(run, "eval_choices", json_string(st->eval_choices));
    if (st->eval_generate[0])
        json_object_set_new(run, "eval_generate", json_string(st->eval_generate));
    if (st->eval_samples[0])
        json_object_set_new(run, "eval_samples", json_string(st->eval_samples));
    if (st->format[0])
        json_object_set_new(run, "format", json_string(st->format));
    if (st->template_name[0])
        json_object_set_new(run, "template", json_string(st->template_name));
    if (st->schedule >= 0)
        json_object_set_new(run, "schedule", json_string(optim_schedule_name(st->schedule)));
    if (st->warmup >= 0)
        json_object_set_new(run, "warmup", json_integer(st->warmup));
    if (st->weight_decay >= 0)
        json_object_set_new(run, "weight_decay", json_real(st->weight_decay));
    if (st->clip >= 0)
        json_object_set_new(run, "clip", json_real(st->clip));
    if (st->neftune > 0)   /* (none: a run before it reads alike) */
        json_object_set_new(run, "neftune", json_real(st->neftune));
    if (st->save_dir[0])
        json_object_set_new(run, "save", json_string(st->save_dir));
    if (st->log[0])
        json_object_set_new(run, "log", json_string(st->log));
    if (st->save_every >= 0)
        json_object_set_new(run, "save_every", json_integer(st->save_every));
    if (st->eval_every >= 0)
        json_object_set_new(run, "eval_every", json_integer(st->eval_every));
    if (st->keep >= 0)
        json_object_set_new(run, "keep", json_integer(st->keep));
    if (st->keep_best >= 0)
        json_object_set_new(run, "keep_best", json_boolean(st->keep_best));
    if (st->keep_best_by == 1)
        json_object_set_new(run, "best_by", json_string("answers"));
    json_object_set_new(o, "run", run);
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(o);
    return text;
}

/* Reading state.json strictly: a damaged or hand-edited file must not resume a run at step 0
 * or with a negative coefficient. The first problem is kept in err. */
typedef struct state_reader {
    const char *path;
    pesc_error *err;
    int failed;
} state_reader;

#define REQUIRED (-INFINITY)   /* as a fallback: the key must be there */

static void bad_value(state_reader *r, const char *key, const char *what)
{
    if (!r->failed)
        pesc_fail(r->err, "%s: \"%s\" %s (the file is damaged: use another checkpoint)",
                  r->path, key, what);
    r->failed = 1;
}

/* An integer from min to max: the range its command-line flag accepts where it has one, so
 * that no value is cut down to an int (grad_accum 2^31 would train nothing, experts 2^32 + 8
 * would be 8). */
static long read_integer(state_reader *r, json_t *obj, const char *key, long min, long max,
                         double fallback)
{
    json_t *v = json_object_get(obj, key);
    if (!v && fallback != REQUIRED)
        return (long)fallback;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        char what[80];
        if (max == LONG_MAX)
            snprintf(what, sizeof what, "must be an integer, at least %ld", min);
        else
            snprintf(what, sizeof what, "must be an integer from %ld to %ld", min, max);
        bad_value(r, key, what);
        return min;
    }
    return (long)json_integer_value(v);
}

/* A finite number from 0 to max (INFINITY: no bound but finiteness). The bounded ones were
 * floats when written, so they are compared as floats: --adapter-dropout 0.99 comes back as
 * 0.9900000095 and must pass as the flag did, while 1e39 (inf as a float) must not. */
static double read_number(state_reader *r, json_t *obj, const char *key, double max,
                          double fallback)
{
    json_t *v = json_object_get(obj, key);
    if (!v && fallback != REQUIRED)
        return fallback;
    double x = json_number_value(v);
    if (!json_is_number(v) || !(x >= 0) || !isfinite(x) ||
        (isfinite(max) && !((float)x <= (float)max))) {
        char what[80];
        if (isfinite(max))
            snprintf(what, sizeof what, "must be a number from 0 to %g", max);
        else
            snprintf(what, sizeof what, "must be a finite number, at least 0");
        bad_value(r, key, what);
        return 0.0;
    }
    return x;
}

static uint64_t read_hex(state_reader *r, json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    char *end = NULL;
    uint64_t v = s ? strtoull(s, &end, 16) : 0;
    if (!s || end == s || *end)
        bad_value(r, key, "must be a hexadecimal string");
    return v;
}

/* A JSON string into buf; "" when it is absent or not a string. */
static void copy_string(char *buf, size_t n, json_t *v)
{
    snprintf(buf, n, "%s", json_is_string(v) ? json_string_value(v) : "");
}

/* An array of strings (sinks, plugins) that must be one when it is there; n 0 when absent. */
static void read_strings(state_reader *r, json_t *obj, const char *key,
                         char (*items)[4096], int max, int *n)
{
    json_t *v = json_object_get(obj, key);
    *n = 0;
    if (v && (!json_is_array(v) || json_array_size(v) > (size_t)max)) {
        bad_value(r, key, "must be an array of at most 8 strings");
        return;
    }
    for (size_t i = 0; v && i < json_array_size(v) && !r->failed; i++) {
        json_t *item = json_array_get(v, i);
        if (!json_is_string(item) || strlen(json_string_value(item)) >= sizeof items[0])
            bad_value(r, key, "must be an array of strings shorter than 4096 bytes");
        else
            copy_string(items[(*n)++], sizeof items[0], item);
    }
}

/* A string that must be one when it is there; its value in buf, "" when absent. */
static void read_string(state_reader *r, json_t *obj, const char *key, char *buf, size_t n)
{
    json_t *v = json_object_get(obj, key);
    if (v && (!json_is_string(v) || strlen(json_string_value(v)) >= n)) {
        char what[64];
        snprintf(what, sizeof what, "must be a string shorter than %zu bytes", n);
        bad_value(r, key, what);
    }
    copy_string(buf, n, v);
}

/* --best-by's measure at obj's "best_by": 1 answers, 0 loss (or absent) */
static int read_best_by(state_reader *r, json_t *obj)
{
    char by[16] = "";
    read_string(r, obj, "best_by", by, sizeof by);
    if (by[0] && strcmp(by, "answers") != 0 && strcmp(by, "loss") != 0)
        bad_value(r, "best_by", "must be loss or answers");
    return strcmp(by, "answers") == 0;
}

/* The run's inputs and optimizer settings (checkpoint_state's last fields), each optional. */
static void read_inputs(state_reader *r, json_t *run, checkpoint_state *st)
{
    json_t *data = json_object_get(run, "data"), *eval = json_object_get(run, "eval_data");
    if (data && (!json_is_array(data) || json_array_size(data) > CHECKPOINT_MAX_DATA))
        bad_value(r, "data", "must be an array of at most 16 sources");
    for (size_t i = 0; json_is_array(data) && i < json_array_size(data) && !r->failed; i++) {
        json_t *source = json_array_get(data, i);
        ds_source *d = &st->data[st->n_data++];
        read_string(r, source, "path", d->path, sizeof d->path);
        d->weight = read_number(r, source, "weight", DS_MAX_WEIGHT, REQUIRED);
        if (!d->path[0] || !(d->weight > 0))
            bad_value(r, "data", "must name each source's path, with a weight above 0");
    }
    if (eval && (!json_is_array(eval) || json_array_size(eval) > CHECKPOINT_MAX_EVAL))
        bad_value(r, "eval_data", "must be an array of at most 8 files");
    for (size_t i = 0; json_is_array(eval) && i < json_array_size(eval) && !r->failed; i++) {
        json_t *path = json_array_get(eval, i);
        if (!json_is_string(path) || !*json_string_value(path) ||
            strlen(json_string_value(path)) >= sizeof st->eval_data[0])
            bad_value(r, "eval_data", "must be an array of paths");
        else
            copy_string(st->eval_data[st->n_eval++], sizeof st->eval_data[0], path);
    }
    read_string(r, run, "eval_choices", st->eval_choices, sizeof st->eval_choices);
    read_string(r, run, "eval_generate", st->eval_generate, sizeof st->eval_generate);
    read_string(r, run, "eval_samples", st->eval_samples, sizeof st->eval_samples);
    read_string(r, run, "format", st->format, sizeof st->format);
    read_string(r, run, "template", st->template_name, sizeof st->template_name);
    if (st->template_name[0] && !template_find(st->template_name))
        bad_value(r, "template", "must name a template pesc knows (see pesc train --help)");
    char schedule[32];
    read_string(r, run, "schedule", schedule, sizeof schedule);
    optim_schedule parsed;
    pesc_error ignored;
    st->schedule = -1;
    if (schedule[0] && optim_parse_schedule(schedule, &parsed, &ignored) != 0)
        bad_value(r, "schedule", "must be constant, cosine or linear");
    else if (schedule[0])
        st->schedule = (int)parsed;
    st->warmup = read_integer(r, run, "warmup", 0, TRAIN_MAX_STEPS, -1);
    st->weight_decay = read_number(r, run, "weight_decay", TRAIN_MAX_LR, -1.0);
    st->clip = read_number(r, run, "clip", TRAIN_MAX_CLIP, -1.0);
    st->neftune = read_number(r, run, "neftune", TRAIN_MAX_NEFTUNE, -1.0);
    st->epochs = (int)read_integer(r, run, "epochs", 1, TRAIN_MAX_EPOCHS, 0);
    read_string(r, run, "save", st->save_dir, sizeof st->save_dir);
    read_string(r, run, "log", st->log, sizeof st->log);
    read_strings(r, run, "sinks", st->sinks, CHECKPOINT_MAX_SINKS, &st->n_sinks);
    read_strings(r, run, "plugins", st->plugins, CHECKPOINT_MAX_SINKS, &st->n_plugins);
    st->save_every = read_integer(r, run, "save_every", 0, TRAIN_MAX_STEPS, -1);
    st->eval_every = read_integer(r, run, "eval_every", 0, TRAIN_MAX_STEPS, -1);
    st->keep = (int)read_integer(r, run, "keep", 1, TRAIN_MAX_KEEP, -1);
    json_t *best = json_object_get(run, "keep_best");
    if (best && !json_is_boolean(best))
        bad_value(r, "keep_best", "must be true or false");
    st->keep_best = best ? json_is_true(best) : -1;
    st->keep_best_by = read_best_by(r, run);
}

int checkpoint_read_state(const char *dir, checkpoint_state *st, pesc_error *err)
{
    char *path = pesc_path_join(dir, STATE_FILE);
    json_error_t jerr;
    json_t *o = json_load_file(path, 0, &jerr);
    if (!o || !json_is_object(o)) {
        /* a hand edit or a copy cut short: said as the key checks below say it */
        pesc_fail(err, "%s: %s (the file is damaged, or not a pesc checkpoint's: use "
                  "another checkpoint)", path, o ? "not a JSON object" : jerr.text);
        json_decref(o);
        free(path);
        return -1;
    }
    state_reader r = {.path = path, .err = err};
    memset(st, 0, sizeof *st);
    st->step = read_integer(&r, o, "step", 0, LONG_MAX, REQUIRED);
    st->total_steps = read_integer(&r, o, "total_steps", 0, LONG_MAX, REQUIRED);
    json_t *lr = json_object_get(o, "lr_override");
    /* the live lr can be multiplied past --lr's bound (lr *10, twice): only finite */
    st->lr_override = json_is_null(lr) || !lr ? -1.0
                      : read_number(&r, o, "lr_override", INFINITY, REQUIRED);
    st->lr_scale = read_number(&r, o, "lr_scale", INFINITY, 1.0);
    st->aux_coef = read_number(&r, o, "aux_coef", PESC_MAX_COEF, REQUIRED);
    st->model_rng = read_hex(&r, o, "model_rng");
    json_t *cur = json_object_get(o, "data_cursor");
    if (!json_is_object(cur))
        bad_value(&r, "data_cursor", "must be an object");
    st->cursor.epoch = read_integer(&r, cur, "epoch", 0, LONG_MAX, REQUIRED);
    st->cursor.position = read_integer(&r, cur, "position", 0, LONG_MAX, REQUIRED);
    st->cursor.fingerprint = read_hex(&r, cur, "fingerprint");
    /* absent from checkpoints written before it was kept: such a cursor is not checked on it */
    st->cursor.content = json_object_get(cur, "content") ? read_hex(&r, cur, "content") : 0;
    st->tokens = read_integer(&r, o, "tokens", 0, LONG_MAX, 0);
    st->elapsed_s = read_number(&r, o, "elapsed_s", INFINITY, 0.0);
    st->nan_skipped = read_integer(&r, o, "nan_skipped", 0, LONG_MAX, 0);
    json_t *pending = json_object_get(o, "eval_pending");
    if (pending && !json_is_boolean(pending))
        bad_value(&r, "eval_pending", "must be true or false");
    st->eval_pending = json_is_true(pending);
    st->eval_samples_bytes = read_integer(&r, o, "eval_samples_bytes", 0, LONG_MAX, -1);
    st->best_step =
        json_object_get(o, "best_step") ? read_integer(&r, o, "best_step", 1, LONG_MAX, 0) : -1;
    st->best_by = read_best_by(&r, o);
    st->best_value = st->best_step < 0 ? 0.0
                     : read_number(&r, o, st->best_by ? "best_eval_answers" : "best_eval_loss",
                                   INFINITY, REQUIRED);
    st->best_eval_data = st->best_step >= 0 && json_object_get(o, "best_eval_data")
                             ? read_hex(&r, o, "best_eval_data") : 0;
    st->base_fingerprint = read_hex(&r, o, "base_fingerprint");
    json_t *run = json_object_get(o, "run");
    if (!json_is_object(run))
        bad_value(&r, "run", "must be an object");
    pesc_options *p = &st->pesc;
    pesc_options_default(p);
    json_t *mode = json_object_get(run, "train");
    if (mode && !(json_is_string(mode) && (!strcmp(json_string_value(mode), "pesc") ||
                                           !strcmp(json_string_value(mode), "full"))))
        bad_value(&r, "train", "must be \"pesc\" or \"full\"");
    p->mode = json_is_string(mode) && !strcmp(json_string_value(mode), "full") ? TRAIN_FULL
                                                                                : TRAIN_PESC;
    p->experts = (int)read_integer(&r, run, "experts", 1, PESC_MAX_EXPERTS, REQUIRED);
    p->top_k = (int)read_integer(&r, run, "top_k", 1, PESC_MAX_EXPERTS, REQUIRED);
    p->adapter_dim = (int)read_integer(&r, run, "adapter_dim", 1, PESC_MAX_ADAPTER_DIM, REQUIRED);
    p->adapter_scale = (float)read_number(&r, run, "adapter_scale", PESC_MAX_COEF, REQUIRED);
    p->adapter_dropout = (float)read_number(&r, run, "adapter_dropout", PESC_MAX_DROPOUT, 0.0);
    p->z_coef = (float)read_number(&r, run, "z_coef", PESC_MAX_COEF, 0.0);
    p->lora_rank = (int)read_integer(&r, run, "lora_rank", 0, PESC_MAX_LORA_RANK, 0);
    p->lora_alpha = (float)read_number(&r, run, "lora_alpha", PESC_MAX_COEF, p->lora_alpha);
    p->lora_targets = (unsigned)read_integer(&r, run, "lora_targets", 1,
                                             (1 << LORA_SITES) - 1, p->lora_targets);
    st->seq = (int)read_integer(&r, run, "seq", 2, TRAIN_MAX_SEQ, REQUIRED);
    st->batch = (int)read_integer(&r, run, "batch", 1, TRAIN_MAX_BATCH, REQUIRED);
    st->grad_accum = (int)read_integer(&r, run, "grad_accum", 1, TRAIN_MAX_BATCH, REQUIRED);
    if ((long)st->batch * st->seq > TRAIN_MAX_TOKENS) {
        char what[96];
        snprintf(what, sizeof what, "x \"seq\" must be at most %d tokens per micro-batch, as "
                 "--batch x --seq", TRAIN_MAX_TOKENS);
        bad_value(&r, "batch", what);
    }
    json_t *pack = json_object_get(run, "pack");
    if (pack && !json_is_boolean(pack))
        bad_value(&r, "pack", "must be true or false");
    st->pack = pack ? json_is_true(pack) : -1;
    st->eval_split = read_number(&r, run, "eval_split", TRAIN_MAX_EVAL_SPLIT, 0.0);
    st->run_lr = read_number(&r, run, "lr", TRAIN_MAX_LR, -1.0);
    st->run_aux_coef = read_number(&r, run, "aux_coef", PESC_MAX_COEF, -1.0);
    st->seed = read_hex(&r, run, "seed");
    copy_string(st->base_model, sizeof st->base_model, json_object_get(run, "model"));
    copy_string(st->init_config, sizeof st->init_config, json_object_get(run, "init_config"));
    copy_string(st->tokenizer, sizeof st->tokenizer, json_object_get(run, "tokenizer"));
    read_inputs(&r, run, st);
    p->aux_coef = (float)st->aux_coef;
    pesc_error check;
    if (!r.failed && p->mode == TRAIN_PESC && pesc_options_check(p, &check) != 0) {
        pesc_fail(err, "%s: the crafting is invalid: %s", path, check.msg);
        r.failed = 1;
    }
    json_decref(o);
    free(path);
    return r.failed ? -1 : 0;
}

/* ---- saving ------------------------------------------------------------------------------- */

static int save_optimizer(const char *path, model *m, optimizer *opt, pesc_error *err)
{
    float *host = xmalloc(2 * opt->n * sizeof *host);
    backend_download(m->backend, host, opt->m, opt->n * sizeof *host);
    backend_download(m->backend, host + opt->n, opt->v, opt->n * sizeof *host);
    char step[32];
    snprintf(step, sizeof step, "%ld", opt->step);
    st_write_tensor t[2] = {
        {.name = "adam_m", .dtype = ST_F32, .ndim = 1, .shape = {(int64_t)opt->n}, .data = host},
        {.name = "adam_v", .dtype = ST_F32, .ndim = 1, .shape = {(int64_t)opt->n}, .data = host + opt->n}};
    const char *keys[] = {"format", "adam_step"}, *values[] = {"pt", step};
    int rc = st_write(path, t, 2, keys, values, 2, err);
    free(host);
    return rc;
}

/* Only the names pesc writes ("step-%08ld"): a user's "step-3" (an export, say) or "step- 7"
 * beside them is neither listed, resumed nor rotated out. */
int checkpoint_name_step(const char *name, long *step)
{
    if (strncmp(name, "step-", 5) != 0 || !isdigit((unsigned char)name[5]))
        return 0;
    char *end, canonical[32];
    errno = 0;
    *step = strtol(name + 5, &end, 10);
    if (errno || *end)
        return 0;
    snprintf(canonical, sizeof canonical, "step-%08ld", *step);
    return strcmp(name, canonical) == 0;
}

/* Puts back what a save of a step that was there already left aside when its process died
 * between its two renames (".tmp-step-N-PID.old", the whole old copy, with no step-N). */
static void restore_interrupted(const char *save_dir)
{
    DIR *d = opendir(save_dir);
    for (struct dirent *e; d && (e = readdir(d));)
        if (strncmp(e->d_name, ".tmp-step-", 10) == 0)
            pesc_dir_restore_aside(save_dir, e->d_name);
    if (d)
        closedir(d);
}

/* Removes stale temporary checkpoints (".tmp-step-N-PID" and its ".old", from
 * pesc_dir_begin / pesc_dir_commit; ".tmp-best-PID") and all but the newest `keep` of those
 * up to step `upto` and the one of step `kept` (--keep-best's):
 * checkpoint_claim has made sure that those are this run's, so a checkpoint past the run's
 * own step is never touched. */
static void prune(const char *save_dir, int keep, long upto, long kept)
{
    DIR *d = opendir(save_dir);
    if (!d)
        return;
    long steps[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long step;
        if (strncmp(e->d_name, ".tmp-step-", 10) == 0 ||
            strncmp(e->d_name, ".tmp-best-", 10) == 0) {
            char *p = pesc_path_join(save_dir, e->d_name);
            pesc_remove_tree(p);
            free(p);
        } else if (checkpoint_name_step(e->d_name, &step) && step <= upto && n < 4096) {
            steps[n++] = step;
        }
    }
    closedir(d);
    for (int i = 0; i < n; i++) {
        int newer = 0;
        for (int j = 0; j < n; j++)
            newer += steps[j] > steps[i];
        if (newer >= keep && steps[i] != kept) {
            char name[64];
            snprintf(name, sizeof name, "step-%08ld", steps[i]);
            char *p = pesc_path_join(save_dir, name);
            pesc_remove_tree(p);
            free(p);
        }
    }
}

/* The newest checkpoint step in dir past `after` (-1 for any), or -1 when there is none. */
static long newest_step_after(const char *dir, long after)
{
    DIR *d = opendir(dir);
    long best = -1, step;
    struct dirent *e;
    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (checkpoint_name_step(e->d_name, &step) && step > after && step > best)
            best = step;
    closedir(d);
    return best;
}

/* 0 when dir/state.json can be read, else the errno that says why not. */
static int state_unreadable(const char *dir)
{
    char *state = pesc_path_join(dir, STATE_FILE);
    int error = access(state, R_OK) == 0 ? 0 : errno;
    free(state);
    return error;
}

int checkpoint_claim(const char *save_dir, const char *resumed, long resumed_step,
                     pesc_error *err)
{
    restore_interrupted(save_dir);   /* a checkpoint put back counts as any other */
    if (!resumed) {
        long other = newest_step_after(save_dir, -1);
        if (other >= 0)
            return pesc_fail(err, "--save %s already holds another run's checkpoints (step-%08ld); "
                             "continue that run with --resume %s, or name an empty directory",
                             save_dir, other, save_dir);
        return 0;
    }
    char *parent = pesc_parent_dir(resumed);
    int from_here = pesc_same_file(parent, save_dir);
    free(parent);
    long other = newest_step_after(save_dir, from_here ? resumed_step : -1);
    if (other < 0)
        return 0;
    char name[32];
    snprintf(name, sizeof name, "step-%08ld", other);
    char *other_dir = pesc_path_join(save_dir, name);
    int incomplete = state_unreadable(other_dir) == ENOENT;
    free(other_dir);
    if (from_here && incomplete)
        return pesc_fail(err, "--save %s holds %s, past the resumed step %ld, with no "
                         STATE_FILE ": a save that did not finish; remove it to go on from "
                         "step %ld, or save this branch of the run in another directory",
                         save_dir, name, resumed_step, resumed_step);
    if (from_here)
        return pesc_fail(err, "--save %s holds %s, past the resumed step %ld, and this run "
                         "would overwrite it; save this branch of the run in another "
                         "directory", save_dir, name, resumed_step);
    return pesc_fail(err, "--save %s already holds another run's checkpoints (step-%08ld), and "
                     "this run continues %s; name an empty directory, or save where it was "
                     "saved", save_dir, other, resumed);
}

/* The pid is only for the message of a run refused here: without it the lock holds all the
 * same. */
static void record_holder(int fd)
{
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len)
        return;
}

/* Whether the file fd has locked is still the one at path: a run that gave up an unused
 * directory (checkpoint_unlock_unused) unlinks its lock file, and a lock taken on it since
 * holds nothing. */
static int lock_still_linked(int fd, const char *path)
{
    struct stat held, named;
    return fstat(fd, &held) == 0 && stat(path, &named) == 0 && held.st_dev == named.st_dev &&
           held.st_ino == named.st_ino;
}

/* " (pid N)" of the run that holds the lock fd is open on, as record_holder wrote it; ""
 * when it is not known. */
static void holder_of(int fd, char *holder, size_t n)
{
    char recorded[24] = "";
    holder[0] = '\0';
    if (pread(fd, recorded, sizeof recorded - 1, 0) > 0 && strtol(recorded, NULL, 10) > 0)
        snprintf(holder, n, " (pid %ld)", strtol(recorded, NULL, 10));
}

/* Whether a live run holds dir's lock (saves into it); its holder_of in holder. */
static int lock_held(const char *dir, char *holder, size_t n)
{
    char *path = pesc_path_join(dir, LOCK_FILE);
    int fd = pesc_open_if_locked(path);
    free(path);
    if (fd < 0)
        return 0;
    holder_of(fd, holder, n);
    close(fd);
    return 1;
}

int checkpoint_lock(const char *save_dir, pesc_error *err)
{
    char *path = pesc_path_join(save_dir, LOCK_FILE);
    int fd, locked;
    for (int tries = 1;; tries++) {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        locked = fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0;
        if (!locked || lock_still_linked(fd, path) || tries == 8)
            break;
        close(fd);   /* locked after its holder unlinked it: again, on the file made anew */
        pesc_make_dirs(save_dir);
    }
    if (fd < 0) {
        pesc_fail(err, "--save %s: cannot create its lock file %s: %s", save_dir, path,
                  strerror(errno));
    } else if (!locked) {
        int error = errno;   /* flock's */
        char holder[32] = "";
        holder_of(fd, holder, sizeof holder);
        if (error == EWOULDBLOCK)
            pesc_fail(err, "--save %s is in use by another run%s; wait for it to end, or save "
                      "in another directory", save_dir, holder);
        else
            pesc_fail(err, "--save %s: cannot lock %s: %s", save_dir, path, strerror(error));
        close(fd);
        fd = -1;
    } else {
        record_holder(fd);
    }
    free(path);
    return fd;
}

void checkpoint_unlock(int lock)
{
    if (lock >= 0)
        close(lock);   /* releases the flock */
}

void checkpoint_unlock_unused(int lock, const char *save_dir)
{
    if (lock < 0)
        return;
    char *path = pesc_path_join(save_dir, LOCK_FILE);
    /* held, and still the directory's: no other run can have taken it meanwhile (removed
     * while the run went, the directory may be another run's now) */
    int ours = lock_still_linked(lock, path);
    if (ours)
        unlink(path);
    free(path);
    close(lock);
    if (ours)
        rmdir(save_dir);
}

int checkpoint_prepare(const char *save_dir, pesc_error *err)
{
    struct stat st;
    if (pesc_make_dirs(save_dir) != 0 && !(errno == ENOTDIR && stat(save_dir, &st) == 0))
        return pesc_fail(err, "--save %s: cannot create it: %s (name a directory where this "
                         "user may write)", save_dir, strerror(errno));
    if (stat(save_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return pesc_fail(err, "--save %s is not a directory; name a directory for the "
                         "checkpoints", save_dir);
    if (access(save_dir, W_OK | X_OK) != 0)
        return pesc_fail(err, "--save %s: cannot write in it: %s", save_dir, strerror(errno));
    return 0;
}

int checkpoint_relock(int *lock, const char *save_dir, struct stat *dir, pesc_error *err)
{
    char *path = pesc_path_join(save_dir, LOCK_FILE);
    int linked = lock_still_linked(*lock, path);
    free(path);
    if (linked)
        return 0;
    char holder[32] = "";
    if (lock_held(save_dir, holder, sizeof holder))
        return pesc_fail(err, "--save %s was removed while the run was on, and another run%s "
                         "saves there now: this run does not save there (nor rotates that "
                         "run's checkpoints out) while it does", save_dir, holder);
    struct stat now;
    int same = stat(save_dir, &now) == 0 && now.st_dev == dir->st_dev &&
               now.st_ino == dir->st_ino;   /* only the lock file went */
    int fresh;   /* when neither can be, its error says why (a file there now, say) */
    if (checkpoint_prepare(save_dir, err) != 0 || (fresh = checkpoint_lock(save_dir, err)) < 0)
        return -1;
    long other = same ? -1 : newest_step_after(save_dir, -1);
    if (other >= 0) {
        checkpoint_unlock(fresh);
        return pesc_fail(err, "--save %s was removed while the run was on, and holds another "
                         "run's checkpoints (step-%08ld) now: this run does not save there (nor "
                         "rotates them out)", save_dir, other);
    }
    checkpoint_unlock(*lock);
    *lock = fresh;
    stat(save_dir, dir);
    return same ? CHECKPOINT_LOCK_RENEWED : CHECKPOINT_RELOCKED;
}

int checkpoint_save(const char *save_dir, int keep, long kept, model *m, optimizer *opt,
                    const checkpoint_state *st, char **saved, pesc_error *err)
{
    if (checkpoint_prepare(save_dir, err) != 0)
        return -1;
    char name[64];
    snprintf(name, sizeof name, "step-%08ld", st->step);
    char *final = pesc_path_join(save_dir, name), *tmp = NULL;
    if (pesc_dir_begin(final, &tmp, err) != 0) {
        free(final);
        return -1;
    }
    char *trainables = pesc_path_join(tmp, TRAINABLES_FILE);
    char *moments = pesc_path_join(tmp, OPTIMIZER_FILE), *state = pesc_path_join(tmp, STATE_FILE);
    char *text = state_json(st);
    int rc = -1;
    /* a checkpoint of the same step (saved again after a resume) is replaced */
    if (model_save_trainables(m, trainables, err) != 0 || save_optimizer(moments, m, opt, err) ||
        pesc_write_file(state, text, strlen(text), err) != 0 ||
        pesc_dir_commit(tmp, final, err) != 0)
        goto out;
    prune(save_dir, keep, st->step, kept);
    if (saved)
        *saved = xstrdup(final);
    rc = 0;
out:
    if (rc != 0)
        pesc_dir_abort(tmp);
    free(text);
    free(state);
    free(moments);
    free(trainables);
    free(tmp);
    free(final);
    return rc;
}

int checkpoint_mark_best(const char *save_dir, int keep, long step, pesc_error *err)
{
    char target[64], name[64];
    snprintf(target, sizeof target, "step-%08ld", step);
    snprintf(name, sizeof name, ".tmp-best-%ld", (long)getpid());
    char *tmp = pesc_path_join(save_dir, name), *best = pesc_path_join(save_dir, "best");
    int rc = 0;
    unlink(tmp);
    if (symlink(target, tmp) != 0 || rename(tmp, best) != 0) {
        rc = pesc_fail(err, "%s: %s (the best checkpoint is %s)", best, strerror(errno), target);
        unlink(tmp);
    } else {
        prune(save_dir, keep, step, step);
    }
    free(tmp);
    free(best);
    return rc;
}

/* ---- loading ------------------------------------------------------------------------------ */

/* The newest step-N in save_dir below `below` whose state.json reads (-1: none; -2, errno
 * set, when save_dir cannot be listed), and the newest that does not, with why (*bad -1:
 * none). */
static long newest_checkpoint(const char *save_dir, long below, long *bad, int *bad_error)
{
    long best = -1, step;
    *bad = -1;
    DIR *d = opendir(save_dir);
    if (!d)
        return -2;
    struct dirent *e;
    while ((e = readdir(d)))
        if (checkpoint_name_step(e->d_name, &step) && step < below && step > best) {
            char *p = pesc_path_join(save_dir, e->d_name);
            int error = state_unreadable(p);
            if (error == 0) {
                best = step;
            } else if (step > *bad) {
                *bad = step;
                *bad_error = error;
            }
            free(p);
        }
    closedir(d);
    return best;
}

static char *checkpoint_dir(const char *save_dir, long step)
{
    char name[64];
    snprintf(name, sizeof name, "step-%08ld", step);
    return pesc_path_join(save_dir, name);
}

int checkpoint_there(const char *save_dir, long step)
{
    char *dir = checkpoint_dir(save_dir, step);
    int there = state_unreadable(dir) != ENOENT;
    free(dir);
    return there;
}

char *checkpoint_older(const char *save_dir, long step)
{
    long bad;
    int bad_error;
    long best = newest_checkpoint(save_dir, step, &bad, &bad_error);
    return best < 0 ? NULL : checkpoint_dir(save_dir, best);
}

int checkpoint_find(const char *path, char **dir, pesc_error *err)
{
    int error = state_unreadable(path);
    if (error == 0) {
        *dir = xstrdup(path);
        return 0;
    }
    if (error != ENOENT && error != ENOTDIR)   /* a checkpoint, or a directory, not readable */
        return pesc_fail(err, "%s/" STATE_FILE ": %s (make it readable)", path,
                         strerror(error));
    restore_interrupted(path);
    /* the newest readable checkpoint, and the newest that is not (with why) */
    long bad;
    int bad_error = 0;
    long best = newest_checkpoint(path, LONG_MAX, &bad, &bad_error);
    if (best == -2)
        return pesc_fail(err, "%s: %s", path, strerror(errno));
    /* one that vanished (replaced by a save of the same step, or rotated out) is passed over;
     * one that cannot be read is not, rather than resume an older one without a word */
    if (bad > best && (best < 0 || bad_error != ENOENT))
        return pesc_fail(err, "%s/step-%08ld/" STATE_FILE ": %s (%s)", path, bad,
                         strerror(bad_error), bad_error == ENOENT ?
                         "not a complete checkpoint, and there is no other here" :
                         "make it readable, or name an older step-N directory");
    if (best < 0) {
        int unfinished = 0;
        DIR *d = opendir(path);
        for (struct dirent *e; d && (e = readdir(d));)
            unfinished |= strncmp(e->d_name, ".tmp-step-", 10) == 0;
        if (d)
            closedir(d);
        char holder[32];
        if (lock_held(path, holder, sizeof holder))   /* a run is at work in it */
            pesc_fail(err, "%s: no checkpoint yet: a run%s saves into it and has saved none; "
                      "wait for its first save", path, holder);
        else
            pesc_fail(err, "%s: no checkpoint here (expected state.json, or step-N directories "
                      "written by --save)%s", path, unfinished ? "; only an unfinished save "
                      "(.tmp-step-...), stopped before its end: start the run again without "
                      "--resume" : "");
        return CHECKPOINT_NONE;
    }
    *dir = checkpoint_dir(path, best);
    return 0;
}

int checkpoint_load_adapters(model *m, const char *path, pesc_error *err)
{
    struct stat st;
    char *dir = NULL;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))   /* what it is, or why not, the open says */
        return model_load_trainables(m, path, err);
    if (checkpoint_find(path, &dir, err) != 0)
        return -1;
    char *file = pesc_path_join(dir, TRAINABLES_FILE);
    int rc = model_load_trainables(m, file, err);
    free(file);
    free(dir);
    return rc;
}

int checkpoint_of_adapters(const char *path, char **dir, checkpoint_state *st, pesc_error *err)
{
    struct stat sb;
    *dir = NULL;
    if (stat(path, &sb) == 0 && !S_ISDIR(sb.st_mode)) {   /* a checkpoint's file: its state */
        char *parent = pesc_parent_dir(path), *state = pesc_path_join(parent, STATE_FILE);
        int inside = access(state, F_OK) == 0;
        free(state);
        if (!inside) {
            free(parent);
            pesc_fail(err, "%s is not in a checkpoint (no " STATE_FILE " beside it)", path);
            return CHECKPOINT_NONE;
        }
        *dir = parent;
    } else if (checkpoint_find(path, dir, err) != 0) {
        return -1;
    }
    if (checkpoint_read_state(*dir, st, err) == 0)
        return 0;
    free(*dir);
    *dir = NULL;
    return -1;
}

int checkpoint_base_find(const checkpoint_state *st, const char *ckpt, checkpoint_base *b,
                         pesc_error *err)
{
    *b = (checkpoint_base){0};
    if (st->base_model[0]) {
        if (access(st->base_model, R_OK) != 0)
            return pesc_fail(err, "%s/" STATE_FILE ": its base model %s is not there any more "
                             "(%s); name it with --model DIR", ckpt, st->base_model,
                             strerror(errno));
        b->dir = xstrdup(st->base_model);
        b->config = pesc_path_join(b->dir, "config.json");
        return 0;
    }
    if (st->init_config[0]) {
        if (access(st->init_config, R_OK) != 0)
            return pesc_fail(err, "%s/" STATE_FILE ": the run started from --init-config %s, "
                             "which is not there any more (%s); name a base with --model DIR",
                             ckpt, st->init_config, strerror(errno));
        b->config = xstrdup(st->init_config);
        return 0;
    }
    return pesc_fail(err, "%s/" STATE_FILE " does not say which base model was trained (the "
                     "checkpoint is older than pesc export); name it with --model DIR", ckpt);
}

int checkpoint_base_load(model *m, const checkpoint_base *b, const checkpoint_state *st,
                         pesc_backend *be, pesc_error *err)
{
    if (b->dir)
        return model_load(m, b->dir, be, err);
    return model_init_config(m, b->config, be, st->seed, err);
}

void checkpoint_base_free(checkpoint_base *b)
{
    free(b->dir);
    free(b->config);
    *b = (checkpoint_base){0};
}

/* adam_step: the updates the moments have seen, which AdamW's bias correction divides by
 * (1 - beta^step): a plain decimal from 0, not strtol's best guess at one ("abc" was step 0,
 * "-3" a negative step). */
static int read_adam_step(const char *path, const char *text, long *step, pesc_error *err)
{
    char *end = NULL;
    errno = 0;
    long v = isdigit((unsigned char)text[0]) ? strtol(text, &end, 10) : -1;
    if (v < 0 || errno || *end) {
        char shown[48];
        pesc_show_controls(shown, sizeof shown, text);
        return pesc_fail(err, "%s: metadata adam_step \"%s\" is not a count of steps (digits, "
                         "0 or more, that fit a long): the file is damaged (use another "
                         "checkpoint)", path, shown);
    }
    *step = v;
    return 0;
}

/* AdamW divides by sqrt(v): a NaN or inf in either moment, or a negative second moment (a
 * mean of squares cannot be one), makes every update from the first step non-finite. */
static int check_moment(const char *path, const char *name, const float *x, size_t n,
                        int squares, pesc_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]) || (squares && x[i] < 0))
            return pesc_fail(err, "%s: %s holds %s at element %zu: the file is damaged (use "
                             "another checkpoint)", path, name,
                             isnan(x[i]) ? "NaN" : isinf(x[i]) ? "inf" : "a negative value", i);
    return 0;
}

int checkpoint_load(const char *dir, model *m, optimizer *opt, pesc_error *err)
{
    char *trainables = pesc_path_join(dir, TRAINABLES_FILE);
    char *moments = pesc_path_join(dir, OPTIMIZER_FILE);
    st_file f = {0};
    int rc = -1;
    if (model_load_trainables(m, trainables, err) != 0 || st_open(&f, moments, err) != 0)
        goto out;
    const st_tensor *mt = st_find(&f, "adam_m"), *vt = st_find(&f, "adam_v");
    const char *step = st_meta(&f, "adam_step");
    if (!mt || !vt || !step || mt->n_elements != opt->n || vt->n_elements != opt->n ||
        mt->dtype != ST_F32 || vt->dtype != ST_F32) {
        pesc_fail(err, "%s: AdamW moments missing or sized for another model (%zu values "
                  "expected)", moments, opt->n);
        goto out;
    }
    long step_count = 0;
    if (read_adam_step(moments, step, &step_count, err) != 0)
        goto out;
    float *host = xmalloc(opt->n * sizeof *host);
    st_to_f32(mt, host, err);
    rc = check_moment(moments, "adam_m", host, opt->n, 0, err);
    if (rc == 0) {
        backend_upload(m->backend, opt->m, host, opt->n * sizeof *host);
        st_to_f32(vt, host, err);
        rc = check_moment(moments, "adam_v", host, opt->n, 1, err);
    }
    if (rc == 0) {
        backend_upload(m->backend, opt->v, host, opt->n * sizeof *host);
        opt->step = step_count;
    }
    free(host);
out:
    st_close(&f);
    free(moments);
    free(trainables);
    return rc;
}

int checkpoint_load_weights(const char *dir, model *m, pesc_error *err)
{
    char *trainables = pesc_path_join(dir, TRAINABLES_FILE);
    int rc = model_load_trainables(m, trainables, err);
    free(trainables);
    return rc;
}

uint64_t checkpoint_fingerprint(model *m)
{
    uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a */
#define MIX(ptr, len)                                                                      \
    do {                                                                                   \
        const unsigned char *p_ = (const unsigned char *)(ptr);                            \
        for (size_t i_ = 0; i_ < (size_t)(len); i_++)                                      \
            h = (h ^ p_[i_]) * 0x100000001b3ull;                                           \
    } while (0)
    const hf_config *c = &m->config;
    MIX(c->architecture, strlen(c->architecture));
    int dims[] = {c->vocab_size, c->hidden_size, c->intermediate_size, c->n_layers, c->n_heads,
                  c->n_kv_heads, c->head_dim};
    MIX(dims, sizeof dims);
    for (int i = 0; i < m->n_base_tensors; i++) {
        const model_tensor *t = &m->base_tensors[i];
        float sample[MODEL_SAMPLE];
        size_t n = t->n < MODEL_SAMPLE ? t->n : MODEL_SAMPLE;
        MIX(t->name, strlen(t->name));
        MIX(t->shape, sizeof t->shape);
        model_base_sample(m, i, sample, n);   /* as loaded, before any packing */
        MIX(sample, n * sizeof *sample);
    }
#undef MIX
    return h;
}
