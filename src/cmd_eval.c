/* cmd_eval — `pesc eval`: mean next-token loss of a model over a dataset. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cli.h"
#include "commands.h"
#include "dataset.h"
#include "model.h"

static const char eval_usage[] =
    "usage: pesc eval --model DIR --data FILE [--format auto|tokens] [--backend auto|cpu|cuda]\n"
    "                 [--json]\n"
    "\n"
    "Mean next-token negative log-likelihood of the model over every predicted token of every\n"
    "record (labels of -100 are ignored), and its perplexity.\n"
    "\n"
    "  --model DIR      Hugging Face model directory (config.json + safetensors)\n"
    "  --data FILE      dataset; format tokens: JSONL {\"input_ids\": [...], \"labels\": [...]}\n"
    "  --format F       auto (default) or tokens\n"
    "  --backend B      auto (default), cpu or cuda\n"
    "  --json           print {\"loss\": L, \"tokens\": N, \"ppl\": P}\n";

typedef struct eval_options {
    const char *model_dir, *data, *format, *backend;
    int json;
} eval_options;

static int parse_eval(eval_options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'}, {"data", required_argument, NULL, 'd'},
        {"format", required_argument, NULL, 'f'}, {"backend", required_argument, NULL, 'b'},
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    *o = (eval_options){.format = "auto", .backend = "auto"};
    int c;
    while ((c = cli_getopt("eval", argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 'm': o->model_dir = optarg; break;
        case 'd': o->data = optarg; break;
        case 'f': o->format = optarg; break;
        case 'b': o->backend = optarg; break;
        case 'j': o->json = 1; break;
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
    if (strcmp(o->format, "auto") != 0 && strcmp(o->format, "tokens") != 0)
        return cli_usage_error("eval", "--format %s: supported formats are auto and tokens "
                               "(text formats need the tokenizer, not in this build)", o->format);
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
    double nll = 0.0, t0 = pesc_now();
    long long count = 0;
    status = 1;
    if (model_load(&m, o.model_dir, b, &err) != 0 ||
        dataset_load_tokens(&d, o.data, m.config.vocab_size, &err) != 0 ||
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
    model_free(&m);
    backend_delete(b);
    return status;
}
