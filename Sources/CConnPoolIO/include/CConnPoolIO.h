#ifndef CCONNPOOLIO_H
#define CCONNPOOLIO_H

// What ConnPoolIO needs from glibc beyond Swift's Glibc module.

// The CPU the calling thread runs on (-1 on error). glibc declares it only with _GNU_SOURCE, which
// Swift's Glibc module is built without; the prototype is glibc's own. Since glibc 2.35 it reads the
// kernel-maintained rseq area (no system call, about a nanosecond); older ones use the vDSO.
int sched_getcpu(void);

#endif
