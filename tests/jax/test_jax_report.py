"""fj.report: a data object with a deterministic table."""

import json

import jax
from jax_nets import Blocks

import frozen.jax as fj


def test_report_rows_totals_and_table():
    model = fj.freeze(Blocks(key=jax.random.PRNGKey(0)), "blocks.0-5")
    report = fj.report(model)
    data = report.to_dict()
    json.dumps(data)  # plain data
    rows = {row["path"]: row for row in data["rows"]}
    assert rows["blocks.0"]["status"] == "frozen" and rows["blocks.0"]["mode"] == "eval"
    assert rows["blocks.7"] == {
        "path": "blocks.7",
        "type": "Linear",
        "status": "trainable",
        "mode": "",
        "trainable": 72,
        "frozen": 0,
    }
    assert rows[""]["status"] == "partial"
    assert data["totals"] == {"trainable": 144, "frozen": 432, "trainable_bytes": 576, "frozen_bytes": 1728}
    text = str(report)
    assert text.splitlines()[0].split() == ["path", "type", "status", "mode", "trainable", "frozen"]
    assert "blocks.5  Linear  frozen     eval" in text and text == str(fj.report(model))
    assert [r.path for r in fj.report(model, depth=1).rows] == ["", "blocks"]
