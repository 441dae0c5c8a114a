/* test_choices — multiple-choice benchmarks: every record shape the hub serves read to the
 * same question, refusals naming what is missing, each layout's exact text and scored span,
 * and a question's options scored as one padded batch giving each option's own
 * log-likelihood (the demo model, on the CPU). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "backend.h"
#include "choices.h"
#include "model.h"
#include "template.h"
#include "tokenizer.h"
#include "check.h"

static int read_text(mc_question *q, const char *json, pesc_error *err)
{
    json_t *o = json_loads(json, 0, NULL);
    if (!o)
        return pesc_fail(err, "the test's JSON is bad: %s", json);
    int rc = mc_question_read(q, o, err);
    json_decref(o);
    return rc;
}

static void test_shapes(void)
{
    static const struct {
        const char *what, *json, *text;
        int continues, n, answer;
    } cases[] = {
        {"MMLU", "{\"question\": \"Q?\", \"subject\": \"x\", \"choices\": [\"a\", \"b\", \"c\", "
                 "\"d\"], \"answer\": 2}", "Q?", 0, 4, 2},
        {"a letter", "{\"question\": \"Q?\", \"choices\": [\"a\", \"b\", \"c\"], \"answer\": "
                     "\"B\"}", "Q?", 0, 3, 1},
        {"an option's text", "{\"question\": \"Q?\", \"options\": [\"a\", \"b\"], \"answer\": "
                             "\"b\"}", "Q?", 0, 2, 1},
        {"a number's text", "{\"question\": \"Q?\", \"choices\": [\"a\", \"17\", \"1\"], "
                            "\"answer\": \"1\"}", "Q?", 0, 3, 2},
        {"an index as text", "{\"question\": \"Q?\", \"choices\": [\"a\", \"b\", \"c\"], "
                             "\"answer\": \"1\"}", "Q?", 0, 3, 1},
        {"ARC (hub)", "{\"id\": \"x\", \"question\": \"Q?\", \"choices\": {\"text\": [\"a\", "
                      "\"b\", \"c\", \"d\"], \"label\": [\"A\", \"B\", \"C\", \"D\"]}, "
                      "\"answerKey\": \"D\"}", "Q?", 0, 4, 3},
        {"ARC numbered", "{\"question\": \"Q?\", \"choices\": {\"text\": [\"a\", \"b\", \"c\"], "
                         "\"label\": [\"1\", \"2\", \"3\"]}, \"answerKey\": \"2\"}", "Q?", 0, 3, 1},
        {"ARC (own files)", "{\"question\": {\"stem\": \"Q?\", \"choices\": [{\"text\": \"a\", "
                            "\"label\": \"A\"}, {\"text\": \"b\", \"label\": \"B\"}]}, "
                            "\"answerKey\": \"B\"}", "Q?", 0, 2, 1},
        {"OpenBookQA", "{\"question_stem\": \"Q?\", \"choices\": {\"text\": [\"a\", \"b\", "
                       "\"c\", \"d\"], \"label\": [\"A\", \"B\", \"C\", \"D\"]}, \"answerKey\": "
                       "\"A\"}", "Q?", 1, 4, 0},
        {"HellaSwag", "{\"ctx\": \"He picks up\", \"endings\": [\"a\", \"b\", \"c\", \"d\"], "
                      "\"label\": \"3\"}", "He picks up", 1, 4, 3},
        {"PIQA", "{\"goal\": \"G\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 1}", "G", 0, 2,
         1},
        /* as lm-evaluation-harness builds and cleans it */
        {"HellaSwag (hub)", "{\"activity_label\": \"Removing ice\", \"ctx_a\": \" The man "
                            "[header] writes  on it.\", \"ctx_b\": \"THEN he\", \"ctx\": \"x\", "
                            "\"endings\": [\"a\", \"b [title] c\"], \"label\": \"1\"}",
         "Removing ice: The man writes on it. Then he", 1, 2, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mc_question q;
        pesc_error err = {{0}};
        int rc = read_text(&q, cases[i].json, &err);
        CHECK(rc == 0 && strcmp(q.text, cases[i].text) == 0 && q.n_options >= 2 &&
                  (q.n_options != 2 || strcmp(q.options[1], "b") == 0 ||
                   strcmp(q.options[1], "b. c") == 0) &&
                  q.continues == cases[i].continues && q.n_options == cases[i].n &&
                  q.answer == cases[i].answer && strcmp(q.options[0], "a") == 0,
              "%s: rc %d, '%s', %d options, answer %d (%s)", cases[i].what, rc,
              rc == 0 ? q.text : "", q.n_options, q.answer, err.msg);
        if (rc == 0)
            mc_question_free(&q);
    }
    REPORT(failures == 0, "%zu record shapes read", sizeof cases / sizeof *cases);
}

