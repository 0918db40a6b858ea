/*
 * connrate: connection / tunnel set-up rate load generator (epoll, one thread).
 *
 *   connrate -p PORT [-h HOST] [-c CLIENTS] [-t SECONDS] [-C TARGET:PORT]
 *            [-s PAYLOAD_BYTES] [-T OP_TIMEOUT_MS] [-H HOLD_COUNT]
 *
 * Rate mode (default): CLIENTS parallel slots each repeat, for SECONDS:
 *   connect -> [send "CONNECT TARGET HTTP/1.1\r\nHost: TARGET\r\n\r\n",
 *   wait for the head, require status 200] -> send PAYLOAD_BYTES -> read them
 *   back (the backend echoes) -> close.  One such sequence is a "cycle".
 *   Prints one JSON line: cycles, cycles/s, errors by kind, latency
 *   percentiles, and this process's own CPU use (to spot a generator limit).
 *
 * Hold mode (-H N): establish N connections/tunnels (same sequence, at most
 *   CLIENTS in progress at a time) and keep them open.  Prints one JSON line
 *   {"held":...} when done, then waits until stdin reaches EOF (or SECONDS
 *   pass), closes everything and prints a final JSON line with how many of
 *   the held connections were closed by the peer meanwhile.
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { S_IDLE, S_CONNECTING, S_HEAD, S_ECHO, S_HELD };

struct slot {
    int fd;
    int state;
    int got;          /* bytes of head or echo received */
    double started;   /* cycle start */
    double deadline;  /* current operation deadline */
    char head[1024];
};

static struct sockaddr_in dst;
static int ep;
static int use_connect;
static char req[512];
static int reqlen;
static char *payload;
static int payload_len = 64;
static double op_timeout = 5.0;
static int hold_mode;

static long cycles, e_connect, e_reset, e_status, e_timeout, e_short;
static long held, held_closed;
#define LATB 200000 /* 10 us buckets up to 2 s */
static long lat_hist[LATB + 1];

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

static void slot_close(struct slot *s) {
    if (s->fd >= 0) close(s->fd); /* the only descriptor: also leaves epoll */
    s->fd = -1;
    s->state = S_IDLE;
}

static void slot_event(struct slot *s, int idx, uint32_t ev);

/* one epoll registration per connection, edge-triggered, never modified:
   fewer syscalls per cycle, so the generator is cheaper than the proxy */
static void slot_start(struct slot *s, int idx) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) { e_connect++; s->state = S_IDLE; return; }
    s->fd = fd;
    s->got = 0;
    s->started = now();
    s->deadline = s->started + op_timeout;
    int r = connect(fd, (struct sockaddr *)&dst, sizeof dst);
    if (r < 0 && errno != EINPROGRESS) { e_connect++; slot_close(s); return; }
    s->state = S_CONNECTING;
    struct epoll_event e = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u32 = idx };
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}

static int slot_send_payload(struct slot *s) {
    ssize_t w = write(s->fd, payload, payload_len);
    if (w != payload_len) { e_reset++; slot_close(s); return -1; }
    s->state = S_ECHO;
    s->got = 0;
    return 0;
}

static void cycle_done(struct slot *s) {
    double lat = now() - s->started;
    long b = (long)(lat * 1e5);
    lat_hist[b > LATB ? LATB : b]++;
    if (hold_mode) {
        s->state = S_HELD; /* stays registered: a peer close shows up as EPOLLIN */
        held++;
    } else {
        cycles++;
        slot_close(s);
    }
}

