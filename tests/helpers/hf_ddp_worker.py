"""One rank of the two-process Hugging Face Trainer run in tests/distributed/test_hf_ddp.py (spawned, not collected)."""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from tiny_models import RandomTokens, tiny_bert
from transformers import Trainer, TrainingArguments

import frozen
from frozen.integrations.hf import FreezeCallback


def main(rank: int, store: str, out: str) -> None:
    faulthandler.dump_traceback_later(90, exit=True)  # a hung rank says where, and ends the test
    warnings.simplefilter("ignore")
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    model = tiny_bert()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    plan = [frozen.schedule.Stage(1, ("bert.encoder.layer.1",))]
    callbacks = [FreezeCallback("bert.embeddings", "bert.encoder", unfreeze=plan)]
    args = TrainingArguments(
        output_dir=str(Path(out).parent / f"run{rank}"),
        per_device_train_batch_size=4,
        num_train_epochs=2,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        save_strategy="no",
        ddp_backend="gloo",
    )
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(32), callbacks=callbacks)
    trainer.train()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        moved = not torch.equal(
            model.bert.encoder.layer[1].output.dense.weight, start["bert.encoder.layer.1.output.dense.weight"]
        )
        kept = torch.equal(
            model.bert.encoder.layer[0].output.dense.weight, start["bert.encoder.layer.0.output.dense.weight"]
        )
        result = {
            "ranks_equal": bool(torch.equal(*gathered)),
            "thawed_trained": moved,
            "frozen_kept": kept,
            "world_size": trainer.args.world_size,
            "wrapped": type(trainer.model_wrapped).__name__,
        }
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    # Leave without the interpreter's teardown: gloo's and accelerate's exit handlers sometimes
    # hang once both ranks are done (seen in about half the runs), after the result is written.
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
