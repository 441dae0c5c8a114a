/* example_format — a dataset format plugin for a team's own schema; the model to copy
 * (man pesc-plugin(7) walks through it).
 *
 * Format `qa`:
 *   {"q": "question", "a": "answer"}                 one user turn and its answer
 *   {"q": ..., "a": ..., "context": "system text"}   with a system message first
 *   question<TAB>answer                              a plain line (--format qa only)
 * `--format auto` picks it for records with both "q" and "a".
 *
 * It reads records only through the host table h (never a JSON library of its own) and hands
 * back messages; pesc renders them with the chat template, tokenizes them and trains only
 * the answer. Errors are one line through h->fail; pesc adds the file and line. */
#include <stdio.h>
#include <string.h>

#include "pesc-plugin.h"

static int qa_detect(const pesc_format_host *h, const pesc_json *record)
{
    /* above the built-ins' key matches (30-90 decide among their own keys), below a string */
    return h->get(record, "q") && h->get(record, "a") ? 55 : 0;
}

/* question<TAB>answer */
static int qa_line(const pesc_format_host *h, const char *line, size_t len, pesc_record_out *out)
{
    const char *tab = memchr(line, '\t', len);
    if (!tab || tab == line || tab + 1 == line + len)
        return h->fail(out, "a qa line must be QUESTION<TAB>ANSWER");
    h->message(out, PESC_ROLE_USER, line, (size_t)(tab - line));
    h->message(out, PESC_ROLE_ASSISTANT, tab + 1, (size_t)(line + len - tab - 1));
    return 0;
}

static int qa_convert(const pesc_format_host *h, const pesc_json *record, pesc_record_out *out)
{
    size_t lq, la, lc;
    const char *line = h->string(record, &lq);
    if (line)
        return qa_line(h, line, lq, out);
    const char *q = h->string(h->get(record, "q"), &lq);
    const char *a = h->string(h->get(record, "a"), &la);
    const char *context = h->string(h->get(record, "context"), &lc);
    if (!q || !a)
        return h->fail(out, "qa: \"q\" and \"a\" must be strings");
    if (context && lc > 0)
        h->message(out, PESC_ROLE_SYSTEM, context, lc);
    h->message(out, PESC_ROLE_USER, q, lq);
    h->message(out, PESC_ROLE_ASSISTANT, a, la);
    return 0;
}

static const pesc_format_ops qa_ops = {
    .size = sizeof qa_ops, .flags = PESC_FORMAT_LINES, .detect = qa_detect,
    .convert = qa_convert};

static const pesc_plugin qa_plugin = {
    .abi_version = PESC_PLUGIN_ABI_VERSION, .size = sizeof qa_plugin,
    .kind = PESC_PLUGIN_FORMAT, .name = "qa", .version = "1.0",
    .description = "example: {\"q\", \"a\", \"context\"?} records or QUESTION<TAB>ANSWER lines",
    .format = &qa_ops};

PESC_PLUGIN_DEFINE(qa_plugin)
