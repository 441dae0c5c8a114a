/* tokenizer — see tokenizer.h.
 *
 * The pipeline follows Hugging Face tokenizers step for step, because exact ids depend on
 * every detail of its order:
 *   1. split the raw text on added tokens whose `normalized` is false (leftmost-longest);
 *   2. normalize each remaining piece, then split it on the normalized added tokens;
 *   3. pre-tokenize each piece (a list of byte strings; empty ones are dropped);
 *   4. run BPE on each pre-token (merges by rank, leftmost first on ties);
 *   5. the post-processor adds BOS/EOS when asked.
 * Decoding runs the decoder chain over the token strings, as HF's decode_chain does. */
#define _GNU_SOURCE   /* memmem */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenizer_unicode.h"

/* ================================================================== small containers ===== */

typedef struct strbuf {
    char *s;
    size_t len, cap;
} strbuf;

static void sb_reserve(strbuf *b, size_t extra)
{
    if (b->len + extra + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + extra + 1)
            cap *= 2;
        b->s = xrealloc(b->s, cap);
        b->cap = cap;
    }
}

static void sb_put(strbuf *b, const void *p, size_t n)
{
    sb_reserve(b, n);
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_putc(strbuf *b, char c) { sb_put(b, &c, 1); }

static void sb_put_cp(strbuf *b, uint32_t cp)
{
    char u[4];
    int n;
    if (cp < 0x80) { u[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xc0 | cp >> 6); u[1] = (char)(0x80 | (cp & 0x3f)); n = 2; }
    else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | cp >> 12); u[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f)); n = 3;
    } else {
        u[0] = (char)(0xf0 | cp >> 18); u[1] = (char)(0x80 | (cp >> 12 & 0x3f));
        u[2] = (char)(0x80 | (cp >> 6 & 0x3f)); u[3] = (char)(0x80 | (cp & 0x3f)); n = 4;
    }
    sb_put(b, u, (size_t)n);
}

void tok_ids_push(tok_ids *v, int32_t id)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 64;
        v->ids = xrealloc(v->ids, (size_t)v->cap * sizeof *v->ids);
    }
    v->ids[v->n++] = id;
}

void tok_ids_free(tok_ids *v)
{
    free(v->ids);
    memset(v, 0, sizeof *v);
}

/* Length of the UTF-8 sequence starting with byte c (1 for a stray byte). */
static int utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}

/* Decodes one code point of valid UTF-8 at s; returns its length. */
static int utf8_decode(const unsigned char *s, uint32_t *cp)
{
    if (s[0] < 0x80) { *cp = s[0]; return 1; }
    if (s[0] < 0xe0) { *cp = (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f); return 2; }
    if (s[0] < 0xf0) {
        *cp = (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
        return 3;
    }
    *cp = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 |
          (uint32_t)(s[2] & 0x3f) << 6 | (s[3] & 0x3f);
    return 4;
}

/* How many leading bytes of s (n available) form a valid UTF-8 prefix (at least 1), and the
 * length the sequence needs (*need, 0 for a byte that cannot start one). */
static int utf8_prefix(const unsigned char *s, size_t n, int *need)
{
    unsigned char c = s[0];
    if (c < 0x80) { *need = 1; return 1; }
    if (c >= 0xc2 && c <= 0xdf) *need = 2;
    else if (c >= 0xe0 && c <= 0xef) *need = 3;
    else if (c >= 0xf0 && c <= 0xf4) *need = 4;
    else { *need = 0; return 1; }
    int i = 1;
    for (; i < *need && (size_t)i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            break;
        /* overlongs, surrogates and > U+10FFFF show in the second byte */
        if (i == 1 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f) ||
                       (c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] > 0x8f)))
            break;
    }
    return i;
}

/* Length of the valid UTF-8 character at s (n bytes available), 0 when malformed, -1 when
 * the bytes so far are a valid but incomplete prefix. */
static int utf8_valid_char(const unsigned char *s, size_t n)
{
    int need, have = utf8_prefix(s, n, &need);
    if (need && have == need)
        return need;
    if (need && (size_t)have == n)
        return -1;
    return 0;
}

/* Whether s is exactly one valid UTF-8 character (a Metaspace replacement, a Strip
 * decoder's content: Hugging Face's `char`). */
static int one_char(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && utf8_valid_char((const unsigned char *)s, n) == (int)n;
}

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ (w * 0xc4ceb9fe1a85ec53ull)) * 0x100000001b3ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ (w * 0xc4ceb9fe1a85ec53ull)) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
    return h;
}

/* String -> int map with its own key storage (open addressing, power-of-two capacity). */
typedef struct strmap_slot {
    uint32_t hash, key_len;
    size_t key_off;
    int32_t value;
    int used;
} strmap_slot;

typedef struct strmap {
    strmap_slot *slots;
    size_t cap, n;
    strbuf keys;
} strmap;

static void strmap_free(strmap *m)
{
    free(m->slots);
    free(m->keys.s);
    memset(m, 0, sizeof *m);
}

static void strmap_clear(strmap *m)
{
    if (m->slots)
        memset(m->slots, 0, m->cap * sizeof *m->slots);
    m->n = 0;
    m->keys.len = 0;
}

static strmap_slot *strmap_find(const strmap *m, const char *s, size_t len, uint32_t h)
{
    if (!m->cap)
        return NULL;
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        strmap_slot *slot = &m->slots[i];
        if (!slot->used)
            return slot;
        if (slot->hash == h && slot->key_len == len && memcmp(m->keys.s + slot->key_off, s, len) == 0)
            return slot;
    }
}

static int32_t strmap_get(const strmap *m, const char *s, size_t len, int32_t missing)
{
    strmap_slot *slot = strmap_find(m, s, len, (uint32_t)hash_bytes(s, len));
    return slot && slot->used ? slot->value : missing;
}

static void strmap_put(strmap *m, const char *s, size_t len, int32_t value)
{
    if (2 * (m->n + 1) > m->cap) {
        strmap_slot *old = m->slots;
        size_t old_cap = m->cap;
        m->cap = m->cap ? 2 * m->cap : 1024;
        m->slots = xcalloc(m->cap, sizeof *m->slots);
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].used) {
                size_t j = old[i].hash & (m->cap - 1);
                while (m->slots[j].used)
                    j = (j + 1) & (m->cap - 1);
                m->slots[j] = old[i];
            }
        free(old);
    }
    uint32_t h = (uint32_t)hash_bytes(s, len);
    strmap_slot *slot = strmap_find(m, s, len, h);
    if (!slot->used) {
        slot->used = 1;
        slot->hash = h;
        slot->key_len = (uint32_t)len;
        slot->key_off = m->keys.len;
        sb_put(&m->keys, s, len);
        m->n++;
    }
    slot->value = value;
}

/* (left id, right id) -> (rank, merged id). */
typedef struct merge_slot {
    uint64_t key;      /* left << 32 | right, + 1 so that 0 marks an empty slot */
    int32_t rank, id;
} merge_slot;

typedef struct merge_map {
    merge_slot *slots;
    size_t cap, n;
} merge_map;

static uint64_t merge_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1; }

static size_t merge_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (size_t)k;
}

static const merge_slot *merge_get(const merge_map *m, int32_t a, int32_t b)
{
    if (!m->cap)
        return NULL;
    uint64_t k = merge_key(a, b);
    for (size_t i = merge_hash(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].key == k)
            return &m->slots[i];
        if (m->slots[i].key == 0)
            return NULL;
    }
}

static void merge_put(merge_map *m, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    if (2 * (m->n + 1) > m->cap) {
        merge_slot *old = m->slots;
        size_t old_cap = m->cap;
        m->cap = m->cap ? 2 * m->cap : 4096;
        m->slots = xcalloc(m->cap, sizeof *m->slots);
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].key) {
                size_t j = merge_hash(old[i].key) & (m->cap - 1);
                while (m->slots[j].key)
                    j = (j + 1) & (m->cap - 1);
                m->slots[j] = old[i];
            }
        free(old);
    }
    uint64_t k = merge_key(a, b);
    size_t i = merge_hash(k) & (m->cap - 1);
    while (m->slots[i].key && m->slots[i].key != k)
        i = (i + 1) & (m->cap - 1);
    if (m->slots[i].key != k)
        m->n++;
    m->slots[i] = (merge_slot){k, rank, id};   /* a repeated pair: the last wins, as in HF */
}

/* ====================================================================== components ===== */

/* A compiled pattern: PCRE2 for {"Regex"}, a plain byte search for {"String"}. */
typedef struct regex {
    pcre2_code *code;
    char *source;                /* the pattern as tokenizer.json gives it (messages) */
    char *literal;
    size_t literal_len;
} regex;

enum split_behavior { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREVIOUS, SPLIT_MERGED_NEXT,
                      SPLIT_CONTIGUOUS };

enum norm_kind { NORM_PREPEND, NORM_REPLACE, NORM_NFC, NORM_NFKC, NORM_NFD, NORM_NFKD, NORM_STRIP };

typedef struct normalizer {
    enum norm_kind kind;
    char *text;          /* Prepend: what; Replace: content */
    regex pattern;       /* Replace */
    int left, right;     /* Strip */
} normalizer;

enum pretok_kind { PRE_SPLIT, PRE_METASPACE, PRE_BYTELEVEL, PRE_DIGITS };
enum prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };

typedef struct pretokenizer {
    enum pretok_kind kind;
    regex pattern;                 /* Split, ByteLevel (use_regex), Digits */
    enum split_behavior behavior;
    int invert;
    char replacement[8];           /* Metaspace */
    enum prepend_scheme prepend;
    int split;                     /* Metaspace: split on the replacement */
    int add_prefix_space;          /* ByteLevel */
} pretokenizer;

enum decoder_kind { DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_REPLACE, DEC_BYTELEVEL,
                    DEC_METASPACE };

typedef struct decoder {
    enum decoder_kind kind;
    char *from, *to;               /* Replace (string pattern only) */
    char content[8];               /* Strip: the character; Metaspace: the replacement */
    int start, stop;               /* Strip */
    enum prepend_scheme prepend;   /* Metaspace */
    int after_fuse;                /* for streaming: a Strip after Fuse acts on the whole text */
} decoder;

typedef struct added_token {
    int32_t id;
    char *content;
    char *match;                   /* what is searched for: content, normalized when normalized */
    int special, lstrip, rstrip, normalized, single_word;
} added_token;

/* Byte trie over added-token strings; edges in a hash map keyed by (node, byte). */
typedef struct trie {
    merge_map edges;               /* key (node, byte) -> child in .id */
    int32_t *terminal;             /* (n_nodes) added-token index or -1 */
    int n_nodes;
    unsigned char first[256];      /* bytes that start some token */
} trie;

typedef struct symbol {
    int32_t id;
    int prev, next;
    int len;                       /* bytes of the word it covers; 0 once merged away */
} symbol;

typedef struct heap_item {
    int32_t rank, pos, id;
} heap_item;

typedef struct piece {
    size_t off, len;
    int at_start;                  /* begins at offset 0 of the original text (Metaspace first) */
} piece;

typedef struct piece_list {
    piece *v;
    int n, cap;
    strbuf text;
} piece_list;

