/* export — see export.h. */
#include "export.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "checkpoint.h"
#include "fetch_view.h"
#include "model.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "util.h"

/* What travels with the weights when the base has it. */
static const char *const side_files[] = {"tokenizer.json", "tokenizer_config.json",
                                         "special_tokens_map.json", "generation_config.json",
                                         "tokenizer.model"};

/* ---- the base of a checkpoint ------------------------------------------------------------- */

/* --model, else what state.json recorded. */
static int find_base(const export_options *o, const checkpoint_state *st, const char *ckpt,
                     checkpoint_base *b, pesc_error *err)
{
    if (!o->base)
        return checkpoint_base_find(st, ckpt, b, err);
    *b = (checkpoint_base){0};
    if (fetch_view_resolve_model(o->base, &b->dir, err) != 0)
        return -1;
    b->config = pesc_path_join(b->dir, "config.json");
    return 0;
}

/* ---- the output directory ----------------------------------------------------------------- */

static int is_empty_dir(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return 0;
    struct dirent *e;
    int empty = 1;
    while (empty && (e = readdir(d)))
        empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(d);
    return empty;
}

/* 1 when `inner` (an existing path) is `outer` or lies under it. */
static int lies_within(const char *inner, const char *outer)
{
    char a[PATH_MAX], b[PATH_MAX];
    if (!inner || !realpath(inner, a) || !realpath(outer, b))
        return 0;
    size_t n = strlen(b);
    return strncmp(a, b, n) == 0 && (a[n] == '\0' || a[n] == '/' || n == 1);
}

/* What --force may replace: an earlier export (a model directory, config.json in it), not a
 * run's --save directory (checkpoints, state.json, a run's lock: a live run would write on
 * into the export) nor a directory of other files. */
static int check_replaceable(const char *out, pesc_error *err)
{
    DIR *d = opendir(out);
    if (!d)
        return pesc_fail(err, "-o %s: %s", out, strerror(errno));
    int config = 0, empty = 1;
    const char *run = NULL;
    char name[64] = "";
    for (struct dirent *e; !run && (e = readdir(d));) {
        long step;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        empty = 0;
        config |= !strcmp(e->d_name, "config.json");
        if (checkpoint_name_step(e->d_name, &step) || !strcmp(e->d_name, "state.json") ||
            !strcmp(e->d_name, ".lock") || !strncmp(e->d_name, ".tmp-step-", 10)) {
            snprintf(name, sizeof name, "%.60s", e->d_name);
            run = name;
        }
    }
    closedir(d);
    if (run)
        return pesc_fail(err, "-o %s holds a run's checkpoints (%s): --force replaces an earlier "
                         "export, never a run's --save directory; choose another -o", out, run);
    if (!empty && !config)
        return pesc_fail(err, "-o %s is no earlier export (it has no config.json): --force "
                         "replaces only a model directory; choose another -o", out);
    return 0;
}

/* Refuses an out that exists and is not empty (without force), one that is not a directory,
 * and one that holds the checkpoint or the base: replacing it would destroy what is being
 * exported. */
static int check_out(const export_options *o, const char *ckpt, const checkpoint_base *b,
                     pesc_error *err)
{
    /* inside the checkpoint, the export would go with it when --keep rotates it away */
    char *parent = pesc_parent_dir(o->out);
    int within = lies_within(parent, ckpt);
    free(parent);
    if (within)
        return pesc_fail(err, "-o %s lies inside the checkpoint %s, and would be deleted with "
                         "it; choose a directory outside it", o->out, ckpt);
    struct stat st;
    if (lstat(o->out, &st) != 0)
        return 0;
    const char *inside = lies_within(ckpt, o->out) ? ckpt
                         : lies_within(b->dir, o->out) ? b->dir
                         : lies_within(b->config, o->out) ? b->config : NULL;
    if (inside)
        return pesc_fail(err, "-o %s holds %s, which this export reads; choose another -o",
                         o->out, inside);
    if (S_ISLNK(st.st_mode))
        return pesc_fail(err, "-o %s is a symbolic link; name the directory itself (--force "
                         "does not replace links)", o->out);
    if (!S_ISDIR(st.st_mode))   /* --force replaces a directory of outputs, never a file */
        return pesc_fail(err, "-o %s is a file, not a directory; choose a directory (--force "
                         "does not replace files)", o->out);
    if (!o->force && !(S_ISDIR(st.st_mode) && is_empty_dir(o->out)))
        return pesc_fail(err, "-o %s already exists and is not empty; choose another directory "
                         "or add --force to replace it", o->out);
    return o->force ? check_replaceable(o->out, err) : 0;
}

