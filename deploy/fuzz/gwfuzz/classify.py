"""Each datagram's fate, set against the strict decoder's: one class per datagram, tallied.

agree        the appliance did what a strict appliance does: answered it acceptably, or
             dropped what the decoder drops (class "answer:..." or "drop:...")
explained    answered-but-should-drop where every rule broken is one the product tolerates
             on purpose, with an acceptable answer; dropped-but-should-pass where the product
             is documented stricter (tolerances.py says why, per class)
known-bug    a difference tolerances.KNOWN_BUGS names: the product's bug, reported, not fixed
unexplained  anything else: a reply the decoder rejects ("rejected:..."), two replies to one
             datagram, answered-but-should-drop, dropped-but-should-pass
lost         no reply in a window where the appliance's socket overflowed (RcvbufErrors):
             not a policy difference, reported apart
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gwfuzz.mutate import Made
from gwfuzz.oracle import Outer, Prediction, outer_problems, payload_problems, predict
from gwfuzz.stats import PRODUCT_REASONS, TOO_BIG
from gwfuzz.strict import EXTENSIONS, LATER
from gwfuzz.tolerances import KNOWN_BUGS, STRICTER, TOLERATED

SLOT_BYTES = 9001  # the appliance's receive slot: a longer datagram arrives cut (MSG_TRUNC)
REPLY_ROOM = 9001 - 28  # the bed's MTU less the reply's IPv4 and UDP headers


@dataclass(slots=True)
class Sent:
    made: Made
    seen: bytes | None  # what the appliance's socket receives; None when the kernel drops it
    kernel: str  # why the kernel drops it, "" when it does not
    outer: Outer
    replies: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class Fate:
    cls: str
    status: str  # agree, explained, unexplained, lost
    # What the product's counters should say: "answered:pass" or ":rewrite" ("answered" alone
    # when it should not have been), "dropped:RULE", "malformed:REASON", "oversize",
    # "unrewritable", "kernel" (never reached the appliance), "?" (a drop nobody foresaw).
    category: str
    problems: tuple[str, ...] = ()


def fate(sent: Sent, overflowed: bool) -> Fate:
    """The class of one datagram, given its replies."""
    if sent.seen is None:
        if sent.replies:
            return Fate(f"answered-kernel-drop:{sent.kernel}", "unexplained", "answered")
        return Fate(f"drop:kernel-{sent.kernel}", "agree", "kernel")
    prediction = predict(sent.seen)
    if len(sent.replies) > 1:
        return Fate("duplicate-reply", "unexplained", "answered")
    if sent.replies:
        return _answered(sent, prediction)
    return _dropped(sent, prediction, overflowed)


def _answered(sent: Sent, p: Prediction) -> Fate:
    assert sent.seen is not None
    problems, payload = outer_problems(sent.replies[0], sent.outer)
    if p.lenient_answers:
        if payload:
            problems += payload_problems(sent.seen, p, payload)
        if problems:
            return Fate(f"rejected:{problems[0]}", "unexplained", "answered", tuple(problems))
        assert p.verdict is not None
        answered = f"answered:{p.verdict.outcome.value}"
        if p.strict_answers:
            return Fate(f"answer:{p.verdict.outcome.value}", "agree", answered)
        return Fate(f"answered-but-should-drop:{p.tolerated[0]}", "explained", answered)
    verdict = p.verdict
    why = p.hard[0] if p.hard else f"{verdict.outcome.value}-{verdict.rule}" if verdict else "?"
    how = "unchanged" if payload == sent.seen else "changed"
    return Fate(f"answered-but-should-drop:{why}", "unexplained", "answered", (how, *problems))


def _dropped(sent: Sent, p: Prediction, overflowed: bool) -> Fate:
    assert sent.seen is not None
    category = _category(sent.seen, p)
    if p.lenient_answers and REPLY_ROOM < len(sent.seen) <= SLOT_BYTES:
        # Only an inner packet over 8500 bytes gets here: the product takes it whole into its
        # slot and passes it, but its reply does not fit the link (EMSGSIZE, a send error).
        assert p.verdict is not None
        return Fate(f"drop:{p.tolerated[0]}", "agree", f"unsendable:{p.verdict.outcome.value}")
    if p.lenient_answers and len(sent.seen) > SLOT_BYTES:  # cut by the slot: malformed, foreseen
        return Fate(f"drop:{p.tolerated[0]}", "agree", category)
    if p.lenient_answers:  # a strict appliance's answer included
        if overflowed:
            return Fate("lost:rcvbuf", "lost", "?")
        notes = [n for n in p.decoded.notes if n in STRICTER]
        if notes:
            return Fate(f"dropped-but-should-pass:{notes[0]}", "explained", category)
        cls = f"dropped-but-should-pass:{_describe(p)}"
        if cls in KNOWN_BUGS:
            return Fate(cls, "known-bug", "malformed:?")
        if not p.strict_answers:  # only tolerated rules broken: the product was as strict as we
            return Fate(f"drop:{p.tolerated[0]}", "agree", category)
        return Fate(cls, "unexplained", "?")
    if p.hard:
        return Fate(f"drop:{p.hard[0]}", "agree", category)
    assert p.verdict is not None
    return Fate(f"drop:{p.verdict.outcome.value}-{p.verdict.rule}", "agree", category)


def _category(seen: bytes, p: Prediction) -> str:
    """What the product's counters should call the drop of `seen`."""
    if len(seen) > SLOT_BYTES:
        return f"malformed:{TOO_BIG}"
    # A note (the chain bound) is met in the IPv6 walk, and with one present any rule broken
    # that is not tolerated is a transport rule, which the walk comes before.
    first = (*(n for n in p.decoded.notes if n in STRICTER), *p.hard)
    if first:
        return f"malformed:{PRODUCT_REASONS.get(first[0], '?')}"
    if p.verdict is None:
        return "?"
    outcome = p.verdict.outcome
    if outcome.answered:
        return "?"
    return f"dropped:{p.verdict.rule}" if outcome.value == "drop" else outcome.value


