/* choices — see choices.h. */
#include "choices.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "dataset.h"
#include "model.h"   /* model_shift_targets: no model runs here */

/* ---- reading ---------------------------------------------------------------------------- */

static const char *string_at(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* HellaSwag's text as lm-evaluation-harness cleans it: trimmed, " [title]" a full stop,
 * other [tags] gone, double spaces single. In place. */
static void hellaswag_clean(char *s)
{
    size_t n = strlen(s), start = strspn(s, " \t\n\r\f\v");
    while (n > start && strchr(" \t\n\r\f\v", s[n - 1]))
        n--;
    memmove(s, s + start, n - start);
    s[n - start] = '\0';
    char *w = s;
    for (const char *r = s; *r;) {
        if (strncmp(r, " [title]", 8) == 0) {
            memcpy(w, ". ", 2);
            w += 2;
            r += 8;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
    w = s;
    for (const char *r = s; *r;) {
        const char *close = *r == '[' ? strchr(r, ']') : NULL;
        if (close)
            r = close + 1;
        else
            *w++ = *r++;
    }
    *w = '\0';
    w = s;
    for (const char *r = s; *r;) {   /* Python's replace("  ", " "): pairs, left to right */
        if (r[0] == ' ' && r[1] == ' ')
            r++;
        *w++ = *r++;
    }
    *w = '\0';
}

/* HellaSwag's passage as lm-evaluation-harness builds it: "activity: ctx_a Ctx_b", ctx_b
 * capitalised as Python does (its first letter up, the rest down; ASCII here). NULL when the
 * record lacks the parts (then its "ctx" is taken). */
static char *hellaswag_passage(const json_t *o)
{
    const char *label = string_at(o, "activity_label"), *a = string_at(o, "ctx_a"),
               *b = string_at(o, "ctx_b");
    if (!label || !a || !b)
        return NULL;
    size_t n = strlen(label) + strlen(a) + strlen(b) + 4;
    char *s = xmalloc(n);
    snprintf(s, n, "%s: %s %s", label, a, b);
    char *cap = s + strlen(label) + 2 + strlen(a) + 1;
    for (char *c = cap; *c; c++)
        if ((unsigned char)*c < 0x80)
            *c = (char)(c == cap ? toupper((unsigned char)*c) : tolower((unsigned char)*c));
    hellaswag_clean(s);
    return s;
}

/* The question, and whether its options continue it. */
static int read_text(mc_question *q, const json_t *o, const json_t **inner, pesc_error *err)
{
    static const char *const keys[] = {"question", "question_stem", "goal", "ctx"};
    const char *subject = string_at(o, "subject");
    if (subject && *subject)
        q->subject = xstrdup(subject);
    const json_t *question = json_object_get(o, "question");
    *inner = NULL;
    if (json_is_object(question)) {   /* ARC's own files: {"stem", "choices"} */
        *inner = question;
        const char *stem = string_at(question, "stem");
        if (!stem)
            return pesc_fail(err, "\"question\" is an object without a \"stem\" string");
        q->text = xstrdup(stem);
        return 0;
    }
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        const json_t *v = json_object_get(o, keys[i]);
        if (!v)
            continue;
        if (!json_is_string(v))
            return pesc_fail(err, "\"%s\" must be a string", keys[i]);
        q->continues = strcmp(keys[i], "ctx") == 0 || strcmp(keys[i], "question_stem") == 0;
        if (strcmp(keys[i], "ctx") == 0 && (q->text = hellaswag_passage(o)))
            return 0;
        q->text = xstrdup(json_string_value(v));
        if (strcmp(keys[i], "ctx") == 0)
            hellaswag_clean(q->text);
        return 0;
    }
    return pesc_fail(err, "no question: a multiple-choice record has \"question\" (MMLU, ARC), "
                     "\"question_stem\" (OpenBookQA), \"ctx\" (HellaSwag) or \"goal\" (PIQA)");
}

static int add_option(mc_question *q, const json_t *v, const char *where, pesc_error *err)
{
    if (!json_is_string(v))
        return pesc_fail(err, "%s[%d] must be a string", where, q->n_options);
    if (q->n_options == MC_MAX_OPTIONS)
        return pesc_fail(err, "%s: more than %d options", where, MC_MAX_OPTIONS);
    q->options[q->n_options++] = xstrdup(json_string_value(v));
    return 0;
}

/* The options, and their labels when the record gives them ("A", "1"; labels holds
 * n_options borrowed strings, or NULLs). */
static int read_options(mc_question *q, const json_t *o, const json_t *inner,
                        const char **labels, pesc_error *err)
{
    const json_t *list = inner ? json_object_get(inner, "choices") : NULL;
    const char *where = "question.choices";
    static const char *const keys[] = {"choices", "options", "endings"};
    for (size_t i = 0; !list && i < sizeof keys / sizeof *keys; i++)
        if ((list = json_object_get(o, keys[i])))
            where = keys[i];
    if (!list && json_object_get(o, "sol1")) {   /* PIQA */
        const json_t *sol2 = json_object_get(o, "sol2");
        if (!sol2)
            return pesc_fail(err, "\"sol1\" without \"sol2\"");
        if (add_option(q, json_object_get(o, "sol1"), "sol1", err) != 0 ||
            add_option(q, sol2, "sol2", err) != 0)
            return -1;
        return 0;
    }
    if (!list)
        return pesc_fail(err, "no options: a multiple-choice record has \"choices\" (a list, or "
                         "{\"text\": [...], \"label\": [...]}), \"endings\" or \"sol1\" and "
                         "\"sol2\"");
    if (json_is_object(list)) {   /* ARC and OpenBookQA on the hub: parallel text and label */
        const json_t *text = json_object_get(list, "text"), *label = json_object_get(list, "label");
        if (!json_is_array(text))
            return pesc_fail(err, "%s: {\"text\": [...], \"label\": [...]} needs its text list",
                             where);
        size_t i;
        const json_t *v;
        json_array_foreach(text, i, v) {
            if (add_option(q, v, "choices.text", err) != 0)
                return -1;
            labels[i] = json_string_value(json_array_get(label, i));
        }
    } else if (json_is_array(list)) {
        size_t i;
        const json_t *v;
        json_array_foreach(list, i, v) {
            if (json_is_object(v)) {   /* ARC's own files: [{"text", "label"}, ...] */
                if (add_option(q, json_object_get(v, "text"), where, err) != 0)
                    return -1;
                labels[i] = string_at(v, "label");
            } else if (add_option(q, v, where, err) != 0) {
                return -1;
            }
        }
    } else {
        return pesc_fail(err, "\"%s\" must be a list of options", where);
    }
    if (q->n_options < 2)
        return pesc_fail(err, "\"%s\" holds %d option%s: a question needs two or more", where,
                         q->n_options, q->n_options == 1 ? "" : "s");
    return 0;
}

/* "B" (or "2", "text of B") into the option's index: the labels the record gives; under
 * "answer" an option's text; a letter; digits, an index from 0 ("answer", "label") or from 1
 * ("answerKey": ARC numbers some questions' options 1 to 4). -1 when nothing matches. */
static int answer_of(const mc_question *q, const char *key, const char *s,
                     const char **labels)
{
    for (int i = 0; i < q->n_options; i++)
        if ((labels[i] && strcmp(labels[i], s) == 0) ||
            (strcmp(key, "answer") == 0 && strcmp(q->options[i], s) == 0))
            return i;
    if (s[0] >= 'A' && s[0] <= 'Z' && !s[1])
        return s[0] - 'A' < q->n_options ? s[0] - 'A' : -1;
    if (s[0] && strspn(s, "0123456789") == strlen(s) && strlen(s) < 4) {
        int v = atoi(s) - (strcmp(key, "answerKey") == 0);
        return v >= 0 && v < q->n_options ? v : -1;
    }
    return -1;
}

static int read_answer(mc_question *q, const json_t *o, const char **labels, pesc_error *err)
{
    static const char *const keys[] = {"answer", "answerKey", "label"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        const json_t *v = json_object_get(o, keys[i]);
        if (!v)
            continue;
        if (json_is_integer(v)) {
            long long a = json_integer_value(v);
            if (a < 0 || a >= q->n_options)
                return pesc_fail(err, "\"%s\": %lld is not an option's index (0 to %d)", keys[i],
                                 a, q->n_options - 1);
            q->answer = (int)a;
            return 0;
        }
        if (!json_is_string(v))
            return pesc_fail(err, "\"%s\" must be an option's index, label or text", keys[i]);
        if (!*json_string_value(v))   /* HellaSwag's test split hides its answers so */
            return pesc_fail(err, "\"%s\" is empty: a test split without its answers? Score "
                             "the validation split", keys[i]);
        q->answer = answer_of(q, keys[i], json_string_value(v), labels);
        if (q->answer < 0) {
            char shown[64];
            pesc_show_controls(shown, sizeof shown, json_string_value(v));
            return pesc_fail(err, "\"%s\": \"%s\" is none of the %d options (a label, a letter "
                             "from A, an index or an option's text)", keys[i], shown,
                             q->n_options);
        }
        return 0;
    }
    return pesc_fail(err, "no answer: a multiple-choice record has \"answer\" (MMLU), "
                     "\"answerKey\" (ARC, OpenBookQA) or \"label\" (HellaSwag, PIQA)");
}

/* An option without text has nothing to score: raw, it scored as the best of them (no
 * token, no loss); in a chat template it failed as "no assistant message with text to train
 * on", naming neither question nor option. 0, or -1 (q freed) naming both. */
static int empty_option(mc_question *q, pesc_error *err)
{
    for (int i = 0; i < q->n_options; i++) {
        if (q->options[i][0])
            continue;
        char shown[64];
        size_t n = pesc_show_controls(shown, sizeof shown, q->text);
        pesc_fail(err, "option %c (index %d) of the question \"%s%s\" is empty: every option "
                  "needs text to be scored; give it its text or leave the question out",
                  'A' + i, i, shown, n < strlen(q->text) ? "..." : "");
        mc_question_free(q);
        return -1;
    }
    return 0;
}

int mc_question_read(mc_question *q, const json_t *o, pesc_error *err)
{
    memset(q, 0, sizeof *q);
    const json_t *inner;
    const char *labels[MC_MAX_OPTIONS + 1] = {0};
    if (!json_is_object(o))
        return pesc_fail(err, "a multiple-choice record must be a JSON object");
    if (read_text(q, o, &inner, err) != 0 || read_options(q, o, inner, labels, err) != 0 ||
        read_answer(q, o, labels, err) != 0) {
        mc_question_free(q);
        return -1;
    }
    for (int i = 0; json_object_get(o, "endings") && i < q->n_options; i++)
        hellaswag_clean(q->options[i]);
    return empty_option(q, err);
}

void mc_question_free(mc_question *q)
{
    free(q->text);
    free(q->subject);
    for (int i = 0; i < q->n_options; i++)
        free(q->options[i]);
    memset(q, 0, sizeof *q);
}

typedef struct loading {
    mc_set *s;
    long limit;
    int cap;
    const char *path;
} loading;

static int take(void *ctx, const json_t *o, long line, pesc_error *err)
{
    loading *l = ctx;
    if (l->limit && l->s->n >= l->limit)
        return 1;   /* enough: stop reading */
    if (l->s->n == l->cap)
        l->s->items = xrealloc(l->s->items, (size_t)(l->cap = l->cap * 2 + 64) *
                                                sizeof *l->s->items);
    mc_question *q = &l->s->items[l->s->n];
    if (mc_question_read(q, o, err) != 0)
        return pesc_fail_prefix(err, "%s:%ld", l->path, line);
    q->line = line;
    l->s->n++;
    return 0;
}

int mc_load(mc_set *s, const char *path, long limit, pesc_error *err)
{
    memset(s, 0, sizeof *s);
    loading l = {.s = s, .limit = limit, .path = path};
    if (ds_each_json(path, NULL, take, &l, err) < 0) {
        mc_free(s);
        return -1;
    }
    if (s->n == 0)
        return pesc_fail(err, "%s: no questions in it", path);
    return 0;
}

void mc_free(mc_set *s)
{
    for (int i = 0; i < s->n; i++)
        mc_question_free(&s->items[i]);
    free(s->items);
    memset(s, 0, sizeof *s);
}

/* ---- layout ----------------------------------------------------------------------------- */

/* A growable string. */
typedef struct text {
    char *s;
    size_t len, cap;
} text;

static void put(text *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap)
        t->s = xrealloc(t->s, t->cap = (t->len + n + 1) * 2);
    memcpy(t->s + t->len, s, n);
    t->s[t->len += n] = '\0';
}

static void puts_(text *t, const char *s) { put(t, s, strlen(s)); }

/* What the question says before an answer: raw, "Question: Q\nAnswer:" (or the passage an
 * ending continues); in a chat template, the user's turn. With letters, the options listed. */
static void question_part(text *t, const mc_question *q, const mc_layout *l)
{
    int wrap = !l->tpl && !q->continues && !l->letters;
    if (wrap)
        puts_(t, "Question: ");
    puts_(t, q->text);
    if (l->letters)
        for (int i = 0; i < q->n_options; i++) {
            char head[8];
            snprintf(head, sizeof head, "\n%c. ", 'A' + i);
            puts_(t, head);
            puts_(t, q->options[i]);
        }
    if (wrap || (l->letters && !l->tpl))
        puts_(t, "\nAnswer:");
}

/* The answer an option is: its text, or its letter; raw, after a space. */
static void answer_part(text *t, const mc_question *q, int option, const mc_layout *l)
{
    if (!l->tpl)
        puts_(t, " ");
    if (l->letters) {
        char letter[2] = {(char)('A' + option), 0};
        puts_(t, letter);
    } else {
        puts_(t, q->options[option]);
    }
}

/* Raw: the examples, then the question; the option's tokens are what encoding the whole adds
 * to the encoding of what comes before it (lm-evaluation-harness's split). */
static int encode_raw(const mc_question *q, int option, const mc_layout *l, tokenizer *t,
                      tok_ids *ids, tok_ids *labels, size_t *bytes, pesc_error *err)
{
    text before = {0}, answer = {0};
    if (l->letters && q->subject) {   /* MMLU's first line */
        puts_(&before, "The following are multiple choice questions (with answers) about ");
        for (const char *c = q->subject; *c; c++)
            put(&before, *c == '_' ? " " : c, 1);
        puts_(&before, ".\n\n");
    }
    for (int i = 0; i < l->n_shots; i++) {
        question_part(&before, &l->shots[i], l);
        answer_part(&before, &l->shots[i], l->shots[i].answer, l);
        puts_(&before, "\n\n");
    }
    question_part(&before, q, l);
    answer_part(&answer, q, option, l);
    *bytes = answer.len;
    tok_ids context = {0};
    size_t start = before.len;
    put(&before, answer.s, answer.len);
    int rc = tok_encode(t, before.s, start, TOK_ADD_SPECIAL, &context, err);
    if (rc == 0)
        rc = tok_encode(t, before.s, before.len, TOK_ADD_SPECIAL, ids, err);
    if (rc == 0) {
        int split = context.n < ids->n ? context.n : ids->n - 1;   /* one token scored at least */
        for (int i = 0; i < ids->n; i++)
            tok_ids_push(labels, i >= split ? ids->ids[i] : -100);
    }
    tok_ids_free(&context);
    free(before.s);
    free(answer.s);
    return rc;
}

int mc_encode(const mc_question *q, int option, const mc_layout *l, tokenizer *t, tok_ids *ids,
              tok_ids *labels, size_t *bytes, pesc_error *err)
{
    ids->n = labels->n = 0;
    if (!l->tpl)
        return encode_raw(q, option, l, t, ids, labels, bytes, err);
    int n = 2 * l->n_shots + 2;
    tpl_message *msgs = xmalloc((size_t)n * sizeof *msgs);
    text *parts = xcalloc((size_t)n, sizeof *parts);
    for (int i = 0; i <= l->n_shots; i++) {
        const mc_question *s = i < l->n_shots ? &l->shots[i] : q;
        question_part(&parts[2 * i], s, l);
        answer_part(&parts[2 * i + 1], s, i < l->n_shots ? s->answer : option, l);
        msgs[2 * i] = (tpl_message){.role = ROLE_USER, .content = parts[2 * i].s,
                                    .len = parts[2 * i].len};
        msgs[2 * i + 1] = (tpl_message){.role = i < l->n_shots ? ROLE_ASSISTANT_UNTRAINED
                                                               : ROLE_ASSISTANT,
                                        .content = parts[2 * i + 1].s,
                                        .len = parts[2 * i + 1].len};
    }
    *bytes = parts[n - 1].len;
    int rc = template_encode(l->tpl, t, msgs, n, ids, labels, err);
    for (int i = 0; i < n; i++)
        free(parts[i].s);
    free(parts);
    free(msgs);
    return rc;
}

int mc_examples(const mc_set *from, const mc_question *q, int n, mc_question *out)
{
    int same = 0;
    for (int i = 0; q->subject && !same && i < from->n; i++)
        same = from->items[i].subject && strcmp(from->items[i].subject, q->subject) == 0;
    int got = 0;
    for (int i = 0; got < n && i < from->n; i++)
        if (!same || (from->items[i].subject && strcmp(from->items[i].subject, q->subject) == 0))
            out[got++] = from->items[i];
    return got;
}

int mc_batch_make(mc_batch *b, const mc_question *q, const mc_layout *l, tokenizer *t,
                  pesc_error *err)
{
    memset(b, 0, sizeof *b);
    b->K = q->n_options;
    for (int i = 0; i < b->K; i++) {
        if (mc_encode(q, i, l, t, &b->ids[i], &b->labels[i], &b->bytes[i], err) != 0) {
            mc_batch_free(b);
            return -1;
        }
        b->T = b->ids[i].n > b->T ? b->ids[i].n : b->T;
    }
    b->tokens = xcalloc((size_t)b->K * b->T, sizeof *b->tokens);
    b->targets = xmalloc((size_t)b->K * b->T * sizeof *b->targets);
    for (int i = 0; i < b->K; i++) {
        int32_t *row = b->targets + (size_t)i * b->T;
        memcpy(b->tokens + (size_t)i * b->T, b->ids[i].ids, (size_t)b->ids[i].n * sizeof *row);
        model_shift_targets(row, b->ids[i].ids, b->labels[i].ids, b->ids[i].n);
        for (int k = b->ids[i].n; k < b->T; k++)
            row[k] = -100;
    }
    return 0;
}

void mc_batch_free(mc_batch *b)
{
    for (int i = 0; i < MC_MAX_OPTIONS; i++) {
        tok_ids_free(&b->ids[i]);
        tok_ids_free(&b->labels[i]);
    }
    free(b->tokens);
    free(b->targets);
    memset(b, 0, sizeof *b);
}

/* ---- accuracy --------------------------------------------------------------------------- */

int mc_pick(const double *score, const size_t *bytes, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++) {
        double a = bytes ? score[i] / (double)(bytes[i] ? bytes[i] : 1) : score[i];
        double b = bytes ? score[best] / (double)(bytes[best] ? bytes[best] : 1) : score[best];
        if (a > b)
            best = i;
    }
    return best;
}

void mc_tally_add(mc_tally *t, const mc_question *q, const double *score, const size_t *bytes)
{
    t->questions++;
    t->right += mc_pick(score, NULL, q->n_options) == q->answer;
    t->right_norm += mc_pick(score, bytes, q->n_options) == q->answer;
    t->chance += 1.0 / q->n_options;
}

double mc_stderr(double p, long n)
{
    return n > 1 ? sqrt(p * (1.0 - p) / (double)(n - 1)) : 0.0;
}
