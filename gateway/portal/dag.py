"""A run's DAG as an SVG drawn by our own code (no layout tool needed at runtime): tasks in
columns by depth (the longest chain of needs before them), edges from each task to its dependants,
a chosen gate highlighted. Only tasks the viewer may see are drawn; an edge to a hidden task is
left out rather than hinted at."""
from __future__ import annotations

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 150, 38, 50, 14, 10
STATE_FILL = {
    "SUCCEEDED": "#d9f2df", "FAILED": "#f8d7da", "REJECTED": "#f8d7da", "EXPIRED": "#f8d7da",
    "CANCELLED": "#e2e3e5", "SKIPPED": "#eeeeee", "RUNNING": "#d6e6fb", "QUEUED": "#e8f0fb",
    "RETRY_WAIT": "#fff3cd", "AWAITING_DECISION": "#ffe8b3", "PENDING": "#ffffff",
}


def dag_svg(tasks, *, highlight_key: str | None = None, title: str = "Run DAG") -> SafeString:
    """`tasks`: TaskInstance rows (key, kind, state, dependants) in topological (id) order."""
    tasks = list(tasks)
    keys = {t.key for t in tasks}
    depth: dict[str, int] = {t.key: 0 for t in tasks}
    for task in tasks:  # id order is topological: a task's needs were placed before it
        for child in task.dependants:
            if child in depth:
                depth[child] = max(depth[child], depth[task.key] + 1)
    columns: dict[int, list] = {}
    for task in tasks:
        columns.setdefault(depth[task.key], []).append(task)
    pos = {}
    for col, members in columns.items():
        for row, task in enumerate(members):
            pos[task.key] = (PAD + col * (BOX_W + GAP_X), PAD + row * (BOX_H + GAP_Y))
    width = PAD * 2 + max(len(columns), 1) * (BOX_W + GAP_X) - GAP_X
    height = PAD * 2 + max((len(m) for m in columns.values()), default=1) * (BOX_H + GAP_Y) - GAP_Y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-labelledby="dag-title">',
        f'<title id="dag-title">{escape(title)}</title>',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
    ]
    for task in tasks:
        x1, y1 = pos[task.key]
        for child in task.dependants:
            if child not in keys:
                continue
            x2, y2 = pos[child]
            sx, sy, ex, ey = x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2
            mid = (sx + ex) / 2
            parts.append(f'<path d="M {sx} {sy} C {mid} {sy}, {mid} {ey}, {ex} {ey}" fill="none" stroke="#555" '
                         f'stroke-width="1.3" marker-end="url(#arrow)"/>')
    for task in tasks:
        x, y = pos[task.key]
        chosen = task.key == highlight_key
        fill = STATE_FILL.get(task.state, "#ffffff")
        stroke, width_ = ("#8a5a00", 4) if chosen else ("#333", 1.2)
        shape = "rx=\"16\"" if task.kind == "gate" else "rx=\"3\""
        name = task.key if len(task.key) <= 20 else task.key[:19] + "…"
        parts.append(
            f'<g class="dag-node{" dag-highlight" if chosen else ""}" data-task="{escape(task.key)}" '
            f'data-state="{escape(task.state)}">'
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" {shape} fill="{fill}" stroke="{stroke}" '
            f'stroke-width="{width_}"/>'
            f'<text x="{x + 8}" y="{y + 15}" font-size="12" font-weight="600">{escape(name)}'
            f'{" ◆" if task.kind == "gate" else ""}</text>'
            f'<text x="{x + 8}" y="{y + 30}" font-size="10" fill="#333">{escape(task.state)}</text>'
            f'<title>{escape(task.key)} ({escape(task.kind)}): {escape(task.state)}</title></g>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))
