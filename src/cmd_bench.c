/* cmd_bench — `pesc bench`: training-step throughput and MFU on random weights.
 *
 * FLOPs are counted from the shapes with frozen-base accounting: a frozen product costs its
 * forward and its input gradient (4 per weight per token), a trainable one also its weight
 * gradient (6); attention is counted causally. The peak is the backend's own best
 * single-precision GEMM rate, measured in the same run, so MFU compares like with like on a
 * noisy shared machine. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cli.h"
#include "commands.h"
#include "hfconfig.h"
#include "model.h"
#include "optim.h"
#include "pesc.h"
#include "sample.h"
#include "train_options.h"

static const char bench_usage[] =
    "usage: pesc bench [--json] [shape options] [crafting options]\n"
    "\n"
    "Times PESC training steps (forward, backward, AdamW) on a random model and reports\n"
    "tokens/s, ms/step, FLOPs/token (frozen-base accounting), GFLOP/s, the backend's measured\n"
    "GEMM peak and MFU.\n"
    "\n"
    "  --dim C --layers L --heads H --kv-heads H --ffn F --vocab V   model shape\n"
    "                     (256, 4, 8, as --heads, 704, 4096; at most 1024 layers and\n"
    "                     1024 heads, as a config.json)\n"
    "  --seq T --batch B  tokens per step (256, 8; at most 16777216 in all)\n"
    "  --steps N          timed steps after one warm-up step; the median counts (5)\n"
    "  --backend B        auto, cpu or cuda\n"
    "  --recompute        activation recomputation (as pesc train --recompute)\n"
    "  --profile          then time every op of the same steps, waiting for the device around\n"
    "                     each, and print where a step goes (ms and share per op; the host's\n"
    "                     part, queueing its work; the products' useful TFLOP/s for\n"
    "                     matmuls, attention and adapters; on CUDA, the adapters' and\n"
    "                     flash attention's parts by the GPU's clock)\n"
    "  --json             one JSON object: tokens_per_s, step_ms, flops_per_token, gflops,\n"
    "                     peak_gflops, mfu, activation_bytes, device_used_bytes (the GPU's\n"
    "                     memory in use after the steps; 0 on the CPU), memory_taken_bytes\n"
    "                     (what the steps and AdamW added to it) beside memory_estimate_bytes\n"
    "                     (what pesc train's estimate says they take), adapter_rows and\n"
    "                     adapter_routed (the last step's rows of the adapters' products in\n"
    "                     the backend's layout, and the routed pairs among them) and\n"
    "                     adapter_block_rows (those of them in blocks: batched products),\n"
    "                     and the shape (with --profile, profile_step_ms and profile: [{op,\n"
    "                     calls_per_step, ms_per_step, host_ms_per_step, flops_per_step}],\n"
    "                     an op's parts after it with part_of)\n"
    "  --decode S[,S...]  instead, time answering as eval --generate and generate --prompts\n"
    "                     do it, with S sequences at once in slots of one KV cache: their\n"
    "                     prompts, then a pass a token for all of them, each token the greedy\n"
    "                     pick of the last (made on the backend); per S, the answers'\n"
    "                     tokens/s and ms a step, and the prompts' tokens/s (it takes no\n"
    "                     --seq, --batch or --steps)\n"
    "  --prompt-tokens P --answer-tokens N   with --decode: a prompt's tokens and an\n"
    "                     answer's (128, 64)\n"
    "crafting options:\n";

typedef struct bench_options {
    hf_config shape;
    pesc_options pesc;
    int seq, batch, steps, json, recompute, profile;
    const char *backend;
    int decode[16], n_decode;          /* --decode's sequence counts */
    unsigned shape_given;              /* 1 << OPT_DIM ...: the shape flags given */
    int prompt_tokens, answer_tokens;
} bench_options;