struct tokenizer {
    /* model */
    strmap vocab;                  /* token -> id (model vocabulary and added tokens) */
    char **id_text;                /* (n_ids) token string of each id, NULL for holes */
    unsigned char *id_special;     /* (n_ids) */
    int n_ids, ids_cap;
    merge_map merges;
    int byte_fallback, fuse_unk, ignore_merges;
    int space_split;               /* pieces may be cut before a space mark (space_split_safe) */
    int32_t unk_id;
    char *prefix, *suffix;         /* continuing_subword_prefix, end_of_word_suffix */
    int32_t byte_ids[256];         /* <0xXX> tokens for byte fallback, -1 if absent */

    normalizer *norm;
    int n_norm;
    double norm_growth;            /* how many times longer the Replace normalizers may make
                                      a text, at most (0: 1) */
    pretokenizer *pre;
    int n_pre;
    decoder *dec;
    int n_dec;
    int has_decoder;
    tok_ids post_prefix, post_suffix;   /* TemplateProcessing single */

    added_token *added;
    int n_added;
    trie raw_trie, norm_trie;
    regex word_char;               /* \w, for single_word */

    int32_t bos, eos, pad;
    char *chat_template;

    /* byte-level alphabet (GPT-2's bytes_to_unicode) */
    uint32_t byte_char[256];
    int16_t char_byte[512];

    /* encode scratch and cache (why tok_encode is not thread-safe) */
    pcre2_match_data *match;
    pcre2_match_context *match_ctx;   /* the JIT's stack, up to REGEX_JIT_STACK */
    pcre2_jit_stack *jit_stack;
    int regex_rc;                /* a match's failure in this tok_encode (PCRE2's code), or 0 */
    const regex *regex_failed;   /* whose */
    piece_list pieces[2];
    strbuf norm_buf[2];
    symbol *syms;
    heap_item *heap;
    int sym_cap, heap_cap;
    strmap cache;                  /* word -> offset into cache_ids */
    tok_ids cache_ids;
};

/* ========================================================================= regexes ===== */

static int regex_compile(regex *r, const char *pattern, size_t len, int literal, pesc_error *err)
{
    if (literal) {
        if (len == 0)
            return pesc_fail(err, "an empty string pattern matches nothing useful");
        r->literal = xmalloc(len + 1);
        memcpy(r->literal, pattern, len + 1);
        r->literal_len = len;
        return 0;
    }
    int code;
    PCRE2_SIZE offset;
    uint32_t options = PCRE2_UTF | PCRE2_NO_UTF_CHECK | PCRE2_UCP;
    r->code = pcre2_compile((PCRE2_SPTR)pattern, len, options, &code, &offset, NULL);
    if (!r->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return pesc_fail(err, "regex /%.*s/ at offset %zu: %s", (int)len, pattern,
                         (size_t)offset, (const char *)msg);
    }
    r->source = xmalloc(len + 1);
    memcpy(r->source, pattern, len);
    r->source[len] = '\0';
    pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE);   /* optional: falls back to the interpreter */
    return 0;
}

static void regex_free(regex *r)
{
    pcre2_code_free(r->code);
    free(r->source);
    free(r->literal);
    memset(r, 0, sizeof *r);
}

/* The JIT keeps a backtracking point on its stack for each repetition of a group, so a pattern
 * like (?:x|y)+ over a long run of text needs a deep one: PCRE2's default of 32 KiB ends such a
 * match after about a thousand characters. With this much a match goes on to about a hundred
 * thousand; past it the interpreter (frames on the heap) takes over. */
#define REGEX_JIT_STACK (4u << 20)

/* Next match at or after start: 1 with [*ms, *me), 0 when none. Empty matches advance.
 * A match PCRE2 cannot finish (its match limit, ten million steps, reached by a pattern that
 * backtracks without end) is also 0, and is noted in t->regex_rc for tok_encode to refuse the
 * text: carrying on would tokenize the rest of it as if nothing matched. */
static int regex_next(tokenizer *t, const regex *r, const char *s, size_t len, size_t start,
                      size_t *ms, size_t *me)
{
    if (r->literal) {
        const char *hit = start <= len ? memmem(s + start, len - start, r->literal, r->literal_len) : NULL;
        if (!hit)
            return 0;
        *ms = (size_t)(hit - s);
        *me = *ms + r->literal_len;
        return 1;
    }
    int rc = pcre2_jit_match(r->code, (PCRE2_SPTR)s, len, start, 0, t->match, t->match_ctx);
    if (rc == PCRE2_ERROR_JIT_BADOPTION || rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(r->code, (PCRE2_SPTR)s, len, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                         t->match, t->match_ctx);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH && !t->regex_rc) {
        t->regex_rc = rc;
        t->regex_failed = r;
    }
    if (rc < 0)
        return 0;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->match);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

/* ========================================================================= Unicode ===== */

enum { HANGUL_S = 0xAC00, HANGUL_L = 0x1100, HANGUL_V = 0x1161, HANGUL_T = 0x11A7,
       HANGUL_LCOUNT = 19, HANGUL_VCOUNT = 21, HANGUL_TCOUNT = 28, HANGUL_NCOUNT = 588,
       HANGUL_SCOUNT = 11172 };

static const tu_decomposition *find_decomposition(uint32_t cp)
{
    int lo = 0, hi = tu_n_decompositions - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (tu_decompositions[mid].cp == cp)
            return &tu_decompositions[mid];
        if (tu_decompositions[mid].cp < cp) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

static uint32_t find_composition(uint32_t a, uint32_t b)
{
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_LCOUNT && b >= HANGUL_V && b < HANGUL_V + HANGUL_VCOUNT)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_VCOUNT + (b - HANGUL_V)) * HANGUL_TCOUNT;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_SCOUNT && (a - HANGUL_S) % HANGUL_TCOUNT == 0 &&
        b > HANGUL_T && b < HANGUL_T + HANGUL_TCOUNT)
        return a + (b - HANGUL_T);
    int lo = 0, hi = tu_n_compositions - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const tu_composition *c = &tu_compositions[mid];
        if (c->first == a && c->second == b)
            return c->composite;
        if (c->first < a || (c->first == a && c->second < b)) lo = mid + 1; else hi = mid - 1;
    }
    return 0;
}

typedef struct cp_buf {
    uint32_t *v;
    size_t n, cap;
} cp_buf;

static void cp_push(cp_buf *b, uint32_t cp)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        b->v = xrealloc(b->v, b->cap * sizeof *b->v);
    }
    b->v[b->n++] = cp;
}

/* Unicode normalization of s into out: form is NORM_NFC, NORM_NFKC, NORM_NFD or NORM_NFKD. */
static void unicode_normalize(const char *s, size_t len, enum norm_kind form, strbuf *out)
{
    int compat = form == NORM_NFKC || form == NORM_NFKD;
    int compose = form == NORM_NFC || form == NORM_NFKC;
    unsigned maybe = compat ? TU_NFKC_MAYBE : TU_NFC_MAYBE;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    for (; i < len; i++) {   /* quick check: most text needs nothing */
        if (u[i] < 0x80)
            continue;
        uint32_t cp;
        int n = utf8_decode(u + i, &cp);
        if (tu_props(cp) & maybe)
            break;
        i += (size_t)n - 1;
    }
    out->len = 0;
    if (i >= len) {
        sb_put(out, s, len);
        return;
    }
    cp_buf cps = {0};
    for (i = 0; i < len;) {    /* decompose */
        uint32_t cp;
        i += (size_t)utf8_decode(u + i, &cp);
        if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_SCOUNT) {
            uint32_t k = cp - HANGUL_S;
            cp_push(&cps, HANGUL_L + k / HANGUL_NCOUNT);
            cp_push(&cps, HANGUL_V + k % HANGUL_NCOUNT / HANGUL_TCOUNT);
            if (k % HANGUL_TCOUNT)
                cp_push(&cps, HANGUL_T + k % HANGUL_TCOUNT);
            continue;
        }
        const tu_decomposition *d = (tu_props(cp) & maybe) ? find_decomposition(cp) : NULL;
        if (!d) {
            cp_push(&cps, cp);
            continue;
        }
        const uint32_t *seq = tu_decomposition_pool + d->offset + (compat ? d->n_canonical : 0);
        int n = compat ? d->n_compat : d->n_canonical;
        for (int k = 0; k < n; k++)
            cp_push(&cps, seq[k]);
    }
    /* canonical ordering: stable insertion sort of each run of non-starters by class */
    for (size_t k = 1; k < cps.n; k++) {
        unsigned c = tu_props(cps.v[k]) & TU_CCC_MASK;
        if (!c)
            continue;
        size_t j = k;
        uint32_t cp = cps.v[k];
        while (j > 0) {
            unsigned pc = tu_props(cps.v[j - 1]) & TU_CCC_MASK;
            if (pc <= c)
                break;
            cps.v[j] = cps.v[j - 1];
            j--;
        }
        cps.v[j] = cp;
    }
    if (compose) {
        /* UAX #15 composition: a character joins the last starter when adjacent to it or
         * when every character between has a lower combining class */
        long starter = -1;
        unsigned last_class = 0;
        size_t w = 0;
        for (size_t k = 0; k < cps.n; k++) {
            uint32_t cp = cps.v[k];
            unsigned c = tu_props(cp) & TU_CCC_MASK;
            if (starter >= 0 && ((size_t)starter == w - 1 || (last_class && last_class < c))) {
                uint32_t composite = find_composition(cps.v[starter], cp);
                if (composite) {
                    cps.v[starter] = composite;
                    continue;
                }
            }
            if (c == 0) {
                starter = (long)w;
                last_class = 0;
            } else {
                last_class = c;
            }
            cps.v[w++] = cp;
        }
        cps.n = w;
    }
    for (size_t k = 0; k < cps.n; k++)
        sb_put_cp(out, cps.v[k]);
    free(cps.v);
}

const char *tok_unicode_version(void) { return tu_unicode_version; }

/* ====================================================================== added tokens ===== */

static void trie_init(trie *tr)
{
    memset(tr, 0, sizeof *tr);
    tr->terminal = xmalloc(sizeof *tr->terminal);
    tr->terminal[0] = -1;
    tr->n_nodes = 1;
}

static void trie_free(trie *tr)
{
    free(tr->edges.slots);
    free(tr->terminal);
    memset(tr, 0, sizeof *tr);
}

static void trie_add(trie *tr, const char *s, int32_t index)
{
    size_t len = strlen(s);
    if (!len)
        return;
    int node = 0;
    tr->first[(unsigned char)s[0]] = 1;
    for (size_t i = 0; i < len; i++) {
        const merge_slot *e = merge_get(&tr->edges, node, (unsigned char)s[i]);
        if (e) {
            node = e->id;
            continue;
        }
        tr->terminal = xrealloc(tr->terminal, (size_t)(tr->n_nodes + 1) * sizeof *tr->terminal);
        tr->terminal[tr->n_nodes] = -1;
        merge_put(&tr->edges, node, (unsigned char)s[i], 0, tr->n_nodes);
        node = tr->n_nodes++;
    }
    if (tr->terminal[node] < 0)
        tr->terminal[node] = index;
}

