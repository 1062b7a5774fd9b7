"""``frozen demo``: a real transfer-learning run on scikit-learn's bundled digits.

A small CNN learns digits 0-4, then four ways of transferring it to digits 5-9
with ten labels per class are compared: from scratch, full fine-tune, frozen
backbone (``Frozen`` + ``settle``) and gradual unfreezing (``freeze`` / ``thaw``
with the optimizer re-synchronised). Decisions the contract leaves open, taken here:

* the frozen backbone keeps BatchNorm in inference behaviour (the library
  default), and the demo checks *every* backbone tensor — weights and running
  statistics — with ``torch.equal`` after training;
* "wall time per epoch" times the training steps only, not the evaluation;
* "optimizer state" is measured from the optimizer itself (bytes of the tensors
  in ``optimizer.state``) at the end of training, not estimated;
* the plot is drawn with matplotlib's Agg canvas directly, so running the demo
  from a notebook does not change the user's matplotlib backend.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import frozen

from .training import Curve, DigitNet, accuracy, digits_splits, train

__all__ = ["Thaw", "Variant", "DemoResult", "run_demo", "write_plot", "draw_curves"]


@dataclass
class Thaw:
    """A stage of gradual unfreezing that took effect: after ``epoch`` epochs, ``part`` trains."""

    epoch: int
    part: str
    trainable: int  # parameters that train from then on


@dataclass
class Variant:
    """One way of transferring the pretrained network, and how it went."""

    name: str
    curve: Curve
    trainable_params: int
    optimizer_bytes: int
    trainable_at_start: int | None = None  # differs from trainable_params when parts were thawed
    thaws: list[Thaw] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        return self.curve.accuracy[-1]

    @property
    def seconds_per_epoch(self) -> float:
        return sum(self.curve.epoch_seconds) / len(self.curve.epoch_seconds)


@dataclass
class DemoResult:
    """Everything the demo measured; ``frozen_bit_identical`` is the headline check."""

    variants: list[Variant]
    pretrain_accuracy: float
    frozen_bit_identical: bool
    frozen_tensors_checked: int
    plot: Path | None


def run_demo(
    *, quick: bool = False, seed: int = 0, out: str | Path | None = "frozen-demo.png", console: Any = None
) -> DemoResult:
    """Run the comparison, print progress and a table to ``console``, write the plot to ``out``.

    Args:
        quick: a few epochs only (for CI; seconds instead of most of a minute).
        seed: seeds data split, initialisation and batch order; same seed, same numbers.
        out: where to write the learning-curve PNG (``None``: no plot).
        console: a ``rich.console.Console`` (default: a new one on stdout).
    """
    from rich.console import Console

    console = console if console is not None else Console()
    # One thread: for a network this small it is the fastest setting, it does not
    # collapse when other processes share the CPU, and it makes the numbers the same
    # on every machine for a given seed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick, seed, out, console)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool, seed: int, out: str | Path | None, console: Any) -> DemoResult:
    shots, pre_epochs, epochs = (10, 2, 4) if quick else (10, 8, 30)
    source, target, test = digits_splits(seed=seed, shots=shots)
    console.print(
        f"[bold]frozen demo[/]: transfer learning on scikit-learn's digits (seed {seed}{', quick' if quick else ''})\n"
        f"  pretrain: digits 0-4, {len(source.y)} images\n"
        f"  transfer: digits 5-9, {shots} labels per class ({len(target.y)} images), tested on the other {len(test.y)}"
    )
    torch.manual_seed(seed)
    pretrained = DigitNet()
    with _progress(console) as progress:
        task = progress.add_task("pretrain (digits 0-4)", total=pre_epochs, acc="")
        train(
            pretrained,
            torch.optim.Adam(pretrained.parameters(), 1e-3),
            source,
            epochs=pre_epochs,
            batch_size=64,
            seed=seed,
            on_epoch_end=lambda e, c: progress.update(task, advance=1, acc=f"acc {c.accuracy[-1]:.1%}"),
        )
    pretrain_accuracy = accuracy(pretrained, source)
    snapshot = {k: v.clone() for k, v in pretrained.backbone.state_dict().items()}

    variants, frozen_model = [], None
    plans = [("from scratch", False), ("full fine-tune", True), ("frozen backbone", True), ("gradual unfreezing", True)]
    with _progress(console) as progress:
        for name, transfer in plans:
            torch.manual_seed(seed + 1)  # every variant gets the same new head
            model = DigitNet()
            if transfer:
                model.backbone = copy.deepcopy(pretrained.backbone)
            if name == "frozen backbone":
                model.backbone = frozen.Frozen(model.backbone)
                frozen.settle(model)
                frozen_model = model
            # A frozen backbone leaves only the head to fit: it takes a larger step size.
            lr = 1e-2 if name == "frozen backbone" else 3e-3
            step_schedule: Any = None
            thaws: list[Thaw] = []
            if name == "gradual unfreezing":
                optimizer, step_schedule = _gradual(model, epochs, lr, thaws)
            else:
                optimizer = torch.optim.Adam(frozen.trainable(model), lr=lr)
            at_start = sum(p.numel() for p in frozen.trainable(model))
            task = progress.add_task(name, total=epochs, acc="")

            def on_epoch_end(epoch: int, curve: Curve, task: Any = task, step_schedule: Any = step_schedule) -> None:
                progress.update(task, advance=1, acc=f"acc {curve.accuracy[-1]:.1%}")
                if step_schedule is not None:
                    step_schedule(epoch, curve)

            curve = train(
                model,
                optimizer,
                target,
                epochs=epochs,
                batch_size=25,
                seed=seed + 2,
                test=test,
                on_epoch_end=on_epoch_end,
            )
            params = sum(p.numel() for p in frozen.trainable(model))
            variants.append(Variant(name, curve, params, frozen.optim.state_nbytes(optimizer), at_start, thaws))

    assert frozen_model is not None
    after = frozen_model.backbone.state_dict()
    identical = all(torch.equal(snapshot[k], after[k]) for k in snapshot)
    console.print(frozen.report(frozen_model, depth=1))
    console.print(_table(variants))
    verdict = "[green]bit-identical[/]" if identical else "[red]CHANGED[/]"
    console.print(
        f"frozen backbone after {epochs} epochs of training: {verdict} to the pretrained one "
        f"(torch.equal on all {len(snapshot)} tensors: weights and BatchNorm running statistics)"
    )
    plot = None
    if out is not None:
        plot = write_plot(variants, Path(out))
        console.print(f"learning curves: {plot}")
    return DemoResult(variants, pretrain_accuracy, identical, len(snapshot), plot)


def _gradual(model: DigitNet, epochs: int, lr: float, thaws: list[Thaw]) -> tuple[torch.optim.Optimizer, Any]:
    """Freeze the backbone, then thaw its last block at 1/3 and the rest at 2/3 of training.

    The optimizer's groups come from ``frozen.optim.param_groups``, so each thawed part
    returns to its group with fresh Adam state (ULMFiT-style, via
    ``frozen.schedule.GradualUnfreezing``, which calls ``frozen.optim.sync``). Each
    stage that takes effect is appended to ``thaws`` (what the plot marks).
    """
    frozen.freeze(model, "backbone")
    optimizer = torch.optim.Adam(frozen.optim.param_groups(model, lr=lr), lr=lr)
    stages = [
        frozen.schedule.Stage(max(1, epochs // 3), ("backbone.3",)),
        frozen.schedule.Stage(max(2, 2 * epochs // 3), ("backbone",)),
    ]
    plan = frozen.schedule.GradualUnfreezing(model, optimizer, stages)

    def step(epoch: int, curve: Curve) -> None:
        for stage in plan.step():
            trainable = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
            thaws.append(Thaw(epoch + 1, ", ".join(map(str, stage.targets)), trainable))

    return optimizer, step


def _progress(console: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs {task.fields[acc]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _table(variants: list[Variant]) -> Any:
    from rich.table import Table

    from .._report import human_bytes

    table = Table(title="transfer to digits 5-9", title_justify="left", header_style="bold")
    for column in ("variant", "test acc", "ms/epoch", "trainable", "optimizer state"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for v in variants:
        table.add_row(
            v.name,
            f"{v.final_accuracy:.1%}",
            f"{1000 * v.seconds_per_epoch:.1f}",
            _trainable_cell(v),
            human_bytes(v.optimizer_bytes),
        )
    return table


def _trainable_cell(v: Variant) -> str:
    if v.trainable_at_start is None or v.trainable_at_start == v.trainable_params:
        return f"{v.trainable_params:,}"
    return f"{v.trainable_at_start:,} → {v.trainable_params:,}"


def write_plot(variants: list[Variant], path: Path) -> Path:
    """Draw :func:`draw_curves` into a PNG at ``path``; return the absolute path."""
    figure = draw_curves(variants)
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def draw_curves(variants: list[Variant]) -> Any:
    """Return a figure of test accuracy and training loss per epoch, thaws marked by dashed lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5), dpi=110)
    FigureCanvasAgg(figure)
    acc_ax, loss_ax = figure.subplots(1, 2)
    for v in variants:
        epochs = range(1, len(v.curve.accuracy) + 1)
        acc_ax.plot(epochs, [100 * a for a in v.curve.accuracy], marker=".", label=v.name)
        loss_ax.plot(epochs, v.curve.loss, marker=".", label=v.name)
    acc_ax.set(title="test accuracy on digits 5-9", xlabel="epoch", ylabel="accuracy (%)")
    loss_ax.set(title="training loss", xlabel="epoch", ylabel="cross-entropy", yscale="log")
    _mark_thaws(acc_ax, variants, labelled=True)  # labels low on the left, where the curves have risen
    _mark_thaws(loss_ax, variants, labelled=False)
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize="small", loc="upper right")
    figure.suptitle("frozen demo: transfer with 10 labels per class (dashed: gradual unfreezing thaws a stage)")
    figure.tight_layout()
    return figure


def _mark_thaws(ax: Any, variants: list[Variant], *, labelled: bool) -> None:
    """Draw a dashed line where a stage thawed (between its last frozen and first thawed epoch)."""
    from matplotlib.transforms import blended_transform_factory

    data_x_axes_y = blended_transform_factory(ax.transData, ax.transAxes)
    for line, v in zip(ax.get_lines(), variants):
        for thaw in v.thaws:
            x = thaw.epoch + 0.5
            ax.axvline(x, color=line.get_color(), linestyle="--", linewidth=1, alpha=0.8)
            if not labelled:
                continue
            label = f"thaw {thaw.part}\n({thaw.trainable:,} trainable)"
            ax.text(
                x,
                0.03,
                label,
                transform=data_x_axes_y,
                rotation=90,
                ha="right",
                va="bottom",
                fontsize=7,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1},
            )
