"""The classification banner of a page: the least upper bound of every label rendered on it.

The lattice is gateway/labels.py (and the configured policies, gateway/clearances.label_registry);
this module only chooses the colours. A page renders nothing above the viewer's clearance because
everything on it was read through the scoped selectors, so the banner never exceeds it either.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.clearances import label_registry
from gateway.labels import Label, LabelError, format_label, lub, parse_label

# The usual banner colours (background, text) by level name. The page sets them through a class
# (portal.css, `banner-<hex of the background>`), not a style attribute: the portal's
# Content-Security-Policy allows no inline style.
COLOURS = {
    "UNCLASSIFIED": ("#007a33", "#ffffff"),
    "RESTRICTED": ("#502b85", "#ffffff"),  # no colour in the register above; the controlled-unclassified purple
    "CONFIDENTIAL": ("#0033a0", "#ffffff"),
    "SECRET": ("#c8102e", "#ffffff"),
    "TOP SECRET": ("#ff8c00", "#000000"),
}
_BY_RANK = [COLOURS["UNCLASSIFIED"], COLOURS["CONFIDENTIAL"], COLOURS["SECRET"], COLOURS["TOP SECRET"]]


@dataclass(frozen=True)
class Banner:
    text: str
    background: str
    foreground: str
    level: int  # the level's index in its policy (for comparisons in tests)

    @property
    def style(self) -> str:
        return f"background:{self.background};color:{self.foreground}"

    @property
    def css_class(self) -> str:
        return "banner-" + self.background.lstrip("#")


def _colours(label: Label) -> tuple[str, str]:
    if label.level_name in COLOURS:
        return COLOURS[label.level_name]
    top = max(len(label.policy.levels) - 1, 1)  # a configured policy's own levels: by rank
    return _BY_RANK[round(label.level * (len(_BY_RANK) - 1) / top)]


def page_banner(banners: Iterable[str]) -> Banner:
    """The banner for a page showing `banners` (canonical label texts; empty ones ignored)."""
    registry = label_registry()
    labels: list[Label] = []
    for text in {b for b in banners if b}:
        try:
            labels.append(parse_label(text, registry=registry))
        except LabelError:
            # A stored label the policy no longer reads: the selectors hide its rows, so it is not
            # on the page; refuse to guess a lower banner for it all the same.
            labels.append(parse_label(registry.default.levels[-1], registry=registry))
    if not labels:
        label = parse_label(registry.default.levels[0], registry=registry)
    else:
        try:
            label = lub(*labels)
        except LabelError:  # labels of different policies: the highest level of any, by rank
            label = max(labels, key=lambda lab: lab.level / max(len(lab.policy.levels) - 1, 1))
    background, foreground = _colours(label)
    return Banner(format_label(label), background, foreground, label.level)
