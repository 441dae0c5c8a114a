/* cmd_inspect — `pesc inspect PATH`: what a model directory (dense or exported PESC), a
 * checkpoint, a safetensors file or a dataset holds. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "cli.h"
#include "commands.h"
#include "dataset.h"
#include "fetch_view.h"
#include "hfconfig.h"
#include "plugin.h"
#include "safetensors.h"
#include "stats.h"
#include "template.h"
#include "tokenizer.h"
#include "train_options.h"

static const char inspect_usage[] =
    "usage: pesc inspect PATH\n"
    "       pesc inspect DATA [--model DIR|URL | --tokenizer FILE|URL] [--format F]\n"
    "                         [--template NAME] [--plugin FILE]...\n"
    "\n"
    "  a model directory   its config, parameter count, tensor dtypes and files; for a model\n"
    "                      written by pesc export, its experts, top-k and adapters\n"
    "  a checkpoint        (a step-N directory, or a --save directory: its checkpoints and the\n"
    "                      newest) step, crafting, LoRA, run shape, base model, trainables\n"
    "  a .safetensors file every tensor's name, dtype and shape, and the metadata\n"
    "  a dataset           (.jsonl or .json, plain, .gz or .zst) records, tokens, predicted\n"
    "                      tokens and lengths, as training reads them: text records through\n"
    "                      the chat template and the tokenizer of --model (or --tokenizer);\n"
    "                      demo:FAMILY,... too (the built-in demo data, as --data takes it).\n"
    "                      A URL is pesc fetch's to download first: inspect reads local files\n"
    "  config.json, state.json  the model directory or checkpoint that holds it\n"
    "  tokenizer.json      its vocabulary, special tokens, chat template and an example\n"
    "  a run's JSONL log   the run, its steps, last losses and how it ended\n"
    "\n"
    "  --format F, --template NAME, --plugin FILE   as for pesc train\n";

/* Text the inspected file supplies (a tensor name, a metadata value, a token, a path a
 * checkpoint recorded, a log's error) on standard output as a terminal may show it
 * (pesc_show_controls): an escape sequence or a line break in it cannot recolour, retitle or
 * clear the terminal, nor forge lines of this summary. Whole: a byte becomes 4 at most. */
static void put_shown(const char *text)
{
    size_t cap = 4 * strlen(text) + 1;
    char *shown = xmalloc(cap);
    pesc_show_controls(shown, cap, text);
    fputs(shown, stdout);
    free(shown);
}

static const char *rope_name(hf_rope_type t)
{
    return t == HF_ROPE_LINEAR ? "linear" : t == HF_ROPE_LLAMA3 ? "llama3"
           : t == HF_ROPE_LONGROPE ? "longrope" : "default";
}

static void print_dtype_counts(const st_set *set)
{
    size_t counts[ST_DTYPE_COUNT] = {0};
    for (int f = 0; f < set->n_files; f++)
        for (int i = 0; i < set->files[f].n_tensors; i++)
            counts[set->files[f].tensors[i].dtype]++;
    printf("dtypes        ");
    for (int d = 0; d < ST_DTYPE_COUNT; d++)
        if (counts[d])
            printf(" %s x%zu", st_dtype_name((st_dtype)d), counts[d]);
    printf("\n");
}

