/* answers — see answers.h. */
#include "answers.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


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

/* One JSONL line of --samples: where the record is, its reference, the answer, the verdict. */
static void write_sample(FILE *f, long step, const char *source, long line,
                         const char *reference, const char *answer, int right)
{
    json_t *o = json_pack("{s:s, s:I, s:s, s:s, s:b}", "source", source, "line",
                          (json_int_t)line, "reference", reference, "answer", answer, "right",
                          right);
    if (o && step >= 0) {   /* first, for reading a run's answers step by step */
        json_t *with = json_pack("{s:I}", "step", (json_int_t)step);
        json_object_update(with, o);
        json_decref(o);
        o = with;
    }
    char *text = o ? json_dumps(o, JSON_PRESERVE_ORDER) : NULL;
    if (text)
        fprintf(f, "%s\n", text);
    else if (step >= 0)   /* a text that is not UTF-8: the verdict alone */
        fprintf(f, "{\"step\": %ld, \"line\": %ld, \"right\": %s}\n", step, line,
                right ? "true" : "false");
    else
        fprintf(f, "{\"line\": %ld, \"right\": %s}\n", line, right ? "true" : "false");
    free(text);
    json_decref(o);
}

/* A samples line is short next to this; a first line past it (a file without line ends) is
 * not read whole. */
#define SAMPLE_LINE_MAX ((size_t)4 << 20)

int ans_samples_file(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
        return 1;   /* nothing there to lose (a device or FIFO is the open's to judge) */
    FILE *f = fopen(path, "r");
    if (!f)
        return 1;   /* the open that follows says why */
    size_t cap = 4096, n = 0;
    char *line = xmalloc(cap);
    for (int c; (c = getc(f)) != EOF && c != '\n' && n < SAMPLE_LINE_MAX;) {
        if (n + 2 > cap)
            line = xrealloc(line, cap *= 2);
        line[n++] = (char)c;
    }
    line[n] = '\0';
    fclose(f);
    json_t *o = json_loads(line, 0, NULL);
    /* its line and verdict: write_sample's fallback for text that is not UTF-8 has no more */
    int ours = json_is_object(o) && json_is_integer(json_object_get(o, "line")) &&
               json_is_boolean(json_object_get(o, "right"));
    json_decref(o);
    free(line);
    return ours;
}

/* Where the file's whole lines end: after its last newline (0: there is none). -1 when it
 * cannot be read. */
static off_t whole_lines_end(int fd, off_t size)
{
    char buf[4096];
    off_t end = size;
    while (end > 0) {   /* back to the last newline */
        size_t n = end < (off_t)sizeof buf ? (size_t)end : sizeof buf;
        if (pread(fd, buf, n, end - (off_t)n) != (ssize_t)n)
            return -1;
        size_t at = n;
        while (at > 0 && buf[at - 1] != '\n')
            at--;
        if (at > 0)
            return end - (off_t)(n - at);
        end -= (off_t)n;
    }
    return 0;
}

/* The step a samples line is of, or -1 when it names none (write_sample's verdict alone). */
static long line_step(const char *line, size_t len)
{
    json_t *o = json_loadb(line, len, 0, NULL);
    json_t *step = json_object_get(o, "step");
    long value = json_is_integer(step) && json_integer_value(step) >= 0
                     ? (long)json_integer_value(step) : -1;
    json_decref(o);
    return value;
}

/* The start of the first line in [from, whole) that is not of a step up to last_step (a line
 * without a step goes with the one before it): whole when every line is. -1 when the file
 * cannot be read. */
static off_t first_line_past(FILE *f, off_t from, off_t whole, long last_step)
{
    if (fseeko(f, from, SEEK_SET) != 0)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    off_t at = from;
    int kept = 1;   /* a stepless line at from goes with the kept lines before it */
    while (at < whole && (n = getline(&line, &cap, f)) > 0) {
        long step = line_step(line, (size_t)n);
        if (step >= 0)
            kept = step <= last_step;
        if (!kept)
            break;
        at += n;
    }
    int failed = ferror(f);
    free(line);
    return failed ? -1 : at;
}

