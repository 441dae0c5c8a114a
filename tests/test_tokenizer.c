/* test_tokenizer — what needs no downloaded file: NFC/NFKC/NFD against Python's unicodedata
 * (tests/tokenizer/normalization.jsonl) through a byte-fallback tokenizer built here, streaming
 * decode of partial characters, invalid input and load errors. test_tokenizer_hf compares
 * with Hugging Face on real tokenizer files. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tokenizer.h"
#include "check.h"

static char *path_in(const char *dir, const char *rel)
{
    size_t n = strlen(dir) + strlen(rel) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, rel);
    return p;
}

/* A directory of this test's own, so that the tokenizer_config.json beside a tokenizer.json
 * is always the one the test wrote (or none). */
static char scratch[4096];

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "cannot write %s", path);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* A tokenizer from its JSON text (and the text of tokenizer_config.json beside it, or none
 * when config is NULL). */
static tokenizer *json_tokenizer_config(const char *json, const char *config, pesc_error *err)
{
    char *path = path_in(scratch, "tokenizer.json");
    char *config_path = path_in(scratch, "tokenizer_config.json");
    write_text(path, json);
    if (config)
        write_text(config_path, config);
    tokenizer *t = tok_load(path, err);
    unlink(path);
    unlink(config_path);
    free(path);
    free(config_path);
    return t;
}

static tokenizer *json_tokenizer(const char *json, pesc_error *err)
{
    return json_tokenizer_config(json, NULL, err);
}

/* A tokenizer whose vocabulary is the 256 byte tokens: encode(x) spells the normalized x
 * byte by byte, so decode(encode(x)) is the normalization of x. */
static tokenizer *byte_tokenizer(const char *normalizer, pesc_error *err)
{
    char json[8192];
    int n = snprintf(json, sizeof json,
                     "{\"normalizer\": %s, \"pre_tokenizer\": null, \"post_processor\": null,\n"
                     " \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"ByteFallback\"},"
                     " {\"type\": \"Fuse\"}]},\n \"added_tokens\": [],\n"
                     " \"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"merges\": [],"
                     " \"vocab\": {", normalizer);
    for (int b = 0; b < 256; b++)
        n += snprintf(json + n, sizeof json - (size_t)n, "%s\"<0x%02X>\": %d", b ? ", " : "", b, b);
    snprintf(json + n, sizeof json - (size_t)n, "}}}\n");
    return json_tokenizer(json, err);
}

/* Long pieces are cut before a space mark only where no token spans that point: with a
 * token "a\u2581" the cut would change the ids, so it must not happen; without one it must
 * not change them. Pieces longer than the word cache's limit, so BPE runs on them. */
static void test_space_split(void)
{
    static const char *const cases[] = {
        /* "a▁" merges first: a cut before ▁ would give a, ▁b instead of a▁, b */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"\u2581\": 2,"
        " \"a\u2581\": 3, \"\u2581b\": 4}, \"merges\": [\"a \u2581\", \"\u2581 b\"]}}",
        /* no token spans the cut: a, ▁b either way */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"\u2581\": 2,"
        " \"\u2581b\": 4}, \"merges\": [\"\u2581 b\"]}}"};
    static const int32_t want[2][2] = {{3, 1}, {0, 4}};
    char text[40 * 5 + 1] = "";
    for (int i = 0; i < 40; i++)
        strcat(text, "a\xe2\x96\x81" "b");   /* "a▁b", 40 times: 200 bytes, one piece */
    for (int c = 0; c < 2; c++) {
        pesc_error err = {{0}};
        tokenizer *t = json_tokenizer(cases[c], &err);
        tok_ids ids = {0};
        int ok = t && tok_encode(t, text, strlen(text), 0, &ids, &err) == 0 && ids.n == 80;
        for (int i = 0; ok && i < 80; i++)
            ok = ids.ids[i] == want[c][i % 2];
        CHECK(ok, "space-mark cut %s: %d ids, first %d %d (%s)",
              c == 0 ? "refused where a token spans it" : "exact where none does", ids.n,
              ids.n > 0 ? ids.ids[0] : -1, ids.n > 1 ? ids.ids[1] : -1, err.msg);
        tok_ids_free(&ids);
        tok_delete(t);
    }
}

