/*
 * reflector.c: the minimal C reference reflector the benchmark compares applianced with.
 *
 * Same wire contract (DESIGN.md §1) and the same demo policy, hard-coded, with the same parsing
 * strictness as applianced (a datagram it would call malformed is dropped here too):
 *   - Geneve: version 0, IPv4 or IPv6 inside, GWLB's three AWS options (class 0x0108, types 1, 2
 *     and 3) present with their lengths; a control message (O bit) or an unknown critical option
 *     is dropped;
 *   - the inner IPv4 header (IHL, total length) or IPv6 header (payload length) and its extension
 *     header chain (hop-by-hop, routing, fragment, destination options, AH, mobility, HIP, shim6);
 *   - inner UDP (IPv4 or IPv6) with port 3000 (source or destination): drop when the payload
 *     contains "drop me"; else replace every "weakly typed" by "strongly typed", fixing the inner
 *     IPv4 total length and header checksum (updated as RFC 1624 says, as applianced does) or the
 *     IPv6 payload length, and the UDP length and
 *     checksum (over IPv4 a zero UDP checksum stays zero, RFC 768; over IPv6 it is mandatory);
 *   - inner ICMP echo request/reply (types 8/0) and ICMPv6 echo (128/129) whose sequence number is
 *     a multiple of 5: drop;
 *   - anything else passes unchanged (TCP after a check of its header length).
 * A later fragment passes; a first fragment, or an IPv6 packet with a routing header that still
 * has segments left, is dropped when it would need a rewrite; so is a rewrite that would push the
 * inner packet over 8500 bytes.
 * Loop: recvmmsg (batch 64) on a SO_REUSEPORT UDP socket bound to 0.0.0.0:6081 with IP_PKTINFO;
 * per datagram the verdict, then the outer IPv4+UDP header written in the 28 bytes of headroom in
 * front of it (source = the address it arrived on, destination = the sender, UDP source = the
 * sender's port, destination 6081, UDP checksum 0); then one sendmmsg on an IPPROTO_RAW socket.
 * The Geneve header and options go back byte for byte.
 *
 * --sink: receive and discard everything (no policy, no replies): a target that costs the load
 * generator nothing but its sends, to measure the generator's own ceiling.
 * SIGTERM/SIGINT stop it, and so does --max-seconds (default 600), so it can never outlive a
 * benchmark by much.
 * Build: gcc -O2 -Wall -Wextra -o reflector reflector.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define GENEVE_PORT 6081
#define BATCH 64
#define HEADROOM 28     /* reply IPv4 + UDP header, written in front of the datagram */
#define MAX_DGRAM 9216  /* > a 9001-byte MTU's datagram; larger ones come back MSG_TRUNC */
#define SLOT (HEADROOM + MAX_DGRAM)
#define MAX_INNER 8500  /* GWLB's limit for the inner packet */

static const char DROP_TEXT[] = "drop me";
static const char FIND[] = "weakly typed";
static const char REPLACE[] = "strongly typed";
#define FIND_LEN (sizeof FIND - 1)
#define REPLACE_LEN (sizeof REPLACE - 1)

enum verdict { PASS, REWRITTEN, DROP, MALFORMED };

static volatile sig_atomic_t stopping;
static unsigned long long n_received, n_passed, n_rewritten, n_dropped, n_malformed, n_sent,
    n_send_errors, n_partial;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }

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

static void set_ip_checksum(uint8_t *ip, size_t ihl)
{
    put16(ip + 10, 0);
    put16(ip + 10, (uint16_t)~fold(sum16(ip, ihl, 0)));
}

/* RFC 1624 eqn. 3: the header checksum after the 16-bit word at `at` became `word`. Like
 * applianced, so a header that arrived with a wrong checksum keeps it wrong by the same amount. */
static void adjust_ip_checksum(uint8_t *ip, size_t at, uint16_t word)
{
    uint32_t s = (uint32_t)(uint16_t)~get16(ip + 10) + (uint16_t)~get16(ip + at) + word;
    put16(ip + at, word);
    put16(ip + 10, (uint16_t)~fold(s));
}

/*
 * Replace every FIND in the UDP payload at pay[0:*plen] (room up to `cap` bytes) by REPLACE, in
 * place. Occurrences are found front to back (they cannot overlap: "weakly typed" has no border),
 * then the segments between them are moved back to front, so nothing is overwritten before it is
 * moved. Return the number of occurrences, or -1 (nothing changed) when the result would not fit.
 */
