/* cmd_generate — `pesc generate`: a prompt through the chat template, the answer streamed to
 * standard output token by token (KV cache, greedy or sampled). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "cli.h"
#include "commands.h"
#include "fetch_view.h"
#include "model.h"
#include "sample.h"
#include "template.h"
#include "tokenizer.h"
#include "tuned.h"

static const char generate_usage[] =
    "usage: pesc generate (--model DIR|URL [--adapters FILE] | --adapters CHECKPOINT)\n"
    "                     [--prompt TEXT] [--max-tokens N] [--temperature T] [--top-p P]\n"
    "                     [--top-k K] [--seed S] [--template NAME] [--tokenizer FILE|URL]\n"
    "                     [--raw] [--backend B]\n"
    "\n"
    "Answers a prompt (from --prompt, or standard input: at a terminal, end it with Ctrl-D)\n"
    "with the model, streaming the text as it comes. Stops at the end of the assistant turn\n"
    "(EOS or the template's end marker) or after --max-tokens.\n"
    "\n"
    "  --adapters FILE   PESC routers and adapters saved by pesc (crafts the model); a\n"
    "                    checkpoint (or --save directory: its newest) stands for its file,\n"
    "                    and gives its run's base model, template and tokenizer where\n"
    "                    --model, --template and --tokenizer are not given\n"
    "  --temperature T   0 = greedy (default 0)\n"
    "  --top-p P --top-k K   sampling cut-offs (1, 0 = off; with --temperature > 0)\n"
    "  --seed S          sampling seed (1)\n"
    "  --template NAME   chat template (camelidae; the run's for an --adapters checkpoint\n"
    "                    or a model pesc exported)\n"
    "  --raw             the prompt as it is, no template\n";

typedef struct generate_options {
    const char *model, *adapters, *prompt, *template_name, *tokenizer, *backend;
    long max_tokens, top_k, seed;
    double temperature, top_p;
    int raw;
    const char *cut_given;   /* --top-p or --top-k, when one was given */
    int template_given;
} generate_options;

static int number(const char *flag, const char *arg, double lo, double hi, double *out)
{
    char *end;
    double v = strtod(arg, &end);
    if (end == arg || *end || !(v >= lo && v <= hi))
        return cli_usage_error("generate", "%s %s: expected a number from %g to %g", flag, arg,
                               lo, hi);
    *out = v;
    return 0;
}

