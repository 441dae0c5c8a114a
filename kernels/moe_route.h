/* moe_route — one token's routing, forward and backward, as both backends run it: the CPU
 * over its tokens in a loop, the GPU one thread per token. One source, so both pick the same
 * experts for the same logits (a tie goes to the lower index) and weigh them alike.
 * Included by C and by CUDA (where the functions are host and device functions). */
#ifndef PESC_MOE_ROUTE_H
#define PESC_MOE_ROUTE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "host_device.h"

/* One token: from its E router logits r, the K experts of the largest logits in order
 * (idx, by repeated arg-max: k is small), their gate weights (the softmax over those K), the
 * probabilities over all E (for the aux loss) and the log-sum-exp (for the z-loss). */
static inline PESC_HOST_DEVICE void pesc_route_token(int32_t *idx, float *topk_w, float *probs,
                                                     float *lse, const float *r, int E, int K)
{
    for (int j = 0; j < K; j++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int i = 0; i < j; i++)
                taken = taken || idx[i] == e;
            if (!taken && (best < 0 || r[e] > r[best]))
                best = e;
        }
        idx[j] = best;
    }
    double m = r[idx[0]], sum = 0.0, kept = 0.0;
    for (int e = 0; e < E; e++)
        sum += exp((double)r[e] - m);
    for (int e = 0; e < E; e++)
        probs[e] = (float)(exp((double)r[e] - m) / sum);
    *lse = (float)(m + log(sum));
    for (int j = 0; j < K; j++)
        kept += exp((double)r[idx[j]] - m);
    for (int j = 0; j < K; j++)
        topk_w[j] = (float)(exp((double)r[idx[j]] - m) / kept);
}

/* A padding token, routed nowhere: no experts (-1), and gate weights, probabilities and lse
 * of 0, so that it is in no group and adds to no sum, loss or gradient. */
static inline PESC_HOST_DEVICE void pesc_route_none(int32_t *idx, float *topk_w, float *probs,
                                                    float *lse, int E, int K)
{
    for (int j = 0; j < K; j++) {
        idx[j] = -1;
        topk_w[j] = 0.0f;
    }
    for (int e = 0; e < E; e++)
        probs[e] = 0.0f;
    *lse = 0.0f;
}

/* Its backward into the token's logits dr: the gate softmax's (from dw, the gradient of its K
 * weights w), the aux loss's (aux_grad: d aux / d the sum over the routed tokens of each
 * expert's probability; NULL without it) and the z-loss's (z_scale times the square of the
 * lse). A padding token's (pesc_route_none) is 0: dw holds nothing for it. */
static inline PESC_HOST_DEVICE void pesc_route_token_backward(float *dr, const float *dw,
                                                              const int32_t *idx,
                                                              const float *w, const float *p,
                                                              float lse, const float *aux_grad,
                                                              float z_scale, int E, int K)
{
    double pg = 0.0, wdw = 0.0;
    if (idx[0] < 0) {
        for (int e = 0; e < E; e++)
            dr[e] = 0.0f;
        return;
    }
    if (aux_grad)
        for (int e = 0; e < E; e++)
            pg += (double)p[e] * aux_grad[e];
    for (int e = 0; e < E; e++) {
        double g = aux_grad ? (double)p[e] * (aux_grad[e] - pg) : 0.0;
        dr[e] = (float)(g + 2.0 * z_scale * lse * p[e]);
    }
    for (int j = 0; j < K; j++)
        wdw += (double)w[j] * dw[j];
    for (int j = 0; j < K; j++)
        dr[idx[j]] += (float)(w[j] * (dw[j] - wdw));
}

#endif
