/*
 * backend: an epoll echo / sink / source server for the txproxy benchmarks,
 * so that the backend is never the bottleneck.
 *
 *   backend [-a ADDR] [-e ECHO_PORT] [-s SINK_PORT] [-o SOURCE_PORT] [-t MAX_SECONDS]
 *
 * Ports default to 0 (the kernel picks); the chosen ports are printed on one
 * line on stdout:  READY echo=P sink=P source=P
 *
 *   echo:   writes back every byte it reads (no buffering beyond one chunk:
 *           reading pauses while a write is pending).
 *   sink:   reads an 8-byte big-endian count N, then N bytes, then answers
 *           "OK\n" (so a client can time delivery without relying on
 *           half-close); anything after is discarded; closes on EOF.
 *   source: reads an 8-byte big-endian count N, writes N bytes, then waits
 *           for the client to close.
 *
 * Single-threaded, level-triggered epoll.  Exits after MAX_SECONDS
 * (default 3600) or on SIGTERM/SIGINT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXFD 65536
#define BUFSZ (256 * 1024)
#define ECHOBUF (64 * 1024)

enum { T_NONE, T_LISTEN_ECHO, T_LISTEN_SINK, T_LISTEN_SOURCE, T_ECHO, T_SINK, T_SOURCE };

struct conn {
    int type;
    /* echo */
    char *pend;
    int pend_off, pend_len;
    /* sink/source */
    unsigned char hdr[8];
    int hdr_len;
    uint64_t remaining;
    int done;
};

static struct conn conns[MAXFD];
static int ep;
static volatile sig_atomic_t stop;
static char bigbuf[BUFSZ];

static void on_sig(int s) { (void)s; stop = 1; }

static int listen_on(const char *addr, int port, int *outport) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    if (fd < 0) { perror("socket"); exit(1); }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, addr, &sa.sin_addr);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("bind"); exit(1); }
    if (listen(fd, 4096) < 0) { perror("listen"); exit(1); }
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    *outport = ntohs(sa.sin_port);
    return fd;
}

static void set_events(int fd, uint32_t ev, int op) {
    struct epoll_event e;
    e.events = ev;
    e.data.fd = fd;
    if (epoll_ctl(ep, op, fd, &e) < 0 && op != EPOLL_CTL_DEL) perror("epoll_ctl");
}

static void close_conn(int fd) {
    struct conn *c = &conns[fd];
    close(fd); /* closing the only descriptor also removes it from epoll */
    free(c->pend);
    memset(c, 0, sizeof *c);
}

static void do_accept(int lfd, int type) {
    for (int i = 0; i < 256; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) return;
        if (fd >= MAXFD) { close(fd); continue; }
        memset(&conns[fd], 0, sizeof conns[fd]);
        conns[fd].type = type;
        set_events(fd, EPOLLIN, EPOLL_CTL_ADD);
    }
}

static void echo_event(int fd, uint32_t ev) {
    struct conn *c = &conns[fd];
    if (c->pend_len > c->pend_off) {
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        ssize_t w = write(fd, c->pend + c->pend_off, c->pend_len - c->pend_off);
        if (w < 0) { if (errno == EAGAIN) return; close_conn(fd); return; }
        c->pend_off += w;
        if (c->pend_off == c->pend_len) {
            c->pend_off = c->pend_len = 0;
            set_events(fd, EPOLLIN, EPOLL_CTL_MOD);
        }
        return;
    }
    if (!c->pend) c->pend = malloc(ECHOBUF);
    ssize_t r = read(fd, c->pend, ECHOBUF);
    if (r == 0) { close_conn(fd); return; }
    if (r < 0) { if (errno == EAGAIN) return; close_conn(fd); return; }
    ssize_t w = write(fd, c->pend, r);
    if (w < 0) { if (errno != EAGAIN) { close_conn(fd); return; } w = 0; }
    if (w < r) {
        c->pend_off = w;
        c->pend_len = r;
        set_events(fd, EPOLLOUT, EPOLL_CTL_MOD);
    }
}

