/* fetch_sha256 — SHA-256 (FIPS 180-4), streaming, for verifying downloads and naming cache
 * entries. Small and dependency-free because OpenSSL is not linked.
 *
 * Owns: the digest arithmetic. Must not: touch files or the network. */
#ifndef PESC_FETCH_SHA256_H
#define PESC_FETCH_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define FETCH_SHA256_HEX_LEN 64

typedef struct fetch_sha256 {
    uint32_t state[8];
    uint64_t length;             /* bytes hashed so far */
    unsigned char block[64];     /* pending input, length % 64 bytes of it used */
} fetch_sha256;

void fetch_sha256_init(fetch_sha256 *h);
void fetch_sha256_update(fetch_sha256 *h, const void *data, size_t n);
/* The 32-byte digest; h must be initialized again before reuse. */
void fetch_sha256_final(fetch_sha256 *h, unsigned char digest[32]);
/* Lowercase hex of the digest, NUL-terminated (out holds 65 bytes). h is finished. */
void fetch_sha256_hex(fetch_sha256 *h, char out[FETCH_SHA256_HEX_LEN + 1]);
/* One-shot convenience. */
void fetch_sha256_buffer(const void *data, size_t n, char out[FETCH_SHA256_HEX_LEN + 1]);

#endif
