/* dataset — see dataset.h. */
#include "dataset.h"

#include <assert.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "demo.h"
#include "stats.h"
#include "stream.h"

/* ===================================================== the host side of a format ===== */

/* What a format's convert (or a source's next) gave for one record; contents are copies. */
struct pesc_record_out {
    tpl_message *msgs;           /* (n_msgs) */
    int n_msgs, cap_msgs;
    int bare;                    /* the messages are plain text end to end, no chat template
                                    (prompt/completion strings; set by that built-in) */
    char *text;                  /* a plain document */
    size_t text_len;
    int32_t *ids, *labels;       /* (n_ids) pre-tokenized; labels may be NULL */
    int n_ids;
    unsigned kinds;              /* OUT_* given */
    int vocab_size;              /* > 0: what the built-in tokens format checks against */
    int failed;
    char err[PESC_ERROR_MAX / 2];
};

enum { OUT_MESSAGES = 1, OUT_TEXT = 2, OUT_TOKENS = 4 };

static void out_free(pesc_record_out *out)
{
    for (int i = 0; i < out->n_msgs; i++) {
        free((char *)out->msgs[i].content);
        free((char *)out->msgs[i].where);
    }
    free(out->msgs);
    free(out->text);
    free(out->ids);
    free(out->labels);
}

static char *copy_bytes(const char *s, size_t n)
{
    char *c = xmalloc(n + 1);
    if (n)
        memcpy(c, s, n);
    c[n] = '\0';
    return c;
}

static json_t *as_json(const pesc_json *v) { return (json_t *)v; }

static pesc_json_type host_type(const pesc_json *v)
{
    switch (v ? json_typeof(as_json(v)) : JSON_NULL) {
    case JSON_OBJECT: return PESC_JSON_OBJECT;
    case JSON_ARRAY: return PESC_JSON_ARRAY;
    case JSON_STRING: return PESC_JSON_STRING;
    case JSON_INTEGER: return PESC_JSON_INTEGER;
    case JSON_REAL: return PESC_JSON_REAL;
    case JSON_TRUE: case JSON_FALSE: return PESC_JSON_BOOL;
    case JSON_NULL: break;
    }
    return PESC_JSON_NULL;
}

static const pesc_json *host_get(const pesc_json *o, const char *key)
{
    return o && key ? (const pesc_json *)json_object_get(as_json(o), key) : NULL;
}

static const char *host_string(const pesc_json *v, size_t *len)
{
    if (!v || !json_is_string(as_json(v)))
        return NULL;
    if (len)
        *len = json_string_length(as_json(v));
    return json_string_value(as_json(v));
}

static size_t host_array_size(const pesc_json *v) { return v ? json_array_size(as_json(v)) : 0; }

static const pesc_json *host_array_get(const pesc_json *a, size_t i)
{
    return a ? (const pesc_json *)json_array_get(as_json(a), i) : NULL;
}

static int host_integer(const pesc_json *v, long long *out)
{
    if (!v || !json_is_integer(as_json(v)))
        return -1;
    *out = (long long)json_integer_value(as_json(v));
    return 0;
}

static int host_fail(pesc_record_out *out, const char *message)
{
    if (!out->failed) {
        out->failed = 1;
        snprintf(out->err, sizeof out->err, "%s", message ? message : "bad record");
    }
    return -1;
}

static void host_message(pesc_record_out *out, pesc_role role, const char *text, size_t len)
{
    static const tpl_role roles[] = {[PESC_ROLE_SYSTEM] = ROLE_SYSTEM,
                                     [PESC_ROLE_USER] = ROLE_USER,
                                     [PESC_ROLE_ASSISTANT] = ROLE_ASSISTANT};
    if ((unsigned)role > PESC_ROLE_ASSISTANT || (!text && len)) {
        host_fail(out, "the format gave a message with an unknown role or no text");
        return;
    }
    if (out->n_msgs == out->cap_msgs) {
        out->cap_msgs = out->cap_msgs ? 2 * out->cap_msgs : 8;
        out->msgs = xrealloc(out->msgs, (size_t)out->cap_msgs * sizeof *out->msgs);
    }
    out->msgs[out->n_msgs++] = (tpl_message){.role = roles[role], .content = copy_bytes(text, len),
                                             .len = len};
    out->kinds |= OUT_MESSAGES;
}

static void host_text(pesc_record_out *out, const char *text, size_t len)
{
    if ((out->kinds & OUT_TEXT) || (!text && len)) {
        host_fail(out, "the format gave the text of a record twice, or none");
        return;
    }
    out->text = copy_bytes(text ? text : "", len);
    out->text_len = len;
    out->kinds |= OUT_TEXT;
}

static void host_tokens(pesc_record_out *out, const int32_t *ids, const int32_t *labels, size_t n)
{
    if ((out->kinds & OUT_TOKENS) || !ids || n == 0 || n > (1u << 24)) {
        host_fail(out, "the format gave token ids twice, or not between 1 and 16777216 of them");
        return;
    }
    out->ids = xmalloc(n * sizeof *out->ids);
    memcpy(out->ids, ids, n * sizeof *ids);
    if (labels) {
        out->labels = xmalloc(n * sizeof *out->labels);
        memcpy(out->labels, labels, n * sizeof *labels);
    }
    out->n_ids = (int)n;
    out->kinds |= OUT_TOKENS;
}

static const pesc_format_host format_host = {
    .size = sizeof format_host, .type = host_type, .get = host_get, .string = host_string,
    .array_size = host_array_size, .array_get = host_array_get, .integer = host_integer,
    .message = host_message, .text = host_text, .tokens = host_tokens, .fail = host_fail,
};

/* ================================================================ built-in formats ===== */

/* They read records through the host only, exactly as a plugin format does. */

