/* cmd_inspect — `pesc inspect PATH`: what a model directory, safetensors file or dataset holds. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "commands.h"
#include "dataset.h"
#include "hfconfig.h"
#include "safetensors.h"

static const char inspect_usage[] =
    "usage: pesc inspect PATH\n"
    "\n"
    "  a model directory   its config, parameter count, tensor dtypes and files\n"
    "  a .safetensors file every tensor's name, dtype and shape, and the metadata\n"
    "  a .jsonl dataset    (tokens format) records, tokens and lengths\n";

static const char *rope_name(hf_rope_type t)
{
    return t == HF_ROPE_LINEAR ? "linear" : t == HF_ROPE_LLAMA3 ? "llama3" : "default";
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
    printf("architecture  %s\n", c.architecture);
    printf("layers        %d\n", c.n_layers);
    printf("d_model       %d\n", c.hidden_size);
    printf("ffn           %d\n", c.intermediate_size);
    printf("heads         %d (kv %d, head_dim %d)\n", c.n_heads, c.n_kv_heads, c.head_dim);
    printf("vocab         %d%s\n", c.vocab_size, c.tie_word_embeddings ? " (tied embeddings)" : "");
    printf("rope          theta %g, scaling %s", c.rope_theta, rope_name(c.rope_type));
    if (c.rope_type != HF_ROPE_DEFAULT)
        printf(" x%g", c.rope_factor);
    printf("\n");
    if (c.sliding_window)
        printf("window        %d\n", c.sliding_window);
    printf("parameters    %lld (%.2f M)\n", hfconfig_param_count(&c),
           (double)hfconfig_param_count(&c) / 1e6);
    printf("tensors       %zu in %d file%s\n", st_set_count(&set), set.n_files,
           set.n_files == 1 ? "" : "s");
    print_dtype_counts(&set);
    st_set_close(&set);
    return 0;
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
    for (int i = 0; i < f.n_meta; i++)
        printf("  metadata %s = %s\n", f.meta_keys[i], f.meta_values[i]);
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        printf("  %-5s [", st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            printf("%s%" PRId64, d ? ", " : "", t->shape[d]);
        printf("]  %s\n", t->name);
    }
    st_close(&f);
    return 0;
}

static int inspect_tokens(const char *path)
{
    pesc_error err = {{0}};
    ds_records d;
    if (dataset_load_tokens(&d, path, 0, &err) != 0)
        return cli_fail("inspect", &err);
    long long tokens = 0, labelled = 0;
    int shortest = d.items[0].len, longest = 0;
    for (int i = 0; i < d.n; i++) {
        const ds_record *r = &d.items[i];
        tokens += r->len;
        shortest = r->len < shortest ? r->len : shortest;
        longest = r->len > longest ? r->len : longest;
        for (int t = 1; t < r->len; t++)
            labelled += !r->labels || r->labels[t] >= 0;
    }
    printf("dataset       %s (tokens format)\n", path);
    printf("records       %d\n", d.n);
    printf("tokens        %lld (%lld predicted)\n", tokens, labelled);
    printf("length        min %d, mean %.1f, max %d\n", shortest, (double)tokens / d.n, longest);
    dataset_free(&d);
    return 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

int cmd_inspect(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        fputs(inspect_usage, stdout);
        return 0;
    }
    if (argc != 2)
        return cli_usage_error("inspect", argc < 2 ? "PATH is required" : "one PATH at a time");
    const char *path = argv[1];
    struct stat st;
    if (stat(path, &st) != 0) {
        pesc_error err;
        pesc_fail(&err, "%s: no such file or directory", path);
        return cli_fail("inspect", &err);
    }
    if (S_ISDIR(st.st_mode))
        return inspect_model(path);
    if (ends_with(path, ".jsonl") || ends_with(path, ".json"))
        return inspect_tokens(path);
    return inspect_safetensors(path);
}
