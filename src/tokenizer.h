/* tokenizer — Hugging Face `tokenizer.json` files, encoded and decoded exactly as the
 * `tokenizers` library does (the tests compare ids with it on a varied corpus).
 *
 * Supported: BPE models with and without byte fallback (SentencePiece-style Llama 2 /
 * Mistral / Gemma files and byte-level Llama 3 / Qwen files); normalizers Prepend, Replace,
 * NFC, NFKC, NFD, NFKD, Strip, Sequence; pre-tokenizers Metaspace, ByteLevel, Split (PCRE2
 * regex or string, every split behavior, invert), Digits, Sequence; added tokens (special,
 * lstrip, rstrip, normalized, single_word); post-processors TemplateProcessing, ByteLevel,
 * Sequence; decoders ByteFallback, Fuse, Strip, Replace, ByteLevel, Metaspace, Sequence.
 * Anything else is refused at load time with an error that names it.
 *
 * Owns: the vocabulary, merges, added tokens, the PCRE2 programs and a word cache.
 * Must not: know about chat templates, datasets or models.
 *
 * Threads: decoding is read-only and may run concurrently; tok_encode uses scratch space and
 * a cache inside the tokenizer, so one thread encodes with a given tokenizer at a time. */
#ifndef PESC_TOKENIZER_H
#define PESC_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct tokenizer tokenizer;

/* A growable id vector that tok_encode appends to. */
typedef struct tok_ids {
    int32_t *ids;    /* (n) */
    int n, cap;
} tok_ids;

void tok_ids_push(tok_ids *v, int32_t id);
void tok_ids_free(tok_ids *v);

/* Reads tokenizer.json; tokenizer_config.json beside it (optional) supplies the bos/eos/pad
 * token names and the chat template. Either file malformed is an error naming it. */
tokenizer *tok_load(const char *path, pesc_error *err);
/* DIR/tokenizer.json; a missing DIR or file is an error saying to give --tokenizer. */
tokenizer *tok_load_dir(const char *model_dir, pesc_error *err);
void tok_delete(tokenizer *t);

enum {
    TOK_ADD_SPECIAL = 1,    /* apply the post-processor (BOS etc.), as HF encode(text) does */
    TOK_SPLIT_SPECIAL = 2,  /* special-token strings in the text are ordinary text (HF
                               encode_special_tokens); non-special added tokens still match */
};

/* Appends the ids of text (UTF-8, len bytes) to out. Invalid UTF-8 is an error naming the
 * byte offset. */
int tok_encode(tokenizer *t, const char *text, size_t len, unsigned flags, tok_ids *out,
               pesc_error *err);

/* The whole decode of ids as HF decode(ids, skip_special_tokens) gives it: a fresh
 * NUL-terminated string (length in *len when non-NULL). Unknown ids are dropped. */
char *tok_decode(const tokenizer *t, const int32_t *ids, int n, int skip_special, size_t *len);

/* Streaming decode for generation: feed ids one at a time and print what comes back. The
 * bytes of a partial UTF-8 character are held back until it is complete; malformed bytes come
 * out as U+FFFD. */
typedef struct tok_stream {
    const tokenizer *t;
    int skip_special;
    long n_tokens;                  /* tokens seen so far (the first one is stripped like HF) */
    unsigned char pending[8];       /* an incomplete UTF-8 character */
    int n_pending;
    char *out;                      /* returned text, owned here */
    size_t out_cap;
} tok_stream;

void tok_stream_init(tok_stream *s, const tokenizer *t, int skip_special);
/* Text completed by id (possibly empty), valid until the next call; length in *len. An id
 * with no token (a gap in the vocabulary, or past it: a model's padded rows) comes out as
 * "<id N>", so that what a model generated is seen rather than silently dropped. */
const char *tok_stream_push(tok_stream *s, int32_t id, size_t *len);
/* Whatever is still held back, as U+FFFD. */
const char *tok_stream_flush(tok_stream *s, size_t *len);
void tok_stream_free(tok_stream *s);

/* Vocabulary: ids run 0..tok_vocab_size()-1 (model vocabulary and added tokens), the largest
 * id tokenizer.json names and one; tok_vocab_missing of them have no token there (gaps in its
 * numbering), and tok_token gives NULL for those. */
int tok_vocab_size(const tokenizer *t);
int tok_vocab_missing(const tokenizer *t);
/* Token string of an id (the vocabulary's spelling, e.g. "Ġthe"), or NULL. */
const char *tok_token(const tokenizer *t, int32_t id);
/* Id of an exact token string (vocabulary or added token), or -1. */
int32_t tok_token_id(const tokenizer *t, const char *token);
int tok_is_special(const tokenizer *t, int32_t id);

/* Well-known ids, -1 when the files do not name one. bos/eos come from tokenizer_config.json
 * or, failing that, from the post-processor and the usual spellings. */
int32_t tok_bos(const tokenizer *t);
int32_t tok_eos(const tokenizer *t);
int32_t tok_pad(const tokenizer *t);
/* The `chat_template` of tokenizer_config.json (a string, or the one named "default" of a
 * list), or NULL. */
const char *tok_chat_template(const tokenizer *t);

/* The Unicode version of the normalization tables. */
const char *tok_unicode_version(void);

#endif
