/*
 * gen.c: GWLB-style Geneve load generator and validating receiver for the appliance benchmark.
 *
 * One process, up to three threads:
 *   - the sender sends GWLB packets (Geneve with the three AWS options + an inner IPv4 or IPv6
 *     packet) from `--flows` UDP sockets, each bound to its own source port (an outer "flow"), to
 *     DST:6081. The outer IPv4/UDP header is the kernel's.
 *       --mode flood:   sendmmsg batches, round robin over the flows, as fast as it can;
 *       --mode latency: one packet every 1/--rate seconds (absolute-deadline sleeps).
 *     (--mode jitter sends nothing: it only sleeps like the latency sender and reports by how much
 *     each wake-up came late, the machine's own scheduling noise, to read latency tails against.
 *     --mode probe sends nothing either: only the health prober below runs, for --seconds.
 *     --mode probe-load sends nothing either: --probe-clients threads each send health probes back
 *     to back (the next as soon as the last one is answered) to DST:--probe-port for --seconds, and
 *     it reports their rate and latency percentiles: the health service under load.)
 *       --mode paced:   the flood's sendmmsg batches, but on an absolute schedule of --rate packets
 *                       per second (a batch every --batch / --rate seconds), for up to an hour
 *                       (soak.py, chaos.py); the receiver naps as in a flood, and the report adds a
 *                       timeline: per --bucket-ms of send time, packets sent, replies expected and
 *                       valid replies (each reply is filed under the send time it carries), so a
 *                       loss can be placed in time (around a kill, a stop, a reload).
 *   - the receiver owns a UDP socket bound to SRC:6081 (where the appliance's replies go), counts
 *     every reply and validates it against the template it answers (below).
 *   - with --probe-rate R > 0, a prober sends R HTTP health probes per second (`GET /`, a new TCP
 *     connection each, as GWLB's HTTP health check does) to DST:--probe-port while the sender runs,
 *     and counts the answers by status.
 *
 * What is sent (--case): every flow cycles through the same list of templates, one per "slot":
 *   pass     one slot: inner IPv4/UDP to port 5000, passed unchanged;
 *   rewrite  one slot: inner IPv4/UDP to port 3000 with "weakly typed": rewritten to "strongly typed";
 *   mix      100 slots (build_mix below; `gen --describe --case mix` lists them), sent interleaved
 *            (position k of the cycle is slot 37 * k mod 100):
 *              60 pass-through inner IPv4: 30 UDP, 30 TCP, on well-known ports on either side
 *                 (53, 123, 443, 4789, 5060, 6081, 80, ...; the other side an ephemeral port);
 *              10 pass-through inner IPv6: 5 UDP, 5 TCP;
 *              10 rewrite: UDP port 3000 with "weakly typed" (8 IPv4, 2 IPv6);
 *               5 drop: UDP port 3000 with "drop me" (and "weakly typed": the drop wins; 4 IPv4,
 *                 1 IPv6);
 *              10 ICMP echo requests (5 IPv4, 5 ICMPv6), sequence numbers 5n+1 .. 5n+4 and 5n:
 *                 one in five is a multiple of 5 and dropped;
 *               5 TCP with port 3000 and "weakly typed" (2 also "drop me"): no rule for TCP, passed.
 *            Per 100 packets: 93 replies expected, 7 drops.
 *   firewall 80 slots: 10 kinds of TCP connection x 8 packets each (build_firewall below; `gen
 *            --describe --case firewall` lists them), for deploy/bench/firewall_policy.toml: SYN
 *            (client -> server), SYN-ACK, ACK, data (--payload bytes) both ways, FIN both ways,
 *            last ACK; the server's packets have the inner addresses and ports swapped, as a real
 *            reply has. Position k of the cycle is packet k / 10 of connection kind k mod 10, so
 *            10 connections are open at once per flow and each one's packets go in order. Every
 *            cycle of a flow opens 10 NEW connections: connection number u (--first-conn, then
 *            up) gives the client its port (1024 + u mod 64000) and address (10.128.0.0/10,
 *            fdc1::/64) and the Geneve header its flow cookie, so no inner 5-tuple repeats in a
 *            run (the JSON's firewall.next_conn is where the next gen run must start). The
 *            kinds spread over 4 GWLB endpoint ids (Geneve option type 1); 7 kinds pass (5 IPv4,
 *            2 IPv6) and 3 go where the policy drops (a default deny, telnet, a quarantined
 *            IPv6 network): every packet of those gets no reply, both ways, so the verdict must
 *            stick to the flow. Per 80 packets: 56 replies expected, 24 drops. The control
 *            packets carry no payload: their stamp (below, with the connection number at 24) is
 *            in a TCP option (kind 253, RFC 6994, ExID 0x4757); the data packets carry it as
 *            their payload. A sender that could not send part of a batch sends that part again
 *            (the other cases skip it), so no connection misses a packet. --pass-all: every
 *            packet is due back unchanged, drops included (the C reflector, which does not
 *            implement this policy: a pass-through baseline).
 * Every template is its own inner flow (addresses, ports, flow cookie); flow f sends template
 * f * slots + position. The receiver knows for each template whether a reply is expected and what
 * it must be: pass = byte-identical to what was sent (Geneve, inner headers, checksums, payload);
 * rewrite = the rewritten packet, every length and checksum right; drop = no reply at all (a reply
 * is counted as the error "unexpected"). The outer UDP source port must be the flow's own. A
 * template that expects replies, was sent at least twice and got none is counted as "silent" (a
 * packet the target drops but must not: random losses do not hit every copy of one template).
 *
 * Each inner payload (UDP, TCP or ICMP data) starts with a fixed layout:
 *     0  u64  sequence number (host order)
 *     8  u64  send time, CLOCK_MONOTONIC ns (host order)
 *    16  u32  template index
 *    20  4    magic "GWBN"
 *    24  12   "weakly typed"   (before any text a rewrite changes, so nothing above moves)
 *    36  7    "drop me", in the templates that carry it
 *    ..  ...  filler a..z
 * The transport checksum is correct for every packet: the sum of everything but the first 16
 * payload bytes is precomputed per template, the 8 words of sequence and time are added per packet
 * (firewall: also the connection number, the client's address and port, and the IPv4 header
 * checksum). The receiver rebuilds a firewall reply's expected bytes from its connection number.
 * --dump N prints the first N packets of every flow as they would be sent (for tests).
 *
 * Every loop is bounded in packets and in time. The result is one JSON object on stdout.
 * Build: gcc -O2 -Wall -Wextra -pthread -o gen gen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define GENEVE_PORT 6081
#define GENEVE_LEN 40 /* 8-byte header + 32 bytes of AWS options */
#define IP4_LEN 20
#define IP6_LEN 40
#define UDP_LEN 8
#define TCP_LEN 20
#define ICMP_LEN 8
#define P_UDP 17
#define P_TCP 6
#define P_ICMP 1
#define P_ICMP6 58
#define P_SEQ 0
#define P_TIME 8
#define P_TPL 16
#define P_MAGIC 20
#define P_TEXT 24
#define P_DROP 36
#define STAMP_BYTES 16 /* sequence + time: what changes per packet */
#define MIN_PAYLOAD 44 /* the layout above up to "drop me" */
#define MAX_PAYLOAD 8400 /* keeps the inner packet under GWLB's 8500 even after a rewrite */
#define MAX_FLOWS 64
#define MAX_BATCH 64
#define MAX_SLOTS 100
#define MIX_STRIDE 37 /* position k of the cycle sends slot 37k mod 100: the classes interleave */
#define RX_BATCH 64
#define RX_SLOT 9216
#define MAX_PACKETS 50000000ULL
#define MAX_SECONDS 60.0
#define MAX_PACED_PACKETS 400000000ULL /* --mode paced: the sequence bitmap is 50 MB at most */
#define MAX_PACED_SECONDS 3600.0
#define PACED_STALL_NS 10000000LL /* paced: after a 10 ms stall, go on from now, no burst */
#define EPHEMERAL_BASE 40000 /* + template index (< 6400): never 3000 */
#define PASS_PORT 5000
#define POLICY_PORT 3000
#define ICMP_EVERY 5
#define DRAIN_IDLE_NS 300000000LL /* receiver stops 300 ms after the last reply ... */
#define DRAIN_MAX_NS 3000000000LL /* ... or 3 s after the sender stopped, whichever is first */
#define MAX_SAMPLES 3 /* hex dumps of invalid replies in the report */
#define MAX_PROBES 4096
#define MAX_PACED_PROBES 65536 /* --mode paced runs up to an hour: 100/s for 10 minutes */
#define PROBE_TIMEOUT_MS 1000
#define MAX_LOAD_CLIENTS 256
#define MAX_LOAD_PROBES 200000 /* probe-load: every probe's latency is kept, up to this many */
#define LOAD_STACK (256 << 10) /* a probe-load client thread's stack (probe_once needs ~5 KiB) */
#define FW_KINDS 10 /* firewall: connection kinds, */
#define FW_STEPS 8 /* packets per connection */
#define FW_STAMP 32 /* the stamp a firewall packet varies: sequence, time, template, magic, conn */
#define P_CONN 24 /* u64 connection number, in a firewall packet's stamp */
#define FW_OPT_HDR 4 /* TCP option kind 253, length, ExID: the stamp follows */
#define FW_OPT_LEN (FW_OPT_HDR + FW_STAMP)
#define FW_PORTS 64000 /* client ports 1024 .. 65023 */
#define FW_HOSTS 0x3fffffULL /* client addresses per family */
#define FW_CONNS (FW_PORTS * FW_HOSTS) /* connection numbers before a 5-tuple could repeat */
#define COOKIE_AT 36 /* the flow cookie's value in the Geneve options */
#define MAX_DUMP 4096

static const char WEAK[] = "weakly typed";
static const char STRONG[] = "strongly typed";
static const char DROP_ME[] = "drop me";
#define GROW ((int)(sizeof STRONG - sizeof WEAK))

enum err_kind { E_PEER, E_LENGTH, E_TRUNC, E_UNKNOWN, E_UNEXPECTED, E_GENEVE, E_INNER_HDR,
                E_IP_CSUM, E_L4_CSUM, E_PAYLOAD, E_SEQ, E_DUP, E_COUNT };
