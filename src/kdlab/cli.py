"""The ``kdlab`` command. Thin: parse flags, build a RunConfig, call the library.

A mistake in the user's input (``UserError``) is printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from kdlab.config import build_config
from kdlab.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Knowledge distillation with KL (any tau, inf and 0 included) and MSE logit losses.",
)

# Options shared by every command that trains; each maps to one config key.
Dataset = Annotated[
    str | None, typer.Option("--dataset", help="cifar10, cifar100, fashion-mnist, mnist, digits, imagefolder")
]
Model = Annotated[str | None, typer.Option("--model", help="e.g. wrn-16-2, resnet56, convnet-8, resnet50")]
Out = Annotated[str | None, typer.Option("--out", help="run folder to write")]
DataDir = Annotated[str | None, typer.Option("--data-dir", help="folder holding the dataset files")]
Epochs = Annotated[int | None, typer.Option("--epochs")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="per process")]
Lr = Annotated[float | None, typer.Option("--lr")]
Seed = Annotated[int | None, typer.Option("--seed")]
Subset = Annotated[
    int | None, typer.Option("--subset", help="keep N training images (seeded, class-balanced)")
]
LabelNoise = Annotated[str | None, typer.Option("--label-noise", help="symmetric:R or asymmetric:R")]
Device = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML file of config keys")]
Overrides = Annotated[list[str] | None, typer.Option("--set", help="key=value override, e.g. optim.lr=0.05")]
Resume = Annotated[bool, typer.Option("--resume", help="continue the run in --out from its last checkpoint")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="delete what --out holds and start again")]
Download = Annotated[bool, typer.Option("--download", help="download the dataset when it is not found")]


def parse_tau(text: str | None) -> float | None:
    """'inf' -> math.inf, '0' -> 0.0, '4' -> 4.0."""
    if text is None:
        return None
    try:
        return math.inf if text.strip().lower() in ("inf", "infinity") else float(text)
    except ValueError:
        raise UserError(f"--tau {text!r} is not a number: use e.g. --tau 4, --tau inf or --tau 0") from None


def run_flags(**flags: Any) -> dict[str, Any]:
    """CLI flags -> the nested config dict (None means: not given)."""
    return {
        "model": flags.get("model"),
        "out": flags.get("out"),
        "seed": flags.get("seed"),
        "device": flags.get("device"),
        "data": {
            "name": flags.get("dataset"),
            "data_dir": flags.get("data_dir"),
            "subset": flags.get("subset"),
            "label_noise": flags.get("label_noise"),
            "download": flags.get("download") or None,
        },
        "optim": {
            "epochs": flags.get("epochs"),
            "batch_size": flags.get("batch_size"),
            "lr": flags.get("lr"),
        },
        "kd": {
            "teacher": flags.get("teacher"),
            "loss": flags.get("loss"),
            "alpha": flags.get("alpha"),
            "tau": parse_tau(flags.get("tau")),
        },
    }


def _print_summary(summary: dict[str, Any]) -> None:
    keys = ("test_acc_best", "test_acc_last", "train_acc", "logit_distance", "wall_time_s")
    parts = [f"{key}={summary[key]:.4g}" for key in keys if isinstance(summary.get(key), (int, float))]
    typer.echo("done: " + " ".join(parts))


@app.command()
def train(
    dataset: Dataset = None,
    model: Model = None,
    out: Out = None,
    data_dir: DataDir = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    seed: Seed = None,
    subset: Subset = None,
    label_noise: LabelNoise = None,
    device: Device = None,
    download: Download = False,
    config: ConfigFile = None,
    set_: Overrides = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Train a model with cross-entropy (a teacher, or a student's no-KD baseline)."""
    from kdlab.engine import train as run_training

    flags = run_flags(**locals())
    flags["kd"]["loss"] = "ce"
    run_config = build_config(config, flags, set_)
    _print_summary(run_training(run_config, resume=resume, overwrite=overwrite))


@app.command()
def distill(
    teacher: Annotated[
        list[str], typer.Option("--teacher", help="teacher run folder or checkpoint; repeat for an ensemble")
    ],
    dataset: Dataset = None,
    model: Model = None,
    loss: Annotated[str | None, typer.Option("--loss", help="ce, kl or mse")] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="weight of the KD term, in [0, 1]")] = None,
    tau: Annotated[str | None, typer.Option("--tau", help="temperature: a number, inf or 0")] = None,
    out: Out = None,
    data_dir: DataDir = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    seed: Seed = None,
    subset: Subset = None,
    label_noise: LabelNoise = None,
    device: Device = None,
    download: Download = False,
    config: ConfigFile = None,
    set_: Overrides = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Distill a student from a teacher with the ce, kl or mse loss."""
    from kdlab.engine import train as run_training

    flags = run_flags(**locals())
    flags["kd"]["teacher"] = teacher[0] if len(teacher) == 1 else list(teacher)
    flags["kd"]["loss"] = loss or "kl"
    run_config = build_config(config, flags, set_)
    _print_summary(run_training(run_config, resume=resume, overwrite=overwrite))


@app.command("eval")
def evaluate(
    run: Annotated[str, typer.Argument(help="run folder or checkpoint file")],
    dataset: Dataset = None,
    data_dir: DataDir = None,
    device: Device = None,
    download: Download = False,
) -> None:
    """Test accuracy of a trained model (the dataset defaults to the one it was trained on)."""
    from kdlab.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        run, dataset=dataset, data_dir=data_dir, device=device or "auto", download=download
    )
    typer.echo(
        f"{result['dataset']} test accuracy {result['test_acc']:.2f}% ({result['test_images']} images)"
    )


@app.command()
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="the under-5-minute version")] = False,
    out: Annotated[str, typer.Option("--out", help="output folder")] = "demo-out",
    data_dir: DataDir = None,
    device: Device = None,
) -> None:
    """Fashion-MNIST: train a teacher, distill a small student six ways, print and plot the table."""
    from kdlab.experiments.demo import run_demo

    run_demo(out=out, quick=quick, data_dir=data_dir, device=device or "auto")


def _set_cpu_threads() -> None:
    # Without an explicit setting, small CPU tensor operations were measured several times slower
    # on our 2-core machines; OMP_NUM_THREADS, when given, wins.
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2."""
    _set_cpu_threads()
    try:
        app(args=argv, prog_name="kdlab")
    except UserError as error:
        typer.echo(f"kdlab: error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("kdlab: interrupted; resume with --resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
