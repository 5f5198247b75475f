#ifndef CONNPOOL_CHIREDIS_SHIM_H
#define CONNPOOL_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#include <errno.h>
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
