/* plugin — loadable modules (plugins/pesc-plugin.h): finding them, checking them, keeping them.
 *
 * Where modules come from, first one of a name wins:
 *   1. --plugin FILE (plugins_load_file; a refusal is an error for the caller to report),
 *   2. each directory of $PESC_PLUGIN_PATH (colon-separated; a libtool build directory such as
 *      BUILD/plugins works too: its .libs/ is searched as well),
 *   3. $(pkglibdir)/plugins, where `make install` puts them.
 * Every *.so of a searched directory is tried; one that is refused (not a pesc plugin, another
 * ABI version, a descriptor that does not hold up, a name already taken) is kept in the list
 * with the reason, for `pesc plugins`, and otherwise ignored, so a broken module never stops
 * a run it was not asked for.
 *
 * Checks before anything of a module is used: dlopen with RTLD_NOW (a missing symbol fails
 * here, not later), the entry symbol, the ABI version (read first, before any other field),
 * the descriptor's size, kind and name, and that the descriptor, its strings, its table and
 * every function in it lie inside the module itself (dladdr), so a stray pointer is refused
 * instead of followed. A module's constructors run at dlopen; that is the one thing no loader
 * can check.
 *
 * Owns: the dlopen handles (closed by plugins_delete; every table a module gave stays valid
 * until then). Must not: keep global state; two registries can live side by side. */
#ifndef PESC_PLUGIN_LOADER_H
#define PESC_PLUGIN_LOADER_H

#include "dataset.h"
#include "pesc-plugin.h"
#include "util.h"

typedef struct plugin_info {
    char path[4096];
    const char *origin;          /* "--plugin", "$PESC_PLUGIN_PATH" or "pkglibdir" */
    char name[PESC_PLUGIN_NAME_MAX + 1];    /* "" when refused before the name was read */
    char version[32];
    char description[160];
    int kind;                    /* pesc_plugin_kind; 0 when refused early */
    unsigned abi_version;        /* what the module says it was built for; 0 if unknown */
    char problem[512];           /* "" = loaded; else why it was refused */
    const pesc_plugin *plugin;   /* the checked descriptor; NULL when refused */
} plugin_info;

typedef struct pesc_plugins pesc_plugins;

/* Empty registry; nothing is searched yet. */
pesc_plugins *plugins_new(void);
void plugins_delete(pesc_plugins *p);

/* Loads one module. -1 with "FILE: problem" when it is refused (also listed). */
int plugins_load_file(pesc_plugins *p, const char *path, const char *origin, pesc_error *err);
/* Tries every *.so in dir (and dir/.libs); refusals are listed, never errors. Returns how
 * many were loaded. A missing directory is fine. */
int plugins_scan_dir(pesc_plugins *p, const char *dir, const char *origin);
/* $PESC_PLUGIN_PATH, then the install directory. */
void plugins_scan_default(pesc_plugins *p);

/* What a command does for its --plugin FILE options: the files (each refusal an error), then
 * the default search. */
pesc_plugins *plugins_open(const char *const *files, int n_files, pesc_error *err);

/* The install directory, $(pkglibdir)/plugins. */
const char *plugins_install_dir(void);

int plugins_count(const pesc_plugins *p);
const plugin_info *plugins_get(const pesc_plugins *p, int i);
/* A loaded plugin of this kind and name, or NULL. */
const pesc_plugin *plugins_find(const pesc_plugins *p, int kind, const char *name);

/* Adds every loaded format plugin to a format registry (a name taken there already is an
 * error naming the file). */
int plugins_add_formats(const pesc_plugins *p, ds_formats *f, pesc_error *err);
/* A new registry: the built-in formats, then the plugins' (for ds_load_options.formats). */
ds_formats *plugins_formats(const pesc_plugins *p, pesc_error *err);

#endif
