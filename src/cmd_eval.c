/* cmd_eval — `pesc eval`: mean next-token loss of a model over a dataset, and with --routing
 * how a crafted model's routers spread each data source over the experts (issue 9; the
 * paper's Fig. 4); with --choices, its accuracy on multiple-choice questions (choices.h). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "backend.h"
#include "choices.h"
#include "cli.h"
#include "commands.h"
#include "dataset.h"
#include "demo.h"
#include "answers.h"
#include "fetch_view.h"
#include "model.h"
#include "plugin.h"
#include "template.h"
#include "tokenizer.h"
#include "train_options.h"
#include "tuned.h"

static const char eval_usage[] =
    "usage: pesc eval (--model DIR|URL [--adapters FILE] | --adapters CHECKPOINT)\n"
    "                 (--data FILE|URL... | --demo | --choices FILE|URL...)\n"
    "                 [--format F] [--template NAME] [--tokenizer FILE|URL] [--seq N]\n"
    "                 [--backend auto|cpu|cuda] [--routing] [--records N] [--plugin FILE]...\n"
    "                 [--generate [--match exact|number] [--max-tokens N] [--limit N]\n"
    "                 [--batch N] [--samples FILE]] [--json]\n"
    "\n"
    "Mean next-token negative log-likelihood of the model over every predicted token of every\n"
    "record (labels of -100 are ignored), and its perplexity. A bad record is an error here\n"
    "(skipping it would change the score).\n"
    "\n"
    "  --model DIR      Hugging Face model directory (config.json + safetensors), or an\n"
    "                   hf://OWNER/NAME[@REV] or http(s) URL, downloaded to the cache first;\n"
    "                   demo: the built-in demo's model\n"
    "  --adapters FILE  PESC routers, adapters and LoRA saved by pesc (safetensors with\n"
    "                   Camelidae names); the model is crafted as the file says. A\n"
    "                   checkpoint (or --save directory: its newest) stands for its file,\n"
    "                   and gives its run's base model, template and tokenizer where\n"
    "                   --model, --template and --tokenizer are not given\n"
    "  --data FILE      dataset: JSONL or a JSON array, plain, .gz or .zst; or a URL. Repeat it\n"
    "                   for several sources (scored together; --routing tells them apart)\n"
    "  --demo           the built-in demo's tasks, one source per family (pesc demo-data):\n"
    "                   records of seed 1235, not the 1234 the demo trains on\n"
    "  --records N      records per family with --demo (default 200)\n"
    "  --format F       auto (default: per record, from its keys), camelidae, alpaca, sharegpt,\n"
    "                   openai, metamath, magicoder, text, tokens ({\"input_ids\", \"labels\"}),\n"
    "                   completion ({\"prompt\", \"completion\"}), demo (--data demo[:...],\n"
    "                   see pesc demo-data), or a format plugin's (pesc plugins lists them)\n"
    "  --plugin FILE    load a plugin module (repeatable); $PESC_PLUGIN_PATH and the install\n"
    "                   directory are searched too\n"
    "  --template NAME  chat template for text formats: camelidae (default), alpaca, chatml,\n"
    "                   qwen3, llama2, llama3, mistral, phi3, phi4-mini, phi4, granite,\n"
    "                   gemma, plain (the run's for an --adapters checkpoint or a model pesc\n"
    "                   exported);\n"
    "                   only assistant tokens are scored\n"
    "  --tokenizer FILE tokenizer.json for text formats (default: DIR/tokenizer.json)\n"
    "  --seq N          a record longer than N tokens is scored on its first N, as a run\n"
    "                   cuts it at its --seq (default: the model's context). A note says\n"
    "                   when an --adapters checkpoint's run cut records shorter\n"
    "  --backend B      auto (default), cpu or cuda\n"
    "  --routing        for a crafted model: each source's share of the (token, slot) expert\n"
    "                   assignments per layer, over every token of its records, and the mean\n"
    "                   Jensen-Shannon divergence (bits, 0..1) between the sources per layer\n"
    "  --json           print {\"loss\": L, \"tokens\": N, \"ppl\": P} (and \"routing\")\n"
    "\n"
    "Generated answers (with --data or --demo):\n"
    "  --generate       the accuracy of the model's greedy answers instead of the loss: each\n"
    "                   record's last answer is the reference, what comes before it the\n"
    "                   prompt; the model answers until an end marker (its template's, EOS)\n"
    "  --match M        exact (default: the answer's text is the reference's, whitespace at\n"
    "                   either end aside) or number (the final numbers are equal: the first\n"
    "                   after the last \"####\", as GSM8K's and MetaMath's answers end, else\n"
    "                   the last number; commas and \"$\" aside)\n"
    "  --max-tokens N   an answer's tokens at most (exact: twice the reference's and 16 more;\n"
    "                   number: 512)\n"
    "  --limit N        answer at most N records of each source\n"
    "  --batch N        records answered at once (16; 1 to 256), fewer where their KV\n"
    "                   caches would take over a quarter of the free memory\n"
    "  --samples FILE   write each record's answer to FILE (JSONL: source, line, reference,\n"
    "                   answer, right), a new file\n"
    "  --json           print {\"accuracy\", \"right\", \"answered\", \"match\",\n"
    "                   \"sources\": [{\"source\", \"accuracy\", \"right\", \"answered\",\n"
    "                   \"no_answer\", \"too_long\", \"cut\"}, ...]}: too_long prompts fill\n"
    "                   the context (not scored), cut answers reached their token limit\n"
    "\n"
    "Multiple-choice accuracy (instead of --data):\n"
    "  --choices FILE   questions with options and the right one: MMLU, ARC, OpenBookQA,\n"
    "                   HellaSwag or PIQA records as the hub has them, or {\"question\",\n"
    "                   \"choices\": [...], \"answer\"}; JSONL or a JSON array; or a URL.\n"
    "                   The model's answer is its most likely option (summed log-likelihood);\n"
    "                   accuracy, and accuracy by likelihood a byte, per file. Repeatable\n"
    "  --shots N        the first N questions of each file go before every question as\n"
    "                   worked examples, not scored (0)\n"
    "  --shots-from FILE\n"
    "                   the worked examples from FILE instead: its first N of the\n"
    "                   question's subject where it names one (MMLU's dev split); every\n"
    "                   question of --choices is scored. Questions that name subjects are\n"
    "                   also reported by subject, with the mean over subjects\n"
    "  --limit N        score at most N questions of each file (after the shots)\n"
    "  --letters        the options listed under the question as \"A. ...\" lines, the\n"
    "                   letter the answer (MMLU's layout)\n"
    "  --raw            no chat template: \"Question: Q\\nAnswer:\" and \" option\", as\n"
    "                   lm-evaluation-harness lays them out (else the question is a user\n"
    "                   turn and the option the answer, scored with its end marker)\n"
    "  --samples FILE   write each question's scores to FILE (JSONL: file, line, answer,\n"
    "                   pick, pick_norm, scores, bytes, shared), a new file\n"
    "  --json           print {\"choices\": [{\"file\", \"questions\", \"accuracy\",\n"
    "                   \"accuracy_stderr\", \"accuracy_norm\", \"accuracy_norm_stderr\",\n"
    "                   \"chance\"}, ...]}; a file whose questions name subjects also has\n"
    "                   \"subjects\": [{\"subject\", ...}] and \"subject_mean\"\n";

enum { EVAL_MAX_SOURCES = 64, EVAL_DEMO_RECORDS = 200 };

typedef struct eval_options {
    const char *model_dir, *format, *backend, *template_name, *tokenizer, *adapters;
    int template_given;
    const char *tokenizer_flag;   /* --tokenizer, or the run's */
    const char *data[EVAL_MAX_SOURCES];
    int n_data;
    int json, routing, demo;
    long demo_records;
    int records_given;
    const char *plugins[EVAL_MAX_SOURCES];
    int n_plugins;
    const char *choices[EVAL_MAX_SOURCES];   /* multiple-choice files */
    int n_choices;
    long shots, limit;
    const char *shots_from;                  /* worked examples from this file */
    const char *samples;                     /* each question's scores (answer), JSONL */
    int letters, raw;
    int generate;                            /* greedy answers' accuracy */
    ans_match match;                         /* --match's (exact when not given) */
    int match_given;
    long max_tokens;
    long batch;                              /* answers made at once (--generate) */
    long seq;                                /* --seq; 0: the run's, else the context */
} eval_options;