static int inspect_model(const char *dir)
{
    pesc_error err = {{0}};
    hf_config c;
    st_set set = {0};
    if (hfconfig_load(&c, dir, &err) != 0 || st_set_open(&set, dir, &err) != 0)
        return cli_fail("inspect", &err);
    printf("model         %s\n", dir);
    printf("architecture  ");
    put_shown(c.architecture);
    printf("%s\n", c.nested_text ? " (its text model; the vision tower is not read)" : "");
    printf("layers        %d\n", c.n_layers);
    printf("d_model       %d\n", c.hidden_size);
    printf("ffn           %d\n", c.intermediate_size);
    printf("heads         %d (kv %d, head_dim %d)\n", c.n_heads, c.n_kv_heads, c.head_dim);
    printf("vocab         %d%s\n", c.vocab_size, c.tie_word_embeddings ? " (tied embeddings)" : "");
    printf("rope          theta %g, scaling %s", c.rope_theta, rope_name(c.rope_type));
    if (c.rope_type == HF_ROPE_LONGROPE)
        printf(" (short factors up to %d positions, long ones past), attention factor %.4g",
               c.rope_original_max_position, c.rope_attention_factor);
    else if (c.rope_type != HF_ROPE_DEFAULT)
        printf(" x%g", c.rope_factor);
    if (hfconfig_rotary_dim(&c) < c.head_dim)   /* partial_rotary_factor (Phi-4-mini) */
        printf("; on the first %d of each head's %d values", hfconfig_rotary_dim(&c), c.head_dim);
    /* SmolLM3's NoPE layers, numbered from 0 as the files name them */
    for (int l = 0, n = 0; l < c.n_layers; l++)
        if (!hfconfig_layer_rope(&c, l))
            printf("%s%d", n++ ? ", " : "; none in layers ", l);
    printf("%s\n", c.rope_local_theta > 0 ? ", in the global layers" : "");
    if (c.rope_local_theta > 0)   /* Gemma's sliding layers */
        printf("rope local    theta %g, unscaled, in the sliding layers\n", c.rope_local_theta);
    if (c.sliding_window) {
        printf("window        %d", c.sliding_window);
        for (int l = 0, n = 0; l < c.n_layers; l++)   /* Gemma's global layers */
            if (!hfconfig_layer_window(&c, l))
                printf("%s%d", n++ ? ", " : "; none in layers ", l);
        printf("\n");
    }
    if (c.no_pre_norms)   /* OLMo 2 */
        printf("blocks        OLMo 2's: a norm after the attention and after the FFN, none "
               "before; q and k normed whole\n");
    else if (c.sandwich_norms)   /* Gemma 2 and 3 */
        printf("blocks        Gemma's: (1 + w) norms, after the attention and the FFN too; "
               "GELU (tanh) FFN; embeddings x %g; scores / sqrt(%g)\n", c.embedding_multiplier,
               1.0 / (c.attention_multiplier * c.attention_multiplier));
    else if (c.embedding_multiplier > 0)   /* Granite's */
        printf("multipliers   embedding %g, residual %g, attention %g, logits 1/%g\n",
               c.embedding_multiplier, c.residual_multiplier, c.attention_multiplier,
               c.logits_scaling);
    if (c.attn_logit_softcapping > 0 || c.final_logit_softcapping > 0)   /* Gemma 2's */
        printf("softcaps      scores %g, logits %g (cap tanh(x / cap); 0: none)\n",
               c.attn_logit_softcapping, c.final_logit_softcapping);
    long long params = hfconfig_param_count(&c);
    if (c.num_experts > 0) {
        /* per layer: a router (E, C) and E adapters (R, C) + (C, R) */
        long long crafted = (long long)c.n_layers * c.num_experts * c.hidden_size *
                            (1 + 2LL * c.adapter_dim);
        printf("crafted       PESC: %d experts, top-%d, adapter_dim %d, moe_scaling %g "
               "(%lld router and adapter parameters)\n", c.num_experts, c.topk, c.adapter_dim,
               c.moe_scaling, crafted);
        params += crafted;
    }
    if (c.pesc_template[0]) {
        printf("template      ");
        put_shown(c.pesc_template);
        printf(" (its run's, recorded by pesc export)\n");
    }
    printf("parameters    %lld (%.2f M)\n", params, (double)params / 1e6);
    printf("tensors       %zu in %d file%s\n", st_set_count(&set), set.n_files,
           set.n_files == 1 ? "" : "s");
    print_dtype_counts(&set);
    st_set_close(&set);
    return 0;
}

