/* pesc — see pesc.h. */
#include "pesc.h"

#include <assert.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const site_names[LORA_SITES] = {"q", "k", "v", "o", "gate", "up", "down"};

enum {
    OPT_EXPERTS = PESC_OPT_BASE, OPT_TOP_K, OPT_ADAPTER_DIM, OPT_ADAPTER_SCALE,
    OPT_ADAPTER_DROPOUT, OPT_AUX_COEF, OPT_Z_COEF, OPT_LORA_RANK, OPT_LORA_ALPHA,
    OPT_LORA_TARGETS, OPT_TRAIN
};

const char pesc_options_help[] =
    "  --experts E          experts per layer (8)\n"
    "  --top-k K            experts picked per token (2)\n"
    "  --adapter-dim R      adapter width (64)\n"
    "  --adapter-scale S    adapter output scale, moe_scaling (0.25)\n"
    "  --adapter-dropout P  dropout on the adapter input while training (0.1)\n"
    "  --aux-coef A         load-balancing loss coefficient (0.01)\n"
    "  --z-coef Z           router z-loss coefficient (0)\n"
    "  --lora-rank N        LoRA rank on the frozen projections (0 = off)\n"
    "  --lora-alpha A       LoRA alpha (16; needs --lora-rank)\n"
    "  --lora-targets LIST  LoRA sites, from q,k,v,o,gate,up,down (all; needs --lora-rank)\n"
    "  --train pesc|full    train routers + adapters (pesc), or every weight (full: the\n"
    "                       options above are refused, but for a dropout or coefficient 0)\n";

void pesc_options_default(pesc_options *o)
{
    *o = (pesc_options){
        .mode = TRAIN_PESC, .experts = 8, .top_k = 2, .adapter_dim = 64,
        .adapter_scale = 0.25f, .adapter_dropout = 0.1f, .aux_coef = 0.01f, .z_coef = 0.0f,
        .lora_rank = 0, .lora_alpha = 16.0f, .lora_targets = (1u << LORA_SITES) - 1,
    };
}

const char *pesc_lora_site_name(int site) { return site_names[site]; }

int pesc_parse_lora_targets(const char *list, unsigned *mask, pesc_error *err)
{
    unsigned bits = 0;
    const char *p = list;
    while (*p) {
        size_t len = strcspn(p, ",");
        int found = -1;
        for (int i = 0; i < LORA_SITES; i++)
            if (strlen(site_names[i]) == len && strncmp(p, site_names[i], len) == 0)
                found = i;
        if (found < 0)
            return pesc_fail(err, "--lora-targets: '%.*s' is not a site; choose from "
                             "q,k,v,o,gate,up,down", (int)len, p);
        bits |= 1u << found;
        p += len + (p[len] == ',');
    }
    if (!bits)
        return pesc_fail(err, "--lora-targets: name at least one of q,k,v,o,gate,up,down");
    *mask = bits;
    return 0;
}

const struct option *pesc_option_table(void)
{
    static const struct option table[] = {
        {"experts", required_argument, NULL, OPT_EXPERTS},
        {"top-k", required_argument, NULL, OPT_TOP_K},
        {"adapter-dim", required_argument, NULL, OPT_ADAPTER_DIM},
        {"adapter-scale", required_argument, NULL, OPT_ADAPTER_SCALE},
        {"adapter-dropout", required_argument, NULL, OPT_ADAPTER_DROPOUT},
        {"aux-coef", required_argument, NULL, OPT_AUX_COEF},
        {"z-coef", required_argument, NULL, OPT_Z_COEF},
        {"lora-rank", required_argument, NULL, OPT_LORA_RANK},
        {"lora-alpha", required_argument, NULL, OPT_LORA_ALPHA},
        {"lora-targets", required_argument, NULL, OPT_LORA_TARGETS},
        {"train", required_argument, NULL, OPT_TRAIN},
        {NULL, 0, NULL, 0},
    };
    return table;
}

void pesc_option_merge(struct option *table, size_t cap, const struct option *own,
                       size_t n_own)
{
    size_t n = 0;
    for (; n < n_own; n++)
        table[n] = own[n];
    for (const struct option *p = pesc_option_table(); p->name; p++) {
        assert(n + 1 < cap);
        table[n++] = *p;
    }
    table[n] = (struct option){NULL, 0, NULL, 0};
}

static int parse_int(const char *flag, const char *arg, int min, int max, int *out,
                     pesc_error *err)
{
    char *end;
    long v = strtol(arg, &end, 10);
    if (end == arg || *end || v < min || v > max)
        return pesc_fail(err, "%s %s: expected an integer from %d to %d", flag, arg, min, max);
    *out = (int)v;
    return 0;
}

static int parse_float(const char *flag, const char *arg, double min, double max, float *out,
                       pesc_error *err)
{
    char *end;
    double v = strtod(arg, &end);
    if (end == arg || *end || !isfinite(v) || v < min || v > max)
        return pesc_fail(err, "%s %s: expected a number from %g to %g", flag, arg, min, max);
    *out = (float)v;
    return 0;
}