/* read the 8-byte header; returns 1 when complete */
static int read_hdr(int fd, struct conn *c) {
    while (c->hdr_len < 8) {
        ssize_t r = read(fd, c->hdr + c->hdr_len, 8 - c->hdr_len);
        if (r == 0) { close_conn(fd); return -1; }
        if (r < 0) { if (errno == EAGAIN) return 0; close_conn(fd); return -1; }
        c->hdr_len += r;
    }
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n = (n << 8) | c->hdr[i];
    c->remaining = n;
    return 1;
}

static void sink_event(int fd) {
    struct conn *c = &conns[fd];
    if (c->hdr_len < 8) {
        int h = read_hdr(fd, c);
        if (h <= 0) return;
    }
    for (int i = 0; i < 64; i++) {
        ssize_t r = read(fd, bigbuf, BUFSZ);
        if (r == 0) { close_conn(fd); return; }
        if (r < 0) { if (errno == EAGAIN) return; close_conn(fd); return; }
        if (!c->done) {
            if ((uint64_t)r >= c->remaining) {
                c->remaining = 0;
                c->done = 1;
                if (write(fd, "OK\n", 3) != 3) { close_conn(fd); return; }
            } else {
                c->remaining -= r;
            }
        }
    }
}

static void source_event(int fd, uint32_t ev) {
    struct conn *c = &conns[fd];
    if (c->hdr_len < 8) {
        int h = read_hdr(fd, c);
        if (h <= 0) return;
        if (c->remaining) set_events(fd, EPOLLOUT | EPOLLIN, EPOLL_CTL_MOD);
        return;
    }
    if (ev & EPOLLIN) {
        ssize_t r = read(fd, bigbuf, BUFSZ);
        if (r == 0 || (r < 0 && errno != EAGAIN)) { close_conn(fd); return; }
    }
    if ((ev & EPOLLOUT) && c->remaining) {
        for (int i = 0; i < 64 && c->remaining; i++) {
            size_t n = c->remaining < BUFSZ ? c->remaining : BUFSZ;
            ssize_t w = write(fd, bigbuf, n);
            if (w < 0) { if (errno == EAGAIN) return; close_conn(fd); return; }
            c->remaining -= w;
        }
        if (!c->remaining) set_events(fd, EPOLLIN, EPOLL_CTL_MOD);
    }
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1";
    int pe = 0, ps = 0, po = 0, opt;
    long maxsec = 3600;
    while ((opt = getopt(argc, argv, "a:e:s:o:t:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'e': pe = atoi(optarg); break;
        case 's': ps = atoi(optarg); break;
        case 'o': po = atoi(optarg); break;
        case 't': maxsec = atol(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-a ADDR] [-e ECHO_PORT] [-s SINK_PORT] [-o SOURCE_PORT] [-t MAX_SECONDS]\n", argv[0]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_sig);
    signal(SIGINT, on_sig);
    memset(bigbuf, 'x', sizeof bigbuf);
    ep = epoll_create1(0);
    int le = listen_on(addr, pe, &pe), ls = listen_on(addr, ps, &ps), lo = listen_on(addr, po, &po);
    conns[le].type = T_LISTEN_ECHO;
    conns[ls].type = T_LISTEN_SINK;
    conns[lo].type = T_LISTEN_SOURCE;
    set_events(le, EPOLLIN, EPOLL_CTL_ADD);
    set_events(ls, EPOLLIN, EPOLL_CTL_ADD);
    set_events(lo, EPOLLIN, EPOLL_CTL_ADD);
    printf("READY echo=%d sink=%d source=%d\n", pe, ps, po);
    fflush(stdout);
    time_t deadline = time(NULL) + maxsec;
    struct epoll_event evs[512];
    while (!stop && time(NULL) < deadline) {
        int n = epoll_wait(ep, evs, 512, 500);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            uint32_t ev = evs[i].events;
            switch (conns[fd].type) {
            case T_LISTEN_ECHO: do_accept(fd, T_ECHO); break;
            case T_LISTEN_SINK: do_accept(fd, T_SINK); break;
            case T_LISTEN_SOURCE: do_accept(fd, T_SOURCE); break;
            case T_ECHO: echo_event(fd, ev); break;
            case T_SINK: sink_event(fd); break;
            case T_SOURCE: source_event(fd, ev); break;
            default: break;
            }
        }
    }
    return 0;
}