/* Leftmost-longest match at or after start: the added-token index, with [*ms, *me). */
static int trie_next(const trie *tr, const char *s, size_t len, size_t start, size_t *ms, size_t *me)
{
    if (tr->n_nodes <= 1)
        return -1;
    for (size_t i = start; i < len; i++) {
        if (!tr->first[(unsigned char)s[i]])
            continue;
        int node = 0, best = -1;
        size_t best_end = 0;
        for (size_t j = i; j < len; j++) {
            const merge_slot *e = merge_get(&tr->edges, node, (unsigned char)s[j]);
            if (!e)
                break;
            node = e->id;
            if (tr->terminal[node] >= 0) {
                best = tr->terminal[node];
                best_end = j + 1;
            }
        }
        if (best >= 0) {
            *ms = i;
            *me = best_end;
            return best;
        }
    }
    return -1;
}

static int is_space_cp(uint32_t cp)
{
    return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
           cp == 0x205f || cp == 0x3000;
}

static int word_char_at(tokenizer *t, const char *s, size_t len, size_t at)
{
    size_t ms, me;
    if (at >= len)
        return 0;
    int n = utf8_len((unsigned char)s[at]);
    return regex_next(t, &t->word_char, s + at, (size_t)n, 0, &ms, &me);
}

/* Start of the character before offset at (> 0). */
static size_t prev_char(const char *s, size_t at)
{
    size_t k = at - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xc0) == 0x80)
        k--;
    return k;
}

/* A segment of text between added tokens: token >= 0 is an added token, else [off, off+len). */
typedef struct segment {
    int32_t token;
    size_t off, len;
} segment;

typedef struct segment_list {
    segment *v;
    int n, cap;
} segment_list;

static void seg_push(segment_list *l, int32_t token, size_t off, size_t len)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->v = xrealloc(l->v, (size_t)l->cap * sizeof *l->v);
    }
    l->v[l->n++] = (segment){token, off, len};
}

/* HF AddedVocabulary::find_matches: splits s on the added tokens of tr. */
static void split_added(tokenizer *t, const trie *tr, const char *s, size_t len, int skip_special,
                        segment_list *out)
{
    size_t pos = 0, start_offset = 0, ms, me;
    out->n = 0;
    int index;
    while ((index = trie_next(tr, s, len, pos, &ms, &me)) >= 0) {
        const added_token *a = &t->added[index];
        pos = me;
        if (skip_special && a->special)
            continue;
        size_t start = ms, stop = me;
        if (a->single_word) {
            int before = start > 0 && word_char_at(t, s, len, prev_char(s, start));
            int after = word_char_at(t, s, len, stop);
            if (before || after)
                continue;
        }
        if (a->lstrip) {
            size_t k = start;
            while (k > 0) {
                size_t b = prev_char(s, k);
                uint32_t cp;
                utf8_decode((const unsigned char *)s + b, &cp);
                if (!is_space_cp(cp))
                    break;
                k = b;
            }
            start = k > start_offset ? k : start_offset;
        }
        if (a->rstrip) {
            while (stop < len) {
                uint32_t cp;
                int n = utf8_decode((const unsigned char *)s + stop, &cp);
                if (!is_space_cp(cp))
                    break;
                stop += (size_t)n;
            }
        }
        if (start_offset < start)
            seg_push(out, -1, start_offset, start - start_offset);
        seg_push(out, a->id, start, stop - start);
        start_offset = stop;
        if (pos < stop)
            pos = stop;
    }
    if (start_offset < len)
        seg_push(out, -1, start_offset, len - start_offset);
}

/* ==================================================================== normalization ===== */

static void normalize(tokenizer *t, const char *s, size_t len, strbuf **result)
{
    strbuf *cur = &t->norm_buf[0], *next = &t->norm_buf[1];
    cur->len = 0;
    sb_put(cur, s, len);
    for (int i = 0; i < t->n_norm; i++) {
        const normalizer *n = &t->norm[i];
        next->len = 0;
        switch (n->kind) {
        case NORM_PREPEND:
            if (!cur->len)
                continue;
            sb_put(next, n->text, strlen(n->text));
            sb_put(next, cur->s, cur->len);
            break;
        case NORM_REPLACE: {
            size_t pos = 0, ms, me, clen = strlen(n->text);
            while (pos < cur->len && regex_next(t, &n->pattern, cur->s, cur->len, pos, &ms, &me)) {
                sb_put(next, cur->s + pos, ms - pos);
                sb_put(next, n->text, clen);
                if (me == ms) {   /* empty match: keep one character and go on */
                    if (me >= cur->len)
                        break;
                    size_t cl = (size_t)utf8_len((unsigned char)cur->s[me]);
                    sb_put(next, cur->s + me, cl);
                    me += cl;
                }
                pos = me;
            }
            if (pos < cur->len)
                sb_put(next, cur->s + pos, cur->len - pos);
            break;
        }
        case NORM_NFC: case NORM_NFKC: case NORM_NFD: case NORM_NFKD:
            unicode_normalize(cur->s, cur->len, n->kind, next);
            break;
        case NORM_STRIP: {
            size_t a = 0, b = cur->len;
            if (n->left)
                while (a < b) {
                    uint32_t cp;
                    int k = utf8_decode((const unsigned char *)cur->s + a, &cp);
                    if (!is_space_cp(cp)) break;
                    a += (size_t)k;
                }
            if (n->right)
                while (b > a) {
                    size_t k = prev_char(cur->s, b);
                    uint32_t cp;
                    utf8_decode((const unsigned char *)cur->s + k, &cp);
                    if (!is_space_cp(cp)) break;
                    b = k;
                }
            sb_put(next, cur->s + a, b - a);
            break;
        }
        }
        strbuf *tmp = cur;
        cur = next;
        next = tmp;
    }
    *result = cur;
}

/* =================================================================== pre-tokenizers ===== */

static void piece_push(piece_list *l, const char *s, size_t len, int at_start)
{
    if (!len)
        return;   /* HF drops empty splits */
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = xrealloc(l->v, (size_t)l->cap * sizeof *l->v);
    }
    l->v[l->n++] = (piece){l->text.len, len, at_start};
    sb_put(&l->text, s, len);
}

/* Splits s by the match ranges in m (pairs of offsets, n of them) under behavior; HF's
 * NormalizedString::split. */
typedef struct range {
    size_t a, b;
    int match;
} range;

static void split_ranges(range *r, int n, enum split_behavior behavior, int invert,
                         const char *s, int at_start, piece_list *out)
{
    if (invert)
        for (int i = 0; i < n; i++)
            r[i].match = !r[i].match;
    int m = 0;
    switch (behavior) {
    case SPLIT_ISOLATED: m = n; break;
    case SPLIT_REMOVED:
        for (int i = 0; i < n; i++)
            if (!r[i].match) r[m++] = r[i];
        break;
    case SPLIT_CONTIGUOUS: {
        int prev = 0;
        for (int i = 0; i < n; i++) {
            if (r[i].match == prev && m > 0) r[m - 1].b = r[i].b;
            else r[m++] = r[i];
            prev = r[i].match;
        }
        break;
    }
    case SPLIT_MERGED_PREVIOUS: {
        int prev = 0;
        for (int i = 0; i < n; i++) {
            if (r[i].match && !prev && m > 0) r[m - 1].b = r[i].b;
            else r[m++] = r[i];
            prev = r[i].match;
        }
        break;
    }
    case SPLIT_MERGED_NEXT: {
        int prev = 0;
        m = n;
        int w = n;   /* fold from the right into r[w..n) */
        for (int i = n - 1; i >= 0; i--) {
            if (r[i].match && !prev && w < n) r[w].a = r[i].a;
            else r[--w] = r[i];
            prev = r[i].match;
        }
        memmove(r, r + w, (size_t)(n - w) * sizeof *r);
        m = n - w;
        break;
    }
    }
    for (int i = 0; i < m; i++)
        piece_push(out, s + r[i].a, r[i].b - r[i].a, at_start && r[i].a == 0);
}

typedef struct range_list {
    range *v;
    int n, cap;
} range_list;

static void range_push(range_list *l, size_t a, size_t b, int match)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = xrealloc(l->v, (size_t)l->cap * sizeof *l->v);
    }
    l->v[l->n++] = (range){a, b, match};
}

/* HF Pattern::find_matches for a regex: the whole string as match / non-match ranges. */
static void regex_ranges(tokenizer *t, const regex *re, const char *s, size_t len, range_list *out)
{
    size_t pos = 0, prev = 0, ms, me;
    out->n = 0;
    while (pos <= len && regex_next(t, re, s, len, pos, &ms, &me)) {
        if (me == ms) {   /* an empty match yields an empty piece, which is dropped */
            pos = ms + (ms < len ? (size_t)utf8_len((unsigned char)s[ms]) : 1);
            continue;
        }
        if (prev != ms)
            range_push(out, prev, ms, 0);
        range_push(out, ms, me, 1);
        prev = pos = me;
    }
    if (prev != len)
        range_push(out, prev, len, 0);
}

static void pretok_piece(tokenizer *t, const pretokenizer *p, const char *s, size_t len,
                         int at_start, piece_list *out, range_list *ranges, strbuf *tmp)
{
    switch (p->kind) {
    case PRE_SPLIT:
        regex_ranges(t, &p->pattern, s, len, ranges);
        split_ranges(ranges->v, ranges->n, p->behavior, p->invert, s, at_start, out);
        return;
    case PRE_DIGITS:
        regex_ranges(t, &p->pattern, s, len, ranges);
        split_ranges(ranges->v, ranges->n, p->behavior, 0, s, at_start, out);
        return;
    case PRE_METASPACE: {
        size_t rl = strlen(p->replacement);
        tmp->len = 0;
        /* replace ' ' first, then test the prefix on the replaced text */
        strbuf *r = tmp;
        for (size_t i = 0; i < len; i++) {
            if (s[i] == ' ') sb_put(r, p->replacement, rl);
            else sb_putc(r, s[i]);
        }
        int starts = r->len >= rl && memcmp(r->s, p->replacement, rl) == 0;
        if (!starts && (p->prepend == PREPEND_ALWAYS || (p->prepend == PREPEND_FIRST && at_start))) {
            sb_reserve(r, rl);
            memmove(r->s + rl, r->s, r->len + 1);
            memcpy(r->s, p->replacement, rl);
            r->len += rl;
        }
        if (!p->split) {
            piece_push(out, r->s, r->len, at_start);
            return;
        }
        ranges->n = 0;
        size_t prev = 0;
        for (size_t i = 0; i + rl <= r->len;) {
            if (memcmp(r->s + i, p->replacement, rl) == 0) {
                if (prev != i) range_push(ranges, prev, i, 0);
                range_push(ranges, i, i + rl, 1);
                i += rl;
                prev = i;
            } else {
                i++;
            }
        }
        if (prev != r->len)
            range_push(ranges, prev, r->len, 0);
        split_ranges(ranges->v, ranges->n, SPLIT_MERGED_NEXT, 0, r->s, at_start, out);
        return;
    }
    case PRE_BYTELEVEL: {
        tmp->len = 0;
        if (p->add_prefix_space && (len == 0 || s[0] != ' '))
            sb_putc(tmp, ' ');
        sb_put(tmp, s, len);
        /* regex split (or not), then map every byte of every piece to its character */
        if (p->pattern.code) {   /* use_regex */
            regex_ranges(t, &p->pattern, tmp->s, tmp->len, ranges);
        } else {
            ranges->n = 0;
            range_push(ranges, 0, tmp->len, 0);
        }
        for (int i = 0; i < ranges->n; i++) {
            const range *r = &ranges->v[i];
            if (r->b == r->a)
                continue;
            if (out->n == out->cap) {
                out->cap = out->cap ? 2 * out->cap : 64;
                out->v = xrealloc(out->v, (size_t)out->cap * sizeof *out->v);
            }
            size_t off = out->text.len;
            for (size_t k = r->a; k < r->b; k++)
                sb_put_cp(&out->text, t->byte_char[(unsigned char)tmp->s[k]]);
            out->v[out->n++] = (piece){off, out->text.len - off, at_start && r->a == 0};
        }
        return;
    }
    }
}