int pesc_apply_option(pesc_options *o, int val, const char *arg, pesc_error *err)
{
    switch (val) {
    case OPT_EXPERTS:
        o->given |= PESC_GIVEN_EXPERTS;
        return parse_int("--experts", arg, 1, PESC_MAX_EXPERTS, &o->experts, err);
    case OPT_TOP_K:
        o->given |= PESC_GIVEN_TOP_K;
        return parse_int("--top-k", arg, 1, PESC_MAX_EXPERTS, &o->top_k, err);
    case OPT_ADAPTER_DIM:
        o->given |= PESC_GIVEN_ADAPTER_DIM;
        return parse_int("--adapter-dim", arg, 1, PESC_MAX_ADAPTER_DIM, &o->adapter_dim, err);
    case OPT_ADAPTER_SCALE:
        o->given |= PESC_GIVEN_ADAPTER_SCALE;
        return parse_float("--adapter-scale", arg, 0.0, PESC_MAX_COEF, &o->adapter_scale, err);
    case OPT_ADAPTER_DROPOUT:
        o->given |= PESC_GIVEN_ADAPTER_DROPOUT;
        return parse_float("--adapter-dropout", arg, 0.0, PESC_MAX_DROPOUT, &o->adapter_dropout,
                           err);
    case OPT_AUX_COEF:
        o->given |= PESC_GIVEN_AUX_COEF;
        return parse_float("--aux-coef", arg, 0.0, PESC_MAX_COEF, &o->aux_coef, err);
    case OPT_Z_COEF:
        o->given |= PESC_GIVEN_Z_COEF;
        return parse_float("--z-coef", arg, 0.0, PESC_MAX_COEF, &o->z_coef, err);
    case OPT_LORA_RANK:
        o->given |= PESC_GIVEN_LORA_RANK;
        return parse_int("--lora-rank", arg, 0, PESC_MAX_LORA_RANK, &o->lora_rank, err);
    case OPT_LORA_ALPHA:
        o->given |= PESC_GIVEN_LORA_ALPHA;
        return parse_float("--lora-alpha", arg, 0.0, PESC_MAX_COEF, &o->lora_alpha, err);
    case OPT_LORA_TARGETS:
        o->given |= PESC_GIVEN_LORA_TARGETS;
        return pesc_parse_lora_targets(arg, &o->lora_targets, err);
    case OPT_TRAIN:
        o->given |= PESC_GIVEN_MODE;
        if (strcmp(arg, "pesc") == 0)
            o->mode = TRAIN_PESC;
        else if (strcmp(arg, "full") == 0)
            o->mode = TRAIN_FULL;
        else
            return pesc_fail(err, "--train %s: choose pesc or full", arg);
        return 0;
    default: return pesc_fail(err, "unknown crafting option");
    }
}

int pesc_options_check(const pesc_options *o, pesc_error *err)
{
    /* options that shape the crafted model mean nothing to a dense one: say so rather than
     * train every weight when the person asked for experts or LoRA */
    static const struct { unsigned bit; const char *flag; } shaping[] = {
        {PESC_GIVEN_EXPERTS, "--experts"}, {PESC_GIVEN_TOP_K, "--top-k"},
        {PESC_GIVEN_ADAPTER_DIM, "--adapter-dim"}, {PESC_GIVEN_ADAPTER_SCALE, "--adapter-scale"},
        {PESC_GIVEN_LORA_RANK, "--lora-rank"}, {PESC_GIVEN_LORA_ALPHA, "--lora-alpha"},
        {PESC_GIVEN_LORA_TARGETS, "--lora-targets"}};
    if (o->mode == TRAIN_FULL) {
        for (size_t i = 0; i < sizeof shaping / sizeof *shaping; i++)
            if (o->given & shaping[i].bit)
                return pesc_fail(err, "%s shapes a PESC model; --train full trains the dense "
                                 "model's every weight: drop one of them", shaping[i].flag);
        /* the regularisers act on routers and adapters, which a dense model has none of; a
         * zero asks for nothing and is let through */
        const struct { unsigned bit; const char *flag; float value; } regularisers[] = {
            {PESC_GIVEN_ADAPTER_DROPOUT, "--adapter-dropout", o->adapter_dropout},
            {PESC_GIVEN_AUX_COEF, "--aux-coef", o->aux_coef},
            {PESC_GIVEN_Z_COEF, "--z-coef", o->z_coef}};
        for (size_t i = 0; i < sizeof regularisers / sizeof *regularisers; i++)
            if ((o->given & regularisers[i].bit) && regularisers[i].value > 0.0f)
                return pesc_fail(err, "%s %g acts on PESC routers and adapters; --train full "
                                 "has none: drop %s or train pesc", regularisers[i].flag,
                                 (double)regularisers[i].value, regularisers[i].flag);
        return 0;
    }
    if (o->lora_rank == 0 && (o->given & (PESC_GIVEN_LORA_ALPHA | PESC_GIVEN_LORA_TARGETS)))
        return pesc_fail(err, "%s without --lora-rank: LoRA is off at rank 0; add --lora-rank R",
                         o->given & PESC_GIVEN_LORA_TARGETS ? "--lora-targets" : "--lora-alpha");
    if (o->top_k > o->experts)
        return pesc_fail(err, "--top-k %d is larger than --experts %d", o->top_k, o->experts);
    return 0;
}