static int parse_generate(generate_options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'}, {"adapters", required_argument, NULL, 'a'},
        {"prompt", required_argument, NULL, 'p'}, {"max-tokens", required_argument, NULL, 'n'},
        {"temperature", required_argument, NULL, 't'}, {"top-p", required_argument, NULL, 'P'},
        {"top-k", required_argument, NULL, 'k'}, {"seed", required_argument, NULL, 's'},
        {"template", required_argument, NULL, 'T'}, {"tokenizer", required_argument, NULL, 'z'},
        {"raw", no_argument, NULL, 'r'}, {"backend", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    *o = (generate_options){.max_tokens = 256, .top_p = 1.0, .seed = 1, .backend = "auto",
                            .template_name = "camelidae"};
    int c;
    while ((c = cli_getopt("generate", argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 'm':
            if (cli_path("generate", "--model", optarg, "a model directory or URL", &o->model))
                return EXIT_USAGE;
            break;
        case 'a':
            if (cli_path("generate", "--adapters", optarg,
                         "a trainables file or a checkpoint", &o->adapters))
                return EXIT_USAGE;
            break;
        case 'p':
            if (!*optarg)
                return cli_usage_error("generate", "--prompt '' is empty: give the text to "
                                       "answer");
            o->prompt = optarg;
            break;
        case 'n':
            if (cli_parse_long(optarg, 1, 1 << 20, &o->max_tokens) != 0)
                return cli_usage_error("generate", "--max-tokens %s: a whole number from 1 to "
                                       "1048576", optarg);
            break;
        case 't':
            if (number("--temperature", optarg, 0, 10, &o->temperature)) return EXIT_USAGE;
            break;
        case 'P':
            if (number("--top-p", optarg, 1e-6, 1, &o->top_p)) return EXIT_USAGE;
            o->cut_given = "--top-p";
            break;
        case 'k':
            if (cli_parse_long(optarg, 0, 1 << 20, &o->top_k) != 0)
                return cli_usage_error("generate", "--top-k %s: a whole number from 0 to "
                                       "1048576", optarg);
            o->cut_given = "--top-k";
            break;
        case 's':
            if (cli_parse_long(optarg, 0, 0x7fffffffffffffffL, &o->seed) != 0)
                return cli_usage_error("generate", "--seed %s: an integer >= 0", optarg);
            break;
        case 'T':
            o->template_name = optarg;
            o->template_given = 1;
            break;
        case 'z':
            if (cli_path("generate", "--tokenizer", optarg, "a tokenizer.json or its URL",
                         &o->tokenizer))
                return EXIT_USAGE;
            break;
        case 'r': o->raw = 1; break;
        case 'b':
            if (cli_backend("generate", optarg) != 0)
                return EXIT_USAGE;
            o->backend = optarg;
            break;
        case 'h': fputs(generate_usage, stdout); return 0;
        default: return EXIT_USAGE;
        }
    }
    if (optind < argc)
        return cli_unexpected("generate", argv[optind],
                              o->prompt ? NULL : "give the prompt as --prompt TEXT, or on "
                                                 "standard input");
    if (!o->model && !o->adapters)
        return cli_usage_error("generate", "--model DIR is required (or --adapters CHECKPOINT, "
                               "whose base model is used)");
    if (!template_find(o->template_name))
        return cli_usage_error("generate", "--template %s: known templates are %s",
                               o->template_name, template_list());
    if (o->raw && o->template_given)
        return cli_usage_error("generate", "--raw sends the prompt as it is and --template %s "
                               "wraps it: choose one", o->template_name);
    if (o->cut_given && o->temperature == 0.0)
        return cli_usage_error("generate", "%s cuts what sampling draws from, but --temperature "
                               "0 (the default) is greedy: add --temperature T", o->cut_given);
    return -1;
}

/* The prompt from --prompt or all of standard input, without a trailing newline; NULL with
 * err set when it is empty, not text (a NUL byte) or past PROMPT_MAX, so that
 * `pesc generate </dev/zero` stops at once instead of reading until memory runs out. */
#define PROMPT_MAX (64L << 20)
static char *read_prompt(const generate_options *o, pesc_error *err)
{
    if (o->prompt)
        return xstrdup(o->prompt);
    /* without it, a person at a terminal saw nothing and took the wait for input for a hang */
    if (isatty(STDIN_FILENO))
        pesc_show_phase("pesc generate", "type the prompt, then Ctrl-D on a line of its own "
                        "(or give --prompt TEXT)");
    size_t cap = 4096, n = 0, got;
    char *text = xmalloc(cap);
    while ((got = fread(text + n, 1, cap - n - 1, stdin)) > 0) {
        if (memchr(text + n, '\0', got)) {
            pesc_fail(err, "standard input holds a NUL byte: the prompt must be text");
            goto fail;
        }
        if ((n += got) > PROMPT_MAX) {
            pesc_fail(err, "standard input is over %ld MiB: too long for a prompt",
                      PROMPT_MAX >> 20);
            goto fail;
        }
        if (n + 1 >= cap)
            text = xrealloc(text, cap *= 2);
    }
    if (ferror(stdin)) {
        pesc_fail(err, "cannot read the prompt from standard input: %s", strerror(errno));
        goto fail;
    }
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        n--;
    text[n] = '\0';
    if (n == 0) {
        pesc_fail(err, "standard input held no prompt: pipe the text to answer in, or give "
                  "--prompt TEXT");
        goto fail;
    }
    return text;
fail:
    free(text);
    return NULL;
}

static int run_generation(model *m, tokenizer *tok, const chat_template *tpl,
                          const generate_options *o, const char *prompt, pesc_error *err)
{
    tok_ids ids = {0};
    int rc = -1;
    tpl_message msg = {.role = ROLE_USER, .content = prompt, .len = strlen(prompt)};
    if ((o->raw ? tok_encode(tok, prompt, strlen(prompt), TOK_ADD_SPECIAL, &ids, err)
                : template_encode_prompt(tpl, tok, &msg, 1, &ids, err)) != 0)
        return -1;
    int32_t stops[4];
    int n_stops = template_stop_ids(tpl, tok, stops, 4);
    float *logits = xmalloc((size_t)m->config.vocab_size * sizeof *logits);
    sampler s;
    sampler_init(&s, (float)o->temperature, (int)o->top_k, (float)o->top_p, (uint64_t)o->seed);
    tok_stream stream;
    tok_stream_init(&stream, tok, 1);
    long produced = 0, max_tokens = model_answer_room(m, ids.n, (int)o->max_tokens, err);
    if (max_tokens < 0 || model_cache_reset(m, ids.n + (int)max_tokens, err) != 0 ||
        model_decode(m, ids.ids, ids.n, logits, NULL, err) != 0)
        goto out;
    for (; produced < max_tokens; produced++) {
        int32_t next = sampler_next(&s, logits, m->config.vocab_size);
        int stop = 0;
        for (int i = 0; i < n_stops; i++)
            stop |= next == stops[i];
        if (stop)
            break;
        size_t len = 0;
        const char *piece = tok_stream_push(&stream, next, &len);
        fwrite(piece, 1, len, stdout);
        if (fflush(stdout) != 0) {   /* nobody can read the answer: stop making it */
            pesc_fail(err, "cannot write to standard output: %s", strerror(errno));
            goto out;
        }
        if (produced + 1 < max_tokens && model_decode(m, &next, 1, logits, NULL, err) != 0)
            goto out;
    }
    size_t len = 0;
    const char *rest = tok_stream_flush(&stream, &len);
    fwrite(rest, 1, len, stdout);
    printf("\n");
    if (max_tokens < o->max_tokens && produced == max_tokens)
        fprintf(stderr, "pesc generate: note: stopped after %ld tokens at the model's context "
                "of %d (max_position_embeddings)\n", produced, m->config.max_position_embeddings);
    rc = 0;
out:
    tok_stream_free(&stream);
    sampler_free(&s);
    free(logits);
    tok_ids_free(&ids);
    return rc;
}

/* The model's own tokenizer.json (a directory without one says to give --tokenizer). */
static tokenizer *model_tokenizer(const char *dir, pesc_error *err)
{
    if (!dir) {
        pesc_fail(err, "the model is the random weights of its run's --init-config, with no "
                  "tokenizer beside them: give --tokenizer FILE|URL");
        return NULL;
    }
    return tok_load_dir(dir, err);
}

int cmd_generate(int argc, char **argv)
{
    generate_options o;
    int status = parse_generate(&o, argc, argv);
    if (status >= 0)
        return status;
    pesc_error err = {{0}};
    pesc_backend *b = cli_backend_new("generate", o.backend);
    if (!b)
        return 1;
    model m = {0};
    tuned_model t = {0};
    tokenizer *tok = NULL;
    char *tokenizer_path = NULL, *prompt = NULL;
    status = 1;
    if (!(prompt = read_prompt(&o, &err)))
        goto out;
    if (tuned_load("pesc generate", o.model, o.adapters, b, &m, &t, &err) != 0)
        goto out;
    model_freeze_base(&m);   /* nothing trains: the backend may mirror the weights for products */
    /* the template it was tuned in, unless the prompt goes as it is */
    if (!o.raw && tuned_template(&t, &o.template_name, &o.template_given, &err) != 0)
        goto out;
    const char *tokenizer_flag = o.tokenizer ? "--tokenizer" : "the run's --tokenizer";
    if (!o.tokenizer)
        o.tokenizer = t.tokenizer;   /* the run's own, else the model's */
    if (o.tokenizer && (fetch_view_url_to_cache(o.tokenizer, &tokenizer_path, &err) != 0 ||
                        !(tok = tok_load(tokenizer_path, &err)))) {
        pesc_fail_prefix(&err, "%s", tokenizer_flag);
        goto out;
    }
    if (!o.tokenizer && !(tok = model_tokenizer(t.dir, &err)))
        goto out;
    pesc_show_phase("pesc generate", NULL);   /* the answer starts on a clean line */
    const char *own = template_model_other(tok, o.template_name);
    if (own && !o.raw && !o.template_given)
        fprintf(stderr, "pesc generate: note: the model's chat template (tokenizer_config.json) "
                "is %s's; the prompt is wrapped in %s (the default): --template %s if the model "
                "was tuned in its own format\n", own, o.template_name, own);
    if (run_generation(&m, tok, template_find(o.template_name), &o, prompt, &err) != 0)
        goto out;
    status = 0;
out:
    if (status != 0) {
        pesc_show_phase("pesc generate", NULL);
        cli_fail("generate", &err);
    }
    free(prompt);
    tuned_free(&t);
    free(tokenizer_path);
    tok_delete(tok);
    model_free(&m);
    backend_delete(b);
    return status;
}
