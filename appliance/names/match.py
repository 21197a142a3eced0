"""A list of host names from the config, compiled once so that matching a name costs a few set
lookups however long the list.

An entry is an exact name (`github.com`) or a wildcard (`*.example.com`: every name under
example.com at any depth, not example.com itself; list both for both). Entries are compared as
the parsers give names (hostname.py): case-insensitive, without a trailing dot, internationalised
names in their ASCII (punycode, `xn--`) form. Matching a name looks it up among the exact names,
then each of its proper suffixes that starts at a dot among the wildcards' bases: one lookup a
label.

Internationalised names are converted with Python's own IDNA codec (`encodings.idna`, IDNA 2003),
as no IDNA 2008 library is a dependency. The two agree except on four "deviation" characters
(ß, ς, and the zero-width joiner and non-joiner), which browsers now encode per IDNA 2008 and
Python's codec maps away (`faß.de` becomes `fass.de`, a different domain); an entry holding one
is refused, with the advice to write it in its `xn--` form.

Refused at load, each with a reason an operator can act on: anything not a host name, an IP
address (an address condition matches those), a `*` anywhere but as a whole leftmost label, and
a wildcard over a public suffix (`*.com`, `*.co.uk`, any single label), which would match every
domain anybody can register there. Public suffixes come from the Public Suffix List's ICANN
section only, bundled with the publicsuffixlist package (no network at load). Its private
section is left out on purpose: it lists platforms' customer namespaces (`s3.amazonaws.com`,
`cloudfront.net`, `github.io`) that one company runs, and allowing or denying such a platform
wholesale is a legitimate egress rule (`*.s3.amazonaws.com`); refusing it would only push
operators to less precise rules. `*.amazonaws.com` is allowed by either section.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from publicsuffixlist import PublicSuffixList

from appliance.names.hostname import normalise

WILDCARD = "*."
ACE_PREFIX = "xn--"  # an IDNA label in ASCII form
# Encoded differently by IDNA 2003 and IDNA 2008 (UTS #46 §4.1.1 "deviation characters").
DEVIATIONS = frozenset("\u00df\u03c2\u200c\u200d")
EXAMPLE = '["github.com", "*.example.com"]'


class NameList:
    """Exact names and wildcard bases (`example.com` for `*.example.com`), ASCII lower-case."""

    def __init__(self, exact: Iterable[str] = (), wildcards: Iterable[str] = ()) -> None:
        self.exact = frozenset(exact)
        self.wildcards = frozenset(wildcards)

    @classmethod
    def from_config(cls, values: list[str]) -> NameList:
        """The list a config gives; ValueError with the reason one entry cannot be used."""
        if not isinstance(values, list) or not values:
            raise ValueError(f"must be a non-empty list of names, such as {EXAMPLE}")
        exact: set[str] = set()
        wildcards: set[str] = set()
        for value in values:
            if not isinstance(value, str):
                raise ValueError(f"names are strings, such as {EXAMPLE}, not {value!r}")
            text = value.strip()
            if text.startswith(WILDCARD):
                wildcards.add(_wildcard_base(text[len(WILDCARD) :], value))
            else:
                exact.add(_ascii_name(text, value))
        return cls(exact, wildcards)

    def matches(self, name: str) -> bool:
        """Whether `name` (as the parsers give it; case and a trailing dot do not matter) is
        one of the exact names or lies under one of the wildcards."""
        if name.endswith("."):
            name = name[:-1]
        name = name.lower()
        if name in self.exact:
            return True
        wildcards = self.wildcards
        if wildcards:
            dot = name.find(".")
            while dot >= 0:
                if name[dot + 1 :] in wildcards:
                    return True
                dot = name.find(".", dot + 1)
        return False

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcards)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NameList) and (self.exact, self.wildcards) == (
            other.exact,
            other.wildcards,
        )

    def __hash__(self) -> int:
        return hash((self.exact, self.wildcards))

    def __repr__(self) -> str:
        names = sorted(self.exact) + [WILDCARD + base for base in sorted(self.wildcards)]
        return f"NameList({names!r})"


def _ascii_name(text: str, value: str) -> str:
    """`text` (an entry without its wildcard) as an ASCII host name; ValueError naming `value`."""
    if "*" in text:
        raise ValueError(f"{value!r}: a wildcard is a whole leftmost label, as in *.example.com")
    if DEVIATIONS.intersection(text):
        raise ValueError(
            f"{value!r} holds ß, ς or a zero-width joiner, which IDNA 2003 and IDNA 2008 encode"
            " differently: write the name in its ASCII xn-- form"
        )
    try:
        name = text if text.isascii() else text.encode("idna").decode("ascii")
        for label in name.lower().split("."):
            if label.startswith(ACE_PREFIX):
                label.encode("ascii").decode("idna")  # raises on a broken xn-- label
    except UnicodeError:
        raise ValueError(f"{value!r} is not a valid internationalised domain name") from None
    ascii_name = normalise(name.encode("ascii"))
    if ascii_name is None:
        raise ValueError(
            f"{value!r} is not a host name: dot-separated labels of letters, digits and hyphens,"
            " each 1-63 characters, at most 253 in all"
        )
    if ascii_name.rpartition(".")[2].isdigit():
        raise ValueError(f"{value!r} is an IP address, not a name: use an address condition")
    return ascii_name


def _wildcard_base(text: str, value: str) -> str:
    base = _ascii_name(text, value)
    if "." not in base or _public_suffixes().is_public(base):
        raise ValueError(
            f"{value!r} would match every domain registered under the public suffix {base!r}:"
            f" name a domain under it instead, such as *.example.{base}"
        )
    return base


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    """The ICANN section of the bundled Public Suffix List (module doc), parsed once (~25 ms)."""
    return PublicSuffixList(only_icann=True)