static int parse_eval(eval_options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'}, {"data", required_argument, NULL, 'd'},
        {"format", required_argument, NULL, 'f'}, {"backend", required_argument, NULL, 'b'},
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'},
        {"template", required_argument, NULL, 'T'}, {"tokenizer", required_argument, NULL, 'k'},
        {"adapters", required_argument, NULL, 'a'}, {"routing", no_argument, NULL, 'r'},
        {"demo", no_argument, NULL, 'D'}, {"records", required_argument, NULL, 'n'},
        {"plugin", required_argument, NULL, 'P'}, {"choices", required_argument, NULL, 'C'},
        {"shots", required_argument, NULL, 'S'}, {"limit", required_argument, NULL, 'L'},
        {"letters", no_argument, NULL, 'l'}, {"raw", no_argument, NULL, 'R'},
        {"shots-from", required_argument, NULL, 'F'},
        {"samples", required_argument, NULL, 'W'},
        {"generate", no_argument, NULL, 'G'}, {"match", required_argument, NULL, 'M'},
        {"max-tokens", required_argument, NULL, 'X'}, {"batch", required_argument, NULL, 'B'},
        {"seq", required_argument, NULL, 'Q'}, {NULL, 0, NULL, 0}};
    *o = (eval_options){.format = "auto", .backend = "auto", .template_name = "camelidae",
                        .demo_records = EVAL_DEMO_RECORDS};
    int c;
    while ((c = cli_getopt("eval", argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 'm':
            if (cli_path("eval", "--model", optarg, "a model directory or URL", &o->model_dir))
                return EXIT_USAGE;
            break;
        case 'd':
            if (o->n_data == EVAL_MAX_SOURCES)
                return cli_usage_error("eval", "at most %d --data sources", EVAL_MAX_SOURCES);
            if (cli_path("eval", "--data", optarg, "a dataset file or URL",
                         &o->data[o->n_data++]))
                return EXIT_USAGE;
            break;
        case 'r': o->routing = 1; break;
        case 'D': o->demo = 1; break;
        case 'n':
            if (cli_parse_long(optarg, 1, 1000000, &o->demo_records) != 0)
                return cli_usage_error("eval",
                                       "--records %s: expected an integer from 1 to 1000000",
                                       optarg);
            o->records_given = 1;
            break;
        case 'f': o->format = optarg; break;
        case 'b':
            if (cli_backend("eval", optarg) != 0)
                return EXIT_USAGE;
            o->backend = optarg;
            break;
        case 'j': o->json = 1; break;
        case 'T': o->template_name = optarg; o->template_given = 1; break;
        case 'k':
            if (cli_path("eval", "--tokenizer", optarg, "a tokenizer.json or its URL",
                         &o->tokenizer))
                return EXIT_USAGE;
            break;
        case 'a':
            if (cli_path("eval", "--adapters", optarg,
                         "a trainables file or a checkpoint", &o->adapters))
                return EXIT_USAGE;
            break;
        case 'P':
            if (o->n_plugins == EVAL_MAX_SOURCES)
                return cli_usage_error("eval", "at most %d --plugin options", EVAL_MAX_SOURCES);
            if (cli_path("eval", "--plugin", optarg, "a plugin module",
                         &o->plugins[o->n_plugins++]))
                return EXIT_USAGE;
            break;
        case 'C':
            if (o->n_choices == EVAL_MAX_SOURCES)
                return cli_usage_error("eval", "at most %d --choices files", EVAL_MAX_SOURCES);
            if (cli_path("eval", "--choices", optarg, "a multiple-choice file or URL",
                         &o->choices[o->n_choices++]))
                return EXIT_USAGE;
            break;
        case 'S':
            if (cli_parse_long(optarg, 0, 64, &o->shots) != 0)
                return cli_usage_error("eval", "--shots %s: expected an integer from 0 to 64",
                                       optarg);
            break;
        case 'L':
            if (cli_parse_long(optarg, 1, 100000000, &o->limit) != 0)
                return cli_usage_error("eval", "--limit %s: expected an integer from 1 to "
                                       "100000000", optarg);
            break;
        case 'F':
            if (cli_path("eval", "--shots-from", optarg, "a multiple-choice file or URL",
                         &o->shots_from))
                return EXIT_USAGE;
            break;
        case 'W':
            if (cli_path("eval", "--samples", optarg, "the file to make", &o->samples))
                return EXIT_USAGE;
            break;
        case 'l': o->letters = 1; break;
        case 'R': o->raw = 1; break;
        case 'G': o->generate = 1; break;
        case 'M': {
            pesc_error bad;
            if (ans_match_parse(optarg, &o->match, &bad) != 0)
                return cli_usage_error("eval", "--match %s", bad.msg);
            o->match_given = 1;
            break;
        }
        case 'X':
            if (cli_parse_long(optarg, 1, 1000000, &o->max_tokens) != 0)
                return cli_usage_error("eval", "--max-tokens %s: expected an integer from 1 to "
                                       "1000000", optarg);
            break;
        case 'B':
            if (cli_parse_long(optarg, 1, ANS_BATCH_MAX, &o->batch) != 0)
                return cli_usage_error("eval", "--batch %s: a whole number of records from 1 to "
                                       "%d", optarg, ANS_BATCH_MAX);
            break;
        case 'Q':
            if (cli_parse_long(optarg, 2, TRAIN_MAX_SEQ, &o->seq) != 0)
                return cli_usage_error("eval", "--seq %s: a whole number of tokens from 2 to %d",
                                       optarg, TRAIN_MAX_SEQ);
            break;
        case 'h': fputs(eval_usage, stdout); return 0;
        default: return EXIT_USAGE;
        }
    }
    if (optind < argc)
        return cli_unexpected("eval", argv[optind], cli_data_hint(argv[optind]));
    if (!o->model_dir && !o->adapters)
        return cli_usage_error("eval", "--model DIR is required (or --adapters CHECKPOINT, whose "
                               "base model is used)");
    if (o->n_choices && (o->n_data || o->demo || o->routing || o->records_given ||
                         strcmp(o->format, "auto") != 0))
        return cli_usage_error("eval", "--choices scores multiple-choice questions and takes "
                               "no %s (the loss over a dataset's)", o->n_data ? "--data"
                               : o->demo ? "--demo" : o->routing ? "--routing"
                               : o->records_given ? "--records" : "--format");
    if (o->seq && (o->generate || o->n_choices))
        return cli_usage_error("eval", "--seq cuts the records the loss is taken over; %s "
                               "takes none", o->generate ? "--generate" : "--choices");
    if (o->generate && (o->n_choices || o->routing))
        return cli_usage_error("eval", "--generate answers --data or --demo records and takes "
                               "no %s", o->n_choices ? "--choices" : "--routing");
    if (!o->generate && (o->match_given || o->max_tokens || o->batch))
        return cli_usage_error("eval", "%s is for generated answers: give --generate",
                               o->match_given ? "--match" : o->max_tokens ? "--max-tokens"
                               : "--batch");
    const char *mc_only = o->shots ? "--shots" : o->letters ? "--letters" : o->raw ? "--raw"
                          : o->shots_from ? "--shots-from" : NULL;
    const char *either = o->limit ? "--limit" : o->samples ? "--samples" : NULL;
    if (!o->n_choices && mc_only)
        return cli_usage_error("eval", "%s is for --choices questions: give --choices FILE",
                               mc_only);
    if (!o->n_choices && !o->generate && either)
        return cli_usage_error("eval", "%s is for --choices questions or --generate's answers",
                               either);
    if (o->shots_from && !o->shots)
        return cli_usage_error("eval", "--shots-from gives worked examples: say how many with "
                               "--shots N");
    if (o->raw && o->template_given)
        return cli_usage_error("eval", "--raw lays questions out with no template, and "
                               "--template %s names one: give either", o->template_name);
    if (!o->n_data && !o->demo && !o->n_choices)
        return cli_usage_error("eval", "--data FILE (or --demo, or --choices FILE) is required");
    if (o->n_data && o->demo)
        return cli_usage_error("eval", "--demo and --data do not go together");
    if (o->records_given && !o->demo)
        return cli_usage_error("eval", "--records counts --demo's records per family; a --data "
                               "file is scored whole (cut it first to score part of it)");
    if (!template_find(o->template_name))
        return cli_usage_error("eval", "--template %s: known templates are %s", o->template_name,
                               template_list());
    return -1;   /* go on */
}