static int failf(const pesc_format_host *h, pesc_record_out *out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int failf(const pesc_format_host *h, pesc_record_out *out, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return h->fail(out, msg);
}

static int has(const pesc_format_host *h, const pesc_json *o, const char *key)
{
    return h->get(o, key) != NULL;
}

/* *s = o[key], a string; otherwise a failure "what: "key" is missing" or "... must be a
 * string". */
static int need_string(const pesc_format_host *h, pesc_record_out *out, const pesc_json *o,
                       const char *key, const char *what, const char **s, size_t *len)
{
    const pesc_json *v = h->get(o, key);
    *s = h->string(v, len);
    if (*s)
        return 0;
    return v ? failf(h, out, "%s: \"%s\" must be a string", what, key)
             : failf(h, out, "%s: \"%s\" is missing (is --format right for this file?)", what,
                     key);
}

/* A user turn and its answer, from two string keys. */
static int question_answer(const pesc_format_host *h, pesc_record_out *out, const pesc_json *o,
                           const char *question, const char *answer, const char *what)
{
    const char *q, *a;
    size_t lq, la;
    if (need_string(h, out, o, question, what, &q, &lq) ||
        need_string(h, out, o, answer, what, &a, &la))
        return -1;
    h->message(out, PESC_ROLE_USER, q, lq);
    h->message(out, PESC_ROLE_ASSISTANT, a, la);
    return 0;
}

/* text: {"text": ...}, a JSON string, or a plain line */
static int text_detect(const pesc_format_host *h, const pesc_json *o)
{
    if (h->type(o) == PESC_JSON_STRING)
        return 100;
    return has(h, o, "text") ? 10 : 0;
}

static int text_convert(const pesc_format_host *h, const pesc_json *o, pesc_record_out *out)
{
    size_t n = 0;
    const char *s = h->string(o, &n);
    if (!s)
        s = h->string(h->get(o, "text"), &n);
    if (!s)
        return h->fail(out, "a text record needs \"text\": string");
    h->text(out, s, n);
    return 0;
}

/* camelidae: {"instruction": system, "conversation": [{"input", "output"}...]} or "corpus" */
static int camelidae_detect(const pesc_format_host *h, const pesc_json *o)
{
    return has(h, o, "conversation") || has(h, o, "corpus") ? 80 : 0;
}

static int turns(const pesc_format_host *h, pesc_record_out *out, const pesc_json *o,
                 const char *list_key, const char *role_key, const char *content_key);

static int camelidae_convert(const pesc_format_host *h, const pesc_json *o, pesc_record_out *out)
{
    size_t n = 0;
    const char *corpus = h->string(h->get(o, "corpus"), &n);
    if (corpus && n > 0) {
        h->text(out, corpus, n);
        return 0;
    }
    /* LMSYS-Chat-1M and WildChat also call their list "conversation", of OpenAI's turns */
    const pesc_json *first = h->array_get(h->get(o, "conversation"), 0);
    if (has(h, first, "role") && !has(h, first, "input"))
        return turns(h, out, o, "conversation", "role", "content");
    const char *system = h->string(h->get(o, "instruction"), &n);
    if (system && n > 0)
        h->message(out, PESC_ROLE_SYSTEM, system, n);
    const pesc_json *conversation = h->get(o, "conversation");
    size_t turns = h->array_size(conversation);
    if (h->type(conversation) != PESC_JSON_ARRAY || turns == 0)
        return h->fail(out, "\"conversation\" must be a non-empty array (or give \"corpus\")");
    for (size_t i = 0; i < turns; i++) {
        char where[48];
        snprintf(where, sizeof where, "conversation[%zu]", i);
        if (question_answer(h, out, h->array_get(conversation, i), "input", "output", where) != 0)
            return -1;
    }
    return 0;
}

/* The user turn of an instruction record: "instruction", and after a blank line the
 * optional "input" (Alpaca) or "context" (Dolly) it works on, as the Alpaca prompt shows
 * them. */
static int instruction_turn(const pesc_format_host *h, pesc_record_out *out, const pesc_json *o,
                            const char *what)
{
    static const char *const extra_keys[] = {"input", "context"};
    const char *instruction, *extra = NULL;
    size_t li, lx = 0;
    if (need_string(h, out, o, "instruction", what, &instruction, &li))
        return -1;
    for (size_t i = 0; i < sizeof extra_keys / sizeof *extra_keys; i++) {
        const pesc_json *v = h->get(o, extra_keys[i]);
        size_t n = 0;
        const char *s = h->string(v, &n);
        if (v && h->type(v) != PESC_JSON_NULL && !s)
            return failf(h, out, "%s: \"%s\" must be a string", what, extra_keys[i]);
        if (s && n > 0 && extra)
            return failf(h, out, "%s: both \"input\" and \"context\": keep one", what);
        if (s && n > 0) {
            extra = s;
            lx = n;
        }
    }
    if (!extra || li == 0) {
        h->message(out, PESC_ROLE_USER, extra ? extra : instruction, extra ? lx : li);
        return 0;
    }
    char *joined = xmalloc(li + lx + 2);
    memcpy(joined, instruction, li);
    memcpy(joined + li, "\n\n", 2);
    memcpy(joined + li + 2, extra, lx);
    h->message(out, PESC_ROLE_USER, joined, li + lx + 2);
    free(joined);
    return 0;
}

/* alpaca: instruction, input (optional), output, system (optional) */
static int alpaca_detect(const pesc_format_host *h, const pesc_json *o)
{
    return has(h, o, "instruction") && has(h, o, "output") ? 30 : 0;
}

static int alpaca_convert(const pesc_format_host *h, const pesc_json *o, pesc_record_out *out)
{
    const char *output, *system;
    size_t lo, ls = 0;
    if (need_string(h, out, o, "output", "alpaca", &output, &lo))
        return -1;
    system = h->string(h->get(o, "system"), &ls);
    if (system && ls > 0)
        h->message(out, PESC_ROLE_SYSTEM, system, ls);
    if (instruction_turn(h, out, o, "alpaca") != 0)
        return -1;
    h->message(out, PESC_ROLE_ASSISTANT, output, lo);
    return 0;
}

static int role_of(const char *s, size_t len, pesc_role *role)
{
    /* chatgpt, bing and bard answer in the ShareGPT dumps; developer is OpenAI's newer
     * name for the system message */
    static const struct { const char *name; pesc_role role; } roles[] = {
        {"system", PESC_ROLE_SYSTEM}, {"developer", PESC_ROLE_SYSTEM},
        {"human", PESC_ROLE_USER}, {"user", PESC_ROLE_USER},
        {"gpt", PESC_ROLE_ASSISTANT}, {"assistant", PESC_ROLE_ASSISTANT},
        {"model", PESC_ROLE_ASSISTANT}, {"bot", PESC_ROLE_ASSISTANT},
        {"chatgpt", PESC_ROLE_ASSISTANT}, {"bing", PESC_ROLE_ASSISTANT},
        {"bard", PESC_ROLE_ASSISTANT}};
    for (size_t i = 0; s && i < sizeof roles / sizeof *roles; i++)
        if (strlen(roles[i].name) == len && strncasecmp(s, roles[i].name, len) == 0) {
            *role = roles[i].role;
            return 0;
        }
    return -1;
}

/* Turns whose role names a tool: the chat templates have no place for them. */
static int is_tool_role(const char *s, size_t len)
{
    static const char *const tools[] = {"tool", "function", "function_call", "observation",
                                        "ipython", "tool_call", "tool_response"};
    for (size_t i = 0; s && i < sizeof tools / sizeof *tools; i++)
        if (strlen(tools[i]) == len && memcmp(s, tools[i], len) == 0)
            return 1;
    return 0;
}

/* A turn's content: a string, or (OpenAI) a list of parts [{"type": "text", "text"}...]
 * whose texts are joined as Hugging Face chat templates join them, with nothing between.
 * *joined is set when the text was built (the caller frees it). */
static int turn_content(const pesc_format_host *h, pesc_record_out *out, const pesc_json *t,
                        const char *where, const char *content_key, const char **text,
                        size_t *len, char **joined)
{
    const pesc_json *c = h->get(t, content_key);
    *joined = NULL;
    if ((*text = h->string(c, len)) != NULL)
        return 0;
    if ((!c || h->type(c) == PESC_JSON_NULL) &&
        (has(h, t, "tool_calls") || has(h, t, "function_call")))
        return failf(h, out, "%s is a tool call (\"%s\"): the chat templates have no tool "
                     "turns; leave tool-calling records out of the data", where,
                     has(h, t, "tool_calls") ? "tool_calls" : "function_call");
    if (h->type(c) != PESC_JSON_ARRAY)
        return failf(h, out, "%s.%s must be a string (or a list of text parts)", where,
                     content_key);
    size_t n = h->array_size(c), used = 0;
    char *buf = NULL;
    for (size_t k = 0; k < n; k++) {
        const pesc_json *part = h->array_get(c, k);
        size_t lt = 0, lp = 0;
        const char *type = h->string(h->get(part, "type"), &lt);
        const char *piece = h->string(h->get(part, "text"), &lp);
        if (!type || lt != 4 || memcmp(type, "text", 4) != 0 || !piece) {
            free(buf);
            return failf(h, out, "%s.%s[%zu] is %s%.*s%s: only text parts (\"type\": \"text\", "
                         "\"text\": string) can be trained on", where, content_key, k,
                         type ? "a part of type \"" : "not a text part", type ? (int)lt : 0,
                         type ? type : "", type ? "\"" : "");
        }
        buf = xrealloc(buf, used + lp + 1);
        memcpy(buf + used, piece, lp);
        used += lp;
        buf[used] = '\0';
    }
    *joined = buf;
    *text = buf ? buf : "";
    *len = used;
    return 0;
}

/* Keeps the assistant message just given as context, without loss. */
static void keep_as_context(pesc_record_out *out)
{
    if (!out->failed)
        out->msgs[out->n_msgs - 1].role = ROLE_ASSISTANT_UNTRAINED;
}

/* OpenAI's fine-tuning data marks an assistant turn "weight": 0 to keep it as context only;
 * 1 (or none) trains it. The host's message has no such flag (plugins have no use for it
 * yet), so the built-in marks the message it has just given. */
static int turn_weight(const pesc_format_host *h, pesc_record_out *out, const pesc_json *t,
                       const char *where, pesc_role role)
{
    const pesc_json *w = h->get(t, "weight");
    long long weight = 1;
    if (!w || h->type(w) == PESC_JSON_NULL)
        return 0;
    if (h->integer(w, &weight) != 0 || (weight != 0 && weight != 1))
        return failf(h, out, "%s.weight must be 0 (not trained) or 1", where);
    if (weight == 0 && role == PESC_ROLE_ASSISTANT)
        keep_as_context(out);
    return 0;
}

/* Names the message just given by the JSON path it was read from, so that the chat
 * template's errors count as the turn errors here do (the host's message takes no path:
 * plugins have their own records to name). */
static void name_message(pesc_record_out *out, const char *where)
{
    if (!out->failed)
        out->msgs[out->n_msgs - 1].where = copy_bytes(where, strlen(where));
}

/* The system prompt some datasets keep beside the turns ("system": LLaMA-Factory's ShareGPT,
 * "system_prompt": OpenHermes); NULL when absent or empty. */
static int top_level_system(const pesc_format_host *h, pesc_record_out *out, const pesc_json *o,
                            const char **system, size_t *len)
{
    static const char *const keys[] = {"system", "system_prompt"};
    *system = NULL;
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        const pesc_json *v = h->get(o, keys[i]);
        if (!v || h->type(v) == PESC_JSON_NULL)
            continue;
        size_t n = 0;
        const char *s = h->string(v, &n);
        if (!s)
            return failf(h, out, "\"%s\" must be a string", keys[i]);
        if (n == 0)
            continue;
        if (*system && (n != *len || memcmp(s, *system, n) != 0))
            return failf(h, out, "\"system\" and \"system_prompt\" differ: keep one");
        *system = s;
        *len = n;
    }
    return 0;
}

/* The turns of one list, [{role_key, content_key}], after the system prompt the record
 * keeps beside them (system, ls; NULL: none), which a system turn may only repeat; with
 * context, the assistant turns are kept without loss. */
static int list_turns(const pesc_format_host *h, pesc_record_out *out, const char *list_key,
                      const pesc_json *list, const char *role_key, const char *content_key,
                      const char *system, size_t ls, int context)
{
    size_t n = h->array_size(list);
    for (size_t i = 0; i < n; i++) {
        const pesc_json *t = h->array_get(list, i);
        size_t lr = 0, lc = 0;
        const char *r = h->string(h->get(t, role_key), &lr);
        const char *c;
        char where[96], *joined;
        pesc_role role;
        snprintf(where, sizeof where, "%s[%zu]", list_key, i);
        if (role_of(r, lr, &role) != 0)
            return failf(h, out, "%s.%s is %s%.*s%s: pesc reads system, user (human) and "
                         "assistant (gpt) turns%s", where, role_key, r ? "\"" : "not a string",
                         r ? (int)lr : 0, r ? r : "", r ? "\"" : "",
                         is_tool_role(r, lr) ? "; the chat templates have no tool turns: "
                                               "leave tool-calling records out of the data" : "");
        if (turn_content(h, out, t, where, content_key, &c, &lc, &joined) != 0)
            return -1;
        if (system && role == PESC_ROLE_SYSTEM && lc > 0 && (lc != ls || memcmp(c, system, lc))) {
            free(joined);
            return failf(h, out, "a top-level system prompt and a system turn (%s) differ: "
                         "keep one", where);
        }
        if (!(system && role == PESC_ROLE_SYSTEM)) {   /* the same system prompt twice: once */
            h->message(out, role, c, lc);
            name_message(out, where);
        }
        free(joined);
        if (turn_weight(h, out, t, where, role) != 0)
            return -1;
        if (context && role == PESC_ROLE_ASSISTANT)
            keep_as_context(out);
    }
    return 0;
}

/* Lists of turns as sharegpt and openai store them, after a top-level system prompt when the
 * record has one: lists[0..n_lists) in order are one conversation, and the assistant turns
 * of all but the last are context, without loss (the prompt before a completion). */
static int turn_lists(const pesc_format_host *h, pesc_record_out *out, const pesc_json *o,
                      const char *const *lists, int n_lists, const char *role_key,
                      const char *content_key)
{
    for (int k = 0; k < n_lists; k++) {
        const pesc_json *list = h->get(o, lists[k]);
        if (h->type(list) != PESC_JSON_ARRAY || h->array_size(list) == 0)
            return failf(h, out, "\"%s\" must be a non-empty array", lists[k]);
    }
    const char *system;
    size_t ls = 0;
    if (top_level_system(h, out, o, &system, &ls) != 0)
        return -1;
    if (system)
        h->message(out, PESC_ROLE_SYSTEM, system, ls);
    for (int k = 0; k < n_lists; k++)
        if (list_turns(h, out, lists[k], h->get(o, lists[k]), role_key, content_key, system, ls,
                       k < n_lists - 1) != 0)
            return -1;
    return 0;
}

static int turns(const pesc_format_host *h, pesc_record_out *out, const pesc_json *o,
                 const char *list_key, const char *role_key, const char *content_key)
{
    return turn_lists(h, out, o, &list_key, 1, role_key, content_key);
}

static int sharegpt_detect(const pesc_format_host *h, const pesc_json *o)
{
    return has(h, o, "conversations") ? 70 : 0;
}

static int sharegpt_convert(const pesc_format_host *h, const pesc_json *o, pesc_record_out *out)
{
    /* many sets keep OpenAI's role/content turns under "conversations" */
    const pesc_json *first = h->array_get(h->get(o, "conversations"), 0);
    if (has(h, first, "role") && !has(h, first, "from"))
        return turns(h, out, o, "conversations", "role", "content");
    return turns(h, out, o, "conversations", "from", "value");
}

static int openai_detect(const pesc_format_host *h, const pesc_json *o)
{
    return has(h, o, "messages") ? 60 : 0;
}

static int openai_convert(const pesc_format_host *h, const pesc_json *o, pesc_record_out *out)
{
    return turns(h, out, o, "messages", "role", "content");
}

/* Preference data, for DPO-style training, which pesc does not do: pairs of a "chosen" and a
 * "rejected" answer (TRL's preference datasets), or completions marked good or bad by a
 * "label" (KTO's unpaired ones). NULL for any other record; else why it is refused and how
 * to train on the good answers, in buf. */
static const char *preference_data(const pesc_format_host *h, const pesc_json *o, char *buf,
                                   size_t n)
{
    const pesc_json *label = h->get(o, "label");
    if (has(h, o, "completion") && h->type(label) == PESC_JSON_BOOL) {
        snprintf(buf, n, "a completion with a true/false \"label\" is preference data (KTO), "
                 "for DPO-style training, which pesc does not do; to train on the good ones, "
                 "keep them: jq -c 'select(.label) | del(.label)'");
        return buf;
    }
    if (!has(h, o, "chosen") && !has(h, o, "rejected"))
        return NULL;
    const char *take = has(h, o, "prompt") ? "{prompt, completion: .chosen}"
                       : h->type(h->get(o, "chosen")) == PESC_JSON_ARRAY ? "{messages: .chosen}"
                                                                          : "{text: .chosen}";
    snprintf(buf, n, "a record with \"chosen\" and \"rejected\" answers is preference data, for "
             "DPO-style training, which pesc does not do, and no format reads \"chosen\" alone; "
             "to train on the chosen answers, take them out: jq -c '%s'", take);
    return buf;
}

