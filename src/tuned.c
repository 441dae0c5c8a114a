/* tuned — see tuned.h. */
#include "tuned.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include "checkpoint.h"
#include "fetch_view.h"
#include "template.h"

/* What the run's checkpoint recorded and the command may use: its tokenizer, its template. */
static void take_run_inputs(tuned_model *t, const checkpoint_state *st)
{
    if (st->tokenizer[0])
        t->tokenizer = xstrdup(st->tokenizer);
    snprintf(t->template_name, sizeof t->template_name, "%s", st->template_name);
    t->seq = st->seq;
}

static const char *run_base(const checkpoint_state *st)
{
    return st->base_model[0] ? st->base_model : st->init_config[0] ? st->init_config
                                                                   : "a base not recorded";
}

int tuned_load(const char *cmd, const char *model_arg, const char *adapters, pesc_backend *be,
               model *m, tuned_model *t, pesc_error *err)
{
    *t = (tuned_model){0};
    checkpoint_state *st = xmalloc(sizeof *st);
    checkpoint_base base = {0};
    char *ckpt = NULL;
    int rc = -1, found = CHECKPOINT_NONE, other_base = 0;
    if (adapters) {
        pesc_error why;
        found = checkpoint_of_adapters(adapters, &ckpt, st, model_arg ? &why : err);
        if (found == -1 && !model_arg) {
            pesc_fail_prefix(err, "--adapters");
            goto out;
        }
        if (found == CHECKPOINT_NONE && !model_arg) {
            /* a model directory's weights (pesc export's come with their adapters) */
            char *dir = pesc_parent_dir(adapters), *config = pesc_path_join(dir, "config.json");
            if (access(config, R_OK) == 0)
                pesc_fail(err, "--adapters %s is the weights of the model directory %s: give "
                          "--model %s (an export of pesc's holds its routers and adapters)",
                          adapters, dir, dir);
            else
                pesc_fail(err, "--model DIR is required: %s is a trainables file outside a "
                          "checkpoint, which does not say what it was trained on", adapters);
            free(config);
            free(dir);
            goto out;
        }
    }
    if (model_arg) {
        if (fetch_view_resolve_model(model_arg, &t->dir, err) != 0)
            goto out;
        pesc_show_phase(cmd, "loading the model from %s", pesc_path_shown(t->dir));
        if (model_load(m, t->dir, be, err) != 0)
            goto out;
        other_base = found == 0 && st->base_fingerprint &&
                     checkpoint_fingerprint(m) != st->base_fingerprint;
        /* an export whose weights hold its run's tuning (LoRA merged, a full run's), of the
         * base this checkpoint was trained on: its trainables would go on top of that tuning
         * (twice over, when it is that run's). An export that only added adapters has its
         * base's weights: another checkpoint's adapters replace its own. */
        if (adapters && found == 0 && m->config.pesc_tuning_merged && st->base_fingerprint &&
            m->config.pesc_base_fingerprint == st->base_fingerprint) {
            pesc_fail(err, "--model %s is an export with its run's tuning merged into its "
                      "weights, of the base %s was trained on: --adapters would apply that "
                      "checkpoint's on top of it (leave out --adapters to use the export, or "
                      "--model to use %s on its own base)", t->dir, ckpt, ckpt);
            goto out;
        }
    } else if (!adapters) {
        pesc_fail(err, "--model DIR is required (or --adapters CHECKPOINT, whose base model "
                  "is used)");
        goto out;
    } else {   /* the base the checkpoint's run trained */
        if (checkpoint_base_find(st, ckpt, &base, err) != 0)
            goto out;
        pesc_show_phase(cmd, "loading the model from %s",
                        pesc_path_shown(base.dir ? base.dir : base.config));
        if (checkpoint_base_load(m, &base, st, be, err) != 0)
            goto out;
        t->dir = base.dir ? xstrdup(base.dir) : NULL;
    }
    if (found == 0)
        take_run_inputs(t, st);
    if (!t->template_name[0])   /* an exported model's run's, when it recorded one */
        snprintf(t->template_name, sizeof t->template_name, "%s", m->config.pesc_template);
    if (adapters && checkpoint_load_adapters(m, adapters, err) != 0) {
        pesc_fail_prefix(err, "--adapters");
        if (other_base)   /* the likely reason, in the same line */
            pesc_fail_suffix(err, " (%s trained on %s, not on %s: leave out --model)", ckpt,
                             run_base(st), t->dir);
        goto out;
    }
    if (other_base) {
        pesc_show_phase(cmd, NULL);
        fprintf(stderr, "%s: note: %s was trained on another base model than %s (%s); leave "
                "out --model to use it\n", cmd, ckpt, t->dir, run_base(st));
    }
    rc = 0;
out:
    checkpoint_base_free(&base);
    free(ckpt);
    free(st);
    if (rc != 0)
        tuned_free(t);
    return rc;
}

void tuned_free(tuned_model *t)
{
    free(t->dir);
    free(t->tokenizer);
    *t = (tuned_model){0};
}

int tuned_template(const tuned_model *t, const char **name, int *given, pesc_error *err)
{
    if (*given || !t->template_name[0])
        return 0;
    if (!template_find(t->template_name))
        return pesc_fail(err, "the run's chat template %s is not one this pesc knows (%s): give "
                         "--template NAME", t->template_name, template_list());
    *name = t->template_name;
    *given = 1;
    return 0;
}

tokenizer *tuned_tokenizer(const tuned_model *t, const char *given, pesc_error *err)
{
    const char *file = given ? given : t->tokenizer;
    if (!file && !t->dir) {
        pesc_fail(err, "the model is the random weights of its run's --init-config, with no "
                  "tokenizer beside them: give --tokenizer FILE|URL");
        return NULL;
    }
    if (!file)
        return tok_load_dir(t->dir, err);
    char *path = NULL;
    tokenizer *tok = NULL;
    if (fetch_view_url_to_cache(file, &path, err) != 0 || !(tok = tok_load(path, err)))
        pesc_fail_prefix(err, "%s", given ? "--tokenizer" : "the run's --tokenizer");
    free(path);
    return tok;
}
