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

/* fn is called with each prompt of path in turn until it fails. 0, or -1 with a message
 * naming the file and line (a bad record's, a read error's, or fn's own). */
typedef int (*pr_fn)(void *ctx, const pr_prompt *p, pesc_error *err);
int prompts_each(const char *path, pr_fn fn, void *ctx, pesc_error *err);

#endif