enum { OPT_DIM = 1, OPT_LAYERS, OPT_HEADS, OPT_KV_HEADS, OPT_FFN, OPT_VOCAB, OPT_SEQ, OPT_BATCH,
       OPT_STEPS, OPT_BACKEND, OPT_RECOMPUTE, OPT_PROFILE, OPT_JSON, OPT_HELP, OPT_DECODE,
       OPT_PROMPT_TOKENS, OPT_ANSWER_TOKENS };

static const struct option bench_options_own[] = {
    {"dim", required_argument, NULL, OPT_DIM}, {"layers", required_argument, NULL, OPT_LAYERS},
    {"heads", required_argument, NULL, OPT_HEADS},
    {"kv-heads", required_argument, NULL, OPT_KV_HEADS},
    {"ffn", required_argument, NULL, OPT_FFN}, {"vocab", required_argument, NULL, OPT_VOCAB},
    {"seq", required_argument, NULL, OPT_SEQ}, {"batch", required_argument, NULL, OPT_BATCH},
    {"steps", required_argument, NULL, OPT_STEPS},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"recompute", no_argument, NULL, OPT_RECOMPUTE},
    {"profile", no_argument, NULL, OPT_PROFILE},
    {"json", no_argument, NULL, OPT_JSON}, {"help", no_argument, NULL, OPT_HELP},
    {"decode", required_argument, NULL, OPT_DECODE},
    {"prompt-tokens", required_argument, NULL, OPT_PROMPT_TOKENS},
    {"answer-tokens", required_argument, NULL, OPT_ANSWER_TOKENS}};

/* --decode's list: counts of sequences, 1 to 4096, at most 16 of them. */
static int decode_list(bench_options *o, const char *arg)
{
    const char *p = arg;
    o->n_decode = 0;
    for (;;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 4096 || (*end && *end != ',') || o->n_decode == 16)
            return cli_usage_error("bench", "--decode %s: up to 16 counts of sequences, each 1 "
                                   "to 4096, between commas (--decode 1,16,128)", arg);
        o->decode[o->n_decode++] = (int)v;
        if (!*end)
            return 0;
        p = end + 1;
    }
}

static int shape_flag(bench_options *o, int c, const char *arg)
{
    static const char *const names[] = {"", "--dim", "--layers", "--heads", "--kv-heads", "--ffn",
                                        "--vocab", "--seq", "--batch", "--steps"};
    int *slots[] = {NULL, &o->shape.hidden_size, &o->shape.n_layers, &o->shape.n_heads,
                    &o->shape.n_kv_heads, &o->shape.intermediate_size, &o->shape.vocab_size,
                    &o->seq, &o->batch, &o->steps};
    /* layers and heads as a config.json may have them (hfconfig.c): a million layers once
     * ran the host out of memory before the memory check */
    int most = c == OPT_LAYERS                       ? HF_MAX_LAYERS
               : c == OPT_HEADS || c == OPT_KV_HEADS ? HF_MAX_HEADS
                                                     : 1 << 24;
    long v;
    if (cli_parse_long(arg, 1, most, &v) != 0)
        return cli_usage_error("bench", "%s %s: expected a whole number from 1 to %d", names[c],
                               arg, most);
    *slots[c] = (int)v;
    o->shape_given |= 1u << c;
    return 0;
}

