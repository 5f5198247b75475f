// How many times OpenSSL itself allocates per request/reply (PING -> +PONG, one TLS record each way),
// counted with CRYPTO_set_mem_functions: no Swift, no pool, no interposer. Used to attribute the extra
// mallocs per command of `redis socket/PING TLS` (Benchmarks/README.md, "TLS").
//
//   cc -O2 -o /tmp/openssl-record-mallocs Benchmarks/Tools/openssl-record-mallocs.c -lssl -lcrypto
//   /tmp/openssl-record-mallocs TLS_PORT CA_FILE [1]        # 1: non-blocking socket, poll on WANT_READ
//   TLS12=1 /tmp/openssl-record-mallocs TLS_PORT CA_FILE    # at most TLS 1.2
//
// TLS_PORT: a redis-server --tls-port on 127.0.0.1 whose certificate (IP SAN 127.0.0.1) chains to CA_FILE.
#include <openssl/ssl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static long mallocs, reallocs;
static void *m(size_t n, const char *f, int l) { mallocs++; return malloc(n); }
static void *r(void *p, size_t n, const char *f, int l) { reallocs++; return realloc(p, n); }
static void fr(void *p, const char *f, int l) { free(p); }
int main(int argc, char **argv) {
  CRYPTO_set_mem_functions(m, r, fr);
  if (argc < 3) { fprintf(stderr, "usage: %s TLS_PORT CA_FILE [nonblock]   (TLS12=1: at most TLS 1.2)\n", argv[0]); return 2; }
  int port = atoi(argv[1]);
  const char *caFile = argv[2];
  int nonblock = argc > 3 && atoi(argv[3]);
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_load_verify_locations(ctx, caFile, NULL);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  if (getenv("TLS12")) SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(port); a.sin_addr.s_addr = htonl(0x7f000001);
  if (connect(fd, (void*)&a, sizeof a)) { perror("connect"); return 1; }
  int one = 1; setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  SSL *ssl = SSL_new(ctx); SSL_set_fd(ssl, fd);
  if (SSL_connect(ssl) != 1) { ERR_print_errors_fp(stderr); return 1; }
  if (nonblock) fcntl(fd, F_SETFL, O_NONBLOCK);
  char buf[1024]; size_t done;
  long wantReads = 0;
  for (int round = 0; round < 2; round++) {
    long m0 = mallocs, r0 = reallocs; wantReads = 0;
    int N = 1000;
    for (int i = 0; i < N; i++) {
      ERR_clear_error();
      if (SSL_write_ex(ssl, "PING\r\n", 6, &done) != 1) { fprintf(stderr, "write\n"); return 1; }
      for (;;) {
        ERR_clear_error();
        if (SSL_read_ex(ssl, buf, sizeof buf, &done) == 1) break;
        int e = SSL_get_error(ssl, 0);
        if (e != SSL_ERROR_WANT_READ) { fprintf(stderr, "read %d\n", e); return 1; }
        wantReads++;
        struct pollfd p = {fd, POLLIN, 0}; poll(&p, 1, 1000);
      }
    }
    printf("round %d nonblock=%d: %.2f OpenSSL mallocs/cmd, %.2f reallocs/cmd, %.2f WANT_READ/cmd\n", round, nonblock,
           (double)(mallocs - m0) / N, (double)(reallocs - r0) / N, (double)wantReads / N);
  }
  return 0;
}
