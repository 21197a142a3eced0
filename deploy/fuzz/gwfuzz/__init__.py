"""The differential wire fuzz of the appliance (deploy/fuzz/wirefuzz.py is its command line).

The second opinion, written from the RFCs and DESIGN.md:
    checksum     RFC 1071 sums and the one's-complement residue of a buffer
    strict       the strict decoder: every rule a GWLB datagram breaks, layer by layer
    demo_policy  what config/default.toml's four rules do to a decoded datagram, the rewrite
    oracle       per datagram, what a strict appliance answers and what the product should;
                 per reply, whether it is an acceptable answer
    tolerances   the understood differences between the two, each with its reason
The fuzz around it:
    packets      well-formed GWLB datagrams from a seeded Random
    mutate       their mutations, and datagram k of seed S
    bed          namespaces, applianced, and the sockets that play GWLB
    stats        the appliance's counters (stats table, appliancectl) and the kernel's (snmp)
    session      send a window, wait until it has settled, attribute each reply
    classify     each datagram's class and status, tallied
    report       the figures, the counter cross-check, examples in hex

None of them imports the product (appliance/, config/, supervisor/, health/);
tests/e2e/test_wire_fuzz.py walks their imports to keep it so.
"""