static void test_normalization(const char *srcdir)
{
    static const char *const forms[][2] = {{"nfc", "NFC"}, {"nfkc", "NFKC"}, {"nfd", "NFD"}};
    char *path = path_in(srcdir, "tests/tokenizer/normalization.jsonl");
    for (int k = 0; k < 3; k++) {
        char spec[64];
        snprintf(spec, sizeof spec, "{\"type\": \"%s\"}", forms[k][1]);
        pesc_error err = {{0}};
        tokenizer *t = byte_tokenizer(spec, &err);
        CHECK(t != NULL, "byte tokenizer (%s): %s", forms[k][1], err.msg);
        FILE *f = fopen(path, "r");
        CHECK(f != NULL, "cannot open %s", path);
        char *line = NULL;
        size_t cap = 0;
        int rows = 0, bad = 0;
        while (t && f && getline(&line, &cap, f) > 0) {
            json_t *row = json_loads(line, 0, NULL);
            json_t *text = json_object_get(row, "text"), *want = json_object_get(row, forms[k][0]);
            tok_ids ids = {0};
            tok_encode(t, json_string_value(text), json_string_length(text), 0, &ids, &err);
            size_t n;
            char *got = tok_decode(t, ids.ids, ids.n, 0, &n);
            if (n != json_string_length(want) || memcmp(got, json_string_value(want), n) != 0) {
                if (bad < 5)
                    fprintf(stderr, "%s row %d: got %s want %s\n", forms[k][1], rows + 1, got,
                            json_string_value(want));
                bad++;
            }
            free(got);
            tok_ids_free(&ids);
            json_decref(row);
            rows++;
        }
        CHECK(bad == 0 && rows > 0, "%s: %d of %d texts differ from Python's unicodedata",
              forms[k][1], bad, rows);
        printf("%s: %d texts, %d mismatches (Unicode %s)\n", forms[k][1], rows, bad,
               tok_unicode_version());
        free(line);
        if (f)
            fclose(f);
        tok_delete(t);
    }
    free(path);
}

/* Held-back partial characters: "é" = C3 A9 split over two byte tokens. */
static void test_stream_partial(void)
{
    pesc_error err = {{0}};
    tokenizer *t = byte_tokenizer("null", &err);
    CHECK(t != NULL, "byte tokenizer: %s", err.msg);
    if (!t)
        return;
    tok_stream s;
    tok_stream_init(&s, t, 0);
    size_t n;
    const char *out = tok_stream_push(&s, 0xC3, &n);
    CHECK(n == 0, "stream: a lone lead byte must be held back (got %zu bytes)", n);
    out = tok_stream_push(&s, 0xA9, &n);
    CHECK(n == 2 && memcmp(out, "\xc3\xa9", 2) == 0, "stream: completed character expected");
    out = tok_stream_push(&s, 0xF0, &n);
    out = tok_stream_push(&s, 0x9F, &n);
    CHECK(n == 0, "stream: an incomplete 4-byte character must be held back");
    out = tok_stream_push(&s, 'a', &n);
    CHECK(n == 4 && memcmp(out, "\xef\xbf\xbd" "a", 4) == 0,
          "stream: a broken sequence becomes U+FFFD then the next character (got %zu)", n);
    out = tok_stream_push(&s, 0xE2, &n);
    out = tok_stream_flush(&s, &n);
    CHECK(n == 3 && memcmp(out, "\xef\xbf\xbd", 3) == 0, "stream: flush gives U+FFFD");
    tok_stream_free(&s);
    tok_ids ids = {0};
    CHECK(tok_encode(t, "a\xff", 2, 0, &ids, &err) == -1 && strstr(err.msg, "UTF-8"),
          "invalid UTF-8 input must fail (%s)", err.msg);
    tok_ids_free(&ids);
    tok_delete(t);
}

