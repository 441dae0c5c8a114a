/* template — see template.h. */
#include "template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Each part is a format with placeholders {bos} {eos} {system} {user} {assistant}. */
struct chat_template {
    const char *name;
    const char *start;            /* once, before everything */
    const char *system;           /* NULL: the system text is merged into the first user turn */
    const char *system_merge;     /* how: a format with {system} and {user} */
    const char *default_system;   /* used when a conversation has none (alpaca), else NULL */
    const char *user;             /* a user turn up to where the assistant's text begins */
    const char *assistant;        /* labeled from {assistant} to the end (its end marker) */
    const char *separator;        /* between an assistant turn and the next user turn */
    /* after the assistant header of the last answer and of a generation prompt, untrained:
     * Qwen3's empty thinking block (its template's non-thinking mode); NULL: none */
    const char *final_header;
};

static const chat_template templates[] = {
    {.name = "camelidae", .start = "{bos}", .system = "### System:\n{system}\n",
     .user = "### Human:\n{user}\n### Assistant:\n", .assistant = "{assistant}{eos}",
     .separator = "\n"},
    {.name = "alpaca", .start = "{bos}", .system = "{system}\n\n",
     .default_system = "Below is an instruction that describes a task. Write a response that "
                       "appropriately completes the request.",
     .user = "### Instruction:\n{user}\n\n### Response:\n", .assistant = "{assistant}{eos}",
     .separator = "\n\n"},
    {.name = "chatml", .start = "", .system = "<|im_start|>system\n{system}<|im_end|>\n",
     .user = "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n",
     .assistant = "{assistant}<|im_end|>", .separator = "\n"},
    {.name = "qwen3", .start = "", .system = "<|im_start|>system\n{system}<|im_end|>\n",
     .user = "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n",
     .assistant = "{assistant}<|im_end|>", .separator = "\n",
     .final_header = "<think>\n\n</think>\n\n"},
    {.name = "llama2", .start = "", .system = NULL,
     .system_merge = "<<SYS>>\n{system}\n<</SYS>>\n\n{user}", .user = "{bos}[INST] {user} [/INST]",
     .assistant = " {assistant} {eos}", .separator = ""},
    {.name = "llama3", .start = "{bos}",
     .system = "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
     .user = "<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
     .assistant = "{assistant}<|eot_id|>", .separator = ""},
    {.name = "mistral", .start = "{bos}", .system = NULL, .system_merge = "{system}\n\n{user}",
     .user = "[INST] {user} [/INST]", .assistant = "{assistant}{eos}", .separator = ""},
    /* Phi-3's: no BOS (its released template writes none) */
    {.name = "phi3", .start = "", .system = "<|system|>\n{system}<|end|>\n",
     .user = "<|user|>\n{user}<|end|>\n<|assistant|>\n", .assistant = "{assistant}<|end|>",
     .separator = "\n"},
    /* Phi-4-mini's: Phi-3's markers with nothing between them */
    {.name = "phi4-mini", .start = "", .system = "<|system|>{system}<|end|>",
     .user = "<|user|>{user}<|end|><|assistant|>", .assistant = "{assistant}<|end|>",
     .separator = ""},
    /* Phi-4's (14B): chatml's markers, <|im_sep|> after the role, no newlines */
    {.name = "phi4", .start = "", .system = "<|im_start|>system<|im_sep|>{system}<|im_end|>",
     .user = "<|im_start|>user<|im_sep|>{user}<|im_end|><|im_start|>assistant<|im_sep|>",
     .assistant = "{assistant}<|im_end|>", .separator = ""},
    /* Granite 3's: each turn in role markers, ended by <|end_of_text|> and a newline */
    {.name = "granite", .start = "",
     .system = "<|start_of_role|>system<|end_of_role|>{system}<|end_of_text|>\n",
     .user = "<|start_of_role|>user<|end_of_role|>{user}<|end_of_text|>\n"
             "<|start_of_role|>assistant<|end_of_role|>",
     .assistant = "{assistant}<|end_of_text|>", .separator = "\n"},
    /* Gemma 3's: a user and a "model" role, each turn ended by <end_of_turn> and a newline;
     * no system role (the system text opens the first user turn) */
    {.name = "gemma", .start = "{bos}", .system = NULL, .system_merge = "{system}\n\n{user}",
     .user = "<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n",
     .assistant = "{assistant}<end_of_turn>", .separator = "\n"},
    {.name = "plain", .start = "{bos}", .system = "{system}\n\n", .user = "{user}\n",
     .assistant = "{assistant}{eos}", .separator = "\n"},
};

enum { N_TEMPLATES = sizeof templates / sizeof *templates };

