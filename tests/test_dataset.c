/* test_dataset — formats (JSONL, JSON array, gzip, a byte order mark), the shapes of public
 * instruction sets (ShareGPT, OpenAI, LMSYS, Dolly, GSM8K variants, prompt/completion pairs:
 * every turn read, only answers labeled, or one message naming the turn; preference data
 * refused with what to do), prompt/completion strings to exact ids and labels, files that are
 * neither JSONL nor one array, skipped and strict bad records, mixture weights and how
 * PATH:WEIGHT is read, truncation and the answers it leaves, packing (positions and document
 * ids), seeded order and an exact cursor round trip; messages for empty paths and negative ids;
 * the token store: records read back exactly, batches the same as before it, and one-line
 * errors for a TMPDIR that is missing or full; a NUL byte and a table (.csv, .parquet)
 * refused, naming the place or what to do. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zlib.h>

#include "dataset.h"
#include "tokenizer/fixture.h"
#include "check.h"

static char dir[] = "/tmp/pesc-test-datasetXXXXXX";

static const char *write_file(const char *name, const char *text, int gzip)
{
    static char path[8][512];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, 512, "%s/%s", dir, name);
    if (gzip) {
        gzFile g = gzopen(p, "wb");
        gzwrite(g, text, (unsigned)strlen(text));
        gzclose(g);
    } else {
        FILE *f = fopen(p, "w");
        fputs(text, f);
        fclose(f);
    }
    return p;
}

static char *decode_record(tokenizer *t, const ds_record *r)
{
    return tok_decode(t, r->ids, r->len, 0, NULL);
}

static void test_formats(tokenizer *t)
{
    static const struct { const char *name, *line, *want; } cases[] = {
        {"camelidae", "{\"instruction\": \"S\", \"conversation\": [{\"input\": \"q\", \"output\": \"a\"}]}",
         "<s>### System:\nS\n### Human:\nq\n### Assistant:\na</s>"},
        {"corpus", "{\"instruction\": \"\", \"conversation\": [], \"corpus\": \"plain text\"}",
         "<s>plain text</s>"},
        {"alpaca", "{\"instruction\": \"do\", \"input\": \"x\", \"output\": \"y\"}",
         "<s>### Human:\ndo\n\nx\n### Assistant:\ny</s>"},
        {"sharegpt", "{\"conversations\": [{\"from\": \"system\", \"value\": \"S\"}, {\"from\": \"human\", "
         "\"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}",
         "<s>### System:\nS\n### Human:\nq\n### Assistant:\na</s>"},
        {"openai", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", "
         "\"content\": \"a\"}]}", "<s>### Human:\nq\n### Assistant:\na</s>"},
        {"metamath", "{\"query\": \"1+1\", \"response\": \"2\", \"type\": \"GSM\"}",
         "<s>### Human:\n1+1\n### Assistant:\n2</s>"},
        {"magicoder", "{\"problem\": \"p\", \"solution\": \"s\"}", "<s>### Human:\np\n### Assistant:\ns</s>"},
        {"magicoder2", "{\"instruction\": \"i\", \"response\": \"r\"}", "<s>### Human:\ni\n### Assistant:\nr</s>"},
        {"text", "{\"text\": \"hello world\"}", "<s>hello world</s>"},
        {"completion", "{\"prompt\": \"2+2=\", \"completion\": \"4\"}", "<s>2+2=4</s>"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char body[1024];
        snprintf(body, sizeof body, "%s\n", cases[i].line);
        const char *path = write_file("one.jsonl", body, 0);
        ds_records d = {0};
        pesc_error err = {{0}};
        ds_load_options lo = {.format = DS_AUTO, .tok = t, .strict = 1};
        int rc = dataset_load(&d, path, &lo, &err);
        CHECK(rc == 0 && d.n == 1, "%s: %s", cases[i].name, err.msg);
        if (rc == 0) {
            char *text = decode_record(t, &d.items[0]);
            CHECK(strcmp(text, cases[i].want) == 0, "%s: got %s", cases[i].name, text);
            free(text);
        }
        dataset_free(&d);
    }
}

/* One JSONL line loaded strictly with the camelidae template: 0 and its text and labeled
 * spans (joined by '|'), or -1 and the message. */
static int load_line(tokenizer *t, const char *line, char *text, char *labeled, size_t n,
                     pesc_error *err)
{
    char body[2048];
    snprintf(body, sizeof body, "%s\n", line);
    ds_records d = {0};
    ds_load_options lo = {.format = DS_AUTO, .tok = t, .strict = 1};
    if (dataset_load(&d, write_file("shape.jsonl", body, 0), &lo, err) != 0)
        return -1;
    const ds_record *r = &d.items[0];
    char *all = decode_record(t, r);
    snprintf(text, n, "%s", all);
    free(all);
    labeled[0] = '\0';
    for (int i = 0; i < r->len;) {
        if (r->labels && r->labels[i] == -100) { i++; continue; }
        int j = i;
        while (j < r->len && (!r->labels || r->labels[j] != -100)) j++;
        char *span = tok_decode(t, r->ids + i, j - i, 0, NULL);
        size_t used = strlen(labeled);
        snprintf(labeled + used, n - used, "%s%s", used ? "|" : "", span);
        free(span);
        i = j;
    }
    dataset_free(&d);
    return 0;
}

/* Shapes of the public instruction datasets: read with every turn and only the answers
 * labeled, or refused with a message that names the turn and what to do. */
