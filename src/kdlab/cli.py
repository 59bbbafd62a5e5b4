"""The ``kdlab`` command. Thin: parse flags, build a RunConfig, call the library.

A mistake in the user's input (``UserError``) is printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from kdlab.config import build_config
from kdlab.distributed import MOST_PROCESSES
from kdlab.errors import RunInterrupted, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Knowledge distillation with KL (any tau, inf and 0 included) and MSE logit losses.",
)

# Options shared by every command that trains; each maps to one config key. The help of --dataset,
# --model and --loss is written from the registries when the command runs (plugins included).
Dataset = Annotated[str | None, typer.Option("--dataset", help="a registered dataset")]
Model = Annotated[str | None, typer.Option("--model", help="a registered model")]
Out = Annotated[str | None, typer.Option("--out", help="run folder to write")]
DataDir = Annotated[str | None, typer.Option("--data-dir", help="folder holding the dataset files")]
Epochs = Annotated[int | None, typer.Option("--epochs")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="per process")]
Lr = Annotated[float | None, typer.Option("--lr")]
Seed = Annotated[int | None, typer.Option("--seed")]
Subset = Annotated[
    int | None, typer.Option("--subset", help="keep N training images (seeded, class-balanced)")
]
ValSplit = Annotated[
    int | None,
    typer.Option("--val-split", help="hold N training images out for validation (seeded, class-balanced)"),
]
LabelNoise = Annotated[str | None, typer.Option("--label-noise", help="symmetric:R or asymmetric:R")]
Device = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML file of config keys")]
Overrides = Annotated[list[str] | None, typer.Option("--set", help="key=value override, e.g. optim.lr=0.05")]
Resume = Annotated[bool, typer.Option("--resume", help="continue the run in --out from its last checkpoint")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="delete what --out holds and start again")]
Download = Annotated[bool, typer.Option("--download", help="download the dataset when it is not found")]
# main() acts on --nproc before typer parses (it relaunches the command line), so the commands never
# read it; declared here for --help.
NProc = Annotated[
    int, typer.Option("--nproc", help="run N data-parallel processes via torch.distributed.run", min=1)
]
# main() imports these before typer parses (so that plugins' names reach the help and every command);
# the training commands also record them in the run's config (`imports`).
Imports = Annotated[
    list[str] | None,
    typer.Option(
        "--import", help="a module or .py file that registers your models, datasets or losses (repeatable)"
    ),
]


def run_flags(**flags: Any) -> dict[str, Any]:
    """CLI flags -> the nested config dict (None means: not given)."""
    return {
        "imports": flags.get("imports") or None,
        "model": flags.get("model"),
        "out": flags.get("out"),
        "seed": flags.get("seed"),
        "device": flags.get("device"),
        "data": {
            "name": flags.get("dataset"),
            "data_dir": flags.get("data_dir"),
            "subset": flags.get("subset"),
            "val_split": flags.get("val_split"),
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
            "tau": flags.get("tau"),  # parsed with every other number, in kdlab.config
        },
    }


def _print_summary(summary: dict[str, Any]) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # one line per run, not one per process
        return
    keys = ("test_acc_best", "test_acc_last", "train_acc", "logit_distance", "wall_time_s")
    parts = [f"{key}={summary[key]:.4g}" for key in keys if isinstance(summary.get(key), (int, float))]
    typer.echo("done: " + " ".join(parts))


def _train_and_report(
    config: Path | None, flags: dict[str, Any], overrides: list[str] | None, resume: bool, overwrite: bool
) -> None:
    from kdlab.engine import train as run_training
    from kdlab.teacher import with_teacher_data

    run_config = build_config(config, flags, overrides, complete=with_teacher_data)
    _print_summary(run_training(run_config, resume=resume, overwrite=overwrite))


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
    val_split: ValSplit = None,
    label_noise: LabelNoise = None,
    device: Device = None,
    download: Download = False,
    config: ConfigFile = None,
    set_: Overrides = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    nproc: NProc = 1,
    imports: Imports = None,
) -> None:
    """Train a model with cross-entropy (a teacher, or a student's no-KD baseline)."""
    flags = run_flags(**locals())
    flags["kd"]["loss"] = "ce"
    _train_and_report(config, flags, set_, resume, overwrite)


@app.command()
def distill(
    teacher: Annotated[
        list[str], typer.Option("--teacher", help="teacher run folder or checkpoint; repeat for an ensemble")
    ],
    dataset: Dataset = None,
    model: Model = None,
    loss: Annotated[str | None, typer.Option("--loss", help="a registered loss")] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="weight of the KD term, in [0, 1]")] = None,
    tau: Annotated[str | None, typer.Option("--tau", help="temperature: a number, inf or 0")] = None,
    out: Out = None,
    data_dir: DataDir = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    seed: Seed = None,
    subset: Subset = None,
    val_split: ValSplit = None,
    label_noise: LabelNoise = None,
    device: Device = None,
    download: Download = False,
    config: ConfigFile = None,
    set_: Overrides = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    nproc: NProc = 1,
    imports: Imports = None,
) -> None:
    """Distill a student from a teacher with a registered loss (default kl)."""
    flags = run_flags(**locals())
    flags["kd"]["teacher"] = list(teacher)  # one spec or an ensemble: kdlab.config settles the form
    flags["kd"]["loss"] = loss or "kl"
    _train_and_report(config, flags, set_, resume, overwrite)