/* ---- config.json -------------------------------------------------------------------------- */

/* The shortest decimal that reads back as the same float: 0.1f is written 0.1. */
static double short_decimal(float f)
{
    char buf[32];
    for (int digits = 6; digits < 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)f);
        if ((float)strtod(buf, NULL) == f)
            return strtod(buf, NULL);
    }
    return (double)f;
}

/* The digits every real in v needs to read back exactly (at least printf's 6, which keeps
 * 10000.0 out of exponent form): jansson writes all reals with one precision, and 17 would
 * turn the base's 1e-05 into 1.0000000000000001e-05. */
static int real_digits(json_t *v)
{
    int most = 6;
    if (json_is_real(v)) {
        double x = json_real_value(v);
        char buf[40];
        for (; most < 17; most++) {
            snprintf(buf, sizeof buf, "%.*g", most, x);
            if (strtod(buf, NULL) == x)
                break;
        }
    } else if (json_is_object(v)) {
        const char *key;
        json_t *item;
        json_object_foreach(v, key, item) {
            int d = real_digits(item);
            most = d > most ? d : most;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item) {
            int d = real_digits(item);
            most = d > most ? d : most;
        }
    }
    return most;
}

/* Gemma3ForConditionalGeneration's export is its text model alone, as Gemma3ForCausalLM (whose
 * config is text_config's keys, with the same defaults; the top's token ids where it has
 * none): the vision tower is not written (takes root, returns the new one). */
static json_t *text_model_config(json_t *root)
{
    json_t *text = json_deep_copy(json_object_get(root, "text_config"));
    static const char *const top[] = {"bos_token_id", "eos_token_id", "pad_token_id",
                                      "torch_dtype", "transformers_version"};
    for (size_t i = 0; i < sizeof top / sizeof *top; i++)
        if (!json_object_get(text, top[i]) && json_object_get(root, top[i]))
            json_object_set(text, top[i], json_object_get(root, top[i]));
    json_t *archs = json_array();
    json_array_append_new(archs, json_string("Gemma3ForCausalLM"));
    json_object_set_new(text, "architectures", archs);
    json_object_set_new(text, "model_type", json_string("gemma3_text"));
    json_decref(root);
    return text;
}

static int write_config(const checkpoint_base *b, const checkpoint_state *st, const model *m,
                        int lora_rank, const char *path, pesc_error *err)
{
    char *base_text;
    size_t base_len;
    if (pesc_read_file(b->config, &base_text, &base_len, err) != 0)
        return -1;
    json_error_t jerr;
    const char *body = pesc_skip_bom(base_text, &base_len);   /* before base_len is read */
    json_t *root = json_loadb(body, base_len, JSON_REJECT_DUPLICATES, &jerr);
    free(base_text);
    if (!root)
        return pesc_fail(err, "%s: not valid JSON (line %d: %s)", b->config, jerr.line, jerr.text);
    if (m->config.nested_text)
        root = text_model_config(root);
    static const char *const keys[] = {"num_experts", "topk", "adapter_dim", "moe_scaling",
                                       "output_router_logits", "pesc_template",
                                       "pesc_base_fingerprint", "pesc_tuning_merged"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        json_object_del(root, keys[i]);
    if (m->crafted) {
        const pesc_options *p = &m->pesc;
        json_object_set_new(root, "num_experts", json_integer(p->experts));
        json_object_set_new(root, "topk", json_integer(p->top_k));
        json_object_set_new(root, "adapter_dim", json_integer(p->adapter_dim));
        json_object_set_new(root, "moe_scaling", json_real(short_decimal(p->adapter_scale)));
        json_object_set_new(root, "output_router_logits", json_false());
    }
    if (st->template_name[0])   /* what generate, eval and training on take where none is given */
        json_object_set_new(root, "pesc_template", json_string(st->template_name));
    if (st->base_fingerprint) {   /* so that its run's --adapters are not added to it again */
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, st->base_fingerprint);
        json_object_set_new(root, "pesc_base_fingerprint", json_string(hex));
    }
    if (lora_rank > 0 || m->pesc.mode == TRAIN_FULL)   /* the tuning is in the weights */
        json_object_set_new(root, "pesc_tuning_merged", json_true());
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                                      JSON_REAL_PRECISION(real_digits(root)));
    json_decref(root);
    size_t len = strlen(text);
    text = xrealloc(text, len + 2);
    strcpy(text + len, "\n");
    int rc = pesc_write_file(path, text, len + 1, err);
    free(text);
    return rc;
}

