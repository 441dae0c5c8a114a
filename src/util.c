/* util — see util.h. */
#define _GNU_SOURCE   /* renameat2 */
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int pesc_fail(pesc_error *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int pesc_fail_prefix(pesc_error *err, const char *fmt, ...)
{
    if (!err)
        return -1;
    char prefix[PESC_ERROR_MAX], combined[2 * PESC_ERROR_MAX + 2];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    snprintf(combined, sizeof combined, "%s: %s", prefix, err->msg);
    /* a message that long is cut at the buffer's end */
    memcpy(err->msg, combined, sizeof err->msg - 1);
    err->msg[sizeof err->msg - 1] = '\0';
    return -1;
}

int pesc_fail_suffix(pesc_error *err, const char *fmt, ...)
{
    if (!err)
        return -1;
    size_t at = strlen(err->msg);
    va_list ap;
    va_start(ap, fmt);
    if (at < sizeof err->msg - 1)   /* a message that long is cut at the buffer's end */
        vsnprintf(err->msg + at, sizeof err->msg - at, fmt, ap);
    va_end(ap);
    return -1;
}

const char *pesc_path_shown(const char *path)
{
    return path && *path ? path : "''";
}

static void (*oom_hook)(void);

void pesc_set_oom_hook(void (*hook)(void))
{
    oom_hook = hook;
}

static void out_of_memory(size_t n)
{
    if (oom_hook)
        oom_hook();
    fprintf(stderr, "pesc: out of memory allocating %zu bytes\n", n);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        out_of_memory(n);
    return p;
}

void *xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        out_of_memory(count * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        out_of_memory(n);
    return q;
}

char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

/* 0, or -1 with the reason when ST is a directory or a device rather than a file. */
static int refuse_not_file(const struct stat *st, const char *path, pesc_error *err)
{
    if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode))
        return pesc_fail(err, "%s is a device, not a file", path);
    if (S_ISDIR(st->st_mode)) {
        pesc_fail(err, "%s is a directory, not a file", path);
        errno = EISDIR;
        return -1;
    }
    return 0;
}

int pesc_refuse_device(int fd, const char *path, pesc_error *err)
{
    struct stat st;
    if (fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode))
        return refuse_not_file(&st, path, err);
    return 0;
}

/* Seconds a FIFO's reader waits for its writer to open it or write. */
#define PESC_FIFO_WAIT_S 5

/* For a FIFO open without blocking: waits until its writer wrote, or came and went (Linux
 * reports no hang-up before a writer ever opened it): 0, or 1 when none did in
 * PESC_FIFO_WAIT_S (-1 when poll failed, errno set). */
static int fifo_writer(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int ready;
    while ((ready = poll(&p, 1, PESC_FIFO_WAIT_S * 1000)) < 0 && errno == EINTR)
        continue;
    return ready < 0 ? -1 : ready == 0;
}

int pesc_read_file(const char *path, char **out, size_t *len, pesc_error *err)
{
    /* not blocking in the open, which waits for a FIFO's writer however long: the wait is
     * fifo_writer's, bounded */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC), waited = 0;
    struct stat st;
    int known = fd >= 0 && fstat(fd, &st) == 0;
    if (known && S_ISFIFO(st.st_mode))
        waited = fifo_writer(fd);
    FILE *f = fd >= 0 && waited == 0 && fcntl(fd, F_SETFL, 0) == 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        int saved = errno;
        if (fd >= 0)
            close(fd);
        if (waited > 0)
            return pesc_fail(err, "%s is a FIFO that nothing wrote to in %d s; name a file, or "
                             "start its writer first", path, PESC_FIFO_WAIT_S);
        return pesc_fail(err, "%s: %s", pesc_path_shown(path), strerror(saved));
    }
    /* open opens a directory too; only the first read fails, with a bare "read error" */
    if (known && refuse_not_file(&st, path, err) != 0) {
        int saved = errno;
        fclose(f);
        errno = saved;
        return -1;
    }
    /* a file's size is known (it may still grow or shrink: read to the end all the same) */
    size_t cap = known && S_ISREG(st.st_mode) && st.st_size >= 0 &&
                         (unsigned long long)st.st_size < PESC_READ_FILE_MAX
                     ? (size_t)st.st_size + 2 : 4096, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap)
            buf = xrealloc(buf, cap *= 2);
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
        if (n > PESC_READ_FILE_MAX) {
            fclose(f);
            free(buf);
            return pesc_fail(err, "%s goes on past %lu MiB, more than any file pesc reads whole "
                             "(a config or tokenizer JSON): is it the right file?", path,
                             PESC_READ_FILE_MAX >> 20);
        }
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        return pesc_fail(err, "%s: read error", path);
    }
    buf[n] = '\0';
    *out = buf;
    if (len)
        *len = n;
    return 0;
}

