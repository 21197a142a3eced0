"""The outer IPv4 + UDP header of a reply to GWLB (DESIGN.md §1).

Source = the local address the packet arrived on, destination = the GWLB node that sent it, UDP
ports as they came (src = GWLB's port, dst = 6081), UDP checksum 0 (RFC 8926 allows it over IPv4),
DF set, IP ID 0 (RFC 6864 §4.1: an atomic datagram's ID carries nothing).

The IPv4 header checksum is left 0 on purpose: on an IP_HDRINCL raw socket Linux always fills in
the header checksum and the total length (raw(7), net/ipv4/raw.c: raw_send_hdrinc), so computing
it would be work the kernel throws away. We still write the right total length, so the header
reads true before it is sent. The socket backend (batchio.SendBatch) writes the constant fields
into every slot's headroom once, copies a batch's addresses and ports into all its headers with
three strided copies, and per reply stores only the two lengths: no lookup, and no cache to miss
when GWLB spreads flows over thousands of source ports (one pack_into per reply measured 110 ns
against 160 ns for a cached header; the per-batch copies are cheaper still, deploy/bench/README.md).
The wire tests check the header as it arrives, checksum included.
"""

from __future__ import annotations

import struct

HEADER_LEN = 28  # IPv4 without options + UDP
TTL = 64
VERSION_IHL_TOS = 0x4500
DONT_FRAGMENT = 0x4000
TTL_PROTOCOL = TTL << 8 | 17  # UDP
# version/IHL/TOS, total length, ID, flags/fragment offset, TTL/protocol, checksum (the kernel's),
# source, destination; UDP source port, destination port, length, checksum.
HEADER = struct.Struct("!HHHHHHIIHHHH")
