/*
 * gen.c: GWLB-style Geneve load generator and validating receiver for the appliance benchmark.
 *
 * One process, two threads:
 *   - the sender builds GWLB packets (Geneve with the three AWS options + inner IPv4/UDP) and
 *     sends them from `--flows` UDP sockets, each bound to its own source port (one "flow" each,
 *     with its own flow cookie), to DST:6081. The outer IPv4/UDP header is the kernel's.
 *       --mode flood:   sendmmsg batches, round robin over the flows, as fast as it can;
 *       --mode latency: one packet every 1/--rate seconds (absolute-deadline sleeps).
 *     (--mode jitter sends nothing: it only sleeps like the latency sender and reports by how much
 *     each wake-up came late, the machine's own scheduling noise, to read latency tails against.)
 *   - the receiver owns a UDP socket bound to SRC:6081 (where the appliance's replies go), counts
 *     every reply and validates it against what that flow sent: outer UDP source port, Geneve
 *     header and options byte-identical, inner packet as expected (passed unchanged, or rewritten
 *     "weakly typed" -> "strongly typed" with every length and checksum right).
 *
 * Each inner payload starts with a fixed layout (offsets inside the inner UDP payload):
 *     0  u64  sequence number (host order)
 *     8  u64  send time, CLOCK_MONOTONIC ns (host order)
 *    16  u32  flow index
 *    20  4    magic "GWBN"
 *    24  12   "weakly typed"   (before any text a rewrite changes, so nothing above moves)
 *    36  ...  filler a..z
 * The inner UDP checksum is correct for every packet: the sum of everything but the first 16
 * payload bytes is precomputed per flow, the 8 words of sequence and time are added per packet.
 *
 * Every loop is bounded in packets and in time. The result is one JSON object on stdout.
 * Build: gcc -O2 -Wall -Wextra -pthread -o gen gen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define GENEVE_PORT 6081
#define GENEVE_LEN 40 /* 8-byte header + 32 bytes of AWS options */
#define IP_LEN 20
#define UDP_LEN 8
#define INNER_OFF GENEVE_LEN
#define UDP_OFF (GENEVE_LEN + IP_LEN)
#define PAY_OFF (GENEVE_LEN + IP_LEN + UDP_LEN) /* = 68, the GWLB overhead */
#define P_SEQ 0
#define P_TIME 8
#define P_FLOW 16
#define P_MAGIC 20
#define P_TEXT 24
#define STAMP_BYTES 16 /* sequence + time: what changes per packet */
#define MIN_PAYLOAD 36
#define MAX_PAYLOAD 8400 /* keeps the inner packet under GWLB's 8500 even after a rewrite */
#define MAX_FLOWS 64
#define MAX_BATCH 64
#define RX_BATCH 64
#define RX_SLOT 9216
#define MAX_PACKETS 50000000ULL
#define MAX_SECONDS 60.0
#define INNER_SPORT_BASE 40000
#define PASS_PORT 5000
#define REWRITE_PORT 3000
#define DRAIN_IDLE_NS 300000000LL /* receiver stops 300 ms after the last reply ... */
#define DRAIN_MAX_NS 3000000000LL /* ... or 3 s after the sender stopped, whichever is first */
#define MAX_SAMPLES 3 /* hex dumps of invalid replies in the report */

static const char WEAK[] = "weakly typed";
static const char STRONG[] = "strongly typed";

enum err_kind { E_PEER, E_LENGTH, E_TRUNC, E_GENEVE, E_INNER_HDR, E_IP_CSUM, E_UDP_CSUM,
                E_PAYLOAD, E_SEQ, E_DUP, E_COUNT };
static const char *const err_names[E_COUNT] = {
    "peer", "length", "truncated", "geneve", "inner_header", "inner_ip_checksum",
    "inner_udp_checksum", "payload", "sequence", "duplicate"};

struct flow {
    int fd;
    uint16_t port;    /* outer UDP source port */
    uint8_t *pkts;    /* batch buffers, pkt_len bytes each (latency mode uses the first) */
    uint32_t base_sum; /* UDP checksum sum without the stamp words */
    uint8_t *expect;  /* the expected reply, stamp zeroed */
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
};

static struct {
    int flood, jitter;
    const char *src, *dst;
    int payload, rewrite, flows, batch;
    double seconds, rate;
    uint64_t max_packets;
    uint16_t base_port;
    int rcvbuf;
} opt = {1, 0, "10.77.200.1", "10.77.200.2", 64, 0, 16, 64, 3.0, 10000.0, 0, 50000, 64 << 20};