static void print_lora_sites(unsigned sites)
{
    for (int s = 0, first = 1; s < LORA_SITES; s++)
        if (sites & (1u << s)) {
            printf("%s%s", first ? "" : ",", pesc_lora_site_name(s));
            first = 0;
        }
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The step-N checkpoints of a save directory, oldest first, on one line. */
static void print_saved(const char *save_dir)
{
    DIR *d = opendir(save_dir);
    if (!d)
        return;
    struct dirent *e;
    char **names = NULL;
    int n = 0;
    long step;
    while ((e = readdir(d)))
        if (checkpoint_name_step(e->d_name, &step)) {
            names = xrealloc(names, (size_t)(n + 1) * sizeof *names);
            names[n++] = xstrdup(e->d_name);
        }
    closedir(d);
    if (n > 1)
        qsort(names, (size_t)n, sizeof *names, compare_names);
    printf("save dir      %s: %d checkpoint%s:", save_dir, n, n == 1 ? "" : "s");
    for (int i = 0; i < n; i++) {
        printf(" %s", names[i]);
        free(names[i]);
    }
    /* --keep-best's link to the checkpoint of the lowest held-out loss */
    char *best = pesc_path_join(save_dir, "best"), target[64];
    ssize_t len = readlink(best, target, sizeof target - 1);
    if (len > 0) {
        target[len] = '\0';
        printf("; best -> ");
        put_shown(target);
    }
    free(best);
    printf("\n");
    free(names);
}

static int inspect_checkpoint(const char *path, const char *dir)
{
    pesc_error err = {{0}};
    checkpoint_state st;
    if (checkpoint_read_state(dir, &st, &err) != 0)
        return cli_fail("inspect", &err);
    if (strcmp(path, dir) != 0)
        print_saved(path);
    const pesc_options *p = &st.pesc;
    printf("checkpoint    %s\n", dir);
    printf("step          %ld of %ld (%lld tokens, %.1f s", st.step, st.total_steps, st.tokens,
           st.elapsed_s);
    if (st.nan_skipped)
        printf(", %ld non-finite steps skipped", st.nan_skipped);
    printf(")\n");
    if (p->mode == TRAIN_FULL) {
        printf("training      full: every weight of the dense model\n");
    } else {
        printf("training      PESC: %d experts, top-%d, adapter_dim %d, moe_scaling %g\n",
               p->experts, p->top_k, p->adapter_dim, (double)p->adapter_scale);
        if (p->lora_rank) {
            printf("LoRA          rank %d, alpha %g, on ", p->lora_rank, (double)p->lora_alpha);
            print_lora_sites(p->lora_targets);
            printf("\n");
        }
    }
    printf("run           seq %d, batch %d, grad-accum %d, aux %g", st.seq, st.batch,
           st.grad_accum, st.aux_coef);
    if (st.eval_split > 0)
        printf(", --eval-split %g", st.eval_split);
    printf("\n");
    for (int i = 0; i < st.n_data; i++) {   /* what --resume alone reads again */
        printf("%-14s", i ? "" : "data");
        put_shown(st.data[i].path);
        if (st.n_data > 1)
            printf(" (weight %g)", st.data[i].weight);
        if (i == st.n_data - 1) {
            printf(", --format ");
            put_shown(st.format);
            printf(", --template ");
            put_shown(st.template_name);
        }
        printf("\n");
    }
    for (int i = 0; i < st.n_eval; i++) {
        printf("%-14s", i ? "" : "held out");
        put_shown(st.eval_data[i]);
        printf("\n");
    }
    if (st.save_dir[0]) {
        printf("saved to      ");
        put_shown(st.save_dir);
        if (st.save_every > 0)
            printf(" every %ld steps", st.save_every);
        printf(", keeping %d%s", st.keep, st.keep_best == 1 ? " and the best" : "");
        if (st.log[0]) {
            printf("; log ");
            put_shown(st.log);
        }
        printf("\n");
    }
    if (st.run_lr >= 0 && st.schedule >= 0)
        printf("optimizer     lr %g %s, warmup %ld, weight decay %g, clip %g\n", st.run_lr,
               optim_schedule_name(st.schedule), st.warmup, st.weight_decay, st.clip);
    /* what the run trains at from here when that is not its schedule's (--resume keeps it) */
    if (st.lr_override >= 0)
        printf("lr now        %g, set while it ran%s (the schedule's no longer applies)\n",
               st.lr_override * st.lr_scale, st.lr_scale != 1.0 ? ", then halved" : "");
    else if (st.lr_scale > 0 && st.lr_scale != 1.0)
        printf("lr now        the schedule's x %g, halved after non-finite steps\n", st.lr_scale);
    if (st.aux_coef >= 0 && st.run_aux_coef >= 0 && (float)st.aux_coef != (float)st.run_aux_coef)
        printf("aux now       %g, set while it ran (the run's --aux-coef %g)\n", st.aux_coef,
               st.run_aux_coef);
    if (st.neftune > 0)
        printf("neftune       %g: the embeddings' noise while training\n", st.neftune);
    if (st.best_step >= 0)   /* --keep-best: the best evaluation up to this step */
        printf("best          step-%08ld: %s %.4f\n", st.best_step,
               st.best_by ? "answers right" : "held-out loss", st.best_value);
    if (st.base_model[0]) {
        printf("base          ");
        put_shown(st.base_model);
    } else if (st.init_config[0]) {
        printf("base          random weights of ");
        put_shown(st.init_config);
    } else {
        printf("base          not recorded (saved before pesc export: give pesc export --model)");
    }
    printf(" (fingerprint %016" PRIx64 ")\n", st.base_fingerprint);
    char *trainables = pesc_path_join(dir, "trainables.safetensors");
    st_file f = {0};
    int rc = 0;
    if (st_open(&f, trainables, &err) == 0) {
        size_t values = 0;
        for (int i = 0; i < f.n_tensors; i++)
            values += f.tensors[i].n_elements;
        printf("trainables    %d tensors, %zu parameters (%.2f M)\n", f.n_tensors, values,
               (double)values / 1e6);
        st_close(&f);
    } else {   /* the rest was worth showing; the checkpoint still cannot be resumed */
        printf("trainables    unreadable\n");
        fflush(stdout);
        rc = cli_fail("inspect", &err);
    }
    free(trainables);
    return rc;
}

static void print_token(const tokenizer *t, const char *what, int32_t id)
{
    printf("%-14s", what);
    if (id >= 0 && tok_token(t, id)) {
        put_shown(tok_token(t, id));
        printf(" (%d)\n", id);
    } else {
        printf("none\n");
    }
}

/* A tokenizer.json (tokenizer_config.json beside it read too): what pesc makes of it. */
static int inspect_tokenizer(const char *path)
{
    pesc_error err = {{0}};
    tokenizer *t = tok_load(path, &err);
    if (!t)
        return cli_fail("inspect", &err);
    int n = tok_vocab_size(t), special = 0;
    for (int32_t id = 0; id < n; id++)
        special += tok_is_special(t, id);
    printf("tokenizer     %s\n", path);
    int missing = tok_vocab_missing(t);
    printf("vocabulary    %d ids (%d special", n, special);
    if (missing)   /* ids a model may still produce: pesc generate shows them as <id N> */
        printf("; %d missing: gaps in tokenizer.json's numbering, ids with no token", missing);
    printf(")\n");
    print_token(t, "bos", tok_bos(t));
    print_token(t, "eos", tok_eos(t));
    print_token(t, "pad", tok_pad(t));
    const char *jinja = tok_chat_template(t);
    const char *own = template_suggest(jinja);
    if (!jinja)
        printf("chat template none (give --template NAME; --format text needs none)\n");
    else if (own)
        printf("chat template pesc's %s matches it (%zu bytes of Jinja)\n", own, strlen(jinja));
    else
        printf("chat template %zu bytes of Jinja that no pesc template matches: give --template "
               "NAME (%s)\n", strlen(jinja), template_list());
    static const char sample[] = "Hello, world! 12345";
    tok_ids ids = {0};
    if (tok_encode(t, sample, sizeof sample - 1, 0, &ids, &err) == 0) {
        printf("example       \"%s\" -> %d tokens: ", sample, ids.n);
        for (int i = 0; i < ids.n; i++) {   /* | between them: a token may be a space */
            printf("%s", i ? "|" : "");
            put_shown(tok_token(t, ids.ids[i]) ? tok_token(t, ids.ids[i]) : "?");
        }
        printf("\n");
    }
    tok_ids_free(&ids);
    tok_delete(t);
    return 0;
}

static int inspect_directory(const char *path)
{
    char *config = pesc_path_join(path, "config.json");
    int is_model = access(config, F_OK) == 0;
    free(config);
    char *dir = NULL;
    pesc_error err;
    if (is_model)
        return inspect_model(path);
    int found = checkpoint_find(path, &dir, &err);
    if (found == CHECKPOINT_NONE)
        pesc_fail(&err, "%s: neither a model directory (config.json) nor a checkpoint "
                  "(state.json, or the step-N directories of --save)", path);
    if (found != 0)   /* else a checkpoint that cannot be read: its own message says why */
        return cli_fail("inspect", &err);
    int rc = inspect_checkpoint(path, dir);
    free(dir);
    return rc;
}

/* A run log read once (pesc view follows one on a terminal): the run, how far it got, its
 * last losses and how it ended. */
static int inspect_log(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        pesc_error err;
        pesc_fail(&err, "%s: %s", path, strerror(errno));
        return cli_fail("inspect", &err);
    }
    char run_model[256] = "?", backend[128] = "?", end[32] = "", end_text[sizeof ((stats_event *)0)->text] = "";
    char last_error[sizeof ((stats_event *)0)->text] = "";   /* the reason before the closing
                                                                "at step N" */
    int failed_for_now = 0;      /* the last event an error that is not the closing one */
    int started = 0;             /* the start line was read */
    long total = 0, step = -1, lines = 0, bad = 0, saves = 0, eval_step = -1;
    double loss = NAN, elapsed = 0, eval_loss = NAN, answers = NAN;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        /* a byte order mark before the first line, as stats_is_log_file allows */
        json_t *o = json_loads(lines++ ? line : pesc_skip_bom(line, NULL), 0, NULL);
        const char *event = json_string_value(json_object_get(o, "event"));
        if (!o || !json_is_object(o)) {
            bad++;
        } else if (event && strcmp(event, "start") == 0) {
            const char *m = json_string_value(json_object_get(o, "model"));
            const char *b = json_string_value(json_object_get(o, "backend"));
            snprintf(run_model, sizeof run_model, "%s", m ? m : "?");
            snprintf(backend, sizeof backend, "%s", b ? b : "?");
            total = (long)json_integer_value(json_object_get(o, "total_steps"));
            started = 1;
        } else if (!event && json_is_integer(json_object_get(o, "step"))) {
            step = (long)json_integer_value(json_object_get(o, "step"));   /* a step's record */
            if (json_integer_value(json_object_get(o, "total_steps")) > 0)   /* no start line */
                total = (long)json_integer_value(json_object_get(o, "total_steps"));
            if (failed_for_now)   /* the run went on after that error (a save's, say) */
                end[0] = '\0';
            failed_for_now = 0;
            loss = json_is_number(json_object_get(o, "loss"))   /* null: not finite */
                       ? json_number_value(json_object_get(o, "loss")) : NAN;
            elapsed = json_number_value(json_object_get(o, "elapsed_s"));
            if (json_is_number(json_object_get(o, "eval_loss"))) {
                eval_loss = json_number_value(json_object_get(o, "eval_loss"));
                eval_step = step;
            }
            if (json_is_number(json_object_get(o, "eval_answer_accuracy")))
                answers = json_number_value(json_object_get(o, "eval_answer_accuracy"));
        } else if (event) {
            const char *text = json_string_value(json_object_get(o, "text"));
            text = text ? text : "";
            stats_end is = stats_event_end(event, text);
            saves += strcmp(event, "save") == 0;
            if (is == STATS_END_ERROR) {   /* the end, unless a step follows */
                snprintf(last_error, sizeof last_error, "%s", text);
                snprintf(end, sizeof end, "error");
                snprintf(end_text, sizeof end_text, "%s", text);
                failed_for_now = 1;
            } else if (is == STATS_END_CLOSING) {
                failed_for_now = 0;
                snprintf(end, sizeof end, "%s", strcmp(event, "fail") ? event : "error");
                snprintf(end_text, sizeof end_text, "%s", last_error[0] ? last_error : text);
            } else if (!strcmp(event, "begin")) {
                end[0] = last_error[0] = '\0';   /* resumed: it runs again */
            }
        }
        json_decref(o);
    }
    free(line);
    fclose(f);
    printf("run log       %s (pesc view shows it; man pesc-log)\n", path);
    if (started) {
        printf("run           model ");
        put_shown(run_model);
        printf(", ");
        put_shown(backend);
        printf("\n");
    } else {   /* the end of a log (tail -n): stats_is_log_file knows it by its records */
        printf("run           not said: the log lacks its first line, the start event\n");
    }
    printf("steps         %ld of %ld", step < 0 ? 0 : step, total);
    if (step >= 0)
        printf(", %.0f s", elapsed);
    printf("; %s\n", !strcmp(end, "finish") ? "finished" : !strcmp(end, "stop") ? "stopped"
                     : !strcmp(end, "error") ? "failed" : "no end in the log (running, or killed)");
    if (!strcmp(end, "error") && end_text[0]) {
        printf("error         ");
        put_shown(end_text);
        printf("\n");
    }
    if (step >= 0)
        printf("loss          %.4f at step %ld\n", loss, step);
    if (eval_step >= 0)
        printf("eval loss     %.4f at step %ld%s", eval_loss, eval_step, isnan(answers) ? "\n" : "");
    if (eval_step >= 0 && !isnan(answers))
        printf(", answers %.4f right\n", answers);
    printf("lines         %ld (%ld checkpoints saved%s)\n", lines, saves, bad ? ", some lines "
           "not JSON" : "");
    return 0;
}

