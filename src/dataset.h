/* dataset — instruction datasets turned into token ids, loss labels and training batches.
 *
 * Formats (`--format`): camelidae ({"instruction": system, "conversation": [{"input",
 * "output"}...]}, or a non-empty "corpus" = plain text; a "conversation" of [{role, content}]
 * turns, as LMSYS-Chat-1M and WildChat keep them, is read as openai's), alpaca (instruction, input, output),
 * sharegpt / SlimOrca (conversations [{from, value}] or [{role, content}], a "system" or
 * "system_prompt" beside them), openai (messages [{role, content}], content a string or a list of text parts, an
 * assistant turn of "weight": 0 kept as context without loss),
 * metamath (query, response, or GSM8K's question, answer), magicoder (instruction/response, with Dolly's context, or
 * problem/solution; an alpaca input or a Dolly context joins the instruction), text
 * ({"text": ...}, a JSON string, or a plain line), tokens ({"input_ids": [...], "labels":
 * [...]}), completion ({"prompt", "completion"}: two strings are plain text with no chat
 * template, two lists of messages one conversation; only the completion trained); auto
 * decides per record from its keys. Every format, built-in or from a plugin,
 * is a `pesc_format_ops` table (plugins/pesc-plugin.h) in a registry (ds_formats): auto asks
 * each one's detect, a source format (open/next) makes its own records. Files are JSONL or one JSON array, plain,
 * .gz or .zst, read front to back with bounded memory (a JSON array is cut into its elements
 * by a string-aware scanner; one element is parsed at a time). The token ids and labels go
 * to a token store in $TMPDIR, so memory grows with the number of records, not with their
 * tokens.
 *
 * A bad record is skipped with a warning naming file and line and counted; `strict` makes it
 * fatal. An empty dataset is an error, and so is a file that starts with one JSON object over
 * several lines (neither JSONL nor an array). A record no format reads is named by its keys,
 * or, when it wraps an array of records ({"data": [...]}), by how to take them out.
 *
 * Batches (dataset_next_batch): B rows of T tokens. Without packing a row holds one record,
 * truncated to T (counted), and only the answers in those T tokens are learnt: data with none
 * there is refused, and the records that lose every answer are counted. With packing, whole
 * records are laid end to end while they fit; positions restart at 0 for every document and
 * doc_ids tell documents apart, so a model lets token i attend to token j only when j <= i and
 * doc_ids match. Every token carries the index of the --data it came from. Order: per epoch, each source contributes its records
 * `weight` times (fractional weights draw a seeded subset), shuffled with the seed; the
 * cursor (epoch, position) saves and restores the exact place.
 *
 * Owns: records, their order and the batch arrays. Must not: know about models beyond the
 * vocabulary size it checks ids against. */
#ifndef PESC_DATASET_H
#define PESC_DATASET_H

#include <stdint.h>
#include <stdio.h>

#include "pesc-plugin.h"
#include "template.h"
#include "token_store.h"
#include "tokenizer.h"
#include "util.h"

/* Records keep their tokens in a token store (token_store.h: a temporary file read through a
 * mapping), not on the heap; what stays in memory is this index, 40 bytes a record (a 1 GB
 * file of 1 kB records: about 40 MB, next to gigabytes of tokens). ids and labels point into
 * the mapping: valid from the return of the load that made the record until the next load
 * into the same ds_records or dataset_free, and read-only. */
typedef struct ds_record {
    const int32_t *ids;          /* (len) */
    const int32_t *labels;       /* (len), or NULL: the ids are the labels; -100 = no loss */
    int64_t offset;              /* where ids start in the store (values); labels follow them */
    int len;
    int source;                  /* which --data (0-based) */
    long line;                   /* where it starts in its file (1-based) */
} ds_record;

typedef struct ds_records {
    ds_record *items;
    int n;
    long skipped;                /* bad records skipped (with warnings) */
    long long predicted;         /* tokens with a loss: a next token whose label is not -100 */
    token_store *store;          /* every record's tokens; made by the first load */
} ds_records;

/* The index of r's first predicted token (the first label after the first token that is not
 * -100), or r->len when it has none: a row of T tokens trains on r when it is below both.
 * Reads the labels up to there, the prompt, no further. */
int ds_record_first_predicted(const ds_record *r);

/* A hash of n records' sources, lengths, ids and labels, in order; never 0. */
uint64_t ds_records_hash(const ds_record *items, int n);

/* A format is an index into a registry; the built-ins hold these fixed places in every one,
 * formats added by plugins follow them. */