#define MAX_HITS (MAX_DGRAM / FIND_LEN + 1)
static long replace_all(uint8_t *pay, size_t *plen, size_t cap)
{
    size_t n = *plen, hits = 0, at[MAX_HITS];
    for (const uint8_t *p = pay; hits < MAX_HITS
         && (p = memmem(p, n - (size_t)(p - pay), FIND, FIND_LEN)) != NULL; p += FIND_LEN)
        at[hits++] = (size_t)(p - pay);
    size_t out_len = n + hits * (REPLACE_LEN - FIND_LEN);
    if (!hits || out_len > cap)
        return hits ? -1 : 0;
    size_t tail_end = n; /* the input segment [at[k] + FIND_LEN, tail_end) moves by the growth so far */
    for (size_t k = hits; k-- > 0;) {
        size_t from = at[k] + FIND_LEN, shift = (k + 1) * (REPLACE_LEN - FIND_LEN);
        memmove(pay + from + shift, pay + from, tail_end - from);
        memcpy(pay + at[k] + k * (REPLACE_LEN - FIND_LEN), REPLACE, REPLACE_LEN);
        tail_end = at[k];
    }
    *plen = out_len;
    return (long)hits;
}

/*
 * The Geneve header at d[0:n]: version 0, not a control message, IPv4 or IPv6 inside, and GWLB's
 * three options (class 0x0108, types 1, 2, 3 with 8, 8 and 4 bytes), in any order; an unknown
 * critical option refuses the packet (RFC 8926). Return its length, or 0 (*v = DROP or MALFORMED).
 */
static size_t check_geneve(const uint8_t *d, size_t n, enum verdict *v)
{
    static const uint8_t usual[] = {0x01, 0x08, 1, 2}, usual2[] = {0x01, 0x08, 2, 2},
                         usual3[] = {0x01, 0x08, 3, 1};
    *v = MALFORMED;
    if (n < 8 || d[0] >> 6 != 0)
        return 0;
    if (d[1] & 0x80) {
        *v = DROP; /* O bit: a control message, nothing to answer */
        return 0;
    }
    size_t glen = 8 + (size_t)(d[0] & 0x3f) * 4;
    uint16_t proto = get16(d + 2);
    if (glen > n || (proto != 0x0800 && proto != 0x86dd))
        return 0;
    if (glen == 40 && !memcmp(d + 8, usual, 4) && !memcmp(d + 20, usual2, 4)
        && !memcmp(d + 32, usual3, 4))
        return glen; /* GWLB's usual layout */
    int found = 0;
    for (size_t off = 8; off < glen;) {
        if (off + 4 > glen)
            return 0;
        size_t body = (size_t)(d[off + 3] & 0x1f) * 4;
        if (off + 4 + body > glen)
            return 0;
        if (get16(d + off) == 0x0108 && d[off + 2] >= 1 && d[off + 2] <= 3) {
            if (body != (d[off + 2] == 3 ? 4u : 8u))
                return 0;
            found |= 1 << d[off + 2];
        } else if (d[off + 2] & 0x80) {
            return 0; /* a critical option we do not understand */
        }
        off += 4 + body;
    }
    return found == 0xe ? glen : 0;
}

/* The inner packet, as far as the policy needs it. */
struct inner {
    uint8_t *ip, *l4;
    size_t ilen, l4len;
    int v6, proto, first_fragment, later_fragment, routed;
};

static enum verdict parse_ipv4(uint8_t *ip, size_t ilen, struct inner *p)
{
    if (ilen < 20 || ip[0] >> 4 != 4)
        return MALFORMED;
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4, total = get16(ip + 2);
    if (ihl < 20 || ihl > total || total != ilen)
        return MALFORMED;
    uint16_t frag = get16(ip + 6);
    p->later_fragment = (frag & 0x1fff) != 0;
    p->first_fragment = !p->later_fragment && (frag & 0x2000);
    p->proto = ip[9];
    p->l4 = ip + ihl;
    p->l4len = total - ihl;
    return PASS;
}

/* IPv6 and its extension-header chain (RFC 8200 §4; AH's length is in 4-byte words). */
static enum verdict parse_ipv6(uint8_t *ip, size_t ilen, struct inner *p)
{
    if (ilen < 40 || ip[0] >> 4 != 6 || get16(ip + 4) != ilen - 40)
        return MALFORMED;
    size_t off = 40;
    int next = ip[6];
    for (int count = 0;; count++) {
        if (count > 16)
            return MALFORMED;
        if (next == 0 || next == 43 || next == 51 || next == 60 || next == 135 || next == 139
            || next == 140) {
            if ((next == 0 && count) || off + 8 > ilen)
                return MALFORMED;
            if (next == 43 && ip[off + 3])
                p->routed = 1; /* segments left: the pseudo-header's destination is elsewhere */
            size_t size = next == 51 ? ((size_t)ip[off + 1] + 2) * 4 : ((size_t)ip[off + 1] + 1) * 8;
            if (off + size > ilen)
                return MALFORMED;
            next = ip[off];
            off += size;
        } else if (next == 44) {
            if (off + 8 > ilen)
                return MALFORMED;
            uint16_t frag = get16(ip + off + 2);
            if (frag >> 3)
                p->later_fragment = 1;
            else if (frag & 1)
                p->first_fragment = 1;
            next = ip[off];
            off += 8;
        } else {
            break;
        }
    }
    p->proto = next;
    p->l4 = ip + off;
    p->l4len = ilen - off;
    return PASS;
}

