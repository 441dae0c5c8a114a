// test_group_emu — moe_group's CUDA kernels (kernels/cuda/cuda_group.cuh), their real source,
// run on the CPU through tests/emu/cuda_emu.h against the CPU backend's moe_group: the
// permutation and every count exactly, the sums within rounding (the device adds in another
// fixed order). Random routings from moe_route_forward, sources partly out of range and partly
// padding (routed nowhere: in no group); one token, one expert, k = E, more pairs than a block
// has threads. No GPU needed.
#define PESC_CUDA_EMU 1
#include "cuda/cuda_group.cuh"

#include <cmath>
#include <cstdio>
#include <vector>

extern "C" {
#include "gpu/gpu_test.h"
}

static pesc_backend *cpu;

static void test_shape(int N, int E, int K, int S)
{
    char shape[80], name[160];
    snprintf(shape, sizeof shape, "N%d E%d K%d S%d", N, E, K, S);
    std::vector<float> logits((size_t)N * E), w((size_t)N * K), probs((size_t)N * E), lse(N);
    std::vector<int32_t> idx((size_t)N * K), sources(N), perm((size_t)N * K, -1);
    std::vector<int32_t> got_perm((size_t)N * K, -1);
    for (float &x : logits)
        x = (float)(4.0 * gpu_test_uniform() - 2.0);
    for (int32_t &s : sources)   // -1 (padding), 0 .. S - 1, and S (past the counted ones)
        s = (int32_t)(gpu_test_uniform() * (S + 2)) - 1;
    const int32_t *src = S ? sources.data() : NULL;
    moe_route_forward(cpu, idx.data(), w.data(), probs.data(), lse.data(), logits.data(), src, N,
                      E, K);
    size_t n = MOE_STATS(E, K, S);
    std::vector<double> want(n), got(n, NAN);
    moe_group(cpu, perm.data(), want.data(), idx.data(), w.data(), probs.data(), lse.data(), src,
              N, E, K, S);
    emu_launch(dim3(E + 1), dim3(GROUP_THREADS), group_stats_shared(S), [&] {
        group_stats_kernel(got.data(), idx.data(), w.data(), probs.data(), lse.data(), src, N, E,
                           K, S);
    });
    emu_launch(dim3(E), dim3(GROUP_THREADS), group_perm_shared(), [&] {
        group_perm_kernel(got_perm.data(), got.data(), idx.data(), N * K);
    });

    // the CPU's own: every routed pair once (padding's in none: the places after them are
    // not written), experts in order, each expert's pairs in order, and the counts it reports
    size_t bad = 0, routed = 0;
    for (int32_t e : idx)
        routed += e >= 0;
    std::vector<int> seen((size_t)N * K, 0), pairs(E, 0);
    for (size_t i = 0; i < perm.size(); i++) {
        int32_t p = perm[i];
        if (i >= routed) {
            bad += p != -1;
            continue;
        }
        bad += p < 0 || p >= N * K || idx[p] < 0 || seen[p]++;
        if (p >= 0 && p < N * K && idx[p] >= 0) {
            pairs[idx[p]]++;
            if (i > 0 && perm[i - 1] >= 0 && perm[i - 1] < N * K)
                bad += idx[perm[i - 1]] > idx[p] || (idx[perm[i - 1]] == idx[p] && perm[i - 1] > p);
        }
    }
    for (int e = 0; e < E; e++)
        bad += want[e] != pairs[e];
    snprintf(name, sizeof name, "moe_group on the CPU groups %s", shape);
    gpu_test_verdict(bad == 0, name, (double)bad, "pairs out of place or miscounted");

    size_t wrong = 0;
    for (size_t i = 0; i < perm.size(); i++)
        wrong += got_perm[i] != perm[i];
    snprintf(name, sizeof name, "moe_group perm %s", shape);
    gpu_test_verdict(wrong == 0, name, (double)wrong, "entries that differ");
    // counts (pairs, first choices, last experts, sources) exactly; sums to rounding
    double worst = 0.0;
    size_t miscounted = 0;
    for (size_t i = 0; i < n; i++) {
        bool exact = i < 2 * (size_t)E || i >= 4 * (size_t)E + 2;
        if (exact)
            miscounted += got[i] != want[i];
        else if (!std::isfinite(got[i]))
            worst = INFINITY;
        else
            worst = std::fmax(worst, std::fabs(got[i] - want[i]) / (std::fabs(want[i]) + 1e-30));
    }
    snprintf(name, sizeof name, "moe_group counts %s", shape);
    gpu_test_verdict(miscounted == 0, name, (double)miscounted, "entries that differ");
    snprintf(name, sizeof name, "moe_group sums %s", shape);
    gpu_test_verdict(worst <= 1e-12, name, worst, "relative, <= 1e-12");
}

int main(void)
{
    pesc_error err;
    gpu_test_seed();
    if (!(cpu = backend_new("cpu", &err)))
        gpu_test_die(&err);
    test_shape(1, 1, 1, 0);
    test_shape(7, 4, 2, 3);
    test_shape(300, 8, 2, 16);
    test_shape(1000, 16, 4, 0);
    test_shape(513, 3, 3, 2);
    backend_delete(cpu);
    printf("%s\n", gpu_test_failures ? "FAILED" : "all passed");
    return gpu_test_failures ? 1 : 0;
}
