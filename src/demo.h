/* demo — the built-in instruction data: small tasks generated from a seed, in families that a
 * tiny model learns within minutes on a CPU (issue 9).
 *
 * Families (each one a data source, named as below):
 *   arithmetic  "12+7" -> "19", "15-8" -> "7"      (operands 0..20, results >= 0)
 *   reverse     "reverse: pesc" -> "csep"
 *   sort        "sort: dbca" -> "abcd", "sort: 4193" -> "1349"
 *   count       "count: pesc" -> "4"                (characters of the word, 1..9)
 *   case        "upper: pesc" -> "PESC", "lower: PeSc" -> "pesc"
 *   lookup      "capital: France" -> "Paris", "colour: banana" -> "yellow"
 * A record is one camelidae conversation: an optional short system line, one input, one
 * output. Answers are deterministic functions of the input. Made-up words never spell a word
 * of the fixed texts (instructions, table), so the demo tokenizer, which keeps those words
 * whole, always spells made-up words letter by letter.
 *
 * Record i of family f with seed s depends on (s, f, i) only: any record can be made on its
 * own, and the mix of all families (record i is family i mod F) holds the same records as the
 * single-family sources.
 *
 * Owns: the task tables and generators. Must not: read files or know about models. */
#ifndef PESC_DEMO_H
#define PESC_DEMO_H

#include <stdint.h>
#include <stdio.h>

#include "dataset.h"
#include "pesc-plugin.h"
#include "template.h"
#include "util.h"

enum {
    DEMO_FAMILIES = 6,
    DEMO_TEXT_MAX = 48,            /* room for an input or output, NUL included */
    /* default size of a demo source, per family in it: about what 1,200 steps of the demo see,
     * so that it learns the tasks rather than its records (with 1,000 a family its answers on
     * them went from 54% to 85% right, on other records to 59%; with 10,000, to 65%) */
    DEMO_RECORDS_PER_FAMILY = 10000,
    DEMO_FILE_RECORDS_PER_FAMILY = 1000   /* pesc demo-data's default */
};
#define DEMO_SEED 1234u
/* pesc eval --demo's: other records than the demo's training draws (an arithmetic problem may
 * recur, by chance) */
#define DEMO_EVAL_SEED 1235u

typedef struct demo_record {
    int family;                    /* 0..DEMO_FAMILIES-1 */
    const char *system;            /* static text; "" when the record has no system line */
    char input[DEMO_TEXT_MAX];
    char output[DEMO_TEXT_MAX];
} demo_record;

const char *demo_family_name(int family);
/* Index of a family name, or -1. */
int demo_family_find(const char *name);
/* "arithmetic, reverse, sort, count, case, lookup" */
const char *demo_family_list(void);
/* How many families a set holds (bit f: family f; 0: all of them). */
int demo_family_count(unsigned families);

/* Record `index` (>= 0) of one family. */
void demo_generate_family(uint64_t seed, int family, long index, demo_record *out);
/* Record `index` of the mix of all families: family index % F, its record index / F. */
void demo_generate(uint64_t seed, long index, demo_record *out);

/* The record as messages for template_encode: system (when there is one), user, assistant.
 * Returns how many (2 or 3); msgs point into r. */
int demo_messages(const demo_record *r, tpl_message msgs[3]);

/* Which records a demo source holds. */
typedef struct demo_spec {
    uint64_t seed;
    long records;                  /* total; records are dealt round-robin over the families */
    unsigned families;             /* bit f set: family f is in; never 0 after parsing */
} demo_spec;

/* Fills what is left unset: families 0 -> all, records 0 -> DEMO_RECORDS_PER_FAMILY per
 * family in the set. */
void demo_spec_complete(demo_spec *s);

/* Record i of the source described by s. */
void demo_spec_record(const demo_spec *s, long i, demo_record *out);

/* Parses a demo source: "demo" (every family) or "demo:ITEM,ITEM..." where an item is a family
 * name, records=N or seed=S; e.g. "demo:reverse,sort,records=500". records defaults to
 * DEMO_RECORDS_PER_FAMILY per family, seed to DEMO_SEED. */
int demo_spec_parse(demo_spec *s, const char *text, pesc_error *err);

/* The records as camelidae JSON lines: {"instruction", "conversation": [{"input",
 * "output"}], "source": family}. Errors name `name` (the file). */
int demo_write_jsonl(FILE *f, const demo_spec *s, const char *name, pesc_error *err);

/* Encodes one record with the chat template (NULL: camelidae) into ids and labels. */
int demo_encode(const demo_record *r, tokenizer *t, const chat_template *tpl, tok_ids *ids,
                tok_ids *labels, pesc_error *err);

/* The dataset format `demo`: appends the records of the source `spec` (see demo_spec_parse)
 * to d, encoded with o->tok and o->tpl, each with source o->source; ids are checked against
 * o->vocab_size when it is > 0. Records appear in spec order (line = index + 1). This is
 * dataset_load with the `demo` format below, strict: any bad record is an error. */
int demo_load(ds_records *d, const char *spec, const ds_load_options *o, pesc_error *err);

/* The same source as a dataset format (plugins/pesc-plugin.h, a source format: open takes
 * the --data argument as demo_spec_parse reads it; probe claims "demo" and "demo:..."
 * arguments that are not files, also those that do not parse, which open then names).
 * Register it with ds_formats as
 *     {"demo", DEMO_FORMAT_DESCRIPTION, BUILTIN, &demo_format_ops} */
extern const pesc_format_ops demo_format_ops;
#define DEMO_FORMAT_DESCRIPTION \
    "the built-in demo tasks: demo[:FAMILY,...,records=N,seed=S] (pesc demo-data -o FILE shows them)"

#endif
