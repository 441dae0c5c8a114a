/* plugin — see plugin.h. */
#define _GNU_SOURCE   /* dladdr, dlinfo */
#include "plugin.h"

#include <dirent.h>
#include <errno.h>
#include <dlfcn.h>
#include <limits.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sink.h"

#ifndef PESC_PLUGINDIR
#define PESC_PLUGINDIR "/usr/local/lib/pesc/plugins"
#endif

/* One module, loaded or refused. The tables are our own copies (zero-filled past what the
 * module's `size` covers), so a module built against an older header reads as NULL slots. */
typedef struct plugin_entry {
    plugin_info info;
    void *handle;                /* NULL when refused */
    char realpath[PATH_MAX];
    pesc_plugin desc;
    pesc_format_ops format;
    pesc_sink_ops sink;
} plugin_entry;

struct pesc_plugins {
    plugin_entry **items;        /* (n) stable addresses: tables are handed out */
    int n, cap;
};

pesc_plugins *plugins_new(void) { return xcalloc(1, sizeof(pesc_plugins)); }

void plugins_delete(pesc_plugins *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n; i++) {
        if (p->items[i]->handle)
            dlclose(p->items[i]->handle);
        free(p->items[i]);
    }
    free(p->items);
    free(p);
}

const char *plugins_install_dir(void) { return PESC_PLUGINDIR; }
int plugins_count(const pesc_plugins *p) { return p ? p->n : 0; }

const plugin_info *plugins_get(const pesc_plugins *p, int i)
{
    return p && i >= 0 && i < p->n ? &p->items[i]->info : NULL;
}

const pesc_plugin *plugins_find(const pesc_plugins *p, int kind, const char *name)
{
    for (int i = 0; p && i < p->n; i++) {
        const plugin_info *info = &p->items[i]->info;
        if (info->plugin && info->kind == kind && strcmp(info->name, name) == 0)
            return info->plugin;
    }
    return NULL;
}

/* ============================================================ checking a module ===== */

/* Where the checks stand: the module's file (as the dynamic linker names it) and base. */
typedef struct module_view {
    const char *file;
    void *base;
} module_view;

/* p lies in the module's own mapping (not in libc, not wild). */
static int inside(const module_view *m, const void *p)
{
    Dl_info where;
    return p && dladdr(p, &where) != 0 && where.dli_fbase == m->base;
}

static int inside_fn(const module_view *m, void (*fn)(void))
{
    void *p;
    memcpy(&p, &fn, sizeof p);   /* a function's address as data, without a cast warning */
    return inside(m, p);
}
#define INSIDE_FN(m, fn) ((fn) == NULL || inside_fn((m), (void (*)(void))(fn)))

/* Copies a string of the module into out (size cap) if it is inside and shorter than cap;
 * an absent string gives "". 0 or -1. */
static int copy_string(const module_view *m, const char *s, char *out, size_t cap)
{
    out[0] = '\0';
    if (!s)
        return 0;
    if (!inside(m, s))
        return -1;
    size_t n = 0;
    while (n < cap && s[n])
        n++;
    if (n == cap)
        return -1;
    memcpy(out, s, n + 1);
    return 0;
}

/* Whether s holds a byte below ' ' or DEL: a line break or a terminal's escape. */
static int has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < ' ' || *s == 0x7f)
            return 1;
    return 0;
}

static int valid_name(const char *s)
{
    if (!(s[0] >= 'a' && s[0] <= 'z'))
        return 0;
    for (const char *c = s; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '-'))
            return 0;
    return 1;
}

/* Copies a table that says it is `size` bytes into ours, zero-filling what it lacks. `least`
 * is the size of the oldest table of this ABI version. */
static int copy_table(const module_view *m, const void *table, size_t size, void *ours,
                      size_t our_size, size_t least, const char *what, char *problem, size_t cap)
{
    size_t used = size < our_size ? size : our_size;
    if (size < least || size > 65536 || !inside(m, (const char *)table + used - 1)) {
        snprintf(problem, cap, "its %s says it is %zu bytes (this pesc needs at least %zu): "
                 "rebuild it against this pesc's pesc-plugin.h", what, size, least);
        return -1;
    }
    memset(ours, 0, our_size);
    memcpy(ours, table, used);
    return 0;
}

/* A function table: its first field is its size. */
static int copy_ops(const module_view *m, const void *table, void *ours, size_t our_size,
                    size_t least, const char *what, char *problem, size_t cap)
{
    size_t size;
    if (!table || !inside(m, table)) {
        snprintf(problem, cap, "its %s is %s", what, table ? "not inside the module" : "missing");
        return -1;
    }
    memcpy(&size, table, sizeof size);
    return copy_table(m, table, size, ours, our_size, least, what, problem, cap);
}