int ans_samples_cut(const char *path, long long from, long last_step, pesc_error *err)
{
    FILE *f = fopen(path, "r+");
    if (!f)
        return errno == ENOENT ? 0 : pesc_fail(err, "%s: %s", path, strerror(errno));
    int fd = fileno(f);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return 0;   /* a device or a FIFO: nothing there to cut */
    }
    errno = 0;
    off_t whole = whole_lines_end(fd, st.st_size), keep = whole;
    char before = '\n';
    if (whole >= 0 && from >= 0 && from <= whole &&
        (from == 0 || pread(fd, &before, 1, (off_t)from - 1) == 1) && before == '\n')
        keep = first_line_past(f, (off_t)from, whole, last_step);
    int rc = 0;
    if (keep < 0)
        rc = pesc_fail(err, "%s: %s", path, strerror(errno ? errno : EIO));
    else if (keep < st.st_size && ftruncate(fd, keep) != 0)
        rc = pesc_fail(err, "%s: %s", path, strerror(errno));
    fclose(f);
    return rc;
}

void ans_answerer_init(ans_answerer *a, model *m, tokenizer *tok, const chat_template *tpl,
                       int batch)
{
    memset(a, 0, sizeof *a);
    a->m = m;
    a->tok = tok;
    a->n_stops = template_stop_ids(tpl, tok, a->stops, 4);
    a->batch = batch < 1 ? ANS_BATCH : batch > ANS_BATCH_MAX ? ANS_BATCH_MAX : batch;
    a->logits = xmalloc((size_t)a->batch * m->config.vocab_size * sizeof *a->logits);
    sampler_init(&a->greedy, 0.0f, 0, 1.0f, 0);
}

void ans_answerer_free(ans_answerer *a)
{
    sampler_free(&a->greedy);
    free(a->logits);
}

/* A record being answered: where its prompt ends, the most tokens its answer may take and its
 * reference's text. */
typedef struct pending {
    const ds_record *r;
    ans_tally *t;
    const char *source;
    int prompt, room;
    char *reference;
} pending;

/* Whether r is to be answered (into *p), or is tallied as not scored (or skipped, its tally's
 * limit reached counting the n already queued). */
static int queue(ans_answerer *a, const ds_record *r, ans_tally *t, const char *source,
                 const pending *queued, int n, const ans_options *o, pending *p)
{
    long taken = t->scored;
    for (int i = 0; o->limit && i < n; i++)
        taken += queued[i].t == t;
    if (o->limit && taken >= o->limit)
        return 0;
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
    int room = model_answer_room(a->m, prompt, (int)want, &full);
    if (o->match == ANS_MATCH_NUMBER && ans_number(reference, number, sizeof number) != 0)
        t->no_answer++;   /* nothing to compare a number with */
    else if (room < 0)
        t->too_long++;
    else {
        *p = (pending){.r = r, .t = t, .source = source, .prompt = prompt, .room = room,
                       .reference = reference};
        return 1;
    }
    free(reference);
    return 0;
}

/* The next tokens of the k answers p[at[i]] from rows 0 to k - 1 of a->logits into picks:
 * each drawn by its own sampler (or greedily), the rows at once on the host's threads, so
 * that sampling many answers does not wait on one core. 0, or -1 when a row's logits have
 * no finite largest value (the model overflows: an answer of garbage would be scored). */
static int draw(ans_answerer *a, const ans_prompt *p, const int *at, int k, int32_t *picks,
                pesc_error *err)
{
    int V = a->m->config.vocab_size;
#pragma omp parallel for schedule(dynamic, 1) if (k > 1)
    for (int i = 0; i < k; i++) {
        sampler *s = p[at[i]].s ? p[at[i]].s : &a->greedy;   /* greedy: no state */
        picks[i] = sampler_next(s, a->logits + (size_t)i * V, V);
    }
    for (int i = 0; i < k; i++)
        if (picks[i] < 0)
            return model_fail_logits(a->m, err);
    return 0;
}

/* id, the next token of q's answer: 1 while the answer goes on, 0 when an end marker or its
 * room ends it. */
static int take(ans_answerer *a, ans_prompt *q, int32_t id)
{
    if (is_stop(id, a->stops, a->n_stops))
        q->ended = 1;
    else
        tok_ids_push(&q->out, id);
    return !(q->done = q->ended || q->out.n >= q->room);
}

/* The tokens of a pass of prompts at most, unless one is longer */
#define PROMPT_TOKENS 4096

/* The prompts p[at[0, k)] into slots[0, k), as many a pass as PROMPT_TOKENS hold padded to the
 * longest of them: the logits of each one's last token into row i of a->logits. */
