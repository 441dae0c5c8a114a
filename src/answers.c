/* answers — see answers.h. */
#include "answers.h"

#include <ctype.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>


int ans_match_parse(const char *name, ans_match *out, pesc_error *err)
{
    if (strcmp(name, "exact") == 0)
        *out = ANS_MATCH_EXACT;
    else if (strcmp(name, "number") == 0)
        *out = ANS_MATCH_NUMBER;
    else
        return pesc_fail(err, "%s: expected exact (the answer's text) or number (the "
                         "final number, GSM8K's \"#### N\")", name);
    return 0;
}

const char *ans_match_name(ans_match m)
{
    return m == ANS_MATCH_NUMBER ? "number" : "exact";
}

static int is_stop(int32_t id, const int32_t *stops, int n_stops)
{
    for (int i = 0; i < n_stops; i++)
        if (id == stops[i])
            return 1;
    return 0;
}

int ans_split(const ds_record *r, const int32_t *stops, int n_stops, int *prompt_len,
              int *ref_end)
{
    if (!r->labels)   /* the ids are their own labels: all answer, no prompt */
        return -1;
    int end = r->len;
    while (end > 0 && r->labels[end - 1] == -100)
        end--;
    int start = end;
    while (start > 0 && r->labels[start - 1] != -100)
        start--;
    if (start == 0 || start == end)
        return -1;
    int cut = start;
    while (cut < end && !is_stop(r->labels[cut], stops, n_stops))
        cut++;
    if (cut == start)
        return -1;
    *prompt_len = start;
    *ref_end = cut;
    return 0;
}

/* The number starting at p: an optional "-", an optional "$", digits (commas between them
 * allowed), and a "." with more digits; its sign, digits and point into out (n bytes). Its
 * length in the text, or 0 (out untouched) when no number starts at p. */
static size_t number_at(const char *p, char *out, size_t n)
{
    const char *s = p;
    char buf[64];
    size_t k = 0;
    if (*s == '-')
        buf[k++] = *s++;
    if (*s == '$')
        s++;
    if (!isdigit((unsigned char)*s))
        return 0;
    for (; isdigit((unsigned char)*s) || (*s == ',' && isdigit((unsigned char)s[1])); s++)
        if (*s != ',' && k + 2 < sizeof buf)
            buf[k++] = *s;
    if (*s == '.' && isdigit((unsigned char)s[1]))
        for (buf[k++] = *s++; isdigit((unsigned char)*s); s++)
            if (k + 1 < sizeof buf)
                buf[k++] = *s;
    buf[k] = '\0';
    snprintf(out, n, "%s", buf);
    return (size_t)(s - p);
}

int ans_number(const char *text, char *out, size_t n)
{
    const char *from = text, *marker = NULL;
    for (const char *h = strstr(text, "####"); h; h = strstr(h + 4, "####"))
        marker = h;
    if (marker)
        from = marker + 4;
    int found = 0;
    for (const char *p = from; *p;) {
        /* a number's own start, not the inside of a word or of another number */
        size_t len = p == text || !isalnum((unsigned char)p[-1]) ? number_at(p, out, n) : 0;
        if (!len) {
            p++;
            continue;
        }
        found = 1;
        if (marker)   /* the first after the final answer's marker */
            return 0;
        p += len;     /* else the last in the text: out holds each in turn */
    }
    return found ? 0 : -1;
}

/* text without whitespace at either end: its start, its length in *len */
static const char *trimmed(const char *text, size_t *len)
{
    while (isspace((unsigned char)*text))
        text++;
    size_t n = strlen(text);
    while (n > 0 && isspace((unsigned char)text[n - 1]))
        n--;
    *len = n;
    return text;
}

int ans_matches(ans_match m, const char *answer, const char *reference)
{
    if (m == ANS_MATCH_NUMBER) {
        char a[64], r[64];
        return ans_number(answer, a, sizeof a) == 0 && ans_number(reference, r, sizeof r) == 0 &&
               strtod(a, NULL) == strtod(r, NULL);
    }
    size_t na, nr;
    const char *a = trimmed(answer, &na), *r = trimmed(reference, &nr);
    return na == nr && memcmp(a, r, na) == 0;
}

/* The greedy answer to prompt (n tokens), at most room tokens, into out: the tokens before the
 * first stop id. */