/* A vocabulary with gaps in its ids (entries taken out of tokenizer.json): its size is the
 * largest id and one, the missing ids are counted, and a stream shows an id with no token
 * (a gap, or past the vocabulary: a model's padded rows) as "<id N>" rather than drop it. */
static void test_vocabulary_gaps(void)
{
    static const char json[] =
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"<s>\": 0, \"a\": 1, \"c\": 4},"
        " \"merges\": []}}";
    pesc_error err = {{0}};
    tokenizer *t = json_tokenizer(json, &err);
    CHECK(t != NULL, "a vocabulary with gaps loads: %s", err.msg);
    if (!t)
        return;
    CHECK(tok_vocab_size(t) == 5 && tok_vocab_missing(t) == 2 && !tok_token(t, 2),
          "ids 0 to 4, 2 of them missing: size %d, missing %d", tok_vocab_size(t),
          tok_vocab_missing(t));
    tok_stream s;
    tok_stream_init(&s, t, 1);
    static const int32_t ids[] = {1, 2, 4, 9};
    char text[64] = "";
    size_t n, used = 0;
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++) {
        const char *piece = tok_stream_push(&s, ids[i], &n);
        used += (size_t)snprintf(text + used, sizeof text - used, "%.*s", (int)n, piece);
    }
    tok_stream_free(&s);
    CHECK(strcmp(text, "a <id 2> c <id 9>") == 0, "ids with no token are shown: '%s'", text);
    tok_delete(t);
}