@app.command("eval")
def evaluate(
    run: Annotated[str, typer.Argument(help="run folder or checkpoint file")],
    dataset: Dataset = None,
    data_dir: DataDir = None,
    device: Device = None,
    download: Download = False,
    imports: Imports = None,
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
    quick: Annotated[
        bool, typer.Option("--quick", help="the short version: 2,000 images, fewer epochs")
    ] = False,
    out: Annotated[str, typer.Option("--out", help="output folder")] = "demo-out",
    data_dir: DataDir = None,
    device: Device = None,
    imports: Imports = None,
) -> None:
    """Fashion-MNIST: train a teacher, distill a small student six ways, print and plot the table."""
    from kdlab.experiments.demo import run_demo

    run_demo(out=out, quick=quick, data_dir=data_dir, device=device or "auto")


# --- experiments: recipes, sweeps, chains, analysis, reports, the claim check ---------------------

Jobs = Annotated[
    int,
    typer.Option("--jobs", max=MOST_PROCESSES, help="parallel processes (torch threads: cores // jobs each)"),
]


@app.command()
def recipes(imports: Imports = None) -> None:
    """List the shipped recipes (EXPERIMENT-SCALE; scale small = Fashion-MNIST on a CPU, paper = CIFAR-100)."""
    from kdlab.experiments.recipes import load_recipe, plan_sweep, recipe_names

    for name in recipe_names():
        recipe = load_recipe(name)
        runs = len(plan_sweep(recipe, Path("sweeps") / name).students)
        typer.echo(f"{name:24s} {', '.join(recipe.claims):8s} {runs:3d} runs  {recipe.description}")


@app.command()
def sweep(
    recipe: Annotated[str, typer.Argument(help="recipe name (see `kdlab recipes`) or recipe .yaml file")],
    out: Annotated[str | None, typer.Option("--out", help="sweep folder (default sweeps/RECIPE)")] = None,
    jobs: Jobs = 1,
    shard: Annotated[str | None, typer.Option("--shard", help="I/N: run shard I (0-based) of N")] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="student seeds 0..K-1")] = None,
    set_: Overrides = None,
    lockstep: Annotated[
        bool, typer.Option(help="one teacher pass per batch for students that share it")
    ] = True,
    teachers_only: Annotated[
        bool, typer.Option("--teachers-only", help="train the teachers, no students")
    ] = False,
    teachers_dir: Annotated[str | None, typer.Option("--teachers-dir", help="default OUT/teachers")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list the runs (of this shard), train nothing")
    ] = False,
    imports: Imports = None,
) -> None:
    """Run a recipe: its teachers once, then its students; finished runs are skipped, interrupted ones resumed."""
    from kdlab.experiments.recipes import load_recipe, parse_shard, plan_sweep, select_shard
    from kdlab.experiments.sweep import run_plan
    from kdlab.runs import DIVERGED

    plan = plan_sweep(
        load_recipe(recipe, set_, imports), out or Path("sweeps") / Path(recipe).stem, seeds, teachers_dir
    )
    shard_pair = parse_shard(shard) if shard else None
    if dry_run:
        students = select_shard(plan.students, *shard_pair) if shard_pair else plan.students
        for run in [*plan.teachers_for(students), *students]:
            typer.echo(run.config.out)
        return
    summaries = run_plan(plan, jobs, shard_pair, lockstep, teachers_only, log=typer.echo)
    for name, summary in summaries.items():
        if summary.get("status") == DIVERGED:
            typer.echo(
                f"{name:40s} diverged at epoch {summary['diverged_epoch']}, step {summary['diverged_step']}"
            )
            continue
        distance = summary.get("logit_distance")
        typer.echo(
            f"{name:40s} test acc best {summary['test_acc_best']:6.2f}  last {summary['test_acc_last']:6.2f}"
            + (f"  logit distance {distance:.3f}" if isinstance(distance, (int, float)) else "")
        )
    typer.echo(f"next: kdlab report {plan.out}")


