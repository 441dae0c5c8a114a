/* optim — AdamW with float32 state, global-norm clipping and learning-rate schedules, over one
 * contiguous block of trainable parameters on a backend.
 *
 * Must not: know what the parameters are. */
#ifndef PESC_OPTIM_H
#define PESC_OPTIM_H

#include <stddef.h>

#include "backend.h"
#include "util.h"

typedef enum optim_schedule {
    SCHEDULE_CONSTANT,           /* constant with linear warmup (default) */
    SCHEDULE_COSINE,             /* warmup, then half a cosine down to 0 */
    SCHEDULE_LINEAR              /* warmup, then linear down to 0 */
} optim_schedule;

typedef struct optim_config {
    float lr;                    /* peak learning rate, 2e-4 */
    float beta1, beta2, eps;     /* 0.9, 0.999, 1e-8 */
    float weight_decay;          /* 0 */
    float clip;                  /* global gradient norm limit, 0.3; 0 = off */
    optim_schedule schedule;
    long warmup;                 /* steps */
    long total_steps;            /* for cosine and linear */
} optim_config;

typedef struct optimizer {
    optim_config config;
    pesc_backend *backend;       /* not owned */
    float *m, *v;                /* (n) moments, backend memory */
    size_t n;
    long step;                   /* updates taken so far */
} optimizer;

void optim_config_default(optim_config *c);
int optim_parse_schedule(const char *name, optim_schedule *out, pesc_error *err);

#define OPTIM_LR_MAX 10.0        /* the largest learning rate --lr and the live lr take */

/* Refuses a learning rate past OPTIM_LR_MAX, or one whose product with the weight decay is 1
 * or more: AdamW scales the weights by 1 - lr x decay each step, and that wipes them out.
 * The message calls the rate `what` ("--lr", "lr *10"). */
int optim_check_lr(const char *what, double lr, double weight_decay, pesc_error *err);
const char *optim_schedule_name(optim_schedule s);

/* The schedule's learning rate for update number `step` (0-based), as Hugging Face's
 * get_{constant,cosine,linear}_schedule_with_warmup: during warmup lr * step / warmup. */
double optim_lr_at(const optim_config *c, long step);
/* What of the schedule still moves the rate from update `step` on: OPTIM_AHEAD_WARMUP (its
 * warmup is not over) and OPTIM_AHEAD_DECAY (a cosine or linear schedule not at its end), or
 * 0 for a constant rate from there. */
enum { OPTIM_AHEAD_WARMUP = 1, OPTIM_AHEAD_DECAY = 2 };
int optim_schedule_ahead(const optim_config *c, long step);

int optim_init(optimizer *o, pesc_backend *b, size_t n, const optim_config *c, pesc_error *err);
void optim_free(optimizer *o);

/* Global L2 norm of grads (n). */
double optim_grad_norm(optimizer *o, const float *grads);

/* One AdamW step with learning rate lr on the gradients clipped to config.clip by global norm
 * (as torch.nn.utils.clip_grad_norm_; the step reads grads times the clip's scale, and grads
 * are left as they were). *norm_out (optional) receives the norm before clipping. */
void optim_step(optimizer *o, float *params, const float *grads, double lr, double *norm_out);
/* The same step with the norm the caller has already taken (optim_grad_norm), which saves a
 * pass over the gradients and, on a GPU, a wait for the device. delta (n, backend memory),
 * when not NULL, receives the update: each parameter's before - after. */
void optim_step_norm(optimizer *o, float *params, const float *grads, float *delta, double lr,
                     double norm);

#endif
