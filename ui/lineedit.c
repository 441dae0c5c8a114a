/* lineedit — see lineedit.h. */
#include "lineedit.h"

#include <stdlib.h>
#include <string.h>
#include <wctype.h>

#include "util.h"

void lineedit_init(lineedit *e)
{
    memset(e, 0, sizeof *e);
}

void lineedit_free(lineedit *e)
{
    for (int i = 0; i < e->n_history; i++)
        free(e->history[i]);
    lineedit_init(e);
}

void lineedit_clear(lineedit *e)
{
    e->len = e->cursor = 0;
    e->text[0] = L'\0';
    e->browsing = e->n_history;
}

int lineedit_insert(lineedit *e, wchar_t c)
{
    if (e->len >= LINEEDIT_MAX || c == L'\0')
        return -1;
    memmove(&e->text[e->cursor + 1], &e->text[e->cursor],
            (size_t)(e->len - e->cursor) * sizeof(wchar_t));
    e->text[e->cursor++] = c;
    e->text[++e->len] = L'\0';
    return 0;
}

static void erase_range(lineedit *e, int from, int to)
{
    if (from >= to)
        return;
    memmove(&e->text[from], &e->text[to], (size_t)(e->len - to) * sizeof(wchar_t));
    e->len -= to - from;
    e->text[e->len] = L'\0';
    e->cursor = from;
}

static int word_start(const lineedit *e, int i)
{
    while (i > 0 && iswspace((wint_t)e->text[i - 1]))
        i--;
    while (i > 0 && !iswspace((wint_t)e->text[i - 1]))
        i--;
    return i;
}

static int word_end(const lineedit *e, int i)
{
    while (i < e->len && iswspace((wint_t)e->text[i]))
        i++;
    while (i < e->len && !iswspace((wint_t)e->text[i]))
        i++;
    return i;
}

static void set_text(lineedit *e, const wchar_t *s)
{
    wcsncpy(e->text, s, LINEEDIT_MAX);
    e->text[LINEEDIT_MAX] = L'\0';
    e->len = e->cursor = (int)wcslen(e->text);
}

static void browse(lineedit *e, int to)
{
    if (to < 0 || to > e->n_history || to == e->browsing)
        return;
    if (e->browsing == e->n_history)
        wcscpy(e->draft, e->text);
    e->browsing = to;
    set_text(e, to == e->n_history ? e->draft : e->history[to]);
}

void lineedit_key_press(lineedit *e, lineedit_key k)
{
    switch (k) {
    case LE_LEFT: if (e->cursor > 0) e->cursor--; break;
    case LE_RIGHT: if (e->cursor < e->len) e->cursor++; break;
    case LE_HOME: e->cursor = 0; break;
    case LE_END: e->cursor = e->len; break;
    case LE_BACKSPACE: erase_range(e, e->cursor > 0 ? e->cursor - 1 : 0, e->cursor); break;
    case LE_DELETE: erase_range(e, e->cursor, e->cursor < e->len ? e->cursor + 1 : e->cursor); break;
    case LE_KILL_TO_END: erase_range(e, e->cursor, e->len); break;
    case LE_KILL_TO_START: erase_range(e, 0, e->cursor); break;
    case LE_KILL_WORD: erase_range(e, word_start(e, e->cursor), e->cursor); break;
    case LE_WORD_LEFT: e->cursor = word_start(e, e->cursor); break;
    case LE_WORD_RIGHT: e->cursor = word_end(e, e->cursor); break;
    case LE_HISTORY_UP: browse(e, e->browsing - 1); break;
    case LE_HISTORY_DOWN: browse(e, e->browsing + 1); break;
    }
}

void lineedit_remember(lineedit *e)
{
    if (e->len == 0)
        return;
    if (e->n_history > 0 && wcscmp(e->history[e->n_history - 1], e->text) == 0) {
        e->browsing = e->n_history;
        return;
    }
    if (e->n_history == LINEEDIT_HISTORY) {
        free(e->history[0]);
        memmove(&e->history[0], &e->history[1], (LINEEDIT_HISTORY - 1) * sizeof e->history[0]);
        e->n_history--;
    }
    wchar_t *copy = xmalloc(((size_t)e->len + 1) * sizeof(wchar_t));
    wcscpy(copy, e->text);
    e->history[e->n_history++] = copy;
    e->browsing = e->n_history;
}

int lineedit_utf8(const lineedit *e, char *out, size_t cap)
{
    size_t n = 0;
    for (int i = 0; i < e->len; i++) {
        unsigned long c = (unsigned long)e->text[i];
        int bytes = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
        if (c > 0x10ffff || (c >= 0xd800 && c < 0xe000) || n + (size_t)bytes >= cap) {
            out[0] = '\0';
            return -1;
        }
        if (bytes == 1) {
            out[n++] = (char)c;
            continue;
        }
        static const unsigned char lead[] = {0, 0, 0xc0, 0xe0, 0xf0};
        out[n++] = (char)(lead[bytes] | c >> 6 * (bytes - 1));
        for (int k = bytes - 2; k >= 0; k--)
            out[n++] = (char)(0x80 | (c >> 6 * k & 0x3f));
    }
    out[n] = '\0';
    return (int)n;
}
