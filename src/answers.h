/* answers — generated answers scored by matching (`pesc eval --generate`): a record's last
 * answer (its last run of trained tokens, up to the first of the template's end markers in it)
 * is the reference, the tokens before it the prompt the model answers greedily, with the KV
 * cache, until an end marker. The answer is right when its text is the reference's (whitespace
 * at either end aside), or, matching numbers, when the numbers they give are equal: the first
 * after the last "####" (GSM8K's and MetaMath's final answers), else the last in the text,
 * commas and "$" aside, as lm-evaluation-harness's gsm8k reads them.
 *
 * Owns: the tallies it is given, and the samples files' lines (--samples, --eval-samples).
 * Must not: read the records' files (they come loaded). */
#ifndef PESC_ANSWERS_H
#define PESC_ANSWERS_H

#include <stdio.h>

#include "dataset.h"
#include "model.h"
#include "sample.h"
#include "template.h"
#include "tokenizer.h"

typedef enum ans_match { ANS_MATCH_EXACT, ANS_MATCH_NUMBER } ans_match;

/* "exact" or "number": 0, or -1 with a message naming both (the caller names its flag). */
int ans_match_parse(const char *name, ans_match *out, pesc_error *err);
const char *ans_match_name(ans_match m);

/* r's prompt, ids[0, *prompt_len), and its reference answer, labels[*prompt_len, *ref_end)
 * (the ids there, but where a tokens record labels them otherwise): the last run of labels
 * that are not -100, cut before the first of the n_stops ids in it.
 * 0, or -1 when r has no such run after a prompt of one token or more (a text record is all
 * answer) or the run is only an end marker. */
int ans_split(const ds_record *r, const int32_t *stops, int n_stops, int *prompt_len,
              int *ref_end);

/* The number text gives into out (n bytes), commas and "$" taken out and a final "." too:
 * 0, or -1 when it gives none. */
int ans_number(const char *text, char *out, size_t n);

/* Whether answer matches reference. */
int ans_matches(ans_match m, const char *answer, const char *reference);

/* Whether the file at path may have samples lines appended (--samples, --eval-samples): 1
 * when it is not there, empty, or not a regular file, or its first line is a samples line
 * (an object with an integer "line" and a boolean "right"); 0 when it holds other data (a dataset,
 * a log), which appending would spoil. */
int ans_samples_file(const char *path);

/* Before answers are appended to the samples file at path: a last line cut short (a run killed
 * while writing it) is cut off, so that the next answer starts a line of its own. A resumed
 * run gives from, where the file ended when its checkpoint was saved (-1: not known, a
 * checkpoint from before it was recorded), and last_step, the last step whose answers it
 * keeps: the lines after from, from the first that is not of a step up to last_step on, are
 * cut too, since they are answers of the steps the run does again (the lines before from, of
 * this run or of others appended to the same file, stay). A from past the file's whole lines,
 * or not at a line's start, is not this file's: nothing is cut there. Not a regular file, or
 * not there: nothing to do. 0, or -1 with a message naming path. */
int ans_samples_cut(const char *path, long long from, long last_step, pesc_error *err);

typedef struct ans_tally {
    long right, scored;
    long no_answer;              /* records without a prompt and an answer: not scored */
    long too_long;               /* prompts that fill the model's context: not scored */
    long cut;                    /* answers that reached their token limit (max_tokens, or the
                                  * context) before an end marker: scored as they stand */
} ans_tally;

typedef struct ans_options {
    ans_match match;
    long max_tokens;             /* an answer's most; 0: twice the reference's tokens and 16
                                  * more (exact), 512 (number) */
    long limit;                  /* records scored a source at most; 0: all */
    FILE *samples;               /* each record's answer (JSONL), or NULL */
    long step;                   /* the training step the samples are of; -1: none */
    const char *const *names;    /* what the samples call each source */
    int batch;                   /* records answered at once; 0: ANS_BATCH */
} ans_options;

/* Answers made at once by default, each in a slot of one KV cache (fewer where memory is
 * short): prompts in padded passes, then one pass a token for all of them (model_decode_step);
 * a slot whose answer ends takes the next prompt. At most ANS_BATCH_MAX. */
#define ANS_BATCH 16
#define ANS_BATCH_MAX 256
/* Records (prompts) handed to one ans_generate, a slot's worth each: enough that the slots
 * stay full but for the queue's end, few enough that answers are written as they go and one
 * long prompt sizes the slots of its queue alone. */
#define ANS_QUEUE 16

/* What answering takes besides the prompts: the model, its tokenizer, the template's end
 * markers and a logits row a slot; the answers made so far; and, when set, what is told as
 * answers end (made, each time some more): nonzero stops them. Made and freed around a run
 * of prompts or records. */
typedef struct ans_answerer {
    model *m;
    tokenizer *tok;
    int32_t stops[4];
    int n_stops;
    int batch;                   /* prompts answered at once */
    float *logits;               /* (batch, V) */
    sampler greedy;
    long made;                   /* answers ended, over every ans_generate */
    int (*answered)(void *ctx, long made);
    void *ctx;
} ans_answerer;

/* batch: prompts answered at once, 1 to ANS_BATCH_MAX (0: ANS_BATCH). */
void ans_answerer_init(ans_answerer *a, model *m, tokenizer *tok, const chat_template *tpl,
                       int batch);
void ans_answerer_free(ans_answerer *a);

/* A prompt for ans_generate: its ids, the most tokens its answer may take (model_answer_room's
 * count: the prompt and its room fit the model's context) and the sampler it draws with (NULL:
 * greedy; each prompt its own, so an answer does not depend on the others). */
typedef struct ans_prompt {
    const int32_t *ids;
    int len;
    int room;
    sampler *s;
    tok_ids out;                 /* the answer's tokens, end marker aside (the caller frees) */
    int ended;                   /* 1: it ended at an end marker; 0: at its room */
    int done;                    /* 1 once its answer is made (ans_generate sets it) */
} ans_prompt;

/* Answers the n prompts in a->batch slots of one KV cache (fewer where memory is short), in
 * order: continuous batching, a slot whose answer ends takes the next prompt at once, so a
 * step carries as many answers as there are slots while prompts wait. 0, 1 when
 * a->answered stopped it (the answers part made), or -1 when the model failed. */
int ans_generate(ans_answerer *a, ans_prompt *p, int n, pesc_error *err);

/* Answers n records, ANS_QUEUE a slot of those queued at once (so that --samples lines go
 * out as they come), and tallies each into tallies[i]: right and scored, or no_answer or
 * too_long, or nothing when o->limit records of its tally are scored already; its line of
 * o->samples too, under the name sources[i]. The greedy answers are those model_decode gives
 * one record at a time (within rounding: the products of a pass for several may round
 * otherwise). 0, 1 when a->answered stopped them (none scored), or -1 when the model
 * failed. */
int ans_answer_many(ans_answerer *a, const ds_record *const *records, ans_tally *const *tallies,
                    const char *const *sources, int n, const ans_options *o, pesc_error *err);

/* Answers every record of d (its sources' first o->limit) and tallies them by source into
 * tally (one a source, zeroed by the caller), showing its progress on stderr. */
int ans_run(model *m, tokenizer *tok, const chat_template *tpl, const ds_records *d,
            const ans_options *o, ans_tally *tally, pesc_error *err);

#endif