static const char *const err_names[E_COUNT] = {
    "peer", "length", "truncated", "unidentifiable", "unexpected", "geneve", "inner_header",
    "inner_ip_checksum", "inner_l4_checksum", "payload", "sequence", "duplicate"};

/* Template classes (for the report) and what the policy must do with a template. */
enum cls { C_PASS4, C_PASS6, C_REWRITE, C_DROP, C_ICMP, C_TCP3000, C_FW_ALLOW4, C_FW_ALLOW6,
           C_FW_DENY4, C_FW_DENY6, N_CLS };
static const char *const cls_names[N_CLS] = {"pass_v4", "pass_v6", "rewrite", "drop",
                                             "icmp_echo", "tcp_3000", "fw_allow_v4",
                                             "fw_allow_v6", "fw_deny_v4", "fw_deny_v6"};
enum act { A_PASS, A_REWRITE, A_DROP };
static const char *const act_names[] = {"pass", "rewrite", "drop"};
enum { CASE_PASS, CASE_REWRITE, CASE_MIX, CASE_FIREWALL };
static const char *const case_names[] = {"pass", "rewrite", "mix", "firewall"};

struct slot {
    uint8_t cls, v6, proto, act, dropme, icmp_mod; /* icmp_mod: echo sequence number mod 5 */
    uint16_t sport, dport; /* 0: the template's ephemeral port */
    uint8_t kind, step; /* firewall: the connection kind and the packet of its connection */
};

/* The firewall case's GWLB endpoint ids, and its connection kinds: each kind's server, what
 * deploy/bench/firewall_policy.toml does with it and the rule that decides ("": the default). */
static const uint8_t fw_endpoints[4][8] = {
    {0x2b, 0x8e, 0xe1, 0xd4, 0xdb, 0x0c, 0x51, 0xc4}, {0, 0, 0, 0, 0, 0, 0, 0xb2},
    {0x7f, 0x00, 0xaa, 0x11, 0xbb, 0x22, 0xcc, 0x33}, {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}};
struct fw_kind {
    uint8_t cls, v6, endpoint, act;
    uint8_t server[16];
    uint16_t port;
    const char *rule;
};
static const struct fw_kind fw_kinds[FW_KINDS] = {
    {C_FW_ALLOW4, 0, 0, A_PASS, {10, 0, 1, 80}, 443, "e0-web1"},
    {C_FW_ALLOW4, 0, 1, A_PASS, {10, 1, 3, 80}, 80, "e1-web3"},
    {C_FW_ALLOW4, 0, 2, A_PASS, {10, 2, 0, 80}, 8443, "e2-web0"},
    {C_FW_ALLOW4, 0, 3, A_PASS, {10, 3, 5, 80}, 443, "e3-web5"},
    {C_FW_ALLOW4, 0, 1, A_PASS, {10, 1, 99, 80}, 5432, ""},
    {C_FW_ALLOW6, 1, 0, A_PASS, {0xfd, 0x00, 0x00, 0x02, [15] = 0x80}, 443, "e0-web2"},
    {C_FW_ALLOW6, 1, 3, A_PASS, {0xfd, 0x03, 0x00, 0x04, [15] = 0x80}, 8080, "e3-web4"},
    {C_FW_DENY4, 0, 2, A_DROP, {10, 2, 99, 80}, 443, "e2-deny"},
    {C_FW_DENY4, 0, 0, A_DROP, {10, 0, 1, 80}, 23, "e0-telnet"},
    {C_FW_DENY6, 1, 1, A_DROP, {0xfd, 0x01, 0x00, 0x66, [15] = 0x80}, 443, "e1-quarantine"},
};
/* A connection's packets in order: TCP flags, direction, data, and its sequence and
 * acknowledgment numbers as ISN + n + p * payload (ack_n < 0: no ACK flag, field 0). */
static const struct {
    uint8_t flags, to_server, data, seq_n, seq_p;
    int8_t ack_n;
    uint8_t ack_p;
    const char *name;
} fw_steps[FW_STEPS] = {
    {0x02, 1, 0, 0, 0, -1, 0, "syn"},      {0x12, 0, 0, 0, 0, 1, 0, "syn_ack"},
    {0x10, 1, 0, 1, 0, 1, 0, "ack"},       {0x18, 1, 1, 1, 0, 1, 0, "data"},
    {0x18, 0, 1, 1, 0, 1, 1, "data_reply"}, {0x11, 1, 0, 1, 1, 1, 1, "fin"},
    {0x11, 0, 0, 1, 1, 2, 1, "fin_reply"}, {0x10, 1, 0, 2, 1, 2, 1, "last_ack"},
};

struct tpl {
    uint8_t *pkts;    /* `copies` copies of the packet, len bytes each (stamped in place) */
    uint8_t *expect;  /* the expected reply with a zero stamp; NULL when none may come */
    uint32_t len, expect_len;
    uint32_t base_sum, expect_sum; /* transport checksum sums without the stamp and the field */
    uint16_t l4, pay, csum; /* offsets in the datagram: transport header, payload, checksum field */
    uint8_t cls, v6, udp;
    int flow;
    /* firewall: the client's address (its last 4 bytes) and port, the IPv4 header's sum without
     * them, the connection's kind and step */
    uint16_t caddr, cport;
    uint32_t ip_sum;
    uint8_t fw, kind, step;
};

struct flow {
    int fd;
    uint16_t port;  /* outer UDP source port */
    uint32_t pos;   /* next instance: template position + slots * copy */
    uint64_t cycle; /* firewall: cycles sent, each a new connection per kind */
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    uint32_t batch_tpl[MAX_BATCH];
};

static struct {
    int flood, jitter, probe_only, probe_load, describe;
    const char *src, *dst;
    int payload, which, flows, batch, probe_clients;
    double seconds, rate, probe_rate;
    uint64_t max_packets;
    uint16_t base_port, probe_port;
    int rcvbuf, rx_nap_us;
    int paced, bucket_ms; /* --mode paced (a flood on a schedule), its timeline's bucket */
    int pass_all, dump; /* firewall: every packet due back (a pass-through baseline); --dump N */
    uint64_t first_conn; /* firewall: the first connection number */
} opt = {1, 0, 0, 0, 0, "10.77.200.1", "10.77.200.2", 64, CASE_PASS, 16, 64, 50, 3.0, 10000.0,
         0.0, 0, 50000, 80, 64 << 20, 100, 0, 100, 0, 0, 0};

static struct slot mix[MAX_SLOTS];
static int n_slots, copies;
static struct flow flows[MAX_FLOWS];
static struct tpl *tpls;
static uint32_t n_tpl;
static uint64_t *tpl_sent, *tpl_valid; /* per template: written by the sender, the receiver */
static struct in_addr src_addr, dst_addr;

/* Sender -> receiver, prober. */
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

/* Prober results. */
static uint64_t probes, probes_ok, probes_other, probes_failed;
static int probe_last_status;
static int64_t probe_lat[MAX_PACED_PROBES];

/* Paced-mode timeline, per bucket of send time (sender: sent, expected; receiver: valid). */
static uint64_t *tl_sent, *tl_expected, *tl_valid;
static uint64_t tl_buckets, paced_stalls; /* stalls: batches sent over 10 ms late */
static int64_t tl_bucket_ns;

/* Probe-load results (shared by the client threads). */
static atomic_ullong load_next, load_ok, load_other, load_failed;
static int64_t *load_lat; /* up to MAX_LOAD_PROBES latencies, ns */

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