static int prompts(ans_answerer *a, const ans_prompt *p, const int *at, const int *slots,
                   int k, pesc_error *err)
{
    int V = a->m->config.vocab_size, rc = 0;
    for (int first = 0, n; rc == 0 && first < k; first += n) {
        int T = p[at[first]].len, lens[ANS_BATCH_MAX];
        for (n = 1; first + n < k; n++) {
            int longer = p[at[first + n]].len > T ? p[at[first + n]].len : T;
            if ((size_t)(n + 1) * longer > PROMPT_TOKENS)
                break;
            T = longer;
        }
        int32_t *rows = xcalloc((size_t)n * T, sizeof *rows);
        for (int i = 0; i < n; i++) {
            lens[i] = p[at[first + i]].len;
            memcpy(rows + (size_t)i * T, p[at[first + i]].ids, (size_t)lens[i] * sizeof *rows);
        }
        rc = model_decode_prompts(a->m, slots + first, rows, lens, n, T,
                                  a->logits + (size_t)first * V, err);
        free(rows);
    }
    return rc;
}

/* The slots free (held[s] < 0) take the next prompts waiting (from *next on), a pass of
 * prompts for them all, and each its first token; again while a first token ends an answer
 * and prompts wait. A prompt without room for an answer ends at once. The answers ended, or
 * -1. */
static int fill(ans_answerer *a, ans_prompt *p, int n, int *next, int *held, int slots,
                pesc_error *err)
{
    int ended = 0;
    for (;;) {
        int at[ANS_BATCH_MAX], to[ANS_BATCH_MAX], k = 0;
        for (int s = 0; s < slots && *next < n; s++) {
            for (; *next < n && p[*next].room <= 0; (*next)++) {
                p[*next].done = 1;
                ended++;
            }
            if (held[s] < 0 && *next < n) {
                at[k] = held[s] = (*next)++;
                to[k++] = s;
            }
        }
        if (k == 0)
            return ended;
        /* longest first, so that a pass pads its prompts to lengths near their own */
        for (int i = 1; i < k; i++)
            for (int j = i; j > 0 && p[at[j]].len > p[at[j - 1]].len; j--) {
                int t = at[j];
                at[j] = at[j - 1];
                at[j - 1] = t;
                t = to[j];
                to[j] = to[j - 1];
                to[j - 1] = t;
            }
        int32_t picks[ANS_BATCH_MAX];
        if (prompts(a, p, at, to, k, err) != 0 || draw(a, p, at, k, picks, err) != 0)
            return -1;
        for (int i = 0; i < k; i++)
            if (!take(a, &p[at[i]], picks[i])) {
                held[to[i]] = -1;
                ended++;
            }
    }
}

int ans_generate(ans_answerer *a, ans_prompt *p, int n, pesc_error *err)
{
    int capacity = 1, greedy = 1;
    if (n == 0)
        return 0;
    for (int i = 0; i < n; i++) {
        p[i].out.n = 0;
        p[i].ended = p[i].done = 0;
        if (p[i].room > 0 && p[i].len + p[i].room > capacity)
            capacity = p[i].len + p[i].room;
        greedy &= !p[i].s;
    }
    int slots = model_cache_slots_fitting(a->m, capacity, n < a->batch ? n : a->batch);
    int held[ANS_BATCH_MAX], step[ANS_BATCH_MAX], at[ANS_BATCH_MAX], next = 0;
    int32_t ids[ANS_BATCH_MAX], picks[ANS_BATCH_MAX];
    if (model_cache_slots(a->m, slots, capacity, err) != 0)
        return -1;
    for (int s = 0; s < slots; s++)
        held[s] = -1;
    /* continuous batching: a slot whose answer ends takes the next prompt, so every step
     * carries as many answers as there are slots while prompts wait (not a batch's longest
     * answer alone at its end). When every prompt is greedy the steps' picks are the
     * backend's, k ids back a step, not k rows of logits (a prompt's first pick is the
     * host's, from its logits). */
    for (long told = a->made, ended;;) {
        if ((ended = fill(a, p, n, &next, held, slots, err)) < 0)
            return -1;
        a->made += ended;
        int k = 0;
        for (int s = 0; s < slots; s++)
            if (held[s] >= 0) {
                const tok_ids *out = &p[held[s]].out;
                step[k] = s;
                at[k] = held[s];
                ids[k++] = out->ids[out->n - 1];
            }
        if (k == 0)
            return 0;
        if ((greedy ? model_decode_step_greedy(a->m, step, ids, k, picks, err)
                    : model_decode_step(a->m, step, ids, k, a->logits, err)) != 0)
            return -1;
        if (!greedy && draw(a, p, at, k, picks, err) != 0)
            return -1;
        for (int i = 0; i < k; i++)
            if (!take(a, &p[at[i]], picks[i])) {
                held[step[i]] = -1;
                a->made++;
            }
        if (a->made > told && a->answered && a->answered(a->ctx, told = a->made) != 0)
            return 1;
    }
}