/* completion: {"prompt", "completion"}, as OpenAI's legacy fine-tuning files and TRL's
 * prompt-completion datasets keep them. Two strings are plain text, the completion right
 * after the prompt with no chat template (what both mean by them); two lists of messages are
 * one conversation for the chat template. Only the completion is trained. */
static int completion_detect(const pesc_format_host *h, const pesc_json *o)
{
    /* below every other format: a record that one of them reads today stays its */
    return has(h, o, "prompt") && has(h, o, "completion") ? 5 : 0;
}

static int completion_convert(const pesc_format_host *h, const pesc_json *o, pesc_record_out *out)
{
    static const char *const keys[] = {"prompt", "completion"};
    char why[512];
    if (preference_data(h, o, why, sizeof why))
        return h->fail(out, why);
    pesc_json_type types[2];
    for (int k = 0; k < 2; k++) {
        types[k] = h->type(h->get(o, keys[k]));
        if (types[k] != PESC_JSON_STRING && types[k] != PESC_JSON_ARRAY)
            return failf(h, out, "\"%s\" must be a string (plain text) or a list of {\"role\", "
                         "\"content\"} messages", keys[k]);
    }
    if (types[0] != types[1])
        return failf(h, out, "\"prompt\" is a %s but \"completion\" a %s: give both as strings "
                     "(plain text, no chat template) or both as lists of {\"role\", \"content\"} "
                     "messages (one conversation for the chat template)",
                     types[0] == PESC_JSON_STRING ? "string" : "list",
                     types[1] == PESC_JSON_STRING ? "string" : "list");
    size_t lp = 0, lc = 0;
    const char *prompt = h->string(h->get(o, "prompt"), &lp);
    const char *completion = h->string(h->get(o, "completion"), &lc);
    if (completion ? lc == 0 : h->array_size(h->get(o, "completion")) == 0)
        return h->fail(out, "\"completion\" is empty: give the answer to train on");
    if (!completion)
        return turn_lists(h, out, o, keys, 2, "role", "content");
    h->message(out, PESC_ROLE_USER, prompt, lp);
    h->message(out, PESC_ROLE_ASSISTANT, completion, lc);
    out->bare = 1;
    return 0;
}

/* metamath: query, response; or GSM8K's question, answer (the data MetaMath grew from) */
static int metamath_detect(const pesc_format_host *h, const pesc_json *o)
{
    return (has(h, o, "query") && has(h, o, "response")) ||
           (has(h, o, "question") && has(h, o, "answer")) ? 50 : 0;
}

static int metamath_convert(const pesc_format_host *h, const pesc_json *o, pesc_record_out *out)
{
    if (!has(h, o, "query") && has(h, o, "question"))
        return question_answer(h, out, o, "question", "answer", "metamath");
    return question_answer(h, out, o, "query", "response", "metamath");
}

static int magicoder_detect(const pesc_format_host *h, const pesc_json *o)
{
    return (has(h, o, "problem") && has(h, o, "solution")) ||
           (has(h, o, "instruction") && has(h, o, "response")) ? 40 : 0;
}

static int magicoder_convert(const pesc_format_host *h, const pesc_json *o, pesc_record_out *out)
{
    if (has(h, o, "problem"))
        return question_answer(h, out, o, "problem", "solution", "magicoder");
    /* Dolly's records are instruction, context, response: the context goes with it */
    const char *response;
    size_t lr;
    if (need_string(h, out, o, "response", "magicoder", &response, &lr) ||
        instruction_turn(h, out, o, "magicoder") != 0)
        return -1;
    h->message(out, PESC_ROLE_ASSISTANT, response, lr);
    return 0;
}

/* What is wrong with a token id, for a message: "is outside the vocabulary (0..V-1)", or
 * without a vocabulary to check against (pesc inspect) "is not a token id (0 or more)";
 * labels may also be -100. */
static const char *id_problem(char *buf, size_t n, int vocab_size, int allow_ignore)
{
    const char *ignore = allow_ignore ? ", or -100 to ignore" : "";
    if (vocab_size > 0)
        snprintf(buf, n, "is outside the vocabulary (0..%d%s)", vocab_size - 1, ignore);
    else
        snprintf(buf, n, "is not a token id (0 or more%s)", ignore);
    return buf;
}

/* tokens: {"input_ids": [...], "labels": [...]}; labels may hold -100, ids may not. The
 * vocabulary check is here (not only in the host) for messages that name the key. */
static int read_ids(const pesc_format_host *h, pesc_record_out *out, const pesc_json *array,
                    const char *key, int allow_ignore, int32_t **ids_out, size_t *len)
{
    if (h->type(array) != PESC_JSON_ARRAY)
        return failf(h, out, "\"%s\" must be an array of token ids", key);
    size_t n = h->array_size(array);
    if (n == 0 || n > (1u << 24))
        return failf(h, out, "\"%s\" must hold between 1 and %u ids", key, 1u << 24);
    int vocab_size = out->vocab_size;
    int32_t *ids = xmalloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++) {
        long long id;
        if (h->integer(h->array_get(array, i), &id) != 0) {
            free(ids);
            return failf(h, out, "\"%s\"[%zu] is not an integer", key, i);
        }
        if (!((allow_ignore && id == -100) ||
              (id >= 0 && id <= INT32_MAX && (vocab_size <= 0 || id < vocab_size)))) {
            char problem[96];
            free(ids);
            return failf(h, out, "\"%s\"[%zu] = %lld %s", key, i, id,
                         id_problem(problem, sizeof problem, vocab_size, allow_ignore));
        }
        ids[i] = (int32_t)id;
    }
    *ids_out = ids;
    *len = n;
    return 0;
}

static int tokens_detect(const pesc_format_host *h, const pesc_json *o)
{
    return has(h, o, "input_ids") ? 90 : 0;
}

static int tokens_convert(const pesc_format_host *h, const pesc_json *o, pesc_record_out *out)
{
    int32_t *ids = NULL, *labels = NULL;
    size_t n = 0, n_labels = 0;
    const pesc_json *l = h->get(o, "labels");
    int rc = read_ids(h, out, h->get(o, "input_ids"), "input_ids", 0, &ids, &n);
    if (rc == 0 && l && h->type(l) != PESC_JSON_NULL) {
        rc = read_ids(h, out, l, "labels", 1, &labels, &n_labels);
        if (rc == 0 && n_labels != n)
            rc = failf(h, out, "\"labels\" has %zu entries but \"input_ids\" has %zu",
                       n_labels, n);
    }
    if (rc == 0)
        h->tokens(out, ids, labels, n);
    free(ids);
    free(labels);
    return rc;
}

#define FORMAT_OPS(fmt, fl) \
    static const pesc_format_ops fmt##_ops = {.size = sizeof(pesc_format_ops), .flags = (fl), \
                                              .detect = fmt##_detect, .convert = fmt##_convert}
FORMAT_OPS(camelidae, 0);
FORMAT_OPS(alpaca, 0);
FORMAT_OPS(sharegpt, 0);
FORMAT_OPS(openai, 0);
FORMAT_OPS(metamath, 0);
FORMAT_OPS(magicoder, 0);
FORMAT_OPS(text, PESC_FORMAT_LINES);
FORMAT_OPS(tokens, 0);
FORMAT_OPS(completion, 0);

#define BUILTIN "built-in"
/* At the indices of ds_format; every registry starts with these. */
static const ds_format_info builtin_formats[] = {
    [DS_AUTO] = {"auto", "per record, the format whose keys fit best", BUILTIN, NULL},
    [DS_CAMELIDAE] = {"camelidae", "{\"instruction\", \"conversation\": [{\"input\", "
                      "\"output\"}]} or {\"corpus\"}; [{\"role\", \"content\"}] turns (LMSYS)",
                      BUILTIN, &camelidae_ops},
    [DS_ALPACA] = {"alpaca", "{\"instruction\", \"input\", \"output\"}", BUILTIN, &alpaca_ops},
    [DS_SHAREGPT] = {"sharegpt", "{\"conversations\": [{\"from\", \"value\"} or {\"role\", "
                     "\"content\"}], \"system\"?} (SlimOrca, OpenHermes)", BUILTIN, &sharegpt_ops},
    [DS_OPENAI] = {"openai", "{\"messages\": [{\"role\", \"content\": string or text parts}]}",
                   BUILTIN, &openai_ops},
    [DS_METAMATH] = {"metamath", "{\"query\", \"response\"} or {\"question\", \"answer\"} "
                     "(GSM8K)", BUILTIN, &metamath_ops},
    [DS_MAGICODER] = {"magicoder", "{\"instruction\", \"response\", \"context\"?} (Dolly) or "
                      "{\"problem\", \"solution\"}", BUILTIN, &magicoder_ops},
    [DS_TEXT] = {"text", "{\"text\"}, a JSON string, or a plain line", BUILTIN, &text_ops},
    [DS_TOKENS] = {"tokens", "{\"input_ids\", \"labels\"}: token ids, no tokenizer", BUILTIN,
                   &tokens_ops},
    [DS_COMPLETION] = {"completion", "{\"prompt\", \"completion\"}: strings as plain text "
                       "(OpenAI's legacy files), or lists of messages (TRL)", BUILTIN,
                       &completion_ops},
    /* More built-ins register here, after the named ones, through the same table: the generated
     * instruction data of the built-in demo (src/demo.c). */
    {"demo", DEMO_FORMAT_DESCRIPTION, BUILTIN, &demo_format_ops},
};
enum { N_BUILTIN_FORMATS = (int)(sizeof builtin_formats / sizeof *builtin_formats) };

/* ====================================================================== registry ===== */

struct ds_formats {
    ds_format_info *items;       /* (n) the built-ins first */
    int n, cap;
};

ds_formats *ds_formats_new(void)
{
    ds_formats *f = xcalloc(1, sizeof *f);
    f->cap = N_BUILTIN_FORMATS + 8;
    f->items = xmalloc((size_t)f->cap * sizeof *f->items);
    memcpy(f->items, builtin_formats, sizeof builtin_formats);
    f->n = N_BUILTIN_FORMATS;
    return f;
}

void ds_formats_delete(ds_formats *f)
{
    if (!f)
        return;
    free(f->items);
    free(f);
}

int ds_formats_count(const ds_formats *f) { return f ? f->n : N_BUILTIN_FORMATS; }

const ds_format_info *ds_formats_get(const ds_formats *f, ds_format index)
{
    int i = (int)index;
    if (i < 0 || i >= ds_formats_count(f))
        return NULL;
    return f ? &f->items[i] : &builtin_formats[i];
}