static void test_load_errors(void)
{
    char *path = path_in(scratch, "tokenizer.json");
    write_text(path, "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}");
    pesc_error err = {{0}};
    tokenizer *t = tok_load(path, &err);
    CHECK(!t && strstr(err.msg, "Unigram") && strstr(err.msg, path),
          "an unsupported model must be named with the file: %s", err.msg);
    write_text(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
               " \"pre_tokenizer\": {\"type\": \"Whitespace\"}}");
    t = tok_load(path, &err);
    CHECK(!t && strstr(err.msg, "Whitespace"), "an unsupported pre-tokenizer must be named: %s",
          err.msg);
    write_text(path, "{\"model\": {\"type\": \"BPE\",\n \"vocab\": {\"a\": 0,}}}");
    t = tok_load(path, &err);
    CHECK(!t && strstr(err.msg, path) && strstr(err.msg, "not valid JSON (line 2, column"),
          "invalid JSON must name the file and the line: %s", err.msg);
    unlink(path);

    /* nothing there: the file and why, with no position ("line -1") that does not exist */
    t = tok_load(path, &err);
    CHECK(!t && strstr(err.msg, path) && strstr(err.msg, "No such file") && !strstr(err.msg, "line"),
          "a missing file must be named, without a position: %s", err.msg);
    /* a directory given for the file, and a directory in the file's place */
    t = tok_load(scratch, &err);
    CHECK(!t && strstr(err.msg, scratch) && strstr(err.msg, "is a directory, not a file") &&
          strstr(err.msg, "name the tokenizer.json file itself"),
          "a directory given for tokenizer.json must be called one: %s", err.msg);
    CHECK(mkdir(path, 0700) == 0, "cannot make %s", path);
    t = tok_load_dir(scratch, &err);
    CHECK(!t && strstr(err.msg, path) && strstr(err.msg, "is a directory, not a file"),
          "a directory named tokenizer.json must be called one: %s", err.msg);
    rmdir(path);
    /* a FIFO nothing writes to: named after a wait of seconds (its open once waited for a
     * writer forever; the alarm ends the test if it does again) */
    CHECK(mkfifo(path, 0600) == 0, "cannot make the FIFO %s", path);
    alarm(60);
    t = tok_load(path, &err);
    alarm(0);
    CHECK(!t && strstr(err.msg, path) && strstr(err.msg, "is a FIFO that nothing wrote to in"),
          "a FIFO without a writer must be named, not waited on forever: %s", err.msg);
    /* one whose writer comes a moment later is read (process substitution, a generator) */
    pid_t writer = fork();
    if (writer == 0) {
        usleep(300 * 1000);
        FILE *w = fopen(path, "w");
        if (w) {
            fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}", w);
            fclose(w);
        }
        _exit(0);
    }
    alarm(60);
    t = tok_load(path, &err);
    alarm(0);
    CHECK(t != NULL, "a FIFO whose writer opens late must be read: %s", err.msg);
    tok_delete(t);
    if (writer > 0)
        waitpid(writer, NULL, 0);
    unlink(path);
    free(path);

    /* a Metaspace replacement or a Strip decoder's content is one character (Hugging Face's
     * char): an empty replacement split every text forever, until memory ran out */
    static const char *const one_char[][2] = {
        {"\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\"}",
         "Metaspace pre-tokenizer: \"replacement\" must be one character, not \"\""},
        {"\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"ab\"}",
         "Metaspace pre-tokenizer: \"replacement\" must be one character, not \"ab\""},
        {"\"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\"}",
         "Metaspace decoder: \"replacement\" must be one character"},
        {"\"decoder\": {\"type\": \"Strip\", \"content\": \"xy\", \"start\": 1, \"stop\": 0}",
         "Strip decoder: \"content\" must be one character"},
    };
    for (size_t i = 0; i < sizeof one_char / sizeof *one_char; i++) {
        char json[512];
        snprintf(json, sizeof json, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                 "\"merges\": []}, %s}", one_char[i][0]);
        t = json_tokenizer(json, &err);
        CHECK(!t && strstr(err.msg, one_char[i][1]), "%s must be refused: %s", one_char[i][0],
              err.msg);
        tok_delete(t);
    }
    /* Replace normalizers that multiply a text past 1024 times are refused at load (six of
     * "a" to 76 "a"s ran the memory out on the first text); " " to U+2581 loads */
    char chain[2048] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                       "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [";
    for (int i = 0; i < 6; i++) {
        snprintf(chain + strlen(chain), sizeof chain - strlen(chain), "%s{\"type\": \"Replace\", "
                 "\"pattern\": {\"String\": \"a\"}, \"content\": \"", i ? ", " : "");
        for (int k = 0; k < 76; k++)
            strcat(chain, "a");
        strcat(chain, "\"}");
    }
    strcat(chain, "]}}");
    t = json_tokenizer(chain, &err);
    CHECK(!t && strstr(err.msg, "Replace normalizer: the normalizers could make a text up to "
                                "5.78e+03 times longer (pesc takes 1024)"),
          "a Replace chain that multiplies a text 76^6 times must be refused: %s", err.msg);
    tok_delete(t);
    t = json_tokenizer("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                       "\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, "
                       "\"content\": \"\\u2581\"}}", &err);
    CHECK(t != NULL, "Replace \" \" with U+2581 must load: %s", err.msg);
    tok_delete(t);
    /* one character of three bytes, as real files have it, still loads */
    t = json_tokenizer("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                       "\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": "
                       "\"\\u2581\"}}", &err);
    CHECK(t != NULL, "a one-character Metaspace replacement must load: %s", err.msg);
    tok_delete(t);
}

/* The post-processors real files use load and add their tokens; anything else, or a
 * template that would drop or garble the BOS, is refused with tokenizer.json named. */
