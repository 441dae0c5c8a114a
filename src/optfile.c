/* optfile — see optfile.h. */
#include "optfile.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The parse: the optfile being made, the line at hand, and the entry whose list items may
 * follow it. */
typedef struct reader {
    optfile *f;
    size_t *first;            /* each entry's first value in the pool */
    size_t n_pool, cap_pool, cap_entries;
    const char *where;
    int line;
    int open;                 /* the entry a `- item` line adds to; -1: none */
    pesc_error *err;
} reader;

static int fail(reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(reader *r, const char *fmt, ...)
{
    char msg[PESC_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return pesc_fail(r->err, "%s:%d: %s", r->where, r->line, msg);
}

static void push_value(reader *r, char *value)
{
    if (r->n_pool == r->cap_pool)
        r->f->pool = xrealloc(r->f->pool, (r->cap_pool = r->cap_pool * 2 + 8) * sizeof *r->f->pool);
    r->f->pool[r->n_pool++] = value;
    r->f->entries[r->f->n - 1].n_values++;
}

/* Characters that begin YAML this reader does not take as a value's first: mappings, anchors
 * and aliases, tags, block text, reserved ones. */
static const char refused_first[] = "{}&*!|>%@`";

/* The scalar at *p (spaces before it skipped): quoted, or plain up to the line's end or a
 * comment (and, in a [list], a ',' or ']'). *out is it unquoted, in a fresh allocation; *p what
 * follows it, spaces skipped. 0, or -1 with the reason. */
static int scalar(reader *r, const char **p, int in_list, char **out)
{
    const char *s = *p;
    while (*s == ' ' || *s == '\t')
        s++;
    char *v = xmalloc(strlen(s) + 1);
    size_t n = 0;
    if (*s == '"' || *s == '\'') {
        char quote = *s++;
        for (;; s++) {
            if (!*s) {
                free(v);
                return fail(r, "this %s-quoted value has no closing %c on its line",
                            quote == '"' ? "double" : "single", quote);
            }
            if (*s == quote && quote == '\'' && s[1] == '\'') {
                v[n++] = *s++;   /* '' is a quote */
                continue;
            }
            if (*s == quote)
                break;
            if (*s == '\\' && quote == '"') {
                static const char from[] = "\"\\/nt", to[] = "\"\\/\n\t";
                const char *at = s[1] ? strchr(from, s[1]) : NULL;
                if (!at) {
                    free(v);
                    return fail(r, "\\%c is not an escape this reader knows: in double quotes "
                                "write \\\" \\\\ \\n or \\t, or use single quotes",
                                s[1] ? s[1] : ' ');
                }
                v[n++] = to[at - from];
                s++;
                continue;
            }
            v[n++] = *s;
        }
        s++;
        while (*s == ' ' || *s == '\t')
            s++;
        if (*s && *s != '#' && !(in_list && (*s == ',' || *s == ']'))) {
            free(v);
            return fail(r, "'%c' follows the closing quote: put the whole value inside the quotes",
                        *s);
        }
    } else {
        if (*s && (strchr(refused_first, *s) || (in_list && *s == '['))) {
            char c = *s;
            free(v);
            return fail(r, "'%c' begins YAML that a config file does not take (a mapping, "
                        "anchor, tag, block text or nested list): write the value plainly, or "
                        "in quotes", c);
        }
        const char *start = s;
        while (*s && !((*s == '#') && s > start && (s[-1] == ' ' || s[-1] == '\t')) &&
               !(in_list && (*s == ',' || *s == ']')))
            s++;
        const char *end = s;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        memcpy(v, start, (size_t)(end - start));
        n = (size_t)(end - start);
    }
    v[n] = '\0';
    if (strlen(v) != n) {   /* "\0" cannot be written, but a quoted NUL byte is refused earlier */
        free(v);
        return fail(r, "a value holds a NUL byte");
    }
    *p = s;
    *out = v;
    return 0;
}

/* A value of the entry just made: a scalar, or a [list] on its line. */
static int entry_value(reader *r, const char *s)
{
    char *v;
    if (*s != '[') {
        if (scalar(r, &s, 0, &v) != 0)
            return -1;
        push_value(r, v);
        return 0;
    }
    r->f->entries[r->f->n - 1].is_list = 1;
    s++;
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s == ']') {
        s++;
    } else {
        for (;;) {
            if (scalar(r, &s, 1, &v) != 0)
                return -1;
            if (!*v) {   /* a ',' before the ']' ends the list too, as YAML has it */
                free(v);
                if (*s != ']' || r->f->entries[r->f->n - 1].n_values == 0)
                    return fail(r, "an empty item in the [list]: remove the extra ','");
                s++;
                break;
            }
            push_value(r, v);
            if (*s == ',') {
                s++;
                continue;
            }
            if (*s == ']') {
                s++;
                break;
            }
            return fail(r, "a [list] must end on its line, with ']'");
        }
    }
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s && *s != '#')
        return fail(r, "text after the list's ']': one option a line");
    return 0;
}