void pesc_show_phase(const char *who, const char *fmt, ...)
{
    if (!who || !isatty(STDERR_FILENO))
        return;
    fputs("\r\033[K", stderr);
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "%s: ", who);
        vfprintf(stderr, fmt, ap);
        fputs("...", stderr);
        va_end(ap);
    }
    fflush(stderr);
}

size_t pesc_show_controls(char *out, size_t cap, const char *text)
{
    const unsigned char *p = (const unsigned char *)text;
    size_t n = 0;
    while (*p) {
        char one[8];
        size_t len = 1, used = 1;
        if (*p < 0x20 || *p == 0x7f)
            len = (size_t)snprintf(one, sizeof one, "\\x%02x", *p);
        else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
            len = (size_t)snprintf(one, sizeof one, "\\u%04x", p[1]), used = 2;
        else
            one[0] = (char)*p;
        if (n + len >= cap) {
            if ((*p & 0xc0) == 0x80) {   /* do not end in the middle of a UTF-8 character */
                while (n > 0 && ((unsigned char)out[n - 1] & 0xc0) == 0x80)
                    n--;
                n -= n > 0;
            }
            break;
        }
        memcpy(out + n, one, len);
        n += len;
        p += used;
    }
    out[n] = '\0';
    return n;
}

const char *pesc_skip_bom(const char *text, size_t *len)
{
    size_t n = len ? *len : strlen(text);
    if (n < 3 || memcmp(text, PESC_BOM, 3) != 0)
        return text;
    if (len)
        *len = n - 3;
    return text + 3;
}

char *pesc_program_dir(void)
{
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0 || (size_t)n >= sizeof exe - 1)
        return NULL;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return NULL;
    *slash = '\0';
    return xstrdup(slash == exe ? "/" : exe);
}

char *pesc_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    int slash = a > 0 && dir[a - 1] != '/';
    char *p = xmalloc(a + slash + b + 1);
    memcpy(p, dir, a);
    if (slash)
        p[a] = '/';
    memcpy(p + a + slash, name, b + 1);
    return p;
}

/* ---- files that are whole or absent --------------------------------------------------------- */

int pesc_write_file(const char *path, const void *data, size_t len, pesc_error *err)
{
    char *tmp;
    FILE *f = pesc_file_begin(path, &tmp, err);
    if (!f)
        return -1;
    if (fwrite(data, 1, len, f) != len) {
        pesc_fail(err, "%s: %s%s", path, strerror(errno), pesc_write_fix(errno));
        pesc_file_abort(f, tmp);
        free(tmp);
        return -1;
    }
    int rc = pesc_file_commit(f, tmp, path, err);
    free(tmp);
    return rc;
}

int pesc_copy_file(const char *from, const char *to, pesc_error *err)
{
    char *data = NULL;
    size_t len = 0;
    int rc = pesc_read_file(from, &data, &len, err);
    if (rc == 0)
        rc = pesc_write_file(to, data, len, err);
    free(data);
    return rc;
}

int pesc_remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return unlink(path);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *p = pesc_path_join(path, e->d_name);
        pesc_remove_tree(p);
        free(p);
    }
    closedir(d);
    return rmdir(path);
}

