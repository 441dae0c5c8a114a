/* prompts — see prompts.h. */
#define _GNU_SOURCE   /* mkostemp */
#include "prompts.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"

typedef struct reading {
    const char *name;            /* what messages call the file (pr_file's name) */
    pr_fn fn;
    void *ctx;
} reading;

/* A string member of o, or NULL (then *bad says whether it was there but not a string). */
static const char *string_of(const json_t *o, const char *key, int *bad)
{
    const json_t *v = json_object_get(o, key);
    if (v && !json_is_string(v) && !json_is_null(v))
        *bad = 1;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int role_of(const char *s, tpl_role *role)
{
    static const struct { const char *name; tpl_role role; } roles[] = {
        {"system", ROLE_SYSTEM}, {"developer", ROLE_SYSTEM}, {"user", ROLE_USER},
        {"human", ROLE_USER}, {"assistant", ROLE_ASSISTANT}, {"gpt", ROLE_ASSISTANT},
        {"model", ROLE_ASSISTANT}, {"bot", ROLE_ASSISTANT}};
    for (size_t i = 0; s && i < sizeof roles / sizeof *roles; i++)
        if (strcasecmp(s, roles[i].name) == 0) {
            *role = roles[i].role;
            return 0;
        }
    return -1;
}

/* The turns of a "messages" (or "conversations") list into msgs (n_turns of them, where
 * holding each one's JSON path): 0, or -1 with err. */
static int turns(const reading *r, long line, const char *key, const json_t *list,
                 tpl_message *msgs, char (*where)[48], pesc_error *err)
{
    size_t i;
    const json_t *t;
    json_array_foreach(list, i, t) {
        const char *role_key = json_object_get(t, "role") ? "role" : "from";
        const char *content_key = json_object_get(t, "role") ? "content" : "value";
        int bad = 0;
        const char *role = json_is_object(t) ? string_of(t, role_key, &bad) : NULL;
        const char *content = json_is_object(t) ? string_of(t, content_key, &bad) : NULL;
        snprintf(where[i], sizeof where[i], "%s[%zu]", key, i);
        if (!role || !content)
            return pesc_fail(err, "%s:%ld: %s is not a {\"role\": ..., \"content\": \"text\"} "
                             "turn", r->name, line, where[i]);
        tpl_role tr;
        if (role_of(role, &tr) != 0)
            return pesc_fail(err, "%s:%ld: %s has the role \"%s\": a prompt's turns are "
                             "system, user and assistant", r->name, line, where[i], role);
        msgs[i] = (tpl_message){.role = tr, .content = content, .len = strlen(content),
                                .where = where[i]};
    }
    return 0;
}

/* The turns of a camelidae "conversation" list ({"input", "output"} each: a user turn and the
 * assistant's answer, the last one's output the reference, or absent) into msgs after those
 * there are; *n counts them. 0, or -1 with err. */
static int camelidae_turns(const reading *r, long line, const json_t *list, tpl_message *msgs,
                           int *n, const char **reference, pesc_error *err)
{
    size_t i, count = json_array_size(list);
    const json_t *t;
    json_array_foreach(list, i, t) {
        int bad = 0;
        const char *input = json_is_object(t) ? string_of(t, "input", &bad) : NULL;
        const char *output = json_is_object(t) ? string_of(t, "output", &bad) : NULL;
        if (!input || bad || (!output && i + 1 < count))
            return pesc_fail(err, "%s:%ld: conversation[%zu] is not an {\"input\": \"text\", "
                             "\"output\": \"text\"} turn (the last may leave out its output)",
                             r->name, line, i);
        msgs[(*n)++] = (tpl_message){.role = ROLE_USER, .content = input, .len = strlen(input),
                                     .where = "conversation"};
        if (i + 1 < count)
            msgs[(*n)++] = (tpl_message){.role = ROLE_ASSISTANT, .content = output,
                                         .len = strlen(output), .where = "conversation"};
        else
            *reference = output;
    }
    return 0;
}

/* One JSON object of the file as a prompt, given to r->fn. */
static int from_json(void *ctx, const json_t *o, long line, pesc_error *err)
{
    const reading *r = ctx;
    if (!json_is_object(o))
        return pesc_fail(err, "%s:%ld: a prompt is a JSON object (or, in a file of plain text, "
                         "a line)", r->name, line);
    static const char *const prompt_keys[] = {"prompt", "instruction", "question", "query"};
    static const char *const reference_keys[] = {"completion", "output", "response", "answer"};
    int bad = 0, rc;
    const char *key = json_object_get(o, "messages") ? "messages" : "conversations";
    const json_t *list = json_object_get(o, key);
    const char *system = string_of(o, "system", &bad), *reference = NULL, *text = NULL;
    if (bad)
        return pesc_fail(err, "%s:%ld: \"system\" must be a string", r->name, line);
    pr_prompt p = {.line = line, .id = json_object_get(o, "id")};
    const json_t *conversation = json_object_get(o, "conversation");
    if (json_is_array(conversation)) {   /* camelidae: "instruction" is the system message */
        size_t n = json_array_size(conversation);
        const char *instruction = string_of(o, "instruction", &bad);
        if (n == 0 || bad)
            return pesc_fail(err, "%s:%ld: a camelidae prompt has a \"conversation\" of turns "
                             "and a string \"instruction\" (its system message)", r->name, line);
        tpl_message *msgs = xcalloc(2 * n + 1, sizeof *msgs);
        int count = 0;
        if (instruction && *instruction)
            msgs[count++] = (tpl_message){.role = ROLE_SYSTEM, .content = instruction,
                                          .len = strlen(instruction), .where = "instruction"};
        rc = camelidae_turns(r, line, conversation, msgs, &count, &reference, err);
        if (rc == 0) {
            p.msgs = msgs, p.n_msgs = count, p.reference = reference;
            p.plain = count == 1;
            rc = r->fn(r->ctx, &p, err);
        }
        free(msgs);
        return rc;
    }
    if (list) {
        size_t n = json_is_array(list) ? json_array_size(list) : 0;
        if (n == 0)
            return pesc_fail(err, "%s:%ld: \"%s\" must be a list of turns, and not empty",
                             r->name, line, key);
        tpl_message *msgs = xcalloc(n + 1, sizeof *msgs);
        char (*where)[48] = xcalloc(n, sizeof *where);
        int first = system != NULL;
        if (system)
            msgs[0] = (tpl_message){.role = ROLE_SYSTEM, .content = system,
                                    .len = strlen(system), .where = "system"};
        rc = turns(r, line, key, list, msgs + first, where, err);
        int count = first + (int)n, start = first;
        if (rc == 0 && msgs[first].role == ROLE_SYSTEM) {   /* the list's own system turn */
            if (system)
                rc = pesc_fail(err, "%s:%ld: a \"system\" and a system turn in \"%s\": keep "
                               "one", r->name, line, key);
            start++;
        }
        if (rc == 0 && msgs[count - 1].role == ROLE_ASSISTANT) {   /* the reference */
            reference = msgs[count - 1].content;
            count--;
        }
        for (int i = start; rc == 0 && i < count; i++)   /* user, assistant, user, ... */
            if (msgs[i].role != ((i - start) % 2 ? ROLE_ASSISTANT : ROLE_USER))
                rc = pesc_fail(err, "%s:%ld: %s is a%s turn where a%s one goes (after the "
                               "system message, the turns are user, assistant, user, ...)",
                               r->name, line, msgs[i].where,
                               msgs[i].role == ROLE_SYSTEM ? " system"
                               : msgs[i].role == ROLE_USER ? " user" : "n assistant",
                               (i - start) % 2 ? "n assistant" : " user");
        if (rc == 0 && (count == 0 || msgs[count - 1].role != ROLE_USER))
            rc = pesc_fail(err, "%s:%ld: \"%s\" must end in a user turn (then, if you like, "
                           "the assistant's answer, the reference)", r->name, line, key);
        if (rc == 0) {
            p.msgs = msgs, p.n_msgs = count, p.reference = reference;
            rc = r->fn(r->ctx, &p, err);
        }
        free(where);
        free(msgs);
        return rc;
    }
    char *joined = NULL;
    for (size_t i = 0; !text && i < sizeof prompt_keys / sizeof *prompt_keys; i++)
        text = string_of(o, prompt_keys[i], &bad);
    if (text && text == string_of(o, "instruction", &bad)) {
        /* an alpaca input or a Dolly context follows the instruction, a blank line apart */
        const char *extra = string_of(o, "input", &bad);
        if (!extra || !*extra)
            extra = string_of(o, "context", &bad);
        if (extra && *extra) {
            size_t size = strlen(text) + strlen(extra) + 3;
            joined = xmalloc(size);
            snprintf(joined, size, "%s%s%s", text, *text ? "\n\n" : "", extra);
            text = joined;
        }
    }
    for (size_t k = 0; !reference && k < sizeof reference_keys / sizeof *reference_keys; k++)
        reference = string_of(o, reference_keys[k], &bad);
    if (bad || !text || !*text)
        free(joined);
    if (bad)
        return pesc_fail(err, "%s:%ld: the prompt's text, its input and its answer must be "
                         "strings", r->name, line);
    if (text && !*text)
        return pesc_fail(err, "%s:%ld: the prompt is empty", r->name, line);
    if (!text) {
        char keys[200] = "";
        const char *k;
        const json_t *v;
        json_object_foreach((json_t *)o, k, v) {
            (void)v;
            size_t used = strlen(keys);
            if (used + strlen(k) + 8 >= sizeof keys) {
                snprintf(keys + used, sizeof keys - used, "%s...", used ? ", " : "");
                break;
            }
            snprintf(keys + used, sizeof keys - used, "%s\"%s\"", used ? ", " : "", k);
        }
        return pesc_fail(err, "%s:%ld: no prompt: give it as a \"prompt\" (or \"instruction\", "
                         "\"question\", \"query\") string or a \"messages\" list; this one has "
                         "%s", r->name, line, *keys ? keys : "no keys");
    }
    tpl_message msgs[2];
    int n = 0;
    if (system)
        msgs[n++] = (tpl_message){.role = ROLE_SYSTEM, .content = system, .len = strlen(system),
                                  .where = "system"};
    msgs[n++] = (tpl_message){.role = ROLE_USER, .content = text, .len = strlen(text),
                              .where = "prompt"};
    p.msgs = msgs, p.n_msgs = n, p.plain = 1, p.reference = reference;
    rc = r->fn(r->ctx, &p, err);
    free(joined);
    return rc;
}

/* Whether path (name in messages) is a file of plain text: not gzip or zstd (their magic
 * numbers), and its first character, spaces and a byte-order mark aside, neither '{' nor
 * '['. -1 when it cannot be read. */
static int plain_text(const char *path, const char *name, pesc_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return pesc_fail(err, "cannot open the prompts %s: %s", name, strerror(errno));
    unsigned char head[4] = {0};
    size_t got = fread(head, 1, sizeof head, f);
    if ((got >= 2 && head[0] == 0x1f && head[1] == 0x8b) ||
        (got == 4 && !memcmp(head, "\x28\xb5\x2f\xfd", 4))) {
        fclose(f);
        return 0;
    }
    rewind(f);
    int ch, at = 0;
    static const unsigned char bom[] = {0xef, 0xbb, 0xbf};
    while ((ch = getc(f)) != EOF && (isspace(ch) || (at < 3 && ch == bom[at])))
        at += at < 3 && ch == bom[at];
    fclose(f);
    return ch != EOF && ch != '{' && ch != '[';
}

static int each_line(const reading *r, const char *path, pesc_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return pesc_fail(err, "cannot open the prompts %s: %s", r->name, strerror(errno));
    char *text = NULL;
    size_t cap = 0;
    ssize_t got;
    long line = 0;
    int rc = 0;
    while (rc == 0 && (got = getline(&text, &cap, f)) >= 0) {
        line++;
        if (memchr(text, '\0', (size_t)got)) {
            rc = pesc_fail(err, "%s:%ld: a NUL byte: a file of prompts is text", r->name, line);
            break;
        }
        while (got > 0 && (text[got - 1] == '\n' || text[got - 1] == '\r'))
            text[--got] = '\0';
        char *start = text;
        if (line == 1 && got >= 3 && !memcmp(text, "\xef\xbb\xbf", 3)) {   /* a BOM */
            start += 3;
            got -= 3;
        }
        json_t *valid = json_stringn(start, (size_t)got);   /* NULL: not UTF-8 */
        if (!valid) {
            rc = pesc_fail(err, "%s:%ld: not valid UTF-8; convert the file to UTF-8, e.g. "
                           "iconv -f latin1 -t utf-8", r->name, line);
            break;
        }
        json_decref(valid);
        const char *s = start;
        while (isspace((unsigned char)*s))
            s++;
        if (!*s)
            continue;
        tpl_message msg = {.role = ROLE_USER, .content = start, .len = (size_t)got,
                           .where = "the line"};
        pr_prompt p = {.line = line, .msgs = &msg, .n_msgs = 1, .plain = 1};
        rc = r->fn(r->ctx, &p, err);
    }
    if (rc == 0 && (ferror(f) || !feof(f)))   /* !feof: getline ran out of memory */
        rc = pesc_fail(err, "cannot read the prompts %s: %s", r->name, strerror(errno));
    free(text);
    fclose(f);
    return rc;
}

int prompts_each(const pr_file *f, pr_fn fn, void *ctx, pesc_error *err)
{
    reading r = {.name = f->name, .fn = fn, .ctx = ctx};
    int plain = plain_text(f->path, f->name, err);
    if (plain < 0)
        return -1;
    if (plain)
        return each_line(&r, f->path, err);
    return ds_each_json(f->path, f->name, from_json, &r, err);
}

static int cannot_keep(const pr_file *f, const char *dir, int error, pesc_error *err)
{
    return pesc_fail(err, "cannot keep the prompts of %s in %s: %s; set TMPDIR to a writable "
                     "directory with room", f->name, dir, strerror(error));
}

/* Standard input or a pipe (in, named name) into a temporary file, f->fd, removed at once. */
static int spool(pr_file *f, int in, pesc_error *err)
{
    const char *dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    size_t len = strlen(dir) + sizeof "/pesc-prompts-XXXXXX";
    char *path = xmalloc(len);
    snprintf(path, len, "%s/pesc-prompts-XXXXXX", dir);
    f->fd = mkostemp(path, O_CLOEXEC);
    int saved = errno;
    if (f->fd >= 0)
        unlink(path);
    free(path);
    if (f->fd < 0)
        return cannot_keep(f, dir, saved, err);
    if (isatty(in))
        fprintf(stderr, "pesc generate: reading prompts from the terminal, a line each; "
                "Ctrl-D ends them\n");
    char buf[1 << 16];
    ssize_t got;
    while ((got = read(in, buf, sizeof buf)) != 0) {
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {   /* left non-blocking */
            struct pollfd ready = {.fd = in, .events = POLLIN};
            poll(&ready, 1, -1);
            continue;
        }
        if (got < 0)
            return pesc_fail(err, "cannot read the prompts of %s: %s", f->name,
                             strerror(errno));
        for (ssize_t put = 0; put < got;) {
            ssize_t w = write(f->fd, buf + put, (size_t)(got - put));
            if (w < 0 && errno != EINTR)
                return cannot_keep(f, dir, errno, err);
            put += w > 0 ? w : 0;
        }
    }
    snprintf(f->fd_path, sizeof f->fd_path, "/dev/fd/%d", f->fd);
    f->path = f->fd_path;
    return 0;
}

int prompts_open(pr_file *f, const char *arg, pesc_error *err)
{
    *f = (pr_file){.name = arg, .path = arg, .fd = -1};
    if (!strcmp(arg, "-")) {
        f->name = "standard input";
        return spool(f, STDIN_FILENO, err);
    }
    struct stat st;
    if (stat(arg, &st) != 0)
        return pesc_fail(err, "cannot open the prompts %s: %s", arg, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return pesc_fail(err, "the prompts %s are a directory: give a file", arg);
    if (S_ISREG(st.st_mode))
        return 0;
    if (!S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode))
        return pesc_fail(err, "the prompts %s are a device, not a file: give a file, or "
                         "--prompts - to read them from standard input", arg);
    int in = open(arg, O_RDONLY | O_CLOEXEC);
    if (in < 0 && errno == ENXIO)   /* a socket, as /dev/stdin */
        return pesc_fail(err, "cannot open the prompts %s: it is a socket; give --prompts - "
                         "with them on standard input", arg);
    if (in < 0)
        return pesc_fail(err, "cannot open the prompts %s: %s", arg, strerror(errno));
    int rc = spool(f, in, err);
    close(in);
    return rc;
}

void prompts_close(pr_file *f)
{
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
}
