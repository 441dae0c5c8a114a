/* tuned — the model generate and eval answer or score with: a base model crafted with the
 * routers and adapters of a pesc run. Without --model, the base the adapters' checkpoint
 * recorded; a checkpoint also gives the tokenizer and the chat template its run trained
 * with (a model pesc exported, the template its config.json recorded), for the command to
 * use where its own options give none. Must not: parse options. */
#ifndef PESC_TUNED_H
#define PESC_TUNED_H

#include "backend.h"
#include "model.h"
#include "tokenizer.h"
#include "util.h"

typedef struct tuned_model {
    char *dir;                   /* the model directory (tokenizer.json beside the weights);
                                    NULL for a base of random weights (--init-config) */
    char *tokenizer;             /* the run's --tokenizer; NULL: the model's own */
    char template_name[32];      /* the run's --template (the checkpoint's, or what pesc
                                    export recorded in config.json); "": not known */
    int seq;                     /* the run's --seq (a checkpoint's); 0: not known */
} tuned_model;

/* Loads model_arg (a directory or URL; NULL: the checkpoint's base) crafted with adapters (a
 * trainables file, a checkpoint or a save directory; NULL: none). With both given and the
 * adapters a checkpoint's, a base other than its run's is noted on stderr as "CMD: note:".
 * cmd ("pesc generate") names the phases shown while it loads. */
int tuned_load(const char *cmd, const char *model_arg, const char *adapters, pesc_backend *be,
               model *m, tuned_model *t, pesc_error *err);
void tuned_free(tuned_model *t);
/* The template a command renders in: *name as given (*given set), else the run's when it is
 * known (*given then set too), else *name's default. 0, or -1 when the run's is not one this
 * pesc knows. */
int tuned_template(const tuned_model *t, const char **name, int *given, pesc_error *err);

/* The tokenizer a command encodes with: given (a file or URL: --tokenizer), else the run's
 * --tokenizer, else the model's tokenizer.json. A failure of a given or the run's file is
 * named by its flag ("--tokenizer", "the run's --tokenizer"). NULL after an error. */
tokenizer *tuned_tokenizer(const tuned_model *t, const char *given, pesc_error *err);

#endif
