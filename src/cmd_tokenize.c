/* cmd_tokenize — `pesc tokenize`: text on stdin to token ids on stdout. */
#include <ctype.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "dataset.h"
#include "fetch_view.h"
#include "stream.h"
#include "tokenizer.h"

static const char tokenize_usage[] =
    "usage: pesc tokenize (--tokenizer FILE|URL | --model DIR|URL) [--jsonl] [--no-special]\n"
    "                     [--decode]\n"
    "\n"
    "Encodes standard input with a Hugging Face tokenizer.json, exactly as the tokenizers\n"
    "library's encode(text) does, and prints the ids.\n"
    "\n"
    "  --tokenizer FILE  a tokenizer.json (tokenizer_config.json beside it is read when present);\n"
    "                    a URL downloads the file alone\n"
    "  --model DIR       a model directory holding tokenizer.json; hf://OWNER/NAME downloads\n"
    "                    only its tokenizer files\n"
    "  --jsonl           each input line is a JSON string; each output line the JSON array of\n"
    "                    its ids, a blank line for a blank one (without it: all of stdin is one\n"
    "                    text, ids space-separated)\n"
    "  --no-special      do not add the post-processor's special tokens (BOS, ...)\n"
    "  --decode          the reverse: each input line is a JSON array of ids (or ids separated\n"
    "                    by spaces, as tokenize prints them), each output line the JSON string\n"
    "                    HF decode(ids, skip_special_tokens=false) gives (blank for blank); an\n"
    "                    id that is not an integer of the vocabulary is an error\n";

typedef struct tokenize_options {
    const char *tokenizer, *model;
    int jsonl, no_special, decode;
} tokenize_options;

