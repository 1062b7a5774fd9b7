"""One rank of the two-process Hugging Face Trainer run in tests/test_hf_ddp.py (spawned, not collected)."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import frozen
from frozen.integrations.hf import FreezeCallback


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 50, (n, 8), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def main(rank: int, store: str, out: str) -> None:
    warnings.simplefilter("ignore")
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
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
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=callbacks)
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
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