/* Pre-tokenizes s into t->pieces[result]; returns which of the two lists holds the result. */
static piece_list *pretokenize(tokenizer *t, const char *s, size_t len, int at_start)
{
    piece_list *cur = &t->pieces[0], *next = &t->pieces[1];
    cur->n = 0;
    cur->text.len = 0;
    piece_push(cur, s, len, at_start);
    range_list ranges = {0};
    strbuf tmp = {0};
    for (int i = 0; i < t->n_pre; i++) {
        next->n = 0;
        next->text.len = 0;
        for (int k = 0; k < cur->n; k++)
            pretok_piece(t, &t->pre[i], cur->text.s + cur->v[k].off, cur->v[k].len,
                         cur->v[k].at_start, next, &ranges, &tmp);
        piece_list *swap = cur;
        cur = next;
        next = swap;
    }
    free(ranges.v);
    free(tmp.s);
    return cur;
}

/* ============================================================================= BPE ===== */

static void heap_push(tokenizer *t, int *n, heap_item it)
{
    if (*n == t->heap_cap) {
        t->heap_cap = t->heap_cap ? 2 * t->heap_cap : 256;
        t->heap = xrealloc(t->heap, (size_t)t->heap_cap * sizeof *t->heap);
    }
    heap_item *h = t->heap;
    int i = (*n)++;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (h[p].rank < it.rank || (h[p].rank == it.rank && h[p].pos < it.pos))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = it;
}

static heap_item heap_pop(tokenizer *t, int *n)
{
    heap_item *h = t->heap, top = h[0], last = h[--(*n)];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && (h[c + 1].rank < h[c].rank || (h[c + 1].rank == h[c].rank && h[c + 1].pos < h[c].pos)))
            c++;
        if (last.rank < h[c].rank || (last.rank == h[c].rank && last.pos < h[c].pos))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static void sym_push(tokenizer *t, int *n, int32_t id, int len)
{
    if (*n == t->sym_cap) {
        t->sym_cap = t->sym_cap ? 2 * t->sym_cap : 256;
        t->syms = xrealloc(t->syms, (size_t)t->sym_cap * sizeof *t->syms);
    }
    t->syms[*n] = (symbol){id, *n - 1, *n + 1, len};
    (*n)++;
}

static void try_pair(tokenizer *t, int *heap_n, int pos)
{
    symbol *s = t->syms;
    if (pos < 0 || s[pos].next < 0)
        return;
    const merge_slot *m = merge_get(&t->merges, s[pos].id, s[s[pos].next].id);
    if (m)
        heap_push(t, heap_n, (heap_item){m->rank, pos, m->id});
}

/* HF BPE::merge_word: characters to ids (byte fallback, unk), then merges. */
static void bpe_word(tokenizer *t, const char *w, size_t len, tok_ids *out)
{
    if (t->ignore_merges) {
        int32_t id = strmap_get(&t->vocab, w, len, -1);
        if (id >= 0) {
            tok_ids_push(out, id);
            return;
        }
    }
    int n = 0;
    int32_t unk = -1;
    int unk_len = 0;
    strbuf tmp = {0};
    for (size_t i = 0; i < len;) {
        int cl = utf8_len((unsigned char)w[i]);
        const char *c = w + i;
        size_t clen = (size_t)cl;
        int first = i == 0, last = i + (size_t)cl >= len;
        if ((t->prefix && !first) || (t->suffix && last)) {
            tmp.len = 0;
            if (t->prefix && !first) sb_put(&tmp, t->prefix, strlen(t->prefix));
            sb_put(&tmp, c, clen);
            if (t->suffix && last) sb_put(&tmp, t->suffix, strlen(t->suffix));
            c = tmp.s;
            clen = tmp.len;
        }
        int32_t id = strmap_get(&t->vocab, c, clen, -1);
        i += (size_t)cl;
        if (id >= 0) {
            if (unk >= 0) { sym_push(t, &n, unk, unk_len); unk = -1; }
            sym_push(t, &n, id, cl);
            continue;
        }
        if (t->byte_fallback) {
            int all = 1;
            for (size_t k = 0; k < clen; k++)
                all &= t->byte_ids[(unsigned char)c[k]] >= 0;
            if (all) {
                for (size_t k = 0; k < clen; k++)
                    sym_push(t, &n, t->byte_ids[(unsigned char)c[k]], 1);
                continue;
            }
        }
        if (t->unk_id >= 0) {
            if (unk >= 0 && t->fuse_unk) {
                unk_len += cl;
            } else {
                if (unk >= 0) sym_push(t, &n, unk, unk_len);
                unk = t->unk_id;
                unk_len = cl;
            }
        }
    }
    if (unk >= 0)
        sym_push(t, &n, unk, unk_len);
    free(tmp.s);
    if (n == 0)
        return;
    t->syms[n - 1].next = -1;

    int heap_n = 0;
    for (int i = 0; i + 1 < n; i++)
        try_pair(t, &heap_n, i);
    symbol *s = t->syms;
    while (heap_n > 0) {
        heap_item top = heap_pop(t, &heap_n);
        symbol *a = &s[top.pos];
        if (a->len == 0 || a->next < 0)
            continue;
        const merge_slot *m = merge_get(&t->merges, a->id, s[a->next].id);
        if (!m || m->id != top.id || m->rank != top.rank)
            continue;   /* stale: one side changed since the pair was queued */
        symbol *b = &s[a->next];
        a->id = top.id;
        a->len += b->len;
        a->next = b->next;
        b->len = 0;
        if (a->next >= 0)
            s[a->next].prev = top.pos;
        try_pair(t, &heap_n, a->prev);
        try_pair(t, &heap_n, top.pos);
    }
    for (int i = 0; i >= 0; i = s[i].next)
        tok_ids_push(out, s[i].id);
}

enum { CACHE_MAX_WORD = 64, CACHE_MAX_ENTRIES = 1 << 18 };

static void bpe_cached(tokenizer *t, const char *w, size_t len, tok_ids *out)
{
    if (len > CACHE_MAX_WORD) {
        bpe_word(t, w, len, out);
        return;
    }
    int32_t at = strmap_get(&t->cache, w, len, -1);
    if (at >= 0) {
        int count = t->cache_ids.ids[at];
        for (int i = 1; i <= count; i++)
            tok_ids_push(out, t->cache_ids.ids[at + i]);
        return;
    }
    int before = out->n;
    bpe_word(t, w, len, out);
    if (t->cache.n >= CACHE_MAX_ENTRIES) {
        strmap_clear(&t->cache);
        t->cache_ids.n = 0;
    }
    strmap_put(&t->cache, w, len, t->cache_ids.n);
    tok_ids_push(&t->cache_ids, out->n - before);
    for (int i = before; i < out->n; i++)
        tok_ids_push(&t->cache_ids, out->ids[i]);
}

/* ========================================================================== encode ===== */

static int check_utf8(const char *s, size_t len, pesc_error *err)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        if (u[i] < 0x80) { i++; continue; }
        int n = utf8_valid_char(u + i, len - i);
        if (n <= 0)
            return pesc_fail(err, "text is not valid UTF-8 (byte %zu: 0x%02x)", i + 1, u[i]);
        i += (size_t)n;
    }
    return 0;
}

#define SPACE_MARK "\xe2\x96\x81"   /* U+2581, the Metaspace and SentencePiece space */

/* One piece through BPE, cut into words before each space mark that follows another character
 * where the vocabulary makes that exact (space_split_safe). */
static void bpe_piece(tokenizer *t, const char *w, size_t len, tok_ids *out)
{
    size_t start = 0;
    if (t->space_split)
        for (size_t i = 1; i + 3 <= len; i++)
            if (memcmp(w + i, SPACE_MARK, 3) == 0 && !(i >= 3 && memcmp(w + i - 3, SPACE_MARK, 3) == 0)) {
                bpe_cached(t, w + start, i - start, out);
                start = i;
            }
    bpe_cached(t, w + start, len - start, out);
}

static void encode_text(tokenizer *t, const char *s, size_t len, int at_start, unsigned flags,
                        tok_ids *out)
{
    strbuf *norm;
    normalize(t, s, len, &norm);
    /* the normalized buffer is reused by the next normalize(): copy what must survive */
    char *text = xmalloc(norm->len + 1);
    memcpy(text, norm->s, norm->len + 1);
    size_t tlen = norm->len;
    segment_list segs = {0};
    split_added(t, &t->norm_trie, text, tlen, flags & TOK_SPLIT_SPECIAL, &segs);
    for (int i = 0; i < segs.n; i++) {
        if (segs.v[i].token >= 0) {
            tok_ids_push(out, segs.v[i].token);
            continue;
        }
        piece_list *p = pretokenize(t, text + segs.v[i].off, segs.v[i].len,
                                    at_start && segs.v[i].off == 0);
        for (int k = 0; k < p->n; k++)
            bpe_piece(t, p->text.s + p->v[k].off, p->v[k].len, out);
    }
    free(segs.v);
    free(text);
}

/* A text a regex of the tokenizer could not finish matching (regex_next). */
static int regex_refusal(const tokenizer *t, size_t len, pesc_error *err)
{
    PCRE2_UCHAR why[120];
    pcre2_get_error_message(t->regex_rc, why, sizeof why);
    const char *pattern = t->regex_failed->source;
    int shown = (int)strlen(pattern) > 60 ? 57 : (int)strlen(pattern);
    return pesc_fail(err, "the tokenizer's regex /%.*s%s/ could not finish matching a text of "
                     "%zu bytes (%s): the pattern backtracks too much for it; shorten the text "
                     "or simplify the pattern in tokenizer.json", shown, pattern,
                     shown < (int)strlen(pattern) ? "..." : "", len, (const char *)why);
}

