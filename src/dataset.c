/* dataset — see dataset.h. */
#include "dataset.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads an array of integers; labels may hold -100, ids may not. */
static int read_ids(json_t *array, const char *key, int allow_ignore, int vocab_size,
                    int32_t **out, int *len, const char *path, long line, pesc_error *err)
{
    if (!json_is_array(array))
        return pesc_fail(err, "%s:%ld: \"%s\" must be an array of token ids", path, line, key);
    size_t n = json_array_size(array);
    if (n == 0 || n > (1u << 24))
        return pesc_fail(err, "%s:%ld: \"%s\" must hold between 1 and %u ids", path, line, key,
                         1u << 24);
    int32_t *ids = xmalloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(array, i);
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
        int ok = json_is_integer(v) && ((allow_ignore && id == -100) ||
                 (id >= 0 && (vocab_size <= 0 || id < vocab_size)));
        if (!ok) {
            free(ids);
            if (!json_is_integer(v))
                return pesc_fail(err, "%s:%ld: \"%s\"[%zu] is not an integer", path, line, key, i);
            return pesc_fail(err, "%s:%ld: \"%s\"[%zu] = %lld is outside the vocabulary "
                             "(0..%d%s)", path, line, key, i, (long long)id, vocab_size - 1,
                             allow_ignore ? ", or -100 to ignore" : "");
        }
        ids[i] = (int32_t)id;
    }
    *out = ids;
    *len = (int)n;
    return 0;
}

static int parse_record(ds_record *r, const char *text, int vocab_size, const char *path,
                        long line, pesc_error *err)
{
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    if (!root)
        return pesc_fail(err, "%s:%ld: not valid JSON (column %d: %s)", path, line, jerr.column,
                         jerr.text);
    int rc = -1, label_len = 0;
    memset(r, 0, sizeof *r);
    if (!json_is_object(root)) {
        pesc_fail(err, "%s:%ld: a record must be a JSON object with \"input_ids\"", path, line);
        goto out;
    }
    if (read_ids(json_object_get(root, "input_ids"), "input_ids", 0, vocab_size, &r->ids,
                 &r->len, path, line, err) != 0)
        goto out;
    json_t *labels = json_object_get(root, "labels");
    if (labels && !json_is_null(labels)) {
        if (read_ids(labels, "labels", 1, vocab_size, &r->labels, &label_len, path, line, err))
            goto out;
        if (label_len != r->len) {
            pesc_fail(err, "%s:%ld: \"labels\" has %d entries but \"input_ids\" has %d", path,
                      line, label_len, r->len);
            goto out;
        }
    }
    rc = 0;
out:
    if (rc != 0) {
        free(r->ids);
        free(r->labels);
        memset(r, 0, sizeof *r);
    }
    json_decref(root);
    return rc;
}

int dataset_load_tokens(ds_records *d, const char *path, int vocab_size, pesc_error *err)
{
    memset(d, 0, sizeof *d);
    FILE *f = fopen(path, "r");
    if (!f)
        return pesc_fail(err, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int capacity = 0, rc = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (strspn(line, " \t\r\n") == (size_t)got)
            continue;
        if (d->n == capacity) {
            capacity = capacity ? 2 * capacity : 256;
            d->items = xrealloc(d->items, (size_t)capacity * sizeof *d->items);
        }
        if (parse_record(&d->items[d->n], line, vocab_size, path, lineno, err) != 0) {
            rc = -1;
            break;
        }
        d->n++;
    }
    if (rc == 0 && ferror(f))
        rc = pesc_fail(err, "%s: read error", path);
    if (rc == 0 && d->n == 0)
        rc = pesc_fail(err, "%s: no records (expected JSONL lines with \"input_ids\")", path);
    free(line);
    fclose(f);
    if (rc != 0)
        dataset_free(d);
    return rc;
}

void dataset_free(ds_records *d)
{
    for (int i = 0; i < d->n; i++) {
        free(d->items[i].ids);
        free(d->items[i].labels);
    }
    free(d->items);
    memset(d, 0, sizeof *d);
}