static int parse_tokenize(tokenize_options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"tokenizer", required_argument, NULL, 't'}, {"model", required_argument, NULL, 'm'},
        {"jsonl", no_argument, NULL, 'j'}, {"no-special", no_argument, NULL, 'n'},
        {"decode", no_argument, NULL, 'd'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    *o = (tokenize_options){0};
    int c;
    while ((c = cli_getopt("tokenize", argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 't':
            if (cli_path("tokenize", "--tokenizer", optarg, "a tokenizer.json", &o->tokenizer))
                return EXIT_USAGE;
            break;
        case 'm':
            if (cli_path("tokenize", "--model", optarg, "a model directory", &o->model))
                return EXIT_USAGE;
            break;
        case 'j': o->jsonl = 1; break;
        case 'n': o->no_special = 1; break;
        case 'd': o->decode = 1; break;
        case 'h': fputs(tokenize_usage, stdout); return 0;
        default: return EXIT_USAGE;
        }
    }
    if (optind < argc)
        return cli_unexpected("tokenize", argv[optind], "the text to encode (or, with --decode, "
                              "the ids) comes on standard input");
    if (!o->tokenizer == !o->model)
        return cli_usage_error("tokenize", "give exactly one of --tokenizer FILE or --model DIR");
    if (o->decode && o->no_special)
        return cli_usage_error("tokenize", "--no-special is for encoding; --decode writes every "
                               "id's text, special ones included (as HF's decode does)");
    return -1;
}

static void print_ids(const tok_ids *ids, int json)
{
    if (json) putchar('[');
    for (int i = 0; i < ids->n; i++)
        printf(i ? (json ? ", %d" : " %d") : "%d", ids->ids[i]);
    puts(json ? "]" : "");
}

static int encode_line(tokenizer *t, const char *line, size_t len, long line_no, unsigned flags,
                       pesc_error *err)
{
    json_error_t jerr;
    char why[PESC_ERROR_MAX / 2];
    json_t *v = json_loadb(line, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!v && ds_json_text_problem(&jerr, why, sizeof why))   /* a string, of bytes not UTF-8 */
        return pesc_fail(err, "stdin:%ld: %s", line_no, why);
    if (!v)   /* not JSON: say where and why (a lone surrogate \ud800, a stray quote) */
        return pesc_fail(err, "stdin:%ld: not valid JSON (column %d: %s): expected a JSON string "
                         "per line", line_no, jerr.column, jerr.text);
    if (!json_is_string(v)) {
        json_decref(v);
        return pesc_fail(err, "stdin:%ld: expected a JSON string per line", line_no);
    }
    tok_ids ids = {0};
    int rc = tok_encode(t, json_string_value(v), json_string_length(v), flags, &ids, err);
    json_decref(v);
    if (rc == 0)
        print_ids(&ids, 1);
    tok_ids_free(&ids);
    return rc ? pesc_fail_prefix(err, "stdin:%ld", line_no) : 0;
}

/* The ids of one --decode line. Each must be a token of the vocabulary: tok_decode drops
 * unknown ids, and a typo would otherwise come back as a shorter text with no word. */
static int parse_ids(const tokenizer *t, json_t *array, long line_no, tok_ids *ids,
                     pesc_error *err)
{
    int n_vocab = tok_vocab_size(t);
    size_t i;
    json_t *x;
    json_array_foreach(array, i, x) {
        json_int_t id = json_integer_value(x);
        if (!json_is_integer(x)) {
            char *text = json_dumps(x, JSON_ENCODE_ANY | JSON_COMPACT);
            pesc_fail(err, "stdin:%ld: entry %zu, %.40s, is not a token id: ids are integers "
                      "from 0 to %d (a vocabulary of %d)", line_no, i, text ? text : "?",
                      n_vocab - 1, n_vocab);
            free(text);
            return -1;
        }
        if (id >= 0 && id < n_vocab && tok_token(t, (int32_t)id)) {
            tok_ids_push(ids, (int32_t)id);
            continue;
        }
        int missing = tok_vocab_missing(t);   /* a pass over the vocabulary: only here */
        if (id >= 0 && id < n_vocab)   /* inside the range: a gap in its numbering */
            return pesc_fail(err, "stdin:%ld: entry %zu, id %lld, has no token in tokenizer.json "
                             "(the vocabulary has gaps: %d id%s missing between 0 and %d)",
                             line_no, i, (long long)id, missing, missing == 1 ? "" : "s",
                             n_vocab - 1);
        return pesc_fail(err, "stdin:%ld: entry %zu, id %lld, is not in the vocabulary: ids run "
                         "from 0 to %d (a vocabulary of %d%s)", line_no, i, (long long)id,
                         n_vocab - 1, n_vocab - missing, missing ? ", with gaps" : "");
    }
    return 0;
}

/* ids separated by white space, as pesc tokenize prints them without --jsonl, as the JSON
 * array parse_ids takes; NULL after a word that is no integer */
static json_t *plain_ids(const char *line, size_t len, long line_no, pesc_error *err)
{
    json_t *v = json_array();
    for (size_t i = 0; i < len;) {
        i += strspn(line + i, " \t\r");
        if (i >= len)
            break;
        size_t n = strcspn(line + i, " \t\r");
        n = n < len - i ? n : len - i;
        if (n == 0)   /* a NUL byte: not text */
            break;
        char word[32];
        long id;
        if (n >= sizeof word || (snprintf(word, sizeof word, "%.*s", (int)n, line + i),
                                 cli_parse_long(word, LONG_MIN, LONG_MAX, &id) != 0)) {
            pesc_fail(err, "stdin:%ld: '%.*s' is not a token id (give ids as pesc tokenize "
                      "prints them, or a JSON array a line)", line_no, (int)(n < 40 ? n : 40),
                      line + i);
            json_decref(v);
            return NULL;
        }
        json_array_append_new(v, json_integer(id));
        i += n;
    }
    return v;
}

static int decode_line(tokenizer *t, const char *line, size_t len, long line_no, pesc_error *err)
{
    json_error_t jerr;
    size_t lead = strspn(line, " \t");
    int plain = lead < len && (isdigit((unsigned char)line[lead]) || line[lead] == '-');
    json_t *v = plain ? plain_ids(line, len, line_no, err) : json_loadb(line, len, 0, &jerr);
    if (!v && plain)
        return -1;
    if (!json_is_array(v)) {
        json_decref(v);
        return v ? pesc_fail(err, "stdin:%ld: expected a JSON array of ids per line", line_no)
                 : pesc_fail(err, "stdin:%ld: expected a JSON array of ids per line (column "
                             "%d: %s)", line_no, jerr.column, jerr.text);
    }
    tok_ids ids = {0};
    int rc = parse_ids(t, v, line_no, &ids, err);
    json_decref(v);
    if (rc != 0) {
        tok_ids_free(&ids);
        return -1;
    }
    size_t n;
    char *text = tok_decode(t, ids.ids, ids.n, 0, &n);
    json_t *s = json_stringn(text, n);
    char *dump = json_dumps(s, JSON_ENCODE_ANY | JSON_ENSURE_ASCII);
    puts(dump);
    free(dump);
    json_decref(s);
    free(text);
    tok_ids_free(&ids);
    return 0;
}

int cmd_tokenize(int argc, char **argv)
{
    tokenize_options o;
    int status = parse_tokenize(&o, argc, argv);
    if (status >= 0)
        return status;
    pesc_error err = {{0}};
    char *local = NULL;
    tokenizer *t = NULL;
    if (o.tokenizer ? fetch_view_url_to_cache(o.tokenizer, &local, &err) == 0
                    : fetch_view_resolve_tokenizer(o.model, &local, &err) == 0) {
        /* a large vocabulary takes seconds (Gemma 3's: 262k tokens) */
        pesc_show_phase("pesc tokenize", "loading the tokenizer from %s", pesc_path_shown(local));
        t = o.tokenizer ? tok_load(local, &err) : tok_load_dir(local, &err);
        pesc_show_phase("pesc tokenize", NULL);
        if (!t)
            pesc_fail_prefix(&err, "%s", o.tokenizer ? "--tokenizer" : "--model");
    }
    free(local);
    if (!t)
        return cli_fail("tokenize", &err);
    unsigned flags = o.no_special ? 0 : TOK_ADD_SPECIAL;
    pesc_stream *in = stream_open("-", &err);
    status = 1;
    if (!in)
        goto out;
    if (o.jsonl || o.decode) {
        const char *line;
        long line_no;
        ssize_t len;
        while ((len = stream_getline(in, &line, &line_no, &err)) >= 0) {
            size_t n = (size_t)len;
            if (line_no == 1)
                line = pesc_skip_bom(line, &n);
            if (strspn(line, " \t\r") >= n) {   /* a blank line stays one: line i is line i */
                putchar('\n');
                continue;
            }
            if ((o.decode ? decode_line(t, line, n, line_no, &err)
                          : encode_line(t, line, n, line_no, flags, &err)) != 0)
                goto out;
        }
        if (len == -2)
            goto out;
    } else {
        char *text = NULL;
        size_t n = 0, cap = 0;
        ssize_t got;
        do {
            if (n + 65536 > cap)
                text = xrealloc(text, cap = 2 * cap + 65536);
            got = stream_read(in, text + n, cap - n, &err);
            if (got > 0)
                n += (size_t)got;
        } while (got > 0);
        tok_ids ids = {0};
        int rc = got < 0 ? -1 : tok_encode(t, text ? text : "", n, flags, &ids, &err);
        if (rc == 0)
            print_ids(&ids, 0);
        tok_ids_free(&ids);
        free(text);
        if (rc != 0)
            goto out;
    }
    status = 0;   /* main checks that the ids reached standard output */
out:
    if (status != 0)
        cli_fail("tokenize", &err);
    stream_close(in);
    tok_delete(t);
    return status;
}