@app.command()
def chain(
    stage: Annotated[list[str], typer.Option("--stage", help="MODEL:LOSS[:key=value,...], in order")],
    out: Annotated[str, typer.Option("--out", help="folder of the stage run folders")],
    teacher: Annotated[list[str] | None, typer.Option("--teacher", help="teacher of the first stage")] = None,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    seed: Seed = None,
    subset: Subset = None,
    val_split: ValSplit = None,
    label_noise: LabelNoise = None,
    device: Device = None,
    download: Download = False,
    config: ConfigFile = None,
    set_: Overrides = None,
    imports: Imports = None,
) -> None:
    """Sequential distillation: each --stage trains into OUT/stageI-... and teaches the next stage."""
    from kdlab.experiments.chain import parse_stage, run_chain

    flags = run_flags(
        **{key: value for key, value in locals().items() if key not in ("stage", "out", "teacher")}
    )
    stages = [parse_stage(text) for text in stage]
    for summary in run_chain(stages, out, config, flags, set_, teacher or None, log=typer.echo):
        _print_summary(summary)


@app.command()
def analyze(
    runs: Annotated[list[str], typer.Argument(help="run folders (e.g. teacher-free, KL and MSE students)")],
    teacher: Annotated[
        list[str] | None, typer.Option("--teacher", help="default: the first run's teacher")
    ] = None,
    out: Annotated[str | None, typer.Option("--out", help="default RUN1/analysis")] = None,
    classes: Annotated[str, typer.Option("--classes", help="the three classes of the projection")] = "0,1,2",
    data_dir: DataDir = None,
    device: Device = None,
    imports: Imports = None,
) -> None:
    """Logit distance, penultimate norm, agreement, ECE, entropy, TLD and the 3-class projection, on the training set."""
    from kdlab.analysis.analyze import analyze_runs

    try:
        chosen = [int(part) for part in classes.split(",")]
    except ValueError:
        raise UserError(f"--classes {classes!r} must be three class indices, e.g. --classes 0,1,2") from None
    results = analyze_runs(runs, teacher or None, out, chosen, data_dir, device or "auto", log=typer.echo)
    for entry in results["runs"].values():
        parts = [
            f"train acc {entry['train_acc']:.2f}%",
            f"ECE {entry['ece']:.2f}%",
            f"entropy {entry['entropy_mean']:.3f}",
            f"TLD {entry['tld']['mean']:.3f}",
        ]
        if "agreement" in entry:
            parts.append(f"agreement {entry['agreement']:.2f}%")
        if "logit_distance" in entry:
            parts.append(f"logit distance {entry['logit_distance']['mean']:.3f}")
        typer.echo(f"{entry['label']:24s} " + ", ".join(parts))


@app.command()
def report(
    folder: Annotated[str, typer.Argument(help="sweep folder (run folders are found recursively)")],
    out: Annotated[str | None, typer.Option("--out", help="default: FOLDER")] = None,
    imports: Imports = None,
) -> None:
    """report.md + results.csv + gates.json: the regime gates, mean +- std over seeds, heatmaps, curves, losses."""
    from kdlab.experiments.report import write_report

    write_report(folder, out, log=typer.echo)


