"""The `placement` task field in workflow files, and whether a task named its backend."""
from __future__ import annotations

import pytest

from gateway.spec import SpecError, TaskSpec, parse_workflow

HEAD = "apiVersion: gatehouse/v1\nkind: Workflow\nname: p\n"


def test_placement_merges_defaults_and_records_whether_a_backend_was_named():
    wf = parse_workflow(HEAD + "defaults:\n  placement: {tags: [gpu], prefer: [hpc]}\ntasks:\n"
                        "  - {id: a, run: x}\n"
                        "  - {id: b, run: x, backend: hpc, placement: {tags: [on-prem]}}\n"
                        "  - {id: g, type: gate, title: t, options: [ok], needs: [a]}\n")
    a, b, g = wf.task("a"), wf.task("b"), wf.task("g")
    assert (a.backend, a.backend_given, a.placement) == ("local", False, {"tags": ["gpu"], "prefer": ["hpc"]})
    assert (b.backend, b.backend_given, b.placement) == ("hpc", True, {"tags": ["on-prem"], "prefer": ["hpc"]})
    assert g.placement is None
    for task in wf.tasks:
        assert TaskSpec.from_dict(task.to_dict()) == task
    # A stored spec from before the field existed named its backend ("local").
    old = a.to_dict()
    del old["placement"], old["backend_given"]
    assert TaskSpec.from_dict(old).backend_given is True


@pytest.mark.parametrize("text, fragment", [
    ("  - {id: a, run: x, placement: {tags: [gpu], zone: eu}}\n", "zone"),
    ("  - {id: a, run: x, placement: {tags: gpu}}\n", "list"),
    ("  - {id: g, type: gate, title: t, options: [ok], placement: {tags: [gpu]}}\n", "placement"),
])
def test_a_bad_placement_is_refused_with_its_line(text, fragment):
    with pytest.raises(SpecError) as refused:
        parse_workflow(HEAD + "tasks:\n" + text)
    assert any(fragment in issue.message and issue.line == 5 for issue in refused.value.issues), refused.value
