/* prompts — the prompts of `pesc generate --prompts FILE`, given one at a time.
 *
 * The file is JSONL (or one JSON array; plain, .gz or .zst, read as dataset_load reads data)
 * of objects, each one prompt:
 *   - a "prompt" string, or "instruction" (with an alpaca "input" or a Dolly "context" after
 *     it), "question" or "query"; a "system" string before it; a "completion", "output",
 *     "response" or "answer" string is its reference;
 *   - or a "messages" (or "conversations") list of {"role", "content"} or {"from", "value"}
 *     turns: system?, user, [assistant, user]...; a last assistant turn is its reference;
 *   - or camelidae's "conversation" of {"input", "output"} turns, its "instruction" the system
 *     message; the last turn's output, when there, is its reference;
 *   - an "id" (any JSON value) is kept, to name the answer by.
 * Or plain text, a prompt a line, blank lines passed over, when the file (not .gz or .zst)
 * starts with neither '{' nor '['.
 *
 * Owns: the prompt it gives (valid during the call). Must not: tokenize, or know a model. */
#ifndef PESC_PROMPTS_H
#define PESC_PROMPTS_H

#include <jansson.h>

#include "template.h"
#include "util.h"

typedef struct pr_prompt {
    long line;                   /* where it starts in the file (1-based) */
    const tpl_message *msgs;     /* system?, user, [assistant, user]...: the last is a user's */
    int n_msgs;
    int plain;                   /* one string (a plain line, "prompt", ...), not messages */
    const char *reference;       /* NULL: none */
    const json_t *id;            /* NULL: none */
} pr_prompt;

/* The prompts named on the command line, read twice (every prompt checked before the model
 * loads, then answered): a file, read where it is; or standard input ("-") or a pipe, which
 * cannot be read twice, read once into a temporary file of $TMPDIR (/tmp when unset),
 * removed at once and held open until prompts_close. */
typedef struct pr_file {
    const char *name;            /* what messages call them: the path, or "standard input" */
    const char *path;            /* what is read: the file, or the temporary one's /dev/fd/N */
    int fd;                      /* the temporary file's, or -1 */
    char fd_path[32];
} pr_file;

/* 0, or -1 with a message: arg cannot be opened, is a directory or a device, or (read into
 * the temporary file) a read or write failed, the disk full. */
int prompts_open(pr_file *f, const char *arg, pesc_error *err);
void prompts_close(pr_file *f);

/* fn is called with each prompt of f in turn until it fails. 0, or -1 with a message
 * naming the file (f->name) and line (a bad record's, a read error's, or fn's own). */
typedef int (*pr_fn)(void *ctx, const pr_prompt *p, pesc_error *err);
int prompts_each(const pr_file *f, pr_fn fn, void *ctx, pesc_error *err);

#endif