/* The answers of p[0, n): generated, matched, tallied. 0, 1 when a->answered stopped them
 * (nothing tallied), or -1. */
static int answer_group(ans_answerer *a, pending *p, int n, const ans_options *o,
                        pesc_error *err)
{
    ans_prompt *g = xcalloc((size_t)n, sizeof *g);
    for (int i = 0; i < n; i++)
        g[i] = (ans_prompt){.ids = p[i].r->ids, .len = p[i].prompt, .room = p[i].room};
    int rc = ans_generate(a, g, n, err);
    for (int i = 0; i < n; i++) {
        if (rc == 0) {
            char *answer = tok_decode(a->tok, g[i].out.ids, g[i].out.n, 1, NULL);
            int right = ans_matches(o->match, answer, p[i].reference);
            p[i].t->right += right;
            p[i].t->scored++;
            p[i].t->cut += !g[i].ended;
            if (o->samples)
                write_sample(o->samples, o->step, p[i].source, p[i].r->line, p[i].reference,
                             answer, right);
            free(answer);
        }
        free(p[i].reference);
        tok_ids_free(&g[i].out);
    }
    free(g);
    return rc;
}

int ans_answer_many(ans_answerer *a, const ds_record *const *records, ans_tally *const *tallies,
                    const char *const *sources, int n, const ans_options *o, pesc_error *err)
{
    int window = a->batch * ANS_QUEUE, rc = 0;
    pending *p = xcalloc((size_t)window, sizeof *p);
    for (int i = 0; rc == 0 && i < n;) {
        int queued = 0;
        for (; i < n && queued < window; i++)
            queued += queue(a, records[i], tallies[i], sources ? sources[i] : "", p, queued, o,
                            &p[queued]);
        if (queued > 0 && (rc = answer_group(a, p, queued, o, err)) < 0)
            pesc_fail_prefix(err, "answering the records of lines %ld to %ld", p[0].r->line,
                             p[queued - 1].r->line);
    }
    free(p);
    return rc;
}

/* ans_run's progress on stderr, twice a second at most */
typedef struct progress {
    double shown;
    int total;
} progress;

static int show_progress(void *ctx, long made)
{
    progress *pr = ctx;
    if (pesc_now() - pr->shown > 0.5) {
        pesc_show_phase("pesc eval", "%ld answers made of %d records", made, pr->total);
        pr->shown = pesc_now();
    }
    return 0;
}

int ans_run(model *m, tokenizer *tok, const chat_template *tpl, const ds_records *d,
            const ans_options *o, ans_tally *tally, pesc_error *err)
{
    ans_answerer a;
    ans_answerer_init(&a, m, tok, tpl, o->batch);
    progress pr = {.shown = 0.0, .total = d->n};
    a.answered = show_progress;
    a.ctx = &pr;
    const ds_record **records = xcalloc(d->n > 0 ? (size_t)d->n : 1, sizeof *records);
    ans_tally **tallies = xcalloc(d->n > 0 ? (size_t)d->n : 1, sizeof *tallies);
    const char **sources = xcalloc(d->n > 0 ? (size_t)d->n : 1, sizeof *sources);
    for (int i = 0; i < d->n; i++) {
        records[i] = &d->items[i];
        tallies[i] = &tally[records[i]->source];
        sources[i] = o->names ? o->names[records[i]->source] : "";
    }
    int rc = ans_answer_many(&a, records, tallies, sources, d->n, o, err);
    free(records);
    free(tallies);
    free(sources);
    pesc_show_phase("pesc eval", NULL);
    ans_answerer_free(&a);
    return rc < 0 ? -1 : 0;
}