static void test_refusals(void)
{
    static const struct {
        const char *json, *needle;
    } cases[] = {
        {"{\"choices\": [\"a\", \"b\"], \"answer\": 0}", "no question"},
        {"{\"question\": \"Q\", \"answer\": 0}", "no options"},
        {"{\"question\": \"Q\", \"choices\": [\"a\", \"b\"]}", "no answer"},
        {"{\"question\": \"Q\", \"choices\": [\"a\"], \"answer\": 0}", "holds 1 option"},
        {"{\"question\": \"Q\", \"choices\": [\"a\", 2], \"answer\": 0}", "choices[1] must be a "
                                                                         "string"},
        {"{\"question\": \"Q\", \"choices\": [\"a\", \"b\"], \"answer\": 2}", "2 is not an "
                                                                             "option's index"},
        {"{\"question\": \"Q\", \"choices\": [\"a\", \"b\"], \"answer\": \"C\"}", "\"C\" is none "
                                                                                 "of the 2"},
        {"{\"question\": \"Q\", \"choices\": [\"a\", \"b\"], \"answer\": \"z\"}", "\"z\" is none"},
        {"{\"question\": 3, \"choices\": [\"a\", \"b\"], \"answer\": 0}", "\"question\" must be "
                                                                         "a string"},
        {"{\"question\": {\"x\": 1}, \"answerKey\": \"A\"}", "without a \"stem\""},
        {"{\"goal\": \"G\", \"sol1\": \"a\", \"label\": 0}", "\"sol1\" without \"sol2\""},
        {"[1, 2]", "must be a JSON object"},
        {"{\"ctx\": \"C\", \"endings\": [\"a\", \"b\"], \"label\": \"\"}", "\"label\" is empty: "
                                                                          "a test split"},
        /* raw it scored best (no token, no loss), in a template it was "no assistant message" */
        {"{\"question\": \"Q?\", \"choices\": [\"a\", \"\"], \"answer\": 0}",
         "option B (index 1) of the question \"Q?\" is empty"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mc_question q;
        pesc_error err = {{0}};
        int rc = read_text(&q, cases[i].json, &err);
        CHECK(rc != 0 && strstr(err.msg, cases[i].needle), "%s: wanted '%s', got '%s'",
              cases[i].json, cases[i].needle, rc ? err.msg : "(read)");
        if (rc == 0)
            mc_question_free(&q);
    }
    REPORT(failures == 0, "%zu bad records refused, each saying what is wrong",
           sizeof cases / sizeof *cases);
}

/* A question of fresh strings (mc_question_free frees it). */
static mc_question question(const char *text, int answer, int n, const char *const *options)
{
    mc_question q = {.text = xstrdup(text), .n_options = n, .answer = answer};
    for (int i = 0; i < n; i++)
        q.options[i] = xstrdup(options[i]);
    return q;
}

/* The decoded ids, and the decoded scored tokens. */
static void decoded(tokenizer *t, const tok_ids *ids, const tok_ids *labels, char **all,
                    char **scored)
{
    *all = tok_decode(t, ids->ids, ids->n, 0, NULL);
    int first = 0;
    while (first < labels->n && labels->ids[first] < 0)
        first++;
    int ok = 1;
    for (int i = first; i < labels->n; i++)
        ok &= labels->ids[i] == ids->ids[i];
    *scored = ok ? tok_decode(t, ids->ids + first, ids->n - first, 0, NULL) : xstrdup("(gaps)");
}

static void test_layouts(tokenizer *t)
{
    mc_question q = question("2+2", 1, 3, (const char *[]){"3", "4", "22"});
    mc_question shot = question("1+1", 0, 2, (const char *[]){"2", "11"});
    static const struct {
        const char *what;
        int letters, shots, option;
        const char *text, *scored;
        size_t bytes;
    } cases[] = {
        {"raw", 0, 0, 2, "<s>Question: 2+2\nAnswer: 22", " 22", 3},
        {"raw with a worked example", 0, 1, 1,
         "<s>Question: 1+1\nAnswer: 2\n\nQuestion: 2+2\nAnswer: 4", " 4", 2},
        {"raw, lettered", 1, 1, 2,
         "<s>1+1\nA. 2\nB. 11\nAnswer: A\n\n2+2\nA. 3\nB. 4\nC. 22\nAnswer: C", " C", 2},
        {"raw, lettered, MMLU's subject", 1, 0, 0,
         "<s>The following are multiple choice questions (with answers) about high school "
         "math.\n\n2+2\nA. 3\nB. 4\nC. 22\nAnswer: A", " A", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mc_layout l = {.letters = cases[i].letters, .shots = &shot, .n_shots = cases[i].shots};
        q.subject = strstr(cases[i].what, "subject") ? xstrdup("high_school_math") : NULL;
        tok_ids ids = {0}, labels = {0};
        size_t bytes = 0;
        pesc_error err = {{0}};
        int rc = mc_encode(&q, cases[i].option, &l, t, &ids, &labels, &bytes, &err);
        char *all = NULL, *scored = NULL;
        if (rc == 0)
            decoded(t, &ids, &labels, &all, &scored);
        CHECK(rc == 0 && strcmp(all, cases[i].text) == 0 && strcmp(scored, cases[i].scored) == 0 &&
                  bytes == cases[i].bytes,
              "%s: '%s' scoring '%s' (%zu bytes) %s", cases[i].what, all ? all : "",
              scored ? scored : "", bytes, err.msg);
        free(all);
        free(scored);
        free(q.subject);
        q.subject = NULL;
        tok_ids_free(&ids);
        tok_ids_free(&labels);
    }
    /* in a chat template: the same ids and labels as the conversation itself, the worked
     * example's answer unscored */
    const chat_template *tpl = template_find("camelidae");
    mc_layout l = {.tpl = tpl, .shots = &shot, .n_shots = 1};
    tok_ids ids = {0}, labels = {0}, want = {0}, want_labels = {0};
    size_t bytes = 0;
    pesc_error err = {{0}};
    tpl_message msgs[] = {{ROLE_USER, "1+1", 3, NULL}, {ROLE_ASSISTANT_UNTRAINED, "2", 1, NULL},
                          {ROLE_USER, "2+2", 3, NULL}, {ROLE_ASSISTANT, "22", 2, NULL}};
    int rc = mc_encode(&q, 2, &l, t, &ids, &labels, &bytes, &err) |
             template_encode(tpl, t, msgs, 4, &want, &want_labels, &err);
    CHECK(rc == 0 && ids.n == want.n && labels.n == want_labels.n && bytes == 2 &&
              memcmp(ids.ids, want.ids, (size_t)ids.n * sizeof *ids.ids) == 0 &&
              memcmp(labels.ids, want_labels.ids, (size_t)ids.n * sizeof *ids.ids) == 0,
          "a chat template: %d ids for %d (%s)", ids.n, want.n, err.msg);
    tok_ids_free(&ids);
    tok_ids_free(&labels);
    tok_ids_free(&want);
    tok_ids_free(&want_labels);
    mc_question_free(&q);
    mc_question_free(&shot);
    REPORT(failures == 0, "layouts: raw, with worked examples, lettered, in a chat template");
}

/* A question's options in one padded batch: each option's sum equals its own forward's. */
static void test_batch(tokenizer *t, const char *model_dir)
{
    pesc_error err = {{0}};
    pesc_backend *b = backend_new("cpu", &err);
    model m = {0};
    if (!b || model_load(&m, model_dir, b, &err) != 0) {
        CHECK(0, "the demo model: %s", err.msg);
        backend_delete(b);
        return;
    }
    mc_question q = question("reverse: abcdef", 0, 3,
                             (const char *[]){"fedcba", "abc", "fdcbae x y z"});
    mc_layout l = {.tpl = template_find("camelidae")};
    mc_batch batch;
    CHECK(mc_batch_make(&batch, &q, &l, t, &err) == 0, "%s", err.msg);
    double alone[3], together[3] = {0};
    for (int i = 0; i < 3; i++) {
        /* each option alone: its own encoding, its targets by hand */
        tok_ids ids = {0}, labels = {0};
        size_t bytes;
        CHECK(mc_encode(&q, i, &l, t, &ids, &labels, &bytes, &err) == 0 &&
                  bytes == batch.bytes[i] && ids.n == batch.ids[i].n, "%s", err.msg);
        int32_t *row = malloc((size_t)ids.n * sizeof *row);
        for (int k = 0; k < ids.n; k++)
            row[k] = k + 1 < ids.n && labels.ids[k + 1] >= 0 ? ids.ids[k + 1] : -100;
        long long count;
        CHECK(model_forward(&m, ids.ids, 1, ids.n, &err) == 0 &&
                  model_nll(&m, row, &alone[i], &count, NULL, &err) == 0 && count > 0,
              "option %d alone: %s", i, err.msg);
        for (int k = ids.n; k < batch.T; k++)   /* the batch's padding: no target */
            CHECK(batch.targets[(size_t)i * batch.T + k] == -100 &&
                      batch.tokens[(size_t)i * batch.T + k] == 0, "option %d's padding", i);
        free(row);
        tok_ids_free(&ids);
        tok_ids_free(&labels);
    }
    CHECK(model_forward(&m, batch.tokens, 3, batch.T, &err) == 0 &&
              model_nll_sequences(&m, batch.targets, together, &err) == 0, "the batch: %s",
          err.msg);
    double worst = 0;
    for (int i = 0; i < 3; i++)
        worst = fmax(worst, fabs(together[i] - alone[i]) / fmax(1e-6, fabs(alone[i])));
    double score[3] = {-together[0], -together[1], -together[2]};
    REPORT(worst < 1e-5 && batch.ids[0].n != batch.ids[2].n,
           "three options of %d, %d and %d tokens in one padded batch: each its own sum "
           "(worst relative difference %.2g)", batch.ids[0].n, batch.ids[1].n, batch.ids[2].n,
           worst);
    REPORT(mc_pick(score, NULL, 3) == 0, "the demo model picks the reversed text (scores %.3f "
           "%.3f %.3f)", score[0], score[1], score[2]);
    mc_batch_free(&batch);
    mc_question_free(&q);
    model_free(&m);
    backend_delete(b);
}

static void test_tally(void)
{
    double score[4] = {-4.0, -3.0, -5.0, -3.0};
    size_t bytes[4] = {4, 1, 10, 6};
    CHECK(mc_pick(score, NULL, 4) == 1, "the first of equals");
    CHECK(mc_pick(score, bytes, 4) == 2, "by byte: -0.5 beats -1, -3 and -3");
    mc_question q = {.n_options = 4, .answer = 2};
    mc_tally t = {0};
    mc_tally_add(&t, &q, score, bytes);
    q.answer = 1;
    mc_tally_add(&t, &q, score, bytes);
    CHECK(t.questions == 2 && t.right == 1 && t.right_norm == 1 && fabs(t.chance - 0.5) < 1e-12,
          "tally: %ld %ld %ld %g", t.questions, t.right, t.right_norm, t.chance);
    CHECK(fabs(mc_stderr(0.5, 101) - 0.05) < 1e-12 && mc_stderr(1.0, 1) == 0.0, "stderr");
    REPORT(failures == 0, "picks, tallies and standard errors");
}

/* Worked examples: the subject's first n, else the file's first n. */
static void test_examples(void)
{
    char a[] = "a", b[] = "b", c[] = "c", a1[] = "a1", b1[] = "b1", a2[] = "a2", b2[] = "b2";
    mc_question items[4] = {{.text = a1, .subject = a}, {.text = b1, .subject = b},
                            {.text = a2, .subject = a}, {.text = b2, .subject = b}};
    mc_set from = {.items = items, .n = 4};
    mc_question q = {.subject = b}, none = {0}, other = {.subject = c}, out[3];
    int n = mc_examples(&from, &q, 2, out);
    CHECK(n == 2 && strcmp(out[0].text, "b1") == 0 && strcmp(out[1].text, "b2") == 0,
          "subject b: %d", n);
    n = mc_examples(&from, &q, 3, out);
    CHECK(n == 2, "subject b has 2, not 3: %d", n);
    n = mc_examples(&from, &none, 3, out);
    CHECK(n == 3 && strcmp(out[2].text, "a2") == 0, "no subject: the first 3: %d", n);
    n = mc_examples(&from, &other, 1, out);
    CHECK(n == 1 && strcmp(out[0].text, "a1") == 0, "a subject the file lacks: the first: %d", n);
    REPORT(failures == 0, "worked examples by subject");
}

int main(void)
{
    const char *top = getenv("top_srcdir") ? getenv("top_srcdir") : ".";
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/data/demo", top);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    test_shapes();
    test_refusals();
    test_tally();
    test_examples();
    pesc_error err;
    tokenizer *t = tok_load(path, &err);
    CHECK(t, "the demo tokenizer: %s", err.msg);
    if (t) {
        test_layouts(t);
        test_batch(t, dir);
        tok_delete(t);
    }
    return failures ? 1 : 0;
}