const chat_template *template_find(const char *name)
{
    for (int i = 0; i < N_TEMPLATES; i++)
        if (strcmp(templates[i].name, name) == 0)
            return &templates[i];
    return NULL;
}

const char *template_name(const chat_template *tpl) { return tpl->name; }

const char *template_list(void)
{
    return "camelidae, alpaca, chatml, qwen3, llama2, llama3, mistral, phi3, phi4-mini, phi4, "
           "granite, gemma, plain";
}

/* ------------------------------------------------------------------ rendering -------- */

typedef struct render {
    char *s;
    size_t len, cap;
    size_t *bounds;     /* (2 * n_spans) labeled [start, end) byte ranges */
    int n_bounds, bounds_cap;
} render;

static void put(render *r, const char *p, size_t n)
{
    if (r->len + n + 1 > r->cap) {
        r->cap = 2 * (r->len + n + 1) + 256;
        r->s = xrealloc(r->s, r->cap);
    }
    memcpy(r->s + r->len, p, n);
    r->len += n;
    r->s[r->len] = '\0';
}

static void mark(render *r)
{
    if (r->n_bounds == r->bounds_cap) {
        r->bounds_cap = r->bounds_cap ? 2 * r->bounds_cap : 8;
        r->bounds = xrealloc(r->bounds, (size_t)r->bounds_cap * sizeof *r->bounds);
    }
    r->bounds[r->n_bounds++] = r->len;
}

typedef struct fill {
    const char *system, *user, *assistant;
    size_t system_len, user_len, assistant_len;
    const char *bos, *eos;
} fill;

/* Expands fmt; with label, the text from {assistant} to the end of fmt is one labeled span. */
static void expand(render *r, const char *fmt, const fill *f, int label)
{
    while (*fmt) {
        const char *open = strchr(fmt, '{');
        if (!open) {
            put(r, fmt, strlen(fmt));
            break;
        }
        put(r, fmt, (size_t)(open - fmt));
        const char *close = strchr(open, '}');
        size_t n = close ? (size_t)(close - open - 1) : 0;
        if (close && n == 3 && memcmp(open + 1, "bos", 3) == 0) put(r, f->bos, strlen(f->bos));
        else if (close && n == 3 && memcmp(open + 1, "eos", 3) == 0) put(r, f->eos, strlen(f->eos));
        else if (close && n == 6 && memcmp(open + 1, "system", 6) == 0) put(r, f->system, f->system_len);
        else if (close && n == 4 && memcmp(open + 1, "user", 4) == 0) put(r, f->user, f->user_len);
        else if (close && n == 9 && memcmp(open + 1, "assistant", 9) == 0) {
            if (label)
                mark(r);
            put(r, f->assistant, f->assistant_len);
        } else {
            put(r, open, 1);
            fmt = open + 1;
            continue;
        }
        fmt = close + 1;
    }
    if (label)
        mark(r);
}

static const char *token_text(const tokenizer *t, int32_t id)
{
    const char *s = id >= 0 ? tok_token(t, id) : NULL;
    return s ? s : "";
}

/* How an error names msgs[i]: by the JSON path it was read from, so that one numbering (from
 * 0, as jq counts) runs through every message about a record; else by its index. */
static const char *message_name(const tpl_message *msgs, int i, char *buf, size_t n)
{
    if (msgs[i].where)
        return msgs[i].where;
    snprintf(buf, n, "message %d (counting from 0)", i);
    return buf;
}

