/*
 * bulk: one-connection throughput client for the txproxy benchmarks.
 *
 *   bulk -p PORT [-h HOST] [-C TARGET:PORT] [-m send|recv] [-n BYTES] [-b BUFSIZE] [-T TIMEOUT_S]
 *
 * Connects (optionally through an HTTP CONNECT tunnel: sends
 * "CONNECT TARGET HTTP/1.1" and requires a 200 head), then talks to the
 * bench backend (backend.c):
 *   send: writes an 8-byte big-endian count N, then N bytes; the sink answers
 *         "OK\n" once it has received all N; the clock stops on that answer.
 *   recv: writes the 8-byte count N; the source sends N bytes; the clock stops
 *         when the N-th byte is read.
 * Prints one JSON line: bytes, seconds, GB/s (10^9 bytes/s), own CPU use.
 * Gives up (exit 1) after TIMEOUT_S seconds (default 120).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_self(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static double deadline;

static void die(const char *m) {
    fprintf(stderr, "bulk: %s (%s)\n", m, strerror(errno));
    printf("{\"error\": \"%s\"}\n", m);
    exit(1);
}

/* wait until fd is ready for `ev` or the deadline passes */
static void waitfd(int fd, short ev) {
    struct pollfd p = { .fd = fd, .events = ev };
    double left = deadline - now();
    if (left <= 0) { errno = ETIMEDOUT; die("timeout"); }
    int r = poll(&p, 1, (int)(left * 1000) + 1);
    if (r == 0) { errno = ETIMEDOUT; die("timeout"); }
}

static void write_all(int fd, const char *b, size_t n) {
    while (n) {
        waitfd(fd, POLLOUT);
        ssize_t w = send(fd, b, n, MSG_DONTWAIT);
        if (w < 0) { if (errno == EAGAIN || errno == EINTR) continue; die("write"); }
        b += w;
        n -= w;
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *target = NULL, *mode = "send";
    int port = 0, opt;
    uint64_t total = 1ULL << 30;
    size_t bufsz = 128 * 1024;
    double timeout = 120;
    while ((opt = getopt(argc, argv, "h:p:C:m:n:b:T:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'C': target = optarg; break;
        case 'm': mode = optarg; break;
        case 'n': total = strtoull(optarg, NULL, 10); break;
        case 'b': bufsz = strtoul(optarg, NULL, 10); break;
        case 'T': timeout = atof(optarg); break;
        default:
            fprintf(stderr, "usage: %s -p PORT [-h HOST] [-C TARGET:PORT] [-m send|recv] [-n BYTES] [-b BUFSIZE] [-T TIMEOUT_S]\n", argv[0]);
            return 2;
        }
    }
    int sending = strcmp(mode, "send") == 0;
    if (!port || (!sending && strcmp(mode, "recv") != 0) || !total || bufsz < 1024) {
        fprintf(stderr, "bulk: bad arguments\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    deadline = now() + timeout;
    char *buf = malloc(bufsz);
    memset(buf, 'b', bufsz);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) die("HOST must be an IPv4 address");
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    if (target) {
        char req[512], head[2048];
        int n = snprintf(req, sizeof req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target), got = 0;
        write_all(fd, req, n);
        /* read byte by byte so nothing past the head is consumed */
        while (got < (int)sizeof head - 1) {
            waitfd(fd, POLLIN);
            ssize_t r = recv(fd, head + got, 1, MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) die("proxy closed before the CONNECT answer");
            got++;
            head[got] = 0;
            if (got >= 4 && memcmp(head + got - 4, "\r\n\r\n", 4) == 0) break;
        }
        if (strncmp(head, "HTTP/1.", 7) != 0 || strncmp(head + 9, "200", 3) != 0) {
            errno = 0;
            die("CONNECT not answered with 200");
        }
    }
    unsigned char hdr[8];
    for (int i = 0; i < 8; i++) hdr[i] = (unsigned char)(total >> (56 - 8 * i));
    double t0 = now(), c0 = cpu_self();
    write_all(fd, (char *)hdr, 8);
    uint64_t done = 0;
    if (sending) {
        while (done < total) {
            size_t n = total - done < bufsz ? total - done : bufsz;
            write_all(fd, buf, n);
            done += n;
        }
        char ok[3];
        int got = 0;
        while (got < 3) {
            waitfd(fd, POLLIN);
            ssize_t r = recv(fd, ok + got, 3 - got, MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) die("connection closed before the sink's answer");
            got += r;
        }
    } else {
        while (done < total) {
            waitfd(fd, POLLIN);
            ssize_t r = recv(fd, buf, bufsz, MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) die("connection closed before all bytes arrived");
            done += r;
        }
    }
    double el = now() - t0, cpu = cpu_self() - c0;
    close(fd);
    printf("{\"bytes\": %llu, \"seconds\": %.4f, \"gbps\": %.4f, \"gen_cpu\": %.3f, \"mode\": \"%s\"}\n",
           (unsigned long long)done, el, done / el / 1e9, cpu / el, mode);
    return 0;
}
