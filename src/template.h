/* template — chat templates: a conversation rendered to token ids with a loss mask.
 *
 * Named templates: camelidae (the paper's, DESIGN section 1; the default), alpaca, chatml,
 * qwen3 (chatml with Qwen3's empty thinking block before the last answer), llama2, llama3,
 * mistral, phi3, phi4-mini, phi4, granite, gemma, plain. A conversation is rendered to one string and
 * encoded once (as HF's apply_chat_template + encode would); the labels keep the ids of every
 * assistant span (content and its end marker, e.g. "</s>" or "<|im_end|>") and are -100
 * elsewhere, so every assistant turn of a multi-turn record is trained. Label boundaries come
 * from encoding the rendered prefixes; a token that straddles a boundary counts as outside the
 * span.
 *
 * Owns: the template table. Must not: read files or know dataset formats. */
#ifndef PESC_TEMPLATE_H
#define PESC_TEMPLATE_H

#include <stddef.h>

#include "tokenizer.h"
#include "util.h"

typedef struct chat_template chat_template;

/* ROLE_ASSISTANT_UNTRAINED: an assistant turn kept as context, without loss (OpenAI's
 * "weight": 0). */
typedef enum tpl_role {
    ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_ASSISTANT_UNTRAINED
} tpl_role;

typedef struct tpl_message {
    tpl_role role;
    const char *content;      /* UTF-8, not necessarily NUL-terminated */
    size_t len;
    const char *where;        /* where it was read from, as the data's JSON path
                                 ("messages[2]"), to name it in errors; NULL: its index */
} tpl_message;

/* The template called name, or NULL. */
const chat_template *template_find(const char *name);
const char *template_name(const chat_template *tpl);
/* "camelidae, alpaca, chatml, qwen3, llama2, llama3, mistral, phi3, phi4-mini, phi4, granite,
 * gemma, plain" */
const char *template_list(void);

/* Renders messages (a system message may come first; then user and assistant turns in turn,
 * starting with a user's: two of one role in a row are an error naming the message by its
 * where, else by its index from 0) and appends
 * the ids and labels (same length; -100 = no loss) to ids/labels. A conversation must hold at
 * least one (trained) assistant message with content; an empty one is rendered, unlabeled. */
int template_encode(const chat_template *tpl, tokenizer *t, const tpl_message *msgs, int n,
                    tok_ids *ids, tok_ids *labels, pesc_error *err);

/* Plain text as a training document: BOS (when the template uses one) + text + EOS, every
 * token labeled. */
int template_encode_text(const chat_template *tpl, tokenizer *t, const char *text, size_t len,
                         tok_ids *ids, tok_ids *labels, pesc_error *err);

/* Messages laid end to end as plain text, with no chat template: BOS when the template
 * uses one (as template_encode_text), each assistant message followed by EOS and labeled,
 * the rest context. A prompt and its completion, as OpenAI's legacy fine-tuning files and
 * TRL's prompt-completion datasets mean them. */
int template_encode_bare(const chat_template *tpl, tokenizer *t, const tpl_message *msgs, int n,
                         tok_ids *ids, tok_ids *labels, pesc_error *err);

/* The prompt for generation: messages (system?, user, [assistant, user]...) rendered up to and
 * including the assistant header of the next turn, so the model continues as the assistant. */
int template_encode_prompt(const chat_template *tpl, tokenizer *t, const tpl_message *msgs,
                           int n, tok_ids *ids, pesc_error *err);

/* The named template that writes the turn markers of a model's own chat template (the Jinja
 * text of its tokenizer_config.json): phi4, qwen3, chatml, llama3, phi3, phi4-mini, llama2,
 * mistral, granite, gemma, camelidae or alpaca; NULL when none does. Read from the markers only, so a suggestion, not a proof. */
const char *template_suggest(const char *jinja);
/* The template that t's model writes its own turns in (template_suggest of its chat template)
 * when that is not `used`, for the note of a command that was given no --template; else NULL. */
const char *template_model_other(const tokenizer *t, const char *used);

/* Ids that end an assistant turn: the tokenizer's EOS and the template's end marker when that
 * is one token. Returns how many were written (at most max). */
int template_stop_ids(const chat_template *tpl, const tokenizer *t, int32_t *out, int max);

#endif
