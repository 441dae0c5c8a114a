/* choices — multiple-choice benchmarks (`pesc eval --choices FILE`): questions read from the
 * files MMLU, ARC, OpenBookQA, HellaSwag and PIQA come in (JSONL or a JSON array, as the
 * Hugging Face hub serves them), and each option laid out as the continuation a model is
 * scored on. The model's answer is the option it finds most likely (summed log-likelihood of
 * its tokens), as lm-evaluation-harness scores such tasks: accuracy, and accuracy with the
 * log-likelihood divided by the option's length in bytes.
 *
 * Record shapes, told apart by their keys:
 *   {"question": Q, "choices": [A, B, ...], "answer": 1 | "B" | "text of B"}     MMLU, plain
 *   {"question": Q, "choices": {"text": [...], "label": ["A", ...]}, "answerKey": "A"}   ARC
 *   {"question": {"stem": Q, "choices": [{"text", "label"}, ...]}, "answerKey": "A"}
 *   {"question_stem": Q, "choices": {...}, "answerKey": "A"}                   OpenBookQA
 *   {"ctx": C, "endings": [...], "label": "2"}           HellaSwag (the endings continue C)
 *   {"goal": G, "sol1": A, "sol2": B, "label": 0}                                     PIQA
 * "options" may stand for "choices".
 *
 * Owns: the questions read. Must not: run a model. */
#ifndef PESC_CHOICES_H
#define PESC_CHOICES_H

#include "template.h"
#include "tokenizer.h"
#include "util.h"

#define MC_MAX_OPTIONS 26   /* lettered A to Z */

typedef struct mc_question {
    char *text;               /* the question, or the passage its options continue */
    int continues;            /* 1: the options continue text (HellaSwag's ctx, OpenBookQA's
                                 question_stem) */
    char *subject;            /* MMLU's ("high_school_physics"), or NULL */
    char *options[MC_MAX_OPTIONS];
    int n_options;
    int answer;               /* the right option's index */
    long line;                /* where it is in its file */
} mc_question;

typedef struct mc_set {
    mc_question *items;
    int n;
} mc_set;

/* One record (a JSON object) into q: 0, or -1 with why (the caller adds where). */
struct json_t;
int mc_question_read(mc_question *q, const struct json_t *o, pesc_error *err);
void mc_question_free(mc_question *q);

/* The questions of a file; at most limit of them (0: all). Errors name the file and line. */
int mc_load(mc_set *s, const char *path, long limit, pesc_error *err);
void mc_free(mc_set *s);

/* How a question is laid out:
 *  - in a chat template (tpl): the question a user turn, the option the assistant's answer,
 *    scored with its end marker (the answer and nothing after it); each worked example
 *    (shots) a turn before it, unscored;
 *  - raw (tpl NULL), as lm-evaluation-harness does: "Question: Q\nAnswer:" and " option"
 *    (a passage and " ending" for HellaSwag and OpenBookQA, HellaSwag's cleaned as it cleans
 *    them), worked examples before it, a blank line apart;
 *  - letters: the options listed under the question as "A. option" lines, and the letter the
 *    answer (MMLU's layout; raw, under MMLU's line naming the subject). */
typedef struct mc_layout {
    const chat_template *tpl;
    int letters;
    const mc_question *shots; /* worked examples, answered */
    int n_shots;
} mc_layout;

/* Option `option` of q as one sequence: ids, and labels (-100 but on the scored tokens).
 * *bytes receives the length of the option's text as scored (for the length-normalised
 * accuracy). 0, or -1 with why. */
int mc_encode(const mc_question *q, int option, const mc_layout *l, tokenizer *t, tok_ids *ids,
              tok_ids *labels, size_t *bytes, pesc_error *err);

/* A question's options as one batch: K sequences of T tokens, right-padded (token 0, target
 * -100: causal attention keeps the padding out of the tokens before it), next-token targets
 * on each option's scored tokens only; each option's encoding (ids, labels) and scored bytes
 * kept too. */
typedef struct mc_batch {
    int K, T;
    tok_ids ids[MC_MAX_OPTIONS], labels[MC_MAX_OPTIONS];
    size_t bytes[MC_MAX_OPTIONS];
    int32_t *tokens, *targets;   /* (K, T) */
} mc_batch;

/* 0, or -1 with why (b is then empty). */
int mc_batch_make(mc_batch *b, const mc_question *q, const mc_layout *l, tokenizer *t,
                  pesc_error *err);
void mc_batch_free(mc_batch *b);

/* q's worked examples from `from`: the first n of q's subject when q names one that `from`
 * has (MMLU's dev split per subject), else the first n. Shallow copies into out (room for n);
 * returns how many there were (fewer than n when the subject has fewer). */
int mc_examples(const mc_set *from, const mc_question *q, int n, mc_question *out);

/* Accuracy over questions: each question's option scores (log-likelihoods) and lengths. */
typedef struct mc_tally {
    long questions, right, right_norm;
    double chance;            /* the sum of 1 / options */
} mc_tally;

/* The option the model picks: the highest score (the first of equals); with bytes, the
 * highest score a byte. */
int mc_pick(const double *score, const size_t *bytes, int n);
void mc_tally_add(mc_tally *t, const mc_question *q, const double *score, const size_t *bytes);
/* The accuracy's standard error over the questions, as lm-evaluation-harness reports it:
 * sqrt(p (1 - p) / (n - 1)). */
double mc_stderr(double p, long n);

#endif
