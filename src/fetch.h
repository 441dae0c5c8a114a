/* fetch — downloads over HTTP(S) with libcurl into pesc's cache: Hugging Face hub URLs
 * (hf://), resume after a dropped connection, retries with backoff, SHA-256 verification,
 * and a progress snapshot that a UI thread can read at any time.
 *
 * Owns: a fetcher object (one background thread driving libcurl's multi interface), the
 * cache layout, `.part` files and their atomic rename. Must not: read what it downloads
 * (stream.h decompresses and parses), print anything (the caller decides how to show
 * progress), or keep global state — two fetchers can live in one process.
 *
 * URLs understood everywhere a URL is taken:
 *   hf://datasets/OWNER/NAME/PATH[@REV]   file of a dataset repository on the hub
 *   hf://OWNER/NAME/PATH[@REV]            file of a model repository
 *   hf://OWNER/NAME[@REV]                 a whole model (fetch_resolve_model only)
 *   http://... https://...                any server
 * REV defaults to "main". The hub is $PESC_HF_ENDPOINT, else $HF_ENDPOINT, else
 * FETCH_HF_DEFAULT_ENDPOINT.
 *
 * Cache: $XDG_CACHE_HOME/pesc (default ~/.cache/pesc), laid out as
 *   hf/datasets/OWNER/NAME/REV/PATH, hf/models/OWNER/NAME/REV/PATH and
 *   url/HOST[_PORT]/HASH/BASENAME (HASH: 16 hex digits of the URL's SHA-256).
 * A file appears under its final name only complete and verified (expected SHA-256 when one
 * is known: given by the caller, or the hub's X-Linked-Etag of large files), by an atomic
 * rename of NAME.part; NAME.part.etag keeps the validator used to resume with Range +
 * If-Range. A complete file already in the cache is reused without asking the network.
 *
 * Security: $HF_TOKEN is sent as "Authorization: Bearer" only to the hub's own origin
 * (scheme, host and port); redirects are followed here, not by libcurl, and the header is
 * dropped as soon as a redirect leaves that origin. The token never appears in a message.
 * TLS peers are verified; libcurl honours http_proxy/https_proxy/no_proxy, and
 * CURL_CA_BUNDLE, SSL_CERT_FILE (CA file) and SSL_CERT_DIR (CA directory) are passed on.
 *
 * Retries: a failed try is retried after a delay (doubled each time) while the tries in a row
 * that made no progress number at most 1 + retries. Progress is the download standing 64 KiB
 * further than where it stood when that count last started over (fetch.c, made_progress):
 * a download that keeps moving over many reconnects gets there, a server that sends a few
 * bytes and then drops or stalls every time is given up on.
 *
 * Tuning for tests and unusual links (environment, read by fetcher_new when the option is
 * left 0): PESC_FETCH_BACKOFF_MS (first retry delay, doubled each time, default 1000),
 * PESC_FETCH_RETRIES (retries after the first try without progress, default 5),
 * PESC_FETCH_STALL_S (a try that receives less than 1 KiB of body in this many seconds, a
 * trickle or nothing at all, is retried; default 60). */
#ifndef PESC_FETCH_H
#define PESC_FETCH_H

#include <stdint.h>

#include "util.h"

#define FETCH_HF_DEFAULT_ENDPOINT "https://huggingface.co"

/* ---- one-call helpers (blocking; a private fetcher with default options) ---------------- */

/* 1 when s is a URL this module downloads (hf://, http://, https://), else 0. */
int fetch_is_url(const char *s);

/* 1 when s is hf://OWNER/NAME[@REV]: a whole model repository, not one file. */
int fetch_is_model_url(const char *s);

/* For a --data style argument: a URL is downloaded into the cache and *path is the cached
 * file; anything else is taken as a local path and copied. *path is the caller's to free. */
int fetch_url_to_cache(const char *url, char **path, pesc_error *err);

/* For a --model style argument: hf://OWNER/NAME[@REV] (or an http(s) URL of a directory)
 * becomes a cache directory holding config.json, tokenizer.json, tokenizer_config.json,
 * generation_config.json and special_tokens_map.json where the repository has them, and
 * model.safetensors or model.safetensors.index.json plus every shard it names. A local
 * path is copied. *dir is the caller's to free. */
int fetch_resolve_model(const char *url, char **dir, pesc_error *err);

/* ---- the fetcher: background downloads with progress ------------------------------------ */

typedef struct fetcher fetcher;

/* Every field may be left 0/NULL for the default (environment, then built-in). */
typedef struct fetch_options {
    const char *cache_dir;       /* default $XDG_CACHE_HOME/pesc or $HOME/.cache/pesc */
    const char *hf_endpoint;     /* default $PESC_HF_ENDPOINT, $HF_ENDPOINT, the hub */
    const char *token;           /* default $HF_TOKEN; "" sends none */
    int jobs;                    /* transfers at once, default 4 */
    int retries;                 /* retries after the first try without progress (see
                                    above); <0 means none; default 5 */
    long backoff_ms;             /* first retry delay, doubled each retry; default 1000 */
    long stall_s;                /* under 1 KiB of body in this long: retry; default 60 */
    long connect_timeout_s;      /* default 30 */
} fetch_options;