static void test_post_processor(void)
{
#define SPECIAL(name) "{\"SpecialToken\": {\"id\": \"" name "\", \"type_id\": 0}}"
#define TEXT "{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}"
#define SPECIALS(ids) "\"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": " ids \
                      ", \"tokens\": [\"<s>\"]}, \"</s>\": {\"id\": \"</s>\", \"ids\": [1]}}"
#define LLAMA2 "{\"type\": \"TemplateProcessing\", \"single\": [" SPECIAL("<s>") ", " TEXT "],"  \
               " \"pair\": [], " SPECIALS("[0]") "}"
    static const struct {
        const char *post;
        const char *want;   /* the ids of "a" (vocabulary <s> 0, </s> 1, a 2), or the error */
    } cases[] = {
        {"null", "2"},
        {"{\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": false}", "2"},
        {LLAMA2, "0 2"},                                                 /* Llama 2, Gemma */
        {"{\"type\": \"Sequence\", \"processors\": [{\"type\": \"ByteLevel\"}, " LLAMA2 "]}",
         "0 2"},                                                         /* Meta's Llama 3 */
        {"{\"type\": \"TemplateProcessing\", \"single\": [" SPECIAL("<s>") ", " TEXT ", "
         SPECIAL("</s>") "], " SPECIALS("[0]") "}", "0 2 1"},
        {"{\"type\": \"RobertaProcessing\"}", "post_processor \"RobertaProcessing\" is not supported"},
        {"\"TemplateProcessing\"", "post_processor must be null or an object with a \"type\""},
        {"{\"type\": \"Sequence\", \"processors\": {}}", "a Sequence needs a \"processors\" array"},
        {"{\"type\": \"Sequence\", \"processors\": [{\"type\": \"BertProcessing\"}]}",
         "\"BertProcessing\" is not supported"},
        {"{\"type\": \"TemplateProcessing\", \"single\": \"<s> $A\", " SPECIALS("[0]") "}",
         "TemplateProcessing needs a \"single\" template"},
        {"{\"type\": \"TemplateProcessing\", \"single\": [" SPECIAL("<s>") "], " SPECIALS("[0]") "}",
         "the single template has 0 Sequence items"},
        {"{\"type\": \"TemplateProcessing\", \"single\": [" SPECIAL("<bos>") ", " TEXT "], "
         SPECIALS("[0]") "}", "special token \"<bos>\" but \"special_tokens\" gives it no ids"},
        {"{\"type\": \"TemplateProcessing\", \"single\": [" SPECIAL("<s>") ", " TEXT "], "
         SPECIALS("[999999]") "}", "special_tokens[\"<s>\"].ids[0] = 999999 is not in the vocabulary (3 ids)"},
        {"{\"type\": \"TemplateProcessing\", \"single\": [" SPECIAL("<s>") ", " TEXT "], "
         SPECIALS("[\"0\"]") "}", "special_tokens[\"<s>\"].ids[0] is not an integer"},
        {"{\"type\": \"TemplateProcessing\", \"single\": [{\"Special\": {}}, " TEXT "], "
         SPECIALS("[0]") "}", "single[0] must be {\"SpecialToken\""},
    };
#undef LLAMA2
#undef SPECIALS
#undef TEXT
#undef SPECIAL
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char json[4096];
        snprintf(json, sizeof json,
                 "{\"post_processor\": %s, \"model\": {\"type\": \"BPE\", \"vocab\": "
                 "{\"<s>\": 0, \"</s>\": 1, \"a\": 2}, \"merges\": []}}", cases[i].post);
        pesc_error err = {{0}};
        tokenizer *t = json_tokenizer(json, &err);
        int is_ids = cases[i].want[0] >= '0' && cases[i].want[0] <= '9';
        if (is_ids) {
            tok_ids ids = {0};
            char got[64] = "";
            if (t && tok_encode(t, "a", 1, TOK_ADD_SPECIAL, &ids, &err) == 0)
                for (int k = 0; k < ids.n; k++)
                    snprintf(got + strlen(got), sizeof got - strlen(got), "%s%d", k ? " " : "",
                             ids.ids[k]);
            CHECK(strcmp(got, cases[i].want) == 0, "post_processor %s: ids [%s], want [%s] (%s)",
                  cases[i].post, got, cases[i].want, err.msg);
            tok_ids_free(&ids);
        } else {
            CHECK(!t && strstr(err.msg, "tokenizer.json: post_processor") &&
                  strstr(err.msg, cases[i].want),
                  "post_processor %s must be refused with '%s': %s", cases[i].post, cases[i].want,
                  t ? "(loaded)" : err.msg);
        }
        tok_delete(t);
    }
}