int tok_encode(tokenizer *t, const char *text, size_t len, unsigned flags, tok_ids *out,
               pesc_error *err)
{
    if (check_utf8(text, len, err) != 0)
        return -1;
    t->regex_rc = 0;
    if (flags & TOK_ADD_SPECIAL)
        for (int i = 0; i < t->post_prefix.n; i++)
            tok_ids_push(out, t->post_prefix.ids[i]);
    segment_list segs = {0};
    split_added(t, &t->raw_trie, text, len, flags & TOK_SPLIT_SPECIAL, &segs);
    for (int i = 0; i < segs.n; i++) {
        if (segs.v[i].token >= 0)
            tok_ids_push(out, segs.v[i].token);
        else
            encode_text(t, text + segs.v[i].off, segs.v[i].len, segs.v[i].off == 0, flags, out);
    }
    free(segs.v);
    if (t->regex_rc)
        return regex_refusal(t, len, err);
    if (flags & TOK_ADD_SPECIAL)
        for (int i = 0; i < t->post_suffix.n; i++)
            tok_ids_push(out, t->post_suffix.ids[i]);
    return 0;
}

/* ========================================================================== decode ===== */

typedef struct str_list {
    strbuf *v;
    int n, cap;
} str_list;

static strbuf *sl_add(str_list *l)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = xrealloc(l->v, (size_t)l->cap * sizeof *l->v);
    }
    strbuf *b = &l->v[l->n++];
    memset(b, 0, sizeof *b);
    sb_reserve(b, 0);
    b->s[0] = '\0';
    return b;
}

static void sl_free(str_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->v[i].s);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int byte_token(const char *s, size_t len)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    unsigned v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        unsigned d = (c >= '0' && c <= '9') ? (unsigned)(c - '0') : (c >= 'A' && c <= 'F') ?
                     (unsigned)(c - 'A' + 10) : (c >= 'a' && c <= 'f') ? (unsigned)(c - 'a' + 10) : 99;
        if (d > 15)
            return -1;
        v = v * 16 + d;
    }
    return (int)v;
}

static int utf8_all_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        int k = utf8_valid_char(s + i, n - i);
        if (k <= 0)
            return 0;
        i += (size_t)k;
    }
    return 1;
}

/* Appends s as String::from_utf8_lossy would: each maximal invalid prefix -> U+FFFD. */
static void put_lossy(strbuf *b, const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        int need, have = utf8_prefix(s + i, n - i, &need);
        if (need && have == need)
            sb_put(b, s + i, (size_t)have);
        else
            sb_put(b, "\xef\xbf\xbd", 3);
        i += (size_t)have;
    }
}

static void decode_step(const tokenizer *t, const decoder *d, str_list *in, str_list *out)
{
    out->n = 0;
    switch (d->kind) {
    case DEC_REPLACE: {
        size_t fl = strlen(d->from), tl = strlen(d->to);
        for (int i = 0; i < in->n; i++) {
            strbuf *o = sl_add(out);
            const char *s = in->v[i].s;
            size_t n = in->v[i].len;
            for (size_t k = 0; k < n;) {
                if (fl && k + fl <= n && memcmp(s + k, d->from, fl) == 0) {
                    sb_put(o, d->to, tl);
                    k += fl;
                } else {
                    sb_putc(o, s[k++]);
                }
            }
        }
        return;
    }
    case DEC_BYTEFALLBACK: {
        strbuf bytes = {0};
        for (int i = 0; i <= in->n; i++) {
            int b = i < in->n ? byte_token(in->v[i].s, in->v[i].len) : -1;
            if (b >= 0) {
                sb_putc(&bytes, (char)b);
                continue;
            }
            if (bytes.len) {
                if (utf8_all_valid((const unsigned char *)bytes.s, bytes.len)) {
                    sb_put(sl_add(out), bytes.s, bytes.len);
                } else {
                    for (size_t k = 0; k < bytes.len; k++)
                        sb_put(sl_add(out), "\xef\xbf\xbd", 3);
                }
                bytes.len = 0;
            }
            if (i < in->n)
                sb_put(sl_add(out), in->v[i].s, in->v[i].len);
        }
        free(bytes.s);
        return;
    }
    case DEC_FUSE: {
        strbuf *o = sl_add(out);
        for (int i = 0; i < in->n; i++)
            sb_put(o, in->v[i].s, in->v[i].len);
        return;
    }
    case DEC_STRIP: {
        size_t cl = strlen(d->content);
        for (int i = 0; i < in->n; i++) {
            const char *s = in->v[i].s;
            size_t a = 0, b = in->v[i].len;
            for (int k = 0; k < d->start && a + cl <= b && memcmp(s + a, d->content, cl) == 0; k++)
                a += cl;
            for (int k = 0; k < d->stop && b >= a + cl && memcmp(s + b - cl, d->content, cl) == 0; k++)
                b -= cl;
            sb_put(sl_add(out), s + a, b - a);
        }
        return;
    }
    case DEC_BYTELEVEL: {
        strbuf bytes = {0};
        for (int i = 0; i < in->n; i++) {
            const unsigned char *s = (const unsigned char *)in->v[i].s;
            size_t n = in->v[i].len, start = bytes.len;
            int ok = 1;
            for (size_t k = 0; k < n && ok;) {
                uint32_t cp;
                k += (size_t)utf8_decode(s + k, &cp);
                if (cp < 512 && t->char_byte[cp] >= 0) sb_putc(&bytes, (char)t->char_byte[cp]);
                else ok = 0;
            }
            if (!ok) {
                bytes.len = start;
                sb_put(&bytes, s, n);
            }
        }
        strbuf *o = sl_add(out);
        put_lossy(o, (const unsigned char *)bytes.s, bytes.len);
        free(bytes.s);
        return;
    }
    case DEC_METASPACE: {
        size_t rl = strlen(d->content);
        for (int i = 0; i < in->n; i++) {
            strbuf *o = sl_add(out);
            const char *s = in->v[i].s;
            size_t n = in->v[i].len;
            for (size_t k = 0; k < n;) {
                if (k + rl <= n && memcmp(s + k, d->content, rl) == 0) {
                    if (!(i == 0 && d->prepend != PREPEND_NEVER)) sb_putc(o, ' ');
                    k += rl;
                } else {
                    sb_putc(o, s[k++]);
                }
            }
        }
        return;
    }
    }
}

char *tok_decode(const tokenizer *t, const int32_t *ids, int n, int skip_special, size_t *len)
{
    str_list a = {0}, b = {0};
    for (int i = 0; i < n; i++) {
        const char *s = tok_token(t, ids[i]);
        if (!s || (skip_special && t->id_special[ids[i]]))
            continue;
        sb_put(sl_add(&a), s, strlen(s));
    }
    strbuf out = {0};
    sb_reserve(&out, 0);
    out.s[0] = '\0';
    if (!t->has_decoder) {
        for (int i = 0; i < a.n; i++) {
            if (i) sb_putc(&out, ' ');
            sb_put(&out, a.v[i].s, a.v[i].len);
        }
    } else {
        str_list *cur = &a, *next = &b;
        for (int i = 0; i < t->n_dec; i++) {
            for (int k = 0; k < next->n; k++)
                free(next->v[k].s);
            next->n = 0;
            decode_step(t, &t->dec[i], cur, next);
            str_list *tmp = cur;
            cur = next;
            next = tmp;
        }
        for (int i = 0; i < cur->n; i++)
            sb_put(&out, cur->v[i].s, cur->v[i].len);
    }
    sl_free(&a);
    sl_free(&b);
    if (len)
        *len = out.len;
    return out.s;
}

/* Streaming: each token becomes bytes on its own (byte tokens stay raw bytes, the chain's
 * whole-text steps act at the start of the stream only), then complete characters come out. */
void tok_stream_init(tok_stream *s, const tokenizer *t, int skip_special)
{
    memset(s, 0, sizeof *s);
    s->t = t;
    s->skip_special = skip_special;
}

void tok_stream_free(tok_stream *s)
{
    free(s->out);
    memset(s, 0, sizeof *s);
}

static void token_bytes(const tokenizer *t, const char *tok, int first, strbuf *bytes)
{
    strbuf cur = {0}, next = {0};
    sb_put(&cur, tok, strlen(tok));
    int raw_byte = -1;
    for (int i = 0; i < t->n_dec; i++) {
        const decoder *d = &t->dec[i];
        next.len = 0;
        switch (d->kind) {
        case DEC_BYTEFALLBACK:
            raw_byte = byte_token(cur.s, cur.len);
            continue;
        case DEC_FUSE:
            continue;
        case DEC_STRIP: {
            if (raw_byte >= 0 || (d->after_fuse && !first))
                continue;
            size_t cl = strlen(d->content), a = 0, b = cur.len;
            for (int k = 0; k < d->start && a + cl <= b && memcmp(cur.s + a, d->content, cl) == 0; k++)
                a += cl;
            if (!d->after_fuse)
                for (int k = 0; k < d->stop && b >= a + cl && memcmp(cur.s + b - cl, d->content, cl) == 0; k++)
                    b -= cl;
            sb_put(&next, cur.s + a, b - a);
            break;
        }
        case DEC_REPLACE: case DEC_METASPACE: case DEC_BYTELEVEL: {
            if (raw_byte >= 0)
                continue;
            str_list in = {0}, out = {0};
            sb_put(sl_add(&in), cur.s, cur.len);
            decoder one = *d;
            if (d->kind == DEC_METASPACE && !first && one.prepend != PREPEND_NEVER)
                one.prepend = PREPEND_NEVER;
            if (d->kind == DEC_BYTELEVEL) {   /* raw bytes here, not the lossy string */
                const unsigned char *u = (const unsigned char *)cur.s;
                int ok = 1;
                for (size_t k = 0; k < cur.len && ok;) {
                    uint32_t cp;
                    k += (size_t)utf8_decode(u + k, &cp);
                    if (cp < 512 && t->char_byte[cp] >= 0) sb_putc(&next, (char)t->char_byte[cp]);
                    else ok = 0;
                }
                if (!ok) { next.len = 0; sb_put(&next, cur.s, cur.len); }
            } else {
                decode_step(t, &one, &in, &out);
                sb_put(&next, out.v[0].s, out.v[0].len);
            }
            sl_free(&in);
            sl_free(&out);
            break;
        }
        }
        strbuf tmp = cur;
        cur = next;
        next = tmp;
    }
    if (raw_byte >= 0)
        sb_putc(bytes, (char)raw_byte);
    else
        sb_put(bytes, cur.s, cur.len);
    free(cur.s);
    free(next.s);
}

const char *tok_stream_push(tok_stream *s, int32_t id, size_t *len)
{
    const char *tok = tok_token(s->t, id);
    strbuf bytes = {0}, out = {0};
    sb_put(&bytes, s->pending, (size_t)s->n_pending);
    s->n_pending = 0;
    if (tok && !(s->skip_special && s->t->id_special[id])) {
        if (s->t->has_decoder) {
            token_bytes(s->t, tok, s->n_tokens == 0, &bytes);
        } else {
            if (s->n_tokens) sb_putc(&bytes, ' ');
            sb_put(&bytes, tok, strlen(tok));
        }
        s->n_tokens++;
    } else if (!tok && id >= 0) {   /* as it is, not through the decoders */
        char shown[32];
        int n = snprintf(shown, sizeof shown, "<id %d>", (int)id);
        if (!s->t->has_decoder && s->n_tokens) sb_putc(&bytes, ' ');
        sb_put(&bytes, shown, (size_t)n);
        s->n_tokens++;
    }
    sb_reserve(&out, 0);
    out.s[0] = '\0';
    const unsigned char *u = (const unsigned char *)bytes.s;
    for (size_t i = 0; i < bytes.len;) {
        int k = utf8_valid_char(u + i, bytes.len - i);
        if (k > 0) {
            sb_put(&out, u + i, (size_t)k);
            i += (size_t)k;
        } else if (k < 0) {   /* incomplete: hold back */
            s->n_pending = (int)(bytes.len - i);
            memcpy(s->pending, u + i, (size_t)s->n_pending);
            break;
        } else {   /* malformed: its maximal valid prefix becomes one U+FFFD */
            int need;
            sb_put(&out, "\xef\xbf\xbd", 3);
            i += (size_t)utf8_prefix(u + i, bytes.len - i, &need);
        }
    }
    free(bytes.s);
    free(s->out);
    s->out = out.s;
    s->out_cap = out.cap;
    if (len)
        *len = out.len;
    return s->out ? s->out : "";
}