/* Per source: tokens seen and (token, slot) assignments per layer and expert, summed over
 * records from the counts every forward of a crafted model takes anyway. One record is one
 * source, so its forward's counts are that source's. */
typedef struct routing_tally {
    int n_sources, L, E, K;
    long long *tokens;           /* (n_sources) */
    long long *counts;           /* (n_sources, L, E) */
} routing_tally;

static void tally_init(routing_tally *t, const model *m, int n_sources)
{
    *t = (routing_tally){.n_sources = n_sources, .L = m->config.n_layers, .E = m->pesc.experts,
                         .K = m->pesc.top_k};
    t->tokens = xcalloc((size_t)n_sources, sizeof *t->tokens);
    t->counts = xcalloc((size_t)n_sources * t->L * t->E, sizeof *t->counts);
}

static void tally_free(routing_tally *t)
{
    free(t->tokens);
    free(t->counts);
}

static void tally_add(routing_tally *t, const model *m, int source)
{
    long long *c = t->counts + (size_t)source * t->L * t->E;
    for (int i = 0; i < t->L * t->E; i++)
        c[i] += m->routing.counts[i];
    t->tokens[source] += m->routing.tokens;
}

/* Share of expert e in source s's assignments at layer l (0 when the source has none). */
static double tally_share(const routing_tally *t, int s, int l, int e)
{
    long long total = t->tokens[s] * t->K;
    return total ? (double)t->counts[((size_t)s * t->L + l) * t->E + e] / (double)total : 0.0;
}

/* Jensen-Shannon divergence in bits (0: the same distribution, 1: disjoint). */
static double js_divergence(const double *p, const double *q, int n)
{
    double d = 0.0;
    for (int i = 0; i < n; i++) {
        double mid = 0.5 * (p[i] + q[i]);
        if (p[i] > 0) d += 0.5 * p[i] * log2(p[i] / mid);
        if (q[i] > 0) d += 0.5 * q[i] * log2(q[i] / mid);
    }
    return d;
}

/* Mean over pairs of sources with tokens; -1 when fewer than two have any. */
static double tally_divergence(const routing_tally *t, int l)
{
    double *p = xmalloc((size_t)t->E * sizeof *p), *q = xmalloc((size_t)t->E * sizeof *q);
    double sum = 0.0;
    int pairs = 0;
    for (int a = 0; a < t->n_sources; a++)
        for (int b = a + 1; b < t->n_sources; b++) {
            if (!t->tokens[a] || !t->tokens[b])
                continue;
            for (int e = 0; e < t->E; e++) {
                p[e] = tally_share(t, a, l, e);
                q[e] = tally_share(t, b, l, e);
            }
            sum += js_divergence(p, q, t->E);
            pairs++;
        }
    free(p);
    free(q);
    return pairs ? sum / pairs : -1.0;
}

/* Scores every record; one record at a time keeps memory to the longest record. Records past
 * limit tokens (--seq, or the model's context) are scored on their first limit tokens, as
 * training cuts them at its --seq; *cut counts them. */