/* Renders the conversation; with prompt, stops after the next assistant header. */
static int render_conversation(const chat_template *tpl, const tokenizer *t,
                               const tpl_message *msgs, int n, int prompt, render *r,
                               pesc_error *err)
{
    fill f = {.bos = token_text(t, tok_bos(t)), .eos = token_text(t, tok_eos(t))};
    int i = 0;
    if (n > 0 && msgs[0].role == ROLE_SYSTEM) {
        f.system = msgs[0].content;
        f.system_len = msgs[0].len;
        i = 1;
    } else if (tpl->default_system) {
        f.system = tpl->default_system;
        f.system_len = strlen(tpl->default_system);
    }
    expand(r, tpl->start, &f, 0);
    if (f.system_len && tpl->system)
        expand(r, tpl->system, &f, 0);
    int turns = 0, merged_system = 0;
    char *merged = NULL, name[64];
    for (; i < n; i++) {
        const tpl_message *m = &msgs[i];
        if (m->role == ROLE_SYSTEM) {
            free(merged);
            return pesc_fail(err, "%s: a system message may only come first",
                             message_name(msgs, i, name, sizeof name));
        }
        if (m->role == ROLE_USER) {
            /* a user turn ends in the assistant's header, so a second one in a row would
             * follow an empty, unended assistant turn */
            if (turns > 0 && msgs[i - 1].role == ROLE_USER) {
                free(merged);
                return pesc_fail(err, "%s: a user message must follow an assistant message "
                                 "(two user messages in a row: join them into one)",
                                 message_name(msgs, i, name, sizeof name));
            }
            if (turns > 0)
                expand(r, tpl->separator, &f, 0);
            f.user = m->content;
            f.user_len = m->len;
            if (!tpl->system && f.system_len && !merged_system) {
                render tmp = {0};
                expand(&tmp, tpl->system_merge, &f, 0);
                merged = tmp.s;
                f.user = merged;
                f.user_len = tmp.len;
                free(tmp.bounds);
                merged_system = 1;
            }
            expand(r, tpl->user, &f, 0);
            turns++;
            /* before the last answer, unless it brings its own thinking, and in a prompt */
            int final = prompt ? i == n - 1
                               : i == n - 2 && msgs[n - 1].role != ROLE_USER &&
                                     !(msgs[n - 1].len >= 7 &&
                                       memcmp(msgs[n - 1].content, "<think>", 7) == 0);
            if (tpl->final_header && final)
                put(r, tpl->final_header, strlen(tpl->final_header));
            /* the prompt ends at the last user turn's assistant header */
            if (prompt && i == n - 1)
                break;
            continue;
        }
        if (turns == 0 || (i > 0 && msgs[i - 1].role != ROLE_USER)) {
            free(merged);
            return pesc_fail(err, "%s: an assistant message must follow a user message",
                             message_name(msgs, i, name, sizeof name));
        }
        f.assistant = m->content;
        f.assistant_len = m->len;
        /* an empty answer is context: its end marker alone would teach answering nothing */
        expand(r, tpl->assistant, &f, !prompt && m->role == ROLE_ASSISTANT && m->len > 0);
    }
    free(merged);
    if (turns == 0)
        return pesc_fail(err, "a conversation needs at least one user message");
    if (prompt && msgs[n - 1].role != ROLE_USER)
        return pesc_fail(err, "a prompt must end with a user message");
    return 0;
}

/* How many leading tokens of text[0, end) agree with the full encoding; *straddles is set
 * when the full encoding has a token that crosses offset end. */
static int agreeing_prefix(tokenizer *t, const char *text, size_t end, const tok_ids *full,
                           int *straddles, pesc_error *err)
{
    tok_ids prefix = {0};
    if (tok_encode(t, text, end, 0, &prefix, err) != 0)
        return -1;
    int n = 0;
    while (n < prefix.n && n < full->n && prefix.ids[n] == full->ids[n])
        n++;
    *straddles = n < prefix.n;
    tok_ids_free(&prefix);
    return n;
}

static int encode_render(tokenizer *t, const render *r, tok_ids *ids, tok_ids *labels,
                         pesc_error *err)
{
    tok_ids full = {0};
    if (tok_encode(t, r->s ? r->s : "", r->len, 0, &full, err) != 0)
        return -1;
    int base = ids->n, rc = 0, labeled = 0;
    for (int i = 0; i < full.n; i++) {
        tok_ids_push(ids, full.ids[i]);
        if (labels)
            tok_ids_push(labels, -100);
    }
    for (int k = 0; labels && k + 1 < r->n_bounds; k += 2) {
        int cross_a, cross_b;
        int a = agreeing_prefix(t, r->s, r->bounds[k], &full, &cross_a, err);
        int b = a < 0 ? -1 : agreeing_prefix(t, r->s, r->bounds[k + 1], &full, &cross_b, err);
        if (a < 0 || b < 0) {
            rc = -1;
            break;
        }
        /* a token crossing a boundary lies partly outside the span: it gets no label, but
         * for the spaces before an answer that SentencePiece folds into its first word
         * ("▁hi" of llama2's "[/INST] {assistant}"): that token is the answer's */
        size_t at = r->bounds[k];
        while (cross_a && at > 0 && r->s[at - 1] == ' ')
            at--;
        if (at < r->bounds[k]) {
            int cross_at, before = agreeing_prefix(t, r->s, at, &full, &cross_at, err);
            if (before < 0) {
                rc = -1;
                break;
            }
            cross_a = before == a && !cross_at ? 0 : cross_a;
        }
        for (int i = a + cross_a; i < b; i++)
            labels->ids[base + i] = full.ids[i];
        labeled += b > a + cross_a ? b - a - cross_a : 0;
    }
    tok_ids_free(&full);
    if (rc == 0 && labels && labeled == 0)
        return pesc_fail(err, "no assistant token is left to train on");
    return rc;
}