const char *tok_stream_flush(tok_stream *s, size_t *len)
{
    strbuf out = {0};
    sb_reserve(&out, 0);
    out.s[0] = '\0';
    if (s->n_pending)
        sb_put(&out, "\xef\xbf\xbd", 3);
    s->n_pending = 0;
    free(s->out);
    s->out = out.s;
    if (len)
        *len = out.len;
    return s->out;
}

/* ========================================================================= queries ===== */

int tok_vocab_size(const tokenizer *t) { return t->n_ids; }

int tok_vocab_missing(const tokenizer *t)
{
    int missing = 0;
    for (int i = 0; i < t->n_ids; i++)
        missing += !t->id_text[i];
    return missing;
}

const char *tok_token(const tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_ids ? t->id_text[id] : NULL;
}

int32_t tok_token_id(const tokenizer *t, const char *token)
{
    return strmap_get(&t->vocab, token, strlen(token), -1);
}

int tok_is_special(const tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_ids && t->id_special[id];
}

int32_t tok_bos(const tokenizer *t) { return t->bos; }
int32_t tok_eos(const tokenizer *t) { return t->eos; }
int32_t tok_pad(const tokenizer *t) { return t->pad; }
const char *tok_chat_template(const tokenizer *t) { return t->chat_template; }

/* ========================================================================= loading ===== */

/* Appends how to fix it to the message already in err. Returns -1. */
static int fail_fix(pesc_error *err, const char *fix)
{
    if (!err)
        return -1;
    char msg[PESC_ERROR_MAX];
    snprintf(msg, sizeof msg, "%s", err->msg);
    return pesc_fail(err, "%s: %s", msg, fix);
}

/* The JSON document in the file at path, or NULL with a message that names the file: one
 * that cannot be read as pesc_read_file says (errno EISDIR for a directory), one that is not
 * JSON with the position where jansson knows one and then `fix` (errno 0). */
static json_t *read_json(const char *path, size_t flags, const char *fix, pesc_error *err)
{
    char *text;
    size_t len;
    if (pesc_read_file(path, &text, &len, err) != 0)
        return NULL;
    json_error_t jerr;
    const char *body = pesc_skip_bom(text, &len);   /* before len is read */
    json_t *root = json_loadb(body, len, flags, &jerr);
    free(text);
    if (!root) {
        if (jerr.line > 0)
            pesc_fail(err, "%s is not valid JSON (line %d, column %d: %s): %s", path, jerr.line,
                      jerr.column, jerr.text, fix);
        else
            pesc_fail(err, "%s is not valid JSON (%s): %s", path, jerr.text, fix);
        errno = 0;
    }
    return root;
}

/* What a JSON value is, for a message that says what was found instead. */
static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int jbool(json_t *o, const char *key, int dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* {"String": s} or {"Regex": r}: compiles either (a string pattern is matched literally). */
static int load_pattern(json_t *p, regex *r, const char *where, pesc_error *err)
{
    const char *s;
    if ((s = jstr(p, "String")))
        return regex_compile(r, s, strlen(s), 1, err);
    if ((s = jstr(p, "Regex")))
        return regex_compile(r, s, strlen(s), 0, err) ? pesc_fail_prefix(err, "%s", where) : 0;
    return pesc_fail(err, "%s: pattern must be {\"String\": ...} or {\"Regex\": ...}", where);
}

static void set_id(tokenizer *t, int32_t id, const char *text)
{
    if (id >= t->n_ids) {
        int n = id + 1;
        if (n > t->ids_cap) {
            t->ids_cap = n > 2 * t->ids_cap ? n : 2 * t->ids_cap;
            t->id_text = xrealloc(t->id_text, (size_t)t->ids_cap * sizeof *t->id_text);
            t->id_special = xrealloc(t->id_special, (size_t)t->ids_cap);
        }
        for (int i = t->n_ids; i < n; i++) {
            t->id_text[i] = NULL;
            t->id_special[i] = 0;
        }
        t->n_ids = n;
    }
    free(t->id_text[id]);
    t->id_text[id] = xstrdup(text);
}

/* The most the Replace normalizers may grow a text, all together: real files make it 3 times
 * longer (" " to U+2581), a chain that multiplies it past this runs the memory out. */
#define TOK_NORM_GROWTH_MAX 1024

static int load_normalizer(tokenizer *t, json_t *n, pesc_error *err)
{
    if (!n || json_is_null(n))
        return 0;
    const char *type = jstr(n, "type");
    if (!type)
        return pesc_fail(err, "normalizer without a \"type\"");
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(n, "normalizers");
        size_t i;
        json_t *v;
        json_array_foreach(list, i, v)
            if (load_normalizer(t, v, err) != 0)
                return -1;
        return 0;
    }
    normalizer nm = {0};
    if (strcmp(type, "Prepend") == 0 && jstr(n, "prepend")) {
        nm.kind = NORM_PREPEND;
        nm.text = xstrdup(jstr(n, "prepend"));
    } else if (strcmp(type, "Replace") == 0 && jstr(n, "content")) {
        nm.kind = NORM_REPLACE;
        /* each match of at least `least` bytes becomes the content (a regex, or an empty
         * string, may match nothing: then each character keeps its place beside it) */
        const char *literal = jstr(json_object_get(n, "pattern"), "String");
        size_t grown = strlen(jstr(n, "content")), least = literal ? strlen(literal) : 0;
        double each = !least ? 1.0 + (double)grown
                      : grown > least ? (double)grown / (double)least
                                      : 1.0;
        double growth = (t->norm_growth > 0 ? t->norm_growth : 1.0) * each;
        if (growth > TOK_NORM_GROWTH_MAX)
            return pesc_fail(err, "Replace normalizer: the normalizers could make a text up to "
                             "%.3g times longer (pesc takes %d): is the file right?", growth,
                             TOK_NORM_GROWTH_MAX);
        t->norm_growth = growth;
        if (load_pattern(json_object_get(n, "pattern"), &nm.pattern, "Replace normalizer", err))
            return -1;
        nm.text = xstrdup(jstr(n, "content"));
    } else if (strcmp(type, "NFC") == 0) {
        nm.kind = NORM_NFC;
    } else if (strcmp(type, "NFKC") == 0) {
        nm.kind = NORM_NFKC;
    } else if (strcmp(type, "NFD") == 0) {
        nm.kind = NORM_NFD;
    } else if (strcmp(type, "NFKD") == 0) {
        nm.kind = NORM_NFKD;
    } else if (strcmp(type, "Strip") == 0) {
        nm.kind = NORM_STRIP;
        nm.left = jbool(n, "strip_left", 1);
        nm.right = jbool(n, "strip_right", 1);
    } else {
        return pesc_fail(err, "normalizer \"%s\" is not supported (supported: Prepend, Replace, "
                         "NFC, NFKC, NFD, NFKD, Strip, Sequence)", type);
    }
    t->norm = xrealloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *t->norm);
    t->norm[t->n_norm++] = nm;
    return 0;
}

static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int parse_prepend(json_t *p, enum prepend_scheme *out)
{
    const char *scheme = jstr(p, "prepend_scheme");
    if (scheme) {
        if (strcmp(scheme, "always") == 0) *out = PREPEND_ALWAYS;
        else if (strcmp(scheme, "first") == 0) *out = PREPEND_FIRST;
        else if (strcmp(scheme, "never") == 0) *out = PREPEND_NEVER;
        else return -1;
        return 0;
    }
    *out = jbool(p, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
    return 0;
}

static int load_pretokenizer(tokenizer *t, json_t *p, pesc_error *err)
{
    if (!p || json_is_null(p))
        return 0;
    const char *type = jstr(p, "type");
    if (!type)
        return pesc_fail(err, "pre_tokenizer without a \"type\"");
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "pretokenizers");
        size_t i;
        json_t *v;
        json_array_foreach(list, i, v)
            if (load_pretokenizer(t, v, err) != 0)
                return -1;
        return 0;
    }
    pretokenizer pt = {0};
    if (strcmp(type, "Split") == 0) {
        static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
        const char *b = jstr(p, "behavior");
        int found = -1;
        for (int i = 0; b && i < 5; i++)
            if (strcmp(b, names[i]) == 0) found = i;
        if (found < 0)
            return pesc_fail(err, "Split pre-tokenizer: behavior \"%s\" is not known", b ? b : "");
        pt.kind = PRE_SPLIT;
        pt.behavior = (enum split_behavior)found;
        pt.invert = jbool(p, "invert", 0);
        if (load_pattern(json_object_get(p, "pattern"), &pt.pattern, "Split pre-tokenizer", err))
            return -1;
    } else if (strcmp(type, "Metaspace") == 0) {
        pt.kind = PRE_METASPACE;
        const char *r = jstr(p, "replacement");
        if (r && !one_char(r))
            return pesc_fail(err, "Metaspace pre-tokenizer: \"replacement\" must be one "
                             "character, not \"%s\"", r);
        snprintf(pt.replacement, sizeof pt.replacement, "%s", r ? r : "\xe2\x96\x81");
        pt.split = jbool(p, "split", 1);
        if (parse_prepend(p, &pt.prepend) != 0)
            return pesc_fail(err, "Metaspace pre-tokenizer: unknown prepend_scheme");
    } else if (strcmp(type, "ByteLevel") == 0) {
        pt.kind = PRE_BYTELEVEL;
        pt.add_prefix_space = jbool(p, "add_prefix_space", 1);
        if (jbool(p, "use_regex", 1) &&
            regex_compile(&pt.pattern, gpt2_pattern, sizeof gpt2_pattern - 1, 0, err) != 0)
            return -1;
    } else if (strcmp(type, "Digits") == 0) {
        pt.kind = PRE_DIGITS;
        pt.behavior = jbool(p, "individual_digits", 0) ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS;
        if (regex_compile(&pt.pattern, "\\p{N}", 5, 0, err) != 0)
            return -1;
    } else {
        return pesc_fail(err, "pre-tokenizer \"%s\" is not supported (supported: Split, "
                         "Metaspace, ByteLevel, Digits, Sequence)", type);
    }
    t->pre = xrealloc(t->pre, (size_t)(t->n_pre + 1) * sizeof *t->pre);
    t->pre[t->n_pre++] = pt;
    return 0;
}