static int score_records(model *m, const ds_records *d, int limit, routing_tally *tally,
                         double *nll, long long *count, int *cut, pesc_error *err)
{
    *nll = 0.0;
    *count = 0;
    *cut = 0;
    int32_t *targets = NULL;
    int cap = 0;
    for (int i = 0; i < d->n; i++) {
        const ds_record *r = &d->items[i];
        int len = r->len;
        if (limit > 0 && len > limit) {
            len = limit;
            (*cut)++;
        }
        if (len > cap)
            targets = xrealloc(targets, (size_t)(cap = len) * sizeof *targets);
        model_shift_targets(targets, r->ids, r->labels, len);
        double record_nll;
        long long record_count;
        if (model_forward(m, r->ids, 1, len, err) != 0 ||
            model_nll(m, targets, &record_nll, &record_count, NULL, err) != 0) {
            free(targets);
            return pesc_fail_prefix(err, "record %d", i + 1);
        }
        if (tally)
            tally_add(tally, m, r->source);
        *nll += record_nll;
        *count += record_count;
    }
    free(targets);
    return 0;
}

/* The sources: --data files (URLs fetched first) or the demo's families. names[i] is what
 * the output calls source i. */
typedef struct eval_sources {
    int n;
    char *paths[EVAL_MAX_SOURCES];     /* a local file, or a demo source ("demo:reverse,...") */
    const char *names[EVAL_MAX_SOURCES];
} eval_sources;

static int resolve_sources(const eval_options *o, eval_sources *s, pesc_error *err)
{
    if (o->demo) {
        for (int f = 0; f < DEMO_FAMILIES; f++) {
            char spec[128];
            snprintf(spec, sizeof spec, "demo:%s,records=%ld,seed=%u", demo_family_name(f),
                     o->demo_records, DEMO_EVAL_SEED);
            s->paths[s->n] = xstrdup(spec);
            s->names[s->n++] = demo_family_name(f);
        }
        return 0;
    }
    for (int i = 0; i < o->n_data; i++) {
        /* URLs are downloaded to the cache first (progress on stderr); paths pass through */
        if (fetch_view_url_to_cache(o->data[i], &s->paths[s->n], err) != 0)
            return pesc_fail_prefix(err, "--data");
        s->names[s->n++] = o->data[i];
    }
    return 0;
}

static void free_sources(eval_sources *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->paths[i]);
}

/* Reads the records of every source; text formats need the tokenizer (--tokenizer, or the
 * model's own, which auto only loads when the model directory has one). */
static int load_data(const eval_options *o, const char *model_dir, const eval_sources *s,
                     const ds_formats *formats, ds_records *d, int vocab_size, tokenizer **tok,
                     pesc_error *err)
{
    ds_load_options lo = {.vocab_size = vocab_size, .strict = 1,
                          .tpl = template_find(o->template_name), .formats = formats};
    ds_formats_parse(formats, o->format, &lo.format, err);
    if (lo.format != DS_TOKENS || o->demo) {
        char *path = NULL;
        if (o->tokenizer && fetch_view_url_to_cache(o->tokenizer, &path, err) != 0)
            return pesc_fail_prefix(err, "%s", o->tokenizer_flag);
        if (!path && !model_dir && (o->demo || lo.format != DS_AUTO))
            return pesc_fail(err, "the model is the random weights of its run's --init-config, "
                             "with no tokenizer beside them: give --tokenizer FILE|URL");
        if (!path && model_dir)
            path = pesc_path_join(model_dir, "tokenizer.json");
        /* auto needs a tokenizer only for text records: a missing file is fine until one comes,
         * but a file that is there and broken is reported now */
        if (path && (o->tokenizer || o->demo || lo.format != DS_AUTO || access(path, F_OK) == 0)) {
            *tok = tok_load(path, err);
            if (!*tok) {
                free(path);
                return o->tokenizer ? pesc_fail_prefix(err, "%s", o->tokenizer_flag) : -1;
            }
        }
        free(path);
        lo.tok = *tok;   /* auto: records that need text then say a tokenizer is missing */
    }
    for (int i = 0; i < s->n; i++) {
        lo.source = i;
        if (o->demo ? demo_load(d, s->paths[i], &lo, err) != 0
                    : dataset_load(d, s->paths[i], &lo, err) != 0)
            return o->demo ? -1 : pesc_fail_prefix(err, "--data");
    }
    return 0;
}

static void print_routing_text(const routing_tally *t, const eval_sources *s)
{
    int width = 10;
    for (int i = 0; i < s->n; i++)
        width = (int)strlen(s->names[i]) > width ? (int)strlen(s->names[i]) : width;
    width = width > 40 ? 40 : width;
    printf("routing: %d layers, %d experts, top-%d; each source's share of its (token, slot) "
           "assignments\n", t->L, t->E, t->K);
    double mean = 0.0;
    int layers_with = 0;
    for (int l = 0; l < t->L; l++) {
        printf("layer %-*d", width - 4, l);
        for (int e = 0; e < t->E; e++) {
            char head[16];
            snprintf(head, sizeof head, "e%d", e);
            printf(" %7s", head);
        }
        printf("  tokens\n");
        for (int i = 0; i < s->n; i++) {
            printf("  %-*.*s", width, width, s->names[i]);
            for (int e = 0; e < t->E; e++)
                printf(" %7.3f", tally_share(t, i, l, e));
            printf("  %lld\n", t->tokens[i]);
        }
        double js = tally_divergence(t, l);
        if (js >= 0) {
            printf("  divergence between sources (mean pairwise Jensen-Shannon, bits): %.4f\n", js);
            mean += js;
            layers_with++;
        }
    }
    if (layers_with)
        printf("mean divergence over layers: %.4f\n", mean / layers_with);
    else
        printf("divergence: needs two sources with tokens\n");
}

static void print_routing_json(const routing_tally *t, const eval_sources *s)
{
    printf(", \"routing\": {\"layers\": %d, \"experts\": %d, \"top_k\": %d, \"sources\": [",
           t->L, t->E, t->K);
    for (int i = 0; i < s->n; i++) {
        json_t *name = json_string(s->names[i]);
        char *quoted = name ? json_dumps(name, JSON_ENCODE_ANY) : NULL;
        printf("%s{\"name\": %s, \"tokens\": %lld, \"share\": [", i ? ", " : "",
               quoted ? quoted : "\"?\"", t->tokens[i]);
        free(quoted);
        json_decref(name);
        for (int l = 0; l < t->L; l++) {
            printf("%s[", l ? ", " : "");
            for (int e = 0; e < t->E; e++)
                printf("%s%s", e ? ", " : "", cli_json_number(tally_share(t, i, l, e), 6).text);
            printf("]");
        }
        printf("]}");
    }
    printf("], \"divergence\": [");
    double mean = 0.0;
    int layers_with = 0;
    for (int l = 0; l < t->L; l++) {
        double js = tally_divergence(t, l);
        if (js >= 0) {
            printf("%s%s", l ? ", " : "", cli_json_number(js, 6).text);
            mean += js;
            layers_with++;
        } else {
            printf("%snull", l ? ", " : "");
        }
    }
    printf("], \"mean_divergence\": %s}",
           cli_json_number(layers_with ? mean / layers_with : NAN, 6).text);
}

