/* train_options — see train_options.h. */
#include "train_options.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "dataset.h"
#include "demo.h"
#include "optfile.h"
#include "plugin.h"
#include "sink.h"
#include "template.h"

const char train_options_help[] =
    "options from a file:\n"
    "  --config FILE        the options below from a YAML file, one 'name: value' a line\n"
    "                       (lr: 2e-4; a list for data; man pesc-train, CONFIG FILES);\n"
    "                       the command line's own override the file's\n"
    "  --print-config       print the options given (the file's and these) as such a\n"
    "                       file, and run nothing\n"
    "model and data:\n"
    "  --model DIR|URL      Hugging Face model directory or hf:// URL (default, or demo: the\n"
    "                       built-in demo's model)\n"
    "  --init-config FILE   start from random weights of the shape a config.json gives\n"
    "                       (pre-training a base model, as tools/make-demo-base does)\n"
    "  --data PATH|URL[:W]  dataset, repeatable; W = mixture weight (default 1)\n"
    "  --format F           auto, camelidae, alpaca, sharegpt, openai, metamath, magicoder,\n"
    "                       text, tokens, completion, demo (auto)\n"
    "  --template NAME      camelidae (default), alpaca, chatml, qwen3, llama2, llama3,\n"
    "                       mistral, phi3, phi4-mini, phi4, granite, gemma, plain\n"
    "  --tokenizer FILE|URL tokenizer.json (default: the model's)\n"
    "  --seq T --batch B    tokens per row and rows per micro-batch (512 or the model's\n"
    "                       context when shorter, 8)\n"
    "  --grad-accum N       micro-batches per optimizer step (1)\n"
    "  --pack, --no-pack    pack several records into a row (the demo packs), or not\n"
    "  --recompute          keep only each layer's input for the backward pass and run the\n"
    "                       layer again there: activation memory / layers, ~1/3 more compute\n"
    "  --steps N | --epochs N   length of the run (default: one epoch)\n"
    "  --strict             a bad record stops the run instead of being skipped\n"
    "  --eval-data PATH|URL held-out data (same --format), repeatable: its mean loss on the\n"
    "                       trained tokens after every --eval-every N steps (ten times over\n"
    "                       the run) and after the last\n"
    "  --eval-split X       or hold out that fraction (below 1) or count of the --data\n"
    "                       records, chosen by --seed, and score them so\n"
    "  --eval-choices FILE|URL  multiple-choice questions (as pesc eval --choices reads\n"
    "                       them) scored at each evaluation too: the accuracy, live\n"
    "  --eval-generate M[:N]  answer the held-out records (or N drawn from them) greedily at\n"
    "                       each evaluation (as pesc eval --generate), M exact (the text)\n"
    "                       or number (the final number) matching theirs: the share\n"
    "                       right, live (the demo: exact)\n"
    "  --eval-samples FILE  and append each answer to FILE: step, source, line, reference,\n"
    "                       answer, right (JSON lines); a FILE of other data is refused\n"
    "optimizer:\n"
    "  --lr X               peak learning rate (2e-4)\n"
    "  --schedule S         constant (with warmup), cosine, linear (constant)\n"
    "  --warmup N           warmup steps (0)\n"
    "  --weight-decay X     AdamW weight decay (0)\n"
    "  --clip X             global gradient-norm limit, 0 = off (0.3)\n"
    "  --neftune A          NEFTune: training steps add noise uniform within\n"
    "                       A / sqrt(seq x hidden) to the embeddings (0 = off; 5 is usual)\n"
    "  --seed N             data order, initialisation and dropout (1)\n"
    "  --backend B          auto, cpu or cuda (auto)\n"
    "checkpoints and logs:\n"
    "  --save DIR           checkpoint directory, held by this run alone; --save-every N\n"
    "                       steps; --keep N (3)\n"
    "  --keep-best          also save at each new best evaluation (--best-by) and keep\n"
    "                       that checkpoint out of rotation, as DIR/best (--no-keep-best:\n"
    "                       not, where --resume would take it on)\n"
    "  --best-by M          what is best: loss (the lowest held-out loss) or answers (the\n"
    "                       most --eval-generate answers right)\n"
    "  --resume DIR         continue a run from its checkpoint (or its save directory):\n"
    "                       its model, data and settings, but for the flags given again;\n"
    "                       from its newest checkpoint, its --save directory and --log too\n"
    "  --log FILE           JSONL metrics log (man pesc-log); a fresh run refuses one\n"
    "                       that is not empty, --resume appends to it\n"
    "  --control PATH       UNIX socket taking pause, resume, lr, aux, save, eval, stop,\n"
    "                       generate\n"
    "  --sink NAME[:FILE]   metric sink (csv, tensorboard, ...), repeatable; without FILE it\n"
    "                       writes beside the log; a fresh run refuses a FILE with content\n"
    "                       (a tensorboard DIR with event files), --resume appends to it\n"
    "                       (--resume takes no --sink or --plugin: give them again)\n"
    "  --plugin FILE        load a plugin module, repeatable\n"
    "  --nan-limit N        non-finite steps in a row before the LR is halved (3); the run\n"
    "                       fails when they go on after 10 halvings, or at once when their\n"
    "                       losses were before its first update (the model overflows)\n"
    "crafting:\n";