static void test_dataset_shapes(tokenizer *t)
{
    static const struct { const char *name, *line, *want, *want_labeled; } read[] = {
        /* LLaMA-Factory's ShareGPT keeps the system prompt beside the turns, OpenHermes as
         * system_prompt; the same prompt as a system turn too is taken once */
        {"sharegpt system", "{\"system\": \"S\", \"conversations\": [{\"from\": \"human\", \"value\": "
         "\"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}",
         "<s>### System:\nS\n### Human:\nq\n### Assistant:\na</s>", "a</s>"},
        {"system_prompt", "{\"system_prompt\": \"S\", \"conversations\": [{\"from\": \"system\", "
         "\"value\": \"S\"}, {\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}",
         "<s>### System:\nS\n### Human:\nq\n### Assistant:\na</s>", "a</s>"},
        {"bing", "{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"bing\", "
         "\"value\": \"a\"}, {\"from\": \"Human\", \"value\": \"r\"}, {\"from\": \"bard\", \"value\": \"b\"}]}",
         "<s>### Human:\nq\n### Assistant:\na</s>\n### Human:\nr\n### Assistant:\nb</s>", "a</s>|b</s>"},
        /* OpenAI content as a list of text parts, a developer message as the system's */
        {"content parts", "{\"messages\": [{\"role\": \"developer\", \"content\": \"S\"}, {\"role\": "
         "\"user\", \"content\": [{\"type\": \"text\", \"text\": \"q\"}, {\"type\": \"text\", \"text\": "
         "\" more\"}]}, {\"role\": \"assistant\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}]}]}",
         "<s>### System:\nS\n### Human:\nq more\n### Assistant:\na</s>", "a</s>"},
        /* Dolly: instruction, context, response; the context is what the answer reads */
        {"dolly", "{\"instruction\": \"who?\", \"context\": \"the text\", \"response\": \"him\", "
         "\"category\": \"closed_qa\"}", "<s>### Human:\nwho?\n\nthe text\n### Assistant:\nhim</s>",
         "him</s>"},
        /* OpenAI fine-tuning data: an assistant turn of weight 0 is context, not trained */
        {"weight 0", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": "
         "\"assistant\", \"content\": \"a\", \"weight\": 0}, {\"role\": \"user\", \"content\": \"r\"}, "
         "{\"role\": \"assistant\", \"content\": \"b\", \"weight\": 1}]}",
         "<s>### Human:\nq\n### Assistant:\na</s>\n### Human:\nr\n### Assistant:\nb</s>", "b</s>"},
        /* LMSYS-Chat-1M and WildChat: "conversation" holds OpenAI's turns */
        {"lmsys", "{\"conversation_id\": \"x\", \"conversation\": [{\"content\": \"q\", \"role\": "
         "\"user\"}, {\"content\": \"a\", \"role\": \"assistant\"}], \"turn\": 1}",
         "<s>### Human:\nq\n### Assistant:\na</s>", "a</s>"},
        {"sharegpt roles", "{\"conversations\": [{\"role\": \"user\", \"content\": \"q\"}, "
         "{\"role\": \"assistant\", \"content\": \"a\"}]}", "<s>### Human:\nq\n### Assistant:\na</s>",
         "a</s>"},
        {"gsm8k", "{\"question\": \"2+2?\", \"answer\": \"4\\n#### 4\"}",
         "<s>### Human:\n2+2?\n### Assistant:\n4\n#### 4</s>", "4\n#### 4</s>"},
        {"alpaca empty input", "{\"instruction\": \"do\", \"input\": \"\", \"output\": \"y\"}",
         "<s>### Human:\ndo\n### Assistant:\ny</s>", "y</s>"},
        /* TRL's conversational prompt-completion: one conversation, only the completion's
         * answers trained; a record another format reads stays its own */
        {"prompt-completion messages", "{\"prompt\": [{\"role\": \"system\", \"content\": "
         "\"S\"}, {\"role\": \"user\", \"content\": \"q\"}], \"completion\": [{\"role\": "
         "\"assistant\", \"content\": \"a\"}]}",
         "<s>### System:\nS\n### Human:\nq\n### Assistant:\na</s>", "a</s>"},
        {"prompt-completion context", "{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}, "
         "{\"role\": \"assistant\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": "
         "\"r\"}], \"completion\": [{\"role\": \"assistant\", \"content\": \"b\"}]}",
         "<s>### Human:\nq\n### Assistant:\na</s>\n### Human:\nr\n### Assistant:\nb</s>",
         "b</s>"},
        {"text beside a completion", "{\"text\": \"t\", \"prompt\": \"q\", \"completion\": "
         "\"a\"}", "<s>t</s>", "<s>t</s>"},
        {"messages beside a completion", "{\"prompt\": \"q\", \"completion\": \"a\", "
         "\"messages\": [{\"role\": \"user\", \"content\": \"r\"}, {\"role\": \"assistant\", "
         "\"content\": \"b\"}]}", "<s>### Human:\nr\n### Assistant:\nb</s>", "b</s>"},
    };
    char text[1024], labeled[1024];
    for (size_t i = 0; i < sizeof read / sizeof *read; i++) {
        pesc_error err = {{0}};
        int rc = load_line(t, read[i].line, text, labeled, sizeof text, &err);
        CHECK(rc == 0, "%s: %s", read[i].name, err.msg);
        if (rc != 0)
            continue;
        CHECK(strcmp(text, read[i].want) == 0, "%s: got %s", read[i].name, text);
        CHECK(strcmp(labeled, read[i].want_labeled) == 0, "%s: labeled %s", read[i].name, labeled);
    }
    static const struct { const char *name, *line, *want[3]; } refused[] = {
        {"tool role", "{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"tool\", "
         "\"value\": \"r\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}",
         {"shape.jsonl:1", "conversations[1].from is \"tool\"", "no tool turns"}},
        {"tool call", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", "
         "\"content\": null, \"tool_calls\": []}]}", {"shape.jsonl:1", "messages[1] is a tool call", ""}},
        {"image part", "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}, "
         "{\"role\": \"assistant\", \"content\": \"a\"}]}",
         {"messages[0].content[0]", "\"image_url\"", "only text parts"}},
        {"two systems", "{\"system\": \"S\", \"conversations\": [{\"from\": \"system\", \"value\": \"T\"}, "
         "{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}",
         {"conversations[0]", "differ", "keep one"}},
        {"two users", "{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"human\", "
         "\"value\": \"r\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}",
         {"shape.jsonl:1", "conversations[1]: a user message must follow", "join them"}},
        /* the template's errors count from 0 as the turn errors do, in the file's own list
         * (the system prompt beside it is no turn of it) */
        {"two users, system", "{\"system\": \"S\", \"messages\": [{\"role\": \"user\", "
         "\"content\": \"q\"}, {\"role\": \"user\", \"content\": \"r\"}, {\"role\": "
         "\"assistant\", \"content\": \"a\"}]}",
         {"shape.jsonl:1: messages[1]: a user message", "", ""}},
        {"system later", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": "
         "\"assistant\", \"content\": \"a\"}, {\"role\": \"system\", \"content\": \"S\"}]}",
         {"messages[2]: a system message may only come first", "", ""}},
        {"assistant first", "{\"conversations\": [{\"from\": \"gpt\", \"value\": \"a\"}]}",
         {"conversations[0]: an assistant message must follow a user message", "", ""}},
        {"weight", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": "
         "\"assistant\", \"content\": \"a\", \"weight\": 0.5}]}", {"messages[1].weight", "0 (not trained) or 1", ""}},
        {"camelidae turn", "{\"instruction\": \"S\", \"conversation\": [{\"input\": \"q\", "
         "\"output\": \"a\"}, {\"input\": \"r\", \"output\": 7}]}",
         {"conversation[1]: \"output\" must be a string", "", ""}},
        {"input not text", "{\"instruction\": \"do\", \"input\": 5, \"output\": \"y\"}",
         {"shape.jsonl:1", "\"input\" must be a string", ""}},
        /* prompt/completion records that cannot be read as one, and preference data */
        {"mixed", "{\"prompt\": \"q\", \"completion\": [{\"role\": \"assistant\", "
         "\"content\": \"a\"}]}", {"shape.jsonl:1: \"prompt\" is a string but \"completion\" a "
         "list", "both as strings", "both as lists"}},
        {"empty completion", "{\"prompt\": \"q\", \"completion\": \"\"}",
         {"shape.jsonl:1: \"completion\" is empty", "give the answer", ""}},
        {"no completion turns", "{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}], "
         "\"completion\": []}", {"shape.jsonl:1: \"completion\" is empty", "", ""}},
        {"prompt number", "{\"prompt\": 5, \"completion\": \"a\"}",
         {"shape.jsonl:1: \"prompt\" must be a string", "or a list of", ""}},
        {"completion tool", "{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}], "
         "\"completion\": [{\"role\": \"tool\", \"content\": \"r\"}]}",
         {"completion[0].role is \"tool\"", "no tool turns", ""}},
        {"completion order", "{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}, "
         "{\"role\": \"assistant\", \"content\": \"a\"}], \"completion\": [{\"role\": "
         "\"assistant\", \"content\": \"b\"}]}",
         {"shape.jsonl:1: completion[0]: an assistant message must follow a user", "", ""}},
        {"preference", "{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\"}",
         {"shape.jsonl:1: a record with \"chosen\" and \"rejected\" answers is preference data",
          "DPO-style training, which pesc does not do", "jq -c '{prompt, completion: .chosen}'"}},
        {"preference, implicit prompt", "{\"chosen\": [{\"role\": \"user\", \"content\": \"q\"}, "
         "{\"role\": \"assistant\", \"content\": \"a\"}], \"rejected\": [{\"role\": \"user\", "
         "\"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}",
         {"preference data", "no format reads \"chosen\" alone", "jq -c '{messages: .chosen}'"}},
        {"KTO", "{\"prompt\": \"q\", \"completion\": \"a\", \"label\": false}",
         {"shape.jsonl:1: a completion with a true/false \"label\" is preference data (KTO)",
          "pesc does not do", "jq -c 'select(.label) | del(.label)'"}},
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        pesc_error err = {{0}};
        int rc = load_line(t, refused[i].line, text, labeled, sizeof text, &err);
        CHECK(rc == -1, "%s: must be refused", refused[i].name);
        for (int k = 0; k < 3; k++)
            CHECK(rc == 0 || strstr(err.msg, refused[i].want[k]), "%s: \"%s\" not in: %s",
                  refused[i].name, refused[i].want[k], err.msg);
    }
}