static void slot_event(struct slot *s, int idx, uint32_t ev) {
    char buf[4096];
    (void)idx;
    if (s->state == S_CONNECTING) {
        if (ev & EPOLLERR) { e_connect++; slot_close(s); return; }
        if (!(ev & EPOLLOUT)) return;
        s->deadline = now() + op_timeout;
        if (use_connect) {
            ssize_t w = write(s->fd, req, reqlen);
            if (w < 0 && errno == EAGAIN) return;
            if (w != reqlen) { e_connect++; slot_close(s); return; }
            s->state = S_HEAD;
            s->got = 0;
        } else {
            ssize_t w = write(s->fd, payload, payload_len);
            if (w < 0 && errno == EAGAIN) return;
            if (w != payload_len) { e_connect++; slot_close(s); return; }
            s->state = S_ECHO;
            s->got = 0;
        }
        return;
    }
    if (s->state == S_HEAD) {
        for (;;) {
            ssize_t r = read(s->fd, s->head + s->got, sizeof s->head - 1 - s->got);
            if (r < 0 && errno == EAGAIN) return;
            if (r <= 0) { e_reset++; slot_close(s); return; }
            s->got += r;
            s->head[s->got] = 0;
            char *end = strstr(s->head, "\r\n\r\n");
            if (!end) {
                if (s->got >= (int)sizeof s->head - 1) { e_status++; slot_close(s); return; }
                continue;
            }
            /* "HTTP/1.x 200" and nothing after the head */
            if (strncmp(s->head, "HTTP/1.", 7) != 0 || strncmp(s->head + 9, "200", 3) != 0 ||
                end + 4 != s->head + s->got) {
                e_status++;
                slot_close(s);
                return;
            }
            s->deadline = now() + op_timeout;
            slot_send_payload(s);
            return;
        }
    }
    if (s->state == S_ECHO) {
        for (;;) {
            ssize_t r = read(s->fd, buf, sizeof buf);
            if (r < 0 && errno == EAGAIN) return;
            if (r <= 0) { e_short++; slot_close(s); return; }
            s->got += r;
            if (s->got >= payload_len) { cycle_done(s); return; }
        }
    }
    if (s->state == S_HELD) {
        for (;;) {
            ssize_t r = read(s->fd, buf, sizeof buf);
            if (r < 0 && errno == EAGAIN) return;
            if (r <= 0) { held_closed++; held--; slot_close(s); return; }
        }
    }
}

