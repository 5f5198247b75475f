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

/* One reply of a simple type taken straight from the reader's buffer (see connpool_redisTakeSimpleReply).
   `str` points into the reader's buffer: valid until the next call into the reader. */
typedef struct {
    int type;            /* REDIS_REPLY_STATUS, _ERROR, _INTEGER, _STRING or _NIL */
    const char *str;     /* status, error or bulk bytes */
    size_t len;
    long long integer;
} connpool_simple_reply;

/* Parses a decimal integer in [p, end): an optional '-', then 1 to 18 digits, no leading zero, no "-0"
   (the canonical form; hiredis refuses "$01" as a bulk length, so anything else is left to it). 1 on
   success. */
static inline int connpool_parseDecimal(const char *p, const char *end, long long *value) {
    int negative = 0;
    if (p < end && *p == '-') { negative = 1; p++; }
    if (p == end || end - p > 18) return 0;
    if (*p == '0' && (end - p > 1 || negative)) return 0;
    long long v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') return 0;
        v = v * 10 + (*p - '0');
    }
    *value = negative ? -v : v;
    return 1;
}

/*
 * Takes the next reply out of the reader when it is wholly buffered and of a simple type (status, error,
 * integer, bulk string or nil bulk), without hiredis' reply objects: redisGetReplyFromReader allocates a
 * redisReply and a copy of its string for each reply and frees them after connpool has copied them again,
 * two allocations and two frees per reply on the hot path (pipelines take thousands per wake-up).
 * Returns 1 with *out filled and the reader advanced; 0 when the reader is in an error or in the middle of
 * a reply, when the next reply is an array or malformed, or not wholly here: then the caller uses
 * redisGetReplyFromReader, which handles (and reports) everything. The buffer is kept as hiredis keeps it:
 * emptied when fully consumed, its consumed head dropped once it passes 1 KiB.
 */
static inline int connpool_redisTakeSimpleReply(redisContext *c, connpool_simple_reply *out) {
    redisReader *r = c->reader;
    if (r->err || r->ridx != -1 || r->buf == NULL || r->len - r->pos < 4) return 0;
    const char *p = r->buf + r->pos;
    const char *end = r->buf + r->len;
    const char *cr = memchr(p + 1, '\r', (size_t)(end - p - 1));
    if (cr == NULL || cr + 1 >= end || cr[1] != '\n') return 0;
    const char *next = cr + 2;
    switch (p[0]) {
    case '+':
    case '-':
        out->type = p[0] == '+' ? REDIS_REPLY_STATUS : REDIS_REPLY_ERROR;
        out->str = p + 1;
        out->len = (size_t)(cr - p - 1);
        break;
    case ':':
        if (!connpool_parseDecimal(p + 1, cr, &out->integer)) return 0;
        out->type = REDIS_REPLY_INTEGER;
        break;
    case '$': {
        long long length;
        if (!connpool_parseDecimal(p + 1, cr, &length)) return 0;
        if (length == -1) {
            out->type = REDIS_REPLY_NIL;
            break;
        }
        /* hiredis refuses bulk strings over 512 MB: leave those (and negative lengths) to it. */
        if (length < 0 || length > 512LL * 1024 * 1024) return 0;
        if ((size_t)(end - next) < (size_t)length + 2) return 0;
        if (next[length] != '\r' || next[length + 1] != '\n') return 0;
        out->type = REDIS_REPLY_STRING;
        out->str = next;
        out->len = (size_t)length;
        next += length + 2;
        break;
    }
    default:
        return 0;
    }
    r->pos = (size_t)(next - r->buf);
    return 1;
}

/* Call after the reply taken by connpool_redisTakeSimpleReply has been copied: drops the consumed bytes
   the way redisReaderGetReply does (all of them when the buffer is used up, else once past 1 KiB). */
static inline void connpool_redisReaderCompact(redisContext *c) {
    redisReader *r = c->reader;
    if (r->pos == r->len) {
        sdsclear(r->buf);
        r->pos = 0;
        r->len = 0;
    } else if (r->pos >= 1024) {
        sdsrange(r->buf, (int)r->pos, -1);
        r->pos = 0;
        r->len = sdslen(r->buf);
    }
}

#endif