/* tokenizer_config.json: optional, but when it is there it must be well formed. */
static void test_config(void)
{
    static const char json[] =
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"<s>\": 0, \"</s>\": 1, \"a\": 2},"
        " \"merges\": []}}";
    static const struct {
        const char *config, *want;   /* want: NULL to load, else a part of the message */
    } cases[] = {
        {NULL, NULL},
        /* model_max_length as transformers writes it, past 64 bits (Llama 2, Llama 3) */
        {"{\"bos_token\": \"</s>\", \"eos_token\": {\"content\": \"<s>\"}, \"pad_token\": null,"
         " \"model_max_length\": 1000000000000000019884624838656}", NULL},
        {"{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"},"
         " {\"name\": \"default\", \"template\": \"D\"}]}", NULL},
        {"{\"bos_token\": \"<s>\",", "tokenizer_config.json is not valid JSON (line 1, column"},
        {"", "tokenizer_config.json is not valid JSON"},
        {"[\"<s>\"]", "tokenizer_config.json holds an array, not a JSON object"},
        {"{\"bos_token\": 5}", "tokenizer_config.json: \"bos_token\" is a number; write the token"},
        {"{\"eos_token\": [\"</s>\"]}", "\"eos_token\" is an array"},
        {"{\"pad_token\": {\"id\": 1}}", "\"pad_token\" is an object without a \"content\""},
        {"{\"chat_template\": true}", "\"chat_template\" is a boolean"},
        /* a BOS or EOS that names no token: <s> and </s> once stood in for it unsaid */
        {"{\"eos_token\": \"<|eot_id|>\"}", "tokenizer_config.json: \"eos_token\" is \"<|eot_id|>\", "
                                          "which is no token"},
        {"{\"bos_token\": {\"content\": \"<bos>\"}}", "\"bos_token\" is \"<bos>\", which is no"},
        {"{\"pad_token\": \"<pad>\"}", NULL},   /* HF's to add, not pesc's to use */
        {"{\"chat_template\": [\"x\"]}", "\"chat_template\"[0] is not {\"name\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pesc_error err = {{0}};
        tokenizer *t = json_tokenizer_config(json, cases[i].config, &err);
        if (!cases[i].want) {
            CHECK(t != NULL, "config %s must load: %s", cases[i].config ? cases[i].config : "absent",
                  err.msg);
        } else {
            CHECK(!t && strstr(err.msg, cases[i].want) && !strchr(err.msg, '\n'),
                  "config %s: the message must say '%s': %s", cases[i].config, cases[i].want,
                  err.msg);
        }
        if (t && i == 1)
            CHECK(tok_bos(t) == 1 && tok_eos(t) == 0 && tok_pad(t) == -1,
                  "bos/eos/pad from the config: %d %d %d", tok_bos(t), tok_eos(t), tok_pad(t));
        if (t && i == 2)
            CHECK(tok_chat_template(t) && strcmp(tok_chat_template(t), "D") == 0,
                  "the chat template named \"default\" must be taken: %s",
                  tok_chat_template(t) ? tok_chat_template(t) : "(none)");
        tok_delete(t);
    }
    /* "bos_token": null (Qwen's config) is no BOS, although "<s>" is in the vocabulary; with
     * the key absent, the usual spelling stands in */
    pesc_error err = {{0}};
    tokenizer *t = json_tokenizer_config(json, "{\"bos_token\": null}", &err);
    CHECK(t && tok_bos(t) == -1, "bos_token null: no BOS, got %d (%s)", t ? tok_bos(t) : -2,
          err.msg);
    tok_delete(t);
    t = json_tokenizer_config(json, "{\"eos_token\": \"</s>\"}", &err);
    CHECK(t && tok_bos(t) == 0, "bos_token absent: \"<s>\" is the BOS, got %d (%s)",
          t ? tok_bos(t) : -2, err.msg);
    tok_delete(t);
}