@app.command()
def reproduce(
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="tiny (smoke test, about a minute), small (protocol v2, Fashion-MNIST on a CPU: 90 minutes "
            "with --jobs 3 on 2 cores) or paper (CIFAR-100, GPUs); default tiny",
        ),
    ] = None,
    setting: Annotated[
        str | None,
        typer.Option("--setting", help="a setting .yaml of your own models and data, instead of a preset"),
    ] = None,
    claims: Annotated[str | None, typer.Option("--claims", help="e.g. C1,C5 (default: all nine)")] = None,
    out: Annotated[
        str | None, typer.Option("--out", help="default reproduce-PRESET (reproduce-SETTING)")
    ] = None,
    jobs: Jobs = 1,
    seeds: Annotated[
        int | None, typer.Option("--seeds", help="student seeds (default: the preset's or setting's)")
    ] = None,
    set_: Overrides = None,
    publish: Annotated[
        str | None,
        typer.Option("--publish", help="then copy REPORT.md, claims.json and figures/ to this folder"),
    ] = None,
    readme: Annotated[
        str | None,
        typer.Option("--readme", help="with --publish: rewrite this README's claims table from claims.json"),
    ] = None,
    imports: Imports = None,
    rejudge: Annotated[
        str | None,
        typer.Option(
            "--rejudge",
            help="judge the runs of this runs.csv (or folder holding one) again: nothing is trained",
        ),
    ] = None,
) -> None:
    """Run (or reuse) what each claim C1-C9 needs and write REPORT.md with a verdict per claim."""
    from kdlab.experiments.publish import check_publish
    from kdlab.experiments.publish import publish as publish_report
    from kdlab.experiments.reproduce import rejudged_preset
    from kdlab.experiments.reproduce import reproduce as run_reproduce

    if readme and not publish:
        raise UserError("--readme needs --publish DEST: the README's table links the published report")
    if preset is not None and setting is not None:
        raise UserError("--preset and --setting both given: a run judges one, drop one of them")
    if rejudge is not None and (set_ or seeds is not None):
        raise UserError(
            "--rejudge judges the runs a runs.csv holds: drop --set and --seeds, which change runs"
        )
    if publish:  # before any training: DEST and the README's markers (--out is checked by reproduce)
        check_publish(publish, readme)
    default = None if rejudge is not None else "tiny"  # a rejudge takes the preset its runs.csv names
    run_reproduce(
        preset or default, claims, out, jobs, set_, seeds, log=typer.echo, setting=setting, rejudge=rejudge
    )
    name = Path(setting).stem if setting is not None else preset or "tiny"
    if rejudge is not None and setting is None and preset is None:
        name = rejudged_preset(rejudge)
    if publish:
        publish_report(out or f"reproduce-{name}", publish, readme, log=typer.echo)


@app.command("export")
def export_model(
    run: Annotated[str, typer.Argument(help="finished run folder or kdlab checkpoint file")],
    format_: Annotated[
        str, typer.Option("--format", help="safetensors, onnx, pt2 (torch.export) or torchscript")
    ] = "safetensors",
    out: Annotated[
        str | None, typer.Option("--out", help="file to write (default RUN/export/student.EXT)")
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="last (default) or best, of a run folder")
    ] = None,
    imports: Imports = None,
) -> None:
    """Write a trained model, its input normalisation built in, to a file other tools load (docs/export.md)."""
    from kdlab.export import export_student

    typer.echo(export_student(run, format_, out, checkpoint).describe())


def plugin_arguments(args: list[str]) -> list[str]:
    """The values of ``--import X`` / ``--import=X`` anywhere in ``args`` (up to a ``--``)."""
    found = []
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--import" and index + 1 < len(args):
            found.append(args[index + 1])
        elif arg.startswith("--import="):
            found.append(arg.partition("=")[2])
    return found