/* ---- model.safetensors -------------------------------------------------------------------- */

/* Where a written tensor's bytes come from when not from the base's file: one tensor on the
 * backend, or (Phi-3's qkv_proj, gate_up_proj) the parts to join, one after another. */
enum { MAX_PARTS = 3 };
typedef struct weight_source {
    const float *part[MAX_PARTS];   /* NULL after the last */
    size_t n[MAX_PARTS];
} weight_source;

typedef struct weight_writer {
    pesc_backend *backend;
    const weight_source *source;    /* (n) */
} weight_writer;

static int fill_from_device(void *ctx, int index, void *buf, size_t nbytes, pesc_error *err)
{
    const weight_writer *w = ctx;
    const weight_source *s = &w->source[index];
    char *to = buf;
    for (int i = 0; i < MAX_PARTS && s->part[i]; i++) {
        backend_download(w->backend, to, s->part[i], s->n[i] * sizeof(float));
        to += s->n[i] * sizeof(float);
    }
    (void)nbytes;   /* st_write_streamed sized buf from the tensor's shape: the parts' sum */
    return backend_check(w->backend, err);
}

static int lora_merged_into(const model *m, int rank, unsigned sites, const float *w)
{
    for (int l = 0; rank > 0 && l < m->config.n_layers; l++)
        for (int s = 0; s < LORA_SITES; s++)
            if ((sites & (1u << s)) && model_lora_weight(m, l, s) == w)
                return 1;
    return 0;
}

/* One tensor of the file: model tensor i, or for the first part of a joined tensor the whole
 * (its later parts are then skipped: 0). base: the base's files (NULL for random weights). A
 * base weight training left alone is the file's own bytes; everything else comes off the
 * backend in F32. */
static int plan_tensor(const model *m, int i, const st_set *base, int lora_rank,
                       unsigned lora_sites, char *name, size_t len, st_write_tensor *t,
                       weight_source *from)
{
    int is_base = i < m->n_base_tensors;
    const model_tensor *mt = is_base ? &m->base_tensors[i] : &m->trainables[i - m->n_base_tensors];
    int64_t first = 0, rows = mt->shape[0];
    int parts = is_base ? model_fused_part(&m->config, mt->name, name, len, &first, &rows) : 0;
    int changed = m->pesc.mode == TRAIN_FULL;
    if (parts == 0) {
        snprintf(name, len, "%s", mt->name);
        from->part[0] = mt->data;
        from->n[0] = mt->n;
        changed |= lora_merged_into(m, lora_rank, lora_sites, mt->data);
    } else if (first != 0) {
        return 0;
    }
    /* a joined tensor's parts, in their order in it (the model lists them so) */
    for (int j = i, found = 0; parts && found < parts && j < m->n_base_tensors; j++) {
        const model_tensor *part = &m->base_tensors[j];
        char joined[sizeof part->name];
        int64_t at, all;
        if (!model_fused_part(&m->config, part->name, joined, sizeof joined, &at, &all) ||
            strcmp(joined, name) != 0)
            continue;
        from->part[found] = part->data;
        from->n[found++] = part->n;
        changed |= lora_merged_into(m, lora_rank, lora_sites, part->data);
    }
    char in_file[160];   /* (Gemma3ForConditionalGeneration's text model's: written as model.*) */
    model_file_name(m, name, in_file, sizeof in_file);
    const st_tensor *src = is_base && base ? st_set_find(base, in_file, NULL) : NULL;
    int kept = src && !changed &&
               (src->dtype == ST_F32 || src->dtype == ST_F16 || src->dtype == ST_BF16);
    *t = (st_write_tensor){.name = name, .dtype = kept ? src->dtype : ST_F32, .ndim = mt->ndim,
                           .shape = {rows, mt->shape[1]}, .data = kept ? src->data : NULL};
    if (kept)
        *from = (weight_source){0};
    return 1;
}