/* The checks of plugin.h, on an open module; fills e or writes the problem. */
static int check_module(plugin_entry *e, char *problem, size_t cap)
{
    plugin_info *info = &e->info;
    struct link_map *map = NULL;
    if (dlinfo(e->handle, RTLD_DI_LINKMAP, &map) != 0 || !map) {
        snprintf(problem, cap, "cannot inspect the loaded module: %s", dlerror());
        return -1;
    }
    dlerror();
    void *symbol = dlsym(e->handle, PESC_PLUGIN_ENTRY_SYMBOL);
    Dl_info where;
    const ElfW(Sym) *sym = NULL;   /* its symbol table entry, where dladdr1 finds one */
    if (!symbol || dladdr1(symbol, &where, (void **)&sym, RTLD_DL_SYMENT) == 0 ||
        !where.dli_fname || strcmp(where.dli_fname, map->l_name) != 0) {
        snprintf(problem, cap, "no %s symbol of its own: not a pesc plugin (a module defines it "
                 "with PESC_PLUGIN_DEFINE)", PESC_PLUGIN_ENTRY_SYMBOL);
        return -1;
    }
    /* a variable of that name (int pesc_plugin_entry = 5) would be called into: a crash. A
     * data symbol always has its entry; an IFUNC's resolved address may have none */
    if (sym && ELF64_ST_TYPE(sym->st_info) != STT_FUNC &&   /* the same in ELF32 */
        ELF64_ST_TYPE(sym->st_info) != STT_GNU_IFUNC) {
        snprintf(problem, cap, "its %s is not a function: not a pesc plugin (a module defines "
                 "it with PESC_PLUGIN_DEFINE)", PESC_PLUGIN_ENTRY_SYMBOL);
        return -1;
    }
    module_view m = {map->l_name, where.dli_fbase};
    pesc_plugin_entry_fn entry;
    memcpy(&entry, &symbol, sizeof entry);
    const pesc_plugin *d = entry();
    if (!d || !inside(&m, d)) {
        snprintf(problem, cap, "%s returned %s", PESC_PLUGIN_ENTRY_SYMBOL,
                 d ? "a descriptor outside the module" : "no descriptor");
        return -1;
    }
    /* the version first: nothing else of another ABI's descriptor means anything to us */
    info->abi_version = d->abi_version;
    if (d->abi_version != PESC_PLUGIN_ABI_VERSION) {
        snprintf(problem, cap, "it was built for plugin ABI %u and this pesc speaks ABI %u: "
                 "rebuild it against this pesc's pesc-plugin.h", d->abi_version,
                 PESC_PLUGIN_ABI_VERSION);
        return -1;
    }
    size_t least = offsetof(pesc_plugin, sink) + sizeof d->sink;
    if (copy_table(&m, d, d->size, &e->desc, sizeof e->desc, least, "descriptor", problem,
                   cap) != 0)
        return -1;
    e->desc.abi_version = d->abi_version;
    e->desc.size = (uint32_t)sizeof e->desc;
    if (e->desc.name && !inside(&m, e->desc.name)) {
        snprintf(problem, cap, "its name points outside the module (a stray pointer)");
        return -1;
    }
    if (copy_string(&m, e->desc.name, info->name, sizeof info->name) != 0 || !info->name[0] ||
        !valid_name(info->name)) {
        info->name[0] = '\0';
        snprintf(problem, cap, "its name must be 1 to %d of a-z, 0-9, '_' and '-', starting "
                 "with a letter", PESC_PLUGIN_NAME_MAX);
        return -1;
    }
    if (copy_string(&m, e->desc.version, info->version, sizeof info->version) != 0 ||
        copy_string(&m, e->desc.description, info->description, sizeof info->description) != 0) {
        snprintf(problem, cap, "its version (under %zu bytes) or description (under %zu) is "
                 "too long or not inside the module", sizeof info->version,
                 sizeof info->description);
        return -1;
    }
    if (has_control(info->version) || has_control(info->description)) {
        snprintf(problem, cap, "its %s holds a control character (a line break, an escape): "
                 "it is shown as one line of text", has_control(info->version) ? "version"
                 : "description");
        return -1;
    }
    info->kind = e->desc.kind;
    if (e->desc.kind == PESC_PLUGIN_FORMAT) {
        const pesc_format_ops *f = &e->format;
        if (copy_ops(&m, e->desc.format, &e->format, sizeof e->format,
                     offsetof(pesc_format_ops, convert) + sizeof f->convert, "format table",
                     problem, cap) != 0)
            return -1;
        if (!INSIDE_FN(&m, f->detect) || !INSIDE_FN(&m, f->convert) || !INSIDE_FN(&m, f->open) ||
            !INSIDE_FN(&m, f->next) || !INSIDE_FN(&m, f->close) || !INSIDE_FN(&m, f->probe)) {
            snprintf(problem, cap, "a function of its format table is not inside the module");
            return -1;
        }
        if (!f->convert && !(f->open && f->next && f->close)) {
            snprintf(problem, cap, "its format table has neither convert nor open, next and close");
            return -1;
        }
        ds_format taken;
        if (ds_format_parse(info->name, &taken, NULL) == 0) {
            snprintf(problem, cap, "'%s' is a built-in format", info->name);
            return -1;
        }
        e->desc.format = &e->format;
        e->desc.sink = NULL;
    } else if (e->desc.kind == PESC_PLUGIN_SINK) {
        const pesc_sink_ops *s = &e->sink;
        if (copy_ops(&m, e->desc.sink, &e->sink, sizeof e->sink,
                     offsetof(pesc_sink_ops, close) + sizeof s->close, "sink table", problem,
                     cap) != 0)
            return -1;
        if (!INSIDE_FN(&m, s->open) || !INSIDE_FN(&m, s->record) || !INSIDE_FN(&m, s->event) ||
            !INSIDE_FN(&m, s->close)) {
            snprintf(problem, cap, "a function of its sink table is not inside the module");
            return -1;
        }
        if (!s->open || !s->record || !s->close) {
            snprintf(problem, cap, "its sink table lacks open, record or close");
            return -1;
        }
        if (sinks_builtin(info->name)) {
            snprintf(problem, cap, "'%s' is a built-in sink", info->name);
            return -1;
        }
        e->desc.sink = &e->sink;
        e->desc.format = NULL;
    } else {
        snprintf(problem, cap, "unknown kind %d (%d = dataset format, %d = metric sink)",
                 e->desc.kind, PESC_PLUGIN_FORMAT, PESC_PLUGIN_SINK);
        info->kind = 0;
        return -1;
    }
    e->desc.name = info->name;
    e->desc.version = info->version;
    e->desc.description = info->description;
    return 0;
}

