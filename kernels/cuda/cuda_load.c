/* cuda_load — finds and opens the CUDA module (pesc-cuda.so) the first time a GPU is asked for.
 *
 * pesc itself links neither cuBLAS nor the CUDA runtime: cuBLAS's start-up alone took 0.5 s and
 * 200 MB of every `pesc --version`. Only a command that wants a GPU (a run with --backend auto
 * or cuda, `pesc devices`, the GPU tests) comes here, and without an NVIDIA driver it stops
 * before opening cuBLAS at all. */
#include "config.h"

#include "cuda/cuda.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_impl.h"

#ifndef PESC_CUDA_MODULE_DIR
#define PESC_CUDA_MODULE_DIR "/usr/local/lib/pesc"
#endif
#define MODULE_NAME "pesc-cuda"

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static const cuda_module *loaded;
static int load_status;
static pesc_error load_failure;   /* why the one attempt failed; later calls repeat it */
static int attempted;

#ifdef HAVE_CUDA
/* The module of a pesc run from its build tree: libtool leaves pesc-cuda.la beside the
 * program and the library in .libs/. The GPU tests live two directories down
 * (tests/gpu/), so the program's directory and two above it are tried. */
static int build_tree_module(char *path, size_t size)
{
    char *dir = pesc_program_dir();
    int found = -1;
    for (int up = 0; dir && up < 3 && found != 0; up++) {
        char la[4200];
        snprintf(la, sizeof la, "%s/" MODULE_NAME ".la", dir);
        if (access(la, F_OK) == 0) {
            snprintf(path, size, "%s/.libs/" MODULE_NAME ".so", dir);
            found = 0;
        }
        char *slash = strrchr(dir, '/');
        if (!slash || slash == dir)
            break;
        *slash = '\0';
    }
    free(dir);
    return found;
}
#endif

static const cuda_module *open_module(const char *path, const char *found_by, pesc_error *why)
{
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *detail = dlerror();
        if (access(path, F_OK) != 0)
            pesc_fail(why, "the CUDA module %s (%s) is missing; build or install pesc again "
                           "(make install), or use --backend cpu", path, found_by);
        else
            pesc_fail(why, "the CUDA module cannot be loaded: %s; install the CUDA toolkit's "
                           "cuBLAS, or use --backend cpu", detail ? detail : path);
        return NULL;
    }
    const cuda_module *m = dlsym(handle, "pesc_cuda_module");
    if (!m) {
        pesc_fail(why, "%s (%s) is not a pesc CUDA module: it has no pesc_cuda_module", path,
                  found_by);
        dlclose(handle);
        return NULL;
    }
    if (!m->version || strcmp(m->version, PACKAGE_VERSION) != 0 ||
        m->ops_size != sizeof(backend_ops)) {
        pesc_fail(why, "%s (%s) is from another build of pesc (%s, this is %s); build or "
                       "install pesc again", path, found_by, m->version ? m->version : "?",
                  PACKAGE_VERSION);
        dlclose(handle);
        return NULL;
    }
    return m;   /* never closed: the CUDA runtime does not expect to be unloaded */
}

static int load(const cuda_module **module, pesc_error *why)
{
    /* asked for by name: opened even without a driver, and in a build without CUDA (the
     * tests' emulated module, tests/emu) */
    const char *env = getenv("PESC_CUDA_MODULE");
    if (env && *env)
        return (*module = open_module(env, "$PESC_CUDA_MODULE", why)) ? 0 : -1;
#ifndef HAVE_CUDA
    pesc_fail(why, "this pesc was built without CUDA; reconfigure with --with-cuda=DIR");
    return 1;
#else
    /* cudart opens the driver's libcuda.so.1 itself; without it no device can be used, and
     * saying so here spares the cost of opening cuBLAS */
    void *driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (!driver) {
        pesc_fail(why, "no CUDA device (no NVIDIA driver: libcuda.so.1 was not found)");
        return 1;
    }
    dlclose(driver);
    char path[4200];
    if (build_tree_module(path, sizeof path) == 0)
        *module = open_module(path, "the build tree", why);
    else
        *module = open_module(PESC_CUDA_MODULE_DIR "/" MODULE_NAME ".so", "pkglibdir", why);
    return *module ? 0 : -1;
#endif
}

int cuda_load(const cuda_module **module, pesc_error *why)
{
    pthread_mutex_lock(&load_lock);
    if (!attempted) {
        attempted = 1;
        load_status = load(&loaded, &load_failure);
    }
    *module = loaded;
    int status = load_status;
    if (status != 0 && why)
        *why = load_failure;
    pthread_mutex_unlock(&load_lock);
    return status;
}