/* ---- multiple choice ------------------------------------------------------------------ */

/* Options whose scored tokens come after a long prefix they share, and are few (MMLU's
 * letters, after five worked examples): the prefix runs once, into the KV cache, and each
 * option's own tokens are decoded on it, a token at a time; the batch would run the prefix
 * once an option. */
enum { SHARED_MIN_PREFIX = 32, SHARED_MAX_TOKENS = 4 };

/* ln softmax(logits)[id], in double. */
static double log_prob(const float *logits, int V, int id)
{
    float top = logits[0];
    for (int v = 1; v < V; v++)
        top = logits[v] > top ? logits[v] : top;
    double sum = 0.0;
    for (int v = 0; v < V; v++)
        sum += exp((double)logits[v] - top);
    return (double)logits[id] - top - log(sum);
}

/* The tokens every option starts with, up to its first scored one: how many. */
static int shared_prefix(const tok_ids *ids, const tok_ids *labels, int K)
{
    int n = ids[0].n;
    for (int i = 0; i < K; i++) {
        int j = 0;
        while (j < n && j < ids[i].n && ids[i].ids[j] == ids[0].ids[j] && labels[i].ids[j] < 0)
            j++;
        n = j;
    }
    return n;
}

static int score_shared(model *m, const tok_ids *ids, const tok_ids *labels, int K, int P,
                        int T, double *score, pesc_error *err)
{
    int V = m->config.vocab_size, capacity = (T + 255) / 256 * 256;
    int context = m->config.max_position_embeddings;
    if (context > 0 && capacity > context)
        capacity = context;
    float *prefix = xmalloc((size_t)V * sizeof *prefix), *next = xmalloc((size_t)V * sizeof *next);
    int rc = model_cache_reset(m, capacity, err) != 0 ||
             model_decode(m, ids[0].ids, P, prefix, NULL, err) != 0 ? -1 : 0;
    for (int i = 0; rc == 0 && i < K; i++) {
        const float *logits = prefix;   /* what comes after position t - 1 */
        score[i] = 0.0;
        if (model_cache_keep(m, P, capacity, err) != 0)
            rc = -1;
        for (int t = P; rc == 0 && t < ids[i].n; t++) {
            if (labels[i].ids[t] >= 0)
                score[i] += log_prob(logits, V, ids[i].ids[t]);
            if (t + 1 < ids[i].n) {
                rc = model_decode(m, &ids[i].ids[t], 1, next, NULL, err);
                logits = next;
            }
        }
    }
    free(prefix);
    free(next);
    return rc;
}

/* One question: its options as one batch, an option a sequence (right-padded: causal
 * attention keeps the padding out of the tokens before it), or on a shared prefix
 * (score_shared); each option's log-likelihood into score and its scored text's length into
 * bytes. */
static int score_question(model *m, tokenizer *tok, const mc_question *q, const mc_layout *l,
                          const char *path, double *score, size_t *bytes, int *shared,
                          pesc_error *err)
{
    int context = m->config.max_position_embeddings;
    mc_batch b;
    *shared = 0;
    if (mc_batch_make(&b, q, l, tok, err) != 0)
        return pesc_fail_prefix(err, "%s:%ld", path, q->line);
    int rc = 0;
    if (context > 0 && b.T > context)
        rc = pesc_fail(err, "%s:%ld: the question%s is %d tokens, past the model's context of "
                       "%d (max_position_embeddings)%s", path, q->line,
                       l->n_shots ? " with its worked examples" : "", b.T, context,
                       l->n_shots ? ": give fewer --shots" : "");
    int P = rc == 0 ? shared_prefix(b.ids, b.labels, b.K) : 0, own = 0;
    for (int i = 0; rc == 0 && i < b.K; i++)
        own = b.ids[i].n - P > own ? b.ids[i].n - P : own;
    double nll[MC_MAX_OPTIONS];
    if (rc == 0 && P >= SHARED_MIN_PREFIX && own <= SHARED_MAX_TOKENS &&
        !getenv("PESC_MC_BATCH")) {
        *shared = P;
        if (score_shared(m, b.ids, b.labels, b.K, P, b.T, score, err) != 0)
            rc = pesc_fail_prefix(err, "%s:%ld", path, q->line);
    } else if (rc == 0) {
        if (model_forward(m, b.tokens, b.K, b.T, err) != 0 ||
            model_nll_sequences(m, b.targets, nll, err) != 0)
            rc = pesc_fail_prefix(err, "%s:%ld", path, q->line);
        for (int i = 0; rc == 0 && i < b.K; i++)
            score[i] = -nll[i];
    }
    memcpy(bytes, b.bytes, (size_t)b.K * sizeof *bytes);
    mc_batch_free(&b);
    return rc;
}

/* Each subject's tally when a file's questions name subjects (MMLU's 57). */
typedef struct subject_tally {
    char *kept;         /* its name (the questions are freed before the printing) */
    mc_tally tally;
} subject_tally;

typedef struct choices_result {
    const char *name;
    mc_tally tally;
    subject_tally *subjects;
    int n_subjects;
} choices_result;

static void add_subject(choices_result *r, const mc_question *q, const double *score,
                        const size_t *bytes)
{
    if (!q->subject)
        return;
    int i = 0;
    while (i < r->n_subjects && strcmp(r->subjects[i].kept, q->subject) != 0)
        i++;
    if (i == r->n_subjects) {
        r->subjects = xrealloc(r->subjects, (size_t)(i + 1) * sizeof *r->subjects);
        r->subjects[i] = (subject_tally){.kept = xstrdup(q->subject)};
        r->n_subjects++;
    }
    mc_tally_add(&r->subjects[i].tally, q, score, bytes);
}

static int by_subject(const void *a, const void *b)
{
    return strcmp(((const subject_tally *)a)->kept, ((const subject_tally *)b)->kept);
}

/* Every question of one file past its worked examples (or every one, the examples coming
 * from --shots-from's set, `from`). */
static void write_sample(FILE *f, const char *name, const mc_question *q, const double *score,
                         const size_t *bytes, int shared)
{
    json_t *s = json_string(name);
    char *quoted = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
    fprintf(f, "{\"file\": %s, \"line\": %ld, \"answer\": %d, \"pick\": %d, \"pick_norm\": %d, "
            "\"scores\": [", quoted ? quoted : "\"?\"", q->line, q->answer,
            mc_pick(score, NULL, q->n_options), mc_pick(score, bytes, q->n_options));
    for (int i = 0; i < q->n_options; i++)
        fprintf(f, "%s%s", i ? ", " : "", cli_json_number(score[i], 9).text);
    fprintf(f, "], \"bytes\": [");
    for (int i = 0; i < q->n_options; i++)
        fprintf(f, "%s%zu", i ? ", " : "", bytes[i]);
    fprintf(f, "], \"shared\": %d}\n", shared);
    free(quoted);
    json_decref(s);
}