static int parse_bench(bench_options *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    snprintf(o->shape.architecture, sizeof o->shape.architecture, "LlamaForCausalLM");
    o->shape.hidden_size = 256;
    o->shape.n_layers = 4;
    o->shape.n_heads = 8;
    o->shape.n_kv_heads = 0;   /* --heads' unless given (as config.json's default) */
    o->shape.intermediate_size = 704;
    o->shape.vocab_size = 4096;
    o->shape.rms_norm_eps = 1e-5;
    o->shape.rope_theta = 10000.0;
    o->seq = 256;
    o->batch = 8;
    o->steps = 5;
    o->backend = "auto";
    pesc_options_default(&o->pesc);
    int c;
    pesc_error err;
    struct option table[64];
    pesc_option_merge(table, 64, bench_options_own,
                      sizeof bench_options_own / sizeof *bench_options_own);
    while ((c = cli_getopt("bench", argc, argv, "h", table)) != -1) {
        if (c >= PESC_OPT_BASE) {
            if (pesc_apply_option(&o->pesc, c, optarg, &err) != 0)
                return cli_usage_error("bench", "%s", err.msg);
        } else if (c >= OPT_DIM && c <= OPT_STEPS) {
            if (shape_flag(o, c, optarg) != 0)
                return EXIT_USAGE;
        } else if (c == OPT_BACKEND) {
            if (cli_backend("bench", optarg) != 0)
                return EXIT_USAGE;
            o->backend = optarg;
        } else if (c == OPT_RECOMPUTE) {
            o->recompute = 1;
        } else if (c == OPT_PROFILE) {
            o->profile = 1;
        } else if (c == OPT_JSON) {
            o->json = 1;
        } else if (c == OPT_DECODE) {
            if (decode_list(o, optarg) != 0)
                return EXIT_USAGE;
        } else if (c == OPT_PROMPT_TOKENS || c == OPT_ANSWER_TOKENS) {
            long v;
            const char *flag = c == OPT_PROMPT_TOKENS ? "--prompt-tokens" : "--answer-tokens";
            if (cli_parse_long(optarg, 1, 65536, &v) != 0)
                return cli_usage_error("bench", "%s %s: a whole number of tokens from 1 to "
                                       "65536", flag, optarg);
            *(c == OPT_PROMPT_TOKENS ? &o->prompt_tokens : &o->answer_tokens) = (int)v;
        } else if (c == OPT_HELP || c == 'h') {
            fputs(bench_usage, stdout);
            fputs(pesc_options_help, stdout);
            return 0;
        } else {
            return EXIT_USAGE;
        }
    }
    if (optind < argc)
        return cli_unexpected("bench", argv[optind], NULL);
    if ((o->prompt_tokens || o->answer_tokens) && !o->n_decode)
        return cli_usage_error("bench", "%s is for --decode S,...: give it",
                               o->prompt_tokens ? "--prompt-tokens" : "--answer-tokens");
    const unsigned step_shape = 1u << OPT_SEQ | 1u << OPT_BATCH | 1u << OPT_STEPS;
    if (o->n_decode && (o->profile || o->recompute || (o->shape_given & step_shape)))
        return cli_usage_error("bench", "--decode times answering, and %s is for training "
                               "steps: leave it out (--prompt-tokens and --answer-tokens size "
                               "the answers)", o->profile ? "--profile" : o->recompute
                               ? "--recompute" : o->shape_given & 1u << OPT_SEQ ? "--seq"
                               : o->shape_given & 1u << OPT_BATCH ? "--batch" : "--steps");
    o->prompt_tokens = o->prompt_tokens ? o->prompt_tokens : 128;
    o->answer_tokens = o->answer_tokens ? o->answer_tokens : 64;
    hf_config *s = &o->shape;
    s->n_kv_heads = s->n_kv_heads ? s->n_kv_heads : s->n_heads;
    if (s->hidden_size % s->n_heads || (s->hidden_size / s->n_heads) % 2)
        return cli_usage_error("bench", "--dim %d must split into --heads %d heads of an even "
                               "size", s->hidden_size, s->n_heads);
    if (s->n_heads % s->n_kv_heads)
        return cli_usage_error("bench", "--heads %d must split into --kv-heads %d groups (a "
                               "divisor of it)", s->n_heads, s->n_kv_heads);
    s->head_dim = s->hidden_size / s->n_heads;
    if ((long)o->batch * o->seq > TRAIN_MAX_TOKENS)   /* as pesc train: indices stay in int */
        return cli_usage_error("bench", "--batch %d x --seq %d: at most %d tokens per step",
                               o->batch, o->seq, TRAIN_MAX_TOKENS);
    if (pesc_options_check(&o->pesc, &err) != 0)
        return cli_usage_error("bench", "%s", err.msg);
    return -1;
}

