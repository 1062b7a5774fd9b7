"""frozen.report: rows, totals, memory, renderings, validation."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import frozen


def tied_model() -> nn.Module:
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    backbone = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.1))
    return nn.ModuleDict(
        {
            "emb": emb,
            "backbone": frozen.Frozen(backbone),
            "head": head,
            "extra": frozen.Frozen(nn.BatchNorm1d(4), mode="inherit"),
        }
    )


def test_rows_states_inference_tied_and_dtype():
    rows = {row.path: row for row in frozen.report(tied_model()).rows}
    assert list(rows) == ["", "emb", "backbone", "backbone.0", "backbone.1", "backbone.2", "head", "extra"]
    assert (
        rows["backbone"].state == "frozen"
        and rows["backbone"].eval_forced
        and rows["backbone.2"].inference == "forced eval"
    )
    assert rows["emb"].state == "trainable" and rows["emb"].tied_with == ("head.weight",)
    assert rows["head"].tied_with == ("emb.weight",) and rows["head"].params == 40
    assert rows["extra"].inference == "inherit, buffers may change"
    assert rows[""].state == "mixed" and rows[""].dtype == "float32" and rows["backbone.2"].dtype == "-"


def test_totals_and_memory_count_each_tensor_once():
    model = tied_model()
    r = frozen.report(model)
    assert r.trainable_params == 40  # the tied embedding/head weight, once
    assert r.frozen_params == 20 + 8 + 8
    assert r.trainable_params == sum(p.numel() for p in frozen.trainable(model))
    assert r.gradient_bytes_saved == 36 * 4 and r.adam_state_bytes_saved == 2 * 36 * 4
    assert r.trainable_percent + r.frozen_percent == pytest.approx(100)


def test_report_follows_post_construction_freeze_and_thaw():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    frozen.freeze(model, "0", mode="inherit")
    assert [row.state for row in frozen.report(model).rows] == ["mixed", "frozen", "trainable"]
    assert frozen.report(model).rows[1].inference == "inherit"
    frozen.thaw(model, "0")
    assert [row.state for row in frozen.report(model).rows] == ["trainable"] * 3


def test_depth_collapses_rows_but_keeps_counts():
    model = tied_model()
    assert [row.path for row in frozen.report(model, depth=0).rows] == [""]
    shallow = frozen.report(model, depth=1)
    assert [row.path for row in shallow.rows] == ["", "emb", "backbone", "head", "extra"]
    assert shallow.rows[2].params == 28 and shallow.frozen_params == frozen.report(model).frozen_params


def test_plain_table_is_deterministic_and_complete():
    text = str(frozen.report(tied_model()))
    assert text == str(frozen.report(tied_model()))
    assert text.splitlines()[0].split() == ["path", "type", "params", "state", "inference", "tied", "with", "dtype"]
    assert "(model)" in text and "forced eval" in text and "head.weight" in text
    assert "trainable: 40 params (52.6%" in text and "of Adam-style optimizer state" in text


def test_to_dict_is_json_ready():
    data = json.loads(json.dumps(frozen.report(tied_model()).to_dict()))
    assert data["totals"]["frozen_params"] == 36 and data["rows"][1]["tied_with"] == ["head.weight"]


def test_rich_and_html_renderings():
    from rich.console import Console

    console = Console(record=True, width=140, color_system="truecolor", force_terminal=True)
    console.print(frozen.report(tied_model()))
    assert "forced eval" in console.export_text(clear=False) and "\x1b[" in console.export_text(styles=True)
    html = frozen.report(tied_model())._repr_html_()
    assert html.startswith("<table") and "<td" in html and "head.weight" in html


@pytest.mark.parametrize(
    "depth, error", [(-1, frozen.FrozenError), ("1", TypeError), (True, TypeError)], ids=["negative", "str", "bool"]
)
def test_bad_depth_is_rejected(depth, error):
    with pytest.raises(error, match="depth"):
        frozen.report(nn.Linear(2, 2), depth=depth)


def test_bad_model_is_rejected():
    with pytest.raises(TypeError, match="frozen.report"):
        frozen.report("resnet")


def test_report_says_what_a_cached_part_holds():
    torch.manual_seed(0)
    net = frozen.freeze(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1)), "0")
    frozen.cache(net, "0")
    x = torch.randn(3, 4)
    net(x), net(x)  # three samples missed, then hit
    r = frozen.report(net)
    held = r.caches["0"]
    assert held["hits"] == 3 and held["misses"] == 3 and held["entries"] == 3 and held["bytes"] >= 3 * 8 * 4
    assert str(r).splitlines()[-1] == f"cache '0': 3 hits, 3 misses, {held['bytes']} B in 3 entries on cpu"
    assert r.to_dict()["caches"] == r.caches