static int score_file(model *m, tokenizer *tok, const eval_options *o,
                      const chat_template *tpl, const mc_set *from, const char *path,
                      FILE *samples, choices_result *r, pesc_error *err)
{
    mc_set set;
    int skip = from ? 0 : (int)o->shots;
    if (mc_load(&set, path, o->limit ? skip + o->limit : 0, err) != 0)
        return -1;
    int rc = 0;
    if (set.n <= skip)
        rc = pesc_fail(err, "%s holds %d question%s: --shots %ld leaves none to score", r->name,
                       set.n, set.n == 1 ? "" : "s", o->shots);
    mc_question examples[64];
    mc_layout l = {.tpl = tpl, .letters = o->letters, .shots = from ? examples : set.items,
                   .n_shots = (int)o->shots};
    double score[MC_MAX_OPTIONS], shown = 0.0;
    size_t bytes[MC_MAX_OPTIONS];
    int shared;
    for (int i = skip; rc == 0 && i < set.n; i++) {
        const mc_question *q = &set.items[i];
        if (pesc_now() - shown > 0.5) {
            pesc_show_phase("pesc eval", "%s: question %d of %d", r->name, i + 1 - skip,
                            set.n - skip);
            shown = pesc_now();
        }
        if (from && mc_examples(from, q, (int)o->shots, examples) < o->shots) {
            rc = pesc_fail(err, "%s:%ld: --shots-from %s has fewer than %ld questions%s%s", path,
                           q->line, o->shots_from, o->shots, q->subject ? " of subject " : "",
                           q->subject ? q->subject : "");
            break;
        }
        if ((rc = score_question(m, tok, q, &l, path, score, bytes, &shared, err)) == 0) {
            mc_tally_add(&r->tally, q, score, bytes);
            add_subject(r, q, score, bytes);
            if (samples)
                write_sample(samples, r->name, q, score, bytes, shared);
        }
    }
    mc_free(&set);
    qsort(r->subjects, (size_t)r->n_subjects, sizeof *r->subjects, by_subject);
    return rc;
}

static void print_tally_json(const char *key, const char *name, const mc_tally *t)
{
    double acc = (double)t->right / (double)t->questions;
    double norm = (double)t->right_norm / (double)t->questions;
    json_t *s = json_string(name);
    char *quoted = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
    printf("{\"%s\": %s, \"questions\": %ld, \"accuracy\": %s, \"accuracy_stderr\": %s, "
           "\"accuracy_norm\": %s, \"accuracy_norm_stderr\": %s, \"chance\": %s", key,
           quoted ? quoted : "\"?\"", t->questions, cli_json_number(acc, 6).text,
           cli_json_number(mc_stderr(acc, t->questions), 6).text, cli_json_number(norm, 6).text,
           cli_json_number(mc_stderr(norm, t->questions), 6).text,
           cli_json_number(t->chance / (double)t->questions, 6).text);
    free(quoted);
    json_decref(s);
}

/* The mean of the subjects' accuracies (MMLU's macro average). */
static double subject_mean(const choices_result *r)
{
    double sum = 0.0;
    for (int i = 0; i < r->n_subjects; i++)
        sum += (double)r->subjects[i].tally.right / (double)r->subjects[i].tally.questions;
    return sum / r->n_subjects;
}

static void print_choices(const eval_options *o, const choices_result *r, int n,
                          const char *layout, const char *device, double seconds)
{
    for (int i = 0; i < n; i++) {
        const mc_tally *t = &r[i].tally;
        int subjects = r[i].n_subjects > 1;
        if (o->json) {
            printf("%s", i ? ", " : "{\"choices\": [");
            print_tally_json("file", r[i].name, t);
            for (int k = 0; subjects && k < r[i].n_subjects; k++) {
                printf("%s", k ? ", " : ", \"subjects\": [");
                print_tally_json("subject", r[i].subjects[k].kept, &r[i].subjects[k].tally);
                printf("}");
            }
            if (subjects)
                printf("], \"subject_mean\": %s", cli_json_number(subject_mean(&r[i]), 6).text);
            printf("}");
            continue;
        }
        double acc = (double)t->right / (double)t->questions;
        double norm = (double)t->right_norm / (double)t->questions;
        printf("%s: accuracy %.4f ± %.4f  length-normalised %.4f ± %.4f  (%ld questions, "
               "chance %.4f)\n", r[i].name, acc, mc_stderr(acc, t->questions), norm,
               mc_stderr(norm, t->questions), t->questions, t->chance / (double)t->questions);
        for (int k = 0; subjects && k < r[i].n_subjects; k++) {
            const mc_tally *s = &r[i].subjects[k].tally;
            printf("  %-40s %.4f  %.4f  (%ld)\n", r[i].subjects[k].kept,
                   (double)s->right / (double)s->questions,
                   (double)s->right_norm / (double)s->questions, s->questions);
        }
        if (subjects)
            printf("  mean over %d subjects: %.4f\n", r[i].n_subjects, subject_mean(&r[i]));
    }
    const char *examples = o->shots_from ? o->shots_from : "each file's first questions";
    if (o->json)
        printf("], \"shots\": %ld, \"layout\": \"%s\", \"letters\": %s}\n", o->shots, layout,
               o->letters ? "true" : "false");
    else if (o->shots)
        printf("(%ld worked example%s from %s, %s%s; %s, %.2f s)\n", o->shots,
               o->shots == 1 ? "" : "s", examples, layout, o->letters ? ", lettered" : "",
               device, seconds);
    else
        printf("(no worked examples, %s%s; %s, %.2f s)\n", layout,
               o->letters ? ", lettered" : "", device, seconds);
}

/* --samples FILE, a new file (an old one, a log or a result, is kept), or *f NULL without it */
static int open_samples(const eval_options *o, FILE **f, pesc_error *err)
{
    *f = NULL;
    if (!o->samples)
        return 0;
    int fd = open(o->samples, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!*f) {
        int e = errno;
        if (fd >= 0) {   /* the file it made would refuse the next try */
            close(fd);
            unlink(o->samples);
        }
        return pesc_fail(err, "--samples %s: %s%s", o->samples, strerror(e),
                         e == EEXIST                ? ": name a new file"
                         : e == EACCES || e == EROFS ? ": name a file in a directory you can "
                                                       "write"
                         : e == ENOENT               ? ": its directory does not exist"
                                                     : "");
    }
    return 0;
}