/* FLOPs per token of one training step (see the file comment). */
static double flops_per_token(const bench_options *o)
{
    const hf_config *c = &o->shape;
    const pesc_options *p = &o->pesc;
    double C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    double per_layer = C * q + 2 * C * kv + q * C + 3 * C * F;
    double base = per_layer * c->n_layers + V * C;
    double t_avg = (o->seq + 1) / 2.0;
    double attention = 12.0 * t_avg * q * c->n_layers;
    if (p->mode == TRAIN_FULL)
        return 6.0 * base + attention;
    double routing = 6.0 * C * p->experts + 12.0 * p->top_k * C * p->adapter_dim;
    double lora = 0.0;
    if (p->lora_rank > 0) {
        double in_out[LORA_SITES] = {C + q, C + kv, C + kv, q + C, C + F, C + F, F + C};
        for (int s = 0; s < LORA_SITES; s++)
            if (p->lora_targets & (1u << s))
                lora += 6.0 * p->lora_rank * in_out[s];
    }
    return 4.0 * base + attention + (routing + lora) * c->n_layers;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of several GEMMs at the model's FFN product and at 1024^3, whichever shape runs
 * faster: the same statistic as the step time, so a busy moment does not favour either. */
static double measure_peak(pesc_backend *b, const bench_options *o, pesc_error *err)
{
    int shapes[2][3] = {{o->seq * o->batch, o->shape.hidden_size, o->shape.intermediate_size},
                        {1024, 1024, 1024}};
    double best = 0.0, rates[9];
    for (int s = 0; s < 2; s++) {
        int N = shapes[s][0], C = shapes[s][1], OC = shapes[s][2];
        size_t bytes = ((size_t)N * C + (size_t)OC * C + (size_t)N * OC) * sizeof(float);
        float *buf = backend_alloc(b, bytes, err);
        if (!buf)
            return -1.0;
        vector_zero(b, buf, bytes / sizeof(float));
        float *x = buf, *w = x + (size_t)N * C, *out = w + (size_t)OC * C;
        matmul_forward(b, out, x, w, NULL, N, C, OC);   /* warm-up */
        for (int rep = 0; rep < 9; rep++) {
            double t0 = pesc_now();
            matmul_forward(b, out, x, w, NULL, N, C, OC);
            backend_synchronize(b);
            rates[rep] = 2.0 * N * C * OC / (pesc_now() - t0) / 1e9;
        }
        qsort(rates, 9, sizeof *rates, compare_double);
        best = rates[4] > best ? rates[4] : best;
        backend_free(b, buf);
    }
    return best;
}

/* Random non-zero trainables, so the adapters do real work. */
static void randomize_trainables(model *m)
{
    uint64_t state = 42;
    for (int i = 0; i < m->n_trainables; i++) {
        const model_tensor *t = &m->trainables[i];
        float *host = xmalloc(t->n * sizeof *host);
        double bound = 1.0 / sqrt((double)(t->ndim == 2 ? t->shape[1] : 1));
        for (size_t j = 0; j < t->n; j++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            host[j] = (float)(((double)(state >> 11) / 9007199254740992.0 * 2.0 - 1.0) * bound);
        }
        backend_upload(m->backend, t->data, host, t->n * sizeof *host);
        free(host);
    }
}

/* The adapters' rows of the last step's layers as the backend laid them out
 * (backend_adapter_starts): the rows the products ran over against the routed pairs, and
 * those in blocks (each product over them one batched call). */
typedef struct adapter_layout_seen {
    int layers;
    long long rows, routed, block;
} adapter_layout_seen;

static adapter_layout_seen adapter_layout_of(model *m, size_t slots)
{
    adapter_layout_seen seen = {m->crafted ? m->config.n_layers : 0, 0, 0, 0};
    int E = m->crafted ? m->pesc.experts : 0;
    int *offsets = xcalloc((size_t)E + 1, sizeof *offsets);
    int *starts = xcalloc((size_t)E + 1, sizeof *starts);
    for (int l = 0; l < seen.layers; l++) {
        for (int e = 0; e < E; e++)
            offsets[e + 1] = offsets[e] + m->routing.counts[(size_t)l * E + e];
        seen.block += (long long)E * backend_adapter_starts(m->backend, starts, offsets, E,
                                                            slots);
        seen.rows += starts[E];
        seen.routed += offsets[E];
    }
    free(offsets);
    free(starts);
    return seen;
}

static int run_steps(model *m, optimizer *opt, const bench_options *o, double *step_s,
                     model_losses *last, pesc_error *err)
{
    int N = o->seq * o->batch;
    int32_t *tokens = xmalloc((size_t)N * sizeof *tokens), *targets = xmalloc((size_t)N * sizeof *targets);
    uint64_t state = 7;
    for (int i = 0; i < N; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        tokens[i] = (int32_t)((state >> 33) % (uint64_t)o->shape.vocab_size);
    }
    for (int b = 0; b < o->batch; b++)
        model_shift_targets(targets + (size_t)b * o->seq, tokens + (size_t)b * o->seq, NULL, o->seq);
    double *times = xcalloc((size_t)o->steps + 1, sizeof *times);
    int rc = 0;
    for (int step = 0; step <= o->steps && rc == 0; step++) {
        double t0 = pesc_now();
        model_zero_grad(m);
        rc = model_train_step(m, tokens, targets, NULL, o->batch, o->seq, 1.0f, 1, last, err);
        if (rc == 0)
            optim_step(opt, m->train_block, m->grad_block, 1e-4, NULL);
        backend_synchronize(m->backend);
        times[step] = pesc_now() - t0;
    }
    /* step 0 warms caches and allocates; the median of the rest resists a busy machine */
    qsort(times + 1, (size_t)o->steps, sizeof *times, compare_double);
    *step_s = times[1 + o->steps / 2];
    free(times);
    free(tokens);
    free(targets);
    return rc;
}

/* The same steps again with every op timed (backend_profile_start); per-step figures. */
typedef struct bench_profile {
    backend_profile_entry *ops;
    int n, steps;
    double step_s;   /* the profiled step, waits included */
} bench_profile;

static int profile_steps(model *m, optimizer *opt, const bench_options *o, bench_profile *p,
                         pesc_error *err)
{
    model_losses losses;
    double step_s;
    backend_profile_start(m->backend);
    double t0 = pesc_now();
    int rc = run_steps(m, opt, o, &step_s, &losses, err);
    p->steps = o->steps + 1;   /* run_steps' first step counts here: it is warm by now */
    p->step_s = (pesc_now() - t0) / p->steps;
    p->n = backend_profile_stop(m->backend, &p->ops);
    return rc;
}

static void print_profile(const bench_profile *p, double step_s, int json)
{
    double ops_s = 0.0;
    for (int i = 0; i < p->n; i++)
        if (!p->ops[i].part_of[0])   /* a part's time is its op's */
            ops_s += p->ops[i].seconds / p->steps;
    if (json) {
        printf(", \"profile_step_ms\": %.3f, \"profile\": [", p->step_s * 1e3);
        for (int i = 0; i < p->n; i++) {
            const backend_profile_entry *e = &p->ops[i];
            printf("%s{\"op\": \"%s\", ", i ? ", " : "", e->op);
            if (e->part_of[0])
                printf("\"part_of\": \"%s\", ", e->part_of);
            printf("\"calls_per_step\": %.2f, \"ms_per_step\": %.4f, "
                   "\"host_ms_per_step\": %.4f, \"flops_per_step\": %.17g}",
                   (double)e->calls / p->steps, e->seconds / p->steps * 1e3,
                   e->host_seconds / p->steps * 1e3, e->flops / p->steps);
        }
        printf("]");
        return;
    }
    printf("profile of %d steps, every op waited for: %.1f ms/step (%.2fx the step above)\n",
           p->steps, p->step_s * 1e3, p->step_s / step_s);
    printf("  %-40s %10s %10s %7s %8s %9s\n", "op (a product: inputs x outputs)", "calls/step",
           "ms/step", "share", "host ms", "TFLOP/s");
    for (int i = 0; i < p->n; i++) {
        const backend_profile_entry *e = &p->ops[i];
        double ms = e->seconds / p->steps * 1e3;
        char label[80];
        snprintf(label, sizeof label, "%s%s", e->part_of[0] ? "  - " : "", e->op);
        printf("  %-40s %10.1f %10.2f %6.1f%% %8.2f", label, (double)e->calls / p->steps, ms,
               100.0 * ms / (p->step_s * 1e3), e->host_seconds / p->steps * 1e3);
        if (e->flops > 0 && e->seconds > 0)   /* the rate of its products, waits included */
            printf(" %9.4g", e->flops / e->seconds * 1e-12);
        printf("\n");
    }
    double rest = p->step_s - ops_s;
    printf("  %-40s %10s %10.2f %6.1f%%\n", "between ops (host work, waits)", "", rest * 1e3,
           100.0 * rest / p->step_s);
    printf("host ms: the op's call before the wait after it (queueing its work: launches, the "
           "choice of kernels); near its ms/step, the host bounds the op\n");
    for (int i = 0; i < p->n; i++)
        if (p->ops[i].part_of[0]) {
            printf("- a part: the device's time from the mark before it in its op (the op's "
                   "start) to its own, gaps waiting for the host included; host ms the host's "
                   "over the same stretch\n");
            break;
        }
}

/* --decode: S random prompts of P tokens into the slots of one cache (passes of up to 4096
 * tokens, as src/answers lays them), then N steps of all S, each token the greedy pick the
 * backend made of the logits of the one before (only the first `steps` of them: a warm-up makes the cache of N
 * without taking them all). The prompts' and the steps' seconds, waits included. */
static int decode_run(model *m, int S, int P, int N, int steps, double *prompt_s,
                      double *steps_s, pesc_error *err)
{
    int V = m->config.vocab_size, per_pass = 4096 / P > 0 ? 4096 / P : 1, rc = 0;
    float *logits = xmalloc((size_t)S * V * sizeof *logits);
    int32_t *rows = xmalloc((size_t)(per_pass < S ? per_pass : S) * P * sizeof *rows);
    int *lens = xmalloc((size_t)S * sizeof *lens), *slots = xmalloc((size_t)S * sizeof *slots);
    int32_t *next = xmalloc((size_t)S * sizeof *next), *picked = xmalloc((size_t)S * sizeof *picked);
    sampler greedy;
    sampler_init(&greedy, 0.0f, 0, 1.0f, 0);
    uint64_t state = 11;
    double t0 = pesc_now();
    rc = model_cache_slots(m, S, P + N, err);
    for (int i = 0; i < S; i++)
        slots[i] = i;
    for (int first = 0; rc == 0 && first < S; first += per_pass) {
        int n = S - first < per_pass ? S - first : per_pass;
        for (int i = 0; i < n * P; i++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            rows[i] = (int32_t)((state >> 33) % (uint64_t)V);
        }
        for (int i = 0; i < n; i++)
            lens[i] = P;
        rc = model_decode_prompts(m, slots + first, rows, lens, n, P, logits + (size_t)first * V,
                                 err);
    }
    for (int i = 0; rc == 0 && i < S; i++)   /* the prompts' picks, as answering's */
        if ((next[i] = sampler_next(&greedy, logits + (size_t)i * V, V)) < 0)
            rc = model_fail_logits(m, err);
    backend_synchronize(m->backend);
    double t1 = pesc_now();
    for (int step = 0; rc == 0 && step < steps; step++) {   /* then the backend's */
        rc = model_decode_step_greedy(m, slots, next, S, picked, err);
        memcpy(next, picked, (size_t)S * sizeof *next);
    }
    backend_synchronize(m->backend);
    *prompt_s = t1 - t0;
    *steps_s = pesc_now() - t1;
    sampler_free(&greedy);
    free(next);
    free(picked);
    free(slots);
    free(lens);
    free(rows);
    free(logits);
    return rc;
}

/* pesc bench --decode: each count of sequences once to warm up (its buffers and cache made),
 * then timed; a line (or a JSON element) each. */
static int decode_bench(model *m, const bench_options *o, pesc_error *err)
{
    double first_rate = 0.0;
    if (o->json)
        printf("{\"backend\": \"%s\", \"device\": \"%s\", \"dim\": %d, \"layers\": %d, "
               "\"heads\": %d, \"kv_heads\": %d, \"ffn\": %d, \"vocab\": %d, \"experts\": %d, "
               "\"top_k\": %d, \"adapter_dim\": %d, \"prompt_tokens\": %d, "
               "\"answer_tokens\": %d, \"decode\": [", backend_name(m->backend),
               backend_device(m->backend), o->shape.hidden_size, o->shape.n_layers,
               o->shape.n_heads, o->shape.n_kv_heads, o->shape.intermediate_size,
               o->shape.vocab_size, o->pesc.experts, o->pesc.top_k, o->pesc.adapter_dim,
               o->prompt_tokens, o->answer_tokens);
    else
        printf("%s: answering %d-token prompts with %d tokens each, greedy\n",
               backend_device(m->backend), o->prompt_tokens, o->answer_tokens);
    for (int i = 0; i < o->n_decode; i++) {
        int S = o->decode[i];
        double prompt_s, steps_s;
        int P = o->prompt_tokens, N = o->answer_tokens;
        if (decode_run(m, S, P, N, 2 < N ? 2 : N, &prompt_s, &steps_s, err) != 0 ||
            decode_run(m, S, P, N, N, &prompt_s, &steps_s, err) != 0) {
            if (o->json)   /* what was measured stays readable JSON */
                printf("]}\n");
            return pesc_fail_prefix(err, "--decode %d", S);
        }
        double rate = (double)S * o->answer_tokens / steps_s;
        double prompt_rate = (double)S * o->prompt_tokens / prompt_s;
        first_rate = i == 0 ? rate : first_rate;
        if (o->json)
            printf("%s{\"sequences\": %d, \"tokens_per_s\": %s, \"step_ms\": %.6f, "
                   "\"prompt_tokens_per_s\": %s}", i ? ", " : "", S,
                   cli_json_number(rate, 9).text, steps_s / o->answer_tokens * 1e3,
                   cli_json_number(prompt_rate, 9).text);
        else
            printf("  %4d at once: %10.0f tokens/s (%.2fx %d at once), %8.2f ms a step; "
                   "prompts %10.0f tokens/s\n", S, rate, rate / first_rate, o->decode[0],
                   steps_s / o->answer_tokens * 1e3, prompt_rate);
        fflush(stdout);
    }
    if (o->json)
        printf("]}\n");
    return 0;
}

int cmd_bench(int argc, char **argv)
{
    bench_options o;
    int status = parse_bench(&o, argc, argv);
    if (status >= 0)
        return status;
    pesc_error err = {{0}};
    pesc_backend *b = cli_backend_new("bench", o.backend);
    if (!b)
        return 1;
    model m = {0};
    optimizer opt = {0};
    optim_config oc;
    optim_config_default(&oc);
    double step_s = 0.0, peak;
    model_losses losses = {0};
    bench_profile prof = {0};
    status = 1;
    if (model_init_random(&m, &o.shape, b, 1, &err) != 0 || model_craft(&m, &o.pesc, 1, &err) != 0)
        goto out;
    randomize_trainables(&m);
    if (o.n_decode) {
        model_freeze_base(&m);   /* nothing trains, as in pesc generate */
        status = decode_bench(&m, &o, &err) == 0 ? 0 : 1;
        goto out;
    }
    m.recompute = o.recompute;
    /* what pesc train's memory estimate would say the steps and AdamW's moments take, against
     * what they took: the device's memory in use before and after them (the CPU backend
     * reports none) */
    backend_memory mem;
    size_t before = backend_memory_info(b, &mem) == 0 ? mem.used : 0;
    size_t estimate = model_step_bytes(&m, o.batch, o.seq, o.recompute) +
                      2 * m.n_train * sizeof(float);
    if (optim_init(&opt, b, m.n_train, &oc, &err) != 0 ||
        run_steps(&m, &opt, &o, &step_s, &losses, &err) != 0)
        goto out;
    size_t used = backend_memory_info(b, &mem) == 0 ? mem.used : 0;
    size_t taken = used > before ? used - before : 0;
    if ((peak = measure_peak(b, &o, &err)) < 0 ||
        (o.profile && profile_steps(&m, &opt, &o, &prof, &err) != 0))
        goto out;
    char used_text[128] = "";
    if (used)
        snprintf(used_text, sizeof used_text, ", device memory %.2f GiB used (the steps took "
                 "%.2f GiB, estimated %.2f)", (double)used / 1073741824.0,
                 (double)taken / 1073741824.0, (double)estimate / 1073741824.0);
    double tokens = (double)o.seq * o.batch, fpt = flops_per_token(&o);
    double tps = tokens / step_s, gflops = tps * fpt / 1e9;
    adapter_layout_seen seen = adapter_layout_of(&m, (size_t)tokens * o.pesc.top_k);
    char rows_text[128] = "";
    if (seen.rows > seen.routed)
        snprintf(rows_text, sizeof rows_text, ", the adapters' rows %.2fx the routed, %.0f%% "
                 "of them in blocks", (double)seen.rows / (double)seen.routed,
                 100.0 * (double)seen.block / (double)seen.rows);
    if (o.json)
        printf("{\"tokens_per_s\": %s, \"step_ms\": %.3f, \"flops_per_token\": %.0f, "
               "\"gflops\": %s, \"peak_gflops\": %s, \"mfu\": %s, \"backend\": \"%s\", "
               "\"device\": \"%s\", \"dim\": %d, \"layers\": %d, \"heads\": %d, \"kv_heads\": %d, "
               "\"ffn\": %d, \"vocab\": %d, \"seq\": %d, \"batch\": %d, \"experts\": %d, "
               "\"top_k\": %d, \"adapter_dim\": %d, \"train\": \"%s\", \"steps\": %d, "
               "\"recompute\": %s, \"activation_bytes\": %zu, \"device_used_bytes\": %zu, "
               "\"memory_estimate_bytes\": %zu, \"memory_taken_bytes\": %zu, \"loss\": %s, "
               "\"adapter_rows\": %lld, \"adapter_routed\": %lld, \"adapter_block_rows\": %lld",
               cli_json_number(tps, 9).text, step_s * 1e3, fpt, cli_json_number(gflops, 9).text,
               cli_json_number(peak, 9).text, cli_json_number(gflops / peak, 4).text,
               backend_name(b),
               backend_device(b), o.shape.hidden_size, o.shape.n_layers, o.shape.n_heads,
               o.shape.n_kv_heads, o.shape.intermediate_size, o.shape.vocab_size, o.seq, o.batch,
               o.pesc.experts, o.pesc.top_k, o.pesc.adapter_dim,
               o.pesc.mode == TRAIN_FULL ? "full" : "pesc", o.steps, o.recompute ? "true" : "false",
               m.act.bytes, used, estimate, taken, cli_json_number(losses.ce, 7).text,
               seen.rows, seen.routed, seen.block);
    else
        printf("%s: %.0f tokens/s, %.1f ms/step, %.2f MFLOP/token, %.1f GFLOP/s of %.1f peak "
               "(MFU %.1f%%), activations %.1f MiB%s%s%s\n", backend_device(b), tps,
               step_s * 1e3, fpt / 1e6, gflops, peak, 100.0 * gflops / peak,
               (double)m.act.bytes / 1048576.0, o.recompute ? " (recomputed)" : "", used_text,
               rows_text);
    if (o.profile)
        print_profile(&prof, step_s, o.json);
    if (o.json)
        printf("}\n");
    status = 0;
out:
    if (status != 0)
        cli_fail("bench", &err);
    free(prof.ops);
    optim_free(&opt);
    model_free(&m);
    backend_delete(b);
    return status;
}
