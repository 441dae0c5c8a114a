/* test_grad_ops — every backward op of the CPU backend against central finite differences.
 *
 * For an op y = f(x1, x2, ...), the scalar L = sum(dy * y) with a fixed random dy has
 * dL/dx = the op's backward given dout = dy. Each input gets a sample of entries perturbed by
 * +-eps, L recomputed in double from the float op; the analytic and numeric gradients must agree
 * within 1e-3 normalized error (float32 differences bound it; a wrong sign, factor or index
 * is off by O(1)). Exit 0 pass, 1 fail. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

#define TOL 1e-3
#define EPS 1e-2f
#define SAMPLES 24

static pesc_backend *be;
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static int failures;

static double uniform(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

static float *randoms(size_t n, double scale)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((2.0 * uniform() - 1.0) * scale);
    return x;
}

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

/* Compares grad (analytic) of x (n) with finite differences of loss(). */
static void check_input(const char *op, const char *input, float *x, size_t n, const float *grad,
                        double (*loss)(void))
{
    double diff = 0.0, norm = 0.0;
    for (int s = 0; s < SAMPLES; s++) {
        size_t i = (size_t)(uniform() * n) % n;
        float keep = x[i];
        x[i] = keep + EPS;
        double up = loss();
        x[i] = keep - EPS;
        double down = loss();
        x[i] = keep;
        double numeric = (up - down) / (2.0 * EPS);
        diff += (numeric - grad[i]) * (numeric - grad[i]);
        norm += numeric * numeric;
    }
    double err = sqrt(diff) / (sqrt(norm) + 1e-12);
    int ok = err <= TOL && norm > 0;
    printf("%-4s %-44s d/d%-8s %.2e\n", ok ? "ok" : "FAIL", op, input, err);
    failures += !ok;
}

/* ---- matmul --------------------------------------------------------------------------------- */
enum { MN = 7, MC = 9, MO = 5 };
static float *mm_x, *mm_w, *mm_b, *mm_dy;
static double matmul_loss(void)
{
    float out[MN * MO];
    matmul_forward(be, out, mm_x, mm_w, mm_b, MN, MC, MO);
    return dot(out, mm_dy, MN * MO);
}
static void test_matmul(void)
{
    mm_x = randoms(MN * MC, 1); mm_w = randoms(MO * MC, 1); mm_b = randoms(MO, 1); mm_dy = randoms(MN * MO, 1);
    float *dx = calloc(MN * MC, sizeof *dx), *dw = calloc(MO * MC, sizeof *dw), *db = calloc(MO, sizeof *db);
    matmul_backward(be, dx, dw, db, mm_dy, mm_x, mm_w, MN, MC, MO);
    check_input("matmul_backward", "inp", mm_x, MN * MC, dx, matmul_loss);
    check_input("matmul_backward", "weight", mm_w, MO * MC, dw, matmul_loss);
    check_input("matmul_backward", "bias", mm_b, MO, db, matmul_loss);
    free(dx); free(dw); free(db); free(mm_x); free(mm_w); free(mm_b); free(mm_dy);
}

/* ---- rmsnorm -------------------------------------------------------------------------------- */
enum { RN = 150, RC = 12 };   /* rows past two of the backward's 64-row blocks */
static float *rn_x, *rn_w, *rn_dy, rn_offset;   /* offset 1: Gemma's (1 + w) */
static double rmsnorm_loss(void)
{
    float out[RN * RC];
    rmsnorm_forward(be, out, NULL, rn_x, rn_w, rn_offset, RN, RC, 1e-5f);
    return dot(out, rn_dy, RN * RC);
}
static void test_rmsnorm(float offset)
{
    rn_x = randoms(RN * RC, 2); rn_w = randoms(RC, 1); rn_dy = randoms(RN * RC, 1);
    rn_offset = offset;
    float out[RN * RC], rstd[RN], *dx = calloc(RN * RC, sizeof *dx), *dw = calloc(RC, sizeof *dw);
    rmsnorm_forward(be, out, rstd, rn_x, rn_w, offset, RN, RC, 1e-5f);
    rmsnorm_backward(be, dx, dw, rn_dy, rn_x, rn_w, offset, rstd, RN, RC);
    const char *op = offset ? "rmsnorm_backward (1 + w)" : "rmsnorm_backward";
    check_input(op, "inp", rn_x, RN * RC, dx, rmsnorm_loss);
    check_input(op, "weight", rn_w, RC, dw, rmsnorm_loss);
    free(dx); free(dw); free(rn_x); free(rn_w); free(rn_dy);
}

