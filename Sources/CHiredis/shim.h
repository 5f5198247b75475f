#ifndef CONNPOOL_CHIREDIS_SHIM_H
#define CONNPOOL_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#include <errno.h>
#include <string.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>

/*
 * hiredis is a codec here: commands are formatted into the context's output buffer, and replies parsed by
 * its reader; the bytes go through connpool's own transport (plain or TLS). The context never owns a
 * socket (it is made with redisConnectFd(-1)).
 */

/* The bytes waiting in the output buffer (*length of them). */
static inline const char *connpool_redisOutput(const redisContext *c, size_t *length) {
    *length = sdslen(c->obuf);
    return c->obuf;
}

/* Drops the first `count` bytes of the output buffer (they were written). Keeps the buffer's memory when
   it becomes empty (hiredis' own redisBufferWrite frees it and allocates an empty one each time). */
static inline void connpool_redisConsumeOutput(redisContext *c, size_t count) {
    if (count >= sdslen(c->obuf)) {
        sdsclear(c->obuf);
    } else {
        sdsrange(c->obuf, (int)count, -1);
    }
}

/* The number of decimal digits of v. */
static inline size_t connpool_decimalDigits(size_t v) {
    size_t digits = 1;
    while (v >= 10) { v /= 10; digits++; }
    return digits;
}

/* Writes v in decimal at p; returns the position after it. */
static inline char *connpool_writeDecimal(char *p, size_t v) {
    size_t digits = connpool_decimalDigits(v);
    char *end = p + digits;
    char *q = end;
    do { *--q = (char)('0' + v % 10); v /= 10; } while (v != 0);
    return end;
}

/*
 * Appends one command, RESP-encoded (*argc, then $len and the bytes of each argument), straight to the
 * context's output buffer: one growth of that buffer at most (none once it is large enough), where
 * redisAppendCommandArgv formats into a new buffer (an allocation and a free per command) and then copies
 * it. REDIS_OK, or REDIS_ERR (out of memory) with the context's error set and the buffer unchanged.
 */
static inline int connpool_redisAppendCommand(redisContext *c, int argc, const char **argv, const size_t *argvlen) {
    size_t total = 1 + connpool_decimalDigits((size_t)argc) + 2;
    for (int i = 0; i < argc; i++) {
        total += 1 + connpool_decimalDigits(argvlen[i]) + 2 + argvlen[i] + 2;
    }
    sds buffer = total > 0x7fffffff ? NULL : sdsMakeRoomFor(c->obuf, total);
    if (buffer == NULL) {
        c->err = REDIS_ERR_OOM;
        snprintf(c->errstr, sizeof(c->errstr), "Out of memory");
        return REDIS_ERR;
    }
    c->obuf = buffer;
    char *p = buffer + sdslen(buffer);
    *p++ = '*';
    p = connpool_writeDecimal(p, (size_t)argc);
    *p++ = '\r'; *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        *p++ = '$';
        p = connpool_writeDecimal(p, argvlen[i]);
        *p++ = '\r'; *p++ = '\n';
        if (argvlen[i] > 0) memcpy(p, argv[i], argvlen[i]);
        p += argvlen[i];
        *p++ = '\r'; *p++ = '\n';
    }
    sdsIncrLen(buffer, (int)total);
    return REDIS_OK;
}

/* Feeds received bytes to the reply parser. REDIS_OK, or REDIS_ERR (out of memory) with the context's
   error set. */
static inline int connpool_redisFeed(redisContext *c, const char *bytes, size_t count) {
    if (redisReaderFeed(c->reader, bytes, count) != REDIS_OK) {
        c->err = c->reader->err;
        snprintf(c->errstr, sizeof(c->errstr), "%s", c->reader->errstr);
        return REDIS_ERR;
    }
    return REDIS_OK;
}

#endif
