"""Classification labels and clearances: parsing, formatting, dominance and the label lattice.

Pure Python (no Django): the database models and the selectors that enforce clearances call
this module; settings pass a plain dict to :meth:`PolicyRegistry.from_dict`.

Vocabulary
==========

A :class:`Label` belongs to a :class:`Policy` (the default is ``GH``) and has

* a **level**, an index into the policy's ascending list of level names
  (``UNCLASSIFIED < RESTRICTED < CONFIDENTIAL < SECRET < TOP SECRET`` in ``GH``);
* **compartments**, a set of tokens; a reader needs *all* of them;
* **releasability groups**, a tuple of sets of country/organisation codes; a reader must
  match *one* code of *every* group (``REL TO GBR, USA//REL TO NATO`` needs (GBR or USA)
  and NATO).  Codes are opaque tokens: ``NATO`` is not expanded into its members.

A :class:`Clearance` is what a person holds: a maximum level, compartments, the codes they
belong to (``{"GBR", "NATO"}``), a validity window and a status.

Banner syntax (parsing)
=======================

``LEVEL ( "//" SEGMENT )*`` where each segment is one compartment token or one
``REL TO CODE, CODE, ...`` group, in any order.

* Input is case-insensitive; output is upper-case.
* Only printable ASCII and tab are accepted: non-ASCII characters, including look-alikes
  such as Cyrillic letters, full-width letters, no-break spaces and zero-width characters,
  are refused (``invalid_character``), never normalised (NFKC would turn full-width
  letters into ASCII and so accept look-alikes).  Leading and trailing ASCII whitespace
  (space, tab, CR, LF) is removed first.
* Inside a segment, runs of spaces and tabs count as one space, and spaces around ``//``
  are ignored, so ``top   secret // nato`` is ``TOP SECRET//NATO``.
* A level is its full name or an abbreviation configured by the policy (``TS``).
* Compartment and releasability codes are tokens of ``[A-Z0-9_-]+``; ``REL TO`` codes are
  separated by commas with optional spaces.  A single ``/`` is not a separator.
* An empty, malformed or unknown label is a :class:`LabelError`, never "unclassified".
* The same compartment twice, the same code twice in a group, or the same group twice is
  a ``duplicate`` error.  A group that is a *strict superset* of another group adds no
  restriction (whoever matches the smaller group matches it too) and is dropped.

Canonical form (formatting)
===========================

``format_label`` writes the full level name, then the compartments sorted, then the
releasability groups, each as ``REL TO`` followed by its codes sorted and joined with
``", "``; groups are ordered by their sorted code lists.  Sorting is by ASCII code point.
(Banner conventions often put the originator first in a ``REL TO`` list; here the list is
simply sorted, so equal labels always have equal banners.)

``label.canonical()`` is ``"v1|<POLICY>|<banner>"`` and ``label.digest()`` its SHA-256 in
hex; both depend only on the policy's name and the level's *name*, so they survive adding
levels to a policy.  :func:`parse_canonical` reads the canonical form back, strictly.

Order
=====

``dominates(a, b)`` ("a is at least as restrictive as b") holds when both labels have the
same policy, ``a.level >= b.level``, ``a.compartments >= b.compartments``, and for every
releasability group ``h`` of ``b`` some group ``g`` of ``a`` is a subset of ``h``.

Why the releasability rule: a group set admits the readers whose codes hit every group.
``a`` admits only readers that ``b`` admits exactly when each group of ``b`` contains a
group of ``a`` (if some ``h`` of ``b`` contains no group of ``a``, the reader holding
every code of every ``g - h`` is admitted by ``a`` but not by ``b``).  So the group part
is ordered by inclusion of the *up-sets* ``{s : some group <= s}``: reflexive and
transitive.  After normalisation a group tuple is exactly the set of minimal elements of
its up-set, so two labels that dominate each other are equal (antisymmetry).  Finitely
generated up-sets are closed under union and intersection, so the labels form a lattice:

* :func:`lub` (join): the highest level, the union of the compartments and all groups of
  all labels (normalised): up-sets unite.  **A task's outputs carry at least
  ``lub(*input_labels, task_label)``** so that information never flows to a lower label.
* :func:`glb` (meet): the lowest level, the common compartments and the pairwise unions of
  groups (normalised): up-sets intersect.

:func:`clearance_dominates` is monotone: a clearance that may read ``a`` may read every
label that ``a`` dominates.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "CANONICAL_VERSION",
    "CLEARANCE_STATUSES",
    "DEFAULT_POLICY",
    "DEFAULT_REGISTRY",
    "LABEL_ERROR_CODES",
    "MAX_LABEL_LENGTH",
    "Clearance",
    "Label",
    "LabelError",
    "Policy",
    "PolicyRegistry",
    "clearance_dominates",
    "dominates",
    "format_label",
    "glb",
    "lub",
    "parse_canonical",
    "parse_label",
]

#: Every code a :class:`LabelError` may carry.
LABEL_ERROR_CODES: Final = frozenset(
    {
        "empty",  # no label: None, "", only whitespace; lub() / glb() of nothing
        "too_long",  # over MAX_LABEL_LENGTH characters
        "invalid_character",  # non-ASCII (look-alikes) or control characters
        "malformed",  # bad structure or token: "SECRET//", "//NATO", "REL TO ,", "A/B"
        "unknown_level",  # not a level or abbreviation of the policy; level index out of range
        "unknown_compartment",  # outside the policy's compartment vocabulary
        "unknown_releasability",  # outside the policy's releasability vocabulary
        "unknown_policy",  # no such policy in the registry
        "duplicate",  # the same compartment, code or group twice
        "policy_mismatch",  # lub / glb of labels of different policies
        "invalid_policy",  # a policy or registry configuration is wrong
        "invalid_clearance",  # a clearance's level, status or validity window is wrong
        "naive_datetime",  # a datetime without a time zone
    }
)

#: The longest banner accepted, in characters (checked before anything else).
MAX_LABEL_LENGTH: Final = 1024
#: The version tag at the start of :meth:`Label.canonical`.
CANONICAL_VERSION: Final = "v1"
#: The statuses a clearance may have; only ``active`` is valid.
CLEARANCE_STATUSES: Final = frozenset({"active", "suspended", "revoked"})

_TOKEN = re.compile(r"[A-Z0-9_-]+")
_LEVEL_NAME = re.compile(r"[A-Z0-9_-]+(?: [A-Z0-9_-]+)*")
_ALLOWED = re.compile(r"[\x20-\x7e\t]*")
_SPACES = re.compile(r"[ \t]+")
_OUTER_WHITESPACE = " \t\r\n"
_REL_TO = "REL TO"


class LabelError(ValueError):
    """A label, clearance or policy refused, with a stable ``code`` from
    :data:`LABEL_ERROR_CODES` and a human-readable ``message``."""

    def __init__(self, code: str, message: str) -> None:
        if code not in LABEL_ERROR_CODES:
            raise ValueError(f"unknown label error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"LabelError({self.code!r}, {self.message!r})"


def _show(text: str, limit: int = 40) -> str:
    """An untrusted token for an error message: quoted and cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --------------------------------------------------------------------------- policies