static int load_decoder(tokenizer *t, json_t *d, int *fused, pesc_error *err)
{
    if (!d || json_is_null(d))
        return 0;
    t->has_decoder = 1;
    const char *type = jstr(d, "type");
    if (!type)
        return pesc_fail(err, "decoder without a \"type\"");
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(d, "decoders");
        size_t i;
        json_t *v;
        json_array_foreach(list, i, v)
            if (load_decoder(t, v, fused, err) != 0)
                return -1;
        return 0;
    }
    decoder dc = {0};
    if (strcmp(type, "ByteFallback") == 0) {
        dc.kind = DEC_BYTEFALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        dc.kind = DEC_FUSE;
        *fused = 1;
    } else if (strcmp(type, "Strip") == 0) {
        dc.kind = DEC_STRIP;
        const char *c = jstr(d, "content");
        if (c && !one_char(c))
            return pesc_fail(err, "Strip decoder: \"content\" must be one character, not "
                             "\"%s\"", c);
        snprintf(dc.content, sizeof dc.content, "%s", c ? c : " ");
        dc.start = (int)json_integer_value(json_object_get(d, "start"));
        dc.stop = (int)json_integer_value(json_object_get(d, "stop"));
        dc.after_fuse = *fused;
    } else if (strcmp(type, "Replace") == 0) {
        dc.kind = DEC_REPLACE;
        const char *from = jstr(json_object_get(d, "pattern"), "String"), *to = jstr(d, "content");
        if (!from || !to)
            return pesc_fail(err, "Replace decoder: only string patterns are supported");
        dc.from = xstrdup(from);
        dc.to = xstrdup(to);
    } else if (strcmp(type, "ByteLevel") == 0) {
        dc.kind = DEC_BYTELEVEL;
        *fused = 1;
    } else if (strcmp(type, "Metaspace") == 0) {
        dc.kind = DEC_METASPACE;
        const char *r = jstr(d, "replacement");
        if (r && !one_char(r))
            return pesc_fail(err, "Metaspace decoder: \"replacement\" must be one character, "
                             "not \"%s\"", r);
        snprintf(dc.content, sizeof dc.content, "%s", r ? r : "\xe2\x96\x81");
        if (parse_prepend(d, &dc.prepend) != 0)
            return pesc_fail(err, "Metaspace decoder: unknown prepend_scheme");
    } else {
        return pesc_fail(err, "decoder \"%s\" is not supported (supported: ByteFallback, Fuse, "
                         "Strip, Replace, ByteLevel, Metaspace, Sequence)", type);
    }
    t->dec = xrealloc(t->dec, (size_t)(t->n_dec + 1) * sizeof *t->dec);
    t->dec[t->n_dec++] = dc;
    return 0;
}

/* Appends the ids of special token `name` of a TemplateProcessing. Each must be a token of
 * the vocabulary: an id past it would be emitted as it is, in front of every text. */
static int template_ids(const tokenizer *t, json_t *special, const char *name, tok_ids *out,
                        pesc_error *err)
{
    json_t *ids = json_object_get(json_object_get(special, name), "ids");
    if (!json_is_array(ids) || json_array_size(ids) == 0)
        return pesc_fail(err, "post_processor: the template uses special token \"%s\" but "
                         "\"special_tokens\" gives it no ids; add {\"%s\": {\"id\": \"%s\", "
                         "\"ids\": [ID]}} there", name, name, name);
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        json_int_t id = json_integer_value(v);
        if (!json_is_integer(v))
            return pesc_fail(err, "post_processor: special_tokens[\"%s\"].ids[%zu] is not an "
                             "integer; write the id of %s", name, i, name);
        if (id < 0 || id >= t->n_ids || !t->id_text[id])
            return pesc_fail(err, "post_processor: special_tokens[\"%s\"].ids[%zu] = %lld is "
                             "not in the vocabulary (%d ids); write the id of %s", name, i,
                             (long long)id, t->n_ids, name);
        tok_ids_push(out, (int32_t)id);
    }
    return 0;
}

static int load_post(tokenizer *t, json_t *p, pesc_error *err)
{
    if (!p || json_is_null(p))
        return 0;
    const char *type = jstr(p, "type");
    if (!type)
        return pesc_fail(err, "post_processor must be null or an object with a \"type\" "
                         "(supported: TemplateProcessing, ByteLevel, Sequence)");
    if (strcmp(type, "ByteLevel") == 0)
        return 0;   /* offsets only */
    size_t i;
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "processors"), *v;
        if (!json_is_array(list))
            return pesc_fail(err, "post_processor: a Sequence needs a \"processors\" array");
        json_array_foreach(list, i, v)
            if (load_post(t, v, err) != 0)
                return -1;
        return 0;
    }
    if (strcmp(type, "TemplateProcessing") != 0)
        return pesc_fail(err, "post_processor \"%s\" is not supported (supported: "
                         "TemplateProcessing, ByteLevel, Sequence, or null)", type);
    json_t *single = json_object_get(p, "single"), *special = json_object_get(p, "special_tokens");
    json_t *item;
    int sequences = 0;
    if (!json_is_array(single))
        return pesc_fail(err, "post_processor: TemplateProcessing needs a \"single\" template, "
                         "an array such as [{\"SpecialToken\": {\"id\": \"<s>\"}}, "
                         "{\"Sequence\": {\"id\": \"A\"}}]");
    json_array_foreach(single, i, item) {
        const char *name = jstr(json_object_get(item, "SpecialToken"), "id");
        if (json_is_object(json_object_get(item, "Sequence"))) {
            sequences++;
        } else if (name) {
            if (template_ids(t, special, name, sequences ? &t->post_suffix : &t->post_prefix,
                             err) != 0)
                return -1;
        } else {
            return pesc_fail(err, "post_processor: single[%zu] must be {\"SpecialToken\": "
                             "{\"id\": NAME}} or {\"Sequence\": {\"id\": \"A\"}}", i);
        }
    }
    if (sequences != 1)
        return pesc_fail(err, "post_processor: the single template has %d Sequence items; it "
                         "needs exactly one, {\"Sequence\": {\"id\": \"A\"}}, where the text "
                         "goes", sequences);
    return 0;
}

/* 1 when no token of the vocabulary has the space mark right after another character. Then
 * no merge ever joins across the point before a mark that follows a non-mark, so a piece can
 * be cut there and each part encoded alone with exactly the same ids. It matters for
 * SentencePiece-style models (Llama 2): with no pre-tokenizer a whole text is one piece, too
 * long for the word cache; cut, it becomes words the cache serves. */
static int space_split_safe(const tokenizer *t)
{
    if (t->prefix || t->suffix || strmap_get(&t->vocab, SPACE_MARK, 3, -1) < 0)
        return 0;
    for (int i = 0; i < t->n_ids; i++) {
        const char *s = t->id_text[i];
        if (!s || !*s)
            continue;
        for (const char *p = strstr(s + 1, SPACE_MARK); p; p = strstr(p + 1, SPACE_MARK))
            if (p - s < 3 || memcmp(p - 3, SPACE_MARK, 3) != 0)
                return 0;
    }
    return 1;
}

static int load_model(tokenizer *t, json_t *m, pesc_error *err)
{
    const char *type = jstr(m, "type");
    json_t *vocab = json_object_get(m, "vocab"), *merges = json_object_get(m, "merges");
    if (type && strcmp(type, "BPE") != 0)
        return pesc_fail(err, "model type \"%s\" is not supported (only BPE)", type);
    if (!json_is_object(vocab) || !json_is_array(merges))
        return pesc_fail(err, "model: a BPE model needs a \"vocab\" object and a \"merges\" array");
    json_t *dropout = json_object_get(m, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) > 0)
        return pesc_fail(err, "model: BPE dropout is not supported (set it to null)");
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        json_int_t id = json_integer_value(v);
        if (!json_is_integer(v) || id < 0 || id > (1 << 24))
            return pesc_fail(err, "model.vocab[\"%s\"]: id must be an integer in [0, 2^24]", key);
        strmap_put(&t->vocab, key, strlen(key), (int32_t)id);
        set_id(t, (int32_t)id, key);
    }
    t->byte_fallback = jbool(m, "byte_fallback", 0);
    t->fuse_unk = jbool(m, "fuse_unk", 0);
    t->ignore_merges = jbool(m, "ignore_merges", 0);
    const char *unk = jstr(m, "unk_token");
    t->unk_id = unk ? strmap_get(&t->vocab, unk, strlen(unk), -1) : -1;
    if (unk && t->unk_id < 0)
        return pesc_fail(err, "model: unk_token \"%s\" is not in the vocabulary", unk);
    const char *prefix = jstr(m, "continuing_subword_prefix"), *suffix = jstr(m, "end_of_word_suffix");
    t->prefix = prefix && *prefix ? xstrdup(prefix) : NULL;
    t->suffix = suffix && *suffix ? xstrdup(suffix) : NULL;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = strmap_get(&t->vocab, name, strlen(name), -1);
    }
    size_t i;
    strbuf joined = {0};
    json_array_foreach(merges, i, v) {
        const char *a = NULL, *b = NULL;
        size_t al = 0, bl = 0;
        if (json_is_string(v)) {   /* "a b" */
            const char *s = json_string_value(v), *sp = strchr(s, ' ');
            if (sp && !strchr(sp + 1, ' ')) {
                a = s; al = (size_t)(sp - s);
                b = sp + 1; bl = strlen(b);
            }
        } else if (json_is_array(v) && json_array_size(v) == 2 &&
                   json_is_string(json_array_get(v, 0)) && json_is_string(json_array_get(v, 1))) {
            a = json_string_value(json_array_get(v, 0)); al = strlen(a);
            b = json_string_value(json_array_get(v, 1)); bl = strlen(b);
        }
        if (!a) {
            free(joined.s);
            return pesc_fail(err, "model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", i);
        }
        int32_t ia = strmap_get(&t->vocab, a, al, -1), ib = strmap_get(&t->vocab, b, bl, -1);
        joined.len = 0;
        sb_put(&joined, a, al);
        sb_put(&joined, b, bl);
        int32_t ij = strmap_get(&t->vocab, joined.s, joined.len, -1);
        if (ia < 0 || ib < 0 || ij < 0) {
            pesc_fail(err, "model.merges[%zu]: \"%.*s\" + \"%.*s\" uses a token missing from the "
                      "vocabulary", i, (int)al, a, (int)bl, b);
            free(joined.s);
            return -1;
        }
        merge_put(&t->merges, ia, ib, (int32_t)i, ij);
    }
    free(joined.s);
    t->space_split = space_split_safe(t);
    return 0;
}

static int load_added(tokenizer *t, json_t *list, pesc_error *err)
{
    size_t i;
    json_t *a;
    json_array_foreach(list, i, a) {
        const char *content = jstr(a, "content");
        json_t *id = json_object_get(a, "id");
        if (!content || !json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) > (1 << 24))
            return pesc_fail(err, "added_tokens[%zu]: needs \"content\" and an integer \"id\"", i);
        added_token at = {
            .id = (int32_t)json_integer_value(id), .content = xstrdup(content),
            .special = jbool(a, "special", 0), .lstrip = jbool(a, "lstrip", 0),
            .rstrip = jbool(a, "rstrip", 0), .normalized = jbool(a, "normalized", 0),
            .single_word = jbool(a, "single_word", 0),
        };
        t->added = xrealloc(t->added, (size_t)(t->n_added + 1) * sizeof *t->added);
        t->added[t->n_added++] = at;
        set_id(t, at.id, content);
        t->id_special[at.id] = (unsigned char)at.special;
        strmap_put(&t->vocab, content, strlen(content), at.id);
    }
    return 0;
}

