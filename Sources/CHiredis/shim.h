#ifndef CONNPOOL_CHIREDIS_SHIM_H
#define CONNPOOL_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0

/*
 * ThreadSanitizer happens-before annotation (a no-op unless the process runs with TSan: the weak
 * __tsan_acquire is then provided by the TSan runtime, otherwise it is null).
 *
 * Why: when a continuation is resumed before its task has suspended (the I/O reactor resumes the
 * instant epoll reports the socket), the Swift 6.3 runtime's swift_continuation_await takes the
 * "already resumed" path without the _swift_tsan_acquire that pairs with the resumer's
 * _swift_tsan_release(task). TSan then reports a false race between the resumer's read of the
 * continuation context and the task's later reuse of that task-allocator memory. Acquiring on the
 * task's address after the wait records the ordering the runtime established with its atomics.
 */
extern void __tsan_acquire(void *addr) __attribute__((weak));

static inline void connpool_tsan_acquire(const void *addr) {
    if (__tsan_acquire) __tsan_acquire((void *)addr);
}
#endif

/*
 * redisBufferWrite() of hiredis 0.14.1 with one change: it writes with send(..., MSG_NOSIGNAL) instead of
 * write(), so writing to a connection the server has closed fails with EPIPE instead of raising SIGPIPE
 * (which kills the process unless the whole process ignores SIGPIPE).
 *
 * Returns REDIS_OK when (part of) the output buffer was written or the socket would block (EAGAIN), with
 * *done set to 1 once the buffer is empty; REDIS_ERR after an I/O error, with the context's err set to
 * REDIS_ERR_IO and *error_number to the errno of send().
 */
static inline int connpool_redisBufferWriteNoSignal(redisContext *c, int *done, int *error_number) {
    if (c->err) return REDIS_ERR;
    size_t len = sdslen(c->obuf);
    if (len > 0) {
        ssize_t written = send(c->fd, c->obuf, len, MSG_NOSIGNAL);
        if (written == -1) {
            int code = errno;
            if (code != EAGAIN && code != EWOULDBLOCK && code != EINTR) {
                *error_number = code;
                c->err = REDIS_ERR_IO;
                snprintf(c->errstr, sizeof(c->errstr), "send failed (errno %d)", code);
                return REDIS_ERR;
            }
        } else if (written > 0) {
            if ((size_t)written == len) {
                sdsfree(c->obuf);
                c->obuf = sdsempty();
            } else {
                sdsrange(c->obuf, (int)written, -1);
            }
        }
    }
    if (done != NULL) *done = (sdslen(c->obuf) == 0);
    return REDIS_OK;
}

/* The number of bytes buffered in the reader (read but not yet consumed by the parser, plus consumed
   bytes not yet trimmed): grows exactly when redisBufferRead() read something. */
static inline size_t connpool_redisReaderLength(const redisContext *c) {
    return c->reader->len;
}

/* Marks a context made by redisConnectFd() as non-blocking (hiredis then treats EAGAIN as "try later"). */
static inline void connpool_redisSetNonBlockingFlag(redisContext *c) {
    c->flags &= ~REDIS_BLOCK;
}

/*
 * ThreadSanitizer happens-before annotation (a no-op unless the process runs with TSan: the weak
 * __tsan_acquire is then provided by the TSan runtime, otherwise it is null).
 *
 * Why: when a continuation is resumed before its task has suspended (the I/O reactor resumes the
 * instant epoll reports the socket), the Swift 6.3 runtime's swift_continuation_await takes the
 * "already resumed" path without the _swift_tsan_acquire that pairs with the resumer's
 * _swift_tsan_release(task). TSan then reports a false race between the resumer's read of the
 * continuation context and the task's later reuse of that task-allocator memory. Acquiring on the
 * task's address after the wait records the ordering the runtime established with its atomics.
 */
extern void __tsan_acquire(void *addr) __attribute__((weak));

static inline void connpool_tsan_acquire(const void *addr) {
    if (__tsan_acquire) __tsan_acquire((void *)addr);
}
#endif
