#pragma once
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

// OpenSSL spells these as function-like macros, which Swift does not import: one inline function each.

/// `SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)`: 1 on success.
static inline int agentchat_ssl_ctx_require_tls12(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}

/// `SSL_set_tlsext_host_name`: the SNI name. 1 on success.
static inline int agentchat_ssl_set_sni(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

/// `BIO_set_mem_eof_return(bio, -1)`: an empty memory BIO asks the caller to retry instead of reporting EOF.
static inline void agentchat_bio_mem_retry_when_empty(BIO *bio) {
    (void)BIO_set_mem_eof_return(bio, -1);
}
