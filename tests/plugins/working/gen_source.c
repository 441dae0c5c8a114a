/* A format that makes its records itself, as a team's generator would: --data gen:N is N
 * conversations, no file. Its name holds a ':', so gen:6:1 is the source gen:6, weight 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pesc-plugin.h"

typedef struct gen_source {
    long records, next;
} gen_source;

static void *gen_open(const char *path, char *err, size_t errlen)
{
    char *end;
    long n = strncmp(path, "gen:", 4) == 0 ? strtol(path + 4, &end, 10) : 0;
    if (n < 1 || *end != '\0') {
        snprintf(err, errlen, "gen: expected gen:N, N records (got %s)", path);
        return NULL;
    }
    gen_source *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "gen: out of memory");
        return NULL;
    }
    s->records = n;
    return s;
}

static int gen_next(const pesc_format_host *h, void *source, pesc_record_out *out)
{
    gen_source *s = source;
    if (s->next >= s->records)
        return 0;
    char question[32];
    int len = snprintf(question, sizeof question, "count to %ld", ++s->next);
    h->message(out, PESC_ROLE_USER, question, (size_t)len);
    h->message(out, PESC_ROLE_ASSISTANT, "one two", 7);
    return 1;
}

static void gen_close(void *source) { free(source); }

static int gen_probe(const char *path) { return strncmp(path, "gen:", 4) == 0 ? 100 : 0; }

static const pesc_format_ops gen_ops = {
    .size = sizeof gen_ops, .open = gen_open, .next = gen_next,
    .close = gen_close, .probe = gen_probe};

static const pesc_plugin gen_plugin = {
    .abi_version = PESC_PLUGIN_ABI_VERSION, .size = sizeof gen_plugin,
    .kind = PESC_PLUGIN_FORMAT, .name = "gen", .version = "1.0",
    .description = "test: gen:N, N generated conversations", .format = &gen_ops};

PESC_PLUGIN_DEFINE(gen_plugin)
