"""The differences between the strict decoder and the product that are understood, and why.

TOLERATED: rules the strict decoder enforces and the product, by a documented choice, does not:
    it answers such a datagram as if the rule held, and the oracle checks that answer.
STRICTER: legal datagrams the product refuses, by a documented bound.
KNOWN_BUGS: differences that are the product's bugs, reported and not yet fixed; each has a
    strict xfail in tests/e2e/test_wire_fuzz.py that starts failing once the product is fixed,
    so that the entry is removed.
Any other difference is unexplained: a bug in the product or in the decoder, to be looked at.
"""

from __future__ import annotations

TOLERATED = {
    "geneve.vni": "the product does not check the VNI: RFC 8926 gives it no required value and "
    "DESIGN.md lists GWLB's 0 as a fact; the reply carries it back unchanged",
    "geneve.c_bit": "the product walks every option whatever the C bit says; the bit only lets "
    "a reader that skips options know it must not (RFC 8926 §3.4)",
    "geneve.aws_option_duplicate": "the product keeps the last of each AWS option; the reply "
    "echoes the header byte for byte, so GWLB gets back what it sent",
    "inner.over_8500": "GWLB never sends more than 8500 inner bytes (it drops them itself); the "
    "product bounds only what it grows (a rewrite past 8500 is 'oversize') and passes on what "
    "it received, up to its 9001-byte receive slot",
    "ipv4.options": "the product does not parse IPv4 options: it forwards them untouched for "
    "the receiver to judge",
    "ipv4.reserved_flag": "the product does not look at the reserved flag; it forwards it",
    "ipv4.fragment_size": "the product does not check fragment sizes; reassembly at the end "
    "host does",
    "ipv4.fragment_overrun": "the product does not check fragment offsets; reassembly at the end "
    "host does",
    "ipv6.option_tlv": "the product skips hop-by-hop and destination options by the header's "
    "length without parsing the TLVs inside",
    "udp.first_fragment_length": "in a first fragment the product checks only that the UDP "
    "length is at least 8 (appliance/inner.py: it 'covers data to come'); reassembly rejects it",
    "udp.zero_checksum_ipv6": "a bump in the wire passes checksums on for the end host to judge "
    "(RFC 8200 §8.1 tells the receiver to discard it); a rewrite computes a correct one",
}

STRICTER = {
    "ipv6.over_16_extension_headers": "the product bounds its extension-header walk at 16 "
    "headers (appliance/inner.py MAX_EXTENSION_HEADERS); RFC 8504 §5.3 lets a node limit it",
}

KNOWN_BUGS: dict[str, str] = {}  # the last one (a later IPv6 fragment naming an extension
# header was walked into) was fixed in appliance/inner.py; its test now passes strictly