void train_config_default(train_config *c)
{
    memset(c, 0, sizeof *c);
    c->format = "auto";
    c->template_name = "camelidae";
    c->seq = 512;
    c->batch = 8;
    c->grad_accum = 1;
    optim_config_default(&c->optim);
    pesc_options_default(&c->pesc);
    c->seed = 1;
    c->backend = "auto";
    c->keep = 3;
    c->nan_limit = 3;
}

void train_config_demo(train_config *c)
{
    /* held out: 50 records a family the training does not draw (pesc eval --demo's seed), so
     * that the loss chart shows what the run learns beside what it has seen */
    static char held_out[DEMO_FAMILIES][64];
    for (int i = 0; i < DEMO_FAMILIES && c->n_sources < STATS_MAX_SOURCES; i++) {
        snprintf(c->sources[c->n_sources].path, sizeof c->sources[0].path, "demo:%s",
                 demo_family_name(i));
        c->sources[c->n_sources++].weight = 1.0;
    }
    if (c->n_eval == 0 && c->eval_split <= 0) {
        for (int i = 0; i < DEMO_FAMILIES && c->n_eval < TRAIN_MAX_EVAL; i++) {
            snprintf(held_out[i], sizeof held_out[i], "demo:%s,seed=%u,records=50",
                     demo_family_name(i), DEMO_EVAL_SEED);
            c->eval_paths[c->n_eval++] = held_out[i];
        }
        if (!(c->given & TRAIN_GIVEN_EVAL_EVERY))
            c->eval_every = 200;
        /* and their answers: what the run learns to do, beside its loss (0.3 s on the CPU) */
        if (!c->eval_generate) {
            c->eval_generate = 1;
            c->eval_match = ANS_MATCH_EXACT;
        }
    }
    c->format = "demo";
    if (!(c->given & TRAIN_GIVEN_PACK))
        c->pack = 1;
    if (!(c->given & TRAIN_GIVEN_SEQ))
        c->seq = 64;
    if (!(c->given & TRAIN_GIVEN_BATCH))
        c->batch = 16;
    if (!(c->given & TRAIN_GIVEN_LR))
        c->optim.lr = 2e-3f;
    if (!(c->given & TRAIN_GIVEN_WARMUP))
        c->optim.warmup = 20;
    if (!c->steps && !c->epochs)
        c->steps = 100000;   /* the demo goes on until the person quits */
}

enum {
    OPT_MODEL = 1, OPT_INIT, OPT_DATA, OPT_FORMAT, OPT_TEMPLATE, OPT_TOKENIZER, OPT_SEQ, OPT_BATCH,
    OPT_ACCUM, OPT_PACK, OPT_NO_PACK, OPT_RECOMPUTE, OPT_STEPS, OPT_EPOCHS, OPT_STRICT, OPT_LR, OPT_SCHEDULE, OPT_WARMUP,
    OPT_WD, OPT_CLIP, OPT_SEED, OPT_BACKEND, OPT_SAVE, OPT_SAVE_EVERY, OPT_KEEP, OPT_RESUME,
    OPT_LOG, OPT_CONTROL, OPT_SINK, OPT_PLUGIN, OPT_NAN, OPT_HEADLESS, OPT_EVAL_DATA,
    OPT_EVAL_EVERY, OPT_EVAL_SPLIT, OPT_EVAL_CHOICES, OPT_EVAL_GENERATE, OPT_EVAL_SAMPLES,
    OPT_KEEP_BEST, OPT_NO_KEEP_BEST, OPT_BEST_BY, OPT_CONFIG,
    OPT_PRINT_CONFIG, OPT_NEFTUNE, OPT_HELP
};

static const struct option train_options_own[] = {
    {"model", required_argument, NULL, OPT_MODEL}, {"data", required_argument, NULL, OPT_DATA},
    {"init-config", required_argument, NULL, OPT_INIT},
    {"format", required_argument, NULL, OPT_FORMAT},
    {"template", required_argument, NULL, OPT_TEMPLATE},
    {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
    {"seq", required_argument, NULL, OPT_SEQ}, {"batch", required_argument, NULL, OPT_BATCH},
    {"grad-accum", required_argument, NULL, OPT_ACCUM}, {"pack", no_argument, NULL, OPT_PACK},
    {"no-pack", no_argument, NULL, OPT_NO_PACK},
    {"recompute", no_argument, NULL, OPT_RECOMPUTE},
    {"steps", required_argument, NULL, OPT_STEPS},
    {"epochs", required_argument, NULL, OPT_EPOCHS},
    {"strict", no_argument, NULL, OPT_STRICT}, {"lr", required_argument, NULL, OPT_LR},
    {"schedule", required_argument, NULL, OPT_SCHEDULE},
    {"warmup", required_argument, NULL, OPT_WARMUP},
    {"weight-decay", required_argument, NULL, OPT_WD},
    {"clip", required_argument, NULL, OPT_CLIP}, {"seed", required_argument, NULL, OPT_SEED},
    {"neftune", required_argument, NULL, OPT_NEFTUNE},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"save", required_argument, NULL, OPT_SAVE},
    {"save-every", required_argument, NULL, OPT_SAVE_EVERY},
    {"keep", required_argument, NULL, OPT_KEEP},
    {"resume", required_argument, NULL, OPT_RESUME}, {"log", required_argument, NULL, OPT_LOG},
    {"control", required_argument, NULL, OPT_CONTROL},
    {"sink", required_argument, NULL, OPT_SINK},
    {"plugin", required_argument, NULL, OPT_PLUGIN},
    {"nan-limit", required_argument, NULL, OPT_NAN},
    {"eval-data", required_argument, NULL, OPT_EVAL_DATA},
    {"eval-every", required_argument, NULL, OPT_EVAL_EVERY},
    {"eval-split", required_argument, NULL, OPT_EVAL_SPLIT},
    {"eval-choices", required_argument, NULL, OPT_EVAL_CHOICES},
    {"eval-generate", required_argument, NULL, OPT_EVAL_GENERATE},
    {"eval-samples", required_argument, NULL, OPT_EVAL_SAMPLES},
    {"keep-best", no_argument, NULL, OPT_KEEP_BEST},
    {"no-keep-best", no_argument, NULL, OPT_NO_KEEP_BEST},
    {"best-by", required_argument, NULL, OPT_BEST_BY},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"print-config", no_argument, NULL, OPT_PRINT_CONFIG},
    {"headless", no_argument, NULL, OPT_HEADLESS}, {"help", no_argument, NULL, OPT_HELP}};