/* ---- rope ----------------------------------------------------------------------------------- */
enum { PN = 6, PH = 2, PD = 8 };
static float *rp_x, *rp_dy, rp_freq[PD / 2];
static int32_t rp_pos[PN] = {0, 1, 2, 7, 30, 511};
static int rp_R;   /* values rotated: PD, or fewer (a partial rotary; the rest pass through) */
static float rp_scale;   /* of cos and sin (longrope's attention factor) */
static double rope_loss(void)
{
    float out[PN * PH * PD];
    rope_forward(be, out, rp_x, rp_pos, rp_freq, PN, PH, PD, rp_R, rp_scale);
    return dot(out, rp_dy, PN * PH * PD);
}
static void test_rope(int R, float scale)
{
    rp_R = R;
    rp_scale = scale;
    rp_x = randoms(PN * PH * PD, 1); rp_dy = randoms(PN * PH * PD, 1);
    for (int i = 0; i < R / 2; i++)
        rp_freq[i] = powf(10000.0f, -2.0f * i / R);
    float dx[PN * PH * PD];
    rope_backward(be, dx, rp_dy, rp_pos, rp_freq, PN, PH, PD, R, scale);
    check_input(R < PD ? "rope_backward, partial, scaled" : "rope_backward", "inp", rp_x,
                PN * PH * PD, dx, rope_loss);
    free(rp_x); free(rp_dy);
}

/* ---- attention ------------------------------------------------------------------------------ */
static int at_B, at_T, at_Hq, at_Hkv, at_D, at_window;
static float at_cap;      /* Gemma 2's softcap of the scores, or 0 */
static int32_t *at_seg;   /* packed documents, or NULL */
static float *at_q, *at_k, *at_v, *at_dy;
static double attention_loss(void)
{
    size_t n = (size_t)at_B * at_T * at_Hq * at_D;
    float *out = malloc(n * sizeof *out);
    attention_forward(be, out, NULL, at_q, at_k, at_v, at_B, at_T, at_Hq, at_Hkv, at_D, at_window,
                      at_cap, at_seg);
    double l = dot(out, at_dy, n);
    free(out);
    return l;
}
static void test_attention(int B, int T, int Hq, int Hkv, int D, int window, int packed, float cap)
{
    at_B = B; at_T = T; at_Hq = Hq; at_Hkv = Hkv; at_D = D; at_window = window; at_cap = cap;
    at_seg = packed ? malloc((size_t)B * T * sizeof *at_seg) : NULL;
    for (int i = 0; packed && i < B * T; i++)
        at_seg[i] = (i % T) / 4 * 4;   /* a document every 4 tokens */
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    at_q = randoms(nq, 1); at_k = randoms(nkv, 1); at_v = randoms(nkv, 1); at_dy = randoms(nq, 1);
    float *out = malloc(nq * sizeof *out), *lse = malloc((size_t)B * Hq * T * sizeof *lse);
    float *dq = malloc(nq * sizeof *dq), *dk = malloc(nkv * sizeof *dk), *dv = malloc(nkv * sizeof *dv);
    attention_forward(be, out, lse, at_q, at_k, at_v, B, T, Hq, Hkv, D, window, cap, at_seg);
    attention_backward(be, dq, dk, dv, at_dy, at_q, at_k, at_v, out, lse, B, T, Hq, Hkv, D, window,
                       cap, at_seg);
    char name[64];
    snprintf(name, sizeof name, "attention_backward T%d Hq%d Hkv%d window %d%s%s", T, Hq, Hkv,
             window, packed ? " packed" : "", cap > 0.0f ? " softcap" : "");
    check_input(name, "q", at_q, nq, dq, attention_loss);
    check_input(name, "k", at_k, nkv, dk, attention_loss);
    check_input(name, "v", at_v, nkv, dv, attention_loss);
    free(out); free(lse); free(dq); free(dk); free(dv); free(at_q); free(at_k); free(at_v); free(at_dy);
    free(at_seg);
}

