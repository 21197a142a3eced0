"""Name lists: exact names, wildcards at any depth, IDNA, and the entries refused at load."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.names.match import NameList

LABEL = st.from_regex(r"[a-z0-9_]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


def names(*values: str) -> NameList:
    return NameList.from_config(list(values))


# --- exact names and wildcards -------------------------------------------------------------


def test_an_exact_name_matches_itself_only() -> None:
    listed = names("github.com")
    assert listed.matches("github.com")
    assert not listed.matches("api.github.com")
    assert not listed.matches("github.com.evil.example")
    assert not listed.matches("xgithub.com")
    assert not listed.matches("com")


def test_a_wildcard_matches_every_depth_below_its_base_but_not_the_base() -> None:
    listed = names("*.example.com")
    assert listed.matches("a.example.com")
    assert listed.matches("a.b.c.example.com")
    assert not listed.matches("example.com")
    assert not listed.matches("badexample.com")
    assert not listed.matches("a.badexample.com")
    assert not listed.matches("example.com.evil.net")
    assert not listed.matches("")


def test_listing_both_covers_the_base_and_below() -> None:
    listed = names("example.com", "*.example.com")
    assert listed.matches("example.com")
    assert listed.matches("www.example.com")


def test_case_and_a_trailing_dot_do_not_matter() -> None:
    listed = names("GitHub.COM.", " *.Example.Com ")
    for name in ("github.com", "GITHUB.com", "github.com.", "A.example.com", "b.EXAMPLE.com."):
        assert listed.matches(name), name
    assert listed == names("github.com", "*.example.com")


def test_amazonaws_and_platform_namespaces_may_be_wildcarded() -> None:
    """Only the PSL's ICANN section is refused (match.py says why)."""
    listed = names("*.amazonaws.com", "*.s3.amazonaws.com", "*.cloudfront.net", "*.github.io")
    assert listed.matches("sqs.eu-west-1.amazonaws.com")
    assert listed.matches("bucket.s3.amazonaws.com")
    assert not listed.matches("amazonaws.com")


def test_equal_lists_compare_and_hash_equal() -> None:
    a = names("a.example", "*.b.example")
    b = names("*.B.example", "A.example.", "a.example")
    assert a == b and hash(a) == hash(b) and len(a) == 2
    assert a != names("a.example")
    assert repr(a) == "NameList(['a.example', '*.b.example'])"


@settings(max_examples=300, deadline=None)
@given(st.lists(LABEL, min_size=1, max_size=4), st.lists(LABEL, min_size=2, max_size=4))
def test_wildcards_agree_with_a_suffix_test(prefix: list[str], base: list[str]) -> None:
    listed = NameList(wildcards=[".".join(base)])
    name = ".".join(prefix + base)
    assert listed.matches(name)
    assert not listed.matches(".".join(base))
    candidate = ".".join(prefix)
    assert listed.matches(candidate) == candidate.endswith("." + ".".join(base))


# --- internationalised names ------------------------------------------------------------------


def test_internationalised_names_are_compared_in_punycode() -> None:
    listed = names("bücher.de", "*.münchen.de", "例え.jp")
    assert listed.matches("xn--bcher-kva.de")
    assert listed.matches("www.xn--mnchen-3ya.de")
    assert listed.matches("xn--r8jz45g.jp")
    assert listed == names("XN--BCHER-KVA.de", "*.xn--mnchen-3ya.de", "xn--r8jz45g.jp")


def test_unicode_case_and_full_stops_are_folded() -> None:
    assert names("BÜCHER。DE").matches("xn--bcher-kva.de")


# --- refused at load -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (["*.com"], "public suffix 'com'"),
        (["*.co.uk"], "public suffix 'co.uk'"),
        (["*.kawasaki.jp"], "public suffix"),  # a wildcard rule in the PSL
        (["*.anything.kawasaki.jp"], "public suffix"),
        (["*.рф"], "public suffix 'xn--p1ai'"),
        (["*.corp"], "public suffix 'corp'"),  # any single label
        (["*"], "whole leftmost label"),
        (["*example.com"], "whole leftmost label"),
        (["a.*.example.com"], "whole leftmost label"),
        (["*.*.example.com"], "whole leftmost label"),
        (["10.0.0.1"], "IP address"),
        (["*.0.0.10"], "IP address"),
        (["2001:db8::1"], "not a host name"),
        (["https://example.com/"], "not a host name"),
        (["a b.example"], "not a host name"),
        (["a..example"], "not a host name"),
        ([""], "not a host name"),
        (["a" * 64 + ".example"], "not a host name"),
        ([("a" * 60 + ".") * 5 + "example"], "not a host name"),
        (["faß.de"], "xn-- form"),
        (["ς.example"], "xn-- form"),
        (["xn--zz-.example"], "not a valid internationalised"),
        ([], "non-empty list"),
        ("github.com", "non-empty list"),
        ([3], "strings"),
    ],
)
def test_what_cannot_be_used_is_refused_with_a_reason(values: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        NameList.from_config(values)  # type: ignore[arg-type]


def test_the_refusal_names_the_entry_and_suggests_a_fix() -> None:
    with pytest.raises(ValueError) as refused:
        names("ok.example", "*.co.uk")
    assert str(refused.value) == (
        "'*.co.uk' would match every domain registered under the public suffix 'co.uk':"
        " name a domain under it instead, such as *.example.co.uk"
    )