static int number(const char *cmd, const char *flag, const char *arg, double min, double max,
                  double *out)
{
    char *end;
    double v = strtod(arg, &end);
    if (end == arg || *end || !(v >= min && v <= max))
        return cli_usage_error(cmd, "%s %s: expected a number from %g to %g", flag, arg, min, max);
    *out = v;
    return 0;
}

static int integer(const char *cmd, const char *flag, const char *arg, long min, long max,
                   long *out)
{
    if (cli_parse_long(arg, min, max, out) != 0)
        return cli_usage_error(cmd, "%s %s: expected an integer from %ld to %ld", flag, arg, min,
                               max);
    return 0;
}

/* --sink NAME or NAME:TARGET, neither part empty; whether NAME exists is known once the
 * plugins are open. */
static int sink_value(const char *cmd, const char *arg)
{
    const char *colon = strchr(arg, ':');
    if (!*arg || colon == arg || (colon && !colon[1]))
        return cli_usage_error(cmd, "--sink '%s': expected NAME or NAME:TARGET, neither empty "
                               "(csv, csv:metrics.csv)", arg);
    return 0;
}

/* One option; returns 0, or EXIT_USAGE after reporting. */
static int apply(train_config *c, const char *cmd, int opt, const char *arg)
{
    pesc_error err;
    long v = 0;
    double x = 0;
    switch (opt) {
    case OPT_MODEL:
        return cli_path(cmd, "--model", arg, "a model directory or URL", &c->model);
    case OPT_INIT:
        return cli_path(cmd, "--init-config", arg, "a config.json", &c->init_config);
    case OPT_DATA:
        if (c->n_sources == STATS_MAX_SOURCES)
            return cli_usage_error(cmd, "--data: at most %d sources", STATS_MAX_SOURCES);
        if (ds_source_parse(&c->sources[c->n_sources], arg, &err) != 0)
            return cli_usage_error(cmd, "%s", err.msg);
        c->n_sources++;
        return 0;
    case OPT_FORMAT:   /* checked once plugins are loaded */
        c->format = arg;
        c->given |= TRAIN_GIVEN_FORMAT;
        return 0;
    case OPT_TEMPLATE:
        if (!template_find(arg))
            return cli_usage_error(cmd, "--template %s: known templates are %s", arg,
                                   template_list());
        c->template_name = arg;
        c->given |= TRAIN_GIVEN_TEMPLATE;
        return 0;
    case OPT_TOKENIZER:
        return cli_path(cmd, "--tokenizer", arg, "a tokenizer.json or its URL", &c->tokenizer);
    case OPT_SEQ:
        if (integer(cmd, "--seq", arg, 2, TRAIN_MAX_SEQ, &v)) return EXIT_USAGE;
        c->seq = (int)v;
        c->given |= TRAIN_GIVEN_SEQ;
        return 0;
    case OPT_BATCH:
        if (integer(cmd, "--batch", arg, 1, TRAIN_MAX_BATCH, &v)) return EXIT_USAGE;
        c->batch = (int)v;
        c->given |= TRAIN_GIVEN_BATCH;
        return 0;
    case OPT_ACCUM:
        if (integer(cmd, "--grad-accum", arg, 1, TRAIN_MAX_BATCH, &v)) return EXIT_USAGE;
        c->grad_accum = (int)v;
        c->given |= TRAIN_GIVEN_GRAD_ACCUM;
        return 0;
    case OPT_PACK:
    case OPT_NO_PACK:
        c->pack = opt == OPT_PACK;
        c->given |= TRAIN_GIVEN_PACK;
        return 0;
    case OPT_RECOMPUTE: c->recompute = 1; return 0;
    case OPT_STEPS:
        return integer(cmd, "--steps", arg, 1, TRAIN_MAX_STEPS, &c->steps) ? EXIT_USAGE : 0;
    case OPT_EPOCHS:
        if (integer(cmd, "--epochs", arg, 1, TRAIN_MAX_EPOCHS, &v)) return EXIT_USAGE;
        c->epochs = (int)v; return 0;
    case OPT_STRICT: c->strict = 1; return 0;
    case OPT_LR:
        if (number(cmd, "--lr", arg, 0, TRAIN_MAX_LR, &x)) return EXIT_USAGE;
        c->optim.lr = (float)x;
        c->given |= TRAIN_GIVEN_LR;
        return 0;
    case OPT_SCHEDULE:
        if (optim_parse_schedule(arg, &c->optim.schedule, &err) != 0)
            return cli_usage_error(cmd, "%s", err.msg);
        c->given |= TRAIN_GIVEN_SCHEDULE;
        return 0;
    case OPT_WARMUP:
        if (integer(cmd, "--warmup", arg, 0, TRAIN_MAX_STEPS, &c->optim.warmup)) return EXIT_USAGE;
        c->given |= TRAIN_GIVEN_WARMUP;
        return 0;
    case OPT_WD:
        if (number(cmd, "--weight-decay", arg, 0, TRAIN_MAX_LR, &x)) return EXIT_USAGE;
        c->optim.weight_decay = (float)x;
        c->given |= TRAIN_GIVEN_WEIGHT_DECAY;
        return 0;
    case OPT_CLIP:
        if (number(cmd, "--clip", arg, 0, TRAIN_MAX_CLIP, &x)) return EXIT_USAGE;
        c->optim.clip = (float)x;
        c->given |= TRAIN_GIVEN_CLIP;
        return 0;
    case OPT_NEFTUNE:
        if (number(cmd, "--neftune", arg, 0, TRAIN_MAX_NEFTUNE, &x)) return EXIT_USAGE;
        c->neftune = (float)x;
        c->given |= TRAIN_GIVEN_NEFTUNE;
        return 0;
    case OPT_SEED:
        if (integer(cmd, "--seed", arg, 0, 0x7fffffffffffffffL, &v)) return EXIT_USAGE;
        c->seed = (uint64_t)v;
        c->given |= TRAIN_GIVEN_SEED;
        return 0;
    case OPT_BACKEND:
        if (cli_backend(cmd, arg) != 0) return EXIT_USAGE;
        c->backend = arg; return 0;
    case OPT_SAVE:
        return cli_path(cmd, "--save", arg, "the directory for checkpoints", &c->save_dir);
    case OPT_SAVE_EVERY:
        if (integer(cmd, "--save-every", arg, 1, TRAIN_MAX_STEPS, &c->save_every))
            return EXIT_USAGE;
        c->given |= TRAIN_GIVEN_SAVE_EVERY;
        return 0;
    case OPT_KEEP:
        if (integer(cmd, "--keep", arg, 1, TRAIN_MAX_KEEP, &v)) return EXIT_USAGE;
        c->keep = (int)v;
        c->given |= TRAIN_GIVEN_KEEP;
        return 0;
    case OPT_RESUME:
        return cli_path(cmd, "--resume", arg, "a checkpoint or a save directory", &c->resume);
    case OPT_LOG: return cli_path(cmd, "--log", arg, "the log file", &c->log_path);
    case OPT_CONTROL:
        return cli_path(cmd, "--control", arg, "the socket to make", &c->control_path);
    case OPT_SINK:
        if (c->n_sinks == TRAIN_MAX_SINKS)
            return cli_usage_error(cmd, "--sink: at most %d", TRAIN_MAX_SINKS);
        if (sink_value(cmd, arg) != 0)
            return EXIT_USAGE;
        c->sinks[c->n_sinks++] = arg; return 0;
    case OPT_PLUGIN:
        if (c->n_plugins == TRAIN_MAX_SINKS)
            return cli_usage_error(cmd, "--plugin: at most %d", TRAIN_MAX_SINKS);
        if (cli_path(cmd, "--plugin", arg, "a plugin module", &c->plugins[c->n_plugins]) != 0)
            return EXIT_USAGE;
        c->n_plugins++;
        return 0;
    case OPT_EVAL_DATA:
        if (c->n_eval == TRAIN_MAX_EVAL)
            return cli_usage_error(cmd, "--eval-data: at most %d", TRAIN_MAX_EVAL);
        if (cli_path(cmd, "--eval-data", arg, "a held-out dataset or its URL",
                     &c->eval_paths[c->n_eval]) != 0)
            return EXIT_USAGE;
        c->n_eval++;
        return 0;
    case OPT_EVAL_SPLIT:
        if (number(cmd, "--eval-split", arg, 0, TRAIN_MAX_EVAL_SPLIT, &x)) return EXIT_USAGE;
        if (x <= 0 || (x >= 1 && x != floor(x)))
            return cli_usage_error(cmd, "--eval-split %s: give a fraction of the records above 0 "
                                   "and below 1 (0.05), or a whole count of them (200)", arg);
        c->eval_split = x;
        return 0;
    case OPT_EVAL_CHOICES:
        if (c->eval_choices)
            return cli_usage_error(cmd, "--eval-choices is given twice: one file of questions "
                                   "is scored");
        return cli_path(cmd, "--eval-choices", arg, "a multiple-choice file or URL",
                        &c->eval_choices);
    case OPT_EVAL_GENERATE:
        if (train_eval_generate_parse(c, arg, &err) != 0)
            return cli_usage_error(cmd, "--eval-generate %s", err.msg);
        return 0;
    case OPT_EVAL_SAMPLES:
        return cli_path(cmd, "--eval-samples", arg, "a file the answers are appended to",
                        &c->eval_samples);
    case OPT_BEST_BY:
        if (train_best_parse(arg, &c->best_by, &err) != 0)
            return cli_usage_error(cmd, "--best-by %s", err.msg);
        c->given |= TRAIN_GIVEN_BEST_BY;
        return 0;
    case OPT_KEEP_BEST:
    case OPT_NO_KEEP_BEST:
        c->keep_best = opt == OPT_KEEP_BEST;
        c->given |= TRAIN_GIVEN_KEEP_BEST;
        return 0;
    case OPT_EVAL_EVERY:
        if (integer(cmd, "--eval-every", arg, 1, TRAIN_MAX_STEPS, &c->eval_every))
            return EXIT_USAGE;
        c->given |= TRAIN_GIVEN_EVAL_EVERY;
        return 0;
    case OPT_NAN:
        if (integer(cmd, "--nan-limit", arg, 1, 1000000, &v)) return EXIT_USAGE;
        c->nan_limit = (int)v; return 0;
    case OPT_HEADLESS: c->headless = 1; return 0;
    default:
        if (opt >= PESC_OPT_BASE) {
            if (pesc_apply_option(&c->pesc, opt, arg, &err) != 0)
                return cli_usage_error(cmd, "%s", err.msg);
            return 0;
        }
        return EXIT_USAGE;
    }
}