/* A tokenizer whose pre-tokenizer splits on `pattern` (isolated), over the tokens a, b, " " and
 * "b " (merged from b and " "). */
static tokenizer *split_tokenizer(const char *pattern, pesc_error *err)
{
    char json[1024];
    snprintf(json, sizeof json,
             "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"%s\"},"
             " \"behavior\": \"Isolated\", \"invert\": false},\n"
             " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \" \": 2,"
             " \"b \": 3}, \"merges\": [[\"b\", \" \"]]}}", pattern);
    return json_tokenizer(json, err);
}

/* A group repeated over a long text: PCRE2's JIT needs more than its default stack, and past
 * the one the tokenizer gives it the interpreter matches; either way the match ends where the
 * pattern says (taken for no match, the whole text would be one piece and merge b with " ").
 * A pattern that backtracks without end is refused with a message, never taken as no match. */
static void test_regex_limits(void)
{
    pesc_error err = {{0}};
    tokenizer *t = split_tokenizer("(?:a|b)+", &err);
    CHECK(t, "a Split tokenizer must load: %s", err.msg);
    if (!t)
        return;
    static const int runs[] = {500, 5000, 200000};   /* "ab" repeated: 1 kB, 10 kB, 400 kB */
    for (int r = 0; r < 3; r++) {
        size_t n = 2 * (size_t)runs[r];
        char *text = xmalloc(n + 2);
        for (size_t i = 0; i < n; i++)
            text[i] = "ab"[i % 2];
        text[n] = ' ';
        tok_ids ids = {0};
        int ok = tok_encode(t, text, n + 1, 0, &ids, &err) == 0 && ids.n == (int)n + 1 &&
                 ids.ids[n - 1] == 1 && ids.ids[n] == 2;
        CHECK(ok, "a group repeated over %zu characters must match them all: %d ids, last %d %d "
              "(%s)", n, ids.n, ids.n > 1 ? ids.ids[ids.n - 2] : -1,
              ids.n > 0 ? ids.ids[ids.n - 1] : -1, err.msg);
        tok_ids_free(&ids);
        free(text);
    }
    tok_delete(t);

    t = split_tokenizer("(?:a|aa)+\\\\d", &err);
    CHECK(t, "a backtracking Split tokenizer must load: %s", err.msg);
    if (!t)
        return;
    char text[51];
    memset(text, 'a', 50);
    text[50] = '\0';
    tok_ids ids = {0};
    int rc = tok_encode(t, text, 50, 0, &ids, &err);
    CHECK(rc == -1 && strstr(err.msg, "/(?:a|aa)+\\d/ could not finish matching a text of 50") &&
          strstr(err.msg, "limit"), "a match PCRE2 gives up on must be refused: %d, %s", rc,
          err.msg);
    tok_ids_free(&ids);
    tok_delete(t);
}

int main(void)
{
    const char *srcdir = getenv("top_srcdir");
    if (!srcdir)
        srcdir = ".";
    const char *tmp = getenv("TMPDIR");
    snprintf(scratch, sizeof scratch, "%s/pesc-test-tokXXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(scratch)) {
        perror(scratch);
        return 99;
    }
    test_normalization(srcdir);
    test_stream_partial();
    test_vocabulary_gaps();
    test_load_errors();
    test_space_split();
    test_regex_limits();
    test_config();
    test_post_processor();
    pesc_remove_tree(scratch);
    if (failures) {
        fprintf(stderr, "test_tokenizer: %d failures\n", failures);
        return 1;
    }
    return 0;
}