/* Neither a safetensors file (an 8-byte header length, then a JSON object) nor anything else
 * inspect reads by its name: said so, rather than what the safetensors reader makes of it. */
static int looks_safetensors(const char *path)
{
    unsigned char head[9];
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(head, 1, sizeof head, f) : 0;
    if (f)
        fclose(f);
    return got == sizeof head && head[8] == '{';
}

static int inspect_safetensors(const char *path)
{
    pesc_error err = {{0}};
    st_file f = {0};
    if (st_open(&f, path, &err) != 0)
        return cli_fail("inspect", &err);
    size_t bytes = 0;
    for (int i = 0; i < f.n_tensors; i++)
        bytes += f.tensors[i].nbytes;
    printf("%s: %d tensors, %.2f MiB\n", path, f.n_tensors, (double)bytes / (1 << 20));
    for (int i = 0; i < f.n_meta; i++) {
        printf("  metadata ");
        put_shown(f.meta_keys[i]);
        printf(" = ");
        put_shown(f.meta_values[i]);
        printf("\n");
    }
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        printf("  %-5s [", st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            printf("%s%" PRId64, d ? ", " : "", t->shape[d]);
        printf("]  ");
        put_shown(t->name);
        printf("\n");
    }
    st_close(&f);
    return 0;
}

