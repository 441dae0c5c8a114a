/* test_answers — `pesc eval --generate`'s pieces: a record split into its prompt and its last
 * answer up to the end marker, the numbers GSM8K-style answers give, and the matching. */
#include <stdio.h>
#include <string.h>

#include "answers.h"
#include "check.h"

static void test_split(void)
{
    /* two turns: the first answer (3, 4, EOS 9) and the last (7, 8, EOS 9, a trained 5 after) */
    static const int32_t ids[] = {1, 2, 3, 4, 9, 6, 7, 8, 9, 5};
    static const int32_t labels[] = {-100, -100, 3, 4, 9, -100, 7, 8, 9, 5};
    static const int32_t stops[] = {9, 11};
    ds_record r = {.ids = ids, .labels = labels, .len = 10};
    int prompt = -1, end = -1;
    int rc = ans_split(&r, stops, 2, &prompt, &end);
    CHECK(rc == 0 && prompt == 6 && end == 8, "the last answer, to its marker: %d %d %d", rc,
          prompt, end);
    r.len = 9;   /* the answer ends with its marker */
    rc = ans_split(&r, stops, 2, &prompt, &end);
    CHECK(rc == 0 && prompt == 6 && end == 8, "ended by its marker: %d %d %d", rc, prompt, end);
    rc = ans_split(&r, NULL, 0, &prompt, &end);
    CHECK(rc == 0 && prompt == 6 && end == 9, "no stop ids: the whole run: %d %d %d", rc, prompt,
          end);
    r.len = 5;   /* the first turn alone, its answer the last */
    rc = ans_split(&r, stops, 2, &prompt, &end);
    CHECK(rc == 0 && prompt == 2 && end == 4, "one turn: %d %d %d", rc, prompt, end);
    static const int32_t none[] = {-100, -100, -100};
    static const int32_t all[] = {1, 2, 3};
    static const int32_t marker[] = {-100, 9, -100};
    static const int32_t marker_ids[] = {1, 9, 2};
    ds_record refused[] = {
        {.ids = ids, .labels = NULL, .len = 3},            /* a text record: all answer */
        {.ids = ids, .labels = none, .len = 3},            /* nothing trained */
        {.ids = all, .labels = all, .len = 3},             /* no prompt before the answer */
        {.ids = marker_ids, .labels = marker, .len = 3},   /* an answer of its marker alone */
    };
    for (int i = 0; i < 4; i++)
        CHECK(ans_split(&refused[i], stops, 2, &prompt, &end) == -1, "refused record %d", i);
}

static void test_numbers(void)
{
    static const struct {
        const char *text, *number;   /* NULL: none */
    } cases[] = {
        {"Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"},
        {"#### 1,234", "1234"},
        {"#### -12\nand then 5", "-12"},             /* the first after the marker */
        {"It costs $1,000.50 in all.", "1000.50"},
        {"3 apples, then 4. So 7.", "7"},             /* the last without a marker */
        {"The answer is -3", "-3"},
        {"x2 and y3", NULL},                          /* inside words: no number */
        {"#### none here", NULL},
        {"", NULL},
        {"1,2", "12"},
        {"2 #### 5 #### 9", "9"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char out[64] = "";
        int rc = ans_number(cases[i].text, out, sizeof out);
        if (cases[i].number)
            CHECK(rc == 0 && strcmp(out, cases[i].number) == 0, "\"%s\" gives %s, not %s",
                  cases[i].text, rc ? "none" : out, cases[i].number);
        else
            CHECK(rc == -1, "\"%s\" gives %s, not none", cases[i].text, out);
    }
    char small[4];   /* a buffer too small: cut, still terminated */
    CHECK(ans_number("#### 123456", small, sizeof small) == 0 && strcmp(small, "123") == 0,
          "a small buffer: %s", small);
}

static void test_matching(void)
{
    CHECK(ans_matches(ANS_MATCH_EXACT, " Paris\n", "Paris"), "whitespace at the ends aside");
    CHECK(!ans_matches(ANS_MATCH_EXACT, "paris", "Paris"), "case counts");
    CHECK(!ans_matches(ANS_MATCH_EXACT, "Paris.", "Paris"), "punctuation counts");
    CHECK(!ans_matches(ANS_MATCH_EXACT, "", "Paris"), "an empty answer");
    CHECK(ans_matches(ANS_MATCH_EXACT, "", " "), "both empty");
    CHECK(ans_matches(ANS_MATCH_NUMBER, "So she has 72 now.", "... #### 72"), "72 and 72");
    CHECK(ans_matches(ANS_MATCH_NUMBER, "#### 72.0", "#### 72"), "72.0 and 72");
    CHECK(ans_matches(ANS_MATCH_NUMBER, "That is $1,200.", "#### 1200"), "$1,200 and 1200");
    CHECK(!ans_matches(ANS_MATCH_NUMBER, "27", "#### 72"), "27 and 72");
    CHECK(!ans_matches(ANS_MATCH_NUMBER, "no idea", "#### 72"), "no number");
    CHECK(!ans_matches(ANS_MATCH_NUMBER, "72", "seventy-two"), "a reference without one");
    ans_match m;
    pesc_error err = {{0}};
    CHECK(ans_match_parse("number", &m, &err) == 0 && m == ANS_MATCH_NUMBER, "number");
    CHECK(ans_match_parse("exact", &m, &err) == 0 && m == ANS_MATCH_EXACT, "exact");
    CHECK(ans_match_parse("fuzzy", &m, &err) == -1 && strstr(err.msg, "expected exact") &&
          strstr(err.msg, "number"), "fuzzy: %s", err.msg);
}

int main(void)
{
    test_split();
    test_numbers();
    test_matching();
    printf("%d failure%s\n", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