int ds_formats_add(ds_formats *f, const char *name, const char *description,
                   const pesc_format_ops *ops, const char *origin, pesc_error *err)
{
    ds_format taken;
    if (!name || !*name)
        return pesc_fail(err, "%s: a dataset format needs a name", origin);
    if (ds_formats_parse(f, name, &taken, NULL) == 0)
        return pesc_fail(err, "%s: format '%s' is already defined by %s", origin, name,
                         ds_formats_get(f, taken)->origin);
    if (!ops || !(ops->convert || (ops->open && ops->next)))
        return pesc_fail(err, "%s: format '%s' has neither convert nor open and next", origin,
                         name);
    if (f->n == f->cap) {
        f->cap *= 2;
        f->items = xrealloc(f->items, (size_t)f->cap * sizeof *f->items);
    }
    f->items[f->n++] = (ds_format_info){name, description ? description : "", origin, ops};
    return 0;
}

int ds_formats_parse(const ds_formats *f, const char *name, ds_format *out, pesc_error *err)
{
    int n = ds_formats_count(f);
    for (int i = 0; i < n; i++)
        if (strcmp(name, ds_formats_get(f, (ds_format)i)->name) == 0) {
            *out = (ds_format)i;
            return 0;
        }
    char names[512] = "";
    size_t used = 0;
    for (int i = 0; i < n && used < sizeof names; i++)
        used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                                 ds_formats_get(f, (ds_format)i)->name);
    /* a plugin's format named without its module loaded: say where formats come from */
    return pesc_fail(err, "--format %s: not a known format (%s; see pesc plugins, and "
                     "PESC_PLUGIN_PATH or --plugin FILE for others)", name, names);
}

int ds_format_parse(const char *name, ds_format *out, pesc_error *err)
{
    return ds_formats_parse(NULL, name, out, err);
}

const char *ds_format_name(ds_format f)
{
    const ds_format_info *info = ds_formats_get(NULL, f);
    return info ? info->name : "plugin format";
}

/* `--format auto` for one record: the highest detect score, ties to the first registered. */
static ds_format detect_format(const ds_formats *f, const pesc_json *o)
{
    int best = 0, n = ds_formats_count(f);
    ds_format chosen = DS_AUTO;
    for (int i = 1; i < n; i++) {
        const pesc_format_ops *ops = ds_formats_get(f, (ds_format)i)->ops;
        int score = ops->detect && ops->convert ? ops->detect(&format_host, o) : 0;
        if (score > best) {
            best = score;
            chosen = (ds_format)i;
        }
    }
    return chosen;
}

/* ===================================================== what a format gave -> a record ===== */

/* A record's tokens on their way to the store: owned arrays, labels NULL or (len). */
typedef struct record_tokens {
    int32_t *ids, *labels;
    int len;
} record_tokens;

static void record_tokens_free(record_tokens *t)
{
    free(t->ids);
    free(t->labels);
    memset(t, 0, sizeof *t);
}

/* Turns out into t: token ids checked, or messages/text rendered with the chat template.
 * Errors name nothing; the caller adds where. */
static int finish_record(record_tokens *t, pesc_record_out *out, int rc, const char *format,
                         const ds_load_options *lo, pesc_error *err)
{
    if (rc != 0 || out->failed)
        return pesc_fail(err, "%s", out->failed ? out->err : "the format failed without a reason");
    if (out->kinds == 0)
        return pesc_fail(err, "format %s gave nothing for this record", format);
    if (out->kinds & (out->kinds - 1))
        return pesc_fail(err, "format %s gave more than one of messages, text and token ids",
                         format);
    if (out->kinds == OUT_TOKENS) {
        for (int i = 0; i < out->n_ids; i++) {
            int32_t id = out->ids[i], label = out->labels ? out->labels[i] : id;
            char problem[96];
            if (id < 0 || (lo->vocab_size > 0 && id >= lo->vocab_size) ||
                (label != -100 && (label < 0 || (lo->vocab_size > 0 && label >= lo->vocab_size))))
                return pesc_fail(err, "token %d (id %d, label %d) %s", i, id, label,
                                 id_problem(problem, sizeof problem, lo->vocab_size, 1));
        }
        t->ids = out->ids;
        t->labels = out->labels;
        t->len = out->n_ids;
        out->ids = out->labels = NULL;
        return 0;
    }
    if (!lo->tok && lo->untokenized)
        return 0;   /* t stays empty: a record of no tokens */
    if (!lo->tok)
        return pesc_fail(err, "%s records need a tokenizer (--tokenizer or a model "
                         "directory with tokenizer.json)", format);
    const chat_template *tpl = lo->tpl ? lo->tpl : template_find("camelidae");
    tok_ids ids = {0}, labels = {0};
    if (out->kinds == OUT_TEXT)
        rc = template_encode_text(tpl, lo->tok, out->text, out->text_len, &ids, &labels, err);
    else if (out->bare)
        rc = template_encode_bare(tpl, lo->tok, out->msgs, out->n_msgs, &ids, &labels, err);
    else
        rc = template_encode(tpl, lo->tok, out->msgs, out->n_msgs, &ids, &labels, err);
    for (int i = 0; rc == 0 && lo->vocab_size > 0 && i < ids.n; i++)
        if (ids.ids[i] >= lo->vocab_size)
            rc = pesc_fail(err, "token id %d is outside the model's vocabulary (%d): the "
                           "tokenizer does not belong to this model", ids.ids[i], lo->vocab_size);
    if (rc == 0 && ids.n > (1 << 24))
        rc = pesc_fail(err, "record of %d tokens is too long", ids.n);
    if (rc != 0) {
        tok_ids_free(&ids);
        tok_ids_free(&labels);
        return -1;
    }
    t->ids = ids.ids;
    t->labels = labels.ids;
    t->len = ids.n;
    return 0;
}

/* A chat message on its own: {"role", "content"} (OpenAI) or {"from", "value"} (ShareGPT). */
static int is_message(const json_t *o)
{
    return (json_object_get(o, "role") && json_object_get(o, "content")) ||
           (json_object_get(o, "from") && json_object_get(o, "value"));
}

/* Why auto found no format for o: preference data says what it is for (before the wrapper
 * test: its "chosen" may be a list of messages); a message or a list of them (a JSON array a
 * line), and a wrapper around the records ({"data": [...]}), say how to make records of them;
 * anything else names its keys, to be renamed to a format's. */
static int no_format(const json_t *o, const char *path, long line, pesc_error *err)
{
    const char *key;
    json_t *value;
    char keys[256] = "", why[512];
    size_t used = 0;
    int shown = 0;
    if (preference_data(&format_host, (const pesc_json *)o, why, sizeof why))
        return pesc_fail(err, "%s:%ld: %s", path, line, why);
    if (is_message(o) || (json_is_array(o) && is_message(json_array_get(o, 0))))
        return pesc_fail(err, "%s:%ld: %s, not a record: a record holds a conversation's "
                         "messages as {\"messages\": [...]}; if each line of the file (or the "
                         "file) is one conversation's list of messages, make it a record: "
                         "jq -c '{messages: .}' %s > records.jsonl", path, line,
                         json_is_array(o) ? "a list of messages" : "a message", path);
    json_object_foreach((json_t *)o, key, value) {
        if (json_is_array(value) && json_is_object(json_array_get(value, 0)))
            return pesc_fail(err, "%s:%ld: an object holding an array \"%s\" of records, not a "
                             "record: pesc reads JSONL (a record a line) or one JSON array; take "
                             "the records out with jq -c '.%s[]' %s > records.jsonl", path, line,
                             key, key, path);
        if (shown < 6 && used < sizeof keys)
            used += (size_t)snprintf(keys + used, sizeof keys - used, "%s\"%s\"",
                                     shown ? ", " : "", key);
        shown++;
    }
    if (!json_is_object(o) || shown == 0)
        return pesc_fail(err, "%s:%ld: no known format reads this record (an empty object or "
                         "no object); see pesc plugins for what each format reads", path, line);
    return pesc_fail(err, "%s:%ld: no known format reads a record with the keys %s%s: rename "
                     "them to those of a format (pesc plugins lists each format's keys), or "
                     "give --format to see what that format misses", path, line, keys,
                     shown > 6 ? ", ..." : "");
}

/* One parsed JSON value -> one record's tokens; errors carry path:line. */
static int make_record(record_tokens *t, json_t *o, const ds_load_options *lo, const char *path,
                       long line, pesc_error *err)
{
    ds_format f = lo->format;
    if (f == DS_AUTO && (f = detect_format(lo->formats, (const pesc_json *)o)) == DS_AUTO)
        return no_format(o, path, line, err);
    const ds_format_info *info = ds_formats_get(lo->formats, f);
    if (!info || !info->ops || !info->ops->convert)
        return pesc_fail(err, "%s:%ld: format %s does not read JSON records", path, line,
                         info ? info->name : "?");
    if (!(info->ops->flags & PESC_FORMAT_LINES) && !json_is_object(o))
        return pesc_fail(err, "%s:%ld: %s records must be JSON objects", path, line,
                         info->name);
    pesc_record_out out = {.vocab_size = lo->vocab_size};
    int rc = info->ops->convert(&format_host, (const pesc_json *)o, &out);
    rc = finish_record(t, &out, rc, info->name, lo, err);
    out_free(&out);
    if (rc != 0)
        pesc_fail_prefix(err, "%s:%ld", path, line);
    return rc;
}

/* ======================================================= reading files in records ===== */

/* Cuts a stream into JSON texts: JSONL lines, or the elements of one top-level array. */
typedef struct reader {
    pesc_stream *s;
    const char *path;
    char buf[1 << 16];
    size_t pos, len;
    int eof, array, started;
    long line;                   /* current line (1-based) */
    long array_line;             /* where the top-level array opened */
    char *item;                  /* the current JSON text */
    size_t item_len, item_cap;
    long item_line;
} reader;

static int rd_byte(reader *r, pesc_error *err)
{
    if (r->pos == r->len) {
        if (r->eof)
            return -1;
        ssize_t got = stream_read(r->s, r->buf, sizeof r->buf, err);
        if (got < 0)
            return -2;
        if (got == 0) {
            r->eof = 1;
            return -1;
        }
        r->pos = 0;
        r->len = (size_t)got;
    }
    int c = (unsigned char)r->buf[r->pos++];
    if (c == '\n')
        r->line++;
    return c;
}

/* A record's text is held whole while it is parsed: one longer than this is not an
 * instruction record (a file without newlines, or a device), and is refused before it has
 * taken the machine's memory. */
#define DS_MAX_RECORD_BYTES ((size_t)64 << 20)

/* Appends c to the current item: 0, or -1 with the message when the record is too long. */
static int item_put(reader *r, char c, pesc_error *err)
{
    if (r->item_len >= DS_MAX_RECORD_BYTES)
        return pesc_fail(err, "%s:%ld: a record longer than %zu MiB; a JSONL file holds one "
                         "record a line (is this the right file?)", r->path, r->item_line,
                         DS_MAX_RECORD_BYTES >> 20);
    if (r->item_len + 2 > r->item_cap) {
        r->item_cap = r->item_cap ? 2 * r->item_cap : 4096;
        r->item = xrealloc(r->item, r->item_cap);
    }
    r->item[r->item_len++] = c;
    r->item[r->item_len] = '\0';
    return 0;
}

/* A reader of path from its first line; NULL after the stream's error. */
/* path read, its messages calling it name */
static reader *rd_open(const char *path, const char *name, pesc_error *err)
{
    reader *r = xcalloc(1, sizeof *r);
    r->path = name;
    r->line = 1;
    r->s = stream_open_as(path, name, err);
    if (!r->s) {
        free(r);
        return NULL;
    }
    return r;
}

static void rd_close(reader *r)
{
    stream_close(r->s);
    free(r->item);
    free(r);
}

