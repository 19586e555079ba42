"""gateway.labels: banner vectors, policies, clearances, and the lattice laws as properties.

No database: the library is pure Python.  GATEHOUSE_FUZZ_EXAMPLES scales the number of
examples (300 = the default budget), as in tests/spec.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.labels import (
    DEFAULT_POLICY,
    DEFAULT_REGISTRY,
    LABEL_ERROR_CODES,
    MAX_LABEL_LENGTH,
    Clearance,
    Label,
    LabelError,
    Policy,
    PolicyRegistry,
    clearance_dominates,
    dominates,
    format_label,
    glb,
    lub,
    parse_canonical,
    parse_label,
)

SCALE = max(1, int(os.environ.get("GATEHOUSE_FUZZ_EXAMPLES", "300"))) / 300
PROPS = settings(max_examples=int(200 * SCALE), deadline=None, database=None)
FEW = settings(max_examples=int(60 * SCALE), deadline=None, database=None)

GH = DEFAULT_POLICY
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)

# A policy so small that random labels often compare: mutual dominance, common upper bounds.
TINY = Policy("TINY", ["LOW", "HIGH"], compartments={"A", "B"}, releasability={"X", "Y", "Z"})
TINY_CODES = sorted(TINY.releasability)

CODES = ["GBR", "USA", "CAN", "AUS", "NATO", "FVEY"]
COMPARTMENTS = ["NATO", "CRYPTO", "ATOMAL", "SI", "TK-1", "X_Y"]
TOKENS = st.from_regex(r"[A-Z0-9_-]{1,6}", fullmatch=True)


def code_groups(codes: st.SearchStrategy[str], max_groups: int = 4) -> st.SearchStrategy[list[frozenset[str]]]:
    return st.lists(st.frozensets(codes, min_size=1, max_size=3), max_size=max_groups)


@st.composite
def labels(draw, policy: Policy = GH, compartments=st.sampled_from(COMPARTMENTS), codes=st.sampled_from(CODES)):
    return Label(
        policy,
        draw(st.integers(0, len(policy.levels) - 1)),
        draw(st.frozensets(compartments, max_size=4)),
        tuple(draw(code_groups(codes))),
    )


tiny_labels = labels(TINY, st.sampled_from(["A", "B"]), st.sampled_from(TINY_CODES))
token_labels = labels(GH, TOKENS, TOKENS)


def lab(text: str, policy: Policy | str | None = None) -> Label:
    return parse_label(text, policy)


def error_code(fn, *args, **kwargs) -> str:
    with pytest.raises(LabelError) as info:
        fn(*args, **kwargs)
    assert info.value.code in LABEL_ERROR_CODES
    return info.value.code


# --------------------------------------------------------------------------- banner vectors


@pytest.mark.parametrize(
    "text, banner",
    [
        ("UNCLASSIFIED", "UNCLASSIFIED"),
        ("SECRET//NATO//REL TO GBR, USA", "SECRET//NATO//REL TO GBR, USA"),
        ("TOP SECRET//CRYPTO//NATO", "TOP SECRET//CRYPTO//NATO"),
        ("CONFIDENTIAL//REL TO GBR, USA//REL TO NATO", "CONFIDENTIAL//REL TO GBR, USA//REL TO NATO"),
        # case, spacing and order are normalised
        ("secret//nato//rel to usa,gbr", "SECRET//NATO//REL TO GBR, USA"),
        ("  Top   Secret // nato // crypto  \n", "TOP SECRET//CRYPTO//NATO"),
        ("top\tsecret//REL\tTO  usa ,gbr", "TOP SECRET//REL TO GBR, USA"),
        ("SECRET//REL TO NATO//REL TO USA, GBR", "SECRET//REL TO GBR, USA//REL TO NATO"),
        ("SECRET//REL TO GBR//NATO", "SECRET//NATO//REL TO GBR"),
        # abbreviations
        ("TS//NATO", "TOP SECRET//NATO"),
        ("ts//crypto//nato", "TOP SECRET//CRYPTO//NATO"),
        ("U", "UNCLASSIFIED"),
        ("R", "RESTRICTED"),
        ("C//REL TO GBR", "CONFIDENTIAL//REL TO GBR"),
        ("S", "SECRET"),
        # a group that is a strict superset of another adds no restriction
        ("SECRET//REL TO GBR, USA//REL TO GBR", "SECRET//REL TO GBR"),
        ("SECRET//REL TO GBR//REL TO GBR, USA, CAN//REL TO NATO", "SECRET//REL TO GBR//REL TO NATO"),
        # "REL" alone is a compartment token, not a releasability marker
        ("SECRET//REL", "SECRET//REL"),
    ],
)
def test_accepted_banners(text, banner):
    label = parse_label(text)
    assert format_label(label) == banner
    assert str(label) == banner
    assert parse_label(banner) == label


@pytest.mark.parametrize(
    "text, code",
    [
        (None, "empty"),
        ("", "empty"),
        ("   ", "empty"),
        (" \t\r\n ", "empty"),
        (42, "malformed"),
        (b"SECRET", "malformed"),
        ("SECRET//", "malformed"),
        ("//NATO", "malformed"),
        ("//", "malformed"),
        ("SECRET////NATO", "malformed"),
        ("SECRET// //NATO", "malformed"),
        ("SECRET///NATO", "malformed"),
        ("SECRET/NATO", "malformed"),
        ("SECRET//REL TO", "malformed"),
        ("SECRET//REL TO ", "malformed"),
        ("SECRET//REL TO ,", "malformed"),
        ("SECRET//REL TO GBR,", "malformed"),
        ("SECRET//REL TO ,GBR", "malformed"),
        ("SECRET//REL TO GBR,,USA", "malformed"),
        ("SECRET//REL TO GBR USA", "malformed"),
        ("SECRET//REL TO GBR; USA", "malformed"),
        ("SECRET//RELTO GBR", "malformed"),
        ("SECRET//REL TO,GBR", "malformed"),
        ("SECRET//NA TO", "malformed"),
        ("SECRET//NATO!", "malformed"),
        ("SECRET!", "malformed"),
        ("SECRET|NATO", "malformed"),
        ("SUPER SECRET", "unknown_level"),
        ("TOPSECRET", "unknown_level"),
        ("NATO//SECRET", "unknown_level"),
        ("REL TO GBR", "unknown_level"),
        ("UNCLASS", "unknown_level"),
        ("SECRET//NATO//NATO", "duplicate"),
        ("SECRET//NATO//nato", "duplicate"),
        ("SECRET//REL TO GBR, GBR", "duplicate"),
        ("SECRET//REL TO GBR, gbr", "duplicate"),
        ("SECRET//REL TO GBR, USA//REL TO USA, GBR", "duplicate"),
        # look-alikes and invisible characters are refused, never folded to ASCII
        ("S\u0395CRET", "invalid_character"),  # Greek capital epsilon
        ("\u0405ECRET", "invalid_character"),  # Cyrillic DZE looks like S
        ("\uff33\uff25\uff23\uff32\uff25\uff34", "invalid_character"),  # full-width SECRET
        ("TOP\u00a0SECRET", "invalid_character"),  # no-break space
        ("SEC\u200bRET", "invalid_character"),  # zero-width space
        ("SECRET\u2215\u2215NATO", "invalid_character"),  # division slash
        ("SECRET//REL TO GBR\uff0c USA", "invalid_character"),  # full-width comma
        ("SECRET//N\u0391TO", "invalid_character"),  # Greek capital alpha
        ("secret\u0131", "invalid_character"),  # dotless i
        ("SECRET\x00", "invalid_character"),
        ("SECRET//NATO\nTOP SECRET", "invalid_character"),
        ("SECRET\x1b[0m", "invalid_character"),
        ("SECRET//" + "A" * MAX_LABEL_LENGTH, "too_long"),
    ],
)
def test_refused_banners(text, code):
    assert error_code(parse_label, text) == code


def test_errors_are_value_errors_with_a_code_and_message():
    with pytest.raises(ValueError) as info:
        parse_label("SUPER SECRET")
    assert isinstance(info.value, LabelError)
    assert info.value.code == "unknown_level"
    assert "SUPER SECRET" in info.value.message
    assert "unknown_level" in repr(info.value)
    with pytest.raises(ValueError):
        LabelError("no_such_code", "x")


def test_a_long_label_under_the_limit_parses():
    compartments = [f"C{i:03d}" for i in range(100)]
    label = parse_label("SECRET//" + "//".join(reversed(compartments)))
    assert sorted(label.compartments) == compartments
    assert len(format_label(label)) <= MAX_LABEL_LENGTH


# --------------------------------------------------------------------------- canonical form


def test_canonical_form_and_pinned_digest():
    label = parse_label("secret//rel to usa, gbr//nato")
    assert label.canonical() == "v1|GH|SECRET//NATO//REL TO GBR, USA"
    assert label.digest() == "28f550e41634ad914d9d2eb9e0d746815fe600375b1552c135db152787464dab"
    assert parse_label("TS").canonical() == "v1|GH|TOP SECRET"
    assert parse_canonical(label.canonical()) == label


def test_canonical_names_the_level_not_its_index():
    wider = Policy("GH", ["UNCLASSIFIED", "OFFICIAL", "RESTRICTED", "CONFIDENTIAL", "SECRET", "TOP SECRET"])
    assert parse_label("SECRET", wider).digest() == parse_label("SECRET").digest()
    assert parse_label("SECRET", wider) != parse_label("SECRET")  # a different policy configuration


@pytest.mark.parametrize(
    "text, code",
    [
        ("v1|GH|secret", "malformed"),
        ("v1|GH|SECRET//REL TO USA, GBR", "malformed"),
        ("v1|GH|SECRET//REL TO GBR,USA", "malformed"),
        ("v1|GH|TS", "malformed"),
        ("v1|gh|SECRET", "malformed"),
        ("v2|GH|SECRET", "malformed"),
        ("GH|SECRET", "malformed"),
        ("SECRET", "malformed"),
        ("v1|GH| SECRET", "malformed"),
        ("v1|NOPE|SECRET", "unknown_policy"),
        ("v1|GH|", "empty"),
        ("v1|GH|SUPER SECRET", "unknown_level"),
        (None, "malformed"),
    ],
)
def test_parse_canonical_is_strict(text, code):
    assert error_code(parse_canonical, text) == code


@PROPS
@given(token_labels)
def test_parse_format_round_trip(label):
    banner = format_label(label)
    assert parse_label(banner) == label
    assert format_label(parse_label(banner)) == banner
    assert parse_canonical(label.canonical()) == label
    assert label.digest() == hashlib.sha256(label.canonical().encode()).hexdigest()
    assert len(label.digest()) == 64


@PROPS
@given(token_labels, st.randoms(use_true_random=False))
def test_any_spelling_parses_to_the_same_label(label, rnd: random.Random):
    """Case, spacing, segment order, code order and abbreviations do not matter."""

    def space() -> str:
        return rnd.choice(["", " ", "  ", "\t"])

    def case(text: str) -> str:
        return "".join(ch.lower() if rnd.random() < 0.5 else ch for ch in text)

    names = [label.level_name] + [short for short, full in GH.abbreviations.items() if full == label.level_name]
    level = rnd.choice(names)
    segments = list(label.compartments)
    for group in label.releasability:
        codes = list(group)
        rnd.shuffle(codes)
        segments.append("REL" + space() + " TO " + ",".join(space() + c + space() for c in codes))
    rnd.shuffle(segments)
    text = space() + "//".join(space() + case(s) + space() for s in [level, *segments]) + space()
    assert parse_label(text) == label


@FEW
@given(token_labels, token_labels)
def test_canonical_and_digest_identify_the_label(a, b):
    assert (a == b) == (a.canonical() == b.canonical()) == (a.digest() == b.digest())
    if a == b:
        assert hash(a) == hash(b)
    assert a.canonical() == Label(a.policy, a.level, set(a.compartments), list(map(list, a.releasability))).canonical()


FRAGMENTS = ["SECRET", "TS", "top secret", "//", "/", " ", "REL TO ", ",", "NATO", "GBR", "usa", "\t", "", "\u00a0",
             "x!"]


@settings(max_examples=int(300 * SCALE), deadline=None, database=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join) | st.text(max_size=40))
def test_any_text_is_a_label_or_a_label_error(text):
    try:
        label = parse_label(text)
    except LabelError as exc:
        assert exc.code in LABEL_ERROR_CODES
    else:
        assert parse_label(format_label(label)) == label


# --------------------------------------------------------------------------- the partial order


@PROPS
@given(labels())
def test_dominance_is_reflexive(a):
    assert dominates(a, a)


@PROPS
@given(tiny_labels, tiny_labels)
def test_dominance_is_antisymmetric(a, b):
    if dominates(a, b) and dominates(b, a):
        assert a == b
        assert a.canonical() == b.canonical()
        assert a.digest() == b.digest()


@PROPS
@given(labels(), st.lists(st.tuples(st.integers(0, 3), st.frozensets(st.sampled_from(CODES), max_size=3))),
       st.randoms(use_true_random=False))
def test_redundant_groups_normalise_away(a, extra, rnd: random.Random):
    """Adding supersets of existing groups, repeating groups or reordering them gives the
    same label, which dominates the original and is dominated by it."""
    groups = list(a.releasability)
    if groups:
        groups += [groups[i % len(groups)] | codes for i, codes in extra]
    rnd.shuffle(groups)
    b = Label(a.policy, a.level, a.compartments, tuple(groups))
    assert dominates(a, b) and dominates(b, a)
    assert b == a and b.canonical() == a.canonical()


@PROPS
@given(tiny_labels, tiny_labels, tiny_labels)
def test_dominance_is_transitive(a, b, c):
    if dominates(a, b) and dominates(b, c):
        assert dominates(a, c)


@PROPS
@given(labels(), labels(), labels())
def test_dominance_is_transitive_on_chains(a, x, y):
    b = glb(a, x)
    c = glb(b, y)
    assert dominates(a, b) and dominates(b, c) and dominates(a, c)


def _readers(codes: list[str]) -> list[frozenset[str]]:
    return [frozenset(s) for n in range(len(codes) + 1) for s in itertools.combinations(codes, n)]


@PROPS
@given(tiny_labels, tiny_labels)
def test_releasability_order_is_reader_inclusion(a, b):
    """With level and compartments equal, a dominates b exactly when every holder of codes
    who may read a may read b: the order means "admits fewer readers"."""
    a = Label(TINY, 1, {"A", "B"}, a.releasability)
    b = Label(TINY, 1, {"A", "B"}, b.releasability)
    clearances = [Clearance(TINY, 1, {"A", "B"}, codes) for codes in _readers(TINY_CODES)]
    fewer = all(clearance_dominates(k, b, NOW) for k in clearances if clearance_dominates(k, a, NOW))
    assert dominates(a, b) == fewer


def test_dominance_vectors():
    assert dominates(lab("TOP SECRET//NATO"), lab("SECRET"))
    assert not dominates(lab("SECRET"), lab("TOP SECRET"))
    assert not dominates(lab("TOP SECRET"), lab("SECRET//NATO"))
    assert dominates(lab("SECRET//REL TO GBR"), lab("SECRET//REL TO GBR, USA"))
    assert not dominates(lab("SECRET//REL TO GBR, USA"), lab("SECRET//REL TO GBR"))
    assert dominates(lab("SECRET//REL TO GBR"), lab("SECRET"))
    assert not dominates(lab("SECRET"), lab("SECRET//REL TO GBR"))
    assert dominates(lab("SECRET//REL TO GBR//REL TO NATO"), lab("SECRET//REL TO NATO"))
    assert not dominates(lab("SECRET//REL TO GBR"), lab("SECRET//REL TO NATO"))
    assert dominates(lab("S//REL TO GBR//REL TO NATO"), lab("S//REL TO GBR, USA//REL TO NATO, FVEY"))
    assert not dominates(lab("SECRET"), lab("LOW", TINY)) and not dominates(lab("HIGH", TINY), lab("U"))


# --------------------------------------------------------------------------- lub and glb


@PROPS
@given(labels(), labels())
def test_lub_is_an_upper_bound(a, b):
    j = lub(a, b)
    assert dominates(j, a) and dominates(j, b)


@PROPS
@given(labels(), labels(), st.data())
def test_lub_is_least(a, b, data):
    """Build an arbitrary upper bound c of a and b without lub: a level at least both, a
    superset of the compartments, and for each group of a and b a non-empty subset of it
    (plus unrelated groups); c dominates lub(a, b)."""
    level = data.draw(st.integers(max(a.level, b.level), len(GH.levels) - 1))
    compartments = a.compartments | b.compartments | data.draw(st.frozensets(st.sampled_from(COMPARTMENTS)))
    groups = [
        frozenset(data.draw(st.sets(st.sampled_from(sorted(g)), min_size=1))) for g in a.releasability + b.releasability
    ]
    groups += data.draw(code_groups(st.sampled_from(CODES), 2))
    c = Label(GH, level, compartments, tuple(groups))
    assert dominates(c, a) and dominates(c, b)
    assert dominates(c, lub(a, b))


@PROPS
@given(tiny_labels, tiny_labels, tiny_labels)
def test_lub_is_least_among_all_upper_bounds(a, b, c):
    if dominates(c, a) and dominates(c, b):
        assert dominates(c, lub(a, b))


@PROPS
@given(labels(), labels(), labels())
def test_lub_laws(a, b, c):
    assert lub(a, b) == lub(b, a)
    assert lub(lub(a, b), c) == lub(a, lub(b, c)) == lub(a, b, c)
    assert lub(a, a) == a == lub(a)
    assert (lub(a, b) == b) == dominates(b, a)


@PROPS
@given(labels(), labels(), st.data())
def test_glb_is_the_greatest_lower_bound(a, b, data):
    m = glb(a, b)
    assert dominates(a, m) and dominates(b, m)
    # an arbitrary lower bound d: each group contains a group of a and a group of b
    level = data.draw(st.integers(0, min(a.level, b.level)))
    compartments = data.draw(st.frozensets(st.sampled_from(sorted(a.compartments & b.compartments) or ["-"]))) - {"-"}
    groups = []
    if a.releasability and b.releasability:
        for _ in range(data.draw(st.integers(0, 3))):
            g, h = data.draw(st.sampled_from(a.releasability)), data.draw(st.sampled_from(b.releasability))
            groups.append(g | h | data.draw(st.frozensets(st.sampled_from(CODES), max_size=2)))
    d = Label(GH, level, compartments, tuple(groups))
    assert dominates(a, d) and dominates(b, d)
    assert dominates(m, d)


@PROPS
@given(tiny_labels, tiny_labels, tiny_labels)
def test_glb_laws_and_absorption(a, b, c):
    assert glb(a, b) == glb(b, a)
    assert glb(glb(a, b), c) == glb(a, glb(b, c)) == glb(a, b, c)
    assert glb(a, a) == a == glb(a)
    assert lub(a, glb(a, b)) == a == glb(a, lub(a, b))
    if dominates(a, c) and dominates(b, c):
        assert dominates(glb(a, b), c)


def test_lub_vectors():
    assert format_label(lub(lab("SECRET//NATO//REL TO GBR, USA"), lab("CONFIDENTIAL//CRYPTO//REL TO GBR"))) == (
        "SECRET//CRYPTO//NATO//REL TO GBR"
    )
    assert format_label(lub(lab("SECRET//REL TO GBR, USA"), lab("C//REL TO NATO"), lab("U"))) == (
        "SECRET//REL TO GBR, USA//REL TO NATO"
    )
    assert format_label(glb(lab("SECRET//NATO//REL TO GBR"), lab("TS//CRYPTO//NATO//REL TO USA"))) == (
        "SECRET//NATO//REL TO GBR, USA"
    )
    assert format_label(glb(lab("SECRET//REL TO GBR"), lab("SECRET"))) == "SECRET"


def test_lub_and_glb_refuse_nothing_and_mixed_policies():
    assert error_code(lub) == "empty"
    assert error_code(glb) == "empty"
    assert error_code(lub, lab("SECRET"), lab("HIGH", TINY)) == "policy_mismatch"
    assert error_code(glb, lab("SECRET"), lab("HIGH", TINY)) == "policy_mismatch"
    assert error_code(lub, lab("SECRET"), "TOP SECRET") == "malformed"


# --------------------------------------------------------------------------- clearances


@st.composite
def clearances(draw, policy: Policy = GH, compartments=COMPARTMENTS, codes=CODES):
    return Clearance(
        policy,
        draw(st.integers(0, len(policy.levels) - 1)),
        draw(st.frozensets(st.sampled_from(compartments))),
        draw(st.frozensets(st.sampled_from(codes))),
    )


@PROPS
@given(clearances(), labels(), labels())
def test_clearance_dominates_is_monotone(k, a, x):
    b = glb(a, x)  # a dominates b
    if clearance_dominates(k, a, NOW):
        assert clearance_dominates(k, b, NOW)
    if clearance_dominates(k, lub(a, x), NOW):
        assert clearance_dominates(k, a, NOW) and clearance_dominates(k, x, NOW)


@PROPS
@given(clearances(TINY, ["A", "B"], TINY_CODES), tiny_labels, tiny_labels)
def test_clearance_dominates_is_monotone_on_all_pairs(k, a, b):
    if clearance_dominates(k, a, NOW) and dominates(a, b):
        assert clearance_dominates(k, b, NOW)


def test_clearance_reading_vectors():
    k = Clearance(GH, GH.level_index("SECRET"), {"NATO"}, {"GBR", "NATO"})
    assert clearance_dominates(k, lab("SECRET//NATO//REL TO GBR, USA"), NOW)
    assert clearance_dominates(k, lab("CONFIDENTIAL//REL TO GBR, USA//REL TO NATO"), NOW)
    assert clearance_dominates(k, lab("UNCLASSIFIED"), NOW)
    assert not clearance_dominates(k, lab("TOP SECRET"), NOW)  # level
    assert not clearance_dominates(k, lab("SECRET//CRYPTO"), NOW)  # compartment
    assert not clearance_dominates(k, lab("SECRET//REL TO USA"), NOW)  # no code of the group
    assert not clearance_dominates(k, lab("SECRET//REL TO GBR//REL TO FVEY"), NOW)  # every group counts
    assert not clearance_dominates(k, lab("LOW", TINY), NOW)  # another policy
    nobody = Clearance(GH, GH.level_index("TS"), {"NATO", "CRYPTO"})
    assert clearance_dominates(nobody, lab("TS//NATO//CRYPTO"), NOW)
    assert not clearance_dominates(nobody, lab("U//REL TO GBR"), NOW)


def test_clearance_validity_window_and_status():
    start, end = NOW - timedelta(days=1), NOW + timedelta(days=1)
    k = Clearance(GH, 3, frozenset(), frozenset(), valid_from=start, valid_until=end)
    assert k.is_valid(NOW) and k.is_valid(start)
    assert not k.is_valid(end)  # the end is exclusive
    assert not k.is_valid(start - timedelta(microseconds=1))
    assert k.is_valid(NOW.astimezone(timezone(timedelta(hours=5))))
    assert Clearance(GH, 3, valid_from=start).is_valid(NOW + timedelta(days=10_000))
    assert Clearance(GH, 3, valid_until=end).is_valid(datetime(1970, 1, 1, tzinfo=timezone.utc))
    for status in ("suspended", "revoked"):
        k2 = Clearance(GH, 3, status=status)
        assert not k2.is_valid(NOW)
        assert not clearance_dominates(k2, lab("U"), NOW)
    expired = Clearance(GH, 4, valid_until=start)
    assert not clearance_dominates(expired, lab("U"), NOW)


@pytest.mark.parametrize(
    "kwargs, code",
    [
        ({"max_level": 5}, "unknown_level"),
        ({"max_level": -1}, "unknown_level"),
        ({"max_level": True}, "unknown_level"),
        ({"max_level": "SECRET"}, "unknown_level"),
        ({"status": "Active"}, "invalid_clearance"),
        ({"status": "expired"}, "invalid_clearance"),
        ({"valid_from": NOW, "valid_until": NOW}, "invalid_clearance"),
        ({"valid_from": NOW, "valid_until": NOW - timedelta(seconds=1)}, "invalid_clearance"),
        ({"valid_from": datetime(2025, 1, 1)}, "naive_datetime"),
        ({"valid_until": "2025-01-01"}, "invalid_clearance"),
        ({"compartments": "NATO"}, "malformed"),
        ({"compartments": {"nato"}}, "malformed"),
        ({"releasability": "GBR"}, "malformed"),
        ({"policy": "GH"}, "unknown_policy"),
    ],
)
def test_clearance_refused(kwargs, code):
    args = {"policy": GH, "max_level": 3, **kwargs}
    assert error_code(Clearance, **args) == code


def test_clearance_is_valid_refuses_naive_time():
    assert error_code(Clearance(GH, 1).is_valid, datetime(2025, 1, 1)) == "naive_datetime"
    assert error_code(clearance_dominates, Clearance(GH, 1), lab("U"), datetime(2025, 1, 1)) == "naive_datetime"


def test_clearance_is_hashable_and_frozen():
    k = Clearance(GH, 3, ["NATO"], ["GBR"])
    assert k == Clearance(GH, 3, frozenset({"NATO"}), frozenset({"GBR"}))
    assert hash(k) == hash(Clearance(GH, 3, {"NATO"}, {"GBR"}))
    with pytest.raises(AttributeError):
        k.max_level = 4  # type: ignore[misc]
    assert "SECRET//NATO" in repr(k)


# --------------------------------------------------------------------------- labels as values


@pytest.mark.parametrize(
    "args, code",
    [
        ((GH, 5), "unknown_level"),
        ((GH, -1), "unknown_level"),
        ((GH, False), "unknown_level"),
        ((GH, 1, "NATO"), "malformed"),
        ((GH, 1, {"nato"}), "malformed"),
        ((GH, 1, {"NA TO"}), "malformed"),
        ((GH, 1, frozenset(), (frozenset(),)), "malformed"),
        ((GH, 1, frozenset(), ("GBR",)), "malformed"),
        ((GH, 1, frozenset(), "GBR"), "malformed"),
        ((GH, 1, frozenset(), ({"gbr"},)), "malformed"),
        ((TINY, 1, {"C"}), "unknown_compartment"),
        ((TINY, 1, frozenset(), ({"GBR"},)), "unknown_releasability"),
        (("GH", 1), "unknown_policy"),
    ],
)
def test_label_refused(args, code):
    assert error_code(Label, *args) == code


def test_label_is_frozen_hashable_and_normalised():
    a = Label(GH, 3, ["NATO"], [["USA", "GBR"], {"GBR", "USA", "CAN"}, ("NATO",)])
    assert a.compartments == frozenset({"NATO"})
    assert a.releasability == (frozenset({"GBR", "USA"}), frozenset({"NATO"}))
    assert a == parse_label("SECRET//NATO//REL TO GBR, USA//REL TO NATO")
    assert len({a, parse_label("S//NATO//REL TO NATO//REL TO USA, GBR")}) == 1
    assert a.level_name == "SECRET"
    assert repr(a) == "Label('GH', 'SECRET//NATO//REL TO GBR, USA//REL TO NATO')"
    with pytest.raises(AttributeError):
        a.level = 4  # type: ignore[misc]


# --------------------------------------------------------------------------- policies


def test_policy_vocabularies():
    assert format_label(parse_label("high//a//rel to x, z", TINY)) == "HIGH//A//REL TO X, Z"
    assert error_code(parse_label, "HIGH//C", TINY) == "unknown_compartment"
    assert error_code(parse_label, "HIGH//REL TO W", TINY) == "unknown_releasability"
    assert error_code(parse_label, "SECRET", TINY) == "unknown_level"
    assert error_code(parse_label, "HIGH//A!", TINY) == "malformed"


def test_policy_from_dict_round_trip_and_registry():
    config = {
        "default": "ops",
        "policies": [
            GH.to_dict(),
            {
                "name": "ops",
                "levels": ["open", "Sensitive", "  very   sensitive "],
                "abbreviations": {"o": "OPEN", "vs": "very sensitive"},
                "compartments": ["alpha", "BRAVO"],
                "releasability": None,
            },
        ],
    }
    registry = PolicyRegistry.from_dict(config)
    ops = registry.default
    assert ops.name == "OPS" and ops.levels == ("OPEN", "SENSITIVE", "VERY SENSITIVE")
    assert ops.compartments == frozenset({"ALPHA", "BRAVO"})
    assert Policy.from_dict(ops.to_dict()) == ops
    assert Policy.from_dict(GH.to_dict()) == GH and hash(Policy.from_dict(GH.to_dict())) == hash(GH)
    assert registry.names() == ["GH", "OPS"]
    assert registry.get("gh") == GH
    assert format_label(parse_label("vs//alpha", "ops", registry=registry)) == "VERY SENSITIVE//ALPHA"
    assert parse_label("very sensitive", registry=registry).policy == ops
    assert parse_label("SECRET", "GH", registry=registry).policy == GH
    assert error_code(parse_label, "SECRET", "NOPE", registry=registry) == "unknown_policy"
    assert error_code(parse_label, "SECRET", "OPS", registry=registry) == "unknown_level"
    assert error_code(parse_canonical, "v1|OPS|OPEN") == "unknown_policy"  # not in the default registry
    assert parse_canonical("v1|OPS|OPEN", registry=registry).policy == ops
    assert DEFAULT_REGISTRY.default is GH and DEFAULT_REGISTRY.names() == ["GH"]
    assert PolicyRegistry.from_dict({"policies": [GH.to_dict()]}).default == GH


LEVELS = ["LOW", "HIGH"]


@pytest.mark.parametrize(
    "config",
    [
        "GH",
        {"levels": LEVELS},
        {"name": "X"},
        {"name": "X", "levels": []},
        {"name": "X", "levels": "LOW"},
        {"name": "X", "levels": ["LOW", "low"]},
        {"name": "X", "levels": ["LOW", "HI//GH"]},
        {"name": "X", "levels": ["LOW", 3]},
        {"name": "X Y", "levels": LEVELS},
        {"name": "", "levels": LEVELS},
        {"name": "X", "levels": LEVELS, "abbreviations": {"L": "MEDIUM"}},
        {"name": "X", "levels": LEVELS, "abbreviations": {"HIGH": "LOW"}},
        {"name": "X", "levels": LEVELS, "abbreviations": {"h": "HIGH", "H": "LOW"}},
        {"name": "X", "levels": LEVELS, "abbreviations": ["H"]},
        {"name": "X", "levels": LEVELS, "compartments": "A"},
        {"name": "X", "levels": LEVELS, "compartments": ["A B"]},
        {"name": "X", "levels": LEVELS, "releasability": ["GBR", "U\u0405A"]},
        {"name": "X", "levels": LEVELS, "colour": "red"},
    ],
)
def test_policy_from_dict_refused(config):
    assert error_code(Policy.from_dict, config) == "invalid_policy"


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"policies": []},
        {"policies": "GH"},
        {"policies": [GH.to_dict(), GH.to_dict()]},
        {"policies": [GH.to_dict(), TINY.to_dict()]},
        {"default": "NOPE", "policies": [GH.to_dict()]},
        {"default": "GH", "policies": [GH.to_dict()], "extra": 1},
    ],
)
def test_registry_from_dict_refused(config):
    assert error_code(PolicyRegistry.from_dict, config) == "invalid_policy"


def test_policy_level_lookup():
    assert GH.level_index("top secret") == 4 == GH.level_index("TS") == GH.level_index(" Top \t Secret ")
    assert error_code(GH.level_index, "SUPER SECRET") == "unknown_level"
    assert error_code(GH.level_index, None) == "unknown_level"
    assert GH.abbreviations["TS"] == "TOP SECRET"
    with pytest.raises(TypeError):
        GH.abbreviations["X"] = "SECRET"  # type: ignore[index]