/* ---- swiglu, embedding, cross-entropy ------------------------------------------------------- */
enum { SN = 40 };
static float *sw_g, *sw_u, *sw_dy;
static int sw_gelu;   /* geglu (Gemma's FFN) rather than swiglu */
static double swiglu_loss(void)
{
    float out[SN];
    (sw_gelu ? geglu_forward : swiglu_forward)(be, out, sw_g, sw_u, SN);
    return dot(out, sw_dy, SN);
}
static void test_swiglu(int gelu)
{
    sw_g = randoms(SN, 4); sw_u = randoms(SN, 2); sw_dy = randoms(SN, 1);
    sw_gelu = gelu;
    float dg[SN], du[SN];
    const char *op = gelu ? "geglu_backward" : "swiglu_backward";
    (gelu ? geglu_backward : swiglu_backward)(be, dg, du, sw_dy, sw_g, sw_u, SN);
    check_input(op, "gate", sw_g, SN, dg, swiglu_loss);
    check_input(op, "up", sw_u, SN, du, swiglu_loss);
    free(sw_g); free(sw_u); free(sw_dy);
}

enum { EN = 9, EV = 5, EC = 6 };
static float *em_table, *em_dy;
static int32_t em_tokens[EN] = {0, 3, 3, 1, 4, 3, 0, 2, 3};
static double embedding_loss(void)
{
    float out[EN * EC];
    embedding_forward(be, out, em_tokens, em_table, EN, EC);
    return dot(out, em_dy, EN * EC);
}
static void test_embedding(void)
{
    em_table = randoms(EV * EC, 1); em_dy = randoms(EN * EC, 1);
    float *dt = calloc(EV * EC, sizeof *dt);
    embedding_backward(be, dt, em_dy, em_tokens, EN, EC);
    check_input("embedding_backward (repeated tokens)", "table", em_table, EV * EC, dt, embedding_loss);
    free(dt); free(em_table); free(em_dy);
}

enum { CN = 6, CV = 11 };
static float *ce_logits;
static float ce_cap;   /* Gemma 2's softcap of the logits, or 0 */
static int32_t ce_targets[CN] = {3, -100, 0, 10, 5, 5};
static double ce_loss(void)
{
    float losses[CN];
    crossentropy_forward(be, losses, ce_logits, ce_targets, CN, CV, ce_cap);
    double s = 0.0;
    for (int i = 0; i < CN; i++)
        s += 0.7 * losses[i];
    return s;
}
static void test_crossentropy(float cap)
{
    ce_logits = randoms(CN * CV, 3);
    ce_cap = cap;
    float d[CN * CV], losses[CN], want[CN];
    crossentropy_backward(be, d, losses, ce_logits, ce_targets, 0.7f, CN, CV, cap);
    check_input(cap > 0.0f ? "crossentropy_backward (scale 0.7, one ignored), softcap"
                           : "crossentropy_backward (scale 0.7, one ignored)",
                "logits", ce_logits, CN * CV, d, ce_loss);
    crossentropy_forward(be, want, ce_logits, ce_targets, CN, CV, cap);
    double worst = 0.0;
    for (int i = 0; i < CN; i++)
        worst = fmax(worst, fabs(losses[i] - want[i]));
    printf("%-4s %-44s %-11s %.2e\n", worst < 1e-5 ? "ok" : "FAIL", "crossentropy_backward losses", "", worst);
    failures += worst >= 1e-5;    free(ce_logits);
}