/* ============================================================ loading and finding ===== */

static plugin_entry *add_entry(pesc_plugins *p, const char *path, const char *origin)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 16;
        p->items = xrealloc(p->items, (size_t)p->cap * sizeof *p->items);
    }
    plugin_entry *e = xcalloc(1, sizeof *e);
    snprintf(e->info.path, sizeof e->info.path, "%s", path);
    e->info.origin = origin;
    p->items[p->n++] = e;
    return e;
}

/* 1 loaded, 0 already loaded from this very file, -1 refused (listed, message in err). */
static int load(pesc_plugins *p, const char *path, const char *origin, pesc_error *err)
{
    char real[PATH_MAX];
    struct stat st;
    int missing = !realpath(path, real) || stat(real, &st) != 0;
    int saved = errno;
    if (missing)
        snprintf(real, sizeof real, "%s", path);
    for (int i = 0; i < p->n; i++)
        if (p->items[i]->handle && strcmp(p->items[i]->realpath, real) == 0)
            return 0;
    plugin_entry *e = add_entry(p, path, origin);
    snprintf(e->realpath, sizeof e->realpath, "%s", real);
    char *problem = e->info.problem;
    size_t cap = sizeof e->info.problem;
    dlerror();
    /* Only the file named: never a search of the library path for a bare name, and never
     * a FIFO or device, whose open would block or read forever. RTLD_NOW: an unresolved
     * symbol fails here, with the linker's message. */
    if (missing)
        snprintf(problem, cap, "cannot load it: %s", strerror(saved));
    else if (!S_ISREG(st.st_mode))
        snprintf(problem, cap, "not a regular file; name a plugin module's .so file");
    else if (!(e->handle = dlopen(real, RTLD_NOW | RTLD_LOCAL))) {
        const char *why = dlerror();
        snprintf(problem, cap, "cannot load it: %s", why ? why : "unknown reason");
    } else if (check_module(e, problem, cap) == 0) {
        const pesc_plugin *other = plugins_find(p, e->desc.kind, e->info.name);
        if (other) {
            for (int i = 0; i < p->n; i++)
                if (p->items[i]->info.plugin == other)
                    snprintf(problem, cap, "the name '%s' is taken by %.400s", e->info.name,
                             p->items[i]->info.path);
        } else {
            e->info.plugin = &e->desc;
            return 1;
        }
    }
    if (e->handle) {
        dlclose(e->handle);
        e->handle = NULL;
    }
    return pesc_fail(err, "plugin %s: %s", path, problem);
}