/* `name: value`, `name:` (list items follow) or `name: [a, b]` at a line's start. */
static int entry_line(reader *r, const char *s)
{
    optfile *f = r->f;
    size_t len = strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-");
    if (len >= 1 && s[0] == '-' && s[1] == '-')
        return fail(r, "write the option without its dashes, as 'lr: 2e-4'");
    if (len == 0 || s[len] != ':')
        return fail(r, "expected 'name: value', a long option of pesc train without its --, "
                    "as 'lr: 2e-4'");
    if (s[len + 1] && s[len + 1] != ' ' && s[len + 1] != '\t')
        return fail(r, "put a space after '%.*s:'", (int)len, s);
    char *name = xmalloc(len + 1);
    for (size_t i = 0; i < len; i++)
        name[i] = s[i] == '_' ? '-' : s[i];
    name[len] = '\0';
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->entries[i].name, name) == 0) {
            fail(r, "'%s' again: line %d gave it already; give it once (a list holds several "
                 "values)", name, f->entries[i].line);
            free(name);
            return -1;
        }
    if ((size_t)f->n == r->cap_entries) {
        r->cap_entries = r->cap_entries * 2 + 8;
        f->entries = xrealloc(f->entries, r->cap_entries * sizeof *f->entries);
        r->first = xrealloc(r->first, r->cap_entries * sizeof *r->first);
    }
    char *written = xmalloc(len + 1);
    memcpy(written, s, len);
    written[len] = '\0';
    f->entries[f->n] = (optfile_entry){.line = r->line, .name = name, .written = written};
    r->first[f->n++] = r->n_pool;
    const char *v = s + len + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (!*v || *v == '#') {
        r->open = f->n - 1;   /* its `- item` lines follow, if any */
        return 0;
    }
    return entry_value(r, v);
}

/* A `- item` line (at any indent: YAML lets a list's items start where its name does). */
static int item_line(reader *r, const char *s)
{
    if (r->open < 0)
        return fail(r, "a list item with no name above it: put the option's name, as 'data:', "
                    "on the line before its items");
    if (r->open != r->f->n - 1)
        return fail(r, "a list's items follow its name, before other options");
    r->f->entries[r->open].is_list = 1;
    s++;
    while (*s == ' ' || *s == '\t')
        s++;
    if (!*s || *s == '#')
        return fail(r, "an empty list item: write its value after the '-', or remove the line");
    if (*s == '[' || *s == '-')
        return fail(r, "a list inside a list: give one value an item");
    char *v;
    if (scalar(r, &s, 0, &v) != 0)
        return -1;
    push_value(r, v);
    return 0;
}

/* One line (no '\n', a '\r' before it gone). */
static int one_line(reader *r, const char *s)
{
    size_t indent = strspn(s, " \t");
    const char *body = s + indent;
    if (!*body || *body == '#')
        return 0;
    if (memchr(s, '\t', indent))
        return fail(r, "a tab indents this line: YAML indents with spaces");
    if (*body == '-' && (body[1] == ' ' || body[1] == '\t' || !body[1]))
        return item_line(r, body);
    if (indent > 0)
        return fail(r, r->open >= 0 ? "expected '- item' under '%s'"
                                    : "an indented line: an option's name starts its line, as "
                                      "'lr: 2e-4'%s",
                    r->open >= 0 ? r->f->entries[r->open].name : "");
    if (strncmp(body, "---", 3) == 0 && strspn(body + 3, " \t") == strlen(body + 3)) {
        if (r->f->n > 0)
            return fail(r, "a second YAML document ('---'): a config file holds one");
        return 0;
    }
    r->open = -1;
    return entry_line(r, body);
}

optfile *optfile_parse(const char *text, size_t len, const char *where, pesc_error *err)
{
    optfile *f = xcalloc(1, sizeof *f);
    reader r = {.f = f, .where = where, .open = -1, .err = err};
    size_t skip = len >= 3 && memcmp(text, PESC_BOM, 3) == 0 ? 3 : 0;
    char *line = xmalloc(len + 1);
    int rc = 0;
    for (size_t at = skip; rc == 0 && at < len;) {
        const char *nl = memchr(text + at, '\n', len - at);
        size_t raw = nl ? (size_t)(nl - (text + at)) : len - at, n = raw;
        r.line++;
        memcpy(line, text + at, n);
        line[n] = '\0';
        if (n > 0 && line[n - 1] == '\r')
            line[--n] = '\0';
        if (strlen(line) != n)
            rc = fail(&r, "a NUL byte: this is not a text file of options");
        else
            rc = one_line(&r, line);
        at += raw + (nl ? 1 : 0);
    }
    free(line);
    for (int i = 0; i < f->n; i++)
        f->entries[i].values = f->entries[i].n_values ? f->pool + r.first[i] : NULL;
    free(r.first);
    if (rc != 0) {
        optfile_delete(f);
        return NULL;
    }
    return f;
}

optfile *optfile_read(const char *path, pesc_error *err)
{
    char *text;
    size_t len;
    if (pesc_read_file(path, &text, &len, err) != 0)
        return NULL;
    optfile *f = optfile_parse(text, len, path, err);
    free(text);
    return f;
}

void optfile_delete(optfile *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n; i++) {
        free(f->entries[i].name);
        free(f->entries[i].written);
        for (int j = 0; j < f->entries[i].n_values; j++)
            free(f->entries[i].values[j]);
    }
    free(f->pool);
    free(f->entries);
    free(f);
}