/* Best effort: some filesystems refuse fsync on directories. */
static void fsync_directory(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* final without trailing slashes, split into its parent ("." when none) and its name. */
static void split_path(const char *final, char **parent, char **name)
{
    char *copy = xstrdup(final);
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/')
        copy[--n] = '\0';
    char *slash = strrchr(copy, '/');
    if (!slash) {
        *parent = xstrdup(".");
        *name = copy;
        return;
    }
    *name = xstrdup(slash + 1);
    if (slash == copy)
        slash[1] = '\0';   /* a directory at the root */
    else
        *slash = '\0';
    *parent = copy;
}

int pesc_same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return a && b && stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

int pesc_open_if_locked(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0 && (flock(fd, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK)) {
        close(fd);   /* a shared lock taken is let go with it */
        fd = -1;
    }
    return fd;
}

const char *pesc_write_fix(int error)
{
    switch (error) {
    case ENOSPC:
    case EDQUOT: return "; free some space on its disk and retry";
    case EFBIG:
        return "; the file size limit (ulimit -f) or the file system's largest file is "
               "reached: raise the limit, or write it elsewhere";
    case EROFS: return "; its file system is read-only: write it elsewhere";
    default: return "";
    }
}

int pesc_make_dirs(const char *dir)
{
    if (!*dir) {
        errno = ENOENT;
        return -1;
    }
    char *path = xstrdup(dir);
    int rc = 0;
    for (char *p = path + 1; rc == 0; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char was = *p;
        *p = '\0';
        struct stat st;
        int made = mkdir(path, 0755) == 0;
        if (!made && (errno != EEXIST || stat(path, &st) != 0)) {
            rc = -1;
        } else if (!made && !S_ISDIR(st.st_mode)) {
            errno = ENOTDIR;   /* a file in the way */
            rc = -1;
        }
        *p = was;
        if (was == '\0')
            break;
    }
    free(path);
    return rc;
}

int pesc_dirs_writable(const char *dir)
{
    char *path = xstrdup(dir);
    int rc = -1;
    for (;;) {
        struct stat st;
        if (stat(path, &st) == 0) {
            if (!S_ISDIR(st.st_mode))
                errno = ENOTDIR;
            else
                rc = access(path, W_OK | X_OK);
            break;
        }
        int why = errno;
        char *parent = pesc_parent_dir(path);
        int top = why != ENOENT || strcmp(parent, path) == 0;
        free(path);
        path = parent;
        if (top) {
            errno = why;
            break;
        }
    }
    int saved = errno;
    free(path);
    errno = saved;
    return rc;
}

char *pesc_parent_dir(const char *path)
{
    char *parent, *name;
    split_path(path, &parent, &name);
    free(name);
    return parent;
}

/* Removes ".tmp-NAME-PID" (and ".old") directories in parent left by processes that are gone:
 * a write killed half-way leaves one. A live process's are its own business. */
/* Whether what process pid left is a dead one's: no live process has the id (one of another
 * user's is alive), or it is this process's, whose own are never left while it runs: an
 * earlier process had the id (a container's pesc is often pid 1 each time). */
static int process_gone(long pid)
{
    return pid == (long)getpid() || (kill((pid_t)pid, 0) != 0 && errno == ESRCH);
}

int pesc_dir_restore_aside(const char *parent, const char *entry)
{
    size_t len = strlen(entry);
    if (strncmp(entry, ".tmp-", 5) != 0 || len < 5 + 4 || strcmp(entry + len - 4, ".old") != 0)
        return 0;
    char *name = xstrdup(entry + 5);
    name[len - 5 - 4] = '\0';   /* NAME-PID */
    char *dash = strrchr(name, '-'), *end;
    long pid = dash ? strtol(dash + 1, &end, 10) : 0;
    int restored = 0;
    if (dash && dash > name && end != dash + 1 && !*end && pid > 0 && process_gone(pid)) {
        *dash = '\0';
        char *from = pesc_path_join(parent, entry), *to = pesc_path_join(parent, name);
        struct stat st;
        restored = lstat(to, &st) != 0 && errno == ENOENT && rename(from, to) == 0;
        free(from);
        free(to);
    }
    free(name);
    return restored;
}

static void remove_stale(const char *parent, const char *name)
{
    DIR *d = opendir(parent);
    if (!d)
        return;
    size_t prefix_len = strlen(name) + 6;
    char *prefix = xmalloc(prefix_len + 1);
    snprintf(prefix, prefix_len + 1, ".tmp-%s-", name);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, prefix, prefix_len) != 0)
            continue;
        char *end;
        long pid = strtol(e->d_name + prefix_len, &end, 10);
        if (end == e->d_name + prefix_len || (*end && strcmp(end, ".old") != 0) || pid <= 0 ||
            !process_gone(pid) || pesc_dir_restore_aside(parent, e->d_name))
            continue;
        char *path = pesc_path_join(parent, e->d_name);
        pesc_remove_tree(path);
        free(path);
    }
    closedir(d);
    free(prefix);
}

