/* targets — libFuzzer entry points for the readers of files a user hands pesc: safetensors files
 * and sharded sets, config.json, tokenizer.json and tokenizer_config.json, the dataset formats,
 * a checkpoint's state.json, a run's JSONL log (pesc view), a --config file and a --choices
 * file of multiple-choice questions. tests/fuzz/run builds one
 * program per target (-DTARGET_x) with clang's ASan and UBSan and runs each on seeds made from
 * the repository's own files.
 *
 * Each target writes the input to a file in a scratch directory of its own (the readers take
 * paths: they map or stream files) and goes through the reader as a command would, then
 * through what a command does next with what was read (convert every tensor, encode and
 * decode a text, take a snapshot of the log). A reader may refuse an input, with its message;
 * it must not crash, leak, read out of bounds or hang. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "choices.h"
#include "dataset.h"
#include "hfconfig.h"
#include "logview.h"
#include "optfile.h"
#include "safetensors.h"
#include "template.h"
#include "tokenizer.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The scratch directory, made on first use; one per process. */
static const char *scratch_dir(void)
{
    static char dir[256];
    if (!dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/pesc-fuzz.%d", tmp && *tmp ? tmp : "/tmp", (int)getpid());
        if (mkdir(dir, 0700) != 0) {
            perror(dir);
            abort();
        }
    }
    return dir;
}

/* Writes bytes to DIR/name and returns the path (valid until the next call). Not
 * pesc_write_file: its fsync would cost every run a disk flush. */
static const char *scratch_file(const char *name, const uint8_t *data, size_t size)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", scratch_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) {
        perror(path);
        abort();
    }
    return path;
}

#if defined(TARGET_safetensors)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_file f;
    memset(&f, 0, sizeof f);
    pesc_error err;
    if (st_open(&f, scratch_file("model.safetensors", data, size), &err) == 0)
        for (int i = 0; i < f.n_tensors; i++) {
            const st_tensor *t = &f.tensors[i];
            if (st_find(&f, t->name) != t)
                abort();   /* the header is a JSON object: each name finds its own tensor */
            if (t->n_elements <= (1u << 20)) {
                float *out = xmalloc((t->n_elements + 1) * sizeof *out);
                st_to_f32(t, out, &err);
                free(out);
            }
        }
    st_close(&f);
    return 0;
}