/* The byte k places after r->pos, read ahead without taking it: -1 past the end of the
 * file (or of what the buffer can hold), -2 on a read error. */
static int rd_peek(reader *r, size_t k, pesc_error *err)
{
    while (r->pos + k >= r->len && !r->eof) {
        memmove(r->buf, r->buf + r->pos, r->len - r->pos);
        r->len -= r->pos;
        r->pos = 0;
        if (r->len == sizeof r->buf)
            return -1;
        ssize_t got = stream_read(r->s, r->buf + r->len, sizeof r->buf - r->len, err);
        if (got < 0)
            return -2;
        r->eof = got == 0;
        r->len += (size_t)got;
    }
    return r->pos + k < r->len ? (unsigned char)r->buf[r->pos + k] : -1;
}

/* Steps over a UTF-8 byte order mark at r->pos, the start of the file or of a line (files
 * from Windows joined with cat carry one at each start): otherwise the record would be a
 * plain line that starts with it, or bad JSON whose invalid token cannot be seen. 0, or -1
 * on a read error. */
static int rd_skip_bom(reader *r, pesc_error *err)
{
    for (size_t k = 0; k < 3; k++) {
        int c = rd_peek(r, k, err);
        if (c == -2)
            return -1;
        if (c != (unsigned char)PESC_BOM[k])
            return 0;
    }
    r->pos += 3;
    return 0;
}

/* Whether the '[' at r->pos opens the file's one JSON array, told by what follows it on its
 * line: the line's end (an array written over lines), '{', '[', '"' or ']'. Anything else
 * ("[INST] hello [/INST]", "[my notes]", "[1] a footnote") starts a line of text. 1, 0, or
 * -1 on a read error. */
static int rd_opens_array(reader *r, pesc_error *err)
{
    for (size_t k = 1;; k++) {
        int c = rd_peek(r, k, err);
        if (c == -2)
            return -1;
        if (c != ' ' && c != '\t')
            return c == -1 || c == '\r' || c == '\n' || c == '{' || c == '[' || c == '"' ||
                   c == ']';
    }
}

/* The next JSON text (or plain line) into r->item: 1, 0 at the end, -1 on error. */
static int rd_next(reader *r, pesc_error *err)
{
    int c;
    r->item_len = 0;
    if (!r->started) {   /* a JSON array first means one JSON array; anything else is lines */
        r->started = 1;
        if (rd_skip_bom(r, err) != 0)
            return -1;
        while ((c = rd_byte(r, err)) == ' ' || c == '\t' || c == '\r' || c == '\n')
            ;
        if (c == -2) return -1;
        if (c == -1) return 0;
        r->pos--;   /* rd_byte took c from the buffer: it is still there */
        int array = c == '[' ? rd_opens_array(r, err) : 0;
        if (array < 0)
            return -1;
        if (array) {
            r->pos++;
            r->array = 1;
            r->array_line = r->line;
        }
    }
    if (!r->array) {
        for (;;) {
            r->item_len = 0;
            r->item_line = r->line;
            if (rd_skip_bom(r, err) != 0)
                return -1;
            while ((c = rd_byte(r, err)) >= 0 && c != '\n')
                if (item_put(r, (char)c, err) != 0)
                    return -1;
            if (c == -2) return -1;
            if (r->item_len && r->item[r->item_len - 1] == '\r')
                r->item[--r->item_len] = '\0';
            if (strspn(r->item ? r->item : "", " \t") < r->item_len)
                return 1;
            if (c == -1) return 0;
        }
    }
    /* inside the array: skip separators, then copy one value, counting depth outside strings */
    while ((c = rd_byte(r, err)) == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ',')
        ;
    if (c == -2) return -1;
    if (c == -1)
        return pesc_fail(err, "%s:%ld: the JSON array is not closed", r->path, r->line);
    if (c == ']') {
        /* only blanks may follow: a second array (files joined with cat) would be lost */
        long closed = r->line;
        while ((c = rd_byte(r, err)) == ' ' || c == '\t' || c == '\r' || c == '\n')
            ;
        if (c == -2) return -1;
        if (c == -1) return 0;
        if (closed == r->array_line)   /* a JSON array a line: its lines may be conversations */
            return pesc_fail(err, "%s:%ld: more after the JSON array's closing ']': a file holds "
                             "one array, or a record a line; if each line is one conversation's "
                             "list of messages, make each a record: jq -c '{messages: .}' %s > "
                             "records.jsonl (to join arrays of records: jq -s add)", r->path,
                             r->line, r->path);
        return pesc_fail(err, "%s:%ld: more after the JSON array's closing ']': a file holds one "
                         "array (to join arrays of records: jq -s add)", r->path, r->line);
    }
    r->item_line = r->line;
    int depth = 0, in_string = 0, escape = 0;
    for (;; c = rd_byte(r, err)) {
        if (c == -2) return -1;
        if (c == -1)
            return pesc_fail(err, "%s:%ld: the JSON array ends inside a value", r->path, r->line);
        if (!in_string && depth == 0 && (c == ',' || c == ']')) {
            r->pos--;   /* leave the separator for the next call */
            return 1;
        }
        if (item_put(r, (char)c, err) != 0)
            return -1;
        if (in_string) {
            if (escape) escape = 0;
            else if (c == '\\') escape = 1;
            else if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0) return 1;
        }
    }
}

const char *ds_json_text_problem(const json_error_t *jerr, char *buf, size_t n)
{
    const char *near = strstr(jerr->text, " near ");
    switch (json_error_code(jerr)) {
    case json_error_invalid_utf8:   /* position: the bytes before the bad one */
        snprintf(buf, n, "not valid UTF-8 (byte %d of the line: %.*s); convert the file to "
                 "UTF-8, e.g. iconv -f latin1 -t utf-8", jerr->position + 1,
                 near ? (int)(near - jerr->text) : (int)strlen(jerr->text), jerr->text);
        return buf;
    case json_error_null_character:
        snprintf(buf, n, "a NUL character (\\u0000) in a string (column %d): text cannot hold "
                 "one; remove it", jerr->column);
        return buf;
    default:
        return NULL;
    }
}

/* -1 with a message naming the place when the current item holds a NUL byte: a plain line
 * would be cut there (a C string ends at it) and JSON calls it an invalid token, neither of
 * which says what is wrong. Text holds none; a file in UTF-16, or a binary one, does. */
static int nul_byte(const reader *r, pesc_error *err)
{
    const char *nul = memchr(r->item, '\0', r->item_len);
    if (!nul)
        return 0;
    return pesc_fail(err, "%s:%ld: a NUL byte (column %td): a dataset is text, and a file in "
                     "UTF-16 or a binary one holds them; convert it to UTF-8 text", r->path,
                     r->item_line, nul - r->item + 1);
}

/* The table a name says path holds (.csv, .parquet, ..., compressed or not), or NULL: read
 * as lines, a CSV file passed for text (its header a record), a Parquet one failed as "not
 * valid UTF-8 text". pesc reads no table; its csv plugin writes metrics, and a plugin that
 * reads tables would be chosen before this is asked. */
static const char *table_kind(const char *path)
{
    static const char *const kinds[][2] = {
        {".csv", "CSV"}, {".tsv", "TSV"}, {".parquet", "Parquet"}, {".arrow", "Arrow"},
        {".feather", "Feather"}, {".xlsx", "Excel"}, {".xls", "Excel"}};
    size_t n = strlen(path);
    if (n > 3 && strcmp(path + n - 3, ".gz") == 0)
        n -= 3;
    else if (n > 4 && strcmp(path + n - 4, ".zst") == 0)
        n -= 4;
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        size_t k = strlen(kinds[i][0]);
        if (n > k && strncasecmp(path + n - k, kinds[i][0], k) == 0)
            return kinds[i][1];
    }
    return NULL;
}

static int table_refused(const char *path, const char *kind, int as_data, pesc_error *err)
{
    return pesc_fail(err, "%s: a %s file, which pesc does not read%s; convert it to JSONL, a "
                     "record a line (pandas: to_json(orient=\"records\", lines=True))", path,
                     kind, as_data ? " as a dataset (a plugin's format may: name it with "
                     "--format; pesc plugins lists them, and its csv plugin writes metrics)"
                     : "");
}

enum { MAX_WARNINGS_SHOWN = 10 };

/* The records a load skipped, and why it skipped the first (the error of a load that kept
 * none says it: the warnings may never reach the user, or come after a screen is drawn). */
typedef struct skips {
    long count;
    pesc_error first;
} skips;

/* A record that could not be used: fatal with strict, else a warning (the first few). */
static int bad_record(const ds_load_options *lo, const pesc_error *rec_err, skips *skipped,
                      pesc_error *err)
{
    if (lo->strict) {
        if (err)
            *err = *rec_err;
        return -1;
    }
    if (lo->warn && skipped->count < MAX_WARNINGS_SHOWN)
        fprintf(lo->warn, "warning: %s (record skipped)\n", rec_err->msg);
    if (skipped->count++ == 0)
        skipped->first = *rec_err;
    return 0;
}

/* ================================================== records in the token store ===== */

/* Between a record's append and the mapping at the end of its load, ids is NULL and labels
 * is NULL or this marker (the record has labels); map_records points both into the store. */
static const int32_t labels_pending[1];

/* Where a load starts, so that a failed one can leave d as it found it. */
typedef struct load_mark {
    int records;
    int64_t values;              /* in the store */
    long long predicted;
} load_mark;

static load_mark mark_load(const ds_records *d)
{
    return (load_mark){d->n, d->store ? token_store_length(d->store) : 0, d->predicted};
}

/* d as it was at start: the records kept since are gone. */
static void back_to(ds_records *d, load_mark start)
{
    d->n = start.records;
    d->predicted = start.predicted;
    if (d->store)
        token_store_truncate(d->store, start.values, NULL);
}

static ds_record *next_slot(ds_records *d, int *capacity)
{
    if (d->n == *capacity) {
        *capacity = *capacity ? 2 * *capacity : 256;
        d->items = xrealloc(d->items, (size_t)*capacity * sizeof *d->items);
    }
    return &d->items[d->n];
}

/* Appends a record: its tokens to the store (labels only where some differ from the ids:
 * NULL labels mean the same to every reader), its place to the index. A store that cannot
 * be made or written is fatal to the load, not a bad record. */
static int keep_record(ds_records *d, int *capacity, const record_tokens *t, int source,
                       long line, pesc_error *err)
{
    if (d->n == INT_MAX)
        return pesc_fail(err, "more than %d records: split the data", INT_MAX);
    if (!d->store && !(d->store = token_store_new(err)))
        return -1;
    size_t n = (size_t)t->len;
    int has_labels = t->labels && n > 0 && memcmp(t->labels, t->ids, n * sizeof *t->ids) != 0;
    int64_t offset = token_store_length(d->store);
    if (token_store_append(d->store, t->ids, n, err) != 0 ||
        (has_labels && token_store_append(d->store, t->labels, n, err) != 0))
        return -1;
    for (size_t i = 1; i < n; i++)
        d->predicted += !t->labels || t->labels[i] != -100;
    ds_record *r = next_slot(d, capacity);
    *r = (ds_record){.labels = has_labels ? labels_pending : NULL, .offset = offset,
                     .len = t->len, .source = source, .line = line};
    d->n++;
    return 0;
}