int template_encode(const chat_template *tpl, tokenizer *t, const tpl_message *msgs, int n,
                    tok_ids *ids, tok_ids *labels, pesc_error *err)
{
    render r = {0};
    int has_assistant = 0;
    for (int i = 0; i < n; i++)
        has_assistant |= msgs[i].role == ROLE_ASSISTANT && msgs[i].len > 0;
    int rc = has_assistant ? 0 : pesc_fail(err, "no assistant message with text to train on");
    if (rc == 0)
        rc = render_conversation(tpl, t, msgs, n, 0, &r, err);
    if (rc == 0)
        rc = encode_render(t, &r, ids, labels, err);
    free(r.s);
    free(r.bounds);
    return rc;
}

/* Whether a document rendered for tpl starts with BOS: the template's own start decides
 * (llama2 puts it in each user turn). */
static int starts_with_bos(const chat_template *tpl)
{
    return strstr(tpl->start, "{bos}") || strstr(tpl->user, "{bos}");
}

int template_encode_text(const chat_template *tpl, tokenizer *t, const char *text, size_t len,
                         tok_ids *ids, tok_ids *labels, pesc_error *err)
{
    fill f = {.bos = token_text(t, tok_bos(t)), .eos = token_text(t, tok_eos(t))};
    render r = {0};
    if (starts_with_bos(tpl))
        put(&r, f.bos, strlen(f.bos));
    put(&r, text, len);
    put(&r, f.eos, strlen(f.eos));
    int base = ids->n;
    int rc = tok_encode(t, r.s ? r.s : "", r.len, 0, ids, err);
    if (rc == 0 && ids->n == base)
        rc = pesc_fail(err, "empty text");
    for (int i = base; rc == 0 && labels && i < ids->n; i++)
        tok_ids_push(labels, ids->ids[i]);
    free(r.s);
    return rc;
}

int template_encode_bare(const chat_template *tpl, tokenizer *t, const tpl_message *msgs, int n,
                         tok_ids *ids, tok_ids *labels, pesc_error *err)
{
    /* a template of nothing but a document's frame, so the spans are labeled as in chats */
    const chat_template bare = {.name = "bare", .start = starts_with_bos(tpl) ? "{bos}" : "",
                                .system = "{system}", .user = "{user}",
                                .assistant = "{assistant}{eos}", .separator = ""};
    return template_encode(&bare, t, msgs, n, ids, labels, err);
}

int template_encode_prompt(const chat_template *tpl, tokenizer *t, const tpl_message *msgs,
                           int n, tok_ids *ids, pesc_error *err)
{
    render r = {0};
    int rc = render_conversation(tpl, t, msgs, n, 1, &r, err);
    if (rc == 0)
        rc = tok_encode(t, r.s ? r.s : "", r.len, 0, ids, err);
    free(r.s);
    free(r.bounds);
    return rc;
}

const char *template_suggest(const char *jinja)
{
    if (!jinja)
        return NULL;
    if (strstr(jinja, "<|im_sep|>"))   /* before chatml, whose markers it shares */
        return "phi4";
    if (strstr(jinja, "<|im_start|>"))
        return strstr(jinja, "<think>") ? "qwen3" : "chatml";
    if (strstr(jinja, "<|start_header_id|>"))
        return "llama3";
    if (strstr(jinja, "<|user|>") && strstr(jinja, "<|end|>"))
        return "phi3";
    if (strstr(jinja, "'<|' + message['role'] + '|>'") && strstr(jinja, "<|end|>"))
        return "phi4-mini";   /* its tags are made from the role's name */
    if (strstr(jinja, "[INST]"))
        return strstr(jinja, "<<SYS>>") ? "llama2" : "mistral";
    if (strstr(jinja, "<|start_of_role|>"))
        return "granite";
    if (strstr(jinja, "<start_of_turn>"))
        return "gemma";
    if (strstr(jinja, "### Human:") && strstr(jinja, "### Assistant:"))   /* plain text */
        return "camelidae";
    if (strstr(jinja, "### Instruction:") && strstr(jinja, "### Response:"))
        return "alpaca";
    return NULL;
}

const char *template_model_other(const tokenizer *t, const char *used)
{
    const char *own = t ? template_suggest(tok_chat_template(t)) : NULL;
    return own && strcmp(own, used) != 0 ? own : NULL;
}

int template_stop_ids(const chat_template *tpl, const tokenizer *t, int32_t *out, int max)
{
    int n = 0;
    if (tok_eos(t) >= 0 && n < max)
        out[n++] = tok_eos(t);
    /* the end marker: what follows {assistant}, trimmed of spaces, when it is one token */
    const char *end = strstr(tpl->assistant, "{assistant}") + strlen("{assistant}");
    while (*end == ' ')
        end++;
    if (strcmp(end, "{eos}") != 0 && *end) {
        int32_t id = tok_token_id(t, end);
        if (id >= 0 && id != tok_eos(t) && n < max)
            out[n++] = id;
    }
    return n;
}