static void sleep_until(int64_t t)
{
    struct timespec ts = {t / 1000000000LL, t % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
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
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

/* The transport checksum field for a template whose sum without the stamp is `base`. A computed
 * zero is sent as 0xffff over UDP (RFC 768); TCP and ICMP keep it. */
static uint16_t l4_field(uint32_t base, const uint8_t *stamp_at, int udp)
{
    uint16_t c = (uint16_t)~fold(sum16(stamp_at, STAMP_BYTES, base));
    return udp && !c ? 0xffff : c;
}

/* ---------------------------------------------------------------- the traffic */

static void add_slot(int cls, int v6, int proto, int sport, int dport, int act, int dropme, int mod)
{
    mix[n_slots++] = (struct slot){(uint8_t)cls, (uint8_t)v6, (uint8_t)proto, (uint8_t)act,
                                   (uint8_t)dropme, (uint8_t)mod, (uint16_t)sport, (uint16_t)dport,
                                   0, 0};
}

/* The firewall case: slot kind * FW_STEPS + step is packet `step` of a connection of that kind
 * (the server's port is the destination from the client, the source from the server). */
static void build_firewall(void)
{
    for (int k = 0; k < FW_KINDS; k++) {
        const struct fw_kind *kd = &fw_kinds[k];
        for (int st = 0; st < FW_STEPS; st++) {
            uint16_t port = fw_steps[st].to_server ? 0 : kd->port;
            mix[n_slots++] = (struct slot){kd->cls, kd->v6, P_TCP, kd->act, 0, 0, port,
                                           (uint16_t)(port ? 0 : kd->port), (uint8_t)k,
                                           (uint8_t)st};
        }
    }
}

static void build_mix(void)
{
    n_slots = 0;
    if (opt.which == CASE_FIREWALL) {
        build_firewall();
        return;
    }
    if (opt.which == CASE_PASS) {
        add_slot(C_PASS4, 0, P_UDP, 0, PASS_PORT, A_PASS, 0, 0);
        return;
    }
    if (opt.which == CASE_REWRITE) {
        add_slot(C_REWRITE, 0, P_UDP, 0, POLICY_PORT, A_REWRITE, 0, 0);
        return;
    }
    /* 60 pass-through over IPv4: well-known port as destination (client -> server) or as source
     * (server -> client); 0 = the ephemeral port. */
    static const uint16_t udp_dst[15] = {53, 53, 53, 123, 123, 4789, 4789, 6081, 6081, 5060, 5060,
                                         443, 443, 5000, 161};
    static const uint16_t udp_src[15] = {53, 53, 53, 123, 123, 4789, 6081, 5060, 5060, 443, 443,
                                         443, 5000, 500, 1194};
    static const uint16_t tcp_dst[15] = {443, 443, 443, 443, 443, 80, 80, 80, 80, 22, 5060, 6081,
                                         8080, 3306, 25};
    static const uint16_t tcp_src[15] = {443, 443, 443, 443, 443, 80, 80, 80, 80, 22, 5060, 4789,
                                         8443, 5432, 53};
    for (int i = 0; i < 15; i++) {
        add_slot(C_PASS4, 0, P_UDP, 0, udp_dst[i], A_PASS, 0, 0);
        add_slot(C_PASS4, 0, P_UDP, udp_src[i], 0, A_PASS, 0, 0);
        add_slot(C_PASS4, 0, P_TCP, 0, tcp_dst[i], A_PASS, 0, 0);
        add_slot(C_PASS4, 0, P_TCP, tcp_src[i], 0, A_PASS, 0, 0);
    }
    /* 10 pass-through over IPv6. */
    static const uint16_t udp6_dst[5] = {53, 123, 443, 4789, 6081};
    for (int i = 0; i < 5; i++)
        add_slot(C_PASS6, 1, P_UDP, 0, udp6_dst[i], A_PASS, 0, 0);
    add_slot(C_PASS6, 1, P_TCP, 0, 443, A_PASS, 0, 0);
    add_slot(C_PASS6, 1, P_TCP, 0, 80, A_PASS, 0, 0);
    add_slot(C_PASS6, 1, P_TCP, 0, 5060, A_PASS, 0, 0);
    add_slot(C_PASS6, 1, P_TCP, 443, 0, A_PASS, 0, 0);
    add_slot(C_PASS6, 1, P_TCP, 80, 0, A_PASS, 0, 0);
    /* 10 rewrites: UDP port 3000 (either side) with "weakly typed". */
    for (int i = 0; i < 6; i++)
        add_slot(C_REWRITE, 0, P_UDP, 0, POLICY_PORT, A_REWRITE, 0, 0);
    for (int i = 0; i < 2; i++)
        add_slot(C_REWRITE, 0, P_UDP, POLICY_PORT, 0, A_REWRITE, 0, 0);
    for (int i = 0; i < 2; i++)
        add_slot(C_REWRITE, 1, P_UDP, 0, POLICY_PORT, A_REWRITE, 0, 0);
    /* 5 drops: UDP port 3000 with "drop me" (and "weakly typed": the drop wins). */
    for (int i = 0; i < 3; i++)
        add_slot(C_DROP, 0, P_UDP, 0, POLICY_PORT, A_DROP, 1, 0);
    add_slot(C_DROP, 0, P_UDP, POLICY_PORT, 0, A_DROP, 1, 0);
    add_slot(C_DROP, 1, P_UDP, 0, POLICY_PORT, A_DROP, 1, 0);
    /* 10 echo requests: sequence numbers 5n+1 .. 5n+4 pass, 5n is dropped. */
    for (int v6 = 0; v6 < 2; v6++)
        for (int mod = 1; mod <= ICMP_EVERY; mod++)
            add_slot(C_ICMP, v6, v6 ? P_ICMP6 : P_ICMP, 0, 0, mod % ICMP_EVERY ? A_PASS : A_DROP,
                     0, mod % ICMP_EVERY);
    /* 5 TCP with port 3000: no rule matches TCP, so even "drop me" passes. */
    add_slot(C_TCP3000, 0, P_TCP, 0, POLICY_PORT, A_PASS, 0, 0);
    add_slot(C_TCP3000, 0, P_TCP, 0, POLICY_PORT, A_PASS, 1, 0);
    add_slot(C_TCP3000, 0, P_TCP, 0, POLICY_PORT, A_PASS, 0, 0);
    add_slot(C_TCP3000, 0, P_TCP, POLICY_PORT, 0, A_PASS, 1, 0);
    add_slot(C_TCP3000, 1, P_TCP, 0, POLICY_PORT, A_PASS, 0, 0);
}

/* The slot sent at position k of a flow's cycle (firewall: packet k / 10 of kind k mod 10, so
 * the cycle's 10 connections are open together and each one's packets go in order). */
static int slot_at(int k)
{
    if (opt.which == CASE_FIREWALL)
        return k % FW_KINDS * FW_STEPS + k / FW_KINDS;
    return n_slots == MAX_SLOTS ? k * MIX_STRIDE % MAX_SLOTS : k;
}

/* Geneve header + AWS options (class 0x0108: type 1 endpoint id, 2 attachment id, 3 cookie). */
static void write_geneve(uint8_t *g, int v6, uint32_t cookie)
{
    static const uint8_t head[8] = {0x08, 0x00, 0x08, 0x00, 0, 0, 0, 0}; /* ver 0, 8 words */
    memcpy(g, head, 8);
    if (v6)
        put16(g + 2, 0x86dd);
    uint8_t *o = g + 8;
    o[0] = 0x01; o[1] = 0x08; o[2] = 1; o[3] = 2; /* endpoint id, 2 words */
    memcpy(o + 4, "\x0e\x9d\x2a\x11\x42\x00\x00\x01", 8);
    o += 12;
    o[0] = 0x01; o[1] = 0x08; o[2] = 2; o[3] = 2; /* attachment id, 2 words */
    memcpy(o + 4, "\x6a\x70\x17\x00\x00\xbe\xef\x02", 8);
    o += 12;
    o[0] = 0x01; o[1] = 0x08; o[2] = 3; o[3] = 1; /* flow cookie, 1 word */
    put32(o + 4, cookie);
}

static uint16_t ip4_checksum(const uint8_t *ip)
{
    return (uint16_t)~fold(sum16(ip, 10, sum16(ip + 12, 8, 0)));
}

/*
 * Build template `id` (slot s, flow f, position k) into out, with a zero stamp and a zero
 * transport checksum field; `rewritten`: the reply the policy must make of it instead. Sets the
 * offsets in t and returns the length; *sum gets the transport checksum sum without the stamp.
 */
static uint32_t build(uint8_t *out, const struct slot *s, int f, int k, uint32_t id, int rewritten,
                      uint16_t ip_id, struct tpl *t, uint32_t *sum)
{
    size_t ip_len = s->v6 ? IP6_LEN : IP4_LEN;
    size_t hdr = s->proto == P_TCP ? TCP_LEN : s->proto == P_UDP ? UDP_LEN : ICMP_LEN;
    size_t plen = (size_t)opt.payload + (rewritten ? GROW : 0);
    size_t l4 = GENEVE_LEN + ip_len, pay = l4 + hdr, len = pay + plen, l4_len = hdr + plen;
    memset(out, 0, len);
    write_geneve(out, s->v6, 0xc0de0000u ^ (uint32_t)(id * 2654435761u)); /* a cookie per flow */
    uint8_t *ip = out + GENEVE_LEN, *tp = out + l4, *p = out + pay;
    int from_server = s->sport != 0; /* the well-known port is the source: a server's answer */
    if (!s->v6) {
        uint8_t client[4] = {10, 77, (uint8_t)(1 + f), (uint8_t)(1 + k)};
        uint8_t server[4] = {10, 78, (uint8_t)(1 + k), (uint8_t)(1 + f)};
        ip[0] = 0x45;
        put16(ip + 2, (uint16_t)(ip_len + l4_len));
        put16(ip + 4, ip_id);
        put16(ip + 6, 0x4000); /* DF */
        ip[8] = 64;
        ip[9] = s->proto;
        memcpy(ip + 12, from_server ? server : client, 4);
        memcpy(ip + 16, from_server ? client : server, 4);
        put16(ip + 10, ip4_checksum(ip));
    } else {
        uint8_t client[16] = {0xfd, 0, 0, 0x77, 0, 0, 0, (uint8_t)f, [15] = (uint8_t)(1 + k)};
        uint8_t server[16] = {0xfd, 0, 0, 0x78, 0, 0, 0, (uint8_t)k, [15] = (uint8_t)(1 + f)};
        uint32_t label = id * 40503u & 0xfffff;
        ip[0] = 0x60;
        ip[1] = (uint8_t)(label >> 16);
        put16(ip + 2, (uint16_t)label);
        put16(ip + 4, (uint16_t)l4_len);
        ip[6] = s->proto;
        ip[7] = 64;
        memcpy(ip + 8, from_server ? server : client, 16);
        memcpy(ip + 24, from_server ? client : server, 16);
    }
    uint16_t eph = (uint16_t)(EPHEMERAL_BASE + id);
    uint16_t sport = s->sport ? s->sport : eph, dport = s->dport ? s->dport : eph;
    if (s->proto == P_UDP) {
        put16(tp, sport);
        put16(tp + 2, dport);
        put16(tp + 4, (uint16_t)l4_len);
        t->csum = (uint16_t)(l4 + 6);
    } else if (s->proto == P_TCP) {
        put16(tp, sport);
        put16(tp + 2, dport);
        put32(tp + 4, 0x10000001u + id * 7919u); /* sequence */
        put32(tp + 8, 0x20000001u + id * 104729u); /* acknowledgment */
        tp[12] = 0x50;  /* data offset: 5 words */
        tp[13] = 0x18;  /* PSH, ACK */
        put16(tp + 14, 502);
        t->csum = (uint16_t)(l4 + 16);
    } else {
        tp[0] = s->v6 ? 128 : 8; /* echo request */
        put16(tp + 4, (uint16_t)(0x4700 + f));
        put16(tp + 6, (uint16_t)(ICMP_EVERY * (1 + id) + s->icmp_mod));
        t->csum = (uint16_t)(l4 + 2);
    }
    /* The payload as sent; a rewrite is "weakly typed" -> "strongly typed", the rest moved. */
    uint32_t tid = id;
    memcpy(p + P_TPL, &tid, 4);
    memcpy(p + P_MAGIC, "GWBN", 4);
    memcpy(p + P_TEXT, WEAK, sizeof WEAK - 1);
    if (s->dropme)
        memcpy(p + P_DROP, DROP_ME, sizeof DROP_ME - 1);
    for (int i = s->dropme ? P_DROP + (int)sizeof DROP_ME - 1 : P_DROP; i < opt.payload; i++)
        p[i] = (uint8_t)('a' + i % 26);
    if (rewritten) {
        memmove(p + P_TEXT + sizeof STRONG - 1, p + P_TEXT + sizeof WEAK - 1,
                (size_t)opt.payload - P_TEXT - (sizeof WEAK - 1));
        memcpy(p + P_TEXT, STRONG, sizeof STRONG - 1);
    }
    uint32_t total = sum16(tp, l4_len, 0);
    if (s->proto != P_ICMP) { /* the pseudo-header (ICMPv4 has none) */
        total = s->v6 ? sum16(ip + 8, 32, total) : sum16(ip + 12, 8, total);
        total += s->proto + (uint32_t)l4_len;
    }
    *sum = fold(total);
    t->l4 = (uint16_t)l4;
    t->pay = (uint16_t)pay;
    t->udp = s->proto == P_UDP;
    return (uint32_t)len;
}

/* The firewall's connection u: its client's port, address (IPv4, or an IPv6 address's last 4
 * bytes) and flow cookie. Connection numbers under FW_CONNS never share a 5-tuple. */
static uint16_t fw_client_port(uint64_t u) { return (uint16_t)(1024 + u % FW_PORTS); }
static uint32_t fw_client32(uint64_t u) { return 0x0a800001u + (uint32_t)(u / FW_PORTS); }
static uint32_t fw_cookie(int kind, uint64_t u)
{
    return 0xf1000000u ^ (uint32_t)((u * FW_KINDS + (uint64_t)kind) * 2654435761u);
}

/*
 * Build firewall template `id` (slot s) into out for no connection in particular: the client's
 * address and port, the stamp (connection number included) and both checksums zero; the rest
 * as every connection of its kind has it. Sets the offsets in t and returns the length; *sum gets
 * the TCP checksum sum without the fields fw_instance and stamp fill in.
 */
static uint32_t build_fw(uint8_t *out, const struct slot *s, uint32_t id, struct tpl *t,
                         uint32_t *sum)
{
    const struct fw_kind *kd = &fw_kinds[s->kind];
    int to_server = fw_steps[s->step].to_server, data = fw_steps[s->step].data;
    size_t ip_len = s->v6 ? IP6_LEN : IP4_LEN, hdr = TCP_LEN + (data ? 0 : FW_OPT_LEN);
    size_t l4 = GENEVE_LEN + ip_len, plen = data ? (size_t)opt.payload : 0;
    size_t l4_len = hdr + plen, len = l4 + l4_len;
    memset(out, 0, len);
    write_geneve(out, s->v6, 0);
    memcpy(out + 12, fw_endpoints[kd->endpoint], 8); /* the endpoint id option's value */
    uint8_t *ip = out + GENEVE_LEN, *tp = out + l4;
    if (!s->v6) {
        ip[0] = 0x45;
        put16(ip + 2, (uint16_t)(ip_len + l4_len));
        put16(ip + 4, (uint16_t)(1 + id * 13));
        put16(ip + 6, 0x4000); /* DF */
        ip[8] = 64;
        ip[9] = P_TCP;
        memcpy(ip + (to_server ? 16 : 12), kd->server, 4);
        t->caddr = (uint16_t)(GENEVE_LEN + (to_server ? 12 : 16));
        t->ip_sum = sum16(ip, 10, sum16(ip + 12, 8, 0));
    } else {
        static const uint8_t client[12] = {0xfd, 0xc1}; /* fdc1::/64, the last 4 bytes vary */
        uint32_t label = id * 40503u & 0xfffff;
        ip[0] = 0x60;
        ip[1] = (uint8_t)(label >> 16);
        put16(ip + 2, (uint16_t)label);
        put16(ip + 4, (uint16_t)l4_len);
        ip[6] = P_TCP;
        ip[7] = 64;
        memcpy(ip + (to_server ? 8 : 24), client, sizeof client);
        memcpy(ip + (to_server ? 24 : 8), kd->server, 16);
        t->caddr = (uint16_t)(GENEVE_LEN + (to_server ? 8 : 24) + 12);
    }
    uint32_t isn_c = 0x10000000u + s->kind * 0x01000193u, isn_s = 0x20000000u + s->kind * 7919u;
    uint32_t mine = to_server ? isn_c : isn_s, theirs = to_server ? isn_s : isn_c;
    put16(tp + (to_server ? 2 : 0), kd->port);
    t->cport = (uint16_t)(l4 + (to_server ? 0 : 2));
    put32(tp + 4, mine + fw_steps[s->step].seq_n + fw_steps[s->step].seq_p * (uint32_t)opt.payload);
    if (fw_steps[s->step].ack_n >= 0)
        put32(tp + 8, theirs + (uint32_t)fw_steps[s->step].ack_n
                          + fw_steps[s->step].ack_p * (uint32_t)opt.payload);
    tp[12] = (uint8_t)(hdr / 4 << 4); /* data offset */
    tp[13] = fw_steps[s->step].flags;
    put16(tp + 14, to_server ? 64240 : 65160);
    size_t pay = l4 + TCP_LEN;
    if (!data) { /* the stamp in an experimental option (RFC 6994): kind 253, length, ExID */
        static const uint8_t head[FW_OPT_HDR] = {253, FW_OPT_LEN, 0x47, 0x57};
        memcpy(tp + TCP_LEN, head, FW_OPT_HDR);
        pay += FW_OPT_HDR;
    }
    uint8_t *p = out + pay;
    memcpy(p + P_TPL, &id, 4);
    memcpy(p + P_MAGIC, "GWBN", 4);
    for (size_t i = FW_STAMP; i < plen; i++)
        p[i] = (uint8_t)('a' + i % 26);
    uint32_t total = sum16(tp, l4_len, 0);
    total = s->v6 ? sum16(ip + 8, 32, total) : sum16(ip + 12, 8, total);
    *sum = fold(total + P_TCP + (uint32_t)l4_len);
    t->l4 = (uint16_t)l4;
    t->pay = (uint16_t)pay;
    t->csum = (uint16_t)(l4 + 16);
    t->fw = 1;
    t->kind = s->kind;
    t->step = s->step;
    return (uint32_t)len;
}

/* Connection u into a packet of firewall template t: its flow cookie, client address and port,
 * connection number, and IPv4 header checksum (the TCP checksum is stamp's). */
static void fw_instance(uint8_t *pkt, const struct tpl *t, uint64_t u)
{
    uint8_t addr[4];
    put32(addr, fw_client32(u));
    put32(pkt + COOKIE_AT, fw_cookie(t->kind, u));
    memcpy(pkt + t->caddr, addr, 4);
    put16(pkt + t->cport, fw_client_port(u));
    memcpy(pkt + t->pay + P_CONN, &u, 8);
    if (!t->v6)
        put16(pkt + GENEVE_LEN + 10, (uint16_t)~fold(sum16(addr, 4, t->ip_sum)));
}

/* The TCP checksum of a firewall packet whose stamp and connection are in place (the template
 * index and magic between them are in base_sum already). */
static uint16_t fw_l4_field(const uint8_t *pkt, const struct tpl *t)
{
    uint32_t sum = sum16(pkt + t->pay, STAMP_BYTES, t->base_sum);
    sum = sum16(pkt + t->pay + P_CONN, 8, sum);
    sum = sum16(pkt + t->caddr, 4, sum);
    return (uint16_t)~fold(sum16(pkt + t->cport, 2, sum));
}

static void build_templates(void)
{
    static uint8_t sent_pkt[RX_SLOT], reply[RX_SLOT];
    n_tpl = (uint32_t)(opt.flows * n_slots);
    copies = (opt.batch + n_slots - 1) / n_slots; /* no buffer twice in one sendmmsg batch */
    tpls = calloc(n_tpl, sizeof *tpls);
    tpl_sent = calloc(n_tpl, sizeof *tpl_sent);
    tpl_valid = calloc(n_tpl, sizeof *tpl_valid);
    if (!tpls || !tpl_sent || !tpl_valid)
        die("calloc");
    for (int f = 0; f < opt.flows; f++) {
        for (int k = 0; k < n_slots; k++) {
            uint32_t id = (uint32_t)(f * n_slots + k), sum = 0, rsum = 0, len = 0, rlen = 0;
            const struct slot *s = &mix[slot_at(k)];
            struct tpl *t = &tpls[id];
            t->flow = f;
            t->cls = s->cls;
            t->v6 = s->v6;
            /* An IPv4 header checksum of 0 has a second form (0xffff): pick an identification
             * that avoids it, before and after a rewrite, so a reply can be compared byte-wise. */
            for (uint16_t ip_id = (uint16_t)(1 + id * 13), tries = 0; tries < 100; ip_id++, tries++) {
                if (opt.which == CASE_FIREWALL) { /* nothing rewritten: any checksum compares */
                    len = build_fw(sent_pkt, s, id, t, &sum);
                    break;
                }
                len = build(sent_pkt, s, f, k, id, 0, ip_id, t, &sum);
                if (s->act == A_REWRITE)
                    rlen = build(reply, s, f, k, id, 1, ip_id, t, &rsum);
                if (s->v6 || (get16(sent_pkt + GENEVE_LEN + 10) != 0
                              && (s->act != A_REWRITE || get16(reply + GENEVE_LEN + 10) != 0)))
                    break;
            }
            t->len = len;
            t->base_sum = sum;
            t->pkts = malloc((size_t)len * (size_t)copies);
            if (!t->pkts)
                die("malloc");
            for (int c = 0; c < copies; c++)
                memcpy(t->pkts + (size_t)c * len, sent_pkt, len);
            if (s->act != A_DROP || opt.pass_all) {
                t->expect_len = s->act == A_REWRITE ? rlen : len;
                t->expect_sum = s->act == A_REWRITE ? rsum : sum;
                t->expect = malloc(t->expect_len);
                if (!t->expect)
                    die("malloc");
                memcpy(t->expect, s->act == A_REWRITE ? reply : sent_pkt, t->expect_len);
            }
        }
    }
}

static void print_address(int v6, const uint8_t *a)
{
    char text[INET6_ADDRSTRLEN];
    inet_ntop(v6 ? AF_INET6 : AF_INET, a, text, sizeof text);
    printf("\"%s\"", text);
}

/* The firewall's connection kinds, and where the connections' clients come from. */
static void describe_firewall(void)
{
    uint8_t first4[4], first6[16] = {0xfd, 0xc1};
    put32(first4, fw_client32(0));
    put32(first6 + 12, fw_client32(0));
    printf(",\n \"packets_per_connection\": %d, \"clients\": {\"ipv4\": \"10.128.0.0/10\", "
           "\"ipv6\": \"fdc1::/64\", \"ports\": \"1024-%d\", \"connections\": %llu, "
           "\"first\": [", FW_STEPS, 1023 + FW_PORTS, (unsigned long long)FW_CONNS);
    print_address(0, first4);
    printf(", ");
    print_address(1, first6);
    printf(", %u]},\n \"connections\": [", fw_client_port(0));
    for (int k = 0; k < FW_KINDS; k++) {
        const struct fw_kind *kd = &fw_kinds[k];
        printf("%s\n {\"kind\": %d, \"class\": \"%s\", \"ip\": %d, \"endpoint\": \"", k ? "," : "",
               k, cls_names[kd->cls], kd->v6 ? 6 : 4);
        for (int i = 0; i < 8; i++)
            printf("%02x", fw_endpoints[kd->endpoint][i]);
        printf("\", \"server\": ");
        print_address(kd->v6, kd->server);
        printf(", \"port\": %u, \"expect\": \"%s\", \"rule\": \"%s\"}", kd->port,
               act_names[kd->act], kd->rule);
    }
    printf("]");
}

/* `gen --describe`: the slots of --case, in slot order, and the order they are sent in. */
static int describe(void)
{
    static const char *const protos[] = {[P_UDP] = "udp", [P_TCP] = "tcp", [P_ICMP] = "icmp",
                                         [P_ICMP6] = "icmpv6"};
    printf("{\"case\": \"%s\", \"slots\": [", case_names[opt.which]);
    for (int i = 0; i < n_slots; i++) {
        const struct slot *s = &mix[i];
        printf("%s\n {\"class\": \"%s\", \"ip\": %d, \"proto\": \"%s\", \"sport\": %u, "
               "\"dport\": %u, \"expect\": \"%s\", \"drop_me\": %s, \"icmp_seq_mod5\": %d",
               i ? "," : "", cls_names[s->cls], s->v6 ? 6 : 4, protos[s->proto], s->sport,
               s->dport, act_names[s->act], s->dropme ? "true" : "false",
               s->proto == P_UDP || s->proto == P_TCP ? -1 : s->icmp_mod);
        if (opt.which == CASE_FIREWALL)
            printf(", \"kind\": %d, \"step\": \"%s\", \"tcp_flags\": %d, \"to_server\": %s",
                   s->kind, fw_steps[s->step].name, fw_steps[s->step].flags,
                   fw_steps[s->step].to_server ? "true" : "false");
        printf("}");
    }
    printf("],\n \"send_order\": [");
    for (int k = 0; k < n_slots; k++)
        printf("%s%d", k ? ", " : "", slot_at(k));
    printf("]");
    if (opt.which == CASE_FIREWALL)
        describe_firewall();
    printf("}\n");
    return 0;
}

/* ---------------------------------------------------------------- sending */

/* Sequence number and time into a packet of template t, and its transport checksum. */
static void stamp(uint8_t *pkt, const struct tpl *t, uint64_t seq, int64_t when)
{
    memcpy(pkt + t->pay + P_SEQ, &seq, 8);
    memcpy(pkt + t->pay + P_TIME, &when, 8);
    if (t->fw)
        put16(pkt + t->csum, fw_l4_field(pkt, t));
    else
        put16(pkt + t->csum, l4_field(t->base_sum, pkt + t->pay, t->udp));
}

/* The next packet buffer of flow f (cycling through its templates and their copies). */
static uint8_t *next_packet(struct flow *fl, int f, uint32_t *id)
{
    uint32_t j = fl->pos;
    fl->pos = j + 1 == (uint32_t)(n_slots * copies) ? 0 : j + 1;
    *id = (uint32_t)(f * n_slots) + j % (uint32_t)n_slots;
    uint8_t *p = tpls[*id].pkts + (size_t)(j / (uint32_t)n_slots) * tpls[*id].len;
    if (opt.which == CASE_FIREWALL) { /* each cycle (and copy) of a flow: new connections */
        uint64_t instance = fl->cycle * (uint64_t)copies + j / (uint32_t)n_slots;
        fw_instance(p, &tpls[*id], opt.first_conn + instance * (uint64_t)opt.flows + (uint64_t)f);
        if (!fl->pos)
            fl->cycle++;
    }
    return p;
}

/* Firewall: take back the last k packets next_packet gave out (they were not sent), so they go
 * next: a connection that missed a packet would meet the policy differently. */
static void unsend(struct flow *fl, int k)
{
    if (opt.which != CASE_FIREWALL)
        return; /* the other cases skip what was not sent */
    for (; k > 0; k--) {
        if (!fl->pos) {
            fl->pos = (uint32_t)(n_slots * copies);
            fl->cycle--;
        }
        fl->pos--;
    }
}

/* Firewall: the first connection number no flow has used (where the next gen run starts). */
static uint64_t next_conn(void)
{
    uint64_t cycles = 0;
    for (int f = 0; f < opt.flows; f++)
        if (flows[f].cycle + 1 > cycles)
            cycles = flows[f].cycle + 1;
    return opt.first_conn + cycles * (uint64_t)copies * (uint64_t)opt.flows;
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

static uint64_t tl_index(int64_t t)
{
    int64_t i = (t - t_start_ns) / tl_bucket_ns;
    return i < 0 ? 0 : (uint64_t)i >= tl_buckets ? tl_buckets - 1 : (uint64_t)i;
}

/* --mode paced: the flood's batches (round robin over the flows), batch r at t0 + r * batch / rate;
 * a sender more than 10 ms late goes on from now (its lateness is lost time, not a burst). */
static void paced_sender(int64_t deadline)
{
    double interval = (double)opt.batch * 1e9 / opt.rate;
    int64_t t0 = now_ns(), t = t0;
    uint64_t round = 0;
    int f = 0;
    while (seq_used + (uint64_t)opt.batch <= opt.max_packets && t < deadline) {
        int64_t next = t0 + (int64_t)((double)round * interval);
        sleep_until(next);
        t = now_ns();
        if (t - next > PACED_STALL_NS) {
            t0 = t; /* this batch is round 0 of a new schedule */
            round = 0;
            paced_stalls++;
        }
        round++;
        struct flow *fl = &flows[f];
        for (int i = 0; i < opt.batch; i++) {
            uint8_t *p = next_packet(fl, f, &fl->batch_tpl[i]);
            stamp(p, &tpls[fl->batch_tpl[i]], seq_used++, t);
            fl->iov[i] = (struct iovec){p, tpls[fl->batch_tpl[i]].len};
        }
        int n = sendmmsg(fl->fd, fl->msgs, (unsigned)opt.batch, MSG_DONTWAIT);
        send_calls++;
        unsend(fl, n < 0 ? opt.batch : opt.batch - n);
        if (n < 0) {
            count_send_error(errno);
        } else {
            if (n < opt.batch)
                partial_sends++; /* the rest of the batch is not retried: counted as unsent */
            uint64_t b = tl_index(t);
            for (int i = 0; i < n; i++) {
                tpl_sent[fl->batch_tpl[i]]++;
                tl_expected[b] += tpls[fl->batch_tpl[i]].expect != NULL;
            }
            tl_sent[b] += (uint64_t)n;
            note_sent(n, t);
        }
        f = (f + 1) % opt.flows;
        t = now_ns();
    }
}

static void *sender(void *arg)
{
    (void)arg;
    int64_t deadline = t_start_ns + (int64_t)(opt.seconds * 1e9);
    int64_t t = now_ns();
    if (opt.paced) {
        paced_sender(deadline);
    } else if (opt.flood) {
        int f = 0;
        /* Bounded: every round consumes `batch` sequence numbers, sent or not. */
        while (seq_used + (uint64_t)opt.batch <= opt.max_packets && t < deadline) {
            struct flow *fl = &flows[f];
            for (int i = 0; i < opt.batch; i++) {
                uint8_t *p = next_packet(fl, f, &fl->batch_tpl[i]);
                stamp(p, &tpls[fl->batch_tpl[i]], seq_used++, t);
                fl->iov[i] = (struct iovec){p, tpls[fl->batch_tpl[i]].len};
            }
            int n = sendmmsg(fl->fd, fl->msgs, (unsigned)opt.batch, MSG_DONTWAIT);
            send_calls++;
            t = now_ns();
            unsend(fl, n < 0 ? opt.batch : opt.batch - n);
            if (n < 0) {
                count_send_error(errno);
            } else {
                if (n < opt.batch)
                    partial_sends++; /* the rest of the batch is not retried: counted as unsent */
                for (int i = 0; i < n; i++)
                    tpl_sent[fl->batch_tpl[i]]++;
                note_sent(n, t);
            }
            f = (f + 1) % opt.flows;
        }
    } else {
        int64_t interval = (int64_t)(1e9 / opt.rate), next = t;
        int f = 0;
        while (seq_used < opt.max_packets && t < deadline) {
            sleep_until(next);
            struct flow *fl = &flows[f];
            t = now_ns();
            if (n_wakes < opt.max_packets)
                wakes[n_wakes++] = t - next; /* how late the sleep returned: the machine's noise */
            uint32_t id;
            uint8_t *p = next_packet(fl, f, &id);
            stamp(p, &tpls[id], seq_used++, t);
            ssize_t n = send(fl->fd, p, tpls[id].len, MSG_DONTWAIT);
            send_calls++;
            if (n < 0) {
                unsend(fl, 1);
                count_send_error(errno);
            } else {
                tpl_sent[id]++;
                note_sent(1, t);
            }
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

/* ---------------------------------------------------------------- receiving */

static void add_sample(enum err_kind k, const uint8_t *d, size_t n, uint16_t port)
{
    if (n_samples >= MAX_SAMPLES)
        return;
    char *s = samples[n_samples++];
    int w = snprintf(s, sizeof samples[0], "%s: %zu bytes from port %u: ", err_names[k], n, port);
    for (size_t i = 0; i < n && w < (int)sizeof samples[0] - 3; i++)
        w += snprintf(s + w, sizeof samples[0] - (size_t)w, "%02x", d[i]);
}

/* Validate one reply; return E_COUNT when it is right (and set *which to its template). */
static enum err_kind check_reply(const uint8_t *d, size_t n, const struct sockaddr_in *peer,
                                 int flags, int64_t t_rx, uint32_t *which)
{
    if (flags & MSG_TRUNC)
        return E_TRUNC;
    if (peer->sin_addr.s_addr != dst_addr.s_addr)
        return E_PEER;
    /* Which template it answers: from its own headers, find the payload and read the index. */
    if (n < GENEVE_LEN + IP4_LEN)
        return E_UNKNOWN;
    size_t l4, hdr;
    uint8_t proto;
    if (get16(d + 2) == 0x0800) {
        l4 = GENEVE_LEN + (size_t)(d[GENEVE_LEN] & 0x0f) * 4;
        proto = d[GENEVE_LEN + 9];
    } else if (get16(d + 2) == 0x86dd) {
        l4 = GENEVE_LEN + IP6_LEN;
        proto = d[GENEVE_LEN + 6];
    } else {
        return E_UNKNOWN;
    }
    hdr = proto == P_TCP ? TCP_LEN : proto == P_UDP || proto == P_ICMP || proto == P_ICMP6 ? 8 : 0;
    size_t at = l4 + hdr; /* the stamp: the payload's start, or a TCP option's (firewall) */
    if (proto == P_TCP && n >= l4 + TCP_LEN && d[l4 + 12] >> 4 > TCP_LEN / 4)
        at += FW_OPT_HDR;
    if (!hdr || n < at + P_TEXT)
        return E_UNKNOWN;
    const uint8_t *pay = d + at;
    uint32_t id;
    memcpy(&id, pay + P_TPL, 4);
    if (memcmp(pay + P_MAGIC, "GWBN", 4) || id >= n_tpl)
        return E_UNKNOWN;
    const struct tpl *t = &tpls[id];
    *which = id;
    if (ntohs(peer->sin_port) != flows[t->flow].port)
        return E_PEER;
    if (!t->expect)
        return E_UNEXPECTED; /* the policy must drop this one */
    if (n != t->expect_len)
        return E_LENGTH;
    const uint8_t *e = t->expect;
    if (t->fw) { /* what gen sent for this connection, sequence number and time */
        static uint8_t sent_pkt[RX_SLOT];
        uint64_t u, seq;
        int64_t when;
        memcpy(&u, pay + P_CONN, 8);
        memcpy(&seq, pay + P_SEQ, 8);
        memcpy(&when, pay + P_TIME, 8);
        if (u < opt.first_conn || u - opt.first_conn >= FW_CONNS)
            return E_SEQ;
        memcpy(sent_pkt, e, n);
        fw_instance(sent_pkt, t, u);
        stamp(sent_pkt, t, seq, when);
        e = sent_pkt;
    }
    if (memcmp(d, e, GENEVE_LEN))
        return E_GENEVE;
    /* Inner IP header (IPv4: except its checksum, checked next), then the transport header except
     * its checksum (checked last, against the value the stamp implies). */
    if (t->v6 ? memcmp(d + GENEVE_LEN, e + GENEVE_LEN, IP6_LEN)
              : memcmp(d + GENEVE_LEN, e + GENEVE_LEN, 10)
                    || memcmp(d + GENEVE_LEN + 12, e + GENEVE_LEN + 12, 8))
        return E_INNER_HDR;
    if (!t->v6 && memcmp(d + GENEVE_LEN + 10, e + GENEVE_LEN + 10, 2))
        return E_IP_CSUM;
    if (at != t->pay || memcmp(d + t->l4, e + t->l4, (size_t)(t->csum - t->l4))
        || memcmp(d + t->csum + 2, e + t->csum + 2, (size_t)(t->pay - t->csum - 2)))
        return E_INNER_HDR;
    if (memcmp(d + t->pay + STAMP_BYTES, e + t->pay + STAMP_BYTES, n - t->pay - STAMP_BYTES))
        return E_PAYLOAD;
    /* Everything else is byte-identical to what is expected, so this exact value is the one
     * correct checksum (for a pass-through: the one that was sent). */
    if (get16(d + t->csum) != (t->fw ? get16(e + t->csum)
                                      : l4_field(t->expect_sum, d + t->pay, t->udp)))
        return E_L4_CSUM;
    uint64_t seq;
    int64_t t_tx;
    memcpy(&seq, d + t->pay + P_SEQ, 8);
    memcpy(&t_tx, d + t->pay + P_TIME, 8);
    if (seq >= opt.max_packets)
        return E_SEQ;
    if (seen[seq >> 3] & (1u << (seq & 7)))
        return E_DUP;
    seen[seq >> 3] |= (uint8_t)(1u << (seq & 7));
    if (t_tx < t_start_ns || t_tx > t_rx)
        late_stamps++; /* cannot happen with a correct stamp; counted, not fatal */
    else if (!opt.flood && n_rtts < opt.max_packets)
        rtts[n_rtts++] = t_rx - t_tx;
    if (opt.paced)
        tl_valid[tl_index(t_tx)]++;
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
            uint32_t id = 0;
            enum err_kind k = check_reply(buf[i], msgs[i].msg_len, &names[i],
                                          msgs[i].msg_hdr.msg_flags, t_rx, &id);
            if (k == E_COUNT) {
                valid++;
                tpl_valid[id]++;
            } else {
                errors[k]++;
                add_sample(k, buf[i], msgs[i].msg_len > 256 ? 256 : msgs[i].msg_len,
                           ntohs(names[i].sin_port));
            }
        }
        /* Flood only: after a partial batch, nap instead of blocking on the socket. A receiver
         * asleep on the socket is woken by the target's every reply burst, and that wakeup (a
         * cross-CPU IPI, costly in a VM) runs in the target's sendmmsg, on the target's CPU: the
         * slower the target, the more often the receiver runs dry and sleeps, so the more of this
         * harness cost each of its packets carries (measured: +1.2 us/pkt for applianced against
         * +0.3 for the C reflector). Napping takes the receiver off the socket's wait queue, so
         * replies queue without waking anyone, as they leave through a NIC in production. The
         * socket buffer (--rcvbuf) holds far more than a nap's worth of replies. */
        if (opt.flood && opt.rx_nap_us && n < RX_BATCH) {
            struct timespec nap = {0, (long)opt.rx_nap_us * 1000};
            nanosleep(&nap, NULL);
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------- health probes */

/* One HTTP health probe on a new TCP connection: the status code, 0 unparsable, -1 failed. */
static int probe_once(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int status = -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(opt.probe_port),
                            .sin_addr = dst_addr};
    struct pollfd p = {fd, POLLOUT, 0};
    int err = 0;
    socklen_t el = sizeof err;
    char req[200], buf[4096];
    size_t got = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS)
        goto out;
    if (poll(&p, 1, PROBE_TIMEOUT_MS) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0
        || err)
        goto out;
    int rn = snprintf(req, sizeof req,
                      "GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: ELB-HealthChecker/2.0\r\n"
                      "Connection: close\r\n\r\n", opt.dst);
    if (send(fd, req, (size_t)rn, MSG_NOSIGNAL) != rn)
        goto out;
    int64_t until = now_ns() + PROBE_TIMEOUT_MS * 1000000LL;
    while (got < sizeof buf - 1) { /* to the end of the response (the server closes) */
        int64_t left_ms = (until - now_ns()) / 1000000;
        p.events = POLLIN;
        if (left_ms <= 0 || poll(&p, 1, (int)left_ms) != 1)
            goto out;
        ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    buf[got] = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        status = 0;
out:
    close(fd);
    return status;
}

static void *prober(void *arg)
{
    (void)arg;
    int64_t interval = (int64_t)(1e9 / opt.probe_rate), next = now_ns();
    int64_t deadline = t_start_ns + (int64_t)(opt.seconds * 1e9);
    uint64_t cap = opt.paced ? MAX_PACED_PROBES : MAX_PROBES;
    while (probes < cap && !atomic_load(&send_done) && next < deadline) {
        sleep_until(next);
        int64_t t0 = now_ns();
        int status = probe_once();
        probe_lat[probes++] = now_ns() - t0;
        probe_last_status = status;
        if (status == 200)
            probes_ok++;
        else if (status < 0)
            probes_failed++;
        else
            probes_other++;
        next += interval;
        if (now_ns() > next)
            next = now_ns(); /* no burst after a slow probe */
    }
    return NULL;
}

/* --mode probe-load: one client; probes back to back until --seconds are over (a probe started
 * before then finishes: at most 2 x PROBE_TIMEOUT_MS more) or MAX_LOAD_PROBES were started. */
static void *load_client(void *arg)
{
    (void)arg;
    int64_t deadline = t_start_ns + (int64_t)(opt.seconds * 1e9);
    while (now_ns() < deadline) {
        unsigned long long i = atomic_fetch_add(&load_next, 1);
        if (i >= MAX_LOAD_PROBES)
            break;
        int64_t t0 = now_ns();
        int status = probe_once();
        load_lat[i] = now_ns() - t0;
        if (status == 200)
            atomic_fetch_add(&load_ok, 1);
        else if (status < 0)
            atomic_fetch_add(&load_failed, 1);
        else
            atomic_fetch_add(&load_other, 1);
    }
    return NULL;
}

/* ---------------------------------------------------------------- main */

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
            "usage: gen [--mode flood|latency|paced|jitter|probe|probe-load] [--src IP] [--dst IP] "
            "[--payload N] [--case pass|rewrite|mix|firewall]\n"
            "           [--flows N] [--batch N] [--seconds S] [--rate PPS] [--max-packets N] "
            "[--base-port P] [--rcvbuf BYTES]\n"
            "           [--probe-rate PER_S] [--probe-port P] [--probe-clients N] [--rx-nap-us N]\n"
            "           [--bucket-ms MS (paced)] [--first-conn N] [--pass-all] (firewall)\n"
            "           [--describe] [--dump N]\n"
            "       gen --mode probe-load --dst IP --probe-port P --probe-clients N --seconds S\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    static const struct option longs[] = {
        {"mode", 1, 0, 'm'}, {"src", 1, 0, 's'}, {"dst", 1, 0, 'd'}, {"payload", 1, 0, 'p'},
        {"case", 1, 0, 'c'}, {"flows", 1, 0, 'f'}, {"batch", 1, 0, 'b'}, {"seconds", 1, 0, 't'},
        {"rate", 1, 0, 'r'}, {"max-packets", 1, 0, 'n'}, {"base-port", 1, 0, 'P'},
        {"rcvbuf", 1, 0, 'R'}, {"probe-rate", 1, 0, 'H'}, {"probe-port", 1, 0, 'O'},
        {"describe", 0, 0, 'D'}, {"probe-clients", 1, 0, 'C'}, {"rx-nap-us", 1, 0, 'N'},
        {"bucket-ms", 1, 0, 'B'}, {"first-conn", 1, 0, 'F'}, {"pass-all", 0, 0, 'A'},
        {"dump", 1, 0, 'U'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'm':
            opt.flood = !strcmp(optarg, "flood");
            opt.jitter = !strcmp(optarg, "jitter");
            opt.probe_only = !strcmp(optarg, "probe");
            opt.probe_load = !strcmp(optarg, "probe-load");
            opt.paced = !strcmp(optarg, "paced");
            if (opt.paced)
                opt.flood = 1; /* a flood on a schedule: batches, the napping receiver */
            if (!opt.flood && !opt.jitter && !opt.probe_only && !opt.probe_load
                && strcmp(optarg, "latency"))
                usage();
            break;
        case 's': opt.src = optarg; break;
        case 'd': opt.dst = optarg; break;
        case 'p': opt.payload = atoi(optarg); break;
        case 'c':
            if (!strcmp(optarg, "pass"))
                opt.which = CASE_PASS;
            else if (!strcmp(optarg, "rewrite"))
                opt.which = CASE_REWRITE;
            else if (!strcmp(optarg, "mix"))
                opt.which = CASE_MIX;
            else if (!strcmp(optarg, "firewall"))
                opt.which = CASE_FIREWALL;
            else
                usage();
            break;
        case 'f': opt.flows = atoi(optarg); break;
        case 'b': opt.batch = atoi(optarg); break;
        case 't': opt.seconds = atof(optarg); break;
        case 'r': opt.rate = atof(optarg); break;
        case 'n': opt.max_packets = strtoull(optarg, NULL, 10); break;
        case 'P': opt.base_port = (uint16_t)atoi(optarg); break;
        case 'R': opt.rcvbuf = atoi(optarg); break;
        case 'H': opt.probe_rate = atof(optarg); break;
        case 'O': opt.probe_port = (uint16_t)atoi(optarg); break;
        case 'D': opt.describe = 1; break;
        case 'C': opt.probe_clients = atoi(optarg); break;
        case 'N': opt.rx_nap_us = atoi(optarg); break;
        case 'B': opt.bucket_ms = atoi(optarg); break;
        case 'F': opt.first_conn = strtoull(optarg, NULL, 10); break;
        case 'A': opt.pass_all = 1; break;
        case 'U': opt.dump = atoi(optarg); break;
        default: usage();
        }
    }
    if (optind != argc || opt.payload < MIN_PAYLOAD || opt.payload > MAX_PAYLOAD || opt.flows < 1
        || opt.flows > MAX_FLOWS || opt.batch < 1 || opt.batch > MAX_BATCH || !(opt.seconds > 0)
        || opt.seconds > (opt.paced ? MAX_PACED_SECONDS : MAX_SECONDS) || !(opt.rate >= 1)
        || opt.rate > 1e6 || opt.rcvbuf < 0
        || opt.base_port < 1024 || opt.base_port > 65535 - MAX_FLOWS || opt.probe_rate < 0
        || opt.probe_rate > 1000 || (opt.probe_only && !(opt.probe_rate > 0)) || !opt.probe_port
        || opt.probe_clients < 1 || opt.probe_clients > MAX_LOAD_CLIENTS || opt.rx_nap_us < 0
        || opt.rx_nap_us > 10000 || opt.bucket_ms < 1 || opt.bucket_ms > 10000 || opt.dump < 0
        || opt.dump > MAX_DUMP
        || (opt.which != CASE_FIREWALL && (opt.pass_all || opt.first_conn)))
        usage();
    if (!inet_aton(opt.src, &src_addr) || !inet_aton(opt.dst, &dst_addr))
        usage();
    uint64_t natural = opt.flood ? (uint64_t)(opt.seconds * 5e6) : (uint64_t)(opt.seconds * opt.rate) + 1;
    if (opt.paced)
        natural = (uint64_t)(opt.seconds * opt.rate) + (uint64_t)opt.batch;
    if (!opt.max_packets || opt.max_packets > natural)
        opt.max_packets = natural;
    if (opt.max_packets > (opt.paced ? MAX_PACED_PACKETS : MAX_PACKETS))
        opt.max_packets = opt.paced ? MAX_PACED_PACKETS : MAX_PACKETS;
    /* Firewall: every connection this run can open has a number under FW_CONNS (a flow opens
     * FW_KINDS connections per FW_KINDS * FW_STEPS packets, and unsend can cost a cycle more). */
    uint64_t dumped = (uint64_t)opt.dump * (uint64_t)opt.flows;
    uint64_t most = (opt.max_packets + dumped) / FW_STEPS + 2ULL * FW_KINDS * MAX_FLOWS * MAX_BATCH;
    if (opt.which == CASE_FIREWALL && (opt.first_conn > FW_CONNS || FW_CONNS - opt.first_conn < most))
        usage();
}

/* --mode jitter: how late absolute-deadline sleeps at --rate wake up, on an otherwise idle CPU. */
static int run_jitter(void)
{
    int64_t interval = (int64_t)(1e9 / opt.rate), next = now_ns();
    int64_t deadline = next + (int64_t)(opt.seconds * 1e9);
    while (n_rtts < opt.max_packets && next < deadline) {
        next += interval;
        sleep_until(next);
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

static void print_probes(void)
{
    qsort(probe_lat, probes, sizeof *probe_lat, cmp_i64);
    printf("{\"rate\": %.1f, \"sent\": %llu, \"ok_200\": %llu, \"other_status\": %llu, "
           "\"failed\": %llu, \"last_status\": %d, \"p50_ms\": %.3f, \"max_ms\": %.3f}",
           opt.probe_rate, (unsigned long long)probes, (unsigned long long)probes_ok,
           (unsigned long long)probes_other, (unsigned long long)probes_failed, probe_last_status,
           (double)pct_of(probe_lat, probes, 0.5) / 1e6,
           (double)(probes ? probe_lat[probes - 1] : -1) / 1e6);
}

/* --mode probe: only the health prober, for --seconds. */
static int run_probe_only(void)
{
    pthread_t th;
    t_start_ns = now_ns();
    if (pthread_create(&th, NULL, prober, NULL)) {
        fprintf(stderr, "gen: pthread_create failed\n");
        return 1;
    }
    pthread_join(th, NULL);
    printf("{\"mode\": \"probe\", \"probes\": ");
    print_probes();
    printf("}\n");
    return 0;
}

/* --mode probe-load: --probe-clients threads probing back to back for --seconds. */
static int run_probe_load(void)
{
    static pthread_t th[MAX_LOAD_CLIENTS];
    pthread_attr_t attr;
    load_lat = calloc(MAX_LOAD_PROBES, sizeof *load_lat);
    if (!load_lat)
        die("calloc");
    if (pthread_attr_init(&attr) || pthread_attr_setstacksize(&attr, LOAD_STACK)) {
        fprintf(stderr, "gen: pthread_attr failed\n");
        return 1;
    }
    t_start_ns = now_ns();
    int started = 0;
    for (; started < opt.probe_clients; started++)
        if (pthread_create(&th[started], &attr, load_client, NULL))
            break;
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    int64_t t_end_ns = now_ns();
    if (started < opt.probe_clients) {
        fprintf(stderr, "gen: pthread_create failed after %d clients\n", started);
        return 1;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double user_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    double sys_s = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    unsigned long long started_probes = atomic_load(&load_next);
    unsigned long long n = started_probes > MAX_LOAD_PROBES ? MAX_LOAD_PROBES : started_probes;
    qsort(load_lat, n, sizeof *load_lat, cmp_i64);
    double wall_s = (double)(t_end_ns - t_start_ns) / 1e9;
    printf("{\"mode\": \"probe-load\", \"clients\": %d, \"seconds\": %.3f, \"start_ns\": %lld, "
           "\"end_ns\": %lld, \"wall_s\": %.6f, \"probes\": %llu, \"capped\": %s, "
           "\"ok_200\": %llu, \"other_status\": %llu, \"failed\": %llu, \"probes_per_s\": %.1f, "
           "\"p50_ms\": %.3f, \"p90_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, "
           "\"client_user_s\": %.3f, \"client_sys_s\": %.3f}\n",
           opt.probe_clients, opt.seconds, (long long)t_start_ns, (long long)t_end_ns, wall_s, n,
           started_probes >= MAX_LOAD_PROBES ? "true" : "false",
           (unsigned long long)atomic_load(&load_ok), (unsigned long long)atomic_load(&load_other),
           (unsigned long long)atomic_load(&load_failed), wall_s > 0 ? (double)n / wall_s : 0.0,
           (double)pct_of(load_lat, n, 0.50) / 1e6, (double)pct_of(load_lat, n, 0.90) / 1e6,
           (double)pct_of(load_lat, n, 0.99) / 1e6, (double)(n ? load_lat[n - 1] : -1) / 1e6,
           user_s, sys_s);
    return 0;
}

static void print_series(const char *name, const uint64_t *v, uint64_t n, int last)
{
    printf("\"%s\": [", name);
    for (uint64_t i = 0; i < n; i++)
        printf("%s%llu", i ? ", " : "", (unsigned long long)v[i]);
    printf("]%s", last ? "" : ", ");
}

/* --mode paced: the timeline, up to the last bucket anything was sent or answered in. */
static void print_timeline(void)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < tl_buckets; i++)
        if (tl_sent[i] || tl_valid[i])
            n = i + 1;
    printf(",\n \"timeline\": {\"start_ns\": %lld, \"bucket_ns\": %lld, \"rate\": %.1f, "
           "\"stalls\": %llu, ", (long long)t_start_ns, (long long)tl_bucket_ns, opt.rate,
           (unsigned long long)paced_stalls);
    print_series("sent", tl_sent, n, 0);
    print_series("expected", tl_expected, n, 0);
    print_series("valid", tl_valid, n, 1);
    printf("}");
}

/* --dump N: each flow's first N packets as its sender would send them (sequence numbers from 0,
 * time 0), in hex, for tests to dissect. */
static int dump(void)
{
    uint64_t seq = 0;
    printf("{\"case\": \"%s\", \"payload\": %d, \"packets\": [", case_names[opt.which],
           opt.payload);
    for (int f = 0; f < opt.flows; f++) {
        printf("%s\n [", f ? "," : "");
        for (int i = 0; i < opt.dump; i++) {
            uint32_t id;
            uint8_t *p = next_packet(&flows[f], f, &id);
            stamp(p, &tpls[id], seq++, 0);
            printf("%s\"", i ? ", " : "");
            for (uint32_t b = 0; b < tpls[id].len; b++)
                printf("%02x", p[b]);
            printf("\"");
        }
        printf("]");
    }
    printf("]");
    if (opt.which == CASE_FIREWALL)
        printf(",\n \"next_conn\": %llu", (unsigned long long)next_conn());
    printf("}\n");
    return 0;
}

/* Firewall: the connections this run opened and where the next run must start. */
static void print_firewall(void)
{
    uint64_t opened = 0, closed = 0, denied = 0;
    for (uint32_t i = 0; i < n_tpl; i++) {
        const struct tpl *t = &tpls[i];
        opened += t->step == 0 ? tpl_sent[i] : 0;
        closed += t->step == FW_STEPS - 1 ? tpl_sent[i] : 0;
        denied += t->step == 0 && fw_kinds[t->kind].act == A_DROP ? tpl_sent[i] : 0;
    }
    printf(",\n \"firewall\": {\"first_conn\": %llu, \"next_conn\": %llu, \"pass_all\": %s, "
           "\"kinds\": %d, \"packets_per_connection\": %d, \"connections_opened\": %llu, "
           "\"connections_denied\": %llu, \"connections_closed\": %llu}",
           (unsigned long long)opt.first_conn, (unsigned long long)next_conn(),
           opt.pass_all ? "true" : "false", FW_KINDS, FW_STEPS, (unsigned long long)opened,
           (unsigned long long)denied, (unsigned long long)closed);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* the default 50 us slack would blur 100 us pacing */
    build_mix();
    if (opt.describe)
        return describe();
    if (opt.jitter) {
        rtts = calloc(opt.max_packets, sizeof *rtts);
        if (!rtts)
            die("calloc");
        return run_jitter();
    }
    if (opt.probe_only)
        return run_probe_only();
    if (opt.probe_load)
        return run_probe_load();
    build_templates();
    if (opt.dump)
        return dump();
    seen = calloc(opt.max_packets / 8 + 1, 1);
    rtts = opt.flood ? NULL : calloc(opt.max_packets, sizeof *rtts);
    wakes = opt.flood ? NULL : calloc(opt.max_packets, sizeof *wakes);
    if (!seen || (!opt.flood && (!rtts || !wakes)))
        die("calloc");
    if (opt.paced) { /* the send window, the drain after it, and a bucket to spare */
        tl_bucket_ns = (int64_t)opt.bucket_ms * 1000000LL;
        tl_buckets = (uint64_t)((opt.seconds * 1e9 + (double)DRAIN_MAX_NS) / (double)tl_bucket_ns)
                     + 2;
        tl_sent = calloc(tl_buckets, sizeof *tl_sent);
        tl_expected = calloc(tl_buckets, sizeof *tl_expected);
        tl_valid = calloc(tl_buckets, sizeof *tl_valid);
        if (!tl_sent || !tl_expected || !tl_valid)
            die("calloc");
    }

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
        for (int i = 0; i < opt.batch; i++)
            fl->msgs[i].msg_hdr = (struct msghdr){.msg_iov = &fl->iov[i], .msg_iovlen = 1};
    }

    t_start_ns = now_ns();
    pthread_t rx, tx, pr;
    if (pthread_create(&rx, NULL, receiver, &rfd)
        || (opt.probe_rate > 0 && pthread_create(&pr, NULL, prober, NULL))
        || pthread_create(&tx, NULL, sender, NULL)) {
        fprintf(stderr, "gen: pthread_create failed\n");
        return 1;
    }
    pthread_join(tx, NULL);
    pthread_join(rx, NULL);
    if (opt.probe_rate > 0)
        pthread_join(pr, NULL);

    double send_s = (double)(last_tx_ns - first_tx_ns) / 1e9;
    double rx_s = (double)(last_rx_ns - first_rx_ns) / 1e9;
    uint64_t nerr = 0, expected = 0;
    for (int k = 0; k < E_COUNT; k++)
        nerr += errors[k];
    uint64_t c_slots[N_CLS] = {0}, c_expect_slots[N_CLS] = {0}, c_sent[N_CLS] = {0},
             c_expected[N_CLS] = {0}, c_valid[N_CLS] = {0}, c_silent[N_CLS] = {0}, silent = 0;
    for (int k = 0; k < n_slots; k++) {
        c_slots[mix[k].cls]++;
        c_expect_slots[mix[k].cls] += mix[k].act != A_DROP || opt.pass_all;
    }
    for (uint32_t i = 0; i < n_tpl; i++) {
        const struct tpl *t = &tpls[i];
        c_sent[t->cls] += tpl_sent[i];
        c_valid[t->cls] += tpl_valid[i];
        if (t->expect) {
            c_expected[t->cls] += tpl_sent[i];
            expected += tpl_sent[i];
            if (tpl_sent[i] >= 2 && !tpl_valid[i]) { /* a packet the target drops but must not */
                c_silent[t->cls]++;
                silent++;
            }
        }
    }
    if (!opt.flood) {
        qsort(rtts, n_rtts, sizeof *rtts, cmp_i64);
        qsort(wakes, n_wakes, sizeof *wakes, cmp_i64);
    }

    printf("{\"mode\": \"%s\", \"case\": \"%s\", \"payload\": %d, \"flows\": %d, \"batch\": %d, "
           "\"slots\": %d, \"templates\": %u, \"max_packets\": %llu, \"rcvbuf\": %d,\n",
           opt.paced ? "paced" : opt.flood ? "flood" : "latency", case_names[opt.which],
           opt.payload, opt.flows, opt.batch, n_slots, n_tpl, (unsigned long long)opt.max_packets,
           rcvbuf);
    printf(" \"sent\": %llu, \"send_calls\": %llu, \"partial_sends\": %llu, "
           "\"send_errors\": {\"EAGAIN\": %llu, \"ENOBUFS\": %llu, \"ECONNREFUSED\": %llu, \"other\": %llu},\n",
           (unsigned long long)sent, (unsigned long long)send_calls,
           (unsigned long long)partial_sends, (unsigned long long)send_err[0],
           (unsigned long long)send_err[1], (unsigned long long)send_err[2],
           (unsigned long long)send_err[3]);
    printf(" \"send_seconds\": %.6f, \"offered_pps\": %.1f, \"first_tx_ns\": %lld, "
           "\"last_tx_ns\": %lld,\n", send_s, send_s > 0 ? (double)sent / send_s : 0.0,
           (long long)first_tx_ns, (long long)last_tx_ns);
    printf(" \"expected\": %llu, \"received\": %llu, \"valid\": %llu, \"invalid\": %llu, "
           "\"silent_templates\": %llu, \"late_stamps\": %llu, \"receive_seconds\": %.6f, "
           "\"returned_pps\": %.1f,\n",
           (unsigned long long)expected, (unsigned long long)received, (unsigned long long)valid,
           (unsigned long long)nerr, (unsigned long long)silent, (unsigned long long)late_stamps,
           rx_s, rx_s > 0 ? (double)received / rx_s : 0.0);
    printf(" \"classes\": {");
    int first = 1;
    for (int c = 0; c < N_CLS; c++) {
        if (!c_slots[c])
            continue;
        printf("%s\"%s\": {\"slots\": %llu, \"slots_answered\": %llu, \"sent\": %llu, "
               "\"expected\": %llu, \"valid\": %llu, \"silent_templates\": %llu}",
               first ? "" : ", ", cls_names[c], (unsigned long long)c_slots[c],
               (unsigned long long)c_expect_slots[c], (unsigned long long)c_sent[c],
               (unsigned long long)c_expected[c], (unsigned long long)c_valid[c],
               (unsigned long long)c_silent[c]);
        first = 0;
    }
    printf("},\n \"errors\": {");
    for (int k = 0; k < E_COUNT; k++)
        printf("%s\"%s\": %llu", k ? ", " : "", err_names[k], (unsigned long long)errors[k]);
    printf("},\n \"error_samples\": [");
    for (int i = 0; i < n_samples; i++)
        printf("%s\"%s\"", i ? ", " : "", samples[i]);
    printf("],\n \"probes\": ");
    if (opt.probe_rate > 0)
        print_probes();
    else
        printf("null");
    printf(",\n \"rtt_samples\": %llu, \"rtt_p50_ns\": %lld, \"rtt_p90_ns\": %lld, "
           "\"rtt_p99_ns\": %lld, \"rtt_p999_ns\": %lld, \"rtt_max_ns\": %lld,\n"
           " \"wake_late_p50_ns\": %lld, \"wake_late_p99_ns\": %lld, \"wake_late_max_ns\": %lld",
           (unsigned long long)n_rtts, (long long)pct(0.50), (long long)pct(0.90),
           (long long)pct(0.99), (long long)pct(0.999), (long long)(n_rtts ? rtts[n_rtts - 1] : -1),
           (long long)pct_of(wakes, n_wakes, 0.50), (long long)pct_of(wakes, n_wakes, 0.99),
           (long long)(n_wakes ? wakes[n_wakes - 1] : -1));
    if (opt.paced)
        print_timeline();
    if (opt.which == CASE_FIREWALL)
        print_firewall();
    printf("}\n");
    return 0;
}