/* {"prompt", "completion"} strings: the text is the prompt and the completion end to end, with
 * no chat template; BOS as the template puts one before a document (llama2's does, chatml's
 * does not), EOS after the completion, and only the completion and EOS labeled. Ids of the
 * fixture: bytes as themselves ('2' 50, '+' 43, '=' 61, '4' 52), "hell" 258, <s> 300,
 * </s> 301. */
static void test_prompt_completion_ids(tokenizer *t)
{
    enum { NO = -100 };
    static const struct {
        const char *name, *line, *template_name;
        int n;
        int32_t ids[8], labels[8];
    } cases[] = {
        {"strings", "{\"prompt\": \"2+2=\", \"completion\": \"4\"}", "llama2", 7,
         {300, 50, 43, 50, 61, 52, 301}, {NO, NO, NO, NO, NO, 52, 301}},
        {"no BOS", "{\"prompt\": \"2+2=\", \"completion\": \"4\"}", "chatml", 6,
         {50, 43, 50, 61, 52, 301}, {NO, NO, NO, NO, 52, 301}},
        /* "hell" straddles the boundary: partly prompt, so it is not learnt */
        {"straddling token", "{\"prompt\": \"hel\", \"completion\": \"lo\"}", "camelidae", 4,
         {300, 258, 'o', 301}, {NO, NO, 'o', 301}},
        {"empty prompt", "{\"prompt\": \"\", \"completion\": \"4\"}", "camelidae", 3,
         {300, 52, 301}, {NO, 52, 301}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char body[256];
        snprintf(body, sizeof body, "%s\n", cases[i].line);
        ds_records d = {0};
        pesc_error err = {{0}};
        ds_load_options lo = {.format = DS_COMPLETION, .tok = t, .strict = 1,
                              .tpl = template_find(cases[i].template_name)};
        int rc = dataset_load(&d, write_file("completion.jsonl", body, 0), &lo, &err);
        CHECK(rc == 0 && d.n == 1, "%s: %s", cases[i].name, err.msg);
        if (rc != 0)
            continue;
        const ds_record *r = &d.items[0];
        int same = r->len == cases[i].n && r->labels;
        for (int k = 0; same && k < r->len; k++)
            same = r->ids[k] == cases[i].ids[k] && r->labels[k] == cases[i].labels[k];
        CHECK(same, "%s: %d tokens, first id %d label %d", cases[i].name, r->len,
              r->len ? r->ids[0] : -1, r->len && r->labels ? r->labels[0] : -1);
        for (int k = 0; !same && k < r->len; k++)
            fprintf(stderr, "  %d: id %d label %d\n", k, r->ids[k],
                    r->labels ? r->labels[k] : r->ids[k]);
        dataset_free(&d);
    }
}

/* Files laid out otherwise than JSONL or one JSON array, and records no format reads: the
 * message says what the file holds and how to get records out of it. */
static void test_file_shapes(tokenizer *t)
{
    static const struct { const char *name, *body, *want[2]; int strict; } cases[] = {
        {"wrapper", "{\"data\": [{\"instruction\": \"do\", \"output\": \"y\"}]}\n",
         {"wrapped.json:1: an object holding an array \"data\"", "jq -c '.data[]'"}, 1},
        /* not strict: it is the file, not a record, so it stops the load all the same */
        {"pretty", "{\n  \"instruction\": \"do\",\n  \"output\": \"y\"\n}\n",
         {"wrapped.json:1: a JSON object over several lines", "a record a line"}, 0},
        {"latin1", "{\"instruction\": \"caf\xe9\", \"output\": \"y\"}\n",
         {"wrapped.json:1: not valid UTF-8 (byte 21 of the line", "convert the file to UTF-8"}, 1},
        /* refused on purpose, in words, not the JSON library's flag */
        {"nul escape", "{\"text\": \"a\\u0000b\"}\n",
         {"wrapped.json:1: a NUL character (\\u0000) in a string", "remove it"}, 1},
        /* two arrays, as cat joins two files: the second would be lost */
        {"two arrays", "[\n{\"text\": \"a\"}\n]\n[{\"text\": \"b\"}]\n",
         {"wrapped.json:4: more after the JSON array's closing ']'", "jq -s add"}, 0},
        /* a conversation's messages a line: jq -s add would make one conversation of all */
        {"arrays a line", "[{\"role\": \"user\", \"content\": \"hi\"}]\n[{\"role\": \"user\", "
         "\"content\": \"yo\"}]\n",
         {"wrapped.json:2: more after the JSON array's closing ']'",
          "if each line is one conversation's list of messages, make each a record: "
          "jq -c '{messages: .}'"}, 0},
        {"a message", "[{\"role\": \"user\", \"content\": \"hi\"}]\n",
         {"wrapped.json:1: a message, not a record", "jq -c '{messages: .}'"}, 1},
        {"keys", "{\"source\": \"q\", \"target\": \"a\"}\n",
         {"no known format reads a record with the keys \"source\", \"target\"",
          "pesc plugins"}, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ds_records d = {0};
        pesc_error err = {{0}};
        ds_load_options lo = {.format = DS_AUTO, .tok = t, .strict = cases[i].strict};
        int rc = dataset_load(&d, write_file("wrapped.json", cases[i].body, 0), &lo, &err);
        CHECK(rc == -1, "%s: must be refused", cases[i].name);
        for (int k = 0; k < 2; k++)
            CHECK(rc == 0 || strstr(err.msg, cases[i].want[k]), "%s: \"%s\" not in: %s",
                  cases[i].name, cases[i].want[k], err.msg);
        dataset_free(&d);
    }
}

static void test_array_gzip_and_bad_records(tokenizer *t)
{
    /* a JSON array over several lines, gzip-compressed, with a string holding ']' and '}' */
    const char *array = "[\n {\"text\": \"a ] } [ {\"},\n {\"text\": \"second\"}\n ,{\"query\": 5, "
                        "\"response\": \"x\"},\n \"a bare string\"\n]\n";
    const char *path = write_file("array.json.gz", array, 1);
    ds_records d = {0};
    pesc_error err = {{0}};
    FILE *warn = tmpfile();
    ds_load_options lo = {.format = DS_AUTO, .tok = t, .warn = warn};
    CHECK(dataset_load(&d, path, &lo, &err) == 0, "array: %s", err.msg);
    CHECK(d.n == 3 && d.skipped == 1, "array: %d records, %ld skipped", d.n, d.skipped);
    CHECK(d.n == 3 && d.items[1].line == 3 && d.items[2].line == 5, "array: record lines %ld %ld",
          d.n > 1 ? d.items[1].line : -1, d.n > 2 ? d.items[2].line : -1);
    char msg[512] = {0};
    rewind(warn);
    CHECK(fgets(msg, sizeof msg, warn) && strstr(msg, "array.json.gz:4") && strstr(msg, "query"),
          "the warning names file, line and key: %s", msg);
    fclose(warn);
    dataset_free(&d);

    lo.warn = NULL;
    lo.strict = 1;
    CHECK(dataset_load(&d, path, &lo, &err) == -1 && strstr(err.msg, "array.json.gz:4"),
          "strict: %s", err.msg);
    dataset_free(&d);
    lo.strict = 0;
    path = write_file("empty.jsonl", "\n\n{\"nothing\": 1}\n", 0);
    CHECK(dataset_load(&d, path, &lo, &err) == -1 && strstr(err.msg, "no usable records"),
          "empty dataset must fail: %s", err.msg);
    /* and says why it skipped the one record it had (without warnings shown, as here) */
    CHECK(strstr(err.msg, "its one record was skipped") && strstr(err.msg, "empty.jsonl:3"),
          "the skipped record's reason: %s", err.msg);
    dataset_free(&d);
    path = write_file("broken.jsonl", "{\"instruction\": \"a\"\n{\"x\n", 0);
    CHECK(dataset_load(&d, path, &lo, &err) == -1 &&
              strstr(err.msg, "all 2 were skipped; the first: ") &&
              strstr(err.msg, "broken.jsonl:1: not valid JSON"),
          "every record skipped: %s", err.msg);
    dataset_free(&d);
}

/* Rows cut after the longest: records of 2, 5 and 3 tokens in rows of 16 come back at a stride
 * of 8 (5 rounded up), each row's tokens, targets, positions and padding as they were; 1 as
 * the multiple gives 5; rows already as long as T stay; and the next batch is laid out at T. */
static void test_trim(void)
{
    const char *body = "{\"input_ids\": [1, 2]}\n{\"input_ids\": [3, 4, 5, 6, 7]}\n"
                       "{\"input_ids\": [8, 9, 10]}\n{\"input_ids\": [11]}\n";
    ds_source src = {.weight = 1.0};
    snprintf(src.path, sizeof src.path, "%s", write_file("trim.jsonl", body, 0));
    ds_load_options lo = {.format = DS_TOKENS};
    ds_options o = {.batch = 3, .seq = 16, .seed = 1, .epochs = 1};
    pesc_error err = {{0}};
    dataset *ds = dataset_open(&src, 1, &lo, &o, &err);
    CHECK(ds != NULL, "open: %s", err.msg);
    if (!ds)
        return;
    ds_batch b, full;
    ds_batch_init(&b, 3, 16);
    ds_batch_init(&full, 3, 16);
    CHECK(dataset_next_batch(ds, &b) == 3, "three rows");
    for (int k = 0; k < 3 * 16; k++) {   /* the batch as laid out at T */
        full.ids[k] = b.ids[k], full.targets[k] = b.targets[k];
        full.positions[k] = b.positions[k], full.doc_ids[k] = b.doc_ids[k];
        full.sources[k] = b.sources[k], full.labels[k] = b.labels[k];
    }
    int T = ds_batch_trim(&b, 8);
    CHECK(T == 8, "cut at the longest row's 5 tokens, rounded up to 8: %d", T);
    for (int r = 0; r < 3; r++)
        for (int t = 0; t < T; t++) {
            size_t at = (size_t)r * T + t, was = (size_t)r * 16 + t;
            CHECK(b.ids[at] == full.ids[was] && b.targets[at] == full.targets[was] &&
                  b.positions[at] == full.positions[was] && b.doc_ids[at] == full.doc_ids[was] &&
                  b.sources[at] == full.sources[was] && b.labels[at] == full.labels[was],
                  "row %d token %d kept in place", r, t);
        }
    CHECK(dataset_next_batch(ds, &b) == 1 && b.T == 16 && b.ids[0] == 11 && b.doc_ids[1] == -1 &&
          b.positions[0] == 0, "the next batch at T again");
    CHECK(ds_batch_trim(&b, 1) == 1 && b.ids[0] == 11, "a multiple of 1: the longest row, 1");
    dataset_delete(ds);
    ds_batch_free(&full);
    ds_batch_free(&b);

    /* rows as long as T: nothing to cut */
    o.pack = 1;
    o.seq = 4;
    ds = dataset_open(&src, 1, &lo, &o, &err);
    ds_batch_init(&b, 2, 4);
    CHECK(ds && dataset_next_batch(ds, &b) > 0 && ds_batch_trim(&b, 8) == 4,
          "rounded past T: T stays");
    dataset_delete(ds);
    ds_batch_free(&b);
}

static void write_numbers(const char *name, int first, int n, char *path_out)
{
    char *body = malloc(64 * (size_t)n + 1), *p = body;
    for (int i = 0; i < n; i++)
        p += sprintf(p, "{\"input_ids\": [%d, %d, %d], \"labels\": [-100, %d, %d]}\n", first + i,
                     first + i, first + i, first + i, first + i);
    strcpy(path_out, write_file(name, body, 0));
    free(body);
}

static void test_batches(void)
{
    ds_source src[2];
    char a[512], b[512];
    write_numbers("a.jsonl", 1000, 10, a);
    write_numbers("b.jsonl", 2000, 4, b);
    pesc_error err = {{0}};
    CHECK(ds_source_parse(&src[0], a, &err) == 0 && src[0].weight == 1.0, "parse a");
    char arg[600];
    snprintf(arg, sizeof arg, "%s:2.5", b);
    CHECK(ds_source_parse(&src[1], arg, &err) == 0 && src[1].weight == 2.5 &&
          strcmp(src[1].path, b) == 0, "parse b:2.5");
    CHECK(ds_source_parse(&src[1], "x:0", &err) == -1, "weight 0 must fail");
    snprintf(arg, sizeof arg, "%s:2.5", b);
    ds_source_parse(&src[1], arg, &err);

    ds_load_options lo = {.format = DS_TOKENS};
    ds_options o = {.batch = 2, .seq = 8, .pack = 1, .shuffle = 1, .seed = 7, .epochs = 2};
    dataset *ds = dataset_open(src, 2, &lo, &o, &err);
    CHECK(ds != NULL, "open: %s", err.msg);
    if (!ds) return;
    ds_batch batch;
    ds_batch_init(&batch, 2, 8);
    long from_a = 0, from_b = 0, batches = 0, saved_at = -1;
    ds_cursor saved = {0};
    int32_t saved_ids[16];
    while (dataset_next_batch(ds, &batch) > 0) {
        batches++;
        if (batches == 3) {   /* the batch after a saved cursor must come back identically */
            memcpy(saved_ids, batch.ids, sizeof saved_ids);
        }
        if (batches == 2) {
            saved = dataset_cursor(ds);
            saved_at = batches;
        }
        for (int r = 0; r < batch.rows; r++) {
            CHECK(batch.row_tokens[r] == 6, "packing: two 3-token records fit in 8 (%d)", batch.row_tokens[r]);
            for (int k = 0; k < 8; k++) {
                int i = r * 8 + k;
                int doc = k < 6 ? k / 3 : -1;
                CHECK(batch.doc_ids[i] == doc, "doc id at %d,%d: %d", r, k, batch.doc_ids[i]);
                CHECK(batch.positions[i] == (k < 6 ? k % 3 : 0), "position at %d,%d", r, k);
                if (k < 6 && k % 3 == 0) {
                    if (batch.sources[i] == 0) from_a++; else from_b++;
                    CHECK((batch.sources[i] == 0) == (batch.ids[i] < 2000), "source of a token");
                }
                /* targets: next label within the document only */
                int32_t want = (k % 3 < 2 && k < 6) ? batch.ids[i + 1] : -100;
                CHECK(batch.targets[i] == want, "target at %d,%d: %d want %d", r, k, batch.targets[i], want);
                CHECK(batch.labels[i] == (k < 6 && k % 3 ? batch.ids[i] : -100), "label at %d,%d", r, k);
            }
        }
    }
    /* two epochs: a's 10 records twice; b's 4 records 2 or 3 times each per epoch */
    CHECK(from_a == 20 && from_b >= 16 && from_b <= 24, "mixture: %ld from a, %ld from b", from_a, from_b);
    CHECK(batches >= 10, "two epochs of batches: %ld", batches);
    CHECK(saved_at == 2, "cursor saved");
    CHECK(dataset_seek(ds, &saved, &err) == 0, "seek: %s", err.msg);
    CHECK(dataset_next_batch(ds, &batch) > 0 && memcmp(batch.ids, saved_ids, sizeof saved_ids) == 0,
          "the batch after a restored cursor must be the same");
    ds_cursor bad = saved;
    bad.fingerprint ^= 1;
    CHECK(dataset_seek(ds, &bad, &err) == -1, "a foreign cursor must be refused");
    dataset_delete(ds);

    /* no packing, truncation to seq: one record a row, cut and counted */
    o = (ds_options){.batch = 3, .seq = 2, .pack = 0, .shuffle = 0, .seed = 1, .epochs = 1};
    ds = dataset_open(src, 1, &lo, &o, &err);
    CHECK(ds && dataset_stats(ds)->truncated == 10 && dataset_stats(ds)->truncated_tokens == 10,
          "truncation counted");
    ds_batch_free(&batch);
    ds_batch_init(&batch, 3, 2);
    CHECK(ds && dataset_next_batch(ds, &batch) == 3 && batch.ids[0] == 1000 && batch.ids[2] == 1001,
          "unshuffled order, one record a row");
    dataset_delete(ds);
    ds_batch_free(&batch);
}

/* A UTF-8 byte order mark before the first record (JSONL or a JSON array) is not part of it:
 * the record keeps its format instead of becoming a plain line of text. So is one at the
 * start of a later line (files with one joined by cat): the line is not bad JSON. */
static void test_bom(tokenizer *t)
{
    static const char *const files[][2] = {
        {"bom.jsonl", "\xef\xbb\xbf{\"query\": \"1+1\", \"response\": \"2\"}\n{\"text\": \"x\"}\n"},
        {"bom.json", "\xef\xbb\xbf[{\"query\": \"1+1\", \"response\": \"2\"}, {\"text\": \"x\"}]"},
        {"boms.jsonl", "\xef\xbb\xbf{\"query\": \"1+1\", \"response\": \"2\"}\r\n"
                       "\xef\xbb\xbf{\"text\": \"x\"}\r\n"},
        {"bom-string.jsonl", "\xef\xbb\xbf{\"query\": \"1+1\", \"response\": \"2\"}\n\xef\xbb\xbf\"x\"\n"},
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        const char *path = write_file(files[i][0], files[i][1], 0);
        ds_records d = {0};
        pesc_error err = {{0}};
        ds_load_options lo = {.format = DS_AUTO, .tok = t, .strict = 1};
        int rc = dataset_load(&d, path, &lo, &err);
        CHECK(rc == 0 && d.n == 2, "%s: %s", files[i][0], err.msg);
        if (rc == 0) {
            char *text = decode_record(t, &d.items[0]);
            CHECK(strcmp(text, "<s>### Human:\n1+1\n### Assistant:\n2</s>") == 0,
                  "%s: the first record after a BOM reads as %s", files[i][0], text);
            free(text);
            text = decode_record(t, &d.items[1]);
            CHECK(strcmp(text, "<s>x</s>") == 0, "%s: the second record reads as %s",
                  files[i][0], text);
            free(text);
        }
        dataset_free(&d);
    }
}

/* Plain text read as lines: every line is a document as it stands, also one that starts
 * with a quote or a brace, is a number or is all one quotation (after a line of prose), and
 * a file whose first line starts with '[' but no JSON array (Llama 2's [INST], notes), under
 * auto and --format text; and a JSONL file's first line cut short is a broken record, not
 * a document. */
static void test_plain_lines(tokenizer *t)
{
    static const char *const files[][7] = {
        {"novel.txt", "It was a dark night.", "\"Hello,\" she said.",
         "{curly} braces start this line", "\"Quoted whole.\"", "1984", "last line"},
        {"inst.txt", "[INST] hello [/INST] there", "[my notes]", "[1] a footnote"},
    };
    for (size_t k = 0; k < sizeof files / sizeof *files; k++) {
        char body[512] = "";
        int n = 0;
        for (; n < 6 && files[k][n + 1]; n++)
            snprintf(body + strlen(body), sizeof body - strlen(body), "%s\n", files[k][n + 1]);
        const char *path = write_file(files[k][0], body, 0);
        for (ds_format f = DS_AUTO; f <= DS_TEXT; f += DS_TEXT) {
            ds_records d = {0};
            pesc_error err = {{0}};
            ds_load_options lo = {.format = f, .tok = t, .strict = 1};
            int rc = dataset_load(&d, path, &lo, &err);
            CHECK(rc == 0 && d.n == n, "%s, %s: plain lines: %s", files[k][0], ds_format_name(f),
                  err.msg);
            for (int i = 0; rc == 0 && i < d.n; i++) {
                char want[128], *text = decode_record(t, &d.items[i]);
                snprintf(want, sizeof want, "<s>%s</s>", files[k][i + 1]);
                CHECK(strcmp(text, want) == 0, "%s, %s: line %d reads as %s", files[k][0],
                      ds_format_name(f), i + 1, text);
                free(text);
            }
            dataset_free(&d);
        }
    }
    ds_records d = {0};
    pesc_error err = {{0}};
    ds_load_options lo = {.format = DS_AUTO, .tok = t};
    const char *path = write_file("cut.jsonl", "{\"text\": \"cut sh\n{\"text\": \"whole\"}\n", 0);
    CHECK(dataset_load(&d, path, &lo, &err) == 0 && d.n == 1 && d.skipped == 1,
          "a first JSONL line cut short is skipped, not text: %d records, %ld skipped: %s", d.n,
          d.skipped, err.msg);
    dataset_free(&d);
    /* plain lines before the first JSON object: the file is JSONL and they are broken records
     * (a stray first line was trained on as text, also with strict) */
    path = write_file("stray.jsonl", "a stray line\nanother\n{\"text\": \"whole\"}\n"
                      "{\"text\": \"two\"}\n", 0);
    CHECK(dataset_load(&d, path, &lo, &err) == 0 && d.n == 2 && d.skipped == 2,
          "plain lines before JSONL records are skipped: %d records, %ld skipped: %s", d.n,
          d.skipped, err.msg);
    for (int i = 0; i < d.n; i++) {
        char *text = decode_record(t, &d.items[i]);
        CHECK(strcmp(text, i ? "<s>two</s>" : "<s>whole</s>") == 0, "stray.jsonl: record %d "
              "reads as %s", i, text);
        free(text);
    }
    dataset_free(&d);
    lo.strict = 1;
    CHECK(dataset_load(&d, path, &lo, &err) != 0 && d.n == 0 &&
              strstr(err.msg, "stray.jsonl:1: not a JSON record (nor is the plain line after "
                              "it), though line 3 is one"),
          "strict: plain lines before JSONL records are an error naming the first: %s",
          err.msg);
    dataset_free(&d);
    /* a line of JSON that makes no record is not taken for the file's records: the prose
     * before it stays */
    lo.strict = 0;
    path = write_file("prose.txt", "line one\nline two\n{\"k\": 1}\n", 0);
    CHECK(dataset_load(&d, path, &lo, &err) == 0 && d.n == 2 && d.skipped == 1,
          "prose with a JSON line that is no record keeps its lines: %d records, %ld skipped: "
          "%s", d.n, d.skipped, err.msg);
    dataset_free(&d);
}

/* A NUL byte stops a load, naming file, line and column: a plain line was cut there (a C
 * string ends at it), and JSON called it an invalid token at the end of the line. */
static int count_object(void *ctx, const struct json_t *o, long line, pesc_error *err)
{
    (void)o, (void)line, (void)err;
    ++*(int *)ctx;
    return 0;
}

static void test_nul_bytes(tokenizer *t)
{
    static const struct {
        const char *name;
        const char body[40];
        size_t len;
        const char *want;
    } cases[] = {
        {"nul.txt", "abc\0def ghi\n", 12, "nul.txt:1: a NUL byte (column 4)"},
        {"nul.jsonl", "{\"text\": \"a\"}\n\0\0\0\n", 18, "nul.jsonl:2: a NUL byte (column 1)"},
        {"nul.json", "[{\"text\": \"a\"},\n {\"text\": \"b\0\"}]", 32,
         "nul.json:2: a NUL byte (column 12)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, cases[i].name);
        FILE *f = fopen(path, "wb");
        fwrite(cases[i].body, 1, cases[i].len, f);
        fclose(f);
        ds_records d = {0};
        pesc_error err = {{0}};
        ds_load_options lo = {.format = DS_AUTO, .tok = t};   /* not strict: the file is bad */
        int rc = dataset_load(&d, path, &lo, &err);
        CHECK(rc == -1 && strstr(err.msg, cases[i].want) &&
                  strstr(err.msg, "convert it to UTF-8"),
              "%s: wanted '%s': %s", cases[i].name, cases[i].want, rc ? err.msg : "loaded");
        dataset_free(&d);
        int objects = 0;
        rc = ds_each_json(path, NULL, count_object, &objects, &err);
        CHECK(i == 0 || (rc == -1 && strstr(err.msg, cases[i].want)),
              "ds_each_json %s: wanted '%s': %s", cases[i].name, cases[i].want,
              rc ? err.msg : "read");
    }
}

/* A table (.csv, .parquet, compressed or not) is refused by its name under auto, saying what
 * to do: a CSV file passed for text, its header a record, and a Parquet one failed as "not
 * valid UTF-8 text". A format named (--format text) reads its lines as asked. */
static void test_tables(tokenizer *t)
{
    static const struct { const char *name, *kind; } cases[] = {
        {"table.csv", "CSV"}, {"table.TSV", "TSV"}, {"table.parquet", "Parquet"},
        {"table.csv.gz", "CSV"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *path = write_file(cases[i].name, "instruction,output\nhi,there\n",
                                      strstr(cases[i].name, ".gz") != NULL);
        char want[600];
        snprintf(want, sizeof want, "%s: a %s file, which pesc does not read", path,
                 cases[i].kind);
        ds_records d = {0};
        pesc_error err = {{0}};
        ds_load_options lo = {.format = DS_AUTO, .tok = t};
        int rc = dataset_load(&d, path, &lo, &err);
        CHECK(rc == -1 && strstr(err.msg, want) && strstr(err.msg, "as a dataset") &&
                  strstr(err.msg, "--format") && strstr(err.msg, "convert it to JSONL"),
              "%s: wanted '%s': %s", cases[i].name, want, rc ? err.msg : "loaded");
        dataset_free(&d);
        int objects = 0;
        rc = ds_each_json(path, NULL, count_object, &objects, &err);
        CHECK(rc == -1 && strstr(err.msg, want) && strstr(err.msg, "convert it to JSONL"),
              "ds_each_json %s: %s", cases[i].name, rc ? err.msg : "read");
    }
    ds_records d = {0};
    pesc_error err = {{0}};
    ds_load_options lo = {.format = DS_TEXT, .tok = t};
    CHECK(dataset_load(&d, write_file("lines.csv", "a,b\nc,d\n", 0), &lo, &err) == 0 && d.n == 2,
          "--format text reads a .csv's lines as asked: %s", err.msg);
    dataset_free(&d);
}

/* Only the answers in a row's first --seq tokens are learnt: data with none there is refused
 * with a message naming --seq, and records that lose all theirs are counted. */
static void test_answers_within_seq(void)
{
    /* the answer (labels other than -100) starts at token 6 */
    const char *late = "{\"input_ids\": [1, 2, 3, 4, 5, 6, 7, 8], "
                       "\"labels\": [-100, -100, -100, -100, -100, -100, 7, 8]}\n";
    char body[512];
    ds_source src;
    pesc_error err = {{0}};
    ds_load_options lo = {.format = DS_TOKENS};
    ds_options o = {.batch = 2, .seq = 4, .pack = 0, .shuffle = 0, .seed = 1, .epochs = 1};
    snprintf(src.path, sizeof src.path, "%s", write_file("late.jsonl", late, 0));
    src.weight = 1.0;
    dataset *ds = dataset_open(&src, 1, &lo, &o, &err);
    CHECK(!ds && strstr(err.msg, "no token to learn within --seq 4") &&
          strstr(err.msg, "raise --seq (to at least 7"), "answers past --seq: %s",
          ds ? "accepted" : err.msg);
    dataset_delete(ds);
    o.seq = 7;
    ds = dataset_open(&src, 1, &lo, &o, &err);
    CHECK(ds && dataset_stats(ds)->answers_cut == 0, "--seq 7 reaches the answer: %s", err.msg);
    dataset_delete(ds);
    /* next to a short record, the long one is counted, not refused */
    snprintf(body, sizeof body, "%s{\"input_ids\": [1, 2, 3], \"labels\": [-100, 2, 3]}\n", late);
    snprintf(src.path, sizeof src.path, "%s", write_file("mixed.jsonl", body, 0));
    o.seq = 4;
    ds = dataset_open(&src, 1, &lo, &o, &err);
    CHECK(ds && dataset_stats(ds)->answers_cut == 1 && dataset_stats(ds)->truncated == 1,
          "one record without an answer within --seq: %s, %ld", ds ? "" : err.msg,
          ds ? dataset_stats(ds)->answers_cut : -1);
    dataset_delete(ds);
    /* an answer past the longest --seq there is: raising --seq cannot reach it */
    snprintf(src.path, sizeof src.path, "%s/past-any-seq.jsonl", dir);
    FILE *f = fopen(src.path, "w");
    int n = DS_MAX_SEQ + 8;
    fputs("{\"input_ids\": [", f);
    for (int i = 0; i < n; i++)
        fputs(i ? ", 1" : "1", f);
    fputs("], \"labels\": [", f);
    for (int i = 0; i < n; i++)
        fputs(i < n - 2 ? (i ? ", -100" : "-100") : ", 1", f);
    fputs("]}\n", f);
    fclose(f);
    ds = dataset_open(&src, 1, &lo, &o, &err);
    CHECK(!ds && strstr(err.msg, "past any --seq") && strstr(err.msg, "split the records") &&
              !strstr(err.msg, "raise --seq"),
          "an answer no --seq reaches: %s", ds ? "accepted" : err.msg);
    dataset_delete(ds);
}

/* --eval-split of a single record: no X splits it, so the message says so and names
 * --eval-data, rather than "raise it" for one X and "lower it" for another. */
static void test_holdout_of_one(void)
{
    ds_source src = {.weight = 1.0};
    snprintf(src.path, sizeof src.path, "%s",
             write_file("one.jsonl", "{\"input_ids\": [1, 2, 3]}\n", 0));
    ds_load_options lo = {.format = DS_TOKENS};
    const double splits[] = {0.1, 0.5, 1, 2};
    for (size_t i = 0; i < sizeof splits / sizeof *splits; i++) {
        pesc_error err = {{0}};
        ds_options o = {.batch = 1, .seq = 4, .seed = 1, .epochs = 1, .holdout = splits[i]};
        dataset *ds = dataset_open(&src, 1, &lo, &o, &err);
        CHECK(!ds && strstr(err.msg, "cannot be split") && strstr(err.msg, "--eval-data"),
              "--eval-split %g of one record: %s", splits[i], ds ? "accepted" : err.msg);
        dataset_delete(ds);
    }
}

/* --data PATH:W reads a number after the last ':' as a weight; where a file's own name ends so,
 * or the weight is no number, the message says how it was read. */
static void test_source_hints(void)
{
    ds_source s;
    pesc_error err = {{0}};
    char arg[600], file[512];
    snprintf(file, sizeof file, "%s", write_file("w:5", "{\"input_ids\": [1, 2]}\n", 0));
    CHECK(ds_source_parse(&s, file, &err) == -1 && strstr(err.msg, "is read as a weight") &&
          strstr(err.msg, ":5:1"), "a file named w:5: %s", err.msg);
    snprintf(arg, sizeof arg, "%s:1", file);
    CHECK(ds_source_parse(&s, arg, &err) == 0 && strcmp(s.path, file) == 0 && s.weight == 1.0,
          "w:5:1 names the file w:5: %s", err.msg);
    /* z and z:0 both exist: z:0 is z with a weight of 0, refused with the way to read z:0 */
    write_file("z", "{\"input_ids\": [1, 2]}\n", 0);
    snprintf(file, sizeof file, "%s", write_file("z:0", "{\"input_ids\": [1, 2]}\n", 0));
    CHECK(ds_source_parse(&s, file, &err) == -1 && strstr(err.msg, "must be > 0") &&
          strstr(err.msg, ":0:1"), "z:0 beside z: %s", err.msg);
    snprintf(arg, sizeof arg, "%s:abc", write_file("real.jsonl", "{\"input_ids\": [1, 2]}\n", 0));
    CHECK(ds_source_parse(&s, arg, &err) == -1 && strstr(err.msg, "'abc' is no weight"),
          "a weight that is no number: %s", err.msg);
    CHECK(ds_source_parse(&s, "hf://owner/name/data.jsonl", &err) == 0 &&
          strcmp(s.path, "hf://owner/name/data.jsonl") == 0, "a URL is no PATH:WEIGHT");
}

/* Messages that name a path show an empty one as '', and an empty output path is refused
 * before anything is written. */
static void test_empty_paths(void)
{
    ds_records d = {0};
    pesc_error err = {{0}};
    ds_load_options lo = {.format = DS_TOKENS, .strict = 1};
    CHECK(dataset_load(&d, "", &lo, &err) == -1 && strncmp(err.msg, "'': ", 4) == 0,
          "an empty --data path: %s", err.msg);
    char *text = NULL;
    CHECK(pesc_read_file("", &text, NULL, &err) == -1 && strncmp(err.msg, "'': ", 4) == 0,
          "reading '': %s", err.msg);
    CHECK(pesc_write_file("", "x", 1, &err) == -1 && strstr(err.msg, "'': an empty path"),
          "writing '': %s", err.msg);
    char *tmp = NULL;
    CHECK(pesc_dir_begin("", &tmp, &err) == -1 && !tmp && strstr(err.msg, "'': an empty path"),
          "a directory '': %s", err.msg);
    pesc_dir_abort(tmp);
    free(tmp);
}

/* Without a vocabulary to check against (pesc inspect), a negative id is no token id; the
 * message gives no range like "0..-1". */
static void test_negative_ids(void)
{
    ds_records d = {0};
    pesc_error err = {{0}};
    const char *path = write_file("negative.jsonl", "{\"input_ids\": [1, -5]}\n", 0);
    CHECK(dataset_load_tokens(&d, path, 0, &err) == -1 && strstr(err.msg, "is not a token id") &&
          !strstr(err.msg, "..-1"), "a negative id: %s", err.msg);
    path = write_file("negative-label.jsonl", "{\"input_ids\": [1, 5], \"labels\": [-100, -7]}\n", 0);
    CHECK(dataset_load_tokens(&d, path, 0, &err) == -1 && strstr(err.msg, "or -100 to ignore") &&
          !strstr(err.msg, "..-1"), "a negative label: %s", err.msg);
}

/* ---- the token store ------------------------------------------------------------------------ */

/* A record as written to a tokens file, to compare with what the store gives back. */
typedef struct written {
    int32_t *ids, *labels;       /* (len); labels NULL: none written */
    int len;
    int same_labels;             /* the labels written equal the ids: read back as none */
} written;

static void write_ids(FILE *f, const char *key, const int32_t *v, int n)
{
    fprintf(f, "\"%s\": [", key);
    for (int k = 0; k < n; k++)
        fprintf(f, k ? ",%d" : "%d", v[k]);
    fputc(']', f);
}

/* n records of 1..200 tokens, the middle one of 300000 (past the store's 1 MiB buffer), each
 * with no labels, labels equal to its ids, or labels masked with -100, as a tokens file. */
static written *write_random_tokens(const char *name, int n, uint64_t seed, char *path)
{
    written *w = calloc((size_t)n, sizeof *w);
    snprintf(path, 512, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < n; i++) {
        int len = i == n / 2 ? 300000 : 1 + (int)(pesc_splitmix64(&seed) % 200);
        int kind = (int)(pesc_splitmix64(&seed) % 3);   /* none, the same, masked */
        w[i].len = len;
        w[i].ids = malloc((size_t)len * sizeof(int32_t));
        w[i].labels = kind ? malloc((size_t)len * sizeof(int32_t)) : NULL;
        w[i].same_labels = kind == 1;
        for (int k = 0; k < len; k++) {
            w[i].ids[k] = (int32_t)(pesc_splitmix64(&seed) % 50000);
            if (kind)
                w[i].labels[k] = kind == 2 && (k == 0 || pesc_splitmix64(&seed) % 3 == 0)
                                     ? -100 : w[i].ids[k];
        }
        fputc('{', f);
        write_ids(f, "input_ids", w[i].ids, len);
        if (kind) {
            fputs(", ", f);
            write_ids(f, "labels", w[i].labels, len);
        }
        fputs("}\n", f);
    }
    fclose(f);
    return w;
}

static void free_written(written *w, int n)
{
    for (int i = 0; i < n; i++) {
        free(w[i].ids);
        free(w[i].labels);
    }
    free(w);
}

/* Record i of the tokens file written as w, loaded as source `source`. */
static int read_back(const ds_record *r, const written *w, int i, int source)
{
    const int32_t *labels = w[i].same_labels ? NULL : w[i].labels;
    size_t bytes = (size_t)w[i].len * sizeof(int32_t);
    return r->len == w[i].len && r->source == source && r->line == i + 1 &&
           memcmp(r->ids, w[i].ids, bytes) == 0 && !r->labels == !labels &&
           (!labels || memcmp(r->labels, labels, bytes) == 0);
}

/* Records [first, first + n) of d against the file written as w. */
static int count_unequal(const ds_records *d, int first, const written *w, int n, int source)
{
    int bad = 0;
    for (int i = 0; i < n && first + i < d->n; i++)
        bad += !read_back(&d->items[first + i], w, i, source);
    return bad;
}

static void test_store_round_trip(void)
{
    enum { N_A = 1500, N_B = 700 };
    char a[512], b[512];
    written *wa = write_random_tokens("random-a.jsonl", N_A, 1, a);
    written *wb = write_random_tokens("random-b.jsonl", N_B, 2, b);
    ds_records d = {0};
    pesc_error err = {{0}};
    ds_load_options lo = {.format = DS_TOKENS, .strict = 1};
    CHECK(dataset_load(&d, a, &lo, &err) == 0 && d.n == N_A, "random a: %s", err.msg);
    CHECK(count_unequal(&d, 0, wa, N_A, 0) == 0, "records of a differ from what was written");
    /* a second load maps the store again: the first file's records must move with it */
    lo.source = 1;
    CHECK(dataset_load(&d, b, &lo, &err) == 0 && d.n == N_A + N_B, "random b: %s", err.msg);
    int bad = count_unequal(&d, 0, wa, N_A, 0) + count_unequal(&d, N_A, wb, N_B, 1);
    CHECK(bad == 0, "%d of %d records read back differently from the store", bad, d.n);
    dataset_free(&d);
    free_written(wa, N_A);
    free_written(wb, N_B);
}

/* A missing TMPDIR, and a full one (a file size limit makes writes fail as a full disk
 * does): one line naming the directory and the fix, and the records loaded before stay. */
static void test_store_errors(void)
{
    enum { N = 40 };
    char path[512], first[512], missing[600], *saved = NULL;
    if (getenv("TMPDIR"))
        saved = strdup(getenv("TMPDIR"));
    written *w = write_random_tokens("store-errors.jsonl", N, 3, path);
    write_numbers("store-first.jsonl", 7000, 10, first);
    ds_records d = {0};
    pesc_error err = {{0}};
    ds_load_options lo = {.format = DS_TOKENS, .strict = 1};

    snprintf(missing, sizeof missing, "%s/no-such-dir", dir);
    setenv("TMPDIR", missing, 1);
    CHECK(dataset_load(&d, path, &lo, &err) == -1 && strstr(err.msg, missing) &&
          strstr(err.msg, "set TMPDIR") && !strchr(err.msg, '\n') && d.n == 0,
          "a missing TMPDIR: %s", err.msg);
    dataset_free(&d);

    setenv("TMPDIR", dir, 1);
    CHECK(dataset_load(&d, first, &lo, &err) == 0 && d.n == 10, "before the limit: %s", err.msg);
    struct rlimit limit, small;
    CHECK(getrlimit(RLIMIT_FSIZE, &limit) == 0, "getrlimit");
    small = limit;
    small.rlim_cur = 256 * 1024;   /* the file holds 1.2 MB of tokens */
    signal(SIGXFSZ, SIG_IGN);      /* the write fails with EFBIG instead of killing us */
    CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0, "setrlimit");
    int rc = dataset_load(&d, path, &lo, &err);
    setrlimit(RLIMIT_FSIZE, &limit);
    signal(SIGXFSZ, SIG_DFL);
    CHECK(rc == -1 && strstr(err.msg, dir) && strstr(err.msg, "cannot grow past") &&
          strstr(err.msg, "TMPDIR") && !strchr(err.msg, '\n'), "a full store: %s", err.msg);
    CHECK(d.n == 10 && d.items[9].ids[0] == 7009 && d.items[9].labels[2] == 7009,
          "a failed load keeps the records before it (%d)", d.n);
    /* with room again, the same file loads after them and reads back exactly */
    CHECK(dataset_load(&d, path, &lo, &err) == 0 && d.n == 10 + N, "after the limit: %s",
          err.msg);
    CHECK(count_unequal(&d, 10, w, N, 0) == 0 && d.items[9].ids[0] == 7009,
          "records after a failed load differ");
    dataset_free(&d);
    if (saved)
        setenv("TMPDIR", saved, 1);
    else
        unsetenv("TMPDIR");
    free(saved);
    free_written(w, N);
}

/* ---- the same batches as before the token store -------------------------------------------- */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* Every batch of the run, its statistics and its order in one number; the count from the
 * lengths alone must agree. */
static uint64_t hash_batches(const ds_source *src, int n_src, const ds_load_options *lo,
                             const ds_options *o, long *batches)
{
    pesc_error err = {{0}};
    dataset *ds = dataset_open(src, n_src, lo, o, &err);
    CHECK(ds != NULL, "open: %s", err.msg);
    if (!ds)
        return 0;
    const ds_stats *st = dataset_stats(ds);
    long long counts[] = {st->records, st->skipped, st->tokens, st->truncated,
                          st->truncated_tokens};
    uint64_t h = fnv(0xcbf29ce484222325ull, counts, sizeof counts);
    long counted = dataset_count_batches(ds, o->batch, o->seq);
    ds_batch b;
    ds_batch_init(&b, o->batch, o->seq);
    *batches = 0;
    while (dataset_next_batch(ds, &b) > 0) {
        size_t n = (size_t)b.rows * (size_t)b.T * sizeof(int32_t);
        const int32_t *arrays[] = {b.ids, b.labels, b.targets, b.positions, b.doc_ids, b.sources};
        for (size_t k = 0; k < sizeof arrays / sizeof *arrays; k++)
            h = fnv(h, arrays[k], n);
        h = fnv(h, b.row_tokens, (size_t)b.rows * sizeof *b.row_tokens);
        long long more[] = {b.rows, b.epoch, b.n_targets};
        h = fnv(h, more, sizeof more);
        (*batches)++;
    }
    CHECK(counted == *batches, "counted %ld batches from the lengths, %ld came", counted, *batches);
    ds_batch_free(&b);
    dataset_delete(ds);
    return h;
}

/* Alpaca records of seeded random words (text through the tokenizer and template). */
static void write_alpaca(const char *name, int n, uint64_t seed, char *path)
{
    static const char *words[] = {"the", "model", "routes", "each", "token", "to", "two",
                                  "experts", "adapter", "sparse", "hello", "world", "data",
                                  "why", "is", "sky", "blue", "write", "a", "poem", "sum"};
    enum { N_WORDS = sizeof words / sizeof *words };
    snprintf(path, 512, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < n; i++) {
        const char *keys[] = {"instruction", "input", "output"};
        fputc('{', f);
        for (int k = 0; k < 3; k++) {
            int count = k == 1 ? (int)(pesc_splitmix64(&seed) % 6)
                               : 1 + (int)(pesc_splitmix64(&seed) % (k == 2 ? 60 : 12));
            fprintf(f, "%s\"%s\": \"", k ? ", " : "", keys[k]);
            for (int j = 0; j < count; j++)
                fprintf(f, j ? " %s" : "%s", words[pesc_splitmix64(&seed) % N_WORDS]);
            fputc('"', f);
        }
        fputs("}\n", f);
    }
    fclose(f);
}

/* Text, tokens and a source format through mixture weights, packing, truncation and two
 * shuffled epochs: the batches must be what the code gave before the token store (the
 * expected numbers were computed then; a change to batching must explain itself here). */
static void test_same_batches(tokenizer *t)
{
    char alpaca[512];
    written *w;
    ds_source src[3];
    pesc_error err = {{0}};
    write_alpaca("batches-alpaca.jsonl", 3000, 11, alpaca);
    w = write_random_tokens("batches-tokens.jsonl", 1000, 12, src[1].path);
    free_written(w, 1000);
    snprintf(src[0].path, sizeof src[0].path, "%s", alpaca);
    src[0].weight = 1.0;
    src[1].weight = 1.5;
    CHECK(ds_source_parse(&src[2], "demo:seed=3,records=500:0.5", &err) == 0, "%s", err.msg);
    ds_load_options lo = {.format = DS_AUTO, .tok = t, .strict = 1};
    static const struct { ds_options o; uint64_t want; long batches; } runs[] = {
        {{.batch = 4, .seq = 96, .pack = 1, .shuffle = 1, .seed = 11, .epochs = 2},
         0x65260082a0412063ull, 2331},
        {{.batch = 3, .seq = 40, .pack = 0, .shuffle = 1, .seed = 5, .epochs = 1},
         0x1ca55b6334b11ebeull, 1571},
    };
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
        long batches = 0;
        uint64_t h = hash_batches(src, 3, &lo, &runs[i].o, &batches);
        CHECK(h == runs[i].want && batches == runs[i].batches,
              "run %zu: batches hash to %#018llx over %ld batches; before the token store "
              "%#018llx over %ld", i, (unsigned long long)h, batches,
              (unsigned long long)runs[i].want, runs[i].batches);
    }
}

int main(void)
{
    if (!mkdtemp(dir))
        return 99;
    tokenizer *t = fixture_tokenizer();
    if (!t)
        return 99;
    test_formats(t);
    test_dataset_shapes(t);
    test_prompt_completion_ids(t);
    test_file_shapes(t);
    test_array_gzip_and_bad_records(t);
    test_batches();
    test_trim();
    test_bom(t);
    test_plain_lines(t);
    test_nul_bytes(t);
    test_tables(t);
    test_answers_within_seq();
    test_holdout_of_one();
    test_source_hints();
    test_empty_paths();
    test_negative_ids();
    test_store_round_trip();
    test_store_errors();
    test_same_batches(t);
    tok_delete(t);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        failures++;
    if (failures) {
        fprintf(stderr, "test_dataset: %d failures\n", failures);
        return 1;
    }
    printf("test_dataset: formats, bad records, mixture, packing, cursor and token store as "
           "expected\n");
    return 0;
}