/* ---- routing -------------------------------------------------------------------------------- */
enum { RTN = 10, RTE = 6, RTK = 2 };
static float *rt_logits, *rt_dw, rt_aux[RTE];
static const float rt_z = 0.3f;
/* tokens 3 and 9 are padding: routed nowhere, so no logit of theirs moves the loss */
static const int32_t rt_sources[RTN] = {0, 0, 1, -1, 0, 1, 1, 0, 0, -1};
static double route_loss(void)
{
    int32_t idx[RTN * RTK];
    float w[RTN * RTK], p[RTN * RTE], lse[RTN];
    moe_route_forward(be, idx, w, p, lse, rt_logits, rt_sources, RTN, RTE, RTK);
    double l = 0.0;
    for (int i = 0; i < RTN * RTK; i++)   /* padding's gate gradients are not read */
        l += idx[i] >= 0 ? (double)w[i] * rt_dw[i] : 0.0;
    for (int e = 0; e < RTE; e++) {
        double sum = 0.0;
        for (int n = 0; n < RTN; n++)
            sum += p[n * RTE + e];
        l += rt_aux[e] * sum;
    }
    for (int n = 0; n < RTN; n++)
        l += rt_z * (double)lse[n] * lse[n];
    return l;
}
static void test_route(void)
{
    /* well-separated logits, so +-eps never changes which experts are picked */
    rt_logits = malloc(RTN * RTE * sizeof *rt_logits);
    for (int n = 0; n < RTN; n++)
        for (int e = 0; e < RTE; e++)
            rt_logits[n * RTE + e] = (float)(0.5 * ((e * 7 + n * 3) % RTE) + 0.2 * uniform());
    rt_dw = randoms(RTN * RTK, 1);
    for (int e = 0; e < RTE; e++)
        rt_aux[e] = (float)uniform();
    int32_t idx[RTN * RTK];
    float w[RTN * RTK], p[RTN * RTE], lse[RTN], dr[RTN * RTE];
    moe_route_forward(be, idx, w, p, lse, rt_logits, rt_sources, RTN, RTE, RTK);
    int none = 1;
    for (int j = 0; j < RTK; j++)
        none = none && idx[3 * RTK + j] == -1 && w[3 * RTK + j] == 0.0f;
    for (int e = 0; e < RTE; e++)
        none = none && p[9 * RTE + e] == 0.0f;
    printf("%-4s %-44s\n", none && lse[3] == 0.0f ? "ok" : "FAIL",
           "moe_route_forward: padding routed nowhere");
    failures += !(none && lse[3] == 0.0f);
    moe_route_backward(be, dr, rt_dw, idx, w, p, lse, rt_aux, rt_z, RTN, RTE, RTK);
    check_input("moe_route_backward (gates + aux + z, padding)", "logits", rt_logits, RTN * RTE, dr,
                route_loss);
    free(rt_logits); free(rt_dw);
}

