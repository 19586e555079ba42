"""Graph algorithms over the ``needs`` relation, all iterative (workflows may have 5,000
tasks in one chain, far past Python's recursion limit).

Nodes are integers ``0..n-1`` (task positions in the file); ``deps[v]`` lists the nodes
``v`` needs.  Edges therefore point from a task to its dependencies.
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["Ancestry", "find_cycles"]


def find_cycles(deps: Sequence[Sequence[int]], limit: int = 100) -> list[tuple[int, ...]]:
    """Cycles found by a depth-first search: one per back edge, each reported once.

    A cycle ``(a, b, c, a)`` means a needs b, b needs c and c needs a.  It is rotated to
    start at its lowest node so the same cycle found twice is reported once.  At most
    ``limit`` cycles are returned (the search still finishes in O(V + E) apart from
    building those paths).
    """
    white, grey, black = 0, 1, 2
    n = len(deps)
    colour = [white] * n
    seen: set[tuple[int, ...]] = set()
    cycles: list[tuple[int, ...]] = []
    for root in range(n):
        if colour[root] != white:
            continue
        path = [root]  # the current DFS path
        position = {root: 0}  # node -> index in path
        colour[root] = grey
        iterators = [iter(deps[root])]
        while iterators:
            for nxt in iterators[-1]:
                state = colour[nxt]
                if state == white:
                    colour[nxt] = grey
                    position[nxt] = len(path)
                    path.append(nxt)
                    iterators.append(iter(deps[nxt]))
                    break
                if state == grey and len(cycles) < limit:  # back edge: path[pos[nxt]:] closes a cycle
                    cycle = path[position[nxt]:]
                    low = cycle.index(min(cycle))
                    canonical = tuple(cycle[low:] + cycle[:low])
                    if canonical not in seen:
                        seen.add(canonical)
                        cycles.append(canonical + (canonical[0],))
            else:  # all dependencies of the node on top are done
                done = path.pop()
                del position[done]
                colour[done] = black
                iterators.pop()
    return cycles


class Ancestry:
    """Answers "is a a (transitive) dependency of t?" for every pair in O(1).

    Strongly connected components (iterative Tarjan) are processed dependencies-first and
    each gets a bitset (a Python int) of all its ancestors, so a 5,000-task chain costs a
    few megabytes rather than 12.5 million set entries.  Works on graphs with cycles too:
    the members of a cycle are ancestors of each other.
    """

    def __init__(self, deps: Sequence[Sequence[int]]) -> None:
        n = len(deps)
        index = [-1] * n
        low = [0] * n
        on_stack = [False] * n
        next_edge = [0] * n
        stack: list[int] = []
        self._component = [-1] * n
        components: list[list[int]] = []
        counter = 0
        for root in range(n):
            if index[root] >= 0:
                continue
            index[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on_stack[root] = True
            calls = [root]
            while calls:
                v = calls[-1]
                if next_edge[v] < len(deps[v]):
                    w = deps[v][next_edge[v]]
                    next_edge[v] += 1
                    if index[w] < 0:
                        index[w] = low[w] = counter
                        counter += 1
                        stack.append(w)
                        on_stack[w] = True
                        calls.append(w)
                    elif on_stack[w]:
                        low[v] = min(low[v], index[w])
                    continue
                calls.pop()
                if calls:
                    low[calls[-1]] = min(low[calls[-1]], low[v])
                if low[v] == index[v]:
                    members = []
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        self._component[w] = len(components)
                        members.append(w)
                        if w == v:
                            break
                    components.append(members)
        # Tarjan emits a component only after every component it depends on.
        member_bits = [sum(1 << v for v in members) for members in components]
        self._ancestors: list[int] = []
        for c, members in enumerate(components):
            bits = 0
            cyclic = len(members) > 1
            for v in members:
                for w in deps[v]:
                    cw = self._component[w]
                    if cw == c:
                        cyclic = True
                    else:
                        bits |= self._ancestors[cw] | member_bits[cw]
            if cyclic:
                bits |= member_bits[c]
            self._ancestors.append(bits)

    def is_ancestor(self, task: int, candidate: int) -> bool:
        """True if ``task`` needs ``candidate``, directly or transitively."""
        return bool(self._ancestors[self._component[task]] >> candidate & 1)
