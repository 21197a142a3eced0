"""Internet checksums: RFC 1071 sums and RFC 1624 incremental updates.

Why `int.from_bytes` and `% 0xFFFF`: 2**16 is 1 modulo 0xFFFF, so the one's-complement sum of
the 16-bit big-endian words of a buffer is the buffer read as one big integer, modulo 0xFFFF. One
C-level conversion and one modulo replace a Python loop over words. The only care needed is the
representation of zero: a non-zero buffer whose words sum to a multiple of 0xFFFF has the
one's-complement sum 0xFFFF (negative zero), as an end-around-carry adder computes it.
"""

from __future__ import annotations

from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview


def fold(total: int) -> int:
    """Fold a non-negative sum of 16-bit words into a 16-bit one's-complement sum."""
    folded = total % 0xFFFF
    if folded == 0 and total:
        return 0xFFFF
    return folded


def ones_sum(data: Buffer) -> int:
    """The (unfolded) sum of `data` as big-endian 16-bit words, odd length padded with zero."""
    view = memoryview(data)
    value = int.from_bytes(view, "big")
    if len(view) & 1:
        value <<= 8
    return value


def finish(total: int) -> int:
    """The checksum field for a sum that covers everything but the checksum field itself."""
    return ~fold(total) & 0xFFFF


def internet_checksum(data: Buffer) -> int:
    """RFC 1071 checksum of `data` (its checksum field must be zero or excluded)."""
    return finish(ones_sum(data))


def pseudo_header_sum_v4(src: Buffer, dst: Buffer, protocol: int, length: int) -> int:
    """Sum of the IPv4 pseudo-header (RFC 768): addresses, protocol, transport length."""
    return ones_sum(src) + ones_sum(dst) + protocol + length


def pseudo_header_sum_v6(src: Buffer, dst: Buffer, protocol: int, length: int) -> int:
    """Sum of the IPv6 pseudo-header (RFC 8200 §8.1): addresses, upper-layer length, next header."""
    return ones_sum(src) + ones_sum(dst) + (length >> 16) + (length & 0xFFFF) + protocol


def udp_checksum_field(total: int) -> int:
    """UDP checksum field from a full sum: a computed zero is sent as 0xFFFF (RFC 768)."""
    return finish(total) or 0xFFFF


def adjust(checksum: int, old_word: int, new_word: int) -> int:
    """RFC 1624 eqn. 3: the checksum after one 16-bit word changed from old_word to new_word.

    HC' = ~(~HC + ~m + m'); valid for any field, with no risk of the -0 trap of eqn. 2.
    """
    total = (~checksum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    return ~fold(total) & 0xFFFF


def adjust_sum(checksum: int, change: int) -> int:
    """RFC 1624 eqn. 3 for any number of changed words at once: the checksum after the sum of
    the words it covers changed by `change` (new words' sum minus old, any integer).

    ~x is 0xFFFF - x, which is -x modulo 0xFFFF, so ~HC + ~m + m' is m' - m - HC and its
    complement HC - (m' - m): (checksum - change) % 0xFFFF. Eqn. 3 writes that value's zero as
    0x0000 (never 0xFFFF) unless its sum is all zeros, so this equals `adjust(checksum, m, m')`
    for every word change but one: checksum 0xFFFF, m 0xFFFF, m' 0 (adjust: 0xFFFF; this: 0).
    A UDP checksum field is then `adjust_sum(...) or 0xFFFF` (RFC 768: a computed zero is sent
    as 0xFFFF), as udp_checksum_field of the full sum would give.
    """
    return (checksum - change) % 0xFFFF
