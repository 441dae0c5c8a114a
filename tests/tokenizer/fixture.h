/* A small tokenizer.json the template and dataset tests build for themselves: byte-level BPE
 * over the 256 byte characters plus a few merges and the special tokens the templates use,
 * so decode(encode(x)) == x and every rendering is checkable without downloaded files. */
#ifndef PESC_TEST_TOKENIZER_FIXTURE_H
#define PESC_TEST_TOKENIZER_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "tokenizer.h"

static const char *const fixture_specials[] = {"<s>", "</s>", "<|im_start|>", "<|im_end|>",
                                               "<|eot_id|>", "<pad>"};

/* Ids: 0..255 the bytes (GPT-2 alphabet), 256.. the merges, 300.. the specials. */
static tokenizer *fixture_tokenizer(void)
{
    char path[] = "/tmp/pesc-test-fixtureXXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "w");
    fputs("{\"normalizer\": null, \"post_processor\": null,\n"
          " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true},\n"
          " \"decoder\": {\"type\": \"ByteLevel\"},\n \"added_tokens\": [", f);
    for (int i = 0; i < 6; i++)
        fprintf(f, "%s{\"id\": %d, \"content\": \"%s\", \"special\": true}", i ? ", " : "",
                300 + i, fixture_specials[i]);
    fputs("],\n \"model\": {\"type\": \"BPE\", \"merges\": [\"h e\", \"l l\", \"he ll\", \"Ġ w\"],"
          " \"vocab\": {", f);
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        unsigned cp = printable ? (unsigned)b : 256u + (unsigned)n++;
        char u[8];
        if (cp == '"' || cp == '\\') snprintf(u, sizeof u, "\\%c", (char)cp);
        else if (cp < 0x80) snprintf(u, sizeof u, "%c", (char)cp);
        else snprintf(u, sizeof u, "%c%c", (char)(0xc0 | cp >> 6), (char)(0x80 | (cp & 0x3f)));
        fprintf(f, "%s\"%s\": %d", b ? ", " : "", u, b);
    }
    fputs(", \"he\": 256, \"ll\": 257, \"hell\": 258, \"Ġw\": 259}}}\n", f);
    fclose(f);
    pesc_error err = {{0}};
    tokenizer *t = tok_load(path, &err);
    if (!t)
        fprintf(stderr, "fixture tokenizer: %s\n", err.msg);
    unlink(path);
    return t;
}

#endif