def _token_set(value: Any, what: str) -> frozenset[str] | None:
    """A policy vocabulary (None = any token), upper-cased and checked."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise LabelError("invalid_policy", f"{what} must be a list of tokens or null")
    tokens = set()
    for item in value:
        if not isinstance(item, str) or not _TOKEN.fullmatch(item.upper()):
            raise LabelError("invalid_policy", f"{what}: {item!r} is not a token of [A-Z0-9_-]")
        tokens.add(item.upper())
    return frozenset(tokens)


def _level_name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise LabelError("invalid_policy", f"{what} must be a string")
    name = _SPACES.sub(" ", value.strip(" \t")).upper()
    if not _LEVEL_NAME.fullmatch(name):
        raise LabelError("invalid_policy", f"{what} {value!r} must be words of [A-Z0-9_-]")
    return name


@dataclass(frozen=True, eq=False)
class Policy:
    """A classification policy: its name, its levels (ascending), abbreviations of levels
    (``{"TS": "TOP SECRET"}``) and optionally the only compartments and releasability codes
    allowed (``None`` = any token of ``[A-Z0-9_-]+``).

    Names, levels and tokens are upper-cased; level names have single spaces.  Policies are
    immutable and compare equal when their whole configuration is equal.

    Raises LabelError(``invalid_policy``) for a bad configuration.
    """

    name: str
    levels: Sequence[str]
    abbreviations: Mapping[str, str] = field(default_factory=dict)
    compartments: Iterable[str] | None = None
    releasability: Iterable[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TOKEN.fullmatch(self.name.upper()):
            raise LabelError("invalid_policy", f"the policy name {self.name!r} must be a token of [A-Z0-9_-]")
        name = self.name.upper()
        if isinstance(self.levels, str) or not isinstance(self.levels, Sequence) or not self.levels:
            raise LabelError("invalid_policy", f"policy {name}: levels must be a non-empty list")
        levels = tuple(_level_name(level, f"policy {name}: the level") for level in self.levels)
        lookup: dict[str, int] = {}
        for index, level in enumerate(levels):
            if level in lookup:
                raise LabelError("invalid_policy", f"policy {name}: the level {level} is listed twice")
            lookup[level] = index
        if not isinstance(self.abbreviations, Mapping):
            raise LabelError("invalid_policy", f"policy {name}: abbreviations must be a mapping")
        abbreviations: dict[str, str] = {}
        for short, full in self.abbreviations.items():
            short_name = _level_name(short, f"policy {name}: the abbreviation")
            full_name = _level_name(full, f"policy {name}: the abbreviated level")
            if full_name not in levels:
                raise LabelError(
                    "invalid_policy", f"policy {name}: {short_name} abbreviates an unknown level {full_name}"
                )
            if lookup.get(short_name, lookup[full_name]) != lookup[full_name] or short_name in abbreviations:
                raise LabelError("invalid_policy", f"policy {name}: the abbreviation {short_name} is ambiguous")
            abbreviations[short_name] = full_name
            lookup[short_name] = lookup[full_name]
        abbreviations = dict(sorted(abbreviations.items()))  # order-free equality and hash
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "abbreviations", MappingProxyType(abbreviations))
        object.__setattr__(self, "compartments", _token_set(self.compartments, f"policy {name}: compartments"))
        object.__setattr__(self, "releasability", _token_set(self.releasability, f"policy {name}: releasability"))
        object.__setattr__(self, "_lookup", MappingProxyType(lookup))
        key = (name, levels, tuple(abbreviations.items()), self.compartments, self.releasability)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_hash", hash(key))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return self is other or self._key == other._key  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]

    def __repr__(self) -> str:
        return f"<Policy {self.name}: {' < '.join(self.levels)}>"

    # -- configuration

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Policy:
        """A policy from settings::

            {"name": "GH", "levels": ["UNCLASSIFIED", ..., "TOP SECRET"],
             "abbreviations": {"TS": "TOP SECRET"},        # optional
             "compartments": ["NATO", "CRYPTO"] or None,  # optional, None = any token
             "releasability": ["GBR", "USA"] or None}     # optional, None = any token

        Raises LabelError(``invalid_policy``) for a missing, unknown or wrong key.
        """
        if not isinstance(config, Mapping):
            raise LabelError("invalid_policy", "a policy must be a mapping")
        unknown = set(config) - {"name", "levels", "abbreviations", "compartments", "releasability"}
        if unknown:
            raise LabelError("invalid_policy", f"unknown policy keys: {', '.join(sorted(map(str, unknown)))}")
        for key in ("name", "levels"):
            if key not in config:
                raise LabelError("invalid_policy", f"a policy needs {key!r}")
        levels = config["levels"]
        if not isinstance(levels, (list, tuple)):
            raise LabelError("invalid_policy", "levels must be a list")
        abbreviations = config.get("abbreviations") or {}
        for key in ("compartments", "releasability"):
            if not isinstance(config.get(key), (list, tuple, set, frozenset, type(None))):
                raise LabelError("invalid_policy", f"{key} must be a list or null")
        return cls(
            name=config["name"],
            levels=list(levels),
            abbreviations=abbreviations,
            compartments=config.get("compartments"),
            releasability=config.get("releasability"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The configuration, in the shape :meth:`from_dict` reads (lists sorted)."""
        return {
            "name": self.name,
            "levels": list(self.levels),
            "abbreviations": dict(self.abbreviations),
            "compartments": None if self.compartments is None else sorted(self.compartments),
            "releasability": None if self.releasability is None else sorted(self.releasability),
        }

    # -- lookups

    def level_index(self, name: str) -> int:
        """The index of a level given by full name or abbreviation, case-insensitively.

        Raises LabelError(``unknown_level``).
        """
        key = _SPACES.sub(" ", name.strip(" \t")).upper() if isinstance(name, str) else None
        if key is None or key not in self._lookup:  # type: ignore[attr-defined]
            raise LabelError("unknown_level", f"{_show(str(name))} is not a level of policy {self.name}")
        return self._lookup[key]  # type: ignore[attr-defined,no-any-return]

    def _check_compartment(self, token: str) -> None:
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise LabelError("malformed", f"{_show(str(token))} is not a compartment (upper-case [A-Z0-9_-]+)")
        if self.compartments is not None and token not in self.compartments:
            raise LabelError("unknown_compartment", f"{token} is not a compartment of policy {self.name}")

    def _check_code(self, token: str) -> None:
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise LabelError("malformed", f"{_show(str(token))} is not a releasability code (upper-case [A-Z0-9_-]+)")
        if self.releasability is not None and token not in self.releasability:
            raise LabelError("unknown_releasability", f"{token} is not a releasability code of policy {self.name}")

    def _check_level(self, level: int, what: str) -> None:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < len(self.levels):
            raise LabelError("unknown_level", f"{what} {level!r} is not a level index of policy {self.name}")