/* --generate: each source's accuracy, and all of them together */
static void print_answers(const eval_options *o, const eval_sources *s, const ans_tally *t,
                          const char *match, const char *device, double seconds)
{
    ans_tally all = {0};
    for (int i = 0; i < s->n; i++) {
        all.right += t[i].right;
        all.scored += t[i].scored;
        all.no_answer += t[i].no_answer;
        all.too_long += t[i].too_long;
        all.cut += t[i].cut;
    }
    if (o->json) {
        printf("{\"accuracy\": %s, \"right\": %ld, \"answered\": %ld, \"match\": \"%s\", "
               "\"sources\": [", cli_json_number((double)all.right / (double)all.scored, 6).text,
               all.right, all.scored, match);
        for (int i = 0; i < s->n; i++) {
            json_t *name = json_string(s->names[i]);
            char *quoted = name ? json_dumps(name, JSON_ENCODE_ANY) : NULL;
            printf("%s{\"source\": %s, \"accuracy\": %s, \"right\": %ld, \"answered\": %ld, "
                   "\"no_answer\": %ld, \"too_long\": %ld, \"cut\": %ld}", i ? ", " : "",
                   quoted ? quoted : "\"?\"",
                   cli_json_number(t[i].scored ? (double)t[i].right / (double)t[i].scored : 0.0,
                                   6).text, t[i].right,
                   t[i].scored, t[i].no_answer, t[i].too_long, t[i].cut);
            free(quoted);
            json_decref(name);
        }
        printf("]}\n");
        return;
    }
    for (int i = 0; s->n > 1 && i < s->n; i++)
        printf("%s: %.4f (%ld of %ld)\n", s->names[i],
               t[i].scored ? (double)t[i].right / (double)t[i].scored : 0.0, t[i].right,
               t[i].scored);
    double acc = (double)all.right / (double)all.scored;
    printf("accuracy %.4f ± %.4f  (%ld of %ld answers right, %s match; %s, %.2f s)\n", acc,
           mc_stderr(acc, all.scored), all.right, all.scored, match, device, seconds);
    if (all.no_answer)
        fprintf(stderr, "pesc eval: note: %ld record%s without a prompt and an answer%s not "
                "scored\n", all.no_answer, all.no_answer == 1 ? "" : "s",
                strcmp(match, "number") == 0 ? " with a number in it" : "");
    if (all.too_long)
        fprintf(stderr, "pesc eval: note: %ld record%s whose prompt fills the model's context "
                "(max_position_embeddings) not scored\n", all.too_long,
                all.too_long == 1 ? "" : "s");
    if (all.cut)
        fprintf(stderr, "pesc eval: note: %ld of the answers reached their token limit (%s) "
                "before an end marker, and were scored as they stand\n", all.cut,
                o->max_tokens ? "--max-tokens" : "the default: twice the reference's tokens "
                "and 16 more, or 512 for numbers; --max-tokens sets it");
}

/* --generate over the loaded records */
static int run_generate(const eval_options *o, model *m, const ds_records *d,
                        const eval_sources *s, tokenizer *tok, pesc_backend *b, double t0,
                        pesc_error *err)
{
    ans_options a = {.match = o->match, .max_tokens = o->max_tokens, .limit = o->limit,
                     .names = s->names, .step = -1, .batch = (int)o->batch};
    if (!tok)
        return pesc_fail(err, "--generate compares the answers' text: give the tokenizer "
                         "(--tokenizer FILE|URL)");
    ans_tally tally[EVAL_MAX_SOURCES] = {{0}};
    int rc = open_samples(o, &a.samples, err);
    if (rc == 0)
        rc = ans_run(m, tok, template_find(o->template_name), d, &a, tally, err);
    if (a.samples && fclose(a.samples) != 0 && rc == 0)
        rc = pesc_fail(err, "--samples %s: %s", o->samples, strerror(errno));
    long answered = 0;
    for (int i = 0; i < s->n; i++)
        answered += tally[i].scored;
    if (rc == 0 && answered == 0)
        rc = pesc_fail(err, "no record has a prompt and an answer%s to score (a text record is "
                       "all answer; --generate needs chat or prompt/completion records)",
                       a.match == ANS_MATCH_NUMBER ? " with a number" : "");
    if (rc == 0)
        print_answers(o, s, tally, ans_match_name(a.match), backend_device(b),
                      pesc_now() - t0);
    return rc;
}