static int generate(model *m, sampler *greedy, const int32_t *prompt, int n, int room,
                    const int32_t *stops, int n_stops, float *logits, tok_ids *out,
                    pesc_error *err)
{
    if (model_cache_reset(m, n + room, err) != 0 ||
        model_decode(m, prompt, n, logits, NULL, err) != 0)
        return -1;
    for (int k = 0; k < room; k++) {
        int32_t next = sampler_next(greedy, logits, m->config.vocab_size);
        if (is_stop(next, stops, n_stops))
            break;
        tok_ids_push(out, next);
        if (k + 1 < room && model_decode(m, &next, 1, logits, NULL, err) != 0)
            return -1;
    }
    return 0;
}

/* One JSONL line of --samples: where the record is, its reference, the answer, the verdict. */
static void write_sample(FILE *f, const char *source, long line, const char *reference,
                         const char *answer, int right)
{
    json_t *o = json_pack("{s:s, s:I, s:s, s:s, s:b}", "source", source, "line",
                          (json_int_t)line, "reference", reference, "answer", answer, "right",
                          right);
    char *text = o ? json_dumps(o, JSON_PRESERVE_ORDER) : NULL;
    if (text)
        fprintf(f, "%s\n", text);
    else   /* a text that is not UTF-8: the verdict alone */
        fprintf(f, "{\"line\": %ld, \"right\": %s}\n", line, right ? "true" : "false");
    free(text);
    json_decref(o);
}

void ans_answerer_init(ans_answerer *a, model *m, tokenizer *tok, const chat_template *tpl)
{
    memset(a, 0, sizeof *a);
    a->m = m;
    a->tok = tok;
    a->n_stops = template_stop_ids(tpl, tok, a->stops, 4);
    a->logits = xmalloc((size_t)m->config.vocab_size * sizeof *a->logits);
    sampler_init(&a->greedy, 0.0f, 0, 1.0f, 0);
}

void ans_answerer_free(ans_answerer *a)
{
    tok_ids_free(&a->out);
    sampler_free(&a->greedy);
    free(a->logits);
}

int ans_answer(ans_answerer *a, const ds_record *r, const ans_options *o, const char *source,
               ans_tally *t, pesc_error *err)
{
    int prompt, ref_end;
    if (ans_split(r, a->stops, a->n_stops, &prompt, &ref_end) != 0) {
        t->no_answer++;
        return 0;
    }
    char *reference = tok_decode(a->tok, r->labels + prompt, ref_end - prompt, 1, NULL);
    char number[64];
    long want = o->max_tokens ? o->max_tokens
                : o->match == ANS_MATCH_EXACT ? 2L * (ref_end - prompt) + 16 : 512;
    pesc_error full;
    int room = model_answer_room(a->m, prompt, (int)want, &full), rc = 0;
    if (o->match == ANS_MATCH_NUMBER && ans_number(reference, number, sizeof number) != 0)
        t->no_answer++;   /* nothing to compare a number with */
    else if (room < 0)
        t->too_long++;
    else if ((a->out.n = 0, generate(a->m, &a->greedy, r->ids, prompt, room, a->stops,
                                     a->n_stops, a->logits, &a->out, err)) != 0)
        rc = -1;
    else {
        char *answer = tok_decode(a->tok, a->out.ids, a->out.n, 1, NULL);
        int right = ans_matches(o->match, answer, reference);
        t->right += right;
        t->scored++;
        if (o->samples)
            write_sample(o->samples, source, r->line, reference, answer, right);
        free(answer);
    }
    free(reference);
    return rc;
}

int ans_run(model *m, tokenizer *tok, const chat_template *tpl, const ds_records *d,
            const ans_options *o, ans_tally *tally, pesc_error *err)
{
    ans_answerer a;
    ans_answerer_init(&a, m, tok, tpl);
    double shown = 0.0;
    int rc = 0;
    for (int i = 0; rc == 0 && i < d->n; i++) {
        const ds_record *r = &d->items[i];
        ans_tally *t = &tally[r->source];
        if (o->limit && t->scored >= o->limit)
            continue;
        if (pesc_now() - shown > 0.5) {
            pesc_show_phase("pesc eval", "answering record %d of %d", i + 1, d->n);
            shown = pesc_now();
        }
        if (ans_answer(&a, r, o, o->names ? o->names[r->source] : "", t, err) != 0)
            rc = pesc_fail_prefix(err, "record %d (line %ld)", i + 1, r->line);
    }
    pesc_show_phase("pesc eval", NULL);
    ans_answerer_free(&a);
    return rc;
}