static int write_weights(const model *m, const st_set *base, int lora_rank, unsigned lora_sites,
                         const char *path, export_report *r, pesc_error *err)
{
    int n = m->n_base_tensors + (m->crafted ? m->n_trainables : 0), written = 0;
    st_write_tensor *t = xcalloc((size_t)n, sizeof *t);
    weight_source *source = xcalloc((size_t)n, sizeof *source);
    char(*names)[sizeof m->base_tensors[0].name] = xcalloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        int k = written;
        if (!plan_tensor(m, i, base, lora_rank, lora_sites, names[k], sizeof names[k], &t[k],
                         &source[k]))
            continue;
        written++;
        r->kept += t[k].data != NULL;
        r->bytes += (double)t[k].shape[0] * (double)(t[k].ndim == 2 ? t[k].shape[1] : 1) *
                    (double)st_dtype_size(t[k].dtype);
    }
    r->tensors = written;
    const char *keys[] = {"format"}, *values[] = {"pt"};   /* transformers checks it */
    weight_writer w = {m->backend, source};
    int rc = st_write_streamed(path, t, written, fill_from_device, &w, keys, values, 1, err);
    free(names);
    free(source);
    free(t);
    return rc;
}

/* ---- the whole directory ------------------------------------------------------------------ */

static int copy_side_files(const checkpoint_base *b, const checkpoint_state *st, const char *tmp,
                           pesc_error *err)
{
    for (size_t i = 0; b->dir && i < sizeof side_files / sizeof *side_files; i++) {
        char *from = pesc_path_join(b->dir, side_files[i]), *to = pesc_path_join(tmp, side_files[i]);
        int rc = access(from, R_OK) == 0 ? pesc_copy_file(from, to, err) : 0;
        free(from);
        free(to);
        if (rc != 0)
            return -1;
    }
    if (!st->tokenizer[0])
        return 0;
    /* the run's own --tokenizer is the one its model was trained with, and so is the
     * tokenizer_config.json beside it (BOS, EOS, the chat template) or its absence */
    char *to = pesc_path_join(tmp, "tokenizer.json");
    int rc = pesc_copy_file(st->tokenizer, to, err);
    free(to);
    if (rc != 0)
        return pesc_fail_prefix(err, "the run's --tokenizer");
    char *dir = pesc_parent_dir(st->tokenizer);
    char *from = pesc_path_join(dir, "tokenizer_config.json");
    to = pesc_path_join(tmp, "tokenizer_config.json");
    if (access(from, R_OK) == 0)
        rc = pesc_copy_file(from, to, err);
    else
        unlink(to);   /* the base's would tell other BOS and EOS than the run used */
    free(to);
    free(from);
    free(dir);
    return rc != 0 ? pesc_fail_prefix(err, "the run's --tokenizer") : 0;
}

/* The tokenizer copy_side_files will copy (the run's --tokenizer, else the base's), read as
 * eval and generate will read it from the export, so that a damaged one fails here, before
 * anything is written, rather than in the exported model's first use. */
static int check_tokenizer(const checkpoint_base *b, const checkpoint_state *st,
                           pesc_error *err)
{
    char *path = st->tokenizer[0] ? xstrdup(st->tokenizer)
                 : b->dir         ? pesc_path_join(b->dir, "tokenizer.json")
                                  : NULL;
    if (!path || (!st->tokenizer[0] && access(path, F_OK) != 0)) {
        free(path);
        return 0;   /* none to copy: the export has none either */
    }
    tokenizer *t = tok_load(path, err);
    int rc = t ? 0 : pesc_fail_prefix(err, "%s, which export copies into the model directory",
                                      st->tokenizer[0] ? "the run's --tokenizer"
                                                       : "the base's tokenizer");
    tok_delete(t);
    free(path);
    return rc;
}

