/* gemm_peak — cuBLAS's dense-product rate on this GPU, the ceiling tests/gpu/device-check
 * reports MFU against: bf16 and tf32 (fp32 accumulation) at a large square shape and at the
 * TinyLlama FFN shape; and fast-bf16 (fp32 operands that cuBLAS rounds to bf16 itself,
 * PESC_CUDA_MATH=fast-bf16), to show what that costs against bf16 in memory. Prints one JSON
 * line; exit 77 without a GPU. */
#include <stdio.h>

#include "cuda/cuda.h"

int main(void)
{
    pesc_error err;
    const cuda_module *cuda;
    if (cuda_load(&cuda, &err) != 0 || cuda->device_count(&err) == 0) {
        printf("SKIP: %s\n", err.msg);
        return 77;
    }
    static const int shapes[][3] = {{8192, 8192, 8192}, {8192, 5632, 2048}};
    static const char *const precisions[] = {"bf16", "tf32", "fast-bf16"};
    double best[3] = {0.0, 0.0, 0.0};
    for (int p = 0; p < 3; p++)
        for (int s = 0; s < 2; s++) {
            double r = cuda->gemm_rate(shapes[s][0], shapes[s][1], shapes[s][2], precisions[p], 10,
                                       &err);
            if (r < 0) {
                fprintf(stderr, "gemm_peak: %s\n", err.msg);
                return 1;
            }
            best[p] = r > best[p] ? r : best[p];
        }
    printf("{\"bf16_tflops\": %.1f, \"tf32_tflops\": %.1f, \"fast_bf16_tflops\": %.1f}\n",
           best[0], best[1], best[2]);
    return 0;
}
