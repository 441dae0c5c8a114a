/* cmd_devices — `pesc devices`: the compute devices this build can use. */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "cli.h"
#include "commands.h"
#include "cuda/cuda.h"

static const char devices_usage[] =
    "usage: pesc devices\n"
    "\n"
    "Lists the backends this build has and, when it was built with CUDA, every GPU with its\n"
    "memory. Without a GPU or driver it says \"no CUDA device\" and exits 0; when the CUDA\n"
    "module (pesc-cuda.so) is missing or cannot be loaded, its line says why.\n";

static void list_cuda(void)
{
    pesc_error why = {{0}};
    const cuda_module *cuda;
    int n = cuda_load(&cuda, &why) == 0 ? cuda->device_count(&why) : 0;
    if (n == 0) {
        printf("cuda    %s\n", why.msg);
        return;
    }
    for (int i = 0; i < n; i++) {
        cuda_device_info info;
        pesc_error err = {{0}};
        if (cuda->device_query(i, &info, &err) != 0) {
            printf("cuda:%d  %s\n", i, err.msg);
            continue;
        }
        printf("cuda:%d  %s  sm_%d%d  %d SMs  %.1f GiB (%.1f GiB free)\n", i, info.name,
               info.major, info.minor, info.multiprocessors,
               (double)info.total_bytes / (1u << 30), (double)info.free_bytes / (1u << 30));
    }
}

int cmd_devices(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        fputs(devices_usage, stdout);
        return 0;
    }
    if (argc > 1)
        return cli_unexpected("devices", argv[1], NULL);
    pesc_error err = {{0}};
    pesc_backend *cpu = backend_new("cpu", &err);
    if (!cpu)
        return cli_fail("devices", &err);
    printf("cpu     %s\n", backend_device(cpu));
    backend_delete(cpu);
    list_cuda();
    return 0;
}
