"""frozen's Hugging Face callback thawing on a plan in a real two-process DDP Trainer run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run(tmp_path: Path) -> dict:
    worker = Path(__file__).resolve().parents[1] / "helpers" / "hf_ddp_worker.py"
    store, out = tmp_path / "store", tmp_path / "result.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    ranks = [
        subprocess.Popen([sys.executable, str(worker), str(rank), str(store), str(out)], env=env) for rank in range(2)
    ]
    assert [p.wait(timeout=300) for p in ranks] == [0, 0]
    return json.loads(out.read_text())


def test_thaw_on_a_plan_keeps_every_rank_of_a_ddp_trainer_bit_identical(tmp_path):
    result = run(tmp_path)
    assert result["world_size"] == 2 and result["wrapped"] == "DistributedDataParallel", result
    assert result["ranks_equal"] and result["thawed_trained"] and result["frozen_kept"], result