/* ---- adapters ------------------------------------------------------------------------------- */
enum { AN = 8, AK = 2, AE = 3, AC = 10, AR = 4 };
enum { AD_SEED = 1234567 };
#define AD_DROPOUT 0.2f
static float *ad_x, *ad_h, *ad_down, *ad_up, *ad_w, *ad_dy;
static int32_t ad_perm[AN * AK];
static int ad_off[AE + 1];
static double adapter_loss(void)
{
    float y[AN * AC], g[AN * AK * AC], pre[AN * AK * AR], act[AN * AK * AR], scratch[AN * AK * AC];
    moe_adapter_forward(be, y, ad_x, g, pre, act, scratch, ad_h, AD_DROPOUT, AD_SEED, ad_down,
                        ad_up, ad_perm, ad_off, ad_w, AN, AK, AE, AC, AR, 0.25f);
    return dot(y, ad_dy, AN * AC);
}
/* the adapters' part alone: without the residual's x + h */
static double adapter_part_loss(void)
{
    double residual = 0.0;
    for (int i = 0; i < AN * AC; i++)
        residual += ((double)ad_x[i] + ad_h[i]) * ad_dy[i];
    return adapter_loss() - residual;
}
static void test_adapter(void)
{
    ad_x = randoms(AN * AC, 1);
    ad_h = randoms(AN * AC, 1); ad_down = randoms(AE * AR * AC, 1); ad_up = randoms(AE * AC * AR, 1);
    ad_w = randoms(AN * AK, 1); ad_dy = randoms(AN * AC, 1);
    /* token n picks experts n % 3 and (n + 1) % 3; group the pairs by expert */
    int k = 0;
    for (int e = 0; e < AE; e++) {
        ad_off[e] = k;
        for (int n = 0; n < AN; n++)
            for (int s = 0; s < AK; s++)
                if ((n + s) % AE == e)
                    ad_perm[k++] = n * AK + s;
    }
    ad_off[AE] = k;
    float y[AN * AC], g[AN * AK * AC], pre[AN * AK * AR], act[AN * AK * AR];
    float scratch[AN * AK * AC], scratch_r[AN * AK * AR];
    float dh[AN * AC], dd[AE * AR * AC] = {0}, du[AE * AC * AR] = {0}, dw[AN * AK];
    moe_adapter_forward(be, y, ad_x, g, pre, act, scratch, ad_h, AD_DROPOUT, AD_SEED, ad_down,
                        ad_up, ad_perm, ad_off, ad_w, AN, AK, AE, AC, AR, 0.25f);
    /* the rows gathered are h's times the mask dropout_mask draws from the seed, row j for the
     * j-th pair in grouped order, exactly */
    float mask[AN * AK * AC];
    dropout_mask(be, mask, AN * AK * AC, AD_DROPOUT, AD_SEED);
    int exact = 1, dropped = 0;
    for (int j = 0; j < AN * AK; j++)
        for (int c = 0; c < AC; c++) {
            float want = ad_h[(ad_perm[j] / AK) * AC + c] * mask[j * AC + c];
            exact &= g[j * AC + c] == want;
            dropped += mask[j * AC + c] == 0.0f;
        }
    printf("%-4s moe_adapter_forward: rows times dropout_mask's draw (%d of %d dropped)\n",
           exact && dropped > 0 ? "ok" : "FAIL", dropped, AN * AK * AC);
    failures += !(exact && dropped > 0);
    moe_adapter_backward(be, dh, dd, du, dw, scratch, scratch_r, ad_dy, g, pre, act, AD_DROPOUT,
                         AD_SEED, ad_down, ad_up, ad_perm, ad_off, ad_w, AN, AK, AE, AC, AR,
                         0.25f);
    /* dh is written whole: the residual's dy (also x's gradient) and the adapters' part, checked
     * alone (a dy missing or added twice fails it too) */
    float dh_part[AN * AC];
    for (int i = 0; i < AN * AC; i++)
        dh_part[i] = dh[i] - ad_dy[i];
    check_input("moe_adapter_backward (with dropout mask)", "h", ad_h, AN * AC, dh_part,
                adapter_part_loss);
    check_input("moe_adapter_forward (its residual x + h)", "x", ad_x, AN * AC, ad_dy,
                adapter_loss);
    check_input("moe_adapter_backward", "down", ad_down, AE * AR * AC, dd, adapter_loss);
    check_input("moe_adapter_backward", "up", ad_up, AE * AC * AR, du, adapter_loss);
    check_input("moe_adapter_backward", "gate w", ad_w, AN * AK, dw, adapter_loss);
    free(ad_x); free(ad_h); free(ad_down); free(ad_up); free(ad_w); free(ad_dy);
}

int main(void)
{
    pesc_error err;
    be = backend_new("cpu", &err);
    if (!be) {
        fprintf(stderr, "%s\n", err.msg);
        return 99;
    }
    test_matmul();
    test_rmsnorm(0.0f);
    test_rmsnorm(1.0f);
    test_rope(PD, 1.0f);
    test_rope(6, 1.19f);
    test_attention(2, 9, 4, 2, 8, 0, 0, 0.0f);
    test_attention(1, 13, 2, 1, 6, 4, 0, 0.0f);
    test_attention(1, 70, 2, 2, 4, 0, 0, 0.0f);   /* more rows than one attention block */
    test_attention(2, 11, 2, 1, 4, 0, 1, 0.0f);
    test_attention(1, 70, 2, 2, 4, 3, 1, 0.0f);
    test_attention(2, 9, 4, 2, 8, 0, 0, 0.5f);    /* Gemma 2's softcap, biting */
    test_attention(1, 70, 2, 2, 4, 3, 1, 0.5f);
    test_swiglu(0);
    test_swiglu(1);
    test_embedding();
    test_crossentropy(0.0f);
    test_crossentropy(2.0f);
    test_route();
    test_adapter();
    backend_delete(be);
    printf("%d failure%s\n", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