def _describe(p: Prediction) -> str:
    """A class for a datagram that should have passed: its IP version, fragment state and
    transport (for a later fragment: the next header its fragment header names)."""
    inner = p.decoded.inner
    if inner is None:
        return "?"
    if inner.fragment == LATER:
        kind = "extension" if inner.protocol in EXTENSIONS else str(inner.protocol)
        return f"v{inner.version}/later-fragment/next-header-{kind}"
    ext = "/extension-headers" if inner.extensions else ""
    return f"v{inner.version}/{inner.fragment}/protocol-{inner.protocol}{ext}"


@dataclass
class Tally:
    """Classes, statuses and counter categories over a run, with a few examples of each class."""

    examples_per_class: int = 3
    classes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    status_of: dict[str, str] = field(default_factory=dict)  # class -> its status

    def add(self, sent: Sent, f: Fate, seed: int) -> None:
        self.classes[f.cls] += 1
        self.status_of[f.cls] = f.status
        self.statuses[f.status] += 1
        self.categories[f.category] += 1
        if f.status in ("unexplained", "explained", "known-bug"):
            shelf = self.examples.setdefault(f.cls, [])
            if len(shelf) < self.examples_per_class:
                shelf.append(example(sent, f, seed))


def example(sent: Sent, f: Fate, seed: int) -> dict[str, Any]:
    """A reproducible record: --show SEED:INDEX makes the datagram again."""
    seen = sent.seen if sent.seen is not None else sent.made.payload
    out: dict[str, Any] = {
        "id": f"{seed}:{sent.made.index}",
        "recipe": sent.made.recipe,
        "datagram_hex": seen.hex(),
        "problems": list(f.problems),
    }
    rule = f.cls.split(":", 1)[-1]
    if f.status == "explained":
        out["why"] = TOLERATED.get(rule) or STRICTER.get(rule, "")
    if f.status == "known-bug":
        out["why"] = KNOWN_BUGS[f.cls]
    if sent.replies:
        out["reply_hex"] = sent.replies[0].hex()
    return out
