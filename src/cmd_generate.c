/* cmd_generate — `pesc generate`: a prompt through the chat template, the answer streamed to
 * standard output token by token (KV cache, greedy or sampled); a conversation (--chat); or
 * a file of prompts answered several at a time, a JSON line each (--prompts). */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "answers.h"
#include "backend.h"
#include "cli.h"
#include "commands.h"
#include "model.h"
#include "prompts.h"
#include "sample.h"
#include "template.h"
#include "tokenizer.h"
#include "tuned.h"

static const char generate_usage[] =
    "usage: pesc generate (--model DIR|URL [--adapters FILE] | --adapters CHECKPOINT)\n"
    "                     [--prompt TEXT] [--max-tokens N] [--temperature T] [--top-p P]\n"
    "                     [--top-k K] [--seed S] [--template NAME] [--tokenizer FILE|URL]\n"
    "                     [--system TEXT] [--raw] [--chat | --prompts FILE [--batch N]]\n"
    "                     [--backend B]\n"
    "\n"
    "Answers a prompt (from --prompt, or standard input: at a terminal, end it with Ctrl-D)\n"
    "with the model, streaming the text as it comes. Stops at the end of the assistant turn\n"
    "(EOS or the template's end marker) or after --max-tokens.\n"
    "\n"
    "  --chat            a conversation: each line of standard input is a turn (a line\n"
    "                    ending in \\ goes on to the next), answered before the next is\n"
    "                    read, with the turns before it in the prompt (what the model has\n"
    "                    read stays in its cache); Ctrl-C stops an answer; ends at the end\n"
    "                    of the input (Ctrl-D, or Ctrl-C at the prompt) or when the model's\n"
    "                    context is full\n"
    "  --prompts FILE    answers every prompt of FILE, several at a time, each as a JSON\n"
    "                    line on standard output (line, id, prompt, answer, tokens, finish,\n"
    "                    reference): JSONL of {\"prompt\"} ({\"instruction\", \"input\"},\n"
    "                    {\"question\"}), {\"messages\"} ({\"conversations\"}) or camelidae\n"
    "                    {\"conversation\"} objects, or plain text, a prompt a line; prompt i\n"
    "                    samples with seed S + i; FILE - reads standard input\n"
    "  --batch N         prompts of --prompts answered at once (16; 1 to 256), fewer where\n"
    "                    their KV caches would take over a quarter of the free memory\n"
    "  --adapters FILE   PESC routers and adapters saved by pesc (crafts the model); a\n"
    "                    checkpoint (or --save directory: its newest) stands for its file,\n"
    "                    and gives its run's base model, template and tokenizer where\n"
    "                    --model, --template and --tokenizer are not given\n"
    "  --temperature T   0 = greedy (default 0)\n"
    "  --top-p P --top-k K   sampling cut-offs (1, 0 = off; with --temperature > 0)\n"
    "  --seed S          sampling seed (1)\n"
    "  --template NAME   chat template (camelidae; the run's for an --adapters checkpoint\n"
    "                    or a model pesc exported)\n"
    "  --system TEXT     a system message before the prompt (or the conversation)\n"
    "  --raw             the prompt as it is, no template\n";

typedef struct generate_options {
    const char *model, *adapters, *prompt, *template_name, *tokenizer, *backend, *system;
    const char *prompts;
    long max_tokens, top_k, seed, batch;
    double temperature, top_p;
    int raw, chat;
    int template_given;
} generate_options;

static int number(const char *flag, const char *arg, double lo, double hi, double *out)
{
    char *end;
    double v = strtod(arg, &end);
    if (end == arg || *end || !(v >= lo && v <= hi))
        return cli_usage_error("generate", "%s %s: expected a number from %g to %g", flag, arg,
                               lo, hi);
    *out = v;
    return 0;
}