/* ".tmp-NAME-PID" beside final (malloc'd), after removing those that dead processes left;
 * *parent (malloc'd) is final's directory. */
static char *temporary_beside(const char *final, char **parent)
{
    char *name;
    split_path(final, parent, &name);
    size_t len = strlen(name) + 32;
    char *tmp_name = xmalloc(len);
    snprintf(tmp_name, len, ".tmp-%s-%ld", name, (long)getpid());
    char *tmp = pesc_path_join(*parent, tmp_name);
    free(tmp_name);
    remove_stale(*parent, name);   /* ours from an earlier process of this id too */
    free(name);
    return tmp;
}

/* An empty name would become a temporary in the working directory and a rename to "". */
static int refuse_empty(const char *final, const char *what, pesc_error *err)
{
    return *final ? 0 : pesc_fail(err, "'': an empty path names no %s to write", what);
}

int pesc_dir_begin(const char *final, char **tmp, pesc_error *err)
{
    char *parent;
    *tmp = NULL;
    if (refuse_empty(final, "directory", err) != 0)
        return -1;
    *tmp = temporary_beside(final, &parent);
    if (pesc_make_dirs(parent) != 0 || mkdir(*tmp, 0755) != 0) {
        pesc_fail(err, "%s: cannot create a directory in %s: %s", final, parent, strerror(errno));
        free(parent);
        free(*tmp);
        *tmp = NULL;
        return -1;
    }
    free(parent);
    return 0;
}

int pesc_dir_commit(const char *tmp, const char *final, pesc_error *err)
{
    fsync_directory(tmp);
    size_t len = strlen(tmp) + 8;
    char *aside = xmalloc(len);
    snprintf(aside, len, "%s.old", tmp);
    struct stat st;
    int replacing = lstat(final, &st) == 0;
    int rc = 0, swapped = 0;
#ifdef RENAME_EXCHANGE
    /* in one step where the file system can, with no moment without a whole final: tmp then
     * holds the old one */
    swapped = replacing && renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) == 0;
#endif
    if (!swapped && replacing && rename(final, aside) != 0) {
        int error = errno;
        rc = pesc_fail(err, "%s: cannot move the existing one aside: %s%s", final,
                       strerror(error), error == EBUSY ? " (it is the working directory or a "
                       "mount point: name another directory)" : "");
    } else if (!swapped && rename(tmp, final) != 0) {
        rc = pesc_fail(err, "%s: cannot rename %s into place: %s", final, tmp, strerror(errno));
        if (replacing)
            rename(aside, final);   /* put the old one back */
    } else {
        char *parent, *name;
        split_path(final, &parent, &name);
        fsync_directory(parent);
        free(parent);
        free(name);
        if (replacing)
            pesc_remove_tree(swapped ? tmp : aside);
    }
    free(aside);
    return rc;
}

void pesc_dir_abort(const char *tmp)
{
    if (tmp)
        pesc_remove_tree(tmp);
}

FILE *pesc_file_begin(const char *final, char **tmp, pesc_error *err)
{
    struct stat st;
    *tmp = NULL;
    if (refuse_empty(final, "file", err) != 0)
        return NULL;
    int exists = stat(final, &st) == 0;
    if (exists && S_ISDIR(st.st_mode)) {
        pesc_fail(err, "%s is a directory; name a file to write", final);
        return NULL;
    }
    if (exists && !S_ISREG(st.st_mode)) {   /* /dev/null, a pipe */
        FILE *f = fopen(final, "wb");
        if (!f)
            pesc_fail(err, "%s: %s", final, strerror(errno));
        return f;
    }
    char *parent;
    *tmp = temporary_beside(final, &parent);
    FILE *f = pesc_make_dirs(parent) == 0 ? fopen(*tmp, "wb") : NULL;
    if (!f) {
        pesc_fail(err, "%s: cannot create a file in %s: %s", final, parent, strerror(errno));
        free(*tmp);
        *tmp = NULL;
    }
    free(parent);
    return f;
}

