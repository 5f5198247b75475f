#ifndef CONNPOOL_COPENSSL_SHIM_H
#define CONNPOOL_COPENSSL_SHIM_H
/*
 * OpenSSL 3 for ConnPoolIO's TLS layer. Swift imports OpenSSL's functions directly; this header adds
 * static inline wrappers for the parts OpenSSL defines as macros (Swift cannot call a function-like
 * macro), and nothing else.
 */
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/bio.h>

static inline long connpool_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_min_proto_version(ctx, version);
}

static inline long connpool_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_max_proto_version(ctx, version);
}

static inline uint64_t connpool_SSL_CTX_set_options(SSL_CTX *ctx, uint64_t options) {
    return SSL_CTX_set_options(ctx, options);
}

static inline long connpool_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_mode(ctx, mode);
}

static inline long connpool_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_session_cache_mode(ctx, mode);
}

/* Adds an intermediate certificate to the chain the client sends (takes its own reference). */
static inline long connpool_SSL_CTX_add1_chain_cert(SSL_CTX *ctx, X509 *certificate) {
    return SSL_CTX_add1_chain_cert(ctx, certificate);
}

/* SNI: the server name sent in the ClientHello. */
static inline long connpool_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}

static inline int connpool_SSL_CTX_get_ex_new_index(void) {
    return SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static inline int connpool_SSL_get_ex_new_index(void) {
    return SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static inline void connpool_BIO_clear_retry_flags(BIO *bio) {
    BIO_clear_retry_flags(bio);
}

static inline void connpool_BIO_set_retry_read(BIO *bio) {
    BIO_set_retry_read(bio);
}

static inline void connpool_BIO_set_retry_write(BIO *bio) {
    BIO_set_retry_write(bio);
}

/* The reason code of a packed OpenSSL error (ERR_GET_REASON is a macro). */
static inline int connpool_ERR_GET_REASON(unsigned long error) {
    return ERR_GET_REASON(error);
}

static inline int connpool_ERR_GET_LIB(unsigned long error) {
    return ERR_GET_LIB(error);
}

#endif