def describe_registries(command: Any) -> None:
    """Write the help of --dataset, --model and --loss from the registries, plugins included."""
    from kdlab.data import DATASETS
    from kdlab.losses import LOSSES
    from kdlab.models import MODELS

    def listing(registry: Any) -> str:
        families = f"; families {', '.join(registry.patterns())}" if registry.patterns() else ""
        return f"{', '.join(registry.names())}{families}"

    texts = {
        "dataset": f"one of {listing(DATASETS)} (default: the teacher's)",
        "model": f"one of {listing(MODELS)}",
        "loss": f"one of {listing(LOSSES)} (kdlab.losses; default kl)",
    }
    for sub in getattr(command, "commands", {}).values():
        for param in sub.params:
            if param.name in texts:
                param.help = (
                    texts[param.name]
                    if param.name != "dataset" or sub.name in ("distill", "chain")
                    else texts[param.name].removesuffix(" (default: the teacher's)")
                )


def _set_cpu_threads() -> None:
    # Without an explicit setting, small CPU tensor operations were measured several times slower
    # on our 2-core machines; OMP_NUM_THREADS, when given, wins.
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


# errno -> what the user can do about it; any other OSError is a bug of kdlab's and keeps its traceback.
OS_ERROR_FIXES = {
    errno.ENAMETOOLONG: "use a shorter path (at most 255 characters per name)",
    errno.ENOSPC: "free some space, or choose a folder on another disk",
    errno.EDQUOT: "free some space, or choose a folder on another disk",
    errno.EROFS: "choose a folder you can write",
    errno.EACCES: "choose a path you may read and write, or change its permissions",
    errno.EPERM: "choose a path you may read and write, or change its permissions",
    errno.ELOOP: "remove the loop of symbolic links, or choose another path",
}


def os_error_message(error: OSError) -> str | None:
    """One line for an OSError the user can fix (a path too long, a full or read-only disk, no
    permission); None for any other."""
    fix = OS_ERROR_FIXES.get(error.errno or 0)
    if fix is None:
        return None
    name = str(error.filename) if error.filename is not None else "a path"
    if len(name) > 120:
        name = f"{name[:60]}...{name[-40:]} ({len(name)} characters)"
    return f"{name}: {error.strerror or 'refused by the system'}: {fix}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2; a run stopped by
    SIGTERM/SIGINT says where it saved and exits 128 + signal. ``--nproc N`` relaunches the command
    line as N processes (kdlab.distributed). With several processes only rank 0 prints."""
    from kdlab import distributed

    _set_cpu_threads()
    quiet = distributed.env_rank() != 0
    try:
        launched, args = distributed.launch_if_requested(sys.argv[1:] if argv is None else list(argv))
        if launched is not None:
            sys.exit(launched)
        from kdlab.plugins import import_plugins

        import_plugins(plugin_arguments(args))  # before any name is resolved, the help's included
        command = typer.main.get_command(app)
        describe_registries(command)
        # Not standalone: the parser's own errors come here as exceptions, to be printed as one line.
        code = command.main(args=args, prog_name="kdlab", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except UserError as error:
        if not quiet:
            typer.echo(f"kdlab: error: {error}", err=True)
        sys.exit(2)
    except RunInterrupted as interrupted:  # SIGTERM/SIGINT during training, after its checkpoint
        if not quiet:
            typer.echo(f"kdlab: {interrupted}", err=True)
        sys.exit(interrupted.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("kdlab: interrupted; resume with --resume", err=True)
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except OSError as error:  # what the system refused about a path the user gave: one line, not a traceback
        message = os_error_message(error)
        if message is None:
            raise
        if not quiet:
            typer.echo(f"kdlab: error: {message}", err=True)
        sys.exit(2)
    except typer.TyperException as error:  # a flag of the wrong type, a missing option, a typo'd command
        message = " ".join(error.format_message().split()) if hasattr(error, "format_message") else str(error)
        if message and not quiet:  # no message: the help was printed (`kdlab` alone)
            command = getattr(getattr(error, "ctx", None), "command_path", None) or "kdlab"
            typer.echo(f"kdlab: error: {message.rstrip('.')}: see {command} --help", err=True)
        sys.exit(getattr(error, "exit_code", 2))


if __name__ == "__main__":
    main()