int pesc_file_commit(FILE *f, const char *tmp, const char *final, pesc_error *err)
{
    int ok = fflush(f) == 0 && (!tmp || fsync(fileno(f)) == 0);
    int saved = errno;
    ok = fclose(f) == 0 && ok;
    if (!tmp)
        return ok ? 0 : pesc_fail(err, "%s: %s", final, strerror(saved ? saved : errno));
    if (!ok) {
        unlink(tmp);
        saved = saved ? saved : errno;
        return pesc_fail(err, "%s: %s; the old file, if any, is untouched%s", final,
                         strerror(saved), pesc_write_fix(saved));
    }
    if (rename(tmp, final) != 0) {
        saved = errno;
        unlink(tmp);
        return pesc_fail(err, "%s: cannot rename %s into place: %s", final, tmp, strerror(saved));
    }
    char *parent, *name;
    split_path(final, &parent, &name);
    fsync_directory(parent);
    free(parent);
    free(name);
    return 0;
}

void pesc_file_abort(FILE *f, const char *tmp)
{
    if (f)
        fclose(f);
    if (tmp)
        unlink(tmp);
}

void pesc_format_bytes(double n, char *out, size_t cap)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (n >= 1024 && u < 4) {
        n /= 1024;
        u++;
    }
    snprintf(out, cap, u == 0 ? "%.0f %s" : "%.1f %s", n, units[u]);
}

int pesc_mul_size(size_t a, size_t b, size_t *out)
{
    if (a && b > SIZE_MAX / a)
        return -1;
    *out = a * b;
    return 0;
}

uint64_t pesc_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double pesc_splitmix_uniform(uint64_t *state)
{
    return (double)(pesc_splitmix64(state) >> 11) * 0x1p-53;
}

double pesc_xorshift_uniform(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return (double)(*state >> 11) * 0x1p-53;
}

int pesc_argmax(const float *x, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (x[i] == x[i] && (best < 0 || x[i] > x[best]))
            best = i;
    return best >= 0 && isfinite(x[best]) ? best : -1;
}

char *pesc_demo_model_dir(void)
{
    const char *env = getenv("PESC_DEMO_DIR");
    if (env)
        return xstrdup(env);
    char *dir = pesc_program_dir();
    if (dir) {
        char *demo = pesc_path_join(dir, "data/demo"), *config = pesc_path_join(demo, "config.json");
        int here = access(config, R_OK) == 0;
        free(config);
        free(dir);
        if (here)
            return demo;
        free(demo);
    }
    return xstrdup(PESC_DATADIR "/demo");
}

int pesc_names_demo(const char *arg)
{
    return strcmp(arg, "demo") == 0 && access("demo/config.json", F_OK) != 0;
}

void pesc_format_duration(double s, char *out, size_t cap)
{
    if (!isfinite(s) || s < 0 || s > 1e9)
        snprintf(out, cap, "--");
    else if (s < 60)
        snprintf(out, cap, "%ds", (int)s);
    else if (s < 3600)
        snprintf(out, cap, "%dm%02ds", (int)s / 60, (int)s % 60);
    else if (s < 86400)
        snprintf(out, cap, "%dh%02dm", (int)(s / 3600), (int)s % 3600 / 60);
    else
        snprintf(out, cap, "%dd%02dh", (int)(s / 86400), (int)s % 86400 / 3600);
}

double pesc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static _Atomic long long stopped_us;   /* lock-free on the targets, so safe in a handler */

double pesc_stopped_s(void) { return 1e-6 * (double)atomic_load(&stopped_us); }

void pesc_note_stopped(double seconds)
{
    if (seconds > 0)
        atomic_fetch_add(&stopped_us, (long long)(seconds * 1e6));
}