/* What a dataset is read with: its options (as pesc train's) */
typedef struct data_options {
    const char *model, *tokenizer, *format, *template_name;
    const char *plugins[16];
    int n_plugins, given;        /* given: one of them is on the command line */
} data_options;

static int compare_ints(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* The records as training reads them: text records through the template and the tokenizer
 * (--tokenizer, or --model's), bad ones skipped with warnings; without a tokenizer only
 * token-id records can be read, and a text record says what to give. A path that is no file
 * is read when a source format claims it (demo:sort), as pesc train would. */
static int inspect_data(const char *path, const data_options *o)
{
    pesc_error err = {{0}};
    pesc_plugins *plugins = plugins_open(o->plugins, o->n_plugins, &err);
    ds_formats *formats = plugins ? plugins_formats(plugins, &err) : NULL;
    ds_load_options lo = {.tpl = template_find(o->template_name), .formats = formats};
    char *dir = NULL, *tok_path = NULL;
    tokenizer *tok = NULL;
    ds_records d = {0};
    train_config defaults;   /* pesc train's default --seq */
    train_config_default(&defaults);
    int *lengths = NULL, rc = 1, seq = defaults.seq;
    if (!formats || ds_formats_parse(formats, o->format, &lo.format, &err) != 0)
        goto out;
    const ds_format_info *source = ds_source_format(formats, lo.format, path);
    struct stat st;
    if (!source && stat(path, &st) != 0) {
        pesc_fail(&err, "%s: no such file or directory", path);
        goto out;
    }
    if (o->tokenizer) {
        if (fetch_view_url_to_cache(o->tokenizer, &tok_path, &err) != 0)
            goto out;
    } else if (o->model) {
        if (fetch_view_resolve_tokenizer(o->model, &dir, &err) != 0)
            goto out;
        tok_path = pesc_path_join(dir, "tokenizer.json");
        hf_config c;   /* ids are checked against its vocabulary, and --seq is its context */
        pesc_error ignored;
        if (hfconfig_load(&c, dir, &ignored) == 0) {
            lo.vocab_size = c.vocab_size;
            seq = c.max_position_embeddings >= 2 && c.max_position_embeddings < seq
                      ? c.max_position_embeddings : seq;
        }
    }
    if (tok_path && !(tok = tok_load(tok_path, &err)))
        goto out;
    lo.tok = tok;
    lo.untokenized = !tok;   /* text records read and counted, their tokens not */
    lo.strict = !tok;        /* a file looked at without a model: its first bad record says why */
    /* the skipped records' warnings, kept: a file refused says why in its one line, and
     * only one that loads shows them */
    char *warned = NULL;
    size_t warned_len = 0;
    lo.warn = open_memstream(&warned, &warned_len);
    int loaded = dataset_load(&d, path, &lo, &err);
    if (lo.warn)
        fclose(lo.warn);
    for (char *line = warned, *nl; loaded == 0 && line && *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        fprintf(stderr, "pesc inspect: %s\n", line);
        if (!nl)
            break;
    }
    free(warned);
    if (loaded != 0)
        goto out;
    if (d.n == 0) {
        pesc_fail(&err, "%s: no records to train on (%ld skipped)", path, d.skipped);
        goto out;
    }
    lengths = xmalloc((size_t)d.n * sizeof *lengths);
    long long tokens = 0;
    long over = 0, untokenized = 0;
    for (int i = 0; i < d.n; i++) {
        lengths[i] = d.items[i].len;
        tokens += lengths[i];
        over += lengths[i] > seq;
        untokenized += !tok && lengths[i] == 0;
    }
    qsort(lengths, (size_t)d.n, sizeof *lengths, compare_ints);
    printf("dataset       %s\n", path);
    printf("format        %s%s\n", source ? source->name : o->format,
           lo.format == DS_AUTO && !source ? " (per record)" : "");
    if (tok) {
        printf("template      %s\n", o->template_name);
        printf("tokenizer     %s\n", tok_path);
    }
    printf("records       %d", d.n);
    if (d.skipped)
        printf(" (%ld skipped)", d.skipped);
    if (untokenized) {   /* text records: their tokens are a tokenizer's to count */
        printf("\ntokens        not counted: %ld text record%s, which the tokenizer of a model "
               "renders (give --model DIR or --tokenizer FILE)\n", untokenized,
               untokenized == 1 ? "" : "s");
        rc = 0;
        goto out;
    }
    printf("\ntokens        %lld (%lld predicted)\n", tokens, d.predicted);
    /* nearest rank: the shortest length at least 95% of the records have at most */
    printf("length        min %d, median %d, mean %.1f, p95 %d, max %d\n", lengths[0],
           lengths[(d.n - 1) / 2], (double)tokens / d.n, lengths[(95 * (long)d.n + 99) / 100 - 1],
           lengths[d.n - 1]);
    if (over)
        printf("longer        %ld of %d records over %d tokens, pesc train's default --seq: it "
               "cuts them\n", over, d.n, seq);
    rc = 0;
out:
    if (rc)
        cli_fail("inspect", &err);
    free(lengths);
    dataset_free(&d);
    tok_delete(tok);
    free(tok_path);
    free(dir);
    ds_formats_delete(formats);
    plugins_delete(plugins);
    return rc;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

int cmd_inspect(int argc, char **argv)
{
    /* an option it does not know is bad usage, not a path that is missing */
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'}, {"model", required_argument, NULL, 'm'},
        {"tokenizer", required_argument, NULL, 'k'}, {"format", required_argument, NULL, 'f'},
        {"template", required_argument, NULL, 'T'}, {"plugin", required_argument, NULL, 'P'},
        {NULL, 0, NULL, 0}};
    data_options o = {.format = "auto", .template_name = "camelidae"};
    int c;
    while ((c = cli_getopt("inspect", argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 'h': fputs(inspect_usage, stdout); return 0;
        case 'm': o.model = optarg; break;
        case 'k': o.tokenizer = optarg; break;
        case 'f': o.format = optarg; break;
        case 'T': o.template_name = optarg; break;
        case 'P':
            if (o.n_plugins == (int)(sizeof o.plugins / sizeof *o.plugins))
                return cli_usage_error("inspect", "at most %d --plugin",
                                       (int)(sizeof o.plugins / sizeof *o.plugins));
            o.plugins[o.n_plugins++] = optarg;
            break;
        default: return EXIT_USAGE;
        }
        o.given |= c != 'h';
    }
    if (o.model && o.tokenizer)
        return cli_usage_error("inspect", "give --model DIR or --tokenizer FILE, not both");
    if (!template_find(o.template_name))
        return cli_usage_error("inspect", "--template %s: known templates are %s",
                               o.template_name, template_list());
    if (argc - optind != 1)
        return cli_usage_error("inspect", optind == argc ? "PATH is required"
                                                         : "one PATH at a time");
    const char *path;
    if (cli_path("inspect", "PATH", argv[optind], "a model directory, a checkpoint, a "
                 ".safetensors file or a .jsonl dataset", &path))
        return EXIT_USAGE;
    struct stat st;
    if (stat(path, &st) != 0 && fetch_is_url(path))   /* train and eval download data, inspect not */
        return cli_usage_error("inspect", "%s: pesc inspect reads local files; download it "
                               "first with pesc fetch %s (it prints the local path) and "
                               "inspect that", path, path);
    if (stat(path, &st) != 0)   /* demo:sort, a plugin's source; else no such file */
        return inspect_data(path, &o);
    if (S_ISDIR(st.st_mode) && o.given)
        return cli_usage_error("inspect", "--model, --tokenizer, --format, --template and "
                               "--plugin read a dataset; %s is a directory", path);
    if (S_ISDIR(st.st_mode))
        return inspect_directory(path);
    if (!S_ISREG(st.st_mode)) {   /* a FIFO would block, a device read forever */
        pesc_error err;
        pesc_fail(&err, "%s: not a regular file; name a model directory, a checkpoint, a "
                  ".safetensors file or a .jsonl dataset", path);
        return cli_fail("inspect", &err);
    }
    /* a model's config.json or a checkpoint's state.json stands for its directory: read as
     * a dataset, it was "a JSON object over several lines" */
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    if (!o.given && strcmp(base, "tokenizer.json") == 0)
        return inspect_tokenizer(path);
    if (!o.given && (strcmp(base, "config.json") == 0 || strcmp(base, "state.json") == 0)) {
        char *dir = pesc_parent_dir(path);
        int rc = inspect_directory(dir);
        free(dir);
        return rc;
    }
    if (ends_with(path, ".safetensors") && !o.given)
        return inspect_safetensors(path);
    /* by its first record, whatever its name: what a dataset's options would read is not
     * data (the dataset loader refuses it in the same words) */
    if (stats_is_log_file(path) && o.given)
        return cli_usage_error("inspect", "--model, --tokenizer, --format, --template and "
                               "--plugin read a dataset; %s is a pesc run log (--log)", path);
    if (stats_is_log_file(path))
        return inspect_log(path);
    static const char *const data_names[] = {".jsonl", ".json", ".gz", ".zst"};
    for (size_t i = 0; i < sizeof data_names / sizeof *data_names; i++)
        if (ends_with(path, data_names[i]))
            return inspect_data(path, &o);
    if (!o.given && !looks_safetensors(path)) {
        pesc_error err;
        pesc_fail(&err, "%s: not a file pesc inspect reads: a model directory, a checkpoint, a "
                  ".safetensors file, a .jsonl or .json dataset (another name with --format), "
                  "a tokenizer.json or a run log", path);
        return cli_fail("inspect", &err);
    }
    return o.given ? inspect_data(path, &o) : inspect_safetensors(path);
}