typedef enum ds_format {
    DS_AUTO, DS_CAMELIDAE, DS_ALPACA, DS_SHAREGPT, DS_OPENAI, DS_METAMATH, DS_MAGICODER,
    DS_TEXT, DS_TOKENS, DS_COMPLETION
} ds_format;

/* Built-in names only ("auto", "camelidae", ...): 0, or -1 with a message listing them. */
int ds_format_parse(const char *name, ds_format *out, pesc_error *err);
const char *ds_format_name(ds_format f);

typedef struct ds_format_info {
    const char *name;
    const char *description;
    const char *origin;          /* "built-in", or the plugin file */
    const pesc_format_ops *ops;  /* NULL for auto */
} ds_format_info;

/* The registry: the built-ins, then whatever is added (plugins: see plugin.h). */
typedef struct ds_formats ds_formats;
ds_formats *ds_formats_new(void);
void ds_formats_delete(ds_formats *f);
/* ops, name, description and origin must outlive the registry. A taken name, or a table
 * without convert (or open/next), is an error. */
int ds_formats_add(ds_formats *f, const char *name, const char *description,
                   const pesc_format_ops *ops, const char *origin, pesc_error *err);
/* f NULL: the built-ins. Index 0 is auto. */
int ds_formats_count(const ds_formats *f);
const ds_format_info *ds_formats_get(const ds_formats *f, ds_format index);
/* Any registered name; the message lists them all. */
int ds_formats_parse(const ds_formats *f, const char *name, ds_format *out, pesc_error *err);

/* How a file is read into records. */
typedef struct ds_load_options {
    ds_format format;
    tokenizer *tok;              /* needed by every format but tokens */
    const chat_template *tpl;    /* NULL: camelidae */
    int vocab_size;              /* > 0: ids and labels are checked against it */
    int strict;                  /* a bad record is fatal */
    FILE *warn;                  /* where skip warnings go (the first few); NULL: silent */
    int source;                  /* recorded in every record */
    const ds_formats *formats;   /* where `format` points; NULL: the built-ins */
    int untokenized;             /* with no tok: text and message records are kept with no
                                    tokens (read, not rendered: pesc inspect's look at a file) */
} ds_load_options;

/* The source format that reads path itself, no file (demo:..., a plugin's source): format
 * when it is one, or under auto the one whose probe claims path surest; NULL: path is a
 * file to read. */
const ds_format_info *ds_source_format(const ds_formats *f, ds_format format, const char *path);

/* Reads a tokens-format JSONL file. vocab_size > 0 makes an id or label outside
 * [0, vocab_size) an error naming the line. Blank lines are skipped. */
int dataset_load_tokens(ds_records *d, const char *path, int vocab_size, pesc_error *err);
/* Any format, appended to d (which may hold records of other sources). On failure d keeps
 * the records it had. */
int dataset_load(ds_records *d, const char *path, const ds_load_options *o, pesc_error *err);
void dataset_free(ds_records *d);

/* What is wrong with a JSON text jansson refused (jerr) when it is not the JSON's syntax, in
 * words a user can act on, into buf: bytes that are not UTF-8 (which byte of the line), or a
 * \u0000 in a string (text holds none: refused on purpose). NULL for anything else. */
struct json_error_t;
const char *ds_json_text_problem(const struct json_error_t *jerr, char *buf, size_t n);

/* Each JSON object of a file read as dataset_load reads one (JSONL lines or a top-level
 * array's elements; plain, .gz or .zst), given to fn with its line, until fn fails. 0, or -1
 * with a message naming the file and line (fn's own, or bad JSON's). */
struct json_t;
typedef int (*ds_json_fn)(void *ctx, const struct json_t *o, long line, pesc_error *err);
/* name: what messages call the file (NULL: path) */
int ds_each_json(const char *path, const char *name, ds_json_fn fn, void *ctx, pesc_error *err);

/* One --data argument: PATH or PATH:WEIGHT (0 < weight <= DS_MAX_WEIGHT, default 1: each
 * record is taken W times an epoch, the fraction drawn at random). An epoch holds at most
 * DS_MAX_EPOCH records. A number after the last ':' is a weight; where that reading meets a
 * file named like PATH:WEIGHT, or a PATH before a ':' that is no number, the message says how
 * the argument was read (it looks at which of those files exist). */
#define DS_MAX_WEIGHT 1000.0
#define DS_MAX_EPOCH (1 << 28)
typedef struct ds_source {
    char path[4096];
    double weight;
    char weight_text[32];        /* as given after the last ':'; "" when none was */
} ds_source;
int ds_source_parse(ds_source *s, const char *arg, pesc_error *err);
/* Once formats are known: a PATH:WEIGHT whose PATH is no file and no source of a format is
 * an error that says how the argument was read, and how to give PATH:WEIGHT itself as the
 * source when a format opens that (gen:6 is gen, weight 6; gen:6:1 the source gen:6). */