static int write_dir(const export_options *o, const checkpoint_base *b, const checkpoint_state *st,
                     const model *m, const st_set *base, int lora_rank, unsigned lora_sites,
                     export_report *r, pesc_error *err)
{
    char *tmp = NULL;
    if (pesc_dir_begin(o->out, &tmp, err) != 0)
        return -1;
    char *config = pesc_path_join(tmp, "config.json");
    char *weights = pesc_path_join(tmp, "model.safetensors");
    int rc = -1;
    if (write_config(b, st, m, lora_rank, config, err) == 0 &&
        write_weights(m, base, lora_rank, lora_sites, weights, r, err) == 0 &&
        copy_side_files(b, st, tmp, err) == 0 && pesc_dir_commit(tmp, o->out, err) == 0)
        rc = 0;
    if (rc != 0)
        pesc_dir_abort(tmp);
    free(weights);
    free(config);
    free(tmp);
    return rc;
}

int export_checkpoint(const export_options *o, export_report *r, pesc_error *err)
{
    memset(r, 0, sizeof *r);
    struct stat sb;
    if (stat(o->checkpoint, &sb) != 0)
        return pesc_fail(err, "%s: no such checkpoint (give a step-N directory or the --save "
                         "directory of a run)", o->checkpoint);
    if (!S_ISDIR(sb.st_mode))   /* its state.json, trainables.safetensors: name the directory */
        return pesc_fail(err, "%s is a file, not a checkpoint (give the step-N directory that "
                         "holds it, or the --save directory of a run)", o->checkpoint);
    char *ckpt = NULL;
    checkpoint_state st;
    checkpoint_base b = {0};
    model m = {0};
    st_set base = {0};
    pesc_backend *be = NULL;
    int rc = -1;
    if (checkpoint_find(o->checkpoint, &ckpt, err) != 0 ||
        checkpoint_read_state(ckpt, &st, err) != 0 || find_base(o, &st, ckpt, &b, err) != 0 ||
        check_out(o, ckpt, &b, err) != 0 || check_tokenizer(&b, &st, err) != 0)
        goto out;
    /* merging is a few products per layer: the CPU does it, whatever trained the model */
    pesc_show_phase(o->command, "loading the base model from %s", b.dir ? b.dir : b.config);
    if (!(be = backend_new("cpu", err)) || checkpoint_base_load(&m, &b, &st, be, err) != 0 ||
        (b.dir && st_set_open(&base, b.dir, err) != 0))
        goto out;
    if (st.base_fingerprint && checkpoint_fingerprint(&m) != st.base_fingerprint) {
        pesc_fail(err, "%s was trained on another base model than %s (their fingerprints "
                  "differ); name the base it was trained on with --model DIR", ckpt,
                  b.dir ? b.dir : b.config);
        goto out;
    }
    pesc_show_phase(o->command, "loading %s", ckpt);
    if (checkpoint_load_weights(ckpt, &m, err) != 0)
        goto out;
    pesc_show_phase(o->command, "writing %s", o->out);
    int lora_rank = m.crafted ? m.pesc.lora_rank : 0;
    unsigned lora_sites = m.pesc.lora_targets;
    if (model_merge_lora(&m, err) != 0 ||
        write_dir(o, &b, &st, &m, b.dir ? &base : NULL, lora_rank, lora_sites, r, err) != 0)
        goto out;
    snprintf(r->checkpoint, sizeof r->checkpoint, "%s", ckpt);
    snprintf(r->base, sizeof r->base, "%s", b.dir ? b.dir : b.config);
    r->step = st.step;
    r->full = m.pesc.mode == TRAIN_FULL;
    r->experts = m.crafted ? m.pesc.experts : 0;
    r->top_k = m.crafted ? m.pesc.top_k : 0;
    r->adapter_dim = m.crafted ? m.pesc.adapter_dim : 0;
    r->adapter_scale = m.crafted ? m.pesc.adapter_scale : 0.0;
    r->lora_rank = lora_rank;
    rc = 0;
out:
    pesc_show_phase(o->command, NULL);   /* the report or the error on a clean line */
    st_set_close(&base);
    model_free(&m);
    backend_delete(be);
    checkpoint_base_free(&b);
    free(ckpt);
    return rc;
}