static double pct(double p, long total) {
    long want = (long)(p * total), acc = 0;
    for (int i = 0; i <= LATB; i++) {
        acc += lat_hist[i];
        if (acc > want) return i * 0.01; /* ms */
    }
    return LATB * 0.01;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *target = NULL;
    int port = 0, clients = 64, opt;
    double seconds = 5;
    long hold_n = 0;
    while ((opt = getopt(argc, argv, "h:p:c:t:C:s:T:H:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': clients = atoi(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'C': target = optarg; break;
        case 's': payload_len = atoi(optarg); break;
        case 'T': op_timeout = atof(optarg) / 1000.0; break;
        case 'H': hold_n = atol(optarg); hold_mode = 1; break;
        default:
            fprintf(stderr, "usage: %s -p PORT [-h HOST] [-c CLIENTS] [-t SECONDS] [-C TARGET:PORT] [-s BYTES] [-T TIMEOUT_MS] [-H HOLD_COUNT]\n", argv[0]);
            return 2;
        }
    }
    if (!port || clients < 1 || payload_len < 1 || payload_len > 4096 || seconds <= 0 || seconds > 3600) {
        fprintf(stderr, "connrate: bad arguments\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) { fprintf(stderr, "connrate: HOST must be an IPv4 address\n"); return 2; }
    if (target) {
        use_connect = 1;
        reqlen = snprintf(req, sizeof req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target);
    }
    payload = malloc(payload_len);
    memset(payload, 'p', payload_len);
    ep = epoll_create1(0);

    long nslots = hold_mode ? hold_n : clients;
    struct slot *slots = calloc(nslots, sizeof *slots);
    for (long i = 0; i < nslots; i++) { slots[i].fd = -1; slots[i].state = S_IDLE; }

    double t0 = now(), cpu0 = cpu_self();
    double end = t0 + seconds;
    long next = 0; /* hold mode: next slot to start */
    int inflight = 0;
    struct epoll_event evs[1024];
    double last_scan = t0;

    if (!hold_mode) {
        for (long i = 0; i < nslots; i++) slot_start(&slots[i], i);
    }
    for (;;) {
        double t = now();
        if (t >= end) break;
        if (hold_mode) {
            /* keep at most `clients` attempts in progress */
            inflight = 0;
            for (long i = 0; i < next; i++)
                if (slots[i].state != S_IDLE && slots[i].state != S_HELD) inflight++;
            while (next < nslots && inflight < clients) { slot_start(&slots[next], next); next++; inflight++; }
            if (next >= nslots && inflight == 0) break;
        }
        int n = epoll_wait(ep, evs, 1024, 50);
        for (int i = 0; i < n; i++) {
            long idx = evs[i].data.u32;
            slot_event(&slots[idx], idx, evs[i].events);
            if (!hold_mode && slots[idx].state == S_IDLE && now() < end) slot_start(&slots[idx], idx);
        }
        t = now();
        if (t - last_scan > 0.1) {
            last_scan = t;
            for (long i = 0; i < (hold_mode ? next : nslots); i++) {
                struct slot *s = &slots[i];
                if (s->state != S_IDLE && s->state != S_HELD && t > s->deadline) {
                    e_timeout++;
                    slot_close(s);
                    if (!hold_mode) slot_start(s, i);
                }
                if (!hold_mode && s->state == S_IDLE && t < end) slot_start(s, i);
            }
        }
    }
    double el = now() - t0, cpu = cpu_self() - cpu0;
    long total = hold_mode ? held : cycles;
    long errors = e_connect + e_reset + e_status + e_timeout + e_short;
    if (!hold_mode) {
        printf("{\"cycles\": %ld, \"seconds\": %.3f, \"rate\": %.1f, \"errors\": %ld, "
               "\"e_connect\": %ld, \"e_reset\": %ld, \"e_status\": %ld, \"e_timeout\": %ld, \"e_short\": %ld, "
               "\"p50_ms\": %.2f, \"p99_ms\": %.2f, \"gen_cpu\": %.3f, \"clients\": %d}\n",
               cycles, el, cycles / el, errors, e_connect, e_reset, e_status, e_timeout, e_short,
               pct(0.5, total), pct(0.99, total), cpu / el, clients);
        fflush(stdout);
        return 0;
    }
    /* hold mode: report, wait for stdin EOF (or the time limit), close all */
    printf("{\"held\": %ld, \"wanted\": %ld, \"seconds\": %.3f, \"errors\": %ld, "
           "\"e_connect\": %ld, \"e_reset\": %ld, \"e_status\": %ld, \"e_timeout\": %ld, \"e_short\": %ld}\n",
           held, hold_n, el, errors, e_connect, e_reset, e_status, e_timeout, e_short);
    fflush(stdout);
    struct epoll_event e = { .events = EPOLLIN, .data.u32 = 0xffffffffu };
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &e);
    double hold_end = now() + seconds;
    int stdin_done = 0;
    while (!stdin_done && now() < hold_end) {
        int n = epoll_wait(ep, evs, 1024, 200);
        for (int i = 0; i < n; i++) {
            uint32_t idx = evs[i].data.u32;
            if (idx == 0xffffffffu) {
                char b[256];
                ssize_t r = read(0, b, sizeof b);
                if (r <= 0) stdin_done = 1;
                continue;
            }
            slot_event(&slots[idx], idx, evs[i].events);
        }
    }
    long still = 0;
    for (long i = 0; i < nslots; i++) {
        if (slots[i].state == S_HELD) still++;
        if (slots[i].fd >= 0) { close(slots[i].fd); slots[i].fd = -1; }
    }
    printf("{\"released\": %ld, \"closed_by_peer\": %ld}\n", still, held_closed);
    fflush(stdout);
    return 0;
}