/* An unknown --format or --sink name is a usage error like any bad option value; they are
 * known only once the plugins are open (the run opens them again; a plugin that fails to open
 * is the run's error to report). -1, or EXIT_USAGE after the message. */
static int check_plugin_names(const train_config *c, const char *cmd)
{
    if (!(c->given & TRAIN_GIVEN_FORMAT) && c->n_sinks == 0)
        return -1;
    pesc_error err = {{0}};
    pesc_plugins *plugins = plugins_open(c->plugins, c->n_plugins, &err);
    ds_formats *formats = plugins && (c->given & TRAIN_GIVEN_FORMAT)
                              ? plugins_formats(plugins, &err) : NULL;
    ds_format format;
    int rc = -1;
    if (formats && ds_formats_parse(formats, c->format, &format, &err) != 0)
        rc = cli_usage_error(cmd, "%s", err.msg);
    for (int i = 0; plugins && rc < 0 && i < c->n_sinks; i++) {
        if (sinks_check_spec(plugins, c->sinks[i], &err) != 0)
            rc = cli_usage_error(cmd, "%s", err.msg);
        for (int j = 0; rc < 0 && j < i; j++)
            if (strcmp(c->sinks[j], c->sinks[i]) == 0)
                rc = cli_usage_error(cmd, "--sink %s is given twice", c->sinks[i]);
    }
    ds_formats_delete(formats);
    plugins_delete(plugins);
    return rc;
}

