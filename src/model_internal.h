/* model_internal — what model.c, model_craft.c and model_forward.c share; not for other modules. */
#ifndef PESC_MODEL_INTERNAL_H
#define PESC_MODEL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "safetensors.h"

/* The gradient of a trainable tensor, or NULL when p is frozen. */
static inline float *model_grad_of(const model *m, const float *p)
{
    if (!p || !m->grad_block || p < m->train_block || p >= m->train_block + m->n_train)
        return NULL;
    return m->grad_block + (p - m->train_block);
}

/* Floats rounded up so every carved tensor starts on 64 bytes. */
static inline size_t model_pad(size_t n) { return (n + 15) & ~(size_t)15; }

void model_format_shape(char *buf, size_t len, int ndim, const int64_t *shape);

/* Checks a file tensor against a model tensor's shape, converts and uploads it; staging holds
 * t->n floats. `where` names the file; a mismatch reads "... but <expectation> [shape]". */
int model_upload_tensor(model *m, const model_tensor *t, const st_tensor *src, const char *where,
                        const char *expectation, float *staging, pesc_error *err);

/* Uploads tensors[0..n) by name from a file or a set of files: find returns the file's tensor
 * (or NULL) and in *file the path that holds it. A tensor that is missing reads
 * "<where>: tensor NAME is missing (<missing>)"; a shape mismatch as model_upload_tensor says. */
typedef const st_tensor *(*model_find_fn)(const void *source, const char *name, const char **file);
int model_upload_named(model *m, const model_tensor *tensors, int n, model_find_fn find,
                       const void *source, const char *where, const char *missing,
                       const char *expectation, pesc_error *err);

/* Lookups for model_upload_named. */
const st_tensor *model_find_in_set(const void *set, const char *name, const char **file);
const st_tensor *model_find_in_file(const void *file, const char *name, const char **path);

/* After model_load: crafts the model as its config.json's PESC keys say and loads the routers
 * and adapters from the same files (model_craft.c). */
int model_load_crafted(model *m, const st_set *set, pesc_error *err);

/* Frees the routing statistics of a crafted model (accepts a zeroed struct) and zeroes it. */
void model_routing_free(model_routing *r);

/* Activations for B*T tokens: shared by all layers for inference, per layer (and with the
 * gradient buffers) for training. */
int model_ensure_activations(model *m, int B, int T, int training, pesc_error *err);
void model_free_activations(model *m);

#endif
