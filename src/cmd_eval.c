/* cmd_eval — `pesc eval`: mean next-token loss of a model over a dataset. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "cli.h"
#include "commands.h"
#include "dataset.h"
#include "fetch_view.h"
#include "model.h"
#include "template.h"
#include "tokenizer.h"

static const char eval_usage[] =
    "usage: pesc eval --model DIR|URL [--adapters FILE] --data FILE|URL [--format F]\n"
    "                 [--template NAME] [--tokenizer FILE] [--backend auto|cpu|cuda] [--json]\n"
    "\n"
    "Mean next-token negative log-likelihood of the model over every predicted token of every\n"
    "record (labels of -100 are ignored), and its perplexity. A bad record is an error here\n"
    "(skipping it would change the score).\n"
    "\n"
    "  --model DIR      Hugging Face model directory (config.json + safetensors), or an\n"
    "                   hf://OWNER/NAME[@REV] or http(s) URL, downloaded to the cache first\n"
    "  --adapters FILE  PESC routers, adapters and LoRA saved by pesc (safetensors with\n"
    "                   Camelidae names); the model is crafted as the file says\n"
    "  --data FILE      dataset: JSONL or a JSON array, plain, .gz or .zst; or a URL\n"
    "  --format F       auto (default: per record, from its keys), camelidae, alpaca, sharegpt,\n"
    "                   openai, metamath, magicoder, text, or tokens ({\"input_ids\", \"labels\"})\n"
    "  --template NAME  chat template for text formats: camelidae (default), alpaca, chatml,\n"
    "                   llama2, llama3, mistral, plain; only assistant tokens are scored\n"
    "  --tokenizer FILE tokenizer.json for text formats (default: DIR/tokenizer.json)\n"
    "  --backend B      auto (default), cpu or cuda\n"
    "  --json           print {\"loss\": L, \"tokens\": N, \"ppl\": P}\n";

typedef struct eval_options {
    const char *model_dir, *data, *format, *backend, *template_name, *tokenizer, *adapters;
    int json;
} eval_options;

static int parse_eval(eval_options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'}, {"data", required_argument, NULL, 'd'},
        {"format", required_argument, NULL, 'f'}, {"backend", required_argument, NULL, 'b'},
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'},
        {"template", required_argument, NULL, 'T'}, {"tokenizer", required_argument, NULL, 'k'},
        {"adapters", required_argument, NULL, 'a'},
        {NULL, 0, NULL, 0}};
    *o = (eval_options){.format = "auto", .backend = "auto", .template_name = "camelidae"};
    int c;
    while ((c = cli_getopt("eval", argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 'm': o->model_dir = optarg; break;
        case 'd': o->data = optarg; break;
        case 'f': o->format = optarg; break;
        case 'b': o->backend = optarg; break;
        case 'j': o->json = 1; break;
        case 'T': o->template_name = optarg; break;
        case 'k': o->tokenizer = optarg; break;
        case 'a': o->adapters = optarg; break;
        case 'h': fputs(eval_usage, stdout); return 0;
        default: return EXIT_USAGE;
        }
    }
    if (optind < argc)
        return cli_usage_error("eval", "unexpected argument '%s'", argv[optind]);
    if (!o->model_dir)
        return cli_usage_error("eval", "--model DIR is required");
    if (!o->data)
        return cli_usage_error("eval", "--data FILE is required");
    ds_format format;
    pesc_error err;
    if (ds_format_parse(o->format, &format, &err) != 0)
        return cli_usage_error("eval", "%s", err.msg);
    if (!template_find(o->template_name))
        return cli_usage_error("eval", "--template %s: known templates are %s", o->template_name,
                               template_list());
    return -1;   /* go on */
}

/* Scores every record; one record at a time keeps memory to the longest record. */
static int score_records(model *m, const ds_records *d, double *nll, long long *count,
                         pesc_error *err)
{
    *nll = 0.0;
    *count = 0;
    int32_t *targets = NULL;
    int cap = 0;
    for (int i = 0; i < d->n; i++) {
        const ds_record *r = &d->items[i];
        if (r->len > cap)
            targets = xrealloc(targets, (size_t)(cap = r->len) * sizeof *targets);
        model_shift_targets(targets, r->ids, r->labels, r->len);
        double record_nll;
        long long record_count;
        if (model_forward(m, r->ids, 1, r->len, err) != 0 ||
            model_nll(m, targets, &record_nll, &record_count, NULL, err) != 0) {
            free(targets);
            return pesc_fail_prefix(err, "record %d", i + 1);
        }
        *nll += record_nll;
        *count += record_count;
    }
    free(targets);
    return 0;
}

/* Reads the records; text formats need the tokenizer (--tokenizer, or the model's own, which
 * auto only loads when the model directory has one). */
static int load_data(const eval_options *o, const char *model_dir, const char *data,
                     ds_records *d, int vocab_size, tokenizer **tok, pesc_error *err)
{
    ds_load_options lo = {.vocab_size = vocab_size, .strict = 1,
                          .tpl = template_find(o->template_name)};
    ds_format_parse(o->format, &lo.format, err);
    if (lo.format != DS_TOKENS) {
        char *path = o->tokenizer ? xstrdup(o->tokenizer) : pesc_path_join(model_dir, "tokenizer.json");
        /* auto needs a tokenizer only for text records: a missing file is fine until one comes,
         * but a file that is there and broken is reported now */
        if (o->tokenizer || lo.format != DS_AUTO || access(path, F_OK) == 0) {
            *tok = tok_load(path, err);
            if (!*tok) {
                free(path);
                return -1;
            }
        }
        free(path);
        lo.tok = *tok;   /* auto: records that need text then say a tokenizer is missing */
    }
    return dataset_load(d, data, &lo, err);
}

int cmd_eval(int argc, char **argv)
{
    eval_options o;
    int status = parse_eval(&o, argc, argv);
    if (status >= 0)
        return status;
    pesc_error err = {{0}};
    pesc_backend *b = backend_new(o.backend, &err);
    if (!b)
        return cli_fail("eval", &err);
    model m = {0};
    ds_records d = {0};
    tokenizer *tok = NULL;
    char *model_dir = NULL, *data = NULL;
    double nll = 0.0, t0 = pesc_now();
    long long count = 0;
    status = 1;
    /* URLs are downloaded to the cache first (progress on stderr); paths pass through */
    if (fetch_view_resolve_model(o.model_dir, &model_dir, &err) != 0 ||
        fetch_view_url_to_cache(o.data, &data, &err) != 0 ||
        model_load(&m, model_dir, b, &err) != 0 ||
        (o.adapters && model_load_trainables(&m, o.adapters, &err) != 0) ||
        load_data(&o, model_dir, data, &d, m.config.vocab_size, &tok, &err) != 0 ||
        score_records(&m, &d, &nll, &count, &err) != 0)
        goto out;
    if (count == 0) {
        pesc_fail(&err, "%s: no token is predicted (every record is one token long or fully "
                  "masked with -100)", o.data);
        goto out;
    }
    double loss = nll / (double)count;
    if (o.json)
        printf("{\"loss\": %.9g, \"tokens\": %lld, \"ppl\": %.9g}\n", loss, count, exp(loss));
    else
        printf("loss %.6f  ppl %.4f  tokens %lld  records %d  (%s, %.2f s)\n", loss, exp(loss),
               count, d.n, backend_device(b), pesc_now() - t0);
    status = 0;
out:
    if (status != 0)
        cli_fail("eval", &err);
    dataset_free(&d);
    tok_delete(tok);
    free(model_dir);
    free(data);
    model_free(&m);
    backend_delete(b);
    return status;
}