/* A flag and its --no- twin: what a config file's "NAME: false" means. */
static int negated(int opt)
{
    return opt == OPT_KEEP_BEST ? OPT_NO_KEEP_BEST : opt == OPT_PACK ? OPT_NO_PACK : -1;
}

/* --keep-best and --no-keep-best set one thing (so do --pack and --no-pack): the command
 * line's either overrides the file's either. */
static int same_setting(int a, int b)
{
    return a == b || negated(a) == b || negated(b) == a;
}

static int repeatable(int opt)
{
    return opt == OPT_DATA || opt == OPT_EVAL_DATA || opt == OPT_SINK || opt == OPT_PLUGIN;
}

/* The option a --config file's name stands for: its entry in table, or the table's end. */
static const struct option *named_option(const struct option *table, const char *name)
{
    const struct option *o = table;
    while (o->name && strcmp(o->name, name) != 0)
        o++;
    return o;
}

/* Whether the command line (given: n options) sets what opt sets, overriding the file. */
static int given_on_command_line(const int *given, int n, int opt)
{
    for (int j = 0; j < n; j++)
        if (same_setting(given[j], opt))
            return 1;
    return 0;
}

/* One entry of a --config file: its values, as the command line's would be; a flag's value
 * true or false. */
static int apply_entry(train_config *c, const char *cmd, const optfile_entry *e,
                       const struct option *o)
{
    if (o->has_arg == no_argument) {
        const char *v = e->n_values == 1 && !e->is_list ? e->values[0] : NULL;
        /* YAML's spellings: true, True, TRUE, yes (and their false ones) */
        int yes = v && (strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0);
        int no = v && (strcasecmp(v, "false") == 0 || strcasecmp(v, "no") == 0);
        if (!yes && !no)
            return cli_usage_error(cmd, "%s takes true or false%s%s%s", e->name,
                                   v ? ", not '" : "", v ? v : "", v ? "'" : "");
        if (negated(o->val) >= 0)   /* false is a setting too: its --no- twin */
            return apply(c, cmd, yes ? o->val : negated(o->val), NULL);
        return yes ? apply(c, cmd, o->val, NULL) : 0;
    }
    if (e->is_list && !repeatable(o->val))
        return cli_usage_error(cmd, "%s takes one value, not a list%s", e->name,
                               strcmp(e->name, "lora-targets") == 0
                                   ? " (its sites are one value: q,k,v)" : "");
    if (!e->is_list && e->n_values == 0)
        return cli_usage_error(cmd, "%s needs a value, as the command line's --%s does",
                               e->name, e->name);
    for (int i = 0; i < e->n_values; i++) {
        int rc = apply(c, cmd, o->val, e->values[i]);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* A --config file's options, but those the command line gives too (given: its options, n of
 * them), whose values win there; a list given there replaces the file's. The file's values
 * stay read for the life of the process: the config points into them. */
static int apply_file(train_config *c, const char *cmd, const char *path,
                      const struct option *table, const int *given, int n, optfile **out)
{
    static optfile **kept;   /* the files parsed so far (a command parses one) */
    static size_t n_kept;
    pesc_error err;
    char *text;
    size_t len;
    if (pesc_read_file(path, &text, &len, &err) != 0)
        return cli_usage_error(cmd, "--config %s", err.msg);
    optfile *f = optfile_parse(text, len, path, &err);
    free(text);
    if (!f)
        return cli_usage_error(cmd, "%s", err.msg);
    kept = xrealloc(kept, (n_kept + 1) * sizeof *kept);
    kept[n_kept++] = f;
    *out = f;
    int rc = 0;
    for (int i = 0; rc == 0 && i < f->n; i++) {
        const optfile_entry *e = &f->entries[i];
        char where[PATH_MAX + 32];
        snprintf(where, sizeof where, "%s:%d", path, e->line);
        cli_usage_where(where);
        const struct option *o = named_option(table, e->name);
        const char *other = o->name ? NULL : cli_other_name(table, e->name), *near = NULL;
        if (!o->name && !other)
            near = cli_nearest_option(table, e->name);
        if (o->name && (o->val == OPT_HELP || o->val == OPT_CONFIG ||
                        o->val == OPT_PRINT_CONFIG))
            rc = cli_usage_error(cmd, "a config file cannot give '%s'%s", e->written,
                                 o->val == OPT_PRINT_CONFIG ? ": give --print-config on the "
                                 "command line" : "");
        else if (o->name && o->val == OPT_HEADLESS && strcmp(cmd, "tui") == 0)
            rc = cli_usage_error(cmd, "'%s' is a run without the workbench: remove it from the "
                                 "file, or run pesc train --config %s", e->written, path);
        else if (other)
            rc = cli_usage_error(cmd, "unknown option '%s': pesc's name for it is '%s'",
                                 e->written, other);
        else if (near)
            rc = cli_usage_error(cmd, "unknown option '%s': did you mean '%s'?", e->written,
                                 near);
        else if (!o->name)
            rc = cli_usage_error(cmd, "unknown option '%s': names are pesc train's long options "
                                 "without their --", e->written);
        if (rc == 0 && !given_on_command_line(given, n, o->val))
            rc = apply_entry(c, cmd, e, o);
    }
    cli_usage_where(NULL);
    return rc;
}

/* A growing string: the printed config. */
typedef struct text_out {
    char *s;
    size_t len, cap;
} text_out;

static void text_put(text_out *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_put(text_out *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (t->s && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        t->s = xrealloc(t->s, t->cap = (t->len + (size_t)n + 1) * 2);
    }
}

/* A value as a config file holds it: plain where the reader takes it back as it is, else
 * double-quoted. */
static void yaml_value(text_out *y, const char *v)
{
    size_t n = strlen(v);
    int plain = n > 0 && !strchr("-?:,[]{}#&*!|>'\"%@` \t", v[0]) && v[n - 1] != ' ' &&
                v[n - 1] != '\t' && !strstr(v, ": ") && !strstr(v, " #") && !strchr(v, '\n') &&
                !strchr(v, '\t');
    if (plain) {
        text_put(y, "%s", v);
        return;
    }
    text_put(y, "\"");
    for (const char *c = v; *c; c++) {
        const char *escaped = *c == '"' ? "\\\"" : *c == '\\' ? "\\\\" : *c == '\n' ? "\\n"
                              : *c == '\t' ? "\\t" : NULL;
        if (escaped)
            text_put(y, "%s", escaped);
        else
            text_put(y, "%c", *c);
    }
    text_put(y, "\"");
}

/* name: value, or name: and its items, or a flag's true or false. */
static void yaml_option(text_out *y, const struct option *o, const char *const *values, int n)
{
    if (o->val == OPT_NO_KEEP_BEST || o->val == OPT_NO_PACK) {
        text_put(y, "%s: false\n", o->val == OPT_NO_PACK ? "pack" : "keep-best");
        return;
    }
    text_put(y, "%s:", o->name);
    if (o->has_arg == no_argument) {
        text_put(y, " true\n");
    } else if (repeatable(o->val)) {
        for (int i = 0; i < n; i++) {
            text_put(y, "\n  - ");
            yaml_value(y, values[i]);
        }
        text_put(y, "\n");
    } else {
        text_put(y, " ");
        yaml_value(y, values[n - 1]);
        text_put(y, "\n");
    }
}

/* --print-config: the options in force from the file (f, NULL: none) and the command line
 * (given, args: n of them), as a config file that gives the same run (but --headless, which
 * picks the command). */
static char *print_config(const struct option *table, const optfile *f, const int *given,
                          const char *const *args, int n)
{
    text_out y = {0};
    text_put(&y, "# pesc train --headless --config FILE, or pesc tui --config FILE\n");
    for (int i = 0; f && i < f->n; i++) {
        const optfile_entry *e = &f->entries[i];
        const struct option *o = named_option(table, e->name);
        /* what the command line overrides, and --headless: the command's, not the run's */
        if (given_on_command_line(given, n, o->val) || o->val == OPT_HEADLESS)
            continue;
        if (o->has_arg == no_argument) {   /* as the file says it: true or false */
            text_put(&y, "%s: %s\n", o->name, e->values[0]);
        } else if (e->n_values > 0 || e->is_list) {
            if (e->is_list && e->n_values == 0)
                text_put(&y, "%s: []\n", o->name);
            else
                yaml_option(&y, o, (const char *const *)e->values, e->n_values);
        }
    }
    for (int i = 0; i < n; i++) {
        /* each option once, where the command line first gives it */
        if (given_on_command_line(given, i, given[i]) || given[i] == OPT_HEADLESS)
            continue;
        const char *values[STATS_MAX_SOURCES + TRAIN_MAX_EVAL];   /* a list's (apply bounds it) */
        int k = 0, last = i;
        for (int j = i; j < n; j++)
            if (same_setting(given[j], given[i])) {
                if (k < (int)(sizeof values / sizeof *values))
                    values[k++] = args[j];
                last = j;
            }
        const struct option *o = table;
        while (o->name && o->val != given[last])
            o++;
        if (repeatable(o->val))
            yaml_option(&y, o, values, k);
        else   /* the last given, as on the command line */
            yaml_option(&y, o, &args[last], 1);
    }
    return y.s;
}

static int parse_options(train_config *c, const char *cmd, int argc, char **argv, char **yaml);

int train_config_parse(train_config *c, const char *cmd, int argc, char **argv)
{
    char *yaml = NULL;
    int rc = parse_options(c, cmd, argc, argv, &yaml);
    if (rc < 0 && yaml) {
        fputs(yaml, stdout);
        rc = 0;
    }
    free(yaml);
    return rc;
}

/* train_config_parse, and with --print-config the config file of what was given in *yaml. */
static int parse_options(train_config *c, const char *cmd, int argc, char **argv, char **yaml)
{
    int opt;
    struct option table[80];
    pesc_option_merge(table, 80, train_options_own,
                      sizeof train_options_own / sizeof *train_options_own);
    /* the command line's options first, so that a --config file can leave out what it
     * overrides; then the file's, then the command line's */
    int *given = xmalloc((size_t)(argc + 1) * sizeof *given), n = 0;
    const char **args = xmalloc((size_t)(argc + 1) * sizeof *args), *config = NULL;
    int rc = -1, print = 0;
    optfile *file = NULL;
    while (rc < 0 && (opt = cli_getopt(cmd, argc, argv, "h", table)) != -1) {
        if (opt == OPT_HELP || opt == 'h')
            rc = TRAIN_HELP;
        else if (opt == OPT_PRINT_CONFIG)
            print = 1;
        else if (opt == '?')
            rc = EXIT_USAGE;
        else if (opt == OPT_CONFIG && config)
            rc = cli_usage_error(cmd, "--config is given twice: one file holds a run's options");
        else if (opt == OPT_CONFIG)
            rc = cli_path(cmd, "--config", optarg, "a file of options", &config) ? EXIT_USAGE
                                                                                  : -1;
        else {
            given[n] = opt;
            args[n++] = optarg;
        }
    }
    if (rc < 0 && optind < argc)
        rc = cli_unexpected(cmd, argv[optind], cli_data_hint(argv[optind]));
    if (rc < 0 && config && apply_file(c, cmd, config, table, given, n, &file) != 0)
        rc = EXIT_USAGE;
    for (int i = 0; rc < 0 && i < n; i++)
        if (apply(c, cmd, given[i], args[i]) != 0)
            rc = EXIT_USAGE;
    if (rc < 0 && print)
        *yaml = print_config(table, file, given, args, n);
    free(given);
    free(args);
    if (rc >= 0)
        return rc;
    pesc_error err;
    if (pesc_options_check(&c->pesc, &err) != 0)
        return cli_usage_error(cmd, "%s", err.msg);
    if ((long)c->batch * c->seq > TRAIN_MAX_TOKENS)
        return cli_usage_error(cmd, "--batch %d x --seq %d: at most %d tokens per micro-batch "
                               "(use --grad-accum for larger batches)", c->batch, c->seq,
                               TRAIN_MAX_TOKENS);
    if (c->init_config && c->model)
        return cli_usage_error(cmd, "give --model or --init-config, not both");
    /* --model demo without data: the built-in demo, as with no --model (a directory here
     * called demo is a model like any other) */
    if (c->model && pesc_names_demo(c->model) && c->n_sources == 0)
        c->model = NULL;
    if ((c->model || c->init_config) && c->n_sources == 0 && !c->resume)
        return cli_usage_error(cmd, "--model needs --data (the demo data fits only the demo "
                               "model)");
    if (c->steps && c->epochs)
        return cli_usage_error(cmd, "give --steps or --epochs, not both");
    if (!c->model && !c->init_config && c->n_sources == 0 && !c->resume &&
        (c->given & TRAIN_GIVEN_FORMAT))
        return cli_usage_error(cmd, "--format %s describes --data files; the built-in demo "
                               "(no --data) has its own", c->format);
    if (c->n_eval && c->eval_split > 0)
        return cli_usage_error(cmd, "give --eval-data or --eval-split, not both");
    /* a resumed run's checkpoint may give what they need: the session checks once it has */
    if (!c->resume && train_config_check_needs(c, &err) != 0)
        return cli_usage_error(cmd, "%s", err.msg);
    return check_plugin_names(c, cmd);
}

int train_best_parse(const char *name, int *best_by, pesc_error *err)
{
    if (strcmp(name, "loss") == 0)
        *best_by = TRAIN_BEST_LOSS;
    else if (strcmp(name, "answers") == 0)
        *best_by = TRAIN_BEST_ANSWERS;
    else
        return pesc_fail(err, "%s: expected loss (the lowest held-out loss) or answers (the most "
                         "--eval-generate answers right)", name);
    return 0;
}

int train_eval_generate_parse(train_config *c, const char *arg, pesc_error *err)
{
    char match[16];
    const char *colon = strchr(arg, ':');
    size_t len = colon ? (size_t)(colon - arg) : strlen(arg);
    snprintf(match, sizeof match, "%.*s", len < sizeof match ? (int)len : 0, arg);
    long n = 0;
    if (colon) {
        char *end;
        errno = 0;
        n = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end || errno || n < 1)
            return pesc_fail(err, "%s: after the match, :N is how many held-out records to "
                             "answer, a whole number from 1 (number:200)", arg);
    }
    if (ans_match_parse(match[0] ? match : arg, &c->eval_match, err) != 0)
        return -1;
    c->eval_generate = 1;
    c->eval_answers = n;
    return 0;
}

void train_eval_generate_name(const train_config *c, char *out, size_t n)
{
    if (c->eval_answers > 0)
        snprintf(out, n, "%s:%ld", ans_match_name(c->eval_match), c->eval_answers);
    else
        snprintf(out, n, "%s", ans_match_name(c->eval_match));
}

int train_config_check_needs(const train_config *c, pesc_error *err)
{
    /* the built-in demo (no model, data or checkpoint) holds records out of its own, and
     * answers them */
    int demo = !c->model && !c->init_config && c->n_sources == 0 && !c->resume;
    int held = c->n_eval || c->eval_split > 0 || demo;
    int answering = c->eval_generate || (demo && !c->n_eval && c->eval_split == 0);
    if (!held && !c->eval_choices && (c->given & TRAIN_GIVEN_EVAL_EVERY))
        return pesc_fail(err, "--eval-every needs --eval-data FILE, --eval-split X or "
                         "--eval-choices FILE, what to score");
    if (c->eval_samples && !answering)
        return pesc_fail(err, "--eval-samples keeps the answers --eval-generate MATCH makes: give "
                         "it too");
    if (c->eval_generate && !held)
        return pesc_fail(err, "--eval-generate answers held-out records: it needs --eval-data "
                         "FILE or --eval-split X");
    if ((c->given & TRAIN_GIVEN_BEST_BY) && !c->keep_best)
        return pesc_fail(err, "--best-by picks the checkpoint --keep-best keeps: give "
                         "--keep-best too");
    if (c->keep_best && c->best_by == TRAIN_BEST_ANSWERS && !answering)
        return pesc_fail(err, "--best-by answers keeps the checkpoint whose answers are most often "
                         "right: it needs --eval-generate MATCH");
    if (c->keep_best && (!c->save_dir || !held))
        return pesc_fail(err, "--keep-best keeps the checkpoint of the %s: it needs --save DIR "
                         "and --eval-data FILE or --eval-split X",
                         c->best_by == TRAIN_BEST_ANSWERS ? "most answers right"
                                                          : "lowest held-out loss");
    if (!c->save_dir && (c->given & (TRAIN_GIVEN_SAVE_EVERY | TRAIN_GIVEN_KEEP)))
        return pesc_fail(err, "%s needs --save DIR, the directory checkpoints go to",
                         c->given & TRAIN_GIVEN_SAVE_EVERY ? "--save-every" : "--keep");
    /* two writers of one file: a TARGET spelled two ways, or the one a NAME alone writes
     * beside the --log or --save (a resumed run's may be the checkpoint's) */
    char base[4096];
    sinks_base(base, sizeof base, c->log_path, c->save_dir);
    for (int i = 0; i < c->n_sinks; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(c->sinks[j], c->sinks[i]) != 0 &&   /* given twice: said so */
                sinks_same_output(c->sinks[j], c->sinks[i], base))
                return pesc_fail(err, "--sink %s writes where --sink %s does: give it once",
                                 c->sinks[i], c->sinks[j]);
    /* after a resume, either may be the checkpoint's */
    return optim_check_lr("--lr", c->optim.lr, c->optim.weight_decay, err);
}