/* Tries are built after the normalizers are known: normalized tokens are matched in their
 * normalized spelling. */
static void build_tries(tokenizer *t)
{
    trie_init(&t->raw_trie);
    trie_init(&t->norm_trie);
    for (int i = 0; i < t->n_added; i++) {
        added_token *a = &t->added[i];
        if (!a->normalized) {
            a->match = xstrdup(a->content);
            trie_add(&t->raw_trie, a->match, i);
            continue;
        }
        strbuf *n;
        normalize(t, a->content, strlen(a->content), &n);
        a->match = xstrdup(n->s ? n->s : "");
        trie_add(&t->norm_trie, a->match, i);
    }
}

static void build_byte_alphabet(tokenizer *t)
{
    int n = 0;
    for (int i = 0; i < 512; i++)
        t->char_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
        t->byte_char[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        t->char_byte[t->byte_char[b]] = (int16_t)b;
    }
}

/* bos/eos/pad: tokenizer_config.json names them as a string, {"content": ...} (an
 * AddedToken) or null; *id is -1 when the name is absent, or (pad) not a token. Any other
 * value is refused rather than passed over, since a BOS silently lost changes every
 * encoding; so is a BOS or EOS that names no token, which the usual spellings (<s>, </s>)
 * stood in for: a model whose turns end at its own marker would never stop, or stop at
 * another. A pad token that is no token is HF's to add; pesc pads with ids of its own. */
static int config_token(tokenizer *t, json_t *cfg, const char *key, const char *cfg_path,
                        int32_t *id, pesc_error *err)
{
    json_t *v = json_object_get(cfg, key);
    *id = -1;
    if (!v || json_is_null(v))
        return 0;
    const char *name = json_is_string(v) ? json_string_value(v) : jstr(v, "content");
    if (!name)
        return pesc_fail(err, "%s: \"%s\" is %s%s; write the token itself, e.g. \"<s>\", or "
                         "{\"content\": \"<s>\"}, or null", cfg_path, key, json_kind(v),
                         json_is_object(v) ? " without a \"content\" string" : "");
    *id = tok_token_id(t, name);
    if (*id < 0 && strcmp(key, "pad_token") != 0) {
        char shown[64];
        size_t n = pesc_show_controls(shown, sizeof shown, name);
        return pesc_fail(err, "%s: \"%s\" is \"%s%s\", which is no token of the tokenizer's "
                         "vocabulary or added tokens; name one of them, or null for none",
                         cfg_path, key, shown, n < strlen(name) ? "..." : "");
    }
    return 0;
}

/* chat_template: a Jinja string, null, or a list of {"name": ..., "template": ...} of which
 * the one named "default" is the template (as transformers picks it). */
static int config_chat_template(tokenizer *t, json_t *cfg, const char *cfg_path,
                                pesc_error *err)
{
    json_t *v = json_object_get(cfg, "chat_template");
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        t->chat_template = xstrdup(json_string_value(v));
        return 0;
    }
    size_t i;
    json_t *item;
    if (json_is_array(v)) {
        json_array_foreach(v, i, item) {
            const char *name = jstr(item, "name"), *tpl = jstr(item, "template");
            if (!name || !tpl)
                return pesc_fail(err, "%s: \"chat_template\"[%zu] is not {\"name\": ..., "
                                 "\"template\": ...}; correct it or remove the entry",
                                 cfg_path, i);
            if (strcmp(name, "default") == 0 && !t->chat_template)
                t->chat_template = xstrdup(tpl);
        }
        return 0;
    }
    return pesc_fail(err, "%s: \"chat_template\" is %s; it must be a Jinja template string, a "
                     "list of {\"name\": ..., \"template\": ...}, or null", cfg_path,
                     json_kind(v));
}

static int32_t first_known(tokenizer *t, const char *const *names)
{
    for (int i = 0; names[i]; i++) {
        int32_t id = tok_token_id(t, names[i]);
        if (id >= 0)
            return id;
    }
    return -1;
}

/* tokenizer_config.json beside path, when there is one. Its absence is fine (the post-
 * processor and the usual spellings name bos/eos); a file that is there but unreadable or
 * malformed is an error, not a silent fallback. */
static int load_config(tokenizer *t, const char *path, pesc_error *err)
{
    char *dir = xstrdup(path), *slash = strrchr(dir, '/');
    if (slash) slash[1] = '\0'; else dir[0] = '\0';
    char *cfg_path = pesc_path_join(*dir ? dir : ".", "tokenizer_config.json");
    static const char *const fix = "correct it, or remove it (the file is optional)";
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<bos>", NULL};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>",
                                            NULL};
    t->bos = t->eos = t->pad = -1;
    int rc = 0, bos_null = 0;
    struct stat st;
    if (stat(cfg_path, &st) == 0 || errno != ENOENT) {
        /* as reals, integers past 64 bits parse: transformers writes model_max_length as
         * int(1e30) = 1000000000000000019884624838656 */
        json_t *cfg = read_json(cfg_path, JSON_DECODE_INT_AS_REAL, fix, err);
        if (!cfg)
            rc = errno == 0 ? -1 : fail_fix(err, fix);   /* errno 0: the JSON was bad */
        else if (!json_is_object(cfg))
            rc = pesc_fail(err, "%s holds %s, not a JSON object: %s", cfg_path, json_kind(cfg),
                           fix);
        else if (config_token(t, cfg, "bos_token", cfg_path, &t->bos, err) != 0 ||
                 config_token(t, cfg, "eos_token", cfg_path, &t->eos, err) != 0 ||
                 config_token(t, cfg, "pad_token", cfg_path, &t->pad, err) != 0 ||
                 config_chat_template(t, cfg, cfg_path, err) != 0)
            rc = -1;
        bos_null = json_is_null(json_object_get(cfg, "bos_token"));
        json_decref(cfg);
    }
    /* "bos_token": null says the model has none (Qwen): "<s>" may still be an ordinary
     * token of its vocabulary, and a guess would put it before every record */
    if (t->bos < 0 && !bos_null)
        t->bos = t->post_prefix.n ? t->post_prefix.ids[0] : first_known(t, bos_names);
    if (t->eos < 0)
        t->eos = first_known(t, eos_names);
    free(cfg_path);
    free(dir);
    return rc;
}

tokenizer *tok_load(const char *path, pesc_error *err)
{
    json_t *root = read_json(path, 0, "repair it or download it again", err);
    if (!root) {
        if (errno == EISDIR) {
            const char *slash = strrchr(path, '/');
            fail_fix(err, strcmp(slash ? slash + 1 : path, "tokenizer.json") == 0
                              ? "put the tokenizer.json file in its place"
                              : "name the tokenizer.json file itself");
        }
        return NULL;
    }
    tokenizer *t = xcalloc(1, sizeof *t);
    t->match = pcre2_match_data_create(1, NULL);
    t->match_ctx = pcre2_match_context_create(NULL);
    t->jit_stack = pcre2_jit_stack_create(32u << 10, REGEX_JIT_STACK, NULL);
    if (t->match_ctx && t->jit_stack)   /* else the default stack, and the interpreter past it */
        pcre2_jit_stack_assign(t->match_ctx, NULL, t->jit_stack);
    build_byte_alphabet(t);
    int fused = 0;
    int rc = -1;
    if (!json_is_object(root)) {
        pesc_fail(err, "not a tokenizer.json object");
        goto out;
    }
    if (load_model(t, json_object_get(root, "model"), err) != 0 ||
        load_added(t, json_object_get(root, "added_tokens"), err) != 0 ||
        load_normalizer(t, json_object_get(root, "normalizer"), err) != 0 ||
        load_pretokenizer(t, json_object_get(root, "pre_tokenizer"), err) != 0 ||
        load_post(t, json_object_get(root, "post_processor"), err) != 0 ||
        load_decoder(t, json_object_get(root, "decoder"), &fused, err) != 0 ||
        regex_compile(&t->word_char, "\\w", 2, 0, err) != 0)
        goto out;
    build_tries(t);
    rc = 0;
out:
    json_decref(root);
    if (rc != 0)
        pesc_fail_prefix(err, "%s", path);
    /* its messages name tokenizer_config.json, not tokenizer.json */
    else if (load_config(t, path, err) != 0)
        rc = -1;
    if (rc != 0) {
        tok_delete(t);
        return NULL;
    }
    return t;
}

tokenizer *tok_load_dir(const char *model_dir, pesc_error *err)
{
    char *path = pesc_path_join(model_dir, "tokenizer.json");
    tokenizer *t = NULL;
    struct stat st;
    if (access(model_dir, F_OK) != 0)
        pesc_fail(err, "%s: %s", pesc_path_shown(model_dir), strerror(errno));
    else if (stat(model_dir, &st) == 0 && !S_ISDIR(st.st_mode))
        pesc_fail(err, "%s is a file, not a model directory: give a tokenizer.json with "
                  "--tokenizer FILE", pesc_path_shown(model_dir));
    else if (access(path, F_OK) != 0)   /* weights and config only: a tokenizer to give */
        pesc_fail(err, "%s has no tokenizer.json: give the model's tokenizer with --tokenizer "
                  "FILE|URL", pesc_path_shown(model_dir));
    else
        t = tok_load(path, err);
    free(path);
    return t;
}

void tok_delete(tokenizer *t)
{
    if (!t)
        return;
    strmap_free(&t->vocab);
    for (int i = 0; i < t->n_ids; i++)
        free(t->id_text[i]);
    free(t->id_text);
    free(t->id_special);
    free(t->merges.slots);
    free(t->prefix);
    free(t->suffix);
    for (int i = 0; i < t->n_norm; i++) {
        free(t->norm[i].text);
        regex_free(&t->norm[i].pattern);
    }
    free(t->norm);
    for (int i = 0; i < t->n_pre; i++)
        regex_free(&t->pre[i].pattern);
    free(t->pre);
    for (int i = 0; i < t->n_dec; i++) {
        free(t->dec[i].from);
        free(t->dec[i].to);
    }
    free(t->dec);
    tok_ids_free(&t->post_prefix);
    tok_ids_free(&t->post_suffix);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].match);
    }
    free(t->added);
    trie_free(&t->raw_trie);
    trie_free(&t->norm_trie);
    regex_free(&t->word_char);
    free(t->chat_template);
    pcre2_match_data_free(t->match);
    pcre2_match_context_free(t->match_ctx);
    pcre2_jit_stack_free(t->jit_stack);
    for (int i = 0; i < 2; i++) {
        free(t->pieces[i].v);
        free(t->pieces[i].text.s);
        free(t->norm_buf[i].s);
    }
    free(t->syms);
    free(t->heap);
    strmap_free(&t->cache);
    tok_ids_free(&t->cache_ids);
    free(t);
}