static struct flow flows[MAX_FLOWS];
static size_t pkt_len, reply_len;
static struct in_addr src_addr, dst_addr;

/* Sender -> receiver. */
static atomic_int send_done;
static _Atomic int64_t send_end_ns;
static int64_t t_start_ns;

/* Sender results. */
static uint64_t sent, send_calls, partial_sends, seq_used, send_err[4]; /* EAGAIN, ENOBUFS, ECONNREFUSED, other */
static int64_t first_tx_ns, last_tx_ns;

/* Receiver results. */
static uint64_t received, valid, errors[E_COUNT], late_stamps;
static int64_t first_rx_ns, last_rx_ns;
static uint8_t *seen;  /* bitmap over sequence numbers */
static int64_t *rtts;  /* latency mode: round-trip times, ns */
static uint64_t n_rtts;
static int64_t *wakes; /* latency mode: lateness of each paced send's wake-up, ns */
static uint64_t n_wakes;
static char samples[MAX_SAMPLES][600];
static int n_samples;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "gen: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* RFC 1071 ones-complement sum of big-endian 16-bit words (odd tail padded with zero). */
static uint32_t sum16(const uint8_t *p, size_t n, uint32_t sum)
{
    for (; n > 1; p += 2, n -= 2)
        sum += (uint32_t)p[0] << 8 | p[1];
    if (n)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

static uint16_t fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

/* Pseudo header + UDP header + payload sum of the inner datagram at `ip` (checksum field as is). */
static uint32_t udp_sum(const uint8_t *ip, size_t udp_len)
{
    uint32_t s = sum16(ip + 12, 8, 0); /* source and destination addresses */
    s += 17 + (uint32_t)udp_len;
    return sum16(ip + IP_LEN, udp_len, s);
}

static void set_ip_checksum(uint8_t *ip)
{
    put16(ip + 10, 0);
    put16(ip + 10, (uint16_t)~fold(sum16(ip, IP_LEN, 0)));
}

/* Geneve header + AWS options (class 0x0108: type 1 endpoint id, 2 attachment id, 3 cookie). */
static void write_geneve(uint8_t *g, uint32_t cookie)
{
    static const uint8_t head[8] = {0x08, 0x00, 0x08, 0x00, 0, 0, 0, 0}; /* ver 0, 8 words, IPv4 */
    memcpy(g, head, 8);
    uint8_t *o = g + 8;
    o[0] = 0x01; o[1] = 0x08; o[2] = 1; o[3] = 2; /* endpoint id, 2 words */
    memcpy(o + 4, "\x0e\x9d\x2a\x11\x42\x00\x00\x01", 8);
    o += 12;
    o[0] = 0x01; o[1] = 0x08; o[2] = 2; o[3] = 2; /* attachment id, 2 words */
    memcpy(o + 4, "\x6a\x70\x17\x00\x00\xbe\xef\x02", 8);
    o += 12;
    o[0] = 0x01; o[1] = 0x08; o[2] = 3; o[3] = 1; /* flow cookie, 1 word */
    o[4] = cookie >> 24; o[5] = cookie >> 16; o[6] = cookie >> 8; o[7] = cookie;
}

/* The packet flow f sends (stamp zeroed, checksums for that state) into out. */
static void build_packet(uint8_t *out, int f, int payload, int rewrite)
{
    memset(out, 0, PAY_OFF + (size_t)payload);
    write_geneve(out, 0xc0de0000u | (uint32_t)(f * 2654435761u >> 16)); /* distinct per flow */
    uint8_t *ip = out + INNER_OFF, *udp = out + UDP_OFF, *pay = out + PAY_OFF;
    ip[0] = 0x45;
    put16(ip + 2, (uint16_t)(IP_LEN + UDP_LEN + payload));
    put16(ip + 4, (uint16_t)(f + 1)); /* identification */
    put16(ip + 6, 0x4000);           /* DF */
    ip[8] = 64;
    ip[9] = 17;
    memcpy(ip + 12, "\x0a\x4d\x01\x02", 4); /* 10.77.1.2 */
    memcpy(ip + 16, "\x0a\x4d\x02\x02", 4); /* 10.77.2.2 */
    set_ip_checksum(ip);
    put16(udp, (uint16_t)(INNER_SPORT_BASE + f));
    put16(udp + 2, rewrite ? REWRITE_PORT : PASS_PORT);
    put16(udp + 4, (uint16_t)(UDP_LEN + payload));
    uint32_t fl = (uint32_t)f;
    memcpy(pay + P_FLOW, &fl, 4);
    memcpy(pay + P_MAGIC, "GWBN", 4);
    memcpy(pay + P_TEXT, WEAK, 12);
    for (int i = P_TEXT + 12; i < payload; i++)
        pay[i] = (uint8_t)('a' + i % 26);
    uint16_t c = (uint16_t)~fold(udp_sum(ip, UDP_LEN + (size_t)payload));
    put16(udp + 6, c ? c : 0xffff);
}

/* The reply expected for flow f: the same packet, or its rewrite (stamp zeroed). */
static void build_expected(uint8_t *out, const uint8_t *sent_pkt, int payload, int rewrite)
{
    if (!rewrite) {
        memcpy(out, sent_pkt, pkt_len);
        return;
    }
    int grow = (int)(sizeof STRONG - sizeof WEAK);
    memcpy(out, sent_pkt, PAY_OFF + P_TEXT);
    memcpy(out + PAY_OFF + P_TEXT, STRONG, sizeof STRONG - 1);
    memcpy(out + PAY_OFF + P_TEXT + sizeof STRONG - 1, sent_pkt + PAY_OFF + P_TEXT + 12,
           (size_t)payload - P_TEXT - 12);
    uint8_t *ip = out + INNER_OFF, *udp = out + UDP_OFF;
    put16(ip + 2, (uint16_t)(IP_LEN + UDP_LEN + payload + grow));
    set_ip_checksum(ip);
    put16(udp + 4, (uint16_t)(UDP_LEN + payload + grow));
    put16(udp + 6, 0);
    uint16_t c = (uint16_t)~fold(udp_sum(ip, UDP_LEN + (size_t)(payload + grow)));
    put16(udp + 6, c ? c : 0xffff);
}

/* Write sequence and time into a packet of flow f and finish its UDP checksum. */
static void stamp(uint8_t *pkt, const struct flow *fl, uint64_t seq, int64_t t)
{
    uint8_t *pay = pkt + PAY_OFF;
    memcpy(pay + P_SEQ, &seq, 8);
    memcpy(pay + P_TIME, &t, 8);
    uint16_t c = (uint16_t)~fold(sum16(pay, STAMP_BYTES, fl->base_sum));
    put16(pkt + UDP_OFF + 6, c ? c : 0xffff);
}

static void count_send_error(int e)
{
    if (e == EAGAIN || e == EWOULDBLOCK)
        send_err[0]++;
    else if (e == ENOBUFS)
        send_err[1]++;
    else if (e == ECONNREFUSED)
        send_err[2]++;
    else
        send_err[3]++;
}

static void note_sent(int n, int64_t t)
{
    if (n <= 0)
        return;
    if (!sent)
        first_tx_ns = t;
    last_tx_ns = t;
    sent += (uint64_t)n;
}

static void *sender(void *arg)
{
    (void)arg;
    int64_t deadline = t_start_ns + (int64_t)(opt.seconds * 1e9);
    int64_t t = now_ns();
    if (opt.flood) {
        int f = 0;
        /* Bounded: every round consumes `batch` sequence numbers, sent or not. */
        while (seq_used + (uint64_t)opt.batch <= opt.max_packets && t < deadline) {
            struct flow *fl = &flows[f];
            for (int i = 0; i < opt.batch; i++)
                stamp(fl->pkts + (size_t)i * pkt_len, fl, seq_used++, t);
            int n = sendmmsg(fl->fd, fl->msgs, (unsigned)opt.batch, MSG_DONTWAIT);
            send_calls++;
            t = now_ns();
            if (n < 0) {
                count_send_error(errno);
            } else {
                if (n < opt.batch)
                    partial_sends++; /* the rest of the batch is not retried: counted as unsent */
                note_sent(n, t);
            }
            f = (f + 1) % opt.flows;
        }
    } else {
        int64_t interval = (int64_t)(1e9 / opt.rate), next = t;
        int f = 0;
        while (seq_used < opt.max_packets && t < deadline) {
            struct timespec ts = {next / 1000000000LL, next % 1000000000LL};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
            struct flow *fl = &flows[f];
            t = now_ns();
            if (n_wakes < opt.max_packets)
                wakes[n_wakes++] = t - next; /* how late the sleep returned: the machine's noise */
            stamp(fl->pkts, fl, seq_used++, t);
            ssize_t n = send(fl->fd, fl->pkts, pkt_len, MSG_DONTWAIT);
            send_calls++;
            if (n < 0)
                count_send_error(errno);
            else
                note_sent(1, t);
            f = (f + 1) % opt.flows;
            next += interval;
            if (t - next > 10000000LL)
                next = t; /* after a 10 ms stall, go on from now instead of bursting to catch up */
        }
    }
    atomic_store(&send_end_ns, now_ns());
    atomic_store(&send_done, 1);
    return NULL;
}

static void add_sample(enum err_kind k, const uint8_t *d, size_t n, uint16_t port)
{
    if (n_samples >= MAX_SAMPLES)
        return;
    char *s = samples[n_samples++];
    int w = snprintf(s, sizeof samples[0], "%s: %zu bytes from port %u: ", err_names[k], n, port);
    for (size_t i = 0; i < n && w < (int)sizeof samples[0] - 3; i++)
        w += snprintf(s + w, sizeof samples[0] - (size_t)w, "%02x", d[i]);
}

/* Validate one reply; return E_COUNT when it is right. */
static enum err_kind check_reply(const uint8_t *d, size_t n, const struct sockaddr_in *peer,
                                 int flags, int64_t t_rx)
{
    if (flags & MSG_TRUNC)
        return E_TRUNC;
    int f = (int)ntohs(peer->sin_port) - (int)opt.base_port;
    if (peer->sin_addr.s_addr != dst_addr.s_addr || f < 0 || f >= opt.flows)
        return E_PEER;
    if (n != reply_len)
        return E_LENGTH;
    const uint8_t *e = flows[f].expect;
    if (memcmp(d, e, GENEVE_LEN))
        return E_GENEVE;
    /* Inner IPv4 header except its checksum, then UDP ports and length. */
    if (memcmp(d + INNER_OFF, e + INNER_OFF, 10) || memcmp(d + INNER_OFF + 12, e + INNER_OFF + 12, 8)
        || memcmp(d + UDP_OFF, e + UDP_OFF, 6))
        return E_INNER_HDR;
    if (fold(sum16(d + INNER_OFF, IP_LEN, 0)) != 0xffff)
        return E_IP_CSUM;
    if (memcmp(d + PAY_OFF + STAMP_BYTES, e + PAY_OFF + STAMP_BYTES,
               reply_len - PAY_OFF - STAMP_BYTES))
        return E_PAYLOAD;
    if (get16(d + UDP_OFF + 6) == 0 || fold(udp_sum(d + INNER_OFF, reply_len - UDP_OFF)) != 0xffff)
        return E_UDP_CSUM;
    uint64_t seq;
    int64_t t_tx;
    memcpy(&seq, d + PAY_OFF + P_SEQ, 8);
    memcpy(&t_tx, d + PAY_OFF + P_TIME, 8);
    if (seq >= opt.max_packets)
        return E_SEQ;
    if (seen[seq >> 3] & (1u << (seq & 7)))
        return E_DUP;
    seen[seq >> 3] |= (uint8_t)(1u << (seq & 7));
    if (t_tx < t_start_ns || t_tx > t_rx)
        late_stamps++; /* cannot happen with a correct stamp; counted, not fatal */
    else if (!opt.flood && n_rtts < opt.max_packets)
        rtts[n_rtts++] = t_rx - t_tx;
    return E_COUNT;
}

static void *receiver(void *arg)
{
    int fd = *(int *)arg;
    static uint8_t buf[RX_BATCH][RX_SLOT];
    static struct sockaddr_in names[RX_BATCH];
    struct mmsghdr msgs[RX_BATCH];
    struct iovec iov[RX_BATCH];
    int64_t hard_stop = t_start_ns + (int64_t)(opt.seconds * 1e9) + DRAIN_MAX_NS + 2000000000LL;
    for (;;) {
        int64_t t = now_ns();
        if (t > hard_stop)
            break;
        if (atomic_load(&send_done)) {
            int64_t end = atomic_load(&send_end_ns);
            int64_t last = last_rx_ns > end ? last_rx_ns : end;
            if (t - last > DRAIN_IDLE_NS || t - end > DRAIN_MAX_NS)
                break;
        }
        for (int i = 0; i < RX_BATCH; i++) {
            iov[i] = (struct iovec){buf[i], RX_SLOT};
            msgs[i].msg_hdr = (struct msghdr){.msg_name = &names[i], .msg_namelen = sizeof names[i],
                                              .msg_iov = &iov[i], .msg_iovlen = 1};
        }
        /* Blocks for the first datagram at most SO_RCVTIMEO, then takes what is queued. */
        int n = recvmmsg(fd, msgs, RX_BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                die("recvmmsg");
            continue;
        }
        int64_t t_rx = now_ns();
        if (!received)
            first_rx_ns = t_rx;
        last_rx_ns = t_rx;
        received += (uint64_t)n;
        for (int i = 0; i < n; i++) {
            enum err_kind k = check_reply(buf[i], msgs[i].msg_len, &names[i],
                                          msgs[i].msg_hdr.msg_flags, t_rx);
            if (k == E_COUNT) {
                valid++;
            } else {
                errors[k]++;
                add_sample(k, buf[i], msgs[i].msg_len > 256 ? 256 : msgs[i].msg_len,
                           ntohs(names[i].sin_port));
            }
        }
    }
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int64_t pct_of(const int64_t *sorted, uint64_t n, double p)
{
    return n ? sorted[(size_t)(p * (double)(n - 1) + 0.5)] : -1;
}

static int64_t pct(double p) { return pct_of(rtts, n_rtts, p); }

static void usage(void)
{
    fprintf(stderr,
            "usage: gen [--mode flood|latency|jitter] [--src IP] [--dst IP] [--payload N] "
            "[--case pass|rewrite]\n"
            "           [--flows N] [--batch N] [--seconds S] [--rate PPS] [--max-packets N] "
            "[--base-port P] [--rcvbuf BYTES]\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    static const struct option longs[] = {
        {"mode", 1, 0, 'm'}, {"src", 1, 0, 's'}, {"dst", 1, 0, 'd'}, {"payload", 1, 0, 'p'},
        {"case", 1, 0, 'c'}, {"flows", 1, 0, 'f'}, {"batch", 1, 0, 'b'}, {"seconds", 1, 0, 't'},
        {"rate", 1, 0, 'r'}, {"max-packets", 1, 0, 'n'}, {"base-port", 1, 0, 'P'},
        {"rcvbuf", 1, 0, 'R'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'm':
            opt.flood = !strcmp(optarg, "flood");
            opt.jitter = !strcmp(optarg, "jitter");
            if (!opt.flood && !opt.jitter && strcmp(optarg, "latency"))
                usage();
            break;
        case 's': opt.src = optarg; break;
        case 'd': opt.dst = optarg; break;
        case 'p': opt.payload = atoi(optarg); break;
        case 'c': opt.rewrite = !strcmp(optarg, "rewrite"); if (!opt.rewrite && strcmp(optarg, "pass")) usage(); break;
        case 'f': opt.flows = atoi(optarg); break;
        case 'b': opt.batch = atoi(optarg); break;
        case 't': opt.seconds = atof(optarg); break;
        case 'r': opt.rate = atof(optarg); break;
        case 'n': opt.max_packets = strtoull(optarg, NULL, 10); break;
        case 'P': opt.base_port = (uint16_t)atoi(optarg); break;
        case 'R': opt.rcvbuf = atoi(optarg); break;
        default: usage();
        }
    }
    if (optind != argc || opt.payload < MIN_PAYLOAD || opt.payload > MAX_PAYLOAD || opt.flows < 1
        || opt.flows > MAX_FLOWS || opt.batch < 1 || opt.batch > MAX_BATCH || !(opt.seconds > 0)
        || opt.seconds > MAX_SECONDS || !(opt.rate >= 1) || opt.rate > 1e6 || opt.rcvbuf < 0
        || opt.base_port < 1024 || opt.base_port > 65535 - MAX_FLOWS)
        usage();
    if (!inet_aton(opt.src, &src_addr) || !inet_aton(opt.dst, &dst_addr))
        usage();
    uint64_t natural = opt.flood ? (uint64_t)(opt.seconds * 5e6) : (uint64_t)(opt.seconds * opt.rate) + 1;
    if (!opt.max_packets || opt.max_packets > natural)
        opt.max_packets = natural;
    if (opt.max_packets > MAX_PACKETS)
        opt.max_packets = MAX_PACKETS;
}

/* --mode jitter: how late absolute-deadline sleeps at --rate wake up, on an otherwise idle CPU. */
static int run_jitter(void)
{
    int64_t interval = (int64_t)(1e9 / opt.rate), next = now_ns();
    int64_t deadline = next + (int64_t)(opt.seconds * 1e9);
    while (n_rtts < opt.max_packets && next < deadline) {
        next += interval;
        struct timespec ts = {next / 1000000000LL, next % 1000000000LL};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
        int64_t late = now_ns() - next;
        rtts[n_rtts++] = late;
        if (late > interval)
            next = now_ns(); /* no catching up: every sample is one sleep's own lateness */
    }
    qsort(rtts, n_rtts, sizeof *rtts, cmp_i64);
    printf("{\"mode\": \"jitter\", \"samples\": %llu, \"late_p50_ns\": %lld, \"late_p90_ns\": %lld, "
           "\"late_p99_ns\": %lld, \"late_p999_ns\": %lld, \"late_max_ns\": %lld}\n",
           (unsigned long long)n_rtts, (long long)pct(0.50), (long long)pct(0.90), (long long)pct(0.99),
           (long long)pct(0.999), (long long)(n_rtts ? rtts[n_rtts - 1] : -1));
    return 0;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* the default 50 us slack would blur 100 us pacing */
    if (opt.jitter) {
        rtts = calloc(opt.max_packets, sizeof *rtts);
        if (!rtts)
            die("calloc");
        return run_jitter();
    }
    pkt_len = PAY_OFF + (size_t)opt.payload;
    reply_len = pkt_len + (opt.rewrite ? sizeof STRONG - sizeof WEAK : 0);
    seen = calloc(opt.max_packets / 8 + 1, 1);
    rtts = opt.flood ? NULL : calloc(opt.max_packets, sizeof *rtts);
    wakes = opt.flood ? NULL : calloc(opt.max_packets, sizeof *wakes);
    if (!seen || (!opt.flood && (!rtts || !wakes)))
        die("calloc");

    /* The receiver's socket first, so no reply ever meets a closed port. */
    int rfd = socket(AF_INET, SOCK_DGRAM, 0);
    if (rfd < 0)
        die("socket");
    if (setsockopt(rfd, SOL_SOCKET, SO_RCVBUFFORCE, &opt.rcvbuf, sizeof opt.rcvbuf) < 0
        && setsockopt(rfd, SOL_SOCKET, SO_RCVBUF, &opt.rcvbuf, sizeof opt.rcvbuf) < 0)
        die("SO_RCVBUF");
    struct timeval tv = {0, 50000};
    if (setsockopt(rfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0)
        die("SO_RCVTIMEO");
    struct sockaddr_in here = {.sin_family = AF_INET, .sin_port = htons(GENEVE_PORT), .sin_addr = src_addr};
    if (bind(rfd, (struct sockaddr *)&here, sizeof here) < 0)
        die("bind receiver to :6081");
    int rcvbuf = 0;
    socklen_t sl = sizeof rcvbuf;
    getsockopt(rfd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, &sl);

    struct sockaddr_in there = {.sin_family = AF_INET, .sin_port = htons(GENEVE_PORT), .sin_addr = dst_addr};
    for (int f = 0; f < opt.flows; f++) {
        struct flow *fl = &flows[f];
        fl->port = (uint16_t)(opt.base_port + f);
        fl->fd = socket(AF_INET, SOCK_DGRAM, 0);
        if (fl->fd < 0)
            die("socket");
        int sndbuf = 4 << 20;
        setsockopt(fl->fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(fl->port), .sin_addr = src_addr};
        if (bind(fl->fd, (struct sockaddr *)&a, sizeof a) < 0)
            die("bind sender");
        if (connect(fl->fd, (struct sockaddr *)&there, sizeof there) < 0)
            die("connect");
        fl->pkts = malloc(pkt_len * (size_t)opt.batch);
        fl->expect = malloc(reply_len);
        if (!fl->pkts || !fl->expect)
            die("malloc");
        build_packet(fl->pkts, f, opt.payload, opt.rewrite);
        build_expected(fl->expect, fl->pkts, opt.payload, opt.rewrite);
        /* The checksum base: everything except the stamp words, checksum field zero. */
        put16(fl->pkts + UDP_OFF + 6, 0);
        uint8_t *ip = fl->pkts + INNER_OFF;
        fl->base_sum = sum16(ip + 12, 8, 17 + UDP_LEN + (uint32_t)opt.payload)
                       + sum16(fl->pkts + UDP_OFF, UDP_LEN, 0)
                       + sum16(fl->pkts + PAY_OFF + STAMP_BYTES, (size_t)opt.payload - STAMP_BYTES, 0);
        for (int i = 0; i < opt.batch; i++) {
            uint8_t *p = fl->pkts + (size_t)i * pkt_len;
            if (i)
                memcpy(p, fl->pkts, pkt_len);
            fl->iov[i] = (struct iovec){p, pkt_len};
            fl->msgs[i].msg_hdr = (struct msghdr){.msg_iov = &fl->iov[i], .msg_iovlen = 1};
        }
    }

    t_start_ns = now_ns();
    pthread_t rx, tx;
    if (pthread_create(&rx, NULL, receiver, &rfd) || pthread_create(&tx, NULL, sender, NULL)) {
        fprintf(stderr, "gen: pthread_create failed\n");
        return 1;
    }
    pthread_join(tx, NULL);
    pthread_join(rx, NULL);

    double send_s = (double)(last_tx_ns - first_tx_ns) / 1e9;
    double rx_s = (double)(last_rx_ns - first_rx_ns) / 1e9;
    uint64_t nerr = 0;
    for (int k = 0; k < E_COUNT; k++)
        nerr += errors[k];
    if (!opt.flood) {
        qsort(rtts, n_rtts, sizeof *rtts, cmp_i64);
        qsort(wakes, n_wakes, sizeof *wakes, cmp_i64);
    }

    printf("{\"mode\": \"%s\", \"case\": \"%s\", \"payload\": %d, \"flows\": %d, \"batch\": %d, "
           "\"packet_bytes\": %zu, \"reply_bytes\": %zu, \"max_packets\": %llu, \"rcvbuf\": %d,\n",
           opt.flood ? "flood" : "latency", opt.rewrite ? "rewrite" : "pass", opt.payload,
           opt.flows, opt.batch, pkt_len, reply_len, (unsigned long long)opt.max_packets, rcvbuf);
    printf(" \"sent\": %llu, \"send_calls\": %llu, \"partial_sends\": %llu, "
           "\"send_errors\": {\"EAGAIN\": %llu, \"ENOBUFS\": %llu, \"ECONNREFUSED\": %llu, \"other\": %llu},\n",
           (unsigned long long)sent, (unsigned long long)send_calls,
           (unsigned long long)partial_sends, (unsigned long long)send_err[0],
           (unsigned long long)send_err[1], (unsigned long long)send_err[2],
           (unsigned long long)send_err[3]);
    printf(" \"send_seconds\": %.6f, \"offered_pps\": %.1f,\n", send_s,
           send_s > 0 ? (double)sent / send_s : 0.0);
    printf(" \"received\": %llu, \"valid\": %llu, \"invalid\": %llu, \"late_stamps\": %llu, "
           "\"receive_seconds\": %.6f, \"returned_pps\": %.1f,\n",
           (unsigned long long)received, (unsigned long long)valid, (unsigned long long)nerr,
           (unsigned long long)late_stamps, rx_s, rx_s > 0 ? (double)received / rx_s : 0.0);
    printf(" \"errors\": {");
    for (int k = 0; k < E_COUNT; k++)
        printf("%s\"%s\": %llu", k ? ", " : "", err_names[k], (unsigned long long)errors[k]);
    printf("},\n \"error_samples\": [");
    for (int i = 0; i < n_samples; i++)
        printf("%s\"%s\"", i ? ", " : "", samples[i]);
    printf("],\n \"rtt_samples\": %llu, \"rtt_p50_ns\": %lld, \"rtt_p90_ns\": %lld, "
           "\"rtt_p99_ns\": %lld, \"rtt_p999_ns\": %lld, \"rtt_max_ns\": %lld,\n"
           " \"wake_late_p50_ns\": %lld, \"wake_late_p99_ns\": %lld, \"wake_late_max_ns\": %lld}\n",
           (unsigned long long)n_rtts, (long long)pct(0.50), (long long)pct(0.90),
           (long long)pct(0.99), (long long)pct(0.999), (long long)(n_rtts ? rtts[n_rtts - 1] : -1),
           (long long)pct_of(wakes, n_wakes, 0.50), (long long)pct_of(wakes, n_wakes, 0.99),
           (long long)(n_wakes ? wakes[n_wakes - 1] : -1));
    return 0;
}
