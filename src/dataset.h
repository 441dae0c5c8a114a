/* dataset — instruction records turned into token ids and labels.
 *
 * This first cut reads the `tokens` format: JSONL, one record a line,
 * {"input_ids": [ints], "labels": [ints]} with labels optional (-100 = ignored) and, when
 * present, as long as input_ids. Text formats, templates and packing arrive with the
 * tokenizer issue. Must not: know about models beyond the vocabulary size it checks ids
 * against. */
#ifndef PESC_DATASET_H
#define PESC_DATASET_H

#include <stdint.h>

#include "util.h"

typedef struct ds_record {
    int32_t *ids;                /* (len) */
    int32_t *labels;             /* (len), or NULL: the ids are the labels */
    int len;
} ds_record;

typedef struct ds_records {
    ds_record *items;
    int n;
} ds_records;

/* Reads a tokens-format JSONL file. vocab_size > 0 makes an id or label outside
 * [0, vocab_size) an error naming the line. Blank lines are skipped. */
int dataset_load_tokens(ds_records *d, const char *path, int vocab_size, pesc_error *err);
void dataset_free(ds_records *d);

#endif