int plugins_load_file(pesc_plugins *p, const char *path, const char *origin, pesc_error *err)
{
    return load(p, path, origin ? origin : "--plugin", err) < 0 ? -1 : 0;
}

static int is_module_name(const char *name)
{
    size_t n = strlen(name);
    return n > 3 && strcmp(name + n - 3, ".so") == 0 && name[0] != '.';
}

static int scan_one(pesc_plugins *p, const char *dir, const char *origin)
{
    struct dirent **names = NULL;
    int n = scandir(dir, &names, NULL, alphasort), loaded = 0;
    for (int i = 0; i < n; i++) {
        if (is_module_name(names[i]->d_name)) {
            char *path = pesc_path_join(dir, names[i]->d_name);
            loaded += load(p, path, origin, NULL) > 0;
            free(path);
        }
        free(names[i]);
    }
    free(names);
    return loaded;
}

int plugins_scan_dir(pesc_plugins *p, const char *dir, const char *origin)
{
    if (!dir || !*dir)
        return 0;
    char *libs = pesc_path_join(dir, ".libs");   /* a libtool build directory */
    int loaded = scan_one(p, dir, origin) + scan_one(p, libs, origin);
    free(libs);
    return loaded;
}

/* pesc run from its build tree finds the modules built beside it: those libtool would
 * install into a plugins directory (their .la's libdir ends in /plugins; test-only modules
 * point elsewhere). */
static int installable(const char *la_text)
{
    const char *libdir = strstr(la_text, "\nlibdir='");
    if (!libdir)
        return 0;
    libdir += 9;
    const char *end = strchr(libdir, '\'');
    return end && end - libdir >= 8 && strncmp(end - 8, "/plugins", 8) == 0;
}

static void scan_build_tree(pesc_plugins *p)
{
    char *program = pesc_program_dir();
    if (!program)
        return;
    char *dir = pesc_path_join(program, "plugins");
    free(program);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 4 || strcmp(e->d_name + len - 3, ".la") != 0)
            continue;
        char *la = pesc_path_join(dir, e->d_name), *text = NULL;
        if (pesc_read_file(la, &text, NULL, NULL) == 0 && installable(text)) {
            char so[4200];
            snprintf(so, sizeof so, "%s/.libs/%.*s.so", dir, (int)(len - 3), e->d_name);
            if (access(so, R_OK) == 0)
                plugins_load_file(p, so, "build tree", NULL);
        }
        free(text);
        free(la);
    }
    if (d)
        closedir(d);
    free(dir);
}

void plugins_scan_default(pesc_plugins *p)
{
    const char *env = getenv("PESC_PLUGIN_PATH");
    if (env && *env) {
        char *copy = xstrdup(env), *save = NULL;
        for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save))
            plugins_scan_dir(p, dir, "$PESC_PLUGIN_PATH");
        free(copy);
    }
    plugins_scan_dir(p, PESC_PLUGINDIR, "pkglibdir");
    scan_build_tree(p);
}

pesc_plugins *plugins_open(const char *const *files, int n_files, pesc_error *err)
{
    pesc_plugins *p = plugins_new();
    for (int i = 0; i < n_files; i++)
        if (plugins_load_file(p, files[i], "--plugin", err) != 0) {
            plugins_delete(p);
            return NULL;
        }
    plugins_scan_default(p);
    return p;
}

int plugins_add_formats(const pesc_plugins *p, ds_formats *f, pesc_error *err)
{
    for (int i = 0; p && i < p->n; i++) {
        const plugin_info *info = &p->items[i]->info;
        if (info->plugin && info->kind == PESC_PLUGIN_FORMAT &&
            ds_formats_add(f, info->name, info->description, info->plugin->format, info->path,
                           err) != 0)
            return -1;
    }
    return 0;
}

ds_formats *plugins_formats(const pesc_plugins *p, pesc_error *err)
{
    ds_formats *f = ds_formats_new();
    if (plugins_add_formats(p, f, err) != 0) {
        ds_formats_delete(f);
        return NULL;
    }
    return f;
}