int ds_source_check(const ds_formats *f, ds_format format, const ds_source *s,
                    pesc_error *err);

/* ------------------------------------------------------------------ batches ---------- */

/* The longest row (--seq) a batch lays out. */
#define DS_MAX_SEQ (1 << 20)

typedef struct ds_options {
    int batch;                   /* B rows */
    int seq;                     /* T tokens a row */
    int pack;                    /* several documents a row */
    int shuffle;                 /* seeded shuffle every epoch */
    uint64_t seed;
    int epochs;                  /* 0: endless */
    /* records held out of training for evaluation (--eval-split): a fraction of them when
     * below 1, else a count; 0: none. Which ones follows the seed. */
    double holdout;
} ds_options;

typedef struct ds_batch {
    int B, T;
    int32_t *ids;                /* (B, T) padding: the pad id (or EOS, or 0) */
    int32_t *labels;             /* (B, T) unshifted, HF style; -100 = no loss */
    int32_t *targets;            /* (B, T) next-token target of each position: the label of
                                    token t+1 of the same document, else -100 (what
                                    model_train_step takes) */
    int32_t *positions;          /* (B, T) 0.. within each document; 0 on padding */
    int32_t *doc_ids;            /* (B, T) document within the row, 0..; -1 on padding */
    int32_t *sources;            /* (B, T) --data index; -1 on padding */
    int *row_tokens;             /* (B) tokens used by each row */
    int rows;                    /* rows filled (the last batch may have fewer than B) */
    long epoch;                  /* epoch of the batch's first record */
    long long n_targets;         /* targets that are not -100 */
} ds_batch;

void ds_batch_init(ds_batch *b, int B, int T);
void ds_batch_free(ds_batch *b);
/* The batch's rows cut after their longest one's tokens, rounded up to a multiple of
 * `multiple` (at most T): each array's rows laid out again at that stride, which it returns
 * (T when nothing is cut). What is cut is padding alone, so a step over the rows it keeps
 * computes every loss as before, on fewer tokens (HF's collators pad to the longest row too).
 * The next dataset_next_batch lays its rows out at T again. */
int ds_batch_trim(ds_batch *b, int multiple);

/* Exactly where the next batch starts. fingerprint ties it to the data and options. */
typedef struct ds_cursor {
    long epoch;
    long position;               /* into the epoch's order */
    uint64_t fingerprint;        /* the counts and the batch options */
    uint64_t content;            /* every record's source, ids and labels, in order; 0: not
                                    known (a checkpoint written before it was kept) */
} ds_cursor;

typedef struct ds_stats {
    long records, skipped, truncated;
    long long tokens;
    long long truncated_tokens;  /* tokens cut off by truncation */
    long answers_cut;            /* records with answers (labels), none of them in the first
                                    --seq tokens: truncation leaves them nothing to learn */
    int n_sources;
    long *source_records;        /* (n_sources) */
} ds_stats;

typedef struct dataset dataset;

/* Loads every source (lo->source is set per source), then prepares epoch 0. */
dataset *dataset_open(const ds_source *sources, int n_sources, const ds_load_options *lo,
                      const ds_options *o, pesc_error *err);
void dataset_delete(dataset *ds);

/* Fills b (initialized for o->batch x o->seq) with the next batch: returns the rows filled,
 * 0 when the last epoch is done. */
int dataset_next_batch(dataset *ds, ds_batch *b);
/* The batches of B rows of T tokens that dataset_next_batch gives from the cursor to the end
 * of the last epoch (o->epochs > 0), from the records' lengths: no token is read, and the
 * cursor stays where it is. */
long dataset_count_batches(dataset *ds, int B, int T);

ds_cursor dataset_cursor(const dataset *ds);
/* The epochs done, fractional: the cursor's epoch and how far into its order it stands. */
double dataset_epochs_done(const dataset *ds);
/* Restores a cursor; an error when it was saved with other data or options. */
int dataset_seek(dataset *ds, const ds_cursor *c, pesc_error *err);
const ds_stats *dataset_stats(const dataset *ds);
const ds_records *dataset_records(const dataset *ds);
/* The records ds_options.holdout kept out of training (*n of them; NULL and 0 without). Valid
 * as long as ds. */
const ds_record *dataset_held_out(const dataset *ds, int *n);

#endif
