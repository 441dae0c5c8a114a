/* cli — what every command shares: usage and runtime error lines, option parsing helpers.
 * Exit status: 0 success, 1 runtime failure (one line on stderr), 2 bad usage. */
#ifndef PESC_CLI_H
#define PESC_CLI_H

#include <getopt.h>

#include "backend.h"
#include "util.h"

enum { EXIT_USAGE = 2 };

/* "pesc CMD: message (see pesc CMD --help)" on stderr; returns EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Where the options being parsed come from when not the command line ("run.yaml:7", a
 * --config file's line): cli_usage_error names it before its message. NULL: the command line. */
void cli_usage_where(const char *where);
/* "pesc CMD: unexpected argument 'ARG'[: HINT] (see ...)", ARG on one line and cut short;
 * returns EXIT_USAGE. HINT (or NULL) says where such a value goes. */
int cli_unexpected(const char *cmd, const char *arg, const char *hint);
/* The hint for an argument that looks like a data file (a .json/.jsonl name, or a file that
 * exists): it goes after --data. NULL otherwise. */
const char *cli_data_hint(const char *arg);
/* "pesc CMD: message" on stderr; returns 1. */
int cli_fail(const char *cmd, const pesc_error *err);

/* getopt_long with our own messages. Returns the option, -1 at the end, or '?' after printing
 * a usage error for an unknown option or a missing argument. */
int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
               const struct option *longopts);

/* pesc's name in table for an option other trainers (Hugging Face TrainingArguments,
 * LLaMA-Factory, Camelidae) name so (underscores or dashes), or NULL. */
const char *cli_other_name(const struct option *table, const char *name);
/* The long option whose name is nearest name (a typo's: two edits at most, and fewer than
 * half the name's length); NULL when none is. */
const char *cli_nearest_option(const struct option *longopts, const char *name);
/* The same among n words (a command's name, say). */
const char *cli_nearest_word(const char *const *words, size_t n, const char *name);

/* --backend NAME: auto, cpu or cuda; 0, or EXIT_USAGE after a usage error line. */
int cli_backend(const char *cmd, const char *name);
/* backend_new for a command: NULL after its error line. When auto passed over a GPU that
 * might have worked (backend_gpu_passed_over), says so in a note line on stderr. */
pesc_backend *cli_backend_new(const char *cmd, const char *name);

/* A path option's or argument's value: an empty one names no file (--log "" and --control ""
 * once ran on as if absent, or were blamed on another option). 0 and *out = arg, or
 * EXIT_USAGE after "FLAG '': the path is empty; name WHAT". */
int cli_path(const char *cmd, const char *flag, const char *arg, const char *what,
             const char **out);

/* A number of a command's --json output: v as printf's %.*g writes it (digits significant),
 * or null when v is not finite, since JSON has no NaN or infinity (the run log writes null
 * too). The text lives in the returned struct until the end of the full expression that
 * called it, so that several go into one printf:
 * printf("{\"ppl\": %s}", cli_json_number(ppl, 9).text). */
typedef struct cli_json_text {
    char text[32];
} cli_json_text;
cli_json_text cli_json_number(double v, int digits);

/* Strict integer parsing: the whole string, within [min, max]. 0 or -1. */
int cli_parse_long(const char *s, long min, long max, long *out);

#endif