#elif defined(TARGET_shards)
/* The index of a sharded set; the shards are the mistral-sharded-f16 fixture's (FUZZ_SHARDS). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int copied;
    if (!copied) {
        const char *from = getenv("FUZZ_SHARDS");
        char command[1024];
        snprintf(command, sizeof command, "cp '%s'/model-0000*.safetensors '%s'/",
                 from ? from : ".", scratch_dir());
        if (!from || system(command) != 0)
            abort();
        copied = 1;
    }
    scratch_file("model.safetensors.index.json", data, size);
    st_set s;
    memset(&s, 0, sizeof s);
    pesc_error err;
    if (st_set_open(&s, scratch_dir(), &err) == 0) {
        const st_file *file;
        st_set_find(&s, "model.embed_tokens.weight", &file);
    }
    st_set_close(&s);
    return 0;
}

#elif defined(TARGET_config)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = xmalloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    hf_config c;
    memset(&c, 0, sizeof c);
    pesc_error err;
    if (hfconfig_parse(&c, text, "config.json", &err) == 0) {
        hfconfig_param_count(&c);
        hfconfig_rope_scale(&c);
        int rotary = hfconfig_rotary_dim(&c);
        float *inv_freq = xmalloc(((size_t)rotary / 2 + 1) * sizeof *inv_freq);
        for (long positions = 1; positions <= (1L << 24); positions *= 64) {
            hfconfig_inv_freq(&c, positions, inv_freq);
            hfconfig_rope_long(&c, positions);
        }
        free(inv_freq);
    }
    free(text);
    return 0;
}

#elif defined(TARGET_tokenizer)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pesc_error err;
    tokenizer *t = tok_load(scratch_file("tokenizer.json", data, size), &err);
    if (!t)
        return 0;
    static const char text[] = "Hello w\xc3\xb6rld  123 <s> \xe4\xbd\xa0\xe5\xa5\xbd\n\tend </s>";
    tok_ids ids = {0};
    if (tok_encode(t, text, sizeof text - 1, TOK_ADD_SPECIAL | TOK_SPLIT_SPECIAL, &ids,
                   &err) == 0) {
        size_t len;
        free(tok_decode(t, ids.ids, ids.n, 0, &len));
        tok_stream s;
        tok_stream_init(&s, t, 1);
        for (int i = 0; i < ids.n; i++)
            tok_stream_push(&s, ids.ids[i], &len);
        tok_stream_flush(&s, &len);
        tok_stream_free(&s);
    }
    tok_ids_free(&ids);
    int32_t outside[3] = {-1, tok_vocab_size(t), INT32_MAX};
    size_t len;
    free(tok_decode(t, outside, 3, 1, &len));
    tok_delete(t);
    return 0;
}

#elif defined(TARGET_tokconfig)
/* tokenizer_config.json beside the demo's tokenizer.json (FUZZ_TOKENIZER): the special
 * tokens it names, its chat template and the named template suggested from it. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char *tokenizer_json;
    static size_t tokenizer_len;
    pesc_error err;
    if (!tokenizer_json &&
        pesc_read_file(getenv("FUZZ_TOKENIZER"), &tokenizer_json, &tokenizer_len, &err) != 0)
        abort();
    scratch_file("tokenizer_config.json", data, size);
    tokenizer *t = tok_load(scratch_file("tokenizer.json", (const uint8_t *)tokenizer_json,
                                         tokenizer_len), &err);
    if (!t)
        return 0;
    tok_bos(t), tok_eos(t), tok_pad(t);
    const char *jinja = tok_chat_template(t);
    if (jinja)
        template_suggest(jinja);
    template_model_other(t, "camelidae");
    int32_t stop[8];
    template_stop_ids(template_find("chatml"), t, stop, 8);
    tok_delete(t);
    return 0;
}

#elif defined(TARGET_dataset)
/* The first byte picks the format (and strictness), the second the file's extension; the rest
 * is the file. The tokenizer is the demo's (FUZZ_TOKENIZER). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tokenizer *tok;
    pesc_error err;
    if (!tok && !(tok = tok_load(getenv("FUZZ_TOKENIZER"), &err)))
        abort();
    if (size < 2)
        return 0;
    ds_load_options o = {.format = (ds_format)(data[0] % (DS_COMPLETION + 1)), .tok = tok,
                         .vocab_size = tok_vocab_size(tok), .strict = data[0] >= 128};
    ds_records records;
    memset(&records, 0, sizeof records);
    dataset_load(&records, scratch_file(data[1] & 1 ? "data.json" : "data.jsonl", data + 2,
                                        size - 2), &o, &err);
    dataset_free(&records);
    return 0;
}

#elif defined(TARGET_state)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    scratch_file("state.json", data, size);
    checkpoint_state st;
    memset(&st, 0, sizeof st);
    pesc_error err;
    checkpoint_read_state(scratch_dir(), &st, &err);
    return 0;
}

#elif defined(TARGET_runlog)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    monitor m;
    pesc_error err;
    if (logview_open(&m, scratch_file("run.jsonl", data, size), NULL, 5.0, &err) != 0)
        return 0;
    monitor_view *v = monitor_view_new();
    char reply[256];
    monitor_snapshot(&m, v);
    monitor_command(&m, "pause", reply, sizeof reply);
    monitor_snapshot(&m, v);
    monitor_view_delete(v);
    m.ops->close(m.ctx);
    return 0;
}

#elif defined(TARGET_optfile)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pesc_error err;
    optfile *f = optfile_parse((const char *)data, size, "run.yaml", &err);
    size_t sum = 0;   /* every name and value read through */
    for (int i = 0; f && i < f->n; i++) {
        sum += strlen(f->entries[i].name);
        for (int j = 0; j < f->entries[i].n_values; j++)
            sum += strlen(f->entries[i].values[j]);
    }
    optfile_delete(f);
    return sum == (size_t)-1;
}

#elif defined(TARGET_choices)
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mc_set set;
    pesc_error err;
    if (mc_load(&set, scratch_file("questions.jsonl", data, size), 0, &err) != 0)
        return 0;
    size_t sum = 0;   /* every text read through */
    for (int i = 0; i < set.n; i++) {
        sum += strlen(set.items[i].text) + (size_t)set.items[i].answer;
        for (int j = 0; j < set.items[i].n_options; j++)
            sum += strlen(set.items[i].options[j]);
    }
    mc_free(&set);
    return sum == (size_t)-1;
}

#else
#error "define one TARGET_x (tests/fuzz/run does)"
#endif