/* The transport checksum of a rewritten UDP datagram (IPv4 or IPv6 pseudo-header). */
static void set_udp_checksum(const struct inner *p, size_t udp_len)
{
    put16(p->l4 + 6, 0);
    uint32_t s = p->v6 ? sum16(p->ip + 8, 32, 0) : sum16(p->ip + 12, 8, 0);
    s += 17 + (uint32_t)udp_len;
    uint16_t c = (uint16_t)~fold(sum16(p->l4, udp_len, s));
    put16(p->l4 + 6, c ? c : 0xffff);
}

/* The demo policy for the Geneve datagram d[0:*len] (room for `cap` bytes); may rewrite it. */
static enum verdict decide(uint8_t *d, size_t *len, size_t cap)
{
    enum verdict v;
    size_t n = *len, glen = check_geneve(d, n, &v);
    if (!glen)
        return v;
    struct inner p = {.v6 = get16(d + 2) == 0x86dd};
    v = p.v6 ? parse_ipv6(d + glen, n - glen, &p) : parse_ipv4(d + glen, n - glen, &p);
    if (v != PASS)
        return v;
    p.ip = d + glen;
    if (p.later_fragment)
        return PASS; /* no transport header */
    uint8_t *l4 = p.l4;
    size_t l4len = p.l4len;
    if (p.proto == (p.v6 ? 58 : 1)) { /* ICMP or ICMPv6 */
        if (l4len < 8)
            return MALFORMED;
        int echo = p.v6 ? l4[0] == 128 || l4[0] == 129 : l4[0] == 8 || l4[0] == 0;
        return echo && get16(l4 + 6) % 5 == 0 ? DROP : PASS;
    }
    if (p.proto == 6) { /* TCP: no rule for it, but the header must be whole */
        size_t off = (size_t)(l4[12] >> 4) * 4;
        return l4len < 20 || off < 20 || off > l4len ? MALFORMED : PASS;
    }
    if (p.proto != 17)
        return PASS;
    if (l4len < 8)
        return MALFORMED;
    size_t udp_len = get16(l4 + 4);
    if (udp_len < 8 || (!p.first_fragment && udp_len != l4len))
        return MALFORMED;
    if (get16(l4) != 3000 && get16(l4 + 2) != 3000)
        return PASS;
    uint8_t *pay = l4 + 8;
    size_t plen = l4len - 8;
    if (memmem(pay, plen, DROP_TEXT, sizeof DROP_TEXT - 1))
        return DROP;
    if (!memmem(pay, plen, FIND, FIND_LEN))
        return PASS;
    if (p.first_fragment || p.routed)
        return DROP; /* cannot rewrite without reassembly, or with another final destination */
    size_t before = (size_t)(pay - p.ip);  /* IP and extension headers + UDP header */
    size_t room = MAX_INNER - before;      /* the payload may grow to this */
    size_t limit = cap - (size_t)(pay - d);
    if (limit < room)
        room = limit;
    if (replace_all(pay, &plen, room) < 0)
        return DROP; /* would exceed GWLB's 8500-byte inner packet */
    size_t total = before + plen;
    if (p.v6) {
        put16(p.ip + 4, (uint16_t)(total - 40));
    } else {
        adjust_ip_checksum(p.ip, 2, (uint16_t)total);
    }
    put16(l4 + 4, (uint16_t)(8 + plen));
    if (p.v6 || get16(l4 + 6) != 0) /* zero = "no checksum" over IPv4, and stays so */
        set_udp_checksum(&p, 8 + plen);
    *len = glen + total;
    return REWRITTEN;
}

/* The outer IPv4 + UDP header in the 28 bytes before a reply of `len` bytes. */
static void write_outer(uint8_t *h, struct in_addr local, const struct sockaddr_in *peer, size_t len)
{
    memset(h, 0, HEADROOM);
    h[0] = 0x45;
    put16(h + 2, (uint16_t)(HEADROOM + len));
    put16(h + 6, 0x4000); /* DF */
    h[8] = 64;
    h[9] = 17;
    memcpy(h + 12, &local.s_addr, 4);
    memcpy(h + 16, &peer->sin_addr.s_addr, 4);
    set_ip_checksum(h, 20);
    memcpy(h + 20, &peer->sin_port, 2); /* ports not swapped: from GWLB's port ... */
    put16(h + 22, GENEVE_PORT);          /* ... to 6081 */
    put16(h + 24, (uint16_t)(8 + len));
    /* h[26..27]: UDP checksum 0, allowed for Geneve over IPv4 (RFC 8926) */
}