/* Points every record into the store's mapping. The store is mapped once a load has appended
 * its last record, not as the file grows: loading never reads tokens back, so mapping earlier
 * would only cost remaps, and one mapping per --data keeps every pointer still for the whole
 * run (the index keeps offsets, so the records of earlier loads move with the new mapping). */
static int map_records(ds_records *d, pesc_error *err)
{
    const int32_t *base;
    if (!d->store)
        return 0;
    if (token_store_map(d->store, &base, err) != 0)
        return -1;
    for (int i = 0; i < d->n; i++) {
        ds_record *r = &d->items[i];
        r->ids = base ? base + r->offset : NULL;   /* NULL: an empty store, records of 0 tokens */
        r->labels = r->labels ? r->ids + r->len : NULL;
    }
    return 0;
}

/* The common end of a load: the skip summary, an empty source is an error, the new records
 * are mapped; a load that failed leaves d with the records it had. */
static int finish_load(ds_records *d, load_mark start, const skips *skipped, const char *path,
                       const ds_load_options *lo, int rc, pesc_error *err)
{
    if (rc == 0 && lo->warn && skipped->count > MAX_WARNINGS_SHOWN)
        fprintf(lo->warn, "warning: %s: %ld records skipped in all\n", path, skipped->count);
    d->skipped += skipped->count;
    if (rc == 0 && d->n == start.records && skipped->count == 0)
        rc = pesc_fail(err, "%s: no usable records", path);
    else if (rc == 0 && d->n == start.records && skipped->count == 1)
        rc = pesc_fail(err, "%s: no usable records (its one record was skipped: %s)", path,
                       skipped->first.msg);
    else if (rc == 0 && d->n == start.records)
        rc = pesc_fail(err, "%s: no usable records (all %ld were skipped; the first: %s)", path,
                       skipped->count, skipped->first.msg);
    else if (rc == 0 && skipped->count >= 4 && skipped->count > d->n - start.records)
        /* a binary file, or another format: the few lines that pass are no dataset either */
        rc = pesc_fail(err, "%s: %ld of its %ld records were skipped (the first: %s): it is not "
                       "a dataset pesc reads as it stands; fix or convert it", path,
                       skipped->count, skipped->count + (d->n - start.records),
                       skipped->first.msg);
    if (rc == 0 && map_records(d, err) == 0)
        return 0;
    back_to(d, start);
    return -1;
}

/* The first JSON object of a file the built-ins read in lines, after lines of plain text
 * (plain of them, from line first_plain, the only records kept so far), once the object made
 * a record (prose may hold a line of JSON that is none): the file is JSONL, whose lines are
 * records each, and those were broken ones, not documents (a stray first line was trained on
 * as text, even with --strict). They go, as bad records do: fatal with strict, else skipped
 * with a warning. (A plugin's format that takes lines converts every line that is not JSON,
 * wherever it is: not for it.) */
static int plain_before_records(ds_records *d, load_mark start, const char *path,
                                long first_plain, long plain, long line,
                                const ds_load_options *lo, skips *skipped, pesc_error *err)
{
    back_to(d, start);
    pesc_error rec_err = {{0}};
    char more[64] = "";
    if (plain == 2)
        snprintf(more, sizeof more, " (nor is the plain line after it)");
    else if (plain > 2)
        snprintf(more, sizeof more, " (nor are the %ld plain lines after it)", plain - 1);
    pesc_fail(&rec_err, "%s:%ld: not a JSON record%s, though line %ld is one: a JSONL file's "
              "lines are records each; fix or remove it (plain text is a file of its own)",
              path, first_plain, more, line);
    if (bad_record(lo, &rec_err, skipped, err) != 0)
        return -1;
    skipped->count += plain - 1;
    return 0;
}

const ds_format_info *ds_source_format(const ds_formats *f, ds_format format, const char *path)
{
    const ds_format_info *info = ds_formats_get(f, format);
    if (format != DS_AUTO)
        return info && info->ops && info->ops->open ? info : NULL;
    int best = 0, n = ds_formats_count(f);
    const ds_format_info *chosen = NULL;
    for (int i = 1; i < n; i++) {
        info = ds_formats_get(f, (ds_format)i);
        int score = info->ops->open && info->ops->probe ? info->ops->probe(path) : 0;
        if (score > best) {
            best = score;
            chosen = info;
        }
    }
    return chosen;
}

/* Records a source format makes itself (open/next/close). */
static int load_source(ds_records *d, const char *path, const ds_format_info *info,
                       const ds_load_options *lo, pesc_error *err)
{
    const pesc_format_ops *ops = info->ops;
    char why[512] = "";
    void *source = ops->open(path, why, sizeof why);
    if (!source)
        return pesc_fail(err, "%s: %s", pesc_path_shown(path),
                         why[0] ? why : "the source cannot be opened");
    load_mark start = mark_load(d);
    int capacity = d->n, rc = 0;
    skips skipped = {0};
    for (long index = 1;; index++) {
        pesc_record_out out = {.vocab_size = lo->vocab_size};
        pesc_error rec_err = {{0}};
        record_tokens t = {0};
        int got = ops->next(&format_host, source, &out);
        if (got == 0) {
            out_free(&out);
            break;
        }
        if (got == -2) {
            rc = pesc_fail(err, "%s: record %ld: %s", path, index,
                           out.failed ? out.err : "the source failed");
            out_free(&out);
            break;
        }
        int ok = finish_record(&t, &out, got == 1 ? 0 : -1, info->name, lo, &rec_err) == 0;
        out_free(&out);
        if (ok) {
            rc = keep_record(d, &capacity, &t, lo->source, index, err);
            record_tokens_free(&t);
            if (rc != 0)
                break;
            continue;
        }
        pesc_fail_prefix(&rec_err, "%s: record %ld", path, index);
        if ((rc = bad_record(lo, &rec_err, &skipped, err)) != 0)
            break;
    }
    ops->close(source);
    return finish_load(d, start, &skipped, path, lo, rc, err);
}

/* 1 when a line starts as a JSON record does: '{' before a key, a '}' or the line's end, or
 * '[' before '{'. Prose seldom does ("{curly} braces", "[INST]"), and a JSONL line cut short
 * always does. */
static int starts_like_json(const char *line)
{
    const char *p = line + strspn(line, " \t");
    char open = *p;
    if (open != '{' && open != '[')
        return 0;
    p += 1 + strspn(p + 1, " \t");
    return open == '{' ? *p == '"' || *p == '}' || *p == '\0' : *p == '{';
}

/* Whether a line of a file read in lines (parsed: the line as JSON, NULL when it is not) is a
 * document of plain text, to be trained on as it stands. A plugin's format that takes lines
 * was promised every line that is not JSON (pesc-plugin(7)): its convert says what is wrong
 * with one, wherever it is (every_line). For the built-ins, before any line was a JSON object,
 * a line that is no JSON record is plain text: prose may start with a quote or a brace, and
 * be a number ("1984") or true. Once one was, the file is JSONL, and a line that is not JSON
 * is a broken record, not a document; so is one that starts as a record does, wherever it
 * is: a JSONL file's first line cut short is not text to train on. A JSON string is a text
 * record, unless a line before it was plain text: then it is prose that quotes someone, and
 * keeps its quotes. */
static int plain_line(const char *line, const json_t *parsed, int objects, int plain_before,
                      int every_line)
{
    if (!parsed && every_line)
        return 1;
    if (objects)
        return 0;
    if (!parsed)
        return !starts_like_json(line);
    if (json_is_object(parsed))
        return 0;
    if (json_is_string(parsed))
        return plain_before;
    return !(json_is_array(parsed) && json_is_object(json_array_get(parsed, 0)));
}

int dataset_load(ds_records *d, const char *path, const ds_load_options *lo, pesc_error *err)
{
    const ds_format_info *source = ds_source_format(lo->formats, lo->format, path);
    if (source)
        return load_source(d, path, source, lo, err);
    const ds_format_info *named = ds_formats_get(lo->formats, lo->format);
    if (!named)
        return pesc_fail(err, "%s: format %d is not in this registry", path, (int)lo->format);
    if (lo->format == DS_AUTO && table_kind(path))   /* named --format text reads lines */
        return table_refused(path, table_kind(path), 1, err);
    /* plain (non-JSON) lines are documents for auto and for formats that take lines */
    int lines = lo->format == DS_AUTO || (named->ops->flags & PESC_FORMAT_LINES);
    int every_line = lines && (int)lo->format >= N_BUILTIN_FORMATS;
    reader *r = rd_open(path, path, err);
    if (!r)
        return -1;
    load_mark start = mark_load(d);
    int capacity = d->n, rc = 0, got, first = 1, objects = 0, plain_before = 0;
    long plain_kept = 0, first_plain = 0;   /* records kept of plain lines before any object */
    skips skipped = {0};
    while ((got = rd_next(r, err)) > 0) {
        json_error_t jerr;
        pesc_error rec_err = {{0}};
        char why[PESC_ERROR_MAX / 2];
        if (nul_byte(r, err) != 0) {
            rc = -1;
            break;
        }
        json_t *o = json_loadb(r->item, r->item_len, JSON_DECODE_ANY, &jerr);
        int plain = lines && !r->array && plain_line(r->item, o, objects, plain_before,
                                                 every_line);
        if (plain) {
            json_decref(o);
            o = json_string(r->item);   /* a plain line is one string record */
            plain_before = 1;
        }
        record_tokens t = {0};
        int ok;
        if (!o && plain) {   /* json_string refuses only invalid UTF-8 */
            pesc_fail(&rec_err, "%s:%ld: not valid UTF-8 text; convert the file to UTF-8",
                      path, r->item_line);
            ok = 0;
        } else if (!o && !r->array && first && strspn(r->item, " \t{") == r->item_len) {
            /* a lone "{" first: one JSON document over many lines, where every line would be
             * skipped as bad JSON (and "}" read as a text record) */
            rc = pesc_fail(err, "%s:%ld: a JSON object over several lines: pesc reads JSONL (a "
                           "record a line) or one JSON array; write a record a line, e.g. "
                           "jq -c '.data[]' %s > records.jsonl for {\"data\": [...]}", path,
                           r->item_line, path);
            break;
        } else if (!o && ds_json_text_problem(&jerr, why, sizeof why)) {
            pesc_fail(&rec_err, "%s:%ld: %s", path, r->item_line, why);   /* the JSON may be fine */
            ok = 0;
        } else if (!o) {
            /* jansson reads the one line as a whole text: its "end of file" is the line's */
            const char *eof = strstr(jerr.text, "near end of file");
            pesc_fail(&rec_err, "%s:%ld: not valid JSON (column %d: %.*s%s)", path, r->item_line,
                      jerr.column, eof ? (int)(eof - jerr.text) : (int)strlen(jerr.text),
                      jerr.text, eof ? "at the end of the line: cut short?" : "");
            ok = 0;
        } else if (!objects && stats_is_log_record(o)) {
            /* its events' "text" would pass for text records; its first object tells (a log
             * cut at its start, by tail say, begins with an event or a step's record) */
            json_decref(o);
            rc = pesc_fail(err, "%s: a pesc run log (--log), not a dataset: pesc inspect or pesc "
                           "view reads it; give the data a run trains on", path);
            break;
        } else {
            int first_object = !objects && json_is_object(o);
            objects |= json_is_object(o);
            ok = make_record(&t, o, lo, path, r->item_line, &rec_err) == 0;
            /* a record, not prose that holds a JSON line: the plain lines go */
            if (ok && first_object && !every_line && plain_kept > 0 &&
                plain_kept == d->n - start.records &&
                (rc = plain_before_records(d, start, path, first_plain, plain_kept,
                                           r->item_line, lo, &skipped, err)) != 0) {
                record_tokens_free(&t);
                json_decref(o);
                break;
            }
        }
        json_decref(o);
        first = 0;
        if (ok) {
            rc = keep_record(d, &capacity, &t, lo->source, r->item_line, err);
            record_tokens_free(&t);
            if (rc != 0)
                break;
            if (plain && !objects && plain_kept++ == 0)
                first_plain = r->item_line;
            continue;
        }
        if ((rc = bad_record(lo, &rec_err, &skipped, err)) != 0)
            break;
    }
    if (got < 0)
        rc = -1;
    rc = finish_load(d, start, &skipped, path, lo, rc, err);
    rd_close(r);
    return rc;
}