static int parse_generate(generate_options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'}, {"adapters", required_argument, NULL, 'a'},
        {"prompt", required_argument, NULL, 'p'}, {"max-tokens", required_argument, NULL, 'n'},
        {"temperature", required_argument, NULL, 't'}, {"top-p", required_argument, NULL, 'P'},
        {"top-k", required_argument, NULL, 'k'}, {"seed", required_argument, NULL, 's'},
        {"template", required_argument, NULL, 'T'}, {"tokenizer", required_argument, NULL, 'z'},
        {"raw", no_argument, NULL, 'r'}, {"chat", no_argument, NULL, 'c'},
        {"system", required_argument, NULL, 'S'}, {"prompts", required_argument, NULL, 'F'},
        {"batch", required_argument, NULL, 'B'},
        {"backend", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    *o = (generate_options){.max_tokens = 256, .top_p = 1.0, .seed = 1, .backend = "auto",
                            .template_name = "camelidae"};
    int c;
    while ((c = cli_getopt("generate", argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 'm':
            if (cli_path("generate", "--model", optarg, "a model directory or URL", &o->model))
                return EXIT_USAGE;
            break;
        case 'a':
            if (cli_path("generate", "--adapters", optarg,
                         "a trainables file or a checkpoint", &o->adapters))
                return EXIT_USAGE;
            break;
        case 'p':
            if (!*optarg)
                return cli_usage_error("generate", "--prompt '' is empty: give the text to "
                                       "answer");
            o->prompt = optarg;
            break;
        case 'n':
            if (cli_parse_long(optarg, 1, 1 << 20, &o->max_tokens) != 0)
                return cli_usage_error("generate", "--max-tokens %s: a whole number from 1 to "
                                       "1048576", optarg);
            break;
        case 't':
            if (number("--temperature", optarg, 0, 10, &o->temperature)) return EXIT_USAGE;
            break;
        case 'P':
            if (number("--top-p", optarg, 1e-6, 1, &o->top_p)) return EXIT_USAGE;
            break;
        case 'k':
            if (cli_parse_long(optarg, 0, 1 << 20, &o->top_k) != 0)
                return cli_usage_error("generate", "--top-k %s: a whole number from 0 to "
                                       "1048576", optarg);
            break;
        case 's':
            if (cli_parse_long(optarg, 0, 0x7fffffffffffffffL, &o->seed) != 0)
                return cli_usage_error("generate", "--seed %s: an integer >= 0", optarg);
            break;
        case 'T':
            o->template_name = optarg;
            o->template_given = 1;
            break;
        case 'z':
            if (cli_path("generate", "--tokenizer", optarg, "a tokenizer.json or its URL",
                         &o->tokenizer))
                return EXIT_USAGE;
            break;
        case 'F':
            if (cli_path("generate", "--prompts", optarg, "a file of prompts", &o->prompts))
                return EXIT_USAGE;
            break;
        case 'B':
            if (cli_parse_long(optarg, 1, ANS_BATCH_MAX, &o->batch) != 0)
                return cli_usage_error("generate", "--batch %s: a whole number of prompts from 1 "
                                       "to %d", optarg, ANS_BATCH_MAX);
            break;
        case 'r': o->raw = 1; break;
        case 'c': o->chat = 1; break;
        case 'S':
            if (!*optarg)
                return cli_usage_error("generate", "--system '' is empty: give the system "
                                       "message, or leave the flag out");
            o->system = optarg;
            break;
        case 'b':
            if (cli_backend("generate", optarg) != 0)
                return EXIT_USAGE;
            o->backend = optarg;
            break;
        case 'h': fputs(generate_usage, stdout); return 0;
        default: return EXIT_USAGE;
        }
    }
    if (optind < argc)
        return cli_unexpected("generate", argv[optind],
                              o->prompt ? NULL : "give the prompt as --prompt TEXT, or on "
                                                 "standard input");
    if (!o->model && !o->adapters)
        return cli_usage_error("generate", "--model DIR is required (or --adapters CHECKPOINT, "
                               "whose base model is used)");
    if (!template_find(o->template_name))
        return cli_usage_error("generate", "--template %s: known templates are %s",
                               o->template_name, template_list());
    if (o->chat && o->prompt)
        return cli_usage_error("generate", "--chat reads its turns from standard input, a line "
                               "each: leave out --prompt");
    if (o->prompts && (o->prompt || o->chat))
        return cli_usage_error("generate", "--prompts answers the prompts of a file; %s: "
                               "choose one", o->prompt ? "--prompt gives one" : "--chat holds a "
                               "conversation");
    if (o->batch && !o->prompts)
        return cli_usage_error("generate", "--batch is how many prompts of --prompts FILE are "
                               "answered at once: give --prompts");
    if (o->chat && o->raw)
        return cli_usage_error("generate", "--chat lays the turns out in a chat template; --raw "
                               "sends one prompt as it is: choose one");
    if (o->raw && o->system)
        return cli_usage_error("generate", "--system goes in the chat template; --raw sends the "
                               "prompt as it is: choose one");
    if (o->raw && o->template_given)
        return cli_usage_error("generate", "--raw sends the prompt as it is and --template %s "
                               "wraps it: choose one", o->template_name);
    /* a cut that is on (--top-k 0 and --top-p 1 are off, as the defaults) */
    const char *cut = o->top_p < 1.0 ? "--top-p" : o->top_k > 0 ? "--top-k" : NULL;
    if (cut && o->temperature == 0.0)
        return cli_usage_error("generate", "%s cuts what sampling draws from, but --temperature "
                               "0 (the default) is greedy: add --temperature T", cut);
    return -1;
}

/* The prompt from --prompt or all of standard input, without a trailing newline; NULL with
 * err set when it is empty, not text (a NUL byte) or past PROMPT_MAX, so that
 * `pesc generate </dev/zero` stops at once instead of reading until memory runs out. */
#define PROMPT_MAX (64L << 20)
static char *read_prompt(const generate_options *o, pesc_error *err)
{
    if (o->prompt)
        return xstrdup(o->prompt);
    /* without it, a person at a terminal saw nothing and took the wait for input for a hang */
    if (isatty(STDIN_FILENO))
        pesc_show_phase("pesc generate", "type the prompt, then Ctrl-D on a line of its own "
                        "(or give --prompt TEXT)");
    size_t cap = 4096, n = 0, got;
    char *text = xmalloc(cap);
    /* stopped at the first end of input: a terminal's Ctrl-D, which another fread would wait
     * past for a second one */
    while (!feof(stdin) && (got = fread(text + n, 1, cap - n - 1, stdin)) > 0) {
        if (memchr(text + n, '\0', got)) {
            pesc_fail(err, "standard input holds a NUL byte: the prompt must be text");
            goto fail;
        }
        if ((n += got) > PROMPT_MAX) {
            pesc_fail(err, "standard input is over %ld MiB: too long for a prompt",
                      PROMPT_MAX >> 20);
            goto fail;
        }
        if (n + 1 >= cap)
            text = xrealloc(text, cap *= 2);
    }
    if (ferror(stdin)) {
        pesc_fail(err, "cannot read the prompt from standard input: %s", strerror(errno));
        goto fail;
    }
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        n--;
    text[n] = '\0';
    if (n == 0) {
        pesc_fail(err, "standard input held no prompt: pipe the text to answer in, or give "
                  "--prompt TEXT");
        goto fail;
    }
    return text;
fail:
    free(text);
    return NULL;
}

/* Ctrl-C in --chat: stops the answer being made (the conversation goes on), or, at the
 * prompt, ends the conversation. */
static volatile sig_atomic_t interrupted;
static void on_interrupt(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* What one answer is made with, the same for every turn of a conversation. */
typedef struct answerer {
    model *m;
    tokenizer *tok;
    sampler s;
    int32_t stops[4];
    int n_stops;
    float *logits;               /* (V) the next token's, once a prompt is decoded */
} answerer;

static void answerer_init(answerer *a, model *m, tokenizer *tok, const chat_template *tpl,
                          const generate_options *o)
{
    *a = (answerer){.m = m, .tok = tok};
    a->n_stops = template_stop_ids(tpl, tok, a->stops, 4);
    a->logits = xmalloc((size_t)m->config.vocab_size * sizeof *a->logits);
    sampler_init(&a->s, (float)o->temperature, (int)o->top_k, (float)o->top_p,
                 (uint64_t)o->seed);
}

static void answerer_free(answerer *a)
{
    sampler_free(&a->s);
    free(a->logits);
}

/* A piece of the answer to standard output, and after *text's first *kept bytes when text is
 * not NULL. */
static void append_piece(const char *piece, size_t len, char **text, size_t *kept)
{
    *text = xrealloc(*text, *kept + len + 1);
    memcpy(*text + *kept, piece, len);
    (*text)[*kept += len] = '\0';
}

static void put_piece(const char *piece, size_t len, char **text, size_t *kept)
{
    fwrite(piece, 1, len, stdout);
    if (text)
        append_piece(piece, len, text, kept);
}

/* The answer to the prompt in the cache (its next token's logits in a->logits), streamed to
 * standard output, at most max_tokens: the tokens go to fed (what the cache then holds, all
 * but the last), the text to *text when not NULL (malloc'd). *produced: how many. */
static int answer(answerer *a, long max_tokens, tok_ids *fed, char **text, long *produced,
                  pesc_error *err)
{
    tok_stream stream;
    tok_stream_init(&stream, a->tok, 1);
    size_t kept = 0;
    int rc = -1;
    if (text)
        *text = xstrdup("");
    for (*produced = 0; *produced < max_tokens && !interrupted; (*produced)++) {
        int32_t next = sampler_next(&a->s, a->logits, a->m->config.vocab_size);
        if (next < 0) {   /* an overflowing model's NaN: no token, rather than garbage */
            model_fail_logits(a->m, err);
            goto out;
        }
        int stop = 0;
        for (int i = 0; i < a->n_stops; i++)
            stop |= next == a->stops[i];
        if (stop)
            break;
        size_t len = 0;
        const char *piece = tok_stream_push(&stream, next, &len);
        put_piece(piece, len, text, &kept);
        if (fflush(stdout) != 0) {   /* nobody can read the answer: stop making it */
            pesc_fail(err, "cannot write to standard output: %s", strerror(errno));
            goto out;
        }
        if (*produced + 1 < max_tokens) {
            tok_ids_push(fed, next);
            if (model_decode(a->m, &next, 1, a->logits, NULL, err) != 0)
                goto out;
        }
    }
    size_t len = 0;
    const char *rest = tok_stream_flush(&stream, &len);
    put_piece(rest, len, text, &kept);
    printf("\n");
    rc = 0;
out:
    tok_stream_free(&stream);
    return rc;
}

static void context_note(const model *m, long produced)
{
    fprintf(stderr, "pesc generate: note: stopped after %ld tokens at the model's context of "
            "%d (max_position_embeddings)\n", produced, m->config.max_position_embeddings);
}

/* --system's message as the first of msgs: 1, or 0 without one. */
static int system_message(tpl_message *msgs, const generate_options *o)
{
    if (!o->system)
        return 0;
    msgs[0] = (tpl_message){.role = ROLE_SYSTEM, .content = o->system,
                            .len = strlen(o->system), .where = "--system"};
    return 1;
}

static int run_generation(model *m, tokenizer *tok, const chat_template *tpl,
                          const generate_options *o, const char *prompt, pesc_error *err)
{
    tok_ids ids = {0};
    tpl_message msgs[2];
    int n = system_message(msgs, o);
    msgs[n++] = (tpl_message){.role = ROLE_USER, .content = prompt, .len = strlen(prompt)};
    if ((o->raw ? tok_encode(tok, prompt, strlen(prompt), TOK_ADD_SPECIAL, &ids, err)
                : template_encode_prompt(tpl, tok, msgs, n, &ids, err)) != 0)
        return -1;
    answerer a;
    answerer_init(&a, m, tok, tpl, o);
    long produced = 0, max_tokens = model_answer_room(m, ids.n, (int)o->max_tokens, err);
    int rc = -1;
    if (max_tokens >= 0 && model_cache_reset(m, ids.n + (int)max_tokens, err) == 0 &&
        model_decode(m, ids.ids, ids.n, a.logits, NULL, err) == 0 &&
        answer(&a, max_tokens, &ids, NULL, &produced, err) == 0) {
        if (max_tokens < o->max_tokens && produced == max_tokens)
            context_note(m, produced);
        rc = 0;
    }
    answerer_free(&a);
    tok_ids_free(&ids);
    return rc;
}

/* The next user turn of --chat into *turn (malloc'd, *len bytes): a line of standard input,
 * or several where each but the last ends in a backslash (taken out, the line break kept);
 * blank turns are passed over. 1, or 0 at the end of the input, or -1 with err. */
static int read_turn(char **turn, size_t *len, int tty, pesc_error *err)
{
    char *line = NULL, *text = NULL;
    size_t cap = 0, n = 0;
    ssize_t got;
    int rc = 0, go_on = 0;
    for (;;) {
        if (tty)
            fputs(go_on ? ". " : "> ", stderr);
        if ((got = getline(&line, &cap, stdin)) < 0) {
            if (interrupted) {   /* Ctrl-C at the prompt: the end, as Ctrl-D */
                clearerr(stdin);
                n = 0;
            }
            break;
        }
        if (memchr(line, '\0', (size_t)got)) {
            rc = pesc_fail(err, "standard input holds a NUL byte: the turns must be text");
            goto out;
        }
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
            got--;
        go_on = got > 0 && line[got - 1] == '\\';
        text = xrealloc(text, n + (size_t)got + 1);
        memcpy(text + n, line, (size_t)got - go_on);
        n += (size_t)got - go_on;
        if (go_on) {
            text[n++] = '\n';
            continue;
        }
        while (n > 0 && text[n - 1] == '\n')
            n--;
        if (n > 0) {
            rc = 1;
            break;
        }
    }
    if (rc == 0 && ferror(stdin)) {
        rc = pesc_fail(err, "cannot read the conversation from standard input: %s",
                       strerror(errno));
        goto out;
    }
    while (rc == 0 && n > 0 && text[n - 1] == '\n')   /* the input ended inside a turn */
        n--;
    if (n > 0)
        rc = 1;
out:
    free(line);
    if (rc == 1) {
        text[n] = '\0';
        *turn = text;
        *len = n;
    } else {
        free(text);
    }
    return rc;
}

/* --chat: a line of standard input (or lines joined by backslashes) a user turn, each
 * answered with the conversation so far in the prompt. The cache keeps what the model has
 * read: a turn decodes only the tokens past the longest prefix the new prompt shares with it
 * (the last answer's end marker, the new turn and the assistant header, or more where the
 * answer's text tokenizes otherwise). */
static int run_chat(model *m, tokenizer *tok, const chat_template *tpl,
                    const generate_options *o, pesc_error *err)
{
    answerer a;
    answerer_init(&a, m, tok, tpl, o);
    tpl_message *turns = xmalloc(sizeof *turns);
    int system = system_message(turns, o), n_turns = system, rc = -1;
    int tty = isatty(STDIN_FILENO);
    tok_ids fed = {0}, ids = {0};
    char *turn = NULL;
    /* without SA_RESTART, so that Ctrl-C at the prompt ends the read */
    struct sigaction quit = {.sa_handler = on_interrupt}, before;
    sigemptyset(&quit.sa_mask);
    sigaction(SIGINT, &quit, &before);
    size_t len = 0;
    for (;;) {
        interrupted = 0;
        int more = read_turn(&turn, &len, tty, err);
        if (more < 0)
            goto out;
        if (more == 0)
            break;
        turns = xrealloc(turns, (size_t)(n_turns + 2) * sizeof *turns);
        turns[n_turns++] = (tpl_message){.role = ROLE_USER, .content = turn, .len = len};
        ids.n = 0;
        if (template_encode_prompt(tpl, tok, turns, n_turns, &ids, err) != 0)
            goto out;
        long room = model_answer_room(m, ids.n, (int)o->max_tokens, err);
        if (room < 0) {   /* the conversation fills the context: it ends, not in an error */
            fprintf(stderr, "pesc generate: note: the conversation is %d tokens, the model's "
                    "context (max_position_embeddings) %d: it ends here\n", ids.n,
                    m->config.max_position_embeddings);
            rc = 0;
            goto out;
        }
        int same = 0;   /* tokens of the new prompt the cache holds, one at least left over */
        while (same < fed.n && same < ids.n - 1 && fed.ids[same] == ids.ids[same])
            same++;
        /* a cache that must grow doubles (within the context), not a turn at a time */
        int want = ids.n + (int)room, context = m->config.max_position_embeddings;
        if (want > m->cache_capacity && 2 * m->cache_capacity > want)
            want = context > 0 && 2 * m->cache_capacity > context ? context
                                                                   : 2 * m->cache_capacity;
        if (model_cache_keep(m, same, want, err) != 0 ||
            model_decode(m, ids.ids + same, ids.n - same, a.logits, NULL, err) != 0)
            goto out;
        fed.n = 0;
        for (int i = 0; i < ids.n; i++)
            tok_ids_push(&fed, ids.ids[i]);
        char *text = NULL;
        long produced = 0;
        if (answer(&a, room, &fed, &text, &produced, err) != 0) {
            free(text);
            goto out;
        }
        if (room < o->max_tokens && produced == room)
            context_note(m, produced);
        turns[n_turns++] = (tpl_message){.role = ROLE_ASSISTANT, .content = text,
                                         .len = strlen(text)};
    }
    if (tty)
        fputc('\n', stderr);
    rc = 0;
out:
    for (int i = system; i < n_turns; i++)
        free((char *)turns[i].content);
    free(turns);
    tok_ids_free(&fed);
    tok_ids_free(&ids);
    answerer_free(&a);
    sigaction(SIGINT, &before, NULL);
    return rc;
}

/* --prompts: a prompt of the file, encoded and waiting for its turn. */
typedef struct queued {
    long line;
    char *text;                  /* the last user turn, as the output names the prompt */
    char *reference;             /* or NULL */
    json_t *id;                  /* or NULL */
    tok_ids ids;
    int room;                    /* its answer's most tokens; < 0: it fills the context */
    ans_prompt *g;               /* what answers it, or NULL (room < 0) */
} queued;


typedef struct batch {
    model *m;
    tokenizer *tok;
    const chat_template *tpl;
    const generate_options *o;
    const pr_file *file;          /* --prompts */
    ans_answerer a;
    queued *q;                   /* (queue) */
    int n, queue;
    int written;                 /* lines of the queue written */
    int write_failed;            /* standard output refused a line (written_err says so) */
    pesc_error written_err;
    long total;                  /* the file's prompts (the counting pass's) */
    long done;                   /* prompts answered before the queue */
    long too_long, first_too_long;
    long tokens;                 /* answered */
    double shown;
} batch;

/* The counting pass, before the model loads: every prompt of the file is read (so a bad one
 * stops the command before any work), none kept. */
static int count_prompt(void *ctx, const pr_prompt *p, pesc_error *err)
{
    batch *b = ctx;
    if (b->o->raw && (!p->plain || p->n_msgs > 1))
        return pesc_fail(err, "%s:%ld: --raw sends one text as it is; this prompt has %s",
                         b->file->name, p->line,
                         p->plain ? "a system message" : "a list of messages");
    b->total++;
    return 0;
}

/* A prompt's ids: its messages through the template (after --system, unless it has its own
 * system message), or with --raw its text as it is. */
static int encode_prompt(batch *b, const pr_prompt *p, tok_ids *ids, pesc_error *err)
{
    const tpl_message *last = &p->msgs[p->n_msgs - 1];
    if (b->o->raw)
        return tok_encode(b->tok, last->content, last->len, TOK_ADD_SPECIAL, ids, err);
    tpl_message *msgs = xmalloc((size_t)(p->n_msgs + 1) * sizeof *msgs);
    int n = p->msgs[0].role == ROLE_SYSTEM ? 0 : system_message(msgs, b->o);
    memcpy(msgs + n, p->msgs, (size_t)p->n_msgs * sizeof *msgs);
    int rc = template_encode_prompt(b->tpl, b->tok, msgs, n + p->n_msgs, ids, err);
    free(msgs);
    return rc;
}

/* A JSON line of the output: the prompt's line, id and text, then what answers it. */
static int put_line(json_t *o, pesc_error *err)
{
    char *text = json_dumps(o, JSON_PRESERVE_ORDER | JSON_COMPACT);
    json_decref(o);
    if (!text)
        return pesc_fail(err, "out of memory writing an answer");
    int bad = puts(text) == EOF || fflush(stdout) != 0;
    free(text);
    return bad ? pesc_fail(err, "cannot write the answers to standard output: %s",
                           strerror(errno)) : 0;
}

/* The answer's text as `pesc generate --prompt` streams it (malformed bytes as U+FFFD), its
 * length in *n (a byte token may give a NUL). */
static char *answer_text(tokenizer *tok, const tok_ids *out, size_t *n)
{
    tok_stream stream;
    tok_stream_init(&stream, tok, 1);
    size_t kept = 0, len;
    char *text = xstrdup("");
    for (int i = 0; i < out->n; i++) {
        const char *piece = tok_stream_push(&stream, out->ids[i], &len);
        append_piece(piece, len, &text, &kept);
    }
    const char *rest = tok_stream_flush(&stream, &len);
    append_piece(rest, len, &text, &kept);
    *n = kept;
    tok_stream_free(&stream);
    return text;
}

/* Line i of the queue on standard output: its answer (or "error", its prompt filling the
 * model's context). */
static int write_line(batch *b, int i, pesc_error *err)
{
    queued *q = &b->q[i];
    json_t *line = json_pack("{s:I}", "line", (json_int_t)q->line);
    if (q->id)
        json_object_set(line, "id", q->id);
    json_object_set_new(line, "prompt", json_string(q->text));
    if (!q->g) {
        pesc_error full;
        model_answer_room(b->m, q->ids.n, (int)b->o->max_tokens, &full);
        if (!b->too_long++)
            b->first_too_long = q->line;
        json_object_set_new(line, "error", json_string(full.msg));
    } else {
        size_t len;
        char *text = answer_text(b->tok, &q->g->out, &len);
        json_object_set_new(line, "answer", json_stringn(text, len));
        json_object_set_new(line, "tokens", json_integer(q->g->out.n));
        b->tokens += q->g->out.n;
        json_object_set_new(line, "finish", json_string(q->g->ended ? "stop" : "length"));
        free(text);
    }
    if (q->reference)
        json_object_set_new(line, "reference", json_string(q->reference));
    return put_line(line, err);
}

/* The answerer's hook: the lines whose answers (and those before) are done, written; the
 * progress at a terminal, cleared while they are. Nonzero when standard output refused. */
static int write_ready(void *ctx, long made)
{
    batch *b = ctx;
    int ready = b->written;
    while (ready < b->n && (!b->q[ready].g || b->q[ready].g->done))
        ready++;
    if (ready > b->written) {
        pesc_show_phase("pesc generate", NULL);   /* the lines start clean at a terminal */
        b->shown = 0.0;
    }
    for (; b->written < ready; b->written++)
        if (write_line(b, b->written, &b->written_err) != 0) {
            b->write_failed = 1;
            return 1;
        }
    if (pesc_now() - b->shown > 0.5) {
        pesc_show_phase("pesc generate", "%ld of %ld prompts answered", made, b->total);
        b->shown = pesc_now();
    }
    return 0;
}

/* Answers the queue in slots of one cache, writing its lines in the file's order as they
 * are done; a prompt that fills the model's context gets a line with "error" instead. */
static int flush(batch *b, pesc_error *err)
{
    const generate_options *o = b->o;
    int k = 0, rc = 0;
    if (b->n == 0)
        return 0;
    ans_prompt *g = xcalloc((size_t)b->n, sizeof *g);
    sampler *s = xcalloc((size_t)b->n, sizeof *s);
    for (int i = 0; i < b->n; i++) {
        queued *q = &b->q[i];
        pesc_error full;
        q->room = model_answer_room(b->m, q->ids.n, (int)o->max_tokens, &full);
        if (q->room < 0)
            continue;
        g[k] = (ans_prompt){.ids = q->ids.ids, .len = q->ids.n, .room = q->room};
        if (o->temperature > 0.0) {   /* prompt i draws from seed + i, whatever else is asked */
            sampler_init(&s[k], (float)o->temperature, (int)o->top_k, (float)o->top_p,
                         (uint64_t)o->seed + (uint64_t)(b->done + i));
            g[k].s = &s[k];
        }
        q->g = &g[k++];
    }
    b->written = 0;
    b->write_failed = 0;
    b->a.answered = write_ready;
    b->a.ctx = b;
    rc = ans_generate(&b->a, g, k, err);
    if (rc == 0)
        rc = write_ready(b, b->a.made);
    if (rc != 0 && b->write_failed) {
        *err = b->written_err;
        rc = -1;
    } else if (rc != 0) {
        rc = pesc_fail_prefix(err, "answering the prompts of lines %ld to %ld",
                              b->q[b->written].line, b->q[b->n - 1].line);
    }
    pesc_show_phase("pesc generate", NULL);
    b->shown = 0.0;
    for (int i = 0; i < b->n; i++) {
        queued *q = &b->q[i];
        free(q->text);
        free(q->reference);
        json_decref(q->id);
        tok_ids_free(&q->ids);
    }
    for (int j = 0; j < k; j++) {
        tok_ids_free(&g[j].out);
        if (g[j].s)
            sampler_free(g[j].s);
    }
    b->done += b->n;
    b->n = 0;
    free(g);
    free(s);
    return rc;
}

/* The answering pass: each prompt encoded and queued; a full queue is answered. */
static int queue_prompt(void *ctx, const pr_prompt *p, pesc_error *err)
{
    batch *b = ctx;
    queued *q = &b->q[b->n];
    const tpl_message *last = &p->msgs[p->n_msgs - 1];
    *q = (queued){.line = p->line};
    if (encode_prompt(b, p, &q->ids, err) != 0) {
        tok_ids_free(&q->ids);
        pesc_fail_prefix(err, "%s:%ld", b->file->name, p->line);
        pesc_error later;
        flush(b, &later);   /* what came before it is answered */
        return -1;
    }
    q->text = xmalloc(last->len + 1);
    memcpy(q->text, last->content, last->len);
    q->text[last->len] = '\0';
    q->reference = p->reference ? xstrdup(p->reference) : NULL;
    q->id = p->id ? json_deep_copy(p->id) : NULL;
    return ++b->n == b->queue ? flush(b, err) : 0;
}

/* --prompts: every prompt of the file answered, --batch slots at once, each a JSON line on
 * standard output in the file's order. */
static int run_prompts(batch *b, pesc_error *err)
{
    ans_answerer_init(&b->a, b->m, b->tok, b->tpl, (int)b->o->batch);
    b->queue = b->a.batch * ANS_QUEUE;   /* answered at once, their lines written in order */
    b->q = xcalloc((size_t)b->queue, sizeof *b->q);
    b->done = 0;
    double t0 = pesc_now();
    int rc = prompts_each(b->file, queue_prompt, b, err);
    if (rc == 0)
        rc = flush(b, err);
    if (rc == 0 && b->done != b->total)
        rc = pesc_fail(err, "%s changed while it was read: %ld prompts, then %ld", b->file->name,
                       b->total, b->done);
    if (rc == 0 && b->total > 0 && b->too_long == b->total)   /* not one answer: a failure */
        rc = pesc_fail(err, "%s: %s prompt%s fill%s the model's context of %d tokens "
                       "(max_position_embeddings), so none was answered; shorten %s",
                       b->file->name, b->total == 1 ? "its one" : "all its",
                       b->total == 1 ? "" : "s", b->total == 1 ? "s" : "",
                       b->m->config.max_position_embeddings, b->total == 1 ? "it" : "them");
    pesc_show_phase("pesc generate", NULL);
    model_cache_release(b->m);
    for (int i = 0; i < b->n; i++) {   /* left by a failure */
        free(b->q[i].text);
        free(b->q[i].reference);
        json_decref(b->q[i].id);
        tok_ids_free(&b->q[i].ids);
    }
    free(b->q);
    ans_answerer_free(&b->a);
    if (rc == 0 && isatty(STDERR_FILENO))   /* at a terminal, what it took */
        fprintf(stderr, "pesc generate: %ld answers, %ld tokens in %.1f s (%.0f tokens a "
                "second)\n", b->total - b->too_long, b->tokens, pesc_now() - t0,
                b->tokens / (pesc_now() - t0 > 1e-9 ? pesc_now() - t0 : 1e-9));
    if (rc == 0 && b->too_long)
        fprintf(stderr, "pesc generate: note: %ld of %ld prompts (the first on line %ld) fill "
                "the model's context of %d tokens: their lines have \"error\", not \"answer\"\n",
                b->too_long, b->total, b->first_too_long, b->m->config.max_position_embeddings);
    return rc;
}

int cmd_generate(int argc, char **argv)
{
    generate_options o;
    int status = parse_generate(&o, argc, argv);
    if (status >= 0)
        return status;
    pesc_error err = {{0}};
    pesc_backend *b = cli_backend_new("generate", o.backend);
    if (!b)
        return 1;
    model m = {0};
    tuned_model t = {0};
    tokenizer *tok = NULL;
    char *prompt = NULL;
    status = 1;
    pr_file file = {.fd = -1};
    batch prompts = {.o = &o, .file = &file};
    if (o.prompts && (prompts_open(&file, o.prompts, &err) != 0 ||
                      prompts_each(&file, count_prompt, &prompts, &err) != 0))
        goto out;
    if (o.prompts && prompts.total == 0) {
        pesc_fail(&err, "%s holds no prompt: a JSON object or a line of text each", file.name);
        goto out;
    }
    if (!o.chat && !o.prompts && !(prompt = read_prompt(&o, &err)))
        goto out;
    if (tuned_load("pesc generate", o.model, o.adapters, b, &m, &t, &err) != 0)
        goto out;
    model_freeze_base(&m);   /* nothing trains: the backend may mirror the weights for products */
    /* the template it was tuned in, unless the prompt goes as it is */
    if (!o.raw && tuned_template(&t, &o.template_name, &o.template_given, &err) != 0)
        goto out;
    if (!(tok = tuned_tokenizer(&t, o.tokenizer, &err)))   /* given, the run's or the model's */
        goto out;
    pesc_show_phase("pesc generate", NULL);   /* the answer starts on a clean line */
    const char *own = template_model_other(tok, o.template_name);
    if (own && !o.raw && !o.template_given)
        fprintf(stderr, "pesc generate: note: the model's chat template (tokenizer_config.json) "
                "is %s's; the prompt is wrapped in %s (the default): --template %s if the model "
                "was tuned in its own format\n", own, o.template_name, own);
    prompts.m = &m, prompts.tok = tok, prompts.tpl = template_find(o.template_name);
    if ((o.prompts ? run_prompts(&prompts, &err)
         : o.chat  ? run_chat(&m, tok, template_find(o.template_name), &o, &err)
                   : run_generation(&m, tok, template_find(o.template_name), &o, prompt, &err)) != 0)
        goto out;
    status = 0;
out:
    if (status != 0) {
        pesc_show_phase("pesc generate", NULL);
        cli_fail("generate", &err);
    }
    free(prompt);
    prompts_close(&file);
    tuned_free(&t);
    tok_delete(tok);
    model_free(&m);
    backend_delete(b);
    return status;
}
