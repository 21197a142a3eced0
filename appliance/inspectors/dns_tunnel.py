"""DNS tunnelling, told by the shape of the query name: an example inspector (inspection.py).

Enable it with a rule (UDP only: a DNS question over TCP is not read here):

    [[policy.rules]]
    name = "dns-tunnel"
    action = "inspect"
    inspector = "appliance.inspectors.dns_tunnel:inspect"
    on_error = "pass"
    match = { protocol = "udp", dst_port = 53 }

Each query is judged by its own name; `inspect` passes the query (this packet only, so the next
query is judged too) or drops the whole flow: a tunnel client keeps one socket, so its flow is
the tunnel, and its later queries and their answers go nowhere. A resolver that forwards many
clients' queries from one source port is one flow too: behind one, use `inspect_each_query`,
which drops the suspect query alone. Answers (QR set) and what is no DNS query pass.

Why these tests. Tunnels carry their data in the name, encoded in base32, base64 or hex, to a
zone their server answers for, and fill the name: long, with long random labels. The long names
people and clouds make are hyphenated words and ids. The labels left of the last two (the zone)
are cut at hyphens into runs, and a name is a tunnel's when
1. a run is longer than MAX_RUN_LEN (52): iodine cuts its data into 57-character labels
   (src/encoding.c, inline_dotify), dnscat2 into 62 (client/tunnel_drivers/driver_dns.c,
   MAX_FIELD_LENGTH). 52 leaves room for a SHA-256 in base32 (52) and hex digests up to SHA-1
   (40). Runs, not labels, since S3 bucket names, hyphenated, reach 63;
2. the name is longer than MAX_NAME_LEN (160): both tools fill names toward the 253 allowed
   (iodine's -M defaults to 255 octets), while the long lookups people make stay well under:
   an IPv6 reverse lookup is 72 characters, a DNS blocklist query for an IPv6 address about 80,
   a 63-character S3 bucket's dual-stack name with a Kubernetes search domain appended 136;
3. a run of at least MIN_ENTROPY_RUN_LEN (33) characters has a Shannon entropy over
   MIN_ENTROPY_BITS (4.0 bits a character) and fewer than MAX_VOWEL_SHARE (a quarter) of its
   letters vowels: random data in base32, base36 or base64. Entropy alone cannot tell it from
   words run together (an S3 bucket "companyproductionanalytics..."): measured on 20,000
   synthetic runs of 40 characters, 56% of words run together exceed 4.0 bits, against 99% of
   random base32. Their vowels tell (English has about 38% of its letters vowels, random base32
   19%): with the vowel test, 0.01% of the words run together and 71-82% of random runs of
   33-52 characters in base32, base36 or base64 are caught. A tunnel sends hundreds of queries,
   so missing some is cheap while each mistake drops a real flow. Hex never exceeds 4.0 bits
   (16 symbols), so hashes and hex ids pass; the floor of 33 spares the random ids clouds put
   in names, which we have seen at 32 characters at most: Lambda function URL ids and SES DKIM
   tokens (32), AppSync API ids (26).
Cost, with the Packet and the Inspector around it (timeit, this VM): 4.4 us a query for
www.example.com, 10 us for one with a long run to measure; well inside the default budget.
What this misses: a tunnel with short labels and short names (slow, but it gets through), data
in hex under 53 characters, and iodine's Base128 and raw encodings, whose bytes no host name
has: the parser calls such a query malformed (names/dns.py), and malformed queries pass here.
"""

from __future__ import annotations

import math
from collections import Counter

from appliance.inspection import DROP, DROP_FLOW, PASS, Packet, Result
from appliance.names.dns import parse_query
from appliance.names.result import Status

MAX_RUN_LEN = 52
MAX_NAME_LEN = 160
MIN_ENTROPY_RUN_LEN = 33
MIN_ENTROPY_BITS = 4.0
MAX_VOWEL_SHARE = 0.25
ZONE_LABELS = 2  # the rightmost labels, taken for the zone the name belongs to
UDP = 17
_VOWELS = frozenset("aeiou")


def inspect(packet: Packet) -> Result:
    """DROP_FLOW for a DNS query whose name looks like a tunnel's, else PASS (this query)."""
    return DROP_FLOW if _tunnel_query(packet) else PASS


def inspect_each_query(packet: Packet) -> Result:
    """The same test, dropping only the query that fails it: for a flow that carries many
    clients' queries (a forwarding resolver's)."""
    return DROP if _tunnel_query(packet) else PASS


def _tunnel_query(packet: Packet) -> bool:
    if packet.protocol != UDP:
        return False
    found = parse_query(packet.payload)  # never raises: bytes it cannot read are MALFORMED
    name = found.name if found.status is Status.COMPLETE else None
    return name is not None and why_tunnel(name) != ""


def why_tunnel(name: str) -> str:
    """Which test (module doc) `name` fails, in words; "" when it looks like a name people use.
    `name` is as the parser gives it: lower-case, without a trailing dot."""
    if len(name) > MAX_NAME_LEN:
        return f"a name of {len(name)} characters, over {MAX_NAME_LEN}"
    labels = name.split(".")[:-ZONE_LABELS]
    for label in labels:
        for run in label.split("-"):
            if len(run) > MAX_RUN_LEN:
                return f"a run of {len(run)} characters without a hyphen, over {MAX_RUN_LEN}"
            if len(run) >= MIN_ENTROPY_RUN_LEN and _random_looking(run):
                return f"a run of {len(run)} characters that looks random"
    return ""


def _random_looking(run: str) -> bool:
    letters = [c for c in run if c.isalpha()]
    if letters and sum(c in _VOWELS for c in letters) >= MAX_VOWEL_SHARE * len(letters):
        return False  # words: checked first, as it is the cheaper test
    return entropy_bits(run) > MIN_ENTROPY_BITS


def entropy_bits(text: str) -> float:
    """The Shannon entropy of `text`'s characters, in bits per character."""
    size = len(text)
    return -sum(n / size * math.log2(n / size) for n in Counter(text).values()) if size else 0.0