int ds_each_json(const char *path, const char *name, ds_json_fn fn, void *ctx, pesc_error *err)
{
    name = name ? name : path;
    if (table_kind(name))
        return table_refused(name, table_kind(name), 0, err);
    reader *r = rd_open(path, name, err);
    if (!r)
        return -1;
    int rc = 0, got;
    while (rc == 0 && (got = rd_next(r, err)) > 0) {
        json_error_t jerr;
        json_t *o = NULL;
        char why[PESC_ERROR_MAX / 2];
        if (nul_byte(r, err) != 0)
            rc = -1;
        else if (!(o = json_loadb(r->item, r->item_len, 0, &jerr)) &&
                 ds_json_text_problem(&jerr, why, sizeof why))
            rc = pesc_fail(err, "%s:%ld: %s", name, r->item_line, why);
        else if (!o)
            rc = pesc_fail(err, "%s:%ld: not a JSON object (column %d: %s)", name,
                           r->item_line, jerr.column, jerr.text);
        else
            rc = fn(ctx, o, r->item_line, err);
        json_decref(o);
    }
    if (rc == 0 && got < 0)
        rc = -1;
    rd_close(r);
    return rc;
}

int dataset_load_tokens(ds_records *d, const char *path, int vocab_size, pesc_error *err)
{
    memset(d, 0, sizeof *d);
    ds_load_options lo = {.format = DS_TOKENS, .vocab_size = vocab_size, .strict = 1};
    int rc = dataset_load(d, path, &lo, err);
    if (rc != 0)
        dataset_free(d);
    return rc;
}

void dataset_free(ds_records *d)
{
    token_store_delete(d->store);
    free(d->items);
    memset(d, 0, sizeof *d);
}

/* 1 when path names something that exists (a file name, not a URL). */
static int exists(const char *path)
{
    return access(path, F_OK) == 0;
}

int ds_source_parse(ds_source *s, const char *arg, pesc_error *err)
{
    s->weight = 1.0;
    s->weight_text[0] = '\0';
    const char *colon = strrchr(arg, ':');
    size_t n = strlen(arg);
    if (colon && colon[1]) {
        char *end;
        errno = 0;
        double w = strtod(colon + 1, &end);
        int number = *end == '\0' && errno == 0;
        int prefix_exists = 0;
        if (colon > arg) {   /* the path before the last ':' */
            char *prefix = copy_bytes(arg, (size_t)(colon - arg));
            prefix_exists = exists(prefix);
            free(prefix);
        }
        if (number) {
            /* a file whose name ends in ":NUMBER" reads as PATH:WEIGHT; say how to name it */
            const char *file = exists(arg) ? arg : NULL;
            if (file && !prefix_exists)
                return pesc_fail(err, "--data %s: '%s' is read as a weight after the path %.*s, "
                                 "which does not exist; to read the file %s, give %s:1", arg,
                                 colon, (int)(colon - arg), arg, file, file);
            if (!(w > 0) || !(w <= DS_MAX_WEIGHT))
                return pesc_fail(err, "--data %s: the weight after ':' must be > 0 and at most "
                                 "%g (each record is taken W times an epoch)%s%s%s", arg,
                                 DS_MAX_WEIGHT, file ? "; to read the file, give " : "",
                                 file ? file : "", file ? ":1" : "");
            s->weight = w;
            snprintf(s->weight_text, sizeof s->weight_text, "%s", colon + 1);
            n = (size_t)(colon - arg);
        } else if (prefix_exists && !strchr(colon, '/') && !exists(arg)) {
            /* PATH:W with a W that is no number: PATH exists, the whole does not */
            return pesc_fail(err, "--data %s: no such file, and '%s' is no weight: a weight "
                             "after ':' is a number > 0 and at most %g", arg, colon + 1,
                             DS_MAX_WEIGHT);
        }
    }
    if (n == 0 || n >= sizeof s->path)
        return pesc_fail(err, "--data '%s': expected PATH or PATH:WEIGHT", arg);
    memcpy(s->path, arg, n);
    s->path[n] = '\0';
    return 0;
}

int ds_source_check(const ds_formats *f, ds_format format, const ds_source *s,
                    pesc_error *err)
{
    if (!s->weight_text[0] || exists(s->path) || ds_source_format(f, format, s->path))
        return 0;
    char whole[sizeof s->path + sizeof s->weight_text + 1];
    snprintf(whole, sizeof whole, "%s:%s", s->path, s->weight_text);
    if (ds_source_format(f, format, whole))
        return pesc_fail(err, "--data %s: no file %s (%s:1 is the source %s with weight 1)",
                         whole, s->path, whole, whole);
    return pesc_fail(err, "--data %s: no file %s (the number after the last ':' is read as "
                     "its weight)", whole, s->path);
}

/* ================================================================= batches =========== */

struct dataset {
    ds_records rec;
    ds_record *held;             /* (n_held) kept out of training: ds_options.holdout */
    int n_held;
    ds_options opt;
    double *weights;             /* (n_sources) */
    ds_stats stats;
    int32_t pad;
    uint32_t *order;             /* this epoch's record indices */
    long n_order;
    long epoch, position;
    uint64_t fingerprint, content;
};


/* Epoch e's order: each record weight times (the fraction drawn), then shuffled. */
static void build_order(dataset *ds, long epoch)
{
    uint64_t rng = ds->opt.seed ^ (0xd1b54a32d192ed03ull * (uint64_t)(epoch + 1));
    long cap = 0;
    ds->n_order = 0;
    for (int i = 0; i < ds->rec.n; i++) {
        double w = ds->weights[ds->rec.items[i].source];
        long copies = (long)floor(w);
        if (pesc_splitmix_uniform(&rng) < w - floor(w))
            copies++;
        for (long k = 0; k < copies; k++) {
            if (ds->n_order == cap) {
                cap = cap ? 2 * cap : 1024;
                ds->order = xrealloc(ds->order, (size_t)cap * sizeof *ds->order);
            }
            ds->order[ds->n_order++] = (uint32_t)i;
        }
    }
    if (ds->opt.shuffle)
        for (long i = ds->n_order - 1; i > 0; i--) {
            long j = (long)(pesc_splitmix64(&rng) % (uint64_t)(i + 1));
            uint32_t tmp = ds->order[i];
            ds->order[i] = ds->order[j];
            ds->order[j] = tmp;
        }
    ds->epoch = epoch;
    ds->position = 0;
}

static uint64_t fingerprint(const dataset *ds)
{
    uint64_t h = 0xcbf29ce484222325ull;
    uint64_t parts[] = {(uint64_t)ds->rec.n, (uint64_t)ds->stats.tokens, ds->opt.seed,
                        (uint64_t)ds->opt.seq, (uint64_t)ds->opt.batch, (uint64_t)ds->opt.pack,
                        (uint64_t)ds->opt.shuffle};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        h = (h ^ parts[i]) * 0x100000001b3ull;
    for (int i = 0; i < ds->stats.n_sources; i++) {
        uint64_t w;
        memcpy(&w, &ds->weights[i], sizeof w);
        h = (h ^ w) * 0x100000001b3ull;
    }
    return h;
}

/* What the records hold, in their order: the same counts over other files, or the same files
 * given in another order, would put the saved cursor on other records. Never 0 (which a
 * cursor from before it was kept holds). */
static uint64_t content_hash(const dataset *ds)
{
    return ds_records_hash(ds->rec.items, ds->rec.n);
}

uint64_t ds_records_hash(const ds_record *items, int n)
{
    const uint64_t prime = 0x100000001b3ull;
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < n; i++) {
        const ds_record *r = &items[i];
        h = (h ^ (uint64_t)r->source) * prime;
        h = (h ^ (uint64_t)r->len) * prime;
        for (int t = 0; t < r->len; t++)
            h = (h ^ (uint32_t)r->ids[t]) * prime;
        for (int t = 0; r->labels && t < r->len; t++)
            h = (h ^ (uint32_t)r->labels[t]) * prime;
    }
    return h ? h : 1;
}

int ds_record_first_predicted(const ds_record *r)
{
    if (!r->labels)
        return r->len > 1 ? 1 : r->len;
    for (int i = 1; i < r->len; i++)
        if (r->labels[i] != -100)
            return i;
    return r->len;
}

/* Moves the records ds_options.holdout asks for out of ds->rec into ds->held: a seeded choice
 * of them, in file order on both sides. */
static int hold_out(dataset *ds, pesc_error *err)
{
    double h = ds->opt.holdout;
    int n = ds->rec.n;
    long k = h < 1 ? lround(h * n) : (long)h;
    if (n < 2)   /* no X would do: say so rather than raise it, then lower it */
        return pesc_fail(err, "--eval-split %g: the --data holds one record, which cannot be "
                         "split into training and held-out records; give held-out data with "
                         "--eval-data PATH", h);
    if (k < 1)
        return pesc_fail(err, "--eval-split %g of %d records holds out none: raise it (a "
                         "fraction, or a count of records)", h, n);
    if (k >= n)
        return pesc_fail(err, "--eval-split %g of %d records leaves none to train on: lower it",
                         h, n);
    int *pick = xmalloc((size_t)n * sizeof *pick);
    char *held = xcalloc((size_t)n, 1);
    for (int i = 0; i < n; i++)
        pick[i] = i;
    uint64_t rng = ds->opt.seed ^ 0x6a09e667f3bcc909ull;   /* its own stream, not an epoch's */
    for (long i = 0; i < k; i++) {   /* the first k of a seeded shuffle */
        long j = i + (long)(pesc_splitmix64(&rng) % (uint64_t)(n - i));
        int tmp = pick[i];
        pick[i] = pick[j];
        pick[j] = tmp;
        held[pick[i]] = 1;
    }
    ds->held = xmalloc((size_t)k * sizeof *ds->held);
    int kept = 0;
    for (int i = 0; i < n; i++) {
        ds_record *r = &ds->rec.items[i];
        if (!held[i]) {
            ds->rec.items[kept++] = *r;
            continue;
        }
        ds->held[ds->n_held++] = *r;
        for (int t = 1; t < r->len; t++)   /* their tokens to learn are no longer training's */
            ds->rec.predicted -= !r->labels || r->labels[t] != -100;
    }
    ds->rec.n = kept;
    free(pick);
    free(held);
    return 0;
}

/* A row holds a record's first `seq` tokens, so only the answers among them are learnt. Counts
 * the records whose answers all lie past them (stats.answers_cut), and refuses data that
 * leaves nothing to learn at all. */
