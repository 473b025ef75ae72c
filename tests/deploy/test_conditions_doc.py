"""docs/conditions.md shows the operator's reason table (conditions.READY_FALSE) as it is."""

from __future__ import annotations

from mailwarden.operator.conditions import READY_FALSE
from tests.deploy.tools import ROOT


def test_the_docs_table_lists_every_ready_false_reason_with_its_kstatus_conditions() -> None:
    text = (ROOT / "docs" / "conditions.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2], cells[3])
    want = {
        reason: ("False", str(m.reconciling), str(m.stalled)) for reason, m in READY_FALSE.items()
    }
    assert rows == want
