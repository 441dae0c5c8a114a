/* lineedit — one line of text being typed, with a cursor and a history, as plain data (the
 * prompt console and the LR / aux / command prompts use it; the tests drive it without a
 * terminal).
 *
 * Owns: the text (wide characters, so the cursor moves by character), the history. Must not:
 * draw; the panels do that from `text`, `len` and `cursor`. */
#ifndef PESC_UI_LINEEDIT_H
#define PESC_UI_LINEEDIT_H

#include <stddef.h>
#include <wchar.h>

#define LINEEDIT_MAX 480
#define LINEEDIT_HISTORY 64

typedef enum lineedit_key {
    LE_LEFT, LE_RIGHT, LE_HOME, LE_END, LE_BACKSPACE, LE_DELETE, LE_KILL_TO_END,
    LE_KILL_TO_START, LE_KILL_WORD, LE_WORD_LEFT, LE_WORD_RIGHT, LE_HISTORY_UP, LE_HISTORY_DOWN
} lineedit_key;

typedef struct lineedit {
    wchar_t text[LINEEDIT_MAX + 1];
    int len, cursor;
    /* history, oldest first; browsing copies an entry into text */
    wchar_t *history[LINEEDIT_HISTORY];
    int n_history;
    int browsing;                /* index into history while browsing; n_history: the draft */
    wchar_t draft[LINEEDIT_MAX + 1];
} lineedit;

void lineedit_init(lineedit *e);
void lineedit_free(lineedit *e);
void lineedit_clear(lineedit *e);
/* Inserts a printable character at the cursor; 0, or -1 when the line is full. */
int lineedit_insert(lineedit *e, wchar_t c);
void lineedit_key_press(lineedit *e, lineedit_key k);
/* Appends the text to the history (not when empty or the same as the last entry). */
void lineedit_remember(lineedit *e);
/* The text as UTF-8 (whatever the locale: the characters are Unicode code points, as glibc's
 * wchar_t is); returns the byte length, -1 when a character is no code point or out has no
 * room. */
int lineedit_utf8(const lineedit *e, char *out, size_t cap);

#endif