static int check_answers(dataset *ds, int seq, pesc_error *err)
{
    if (ds->rec.n > 0 && ds->rec.predicted == 0)
        return pesc_fail(err, "the --data records have no token to learn: every label is -100 "
                         "(or every record is one token long); check the data's masking");
    long answered = 0;
    int needed = INT_MAX;   /* the shortest --seq that would reach an answer */
    for (int i = 0; i < ds->rec.n; i++) {
        const ds_record *r = &ds->rec.items[i];
        int first = ds_record_first_predicted(r);
        if (first == r->len)
            continue;   /* nothing to learn in it, however long the rows */
        if (first < seq)
            answered++;
        else
            ds->stats.answers_cut++;
        needed = first + 1 < needed ? first + 1 : needed;
    }
    if (ds->rec.n > 0 && answered == 0 && needed > DS_MAX_SEQ)   /* raising --seq cannot help */
        return pesc_fail(err, "the --data records have no token to learn within --seq %d: every "
                         "answer lies past the first %d tokens of its record, the nearest %d "
                         "tokens in, past any --seq (%d at most): shorten the prompts before "
                         "the answers, or split the records", seq, seq, needed - 1, DS_MAX_SEQ);
    if (ds->rec.n > 0 && answered == 0)
        return pesc_fail(err, "the --data records have no token to learn within --seq %d: every "
                         "answer lies past the first %d tokens of its record; raise --seq (to "
                         "at least %d for the first answer)", seq, seq, needed);
    return 0;
}

/* The weights must leave an epoch at least one record on average (an empty one would be
 * drawn again and again) and at most DS_MAX_EPOCH (the order is 4 bytes a record). */
static int check_epoch_size(const dataset *ds, pesc_error *err)
{
    double expected = 0.0, most = 0.0;
    for (int i = 0; i < ds->stats.n_sources; i++) {
        expected += ds->weights[i] * (double)ds->stats.source_records[i];
        most += ceil(ds->weights[i]) * (double)ds->stats.source_records[i];
    }
    if (ds->rec.n > 0 && expected < 1.0)
        return pesc_fail(err, "the --data weights make an epoch of %.3g records on average; "
                         "raise them so that one holds at least one record", expected);
    if (most > DS_MAX_EPOCH)
        return pesc_fail(err, "the --data weights make an epoch of up to %.3g records, more "
                         "than %d; lower them", most, DS_MAX_EPOCH);
    return 0;
}

dataset *dataset_open(const ds_source *sources, int n_sources, const ds_load_options *lo,
                      const ds_options *o, pesc_error *err)
{
    if (n_sources < 1 || o->batch < 1 || o->seq < 2) {
        pesc_fail(err, "a dataset needs at least one --data, a batch >= 1 and a sequence >= 2");
        return NULL;
    }
    dataset *ds = xcalloc(1, sizeof *ds);
    ds->opt = *o;
    ds->weights = xmalloc((size_t)n_sources * sizeof *ds->weights);
    ds->stats.n_sources = n_sources;
    ds->stats.source_records = xcalloc((size_t)n_sources, sizeof *ds->stats.source_records);
    for (int i = 0; i < n_sources; i++) {
        ds_load_options one = *lo;
        one.source = i;
        ds->weights[i] = sources[i].weight;
        int before = ds->rec.n;
        if (dataset_load(&ds->rec, sources[i].path, &one, err) != 0) {
            dataset_delete(ds);
            return NULL;
        }
        ds->stats.source_records[i] = ds->rec.n - before;
    }
    if (ds->opt.holdout > 0) {
        if (hold_out(ds, err) != 0) {
            dataset_delete(ds);
            return NULL;
        }
        for (int i = 0; i < n_sources; i++)
            ds->stats.source_records[i] = 0;
        for (int i = 0; i < ds->rec.n; i++)
            ds->stats.source_records[ds->rec.items[i].source]++;
    }
    ds->stats.records = ds->rec.n;
    ds->stats.skipped = ds->rec.skipped;
    for (int i = 0; i < ds->rec.n; i++) {
        int len = ds->rec.items[i].len;
        ds->stats.tokens += len;
        if (len > o->seq) {
            ds->stats.truncated++;
            ds->stats.truncated_tokens += len - o->seq;
        }
    }
    if (check_answers(ds, o->seq, err) != 0 || check_epoch_size(ds, err) != 0) {
        dataset_delete(ds);
        return NULL;
    }
    ds->pad = lo->tok ? (tok_pad(lo->tok) >= 0 ? tok_pad(lo->tok) : tok_eos(lo->tok)) : 0;
    if (ds->pad < 0)
        ds->pad = 0;
    build_order(ds, 0);
    ds->fingerprint = fingerprint(ds);
    ds->content = content_hash(ds);
    return ds;
}

void dataset_delete(dataset *ds)
{
    if (!ds)
        return;
    dataset_free(&ds->rec);
    free(ds->held);
    free(ds->weights);
    free(ds->stats.source_records);
    free(ds->order);
    free(ds);
}

void ds_batch_init(ds_batch *b, int B, int T)
{
    memset(b, 0, sizeof *b);
    b->B = B;
    b->T = T;
    size_t n = (size_t)B * (size_t)T;
    b->ids = xmalloc(n * sizeof *b->ids);
    b->labels = xmalloc(n * sizeof *b->labels);
    b->targets = xmalloc(n * sizeof *b->targets);
    b->positions = xmalloc(n * sizeof *b->positions);
    b->doc_ids = xmalloc(n * sizeof *b->doc_ids);
    b->sources = xmalloc(n * sizeof *b->sources);
    b->row_tokens = xmalloc((size_t)B * sizeof *b->row_tokens);
}

void ds_batch_free(ds_batch *b)
{
    free(b->ids);
    free(b->labels);
    free(b->targets);
    free(b->positions);
    free(b->doc_ids);
    free(b->sources);
    free(b->row_tokens);
    memset(b, 0, sizeof *b);
}

/* The next record in order, moving to the next epoch when one ends; NULL when done. */
static const ds_record *peek_record(dataset *ds)
{
    while (ds->position >= ds->n_order) {
        if (ds->opt.epochs > 0 && ds->epoch + 1 >= ds->opt.epochs)
            return NULL;
        build_order(ds, ds->epoch + 1);
    }
    return &ds->rec.items[ds->order[ds->position]];
}

/* Lays record r at [at, at + n) of row b (n <= its length), document doc. */
static void place(ds_batch *b, int row, int at, const ds_record *r, int n, int doc)
{
    size_t base = (size_t)row * (size_t)b->T + (size_t)at;
    for (int i = 0; i < n; i++) {
        b->ids[base + i] = r->ids[i];
        b->labels[base + i] = r->labels ? r->labels[i] : r->ids[i];
        b->positions[base + i] = i;
        b->doc_ids[base + i] = doc;
        b->sources[base + i] = r->source;
    }
    for (int i = 0; i < n; i++) {
        int32_t next = i + 1 < n ? b->labels[base + i + 1] : -100;
        b->targets[base + i] = next;
        b->n_targets += next != -100;
    }
}

int ds_batch_trim(ds_batch *b, int multiple)
{
    int longest = 0;
    for (int r = 0; r < b->rows; r++)
        longest = b->row_tokens[r] > longest ? b->row_tokens[r] : longest;
    int T = multiple > 1 ? (longest + multiple - 1) / multiple * multiple : longest;
    if (T >= b->T || T <= 0)
        return b->T;
    int32_t *arrays[] = {b->ids, b->labels, b->targets, b->positions, b->doc_ids, b->sources};
    for (size_t k = 0; k < sizeof arrays / sizeof *arrays; k++)
        for (int r = 1; r < b->rows; r++)   /* forward: a row moves only to lower places */
            memmove(arrays[k] + (size_t)r * T, arrays[k] + (size_t)r * b->T,
                    (size_t)T * sizeof(int32_t));
    return T;
}

/* The padding after the `used` tokens of a row. */
static void end_row(ds_batch *b, int row, int used, int32_t pad)
{
    size_t base = (size_t)row * (size_t)b->T;
    for (int i = used; i < b->T; i++) {
        b->ids[base + i] = pad;
        b->labels[base + i] = b->targets[base + i] = -100;
        b->positions[base + i] = 0;
        b->doc_ids[base + i] = -1;
        b->sources[base + i] = -1;
    }
    b->row_tokens[row] = used;
}

/* Lays the next batch of B rows of T tokens into b, or with b NULL only moves past it: which
 * record goes where depends on lengths alone, so counting batches reads no token (and does
 * not page the token store in). Returns the rows filled. */
static int next_rows(dataset *ds, ds_batch *b, int B, int T)
{
    int rows = 0;
    if (b) {
        b->n_targets = 0;
        b->epoch = ds->epoch;
    }
    for (int row = 0; row < B; row++) {
        int used = 0, doc = 0;
        const ds_record *r;
        while ((r = peek_record(ds)) != NULL) {
            int n = r->len < T ? r->len : T;
            if (used + n > T)
                break;   /* does not fit: next row (a record is never split) */
            if (b && used == 0 && doc == 0 && row == 0)
                b->epoch = ds->epoch;
            if (b)
                place(b, row, used, r, n, doc);
            doc++;
            used += n;
            ds->position++;
            if (!ds->opt.pack)
                break;
        }
        if (b)
            end_row(b, row, used, ds->pad);
        if (used == 0)
            break;
        rows++;
    }
    if (b)
        b->rows = rows;
    return rows;
}

int dataset_next_batch(dataset *ds, ds_batch *b)
{
    return next_rows(ds, b, b->B, b->T);
}

long dataset_count_batches(dataset *ds, int B, int T)
{
    assert(ds->opt.epochs > 0);
    ds_cursor start = dataset_cursor(ds);
    long batches = 0;
    while (next_rows(ds, NULL, B, T) > 0)
        batches++;
    dataset_seek(ds, &start, NULL);   /* its own cursor: cannot fail */
    return batches;
}

ds_cursor dataset_cursor(const dataset *ds)
{
    return (ds_cursor){ds->epoch, ds->position, ds->fingerprint, ds->content};
}

double dataset_epochs_done(const dataset *ds)
{
    return (double)ds->epoch + (ds->n_order > 0 ? (double)ds->position / (double)ds->n_order : 0.0);
}

int dataset_seek(dataset *ds, const ds_cursor *c, pesc_error *err)
{
    if (c->fingerprint != ds->fingerprint)
        return pesc_fail(err, "the saved data cursor belongs to other data or batch options "
                         "(records, tokens, seed, --seq, --batch, --pack or weights changed): "
                         "give the --data files and :W weights the run had");
    if (c->content && c->content != ds->content)
        return pesc_fail(err, "the saved data cursor belongs to other data: the records hold "
                         "other tokens, or come in another order, though their counts are the "
                         "same: give the --data files the run had, in its order");
    if (c->epoch < 0 || c->position < 0)
        return pesc_fail(err, "the saved data cursor is invalid (the state is damaged)");
    build_order(ds, c->epoch);
    if (c->position > ds->n_order)
        return pesc_fail(err, "the saved data cursor is past the end of epoch %ld (the state "
                         "is damaged)", c->epoch);
    ds->position = c->position;
    return 0;
}

const ds_stats *dataset_stats(const dataset *ds) { return &ds->stats; }
const ds_records *dataset_records(const dataset *ds) { return &ds->rec; }

const ds_record *dataset_held_out(const dataset *ds, int *n)
{
    *n = ds->n_held;
    return ds->held;
}