#: The default policy ``GH``: five levels, the usual abbreviations, any compartment or code.
DEFAULT_POLICY: Final = Policy(
    name="GH",
    levels=["UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET", "TOP SECRET"],
    abbreviations={"U": "UNCLASSIFIED", "R": "RESTRICTED", "C": "CONFIDENTIAL", "S": "SECRET", "TS": "TOP SECRET"},
)


class PolicyRegistry:
    """The configured policies by name, one of them the default.  Immutable."""

    def __init__(self, policies: Iterable[Policy], default: str | None = None) -> None:
        by_name: dict[str, Policy] = {}
        for policy in policies:
            if not isinstance(policy, Policy):
                raise LabelError("invalid_policy", f"{policy!r} is not a Policy")
            if policy.name in by_name:
                raise LabelError("invalid_policy", f"the policy {policy.name} is configured twice")
            by_name[policy.name] = policy
        if not by_name:
            raise LabelError("invalid_policy", "a registry needs at least one policy")
        if default is None:
            if len(by_name) != 1:
                raise LabelError("invalid_policy", "name the default policy when there are several")
            default = next(iter(by_name))
        if not isinstance(default, str) or default.upper() not in by_name:
            raise LabelError("invalid_policy", f"the default policy {default!r} is not configured")
        self._policies: Mapping[str, Policy] = MappingProxyType(by_name)
        self._default = by_name[default.upper()]

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> PolicyRegistry:
        """A registry from settings: ``{"default": "GH", "policies": [<Policy.from_dict>, ...]}``
        (``default`` may be left out when there is one policy)."""
        if not isinstance(config, Mapping) or not isinstance(config.get("policies"), (list, tuple)):
            raise LabelError("invalid_policy", "the label settings need a list of 'policies'")
        unknown = set(config) - {"default", "policies"}
        if unknown:
            raise LabelError("invalid_policy", f"unknown label settings: {', '.join(sorted(map(str, unknown)))}")
        return cls([Policy.from_dict(item) for item in config["policies"]], default=config.get("default"))

    @property
    def default(self) -> Policy:
        return self._default

    def names(self) -> list[str]:
        return sorted(self._policies)

    def get(self, name: str | None = None) -> Policy:
        """The policy called ``name`` (case-insensitive), or the default for None.

        Raises LabelError(``unknown_policy``).
        """
        if name is None:
            return self._default
        policy = self._policies.get(name.upper()) if isinstance(name, str) else None
        if policy is None:
            raise LabelError("unknown_policy", f"there is no policy {_show(str(name))}")
        return policy

    def resolve(self, policy: Policy | str | None) -> Policy:
        """A Policy as is, a name looked up, None as the default."""
        return policy if isinstance(policy, Policy) else self.get(policy)