typedef enum fetch_state {
    FETCH_QUEUED,                /* waiting for a free slot */
    FETCH_RUNNING,               /* connecting or receiving */
    FETCH_RETRY_WAIT,            /* failed try; waits for the next (see message) */
    FETCH_VERIFYING,             /* hashing a cached or resumed file */
    FETCH_DONE,                  /* downloaded and verified */
    FETCH_CACHED,                /* found complete in the cache (or at dest) */
    FETCH_ABSENT,                /* optional file the server does not have (404) */
    FETCH_FAILED,                /* gave up; message says why */
    FETCH_CANCELLED
} fetch_state;

/* 1 for the states in which a transfer has ended. */
int fetch_state_final(fetch_state s);
/* "queued", "running", ... */
const char *fetch_state_name(fetch_state s);

/* One transfer as the UI sees it. A copy: reading it needs no lock. */
typedef struct fetch_progress {
    int id;
    fetch_state state;
    char name[160];              /* what to show: the URL's last path part, or the repo file */
    char url[512];               /* the URL without credentials, for lines that must tell
                                    two downloads of one name apart */
    int64_t done;                /* bytes on disk (a resumed part counts) */
    int64_t total;               /* -1 while unknown */
    double rate;                 /* bytes/s, smoothed over a few seconds; 0 when idle */
    double eta_s;                /* seconds left at that rate; -1 when unknown */
    double elapsed_s;            /* since the transfer started */
    int attempt;                 /* 1 for the first try */
    int retries;                 /* retries decided so far; each one's reason is in
                                    last_retry, so a UI that looks rarely misses none */
    char message[256];           /* last event or the failure: "HTTP 503, retrying in 2 s" */
    char last_retry[256];        /* the message of the latest retry */
} fetch_progress;

/* Starts the background thread. */
fetcher *fetcher_new(const fetch_options *options, pesc_error *err);
/* Cancels what is still running (parts stay for a later resume) and joins the thread.
 * Accepts NULL. */
void fetcher_delete(fetcher *f);

/* fetcher_add flags. */
enum {
    FETCH_OPTIONAL = 1,          /* a 404 ends the transfer as FETCH_ABSENT, not as a failure */
    FETCH_REPLACE = 2            /* a file already at dest is not reused: it is downloaded
                                    again and replaced once the new copy is complete */
};

/* Queues a download and returns its id (>= 0), or -1 with err for a URL that cannot be
 * mapped. dest NULL: the cache path for the URL, else that file (its directory is made).
 * A file already at dest is taken as it is (FETCH_CACHED) unless flags has FETCH_REPLACE;
 * with sha256 (NULL or 64 hex digits the content must hash to) only when it matches, else
 * it is replaced by a download that does. Adding a destination that is already queued
 * returns the existing id. Thread-safe. */
int fetcher_add(fetcher *f, const char *url, const char *dest, const char *sha256,
                unsigned flags, pesc_error *err);

/* Waits until transfer id (or, with FETCH_ALL, every transfer) has ended, or timeout_s
 * passed (negative: no limit). 1 ended, 0 not yet. Thread-safe. */
#define FETCH_ALL (-1)
int fetcher_wait(fetcher *f, int id, double timeout_s);

/* Outcome of an ended transfer: 0 with *path (malloc'ed, may be NULL to skip) for DONE or
 * CACHED, 1 for ABSENT, -1 with err for FAILED, CANCELLED or a transfer still running. */
int fetcher_result(fetcher *f, int id, char **path, pesc_error *err);

/* Blocking shortcuts on a shared fetcher; the UI can show progress from another thread. */
int fetcher_get(fetcher *f, const char *url, const char *sha256, char **path,
                pesc_error *err);
int fetcher_get_model(fetcher *f, const char *url, char **dir, pesc_error *err);
/* Only a model's tokenizer files (tokenizer.json; tokenizer_config.json and
 * special_tokens_map.json where the repository has them) into the model's cache directory. */
int fetcher_get_tokenizer(fetcher *f, const char *url, char **dir, pesc_error *err);

/* Asks a transfer (or FETCH_ALL) to stop; its part stays for a later resume. */
void fetcher_cancel(fetcher *f, int id);

/* Copies up to cap transfers, oldest first, into out and returns how many there are in all
 * (may exceed cap). Never blocks on the network: it takes a lock held only for copies. */
int fetcher_snapshot(fetcher *f, fetch_progress *out, int cap);

/* The resolved settings (cache directory, hub endpoint), for messages and tests. */
const char *fetcher_cache_dir(const fetcher *f);
const char *fetcher_hf_endpoint(const fetcher *f);

/* ---- pieces exposed for tests ------------------------------------------------------------ */

/* Maps url to the http(s) URL to request and the path relative to the cache directory.
 * Both malloc'ed. Refuses "..", empty parts and other schemes with a message. */
int fetch_map_url(const char *url, const char *hf_endpoint, char **request_url,
                  char **cache_path, pesc_error *err);

#endif
