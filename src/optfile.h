/* optfile — a run's options written in a file (`pesc train --config run.yaml`): the subset of
 * YAML such files use, one `name: value` a line, lists for options given more than once.
 *
 *     # what the run was
 *     model: hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0
 *     data:
 *       - alpaca.jsonl:2
 *       - "slim orca.jsonl"
 *     lr: 2e-4            # peak
 *     pack: true
 *     lora_targets: q,v
 *
 * Names are the long options without their dashes; '_' may stand for '-'. Values are plain,
 * 'single-quoted' ('' for a quote) or "double-quoted" (\" \\ \n \t); a list is `- item` lines
 * indented under the name, or [a, b] on its line. `#` after a space, or at a line's start,
 * begins a comment. What YAML has beyond that (mappings, anchors, tags, block text, several
 * documents) is refused with the line it is on.
 *
 * Reads and splits only: what a name means and whether a value fits is the caller's
 * (train_options). Must not: know the options. */
#ifndef PESC_OPTFILE_H
#define PESC_OPTFILE_H

#include "util.h"

typedef struct optfile_entry {
    int line;                 /* where the name is, from 1 */
    char *name;               /* as written, each '_' turned '-' */
    char *written;            /* as written, for messages */
    char **values;            /* n_values of them, unquoted (in the pool) */
    int n_values;
    int is_list;              /* written as a list (maybe of one item, or none) */
} optfile_entry;

typedef struct optfile {
    char **pool;              /* every entry's values, in order; owned, as the names are */
    optfile_entry *entries;
    int n;
} optfile;

/* Reads path; its errors name it and the line ("run.yaml:7: ..."). NULL after an error. */
optfile *optfile_read(const char *path, pesc_error *err);
/* The same from text (len bytes, a NUL byte among them refused); where names it. */
optfile *optfile_parse(const char *text, size_t len, const char *where, pesc_error *err);
void optfile_delete(optfile *f);

#endif
