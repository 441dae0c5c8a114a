/* util — error reporting, checked allocation and small file helpers shared by every module.
 *
 * Errors a user can cause travel back as a status plus a `pesc_error` whose message is one
 * line that names the thing (file, tensor, flag) and says how to fix it. Programmer errors
 * assert. Nothing here keeps global state. */
#ifndef PESC_UTIL_H
#define PESC_UTIL_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#define PESC_ERROR_MAX 1024

typedef struct pesc_error {
    char msg[PESC_ERROR_MAX];
} pesc_error;

/* Writes the message (printf format) into err when err is non-NULL; always returns -1 so that
 * `return pesc_fail(err, ...)` reads naturally. */
int pesc_fail(pesc_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes an existing message: "context: old message". Returns -1. */
int pesc_fail_prefix(pesc_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Adds to an existing message what follows it: "old message" then the text as it is (begin
 * it with the space or punctuation it needs). Returns -1. */
int pesc_fail_suffix(pesc_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A path as a message shows it: itself, or '' when it is empty (": No such file or directory"
 * would name nothing). For the messages of a failed open, read or write. */
const char *pesc_path_shown(const char *path);

/* text as a terminal may show it, in out (cap bytes, at least 1): C0 controls and DEL as
 * \xNN, C1 controls (as UTF-8 encodes them) as \u00NN, so that text from a log or a socket
 * cannot move the cursor, recolour, retitle or clear the terminal. Every other byte, UTF-8
 * included, is kept. Cut short on a character boundary when it does not fit. Returns the
 * length written. */
size_t pesc_show_controls(char *out, size_t cap, const char *text);

/* A slow phase of a command's start ("loading the model from DIR"), for the person watching:
 * "WHO: what..." in one line on stderr when that is a terminal, nothing otherwise. The next
 * phase replaces the line; fmt NULL clears it, before the command's own output or an error.
 * who NULL: nothing. */
void pesc_show_phase(const char *who, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Allocation that cannot fail: out of memory prints a message and aborts (after the
 * registered cleanup hook, which the TUI uses to restore the terminal). */
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
void pesc_set_oom_hook(void (*hook)(void));

/* Reads a whole file into a NUL-terminated buffer. A directory fails with errno EISDIR and
 * a message that calls it one; a device (/dev/zero, a terminal), and anything past
 * PESC_READ_FILE_MAX (a pipe that does not end), fail with a message too. */
#define PESC_READ_FILE_MAX (1ul << 30)
int pesc_read_file(const char *path, char **out, size_t *len, pesc_error *err);

/* -1 with "PATH is a device, not a file" when fd is a character or block device: reading one
 * (/dev/zero, /dev/urandom, a disk) never ends or is not what was meant. A pipe passes. */
int pesc_refuse_device(int fd, const char *path, pesc_error *err);

/* text past a leading UTF-8 byte order mark (EF BB BF), which some editors write at the start
 * of a text file and JSON parsers refuse; *len (when not NULL) loses its 3 bytes too. */
const char *pesc_skip_bom(const char *text, size_t *len);
#define PESC_BOM "\xef\xbb\xbf"

/* "dir/name" in a fresh allocation. */
char *pesc_path_join(const char *dir, const char *name);

/* The directory of the running program (/proc/self/exe's) in a fresh allocation, NULL when
 * it cannot be told: a pesc run from its build tree finds what the build left there (the demo
 * model, the CUDA module, plugins) from any working directory. */
char *pesc_program_dir(void);

/* Writes len bytes to path and fsyncs them (a text file, a copy), through pesc_file_begin:
 * an existing file is replaced only by a whole one. The message of a failure names the file
 * and suggests a full disk. pesc_copy_file copies a (small) file that way. */
int pesc_write_file(const char *path, const void *data, size_t len, pesc_error *err);
/* Files that appear whole or not at all, for output written as a stream: pesc_file_begin
 * opens ".tmp-NAME-PID" beside `final` (removing those that dead processes left) and returns
 * its path in *tmp (malloc'd); pesc_file_commit flushes, fsyncs and closes it and renames it
 * over `final`, so an existing file is replaced only by a complete one; pesc_file_abort
 * closes and removes it after a failure. A `final` that exists and is not a regular file (a
 * device, a pipe) is written directly, with *tmp NULL. Missing directories above `final` are
 * made (pesc_make_dirs), here and in pesc_dir_begin. */
FILE *pesc_file_begin(const char *final, char **tmp, pesc_error *err);
int pesc_file_commit(FILE *f, const char *tmp, const char *final, pesc_error *err);
void pesc_file_abort(FILE *f, const char *tmp);
int pesc_copy_file(const char *from, const char *to, pesc_error *err);

/* 1 when a and b name the same existing file or directory (NULL names none). */
int pesc_same_file(const char *a, const char *b);
/* path opened read-only when a live process holds an exclusive flock on it (a run writing
 * its log or saving into its directory), so that what it recorded there can be read; -1
 * when nothing holds it or it cannot be opened. */
int pesc_open_if_locked(const char *path);
/* "; what to do" after a failed write's strerror(error): free space (ENOSPC, EDQUOT), raise
 * the file size limit (EFBIG), write elsewhere (EROFS); "" for what has no advice. */
const char *pesc_write_fix(int error);
/* parent/entry, a ".tmp-NAME-PID.old" that pesc_dir_commit had moved aside when its process
 * died before the new NAME took its place, renamed back to parent/NAME: the last whole copy.
 * 1 when it was; 0 when entry is not one, its process lives, NAME is there, or it cannot be
 * renamed. */
int pesc_dir_restore_aside(const char *parent, const char *entry);
/* The directory path lies in ("." when it names none), malloc'd. */
char *pesc_parent_dir(const char *path);
/* Creates directory dir and those above it that are missing (mkdir -p, mode 0755). 0, or -1
 * with errno set (ENOTDIR: a part of it, dir itself included, is a file). */
int pesc_make_dirs(const char *dir);
/* Whether pesc_make_dirs(dir) could make dir for this user to write in, making nothing: dir,
 * or the nearest directory above it that exists, is a directory this user may write in.
 * 0, or -1 with errno set. */
int pesc_dirs_writable(const char *dir);

/* Removes a file or a directory with everything under it. 0, or -1 (errno) when the top
 * could not be removed. */
int pesc_remove_tree(const char *path);

/* Directories that appear whole or not at all: pesc_dir_begin creates an empty temporary
 * directory beside `final` (".tmp-NAME-PID" in final's parent, first removing those of NAME
 * that processes no longer running left behind) and returns its path in *tmp (malloc'd). The
 * caller writes and fsyncs files into it, then pesc_dir_commit renames it to `final`: an
 * existing `final` is first moved aside (".tmp-NAME-PID.old") and removed only after the
 * rename, so a kill at any instant leaves either the old directory or the new one under the
 * final name, never a half-written one. pesc_dir_abort removes the temporary directory after
 * a failure. */
int pesc_dir_begin(const char *final, char **tmp, pesc_error *err);
int pesc_dir_commit(const char *tmp, const char *final, pesc_error *err);
void pesc_dir_abort(const char *tmp);

/* n bytes for people: "512 B", "3.4 MiB", "12.0 GiB" (binary units, one decimal). */
void pesc_format_bytes(double n, char *out, size_t cap);

/* Overflow-checked size arithmetic: returns 0 and sets *out, or -1 on overflow. */
int pesc_mul_size(size_t a, size_t b, size_t *out);

/* Seeded random numbers, the same on every platform, for everything that must reproduce
 * (initialisation, dropout, data order, sampling). The state advances with each call. */
uint64_t pesc_splitmix64(uint64_t *state);
double pesc_splitmix_uniform(uint64_t *state);   /* [0, 1), from the top 53 bits */
double pesc_xorshift_uniform(uint64_t *state);   /* [0, 1); xorshift64, state must not be 0 */

/* Monotonic seconds. */
double pesc_now(void);
/* The built-in demo's model: PESC_DEMO_DIR, the build tree's data/demo beside the program
 * when pesc runs from there (from any working directory), or the one installed under the
 * package data directory. */
char *pesc_demo_model_dir(void);
/* Whether a --model argument names the built-in demo: "demo", unless a model directory here
 * is called so. */
int pesc_names_demo(const char *arg);
/* A duration the one way every front end writes it (ETAs, "saved ... ago"): 45s, 14m07s,
 * 2h46m, 3d05h; "--" when unknown (negative or not finite). */
void pesc_format_duration(double s, char *out, size_t cap);
/* The seconds this process has stood stopped (Ctrl-Z) so far, as far as a front end that
 * handles the stop has noted them (pesc_note_stopped, async-signal-safe, from any thread):
 * step times, rates and ETAs leave them out. */
double pesc_stopped_s(void);
void pesc_note_stopped(double seconds);

/* The index of x's first largest value (n of them), NaN never: the greedy pick, as the
 * backends' argmax_rows makes it. -1 when that value is not finite (all NaN, or an infinity):
 * logits of a model that overflows, no token to pick. */
int pesc_argmax(const float *x, int n);

#endif
