/* optim — see optim.h. */
#include "optim.h"

#include <math.h>
#include <string.h>

void optim_config_default(optim_config *c)
{
    *c = (optim_config){.lr = 2e-4f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                        .weight_decay = 0.0f, .clip = 0.3f, .schedule = SCHEDULE_CONSTANT,
                        .warmup = 0, .total_steps = 0};
}

static const char *const schedule_names[] = {"constant", "cosine", "linear"};

int optim_check_lr(const char *what, double lr, double weight_decay, pesc_error *err)
{
    if (!(lr <= OPTIM_LR_MAX))
        return pesc_fail(err, "%s: a learning rate of %.3g is past the largest, %g", what, lr,
                         OPTIM_LR_MAX);
    if (lr * weight_decay >= 1)
        return pesc_fail(err, "%s %g with --weight-decay %g: AdamW scales the weights by 1 - lr x "
                         "decay each step, here %g, which wipes them out; give a product below 1 "
                         "(the usual decay is 0 to 0.1)", what, lr, weight_decay,
                         1 - lr * weight_decay);
    return 0;
}

int optim_parse_schedule(const char *name, optim_schedule *out, pesc_error *err)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(name, schedule_names[i]) == 0) {
            *out = (optim_schedule)i;
            return 0;
        }
    return pesc_fail(err, "--schedule %s: choose constant, cosine or linear", name);
}

const char *optim_schedule_name(optim_schedule s) { return schedule_names[s]; }

double optim_lr_at(const optim_config *c, long step)
{
    if (step < c->warmup)
        return (double)c->lr * (double)step / (double)(c->warmup > 1 ? c->warmup : 1);
    if (c->schedule == SCHEDULE_CONSTANT)
        return c->lr;
    long span = c->total_steps - c->warmup;
    double progress = span > 0 ? (double)(step - c->warmup) / (double)span : 1.0;
    if (progress > 1.0)
        progress = 1.0;
    if (c->schedule == SCHEDULE_COSINE)
        return c->lr * 0.5 * (1.0 + cos(M_PI * progress));
    return c->lr * (1.0 - progress);
}

int optim_schedule_ahead(const optim_config *c, long step)
{
    return (step < c->warmup ? OPTIM_AHEAD_WARMUP : 0) |
           (c->schedule != SCHEDULE_CONSTANT && step < c->total_steps ? OPTIM_AHEAD_DECAY : 0);
}

int optim_init(optimizer *o, pesc_backend *b, size_t n, const optim_config *c, pesc_error *err)
{
    memset(o, 0, sizeof *o);
    o->config = *c;
    o->backend = b;
    o->n = n;
    o->m = backend_alloc(b, n * sizeof(float), err);
    o->v = o->m ? backend_alloc(b, n * sizeof(float), err) : NULL;
    if (!o->v) {
        optim_free(o);
        return -1;
    }
    vector_zero(b, o->m, n);
    vector_zero(b, o->v, n);
    return 0;
}

void optim_free(optimizer *o)
{
    if (o->backend) {
        backend_free(o->backend, o->m);
        backend_free(o->backend, o->v);
    }
    memset(o, 0, sizeof *o);
}

double optim_grad_norm(optimizer *o, const float *grads)
{
    return sqrt(vector_sumsq(o->backend, grads, o->n));
}

void optim_step(optimizer *o, float *params, const float *grads, double lr, double *norm_out)
{
    double norm = optim_grad_norm(o, grads);
    if (norm_out)
        *norm_out = norm;
    optim_step_norm(o, params, grads, NULL, lr, norm);
}

void optim_step_norm(optimizer *o, float *params, const float *grads, float *delta, double lr,
                     double norm)
{
    const optim_config *c = &o->config;
    float scale = 1.0f;   /* clipping's, applied by the update as it reads the gradients */
    if (c->clip > 0) {
        double coef = c->clip / (norm + 1e-6);
        if (coef < 1.0)
            scale = (float)coef;
    }
    o->step++;
    adamw_update(o->backend, params, grads, scale, o->m, o->v, delta, o->n, (float)lr, c->beta1,
                 c->beta2, c->eps, c->weight_decay, (int)o->step);
}