#: A registry holding only :data:`DEFAULT_POLICY`; settings build their own.
DEFAULT_REGISTRY: Final = PolicyRegistry([DEFAULT_POLICY])


# --------------------------------------------------------------------------- labels


def _sort_key(group: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(group))


def _normalise_groups(groups: Iterable[frozenset[str]]) -> tuple[frozenset[str], ...]:
    """The minimal groups (a strict superset of another group adds no restriction), without
    repeats, in canonical order (by sorted code list)."""
    unique = set(groups)
    minimal = [g for g in unique if not any(other < g for other in unique)]
    return tuple(sorted(minimal, key=_sort_key))


def _groups_dominate(a: Iterable[frozenset[str]], b: Iterable[frozenset[str]]) -> bool:
    """Groups ``a`` admit only readers that groups ``b`` admit: each group of ``b``
    contains a group of ``a``."""
    a = tuple(a)
    return all(any(g <= h for g in a) for h in b)


@dataclass(frozen=True, repr=False)
class Label:
    """A classification label.  Immutable and hashable; equal labels have equal banners.

    ``compartments`` may be any iterable of tokens (stored as a frozenset);
    ``releasability`` any iterable of groups, each an iterable of codes (stored as a tuple
    of frozensets, normalised: strict supersets dropped, repeats merged, sorted).  Tokens
    must already be upper-case; :func:`parse_label` is the way in for text.

    Raises LabelError: ``unknown_level`` (index out of range), ``malformed`` (a bad token,
    an empty group, a string where a set belongs), ``unknown_compartment``,
    ``unknown_releasability``.
    """

    policy: Policy
    level: int
    compartments: frozenset[str] = frozenset()
    releasability: tuple[frozenset[str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.policy, Policy):
            raise LabelError("unknown_policy", f"{self.policy!r} is not a Policy")
        self.policy._check_level(self.level, "the level")
        if isinstance(self.compartments, str) or not isinstance(self.compartments, Iterable):
            raise LabelError("malformed", "compartments must be a set of tokens")
        compartments = frozenset(self.compartments)
        for token in compartments:
            self.policy._check_compartment(token)
        if isinstance(self.releasability, str) or not isinstance(self.releasability, Iterable):
            raise LabelError("malformed", "releasability must be a sequence of sets of codes")
        groups = []
        for group in self.releasability:
            if isinstance(group, str) or not isinstance(group, Iterable):
                raise LabelError("malformed", "each releasability group must be a set of codes")
            codes = frozenset(group)
            if not codes:
                raise LabelError("malformed", "a releasability group needs at least one code")
            for code in codes:
                self.policy._check_code(code)
            groups.append(codes)
        object.__setattr__(self, "compartments", compartments)
        object.__setattr__(self, "releasability", _normalise_groups(groups))

    @property
    def level_name(self) -> str:
        return self.policy.levels[self.level]

    def canonical(self) -> str:
        """The stable serialisation ``v1|<POLICY>|<banner>``."""
        return f"{CANONICAL_VERSION}|{self.policy.name}|{format_label(self)}"

    def digest(self) -> str:
        """SHA-256 (hex) of :meth:`canonical`, UTF-8 encoded."""
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()

    def __str__(self) -> str:
        return format_label(self)

    def __repr__(self) -> str:
        return f"Label({self.policy.name!r}, {format_label(self)!r})"


def format_label(label: Label) -> str:
    """The canonical banner: ``LEVEL//COMPARTMENT...//REL TO A, B//REL TO C``."""
    parts = [label.level_name, *sorted(label.compartments)]
    parts += [f"{_REL_TO} {', '.join(sorted(group))}" for group in label.releasability]
    return "//".join(parts)


def _clean(text: object) -> str:
    """The stripped, upper-cased text, or LabelError for what is never a label."""
    if text is None:
        raise LabelError("empty", "no label given")
    if not isinstance(text, str):
        raise LabelError("malformed", f"a label must be text, not {type(text).__name__}")
    if len(text) > MAX_LABEL_LENGTH:
        raise LabelError("too_long", f"a label has at most {MAX_LABEL_LENGTH} characters")
    text = text.strip(_OUTER_WHITESPACE)
    if not text:
        raise LabelError("empty", "the label is empty")
    if not _ALLOWED.fullmatch(text):
        bad = next(ch for ch in text if not _ALLOWED.fullmatch(ch))
        raise LabelError("invalid_character", f"the label contains U+{ord(bad):04X}; only ASCII is accepted")
    return text.upper()


def parse_label(text: str, policy: Policy | str | None = None, *, registry: PolicyRegistry | None = None) -> Label:
    """Parse a banner such as ``SECRET//NATO//REL TO GBR, USA`` under ``policy`` (a Policy,
    a policy name looked up in ``registry``, or None for the registry's default).

    See the module documentation for the syntax.  Raises LabelError: ``empty``,
    ``too_long``, ``invalid_character``, ``malformed``, ``unknown_level``,
    ``unknown_compartment``, ``unknown_releasability``, ``duplicate``, ``unknown_policy``.
    """
    resolved = (registry or DEFAULT_REGISTRY).resolve(policy)
    segments = [_SPACES.sub(" ", part).strip(" ") for part in _clean(text).split("//")]
    for segment in segments:
        if not segment:
            raise LabelError("malformed", "a label has an empty part (a leading, trailing or doubled '//')")
        if "/" in segment:
            raise LabelError("malformed", f"{_show(segment)}: parts are separated by '//' only")
    head, *rest = segments
    if not _LEVEL_NAME.fullmatch(head):
        raise LabelError("malformed", f"{_show(head)} is not a level name")
    level = resolved.level_index(head)
    compartments: set[str] = set()
    groups: list[frozenset[str]] = []
    for segment in rest:
        if segment == _REL_TO or segment.startswith(_REL_TO + " "):
            group = _parse_group(segment[len(_REL_TO):], resolved)
            if group in groups:
                raise LabelError("duplicate", f"REL TO {', '.join(sorted(group))} is given twice")
            groups.append(group)
        else:
            resolved._check_compartment(segment)
            if segment in compartments:
                raise LabelError("duplicate", f"the compartment {segment} is given twice")
            compartments.add(segment)
    return Label(resolved, level, frozenset(compartments), tuple(groups))


def _parse_group(text: str, policy: Policy) -> frozenset[str]:
    """The codes of one ``REL TO`` list (the text after ``REL TO``)."""
    if not text.strip():
        raise LabelError("malformed", "REL TO needs at least one code")
    codes: set[str] = set()
    for raw in text.split(","):
        code = raw.strip(" ")
        if not code:
            raise LabelError("malformed", "a REL TO list has an empty entry (codes are separated by single commas)")
        policy._check_code(code)
        if code in codes:
            raise LabelError("duplicate", f"the code {code} is given twice in one REL TO list")
        codes.add(code)
    return frozenset(codes)


def parse_canonical(text: str, *, registry: PolicyRegistry | None = None) -> Label:
    """The label of a :meth:`Label.canonical` string, looked up in ``registry``.

    Strict: the text must be exactly canonical (version, policy, upper-case, sorted), or
    LabelError(``malformed``); ``unknown_policy`` for a policy not in the registry.
    """
    if not isinstance(text, str):
        raise LabelError("malformed", "a canonical label must be text")
    version, sep, rest = text.partition("|")
    name, sep2, banner = rest.partition("|")
    if not (sep and sep2) or version != CANONICAL_VERSION:
        raise LabelError("malformed", f"not a {CANONICAL_VERSION} canonical label")
    if name != name.upper():
        raise LabelError("malformed", "the policy name of a canonical label is upper-case")
    label = parse_label(banner, (registry or DEFAULT_REGISTRY).get(name))
    if label.canonical() != text:
        raise LabelError("malformed", "the label is not in canonical form")
    return label


# --------------------------------------------------------------------------- the lattice


def dominates(a: Label, b: Label) -> bool:
    """Whether ``a`` is at least as restrictive as ``b`` (whoever may read ``a`` may read
    ``b``): same policy, level ``>=``, compartments ``>=``, and each releasability group of
    ``b`` contains a group of ``a``.  False for labels of different policies.

    A partial order: reflexive, transitive and antisymmetric (labels are normalised).
    """
    return (
        a.policy == b.policy
        and a.level >= b.level
        and a.compartments >= b.compartments
        and _groups_dominate(a.releasability, b.releasability)
    )


def _same_policy(labels: tuple[Label, ...], what: str) -> Policy:
    if not labels:
        raise LabelError("empty", f"{what}() of no labels")
    for label in labels:
        if not isinstance(label, Label):
            raise LabelError("malformed", f"{what}() takes labels, not {type(label).__name__}")
    policy = labels[0].policy
    if any(label.policy != policy for label in labels):
        names = sorted({label.policy.name for label in labels})
        raise LabelError("policy_mismatch", f"{what}() of labels of different policies ({', '.join(names)})")
    return policy


def lub(*labels: Label) -> Label:
    """The least upper bound (join): the least restrictive label that dominates every
    argument — the highest level, all compartments, all releasability groups (normalised).

    A task's outputs carry at least ``lub(*input_labels, task_label)``.

    Raises LabelError: ``empty`` for no labels, ``policy_mismatch`` for mixed policies.
    """
    policy = _same_policy(labels, "lub")
    return Label(
        policy,
        max(label.level for label in labels),
        frozenset().union(*(label.compartments for label in labels)),
        tuple(group for label in labels for group in label.releasability),
    )


def glb(*labels: Label) -> Label:
    """The greatest lower bound (meet): the most restrictive label that every argument
    dominates — the lowest level, the common compartments, and as groups the unions of one
    group from each label (normalised); a label without groups makes the result have none.

    Raises LabelError: ``empty`` for no labels, ``policy_mismatch`` for mixed policies.
    """
    policy = _same_policy(labels, "glb")
    groups: tuple[frozenset[str], ...] = labels[0].releasability
    for label in labels[1:]:
        groups = _normalise_groups(g | h for g in groups for h in label.releasability)
    return Label(
        policy,
        min(label.level for label in labels),
        frozenset.intersection(*(label.compartments for label in labels)),
        groups,
    )


# --------------------------------------------------------------------------- clearances


def _check_aware(value: datetime, what: str) -> None:
    if not isinstance(value, datetime):
        raise LabelError("invalid_clearance", f"{what} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise LabelError("naive_datetime", f"{what} must have a time zone")


@dataclass(frozen=True, repr=False)
class Clearance:
    """What a person may read under one policy: levels up to ``max_level``, the
    ``compartments`` held, and ``releasability``, the codes the holder belongs to
    (``{"GBR", "NATO"}``).  Valid while ``status`` is ``active`` and
    ``valid_from <= at < valid_until`` (either bound may be None = open; datetimes must be
    time-zone aware).

    Raises LabelError: ``unknown_level``, ``malformed``, ``unknown_compartment``,
    ``unknown_releasability``, ``naive_datetime``, ``invalid_clearance`` (an unknown status,
    or ``valid_until`` not after ``valid_from``).
    """

    policy: Policy
    max_level: int
    compartments: frozenset[str] = frozenset()
    releasability: frozenset[str] = frozenset()
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    status: str = "active"

    def __post_init__(self) -> None:
        if not isinstance(self.policy, Policy):
            raise LabelError("unknown_policy", f"{self.policy!r} is not a Policy")
        self.policy._check_level(self.max_level, "the maximum level")
        for name in ("compartments", "releasability"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise LabelError("malformed", f"{name} must be a set of tokens")
            object.__setattr__(self, name, frozenset(value))
        for token in self.compartments:
            self.policy._check_compartment(token)
        for code in self.releasability:
            self.policy._check_code(code)
        if self.valid_from is not None:
            _check_aware(self.valid_from, "valid_from")
        if self.valid_until is not None:
            _check_aware(self.valid_until, "valid_until")
        if self.valid_from is not None and self.valid_until is not None and self.valid_until <= self.valid_from:
            raise LabelError("invalid_clearance", "valid_until must be after valid_from")
        if self.status not in CLEARANCE_STATUSES:
            raise LabelError("invalid_clearance", f"{self.status!r} is not a clearance status")

    def is_valid(self, at: datetime) -> bool:
        """Whether the clearance is active and ``at`` is inside its validity window
        (``valid_from`` inclusive, ``valid_until`` exclusive).

        Raises LabelError(``naive_datetime``) for a datetime without a time zone.
        """
        _check_aware(at, "the time")
        return (
            self.status == "active"
            and (self.valid_from is None or self.valid_from <= at)
            and (self.valid_until is None or at < self.valid_until)
        )

    def __repr__(self) -> str:
        parts = [self.policy.levels[self.max_level], *sorted(self.compartments)]
        codes = ", ".join(sorted(self.releasability)) or "-"
        return f"<Clearance {self.policy.name} {'//'.join(parts)} codes={codes} {self.status}>"


def clearance_dominates(clearance: Clearance, label: Label, at: datetime) -> bool:
    """Whether the holder of ``clearance`` may read ``label`` at ``at``: the clearance is
    valid then, of the same policy, its level is at least the label's, it holds every
    compartment of the label, and its codes meet every releasability group of the label
    (one code per group suffices).

    Monotone: if it may read ``a`` and ``dominates(a, b)``, it may read ``b``.
    Raises LabelError(``naive_datetime``) for a datetime without a time zone.
    """
    return (
        clearance.is_valid(at)
        and clearance.policy == label.policy
        and clearance.max_level >= label.level
        and clearance.compartments >= label.compartments
        and all(group & clearance.releasability for group in label.releasability)
    )
