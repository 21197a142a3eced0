"""A host name as it arrives on the wire (SNI, Host header, DNS labels), made comparable.

Why so strict: a filter and a server that read one name differently are a way around the
filter. A name here is what every parser and the name lists agree on: ASCII letters, digits,
hyphens and underscores (DNS service labels such as `_dmarc` have them) in dot-separated labels
of 1-63 characters, at most 253 characters in all, lower-cased, without a trailing dot. Anything
else (a NUL byte, a space, an empty label, UTF-8) is not a name; the parsers call it malformed.
"""

from __future__ import annotations

MAX_NAME_LEN = 253  # RFC 1035 §2.3.4: 255 octets on the wire, 253 characters as text
MAX_LABEL_LEN = 63
NAME_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789-_."


def normalise(raw: bytes | bytearray | memoryview) -> str | None:
    """`raw` lower-cased with one trailing dot removed, or None when it is not a name."""
    text = bytes(raw).lower()
    if text.endswith(b"."):
        text = text[:-1]
    if not 0 < len(text) <= MAX_NAME_LEN or text.translate(None, NAME_BYTES):
        return None
    labels = text.split(b".")
    if any(not 0 < len(label) <= MAX_LABEL_LEN for label in labels):
        return None
    return text.decode("ascii")