static int run_choices(const eval_options *o, model *m, const tuned_model *t, pesc_backend *b,
                       pesc_error *err)
{
    double t0 = pesc_now();
    /* o->tokenizer holds the run's when none was given: tuned_tokenizer takes it from t */
    int given = strcmp(o->tokenizer_flag, "--tokenizer") == 0;
    tokenizer *tok = tuned_tokenizer(t, given ? o->tokenizer : NULL, err);
    if (!tok)
        return -1;
    const chat_template *tpl = o->raw ? NULL : template_find(o->template_name);
    const char *own = tpl ? template_model_other(tok, o->template_name) : NULL;
    if (own && !o->template_given) {
        pesc_show_phase("pesc eval", NULL);
        fprintf(stderr, "pesc eval: note: the model's chat template (tokenizer_config.json) is "
                "%s's; questions are laid out in %s (the default): --template %s if the model "
                "was tuned in its own format, --raw for none\n", own, o->template_name, own);
    }
    choices_result r[EVAL_MAX_SOURCES] = {{0}};
    mc_set from = {0};
    char *path = NULL;
    int rc = 0;
    if (o->shots_from && (fetch_view_url_to_cache(o->shots_from, &path, err) != 0 ||
                          mc_load(&from, path, 0, err) != 0))
        rc = pesc_fail_prefix(err, "--shots-from");
    free(path);
    FILE *samples = NULL;
    if (rc == 0)
        rc = open_samples(o, &samples, err);
    for (int i = 0; rc == 0 && i < o->n_choices; i++) {
        path = NULL;
        r[i].name = o->choices[i];
        if (fetch_view_url_to_cache(o->choices[i], &path, err) != 0 ||
            score_file(m, tok, o, tpl, o->shots_from ? &from : NULL, path, samples, &r[i],
                       err) != 0)
            rc = pesc_fail_prefix(err, "--choices");
        free(path);
    }
    if (samples && fclose(samples) != 0 && rc == 0)
        rc = pesc_fail(err, "--samples %s: %s", o->samples, strerror(errno));
    pesc_show_phase("pesc eval", NULL);
    if (rc == 0)
        print_choices(o, r, o->n_choices, tpl ? o->template_name : "raw", backend_device(b),
                      pesc_now() - t0);
    for (int i = 0; i < o->n_choices; i++) {
        for (int k = 0; k < r[i].n_subjects; k++)
            free(r[i].subjects[k].kept);
        free(r[i].subjects);
    }
    mc_free(&from);
    tok_delete(tok);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    eval_options o;
    int status = parse_eval(&o, argc, argv);
    if (status >= 0)
        return status;
    pesc_error err = {{0}};
    /* formats: the built-ins and the plugins' (--plugin, $PESC_PLUGIN_PATH, installed) */
    pesc_plugins *plugins = plugins_open(o.plugins, o.n_plugins, &err);
    ds_formats *formats = plugins ? plugins_formats(plugins, &err) : NULL;
    ds_format format;
    if (!formats) {
        plugins_delete(plugins);
        return cli_fail("eval", &err);
    }
    if (ds_formats_parse(formats, o.format, &format, &err) != 0) {
        ds_formats_delete(formats);
        plugins_delete(plugins);
        return cli_usage_error("eval", "%s", err.msg);
    }
    pesc_backend *b = cli_backend_new("eval", o.backend);
    if (!b) {
        ds_formats_delete(formats);
        plugins_delete(plugins);
        return 1;
    }
    model m = {0};
    ds_records d = {0};
    tokenizer *tok = NULL;
    tuned_model t = {0};
    eval_sources sources = {0};
    routing_tally tally = {0};
    double nll = 0.0, t0 = pesc_now();
    long long count = 0;
    status = 1;
    if (resolve_sources(&o, &sources, &err) != 0 ||
        tuned_load("pesc eval", o.model_dir, o.adapters, b, &m, &t, &err) != 0)
        goto out;
    /* a run's checkpoint: scored as it was tuned, in its template with its tokenizer */
    if (tuned_template(&t, &o.template_name, &o.template_given, &err) != 0)
        goto out;
    o.tokenizer_flag = o.tokenizer ? "--tokenizer" : "the run's --tokenizer";
    if (!o.tokenizer)
        o.tokenizer = t.tokenizer;
    model_freeze_base(&m);   /* nothing trains: the backend may mirror the weights for products */
    if (o.n_choices) {
        if (run_choices(&o, &m, &t, b, &err) == 0)
            status = 0;
        goto out;
    }
    if (o.routing && !m.crafted) {
        pesc_fail(&err, "--routing needs a crafted model: give its routers and adapters with "
                  "--adapters FILE");
        goto out;
    }
    pesc_show_phase("pesc eval", "reading and tokenizing the data");
    if (load_data(&o, t.dir, &sources, formats, &d, m.config.vocab_size, &tok, &err) != 0)
        goto out;
    const char *own = template_model_other(tok, o.template_name);
    if (own && !o.template_given && !o.demo && strcmp(o.format, "tokens") != 0) {
        pesc_show_phase("pesc eval", NULL);
        fprintf(stderr, "pesc eval: note: the model's chat template (tokenizer_config.json) is "
                "%s's; records are rendered with %s (the default): --template %s if the model "
                "was tuned in its own format\n", own, o.template_name, own);
    }
    if (o.generate) {
        if (run_generate(&o, &m, &d, &sources, tok, b, t0, &err) == 0)
            status = 0;
        goto out;
    }
    pesc_show_phase("pesc eval", "scoring %d record%s", d.n, d.n == 1 ? "" : "s");
    if (o.routing)
        tally_init(&tally, &m, sources.n);
    /* where records are cut: --seq, else the model's context (and never past it) */
    int context = m.config.max_position_embeddings, limit = (int)o.seq;
    const char *limit_is = "--seq", *why = "";
    if (limit <= 0 || (context > 0 && limit > context)) {
        limit = context;
        limit_is = "the model's context";
        why = " (max_position_embeddings)";
    }
    int cut = 0;
    if (score_records(&m, &d, limit, o.routing ? &tally : NULL, &nll, &count, &cut, &err) != 0)
        goto out;
    pesc_show_phase("pesc eval", NULL);
    if (count == 0) {
        char what[600];   /* the one source, or all of them */
        int used = 0;
        for (int i = 0; i < sources.n && used < (int)sizeof what; i++)
            used += snprintf(what + used, sizeof what - (size_t)used, "%s%s",
                             i == 0 ? "" : i + 1 == sources.n ? " and " : ", ", sources.names[i]);
        if (cut)   /* the answers may well be there, past what is scored */
            pesc_fail(&err, "%s: no token is predicted within %s of %d tokens%s: %d of %d "
                      "records are longer and cut there, and any answer they hold lies past "
                      "it; shorten their prompts%s", what, limit_is, limit, why, cut, d.n,
                      limit != context ? ", or raise --seq" : "");
        else
            pesc_fail(&err, "%s: no token is predicted (every record is one token long or fully "
                      "masked with -100)", what);
        goto out;
    }
    if (cut)
        fprintf(stderr, "pesc eval: note: %d record%s longer than %s of %d tokens%s scored on "
                "the first %d\n", cut, cut == 1 ? "" : "s", limit_is, limit, why, limit);
    int past_run = 0;   /* records the checkpoint's run cut shorter than they are scored here */
    for (int i = 0; !o.seq && t.seq > 0 && t.seq < limit && i < d.n; i++)
        past_run += d.items[i].len > t.seq;
    if (past_run)
        fprintf(stderr, "pesc eval: note: %d record%s longer than the run's --seq of %d tokens, "
                "where its held-out loss cut them: --seq %d scores as it did\n", past_run,
                past_run == 1 ? " is" : "s are", t.seq, t.seq);
    double loss = nll / (double)count;
    if (!isfinite(loss)) {
        pesc_fail(&err, "the loss is %s: the model overflows on this data (its weights and "
                  "--adapters are finite numbers, not what it makes of them)%s",
                  isnan(loss) ? "NaN" : "infinite", model_device_advice(&m));
        goto out;
    }
    if (o.json) {
        printf("{\"loss\": %s, \"tokens\": %lld, \"ppl\": %s", cli_json_number(loss, 9).text,
               count, cli_json_number(exp(loss), 9).text);
        if (o.routing)
            print_routing_json(&tally, &sources);
        printf("}\n");
    } else {
        printf("loss %.6f  ppl %.4f  tokens %lld  records %d  (%s, %.2f s)\n", loss, exp(loss),
               count, d.n, backend_device(b), pesc_now() - t0);
        if (o.routing)
            print_routing_text(&tally, &sources);
    }
    status = 0;
out:
    if (status != 0) {
        pesc_show_phase("pesc eval", NULL);
        cli_fail("eval", &err);
    }
    tally_free(&tally);
    dataset_free(&d);
    tok_delete(tok);
    tuned_free(&t);
    free_sources(&sources);
    model_free(&m);
    backend_delete(b);
    ds_formats_delete(formats);
    plugins_delete(plugins);   /* last: the formats' tables live in the modules */
    return status;
}