static void die(const char *what)
{
    fprintf(stderr, "reflector: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv)
{
    double max_seconds = 600;
    int sink = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--max-seconds") && i + 1 < argc) {
            max_seconds = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--sink")) {
            sink = 1;
        } else {
            fprintf(stderr, "usage: reflector [--sink] [--max-seconds S]\n");
            return 2;
        }
    }
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: recvmmsg returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int one = 1, rcvbuf = 8 << 20, sndbuf = 4 << 20;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0)
        die("socket");
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0
        || setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one) < 0)
        die("setsockopt");
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct timeval tv = {0, 200000}; /* wake up now and then to see the deadline */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0)
        die("SO_RCVTIMEO");
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons(GENEVE_PORT)};
    if (bind(fd, (struct sockaddr *)&any, sizeof any) < 0)
        die("bind 0.0.0.0:6081");
    int raw = socket(AF_INET, SOCK_RAW, IPPROTO_RAW); /* IP_HDRINCL implied */
    if (raw < 0)
        die("raw socket");
    if (setsockopt(raw, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) < 0)
        setsockopt(raw, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

    static uint8_t slots[BATCH][SLOT];
    static struct sockaddr_in peers[BATCH];
    static char control[BATCH][CMSG_SPACE(sizeof(struct in_pktinfo))];
    struct mmsghdr rx[BATCH], tx[BATCH];
    struct iovec rx_iov[BATCH], tx_iov[BATCH];
    for (int i = 0; i < BATCH; i++)
        rx_iov[i] = (struct iovec){slots[i] + HEADROOM, MAX_DGRAM};

    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (stopping || (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 > max_seconds)
            break;
        for (int i = 0; i < BATCH; i++)  /* the kernel rewrote the name and control lengths */
            rx[i].msg_hdr = (struct msghdr){
                .msg_name = &peers[i], .msg_namelen = sizeof peers[i], .msg_iov = &rx_iov[i],
                .msg_iovlen = 1, .msg_control = control[i], .msg_controllen = sizeof control[i]};
        int n = recvmmsg(fd, rx, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            die("recvmmsg");
        }
        n_received += (unsigned)n;
        if (sink)
            continue;
        int out = 0;
        for (int i = 0; i < n; i++) {
            if (rx[i].msg_hdr.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
                n_malformed++;
                continue;
            }
            struct in_addr local = {0};
            int have_local = 0;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&rx[i].msg_hdr); c; c = CMSG_NXTHDR(&rx[i].msg_hdr, c))
                if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
                    struct in_pktinfo pi;
                    memcpy(&pi, CMSG_DATA(c), sizeof pi);
                    local = pi.ipi_addr; /* the header's destination: the address it came to */
                    have_local = 1;
                }
            size_t len = rx[i].msg_len;
            enum verdict v = have_local ? decide(slots[i] + HEADROOM, &len, MAX_DGRAM) : MALFORMED;
            if (v == DROP) { n_dropped++; continue; }
            if (v == MALFORMED) { n_malformed++; continue; }
            if (v == PASS) n_passed++; else n_rewritten++;
            write_outer(slots[i], local, &peers[i], len);
            tx_iov[out] = (struct iovec){slots[i], HEADROOM + len};
            tx[out].msg_hdr = (struct msghdr){.msg_name = &peers[i], .msg_namelen = sizeof peers[i],
                                              .msg_iov = &tx_iov[out], .msg_iovlen = 1};
            out++;
        }
        /* Raw sockets ignore the port in msg_name; the address routes the packet. Each round
         * moves `pos` by at least one, so this ends; a refused packet is skipped, not retried. */
        for (int pos = 0; pos < out;) {
            int done = sendmmsg(raw, tx + pos, (unsigned)(out - pos), 0);
            if (done < 0) {
                n_send_errors++;
                pos++;
            } else {
                if (done < out - pos)
                    n_partial++;
                n_sent += (unsigned)done;
                pos += done;
            }
        }
    }
    fprintf(stderr,
            "{\"received\": %llu, \"passed\": %llu, \"rewritten\": %llu, \"dropped\": %llu, "
            "\"malformed\": %llu, \"sent\": %llu, \"send_errors\": %llu, \"partial_sends\": %llu}\n",
            n_received, n_passed, n_rewritten, n_dropped, n_malformed, n_sent, n_send_errors,
            n_partial);
    return 0;
}
