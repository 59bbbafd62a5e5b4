"""Every command of README.md runs as written, in README order, at tiny size (issue 15).

The command lines are read from README.md's fenced ``bash`` blocks (``\\`` continuations joined,
comments dropped) and run one after another in one working folder holding what a fresh clone has
(``examples/``, ``docs/results/small`` and a copy of README.md), with ``HOME`` a temporary folder
whose ``~/data`` holds a tiny CIFAR-100 in the official pickle format, ``$DATA`` that folder,
Fashion-MNIST read from ``/usr/share/datasets/fashion-mnist`` as kdlab reads it, and the README's
``# my_kd.py`` python block saved as ``my_kd.py``. bash splits and expands each line (quotes, ``~``,
``$NAME``, ``NAME=value`` prefixes); ``kdlab ARGS`` then runs through kdlab's entry point
``kdlab.cli.main(ARGS)`` in this process, with the registries as a new process has them, and
``python`` is this interpreter. Each command is the README's words followed by the size flags of
``tiny_flags`` (later flags and ``--set`` win); it must exit 0 and write its main output
(``check_outputs``).

A line that cannot run on a CPU test machine by nature is listed in ``NOT_RUN`` with the reason, one
too slow even at tiny size in ``TOO_SLOW``, and one that fails by a known kdlab bug in ``KNOWN_BUGS``
(it must fail so until fixed); a line that is neither run nor listed fails the test, so the README
and this file cannot drift. ``kdlab --help`` and ``kdlab COMMAND --help`` must name exactly the
commands and the datasets the README names.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from fixtures_data import write_cifar100
from fixtures_engine import registries_restored

from kdlab.cli import main
from kdlab.data import DATASETS
from kdlab.experiments.publish import README_END, README_START, claims_table
from kdlab.experiments.recipes import load_recipe, plan_sweep, recipe_names, select_shard
from kdlab.experiments.setting import TEACHER_NAMES
from kdlab.export import FORMATS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # where kdlab looks; CI installs it

# README lines that cannot run on a CPU test machine by nature, and why. (An `sbatch --wrap '...'`
# line is not listed: its job's own command runs, as array task 0.)
NOT_RUN = {
    "make demo": "sets up a virtualenv from the network, then runs the full demo (minutes)",
    "make test": "lint + this whole test suite",
    "pip install -e .": "installs packages from the network",
    'pip install -e ".[tensorboard]"': "installs packages from the network",
    'pip install -e ".[export]"': "installs packages from the network",
}
# README commands that fail by a kdlab bug, with the error they give until it is fixed (then this
# test fails, asking to remove the entry).
KNOWN_BUGS: dict[str, str] = {}
# README commands that would run here but take minutes even with size flags appended, and why.
TOO_SLOW = {
    "kdlab demo --quick": "its scale is fixed (2,000 Fashion-MNIST images, 40 teacher + 6 x 40 student epochs, "
    "the 10,000 test images every epoch: minutes on 2 cores) and the command takes no size flag; run_demo runs "
    "at tiny size in test_experiments.py, and `kdlab demo --quick` is refused a bad --out in test_writers.py",
}
QUIET = ["--set", "progress=false", "--set", "tensorboard=false"]
CIFAR_TRAIN, CIFAR_TEST = 32, 10  # the tiny CIFAR-100 at ~/data: 32 training images (one batch), 10 test
# Sizes of the sweeps' and reproduce's runs per dataset (--set; the CIFAR-100 and tensor files are tiny).
DATA_SIZE = {
    "fashion-mnist": ["data.subset=100", "data.val_split=20", "data.test_subset=50"],
    "cifar100": [f"optim.batch_size={CIFAR_TRAIN}"],
    "tensors": ["data.val_split=60"],  # the example setting holds 500 of its 600 training samples out
}
TABULAR_SIZE = ["--train", "600", "--test", "300"]  # examples/tabular/make_data.py


# --- reading the README -----------------------------------------------------------------------------


def strip_comment(line: str) -> str:
    """``line`` without its shell comment (a ``#`` at a word start, outside quotes)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def blocks(language: str, text: str | None = None) -> list[str]:
    """The bodies of README.md's fenced blocks of ``language``, in order."""
    text = README.read_text() if text is None else text
    return re.findall(rf"^```{language}\n(.*?)^```\s*$", text, flags=re.S | re.M)


def readme_lines() -> list[str]:
    """Every command line of the README's bash blocks, continuations joined, comments dropped."""
    lines = []
    for block in blocks("bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if strip_comment(line).strip():
                lines.append(" ".join(strip_comment(line).split()))
    return lines


@dataclass
class Command:
    """One README line as run: ``shell`` is the command line bash expands, ``argv`` its words as
    written (unexpanded, without ``NAME=value`` prefixes), ``env`` what the line's context sets."""

    line: str
    shell: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def program_words(shell: str) -> list[str]:
    """The words of ``shell`` after its leading ``NAME=value`` assignments."""
    words = shlex.split(shell)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words.pop(0)
    return words


def as_run(line: str) -> Command | None:
    """How the test runs ``line``: ``kdlab ...`` and ``python examples/...`` as they are, the job of
    ``sbatch --wrap '...'`` as array task 0; None for anything else (NOT_RUN) and for TOO_SLOW."""
    words = program_words(line)
    if line in TOO_SLOW:
        return None
    if words[:1] == ["kdlab"] or (words[:1] == ["python"] and words[1].startswith("examples/")):
        return Command(line, line, words)
    if words[:1] == ["sbatch"] and "--wrap" in words:  # the job's command, as array task 0
        job = words[words.index("--wrap") + 1]
        return Command(line, job, program_words(job), {"SLURM_ARRAY_TASK_ID": "0"})
    return None


# --- the size flags ---------------------------------------------------------------------------------


def option(argv: list[str], name: str, default: str | None = None) -> str | None:
    """The last value of ``--name VALUE`` in ``argv``."""
    values = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == name]
    return values[-1] if values else default


EXPERIMENTS = ("grid", "logit-distance", "penultimate", "pairs", "poor-teacher", "sequential", "label-noise")


def teacher_epochs(names: Iterable[str]) -> list[str]:
    return [f"teachers.{name}.optim.epochs=1" for name in names]


def tiny_flags(argv: list[str], work: Path) -> list[str]:
    """The flags appended to a README command (its words ``argv``, run in ``work``) to run it at tiny size.

    - ``kdlab train|distill|chain``: ``--epochs 1 --batch-size 32`` (the tiny CIFAR-100 holds 32
      training images: a WRN-28-4 step costs ~0.12 s of CPU per image), plus ``--subset 200 --set
      data.test_subset=100`` on (Fashion-)MNIST.
    - ``kdlab sweep RECIPE``: ``--seeds 1``, ``--set optim.epochs=1``, one epoch for each of the
      recipe's teachers (``--set teachers.NAME.optim.epochs=1``), ``DATA_SIZE`` of the recipe's
      dataset, and ``--jobs 1``: worker processes import torch and kdlab again (~6 s of CPU each),
      more than a tiny sweep's runs take (``sweep --jobs 2`` is tested in test_robustness.py).
    - ``kdlab reproduce``: the same for its seven recipes (of the preset's scale, or the small ones
      turned into a setting's): every teacher of them gets one epoch (``--set teachers.NAME...``
      edits only the recipes that define NAME).
    - All of these: ``--set progress=false --set tensorboard=false``.
    - ``python examples/tabular/make_data.py``: ``--train 600 --test 300``.
    - Anything else (``eval``, ``export``, ``report``, ``analyze``, ``recipes``): nothing.
    """
    if argv[0] == "python":
        return TABULAR_SIZE if argv[1] == "examples/tabular/make_data.py" else []
    command = argv[1]
    if command in ("train", "distill", "chain"):
        flags = ["--epochs", "1", "--batch-size", str(CIFAR_TRAIN)]
        if option(argv, "--dataset") in ("fashion-mnist", "mnist"):
            flags += ["--subset", "200", "--set", "data.test_subset=100"]
        return flags + QUIET
    if command == "sweep":
        recipe = load_recipe(argv[2])
        sets = ["optim.epochs=1", *teacher_epochs(recipe.teachers)]
        sets += DATA_SIZE.get(recipe.base["data"]["name"], [])
        return ["--seeds", "1", "--jobs", "1", *as_sets(sets), *QUIET]
    if command == "reproduce":
        setting = option(argv, "--setting")
        scale = "paper" if option(argv, "--preset") == "paper" else "small"
        names = {name for experiment in EXPERIMENTS for name in load_recipe(f"{experiment}-{scale}").teachers}
        if setting is not None:
            names = {TEACHER_NAMES[name] for name in names}
            dataset = yaml.safe_load((work / setting).read_text())["data"]["name"]
        else:
            dataset = {"tiny": "digits", "small": "fashion-mnist", "paper": "cifar100"}[
                option(argv, "--preset", "tiny")
            ]
        sets = ["optim.epochs=1", *teacher_epochs(sorted(names)), *DATA_SIZE.get(dataset, [])]
        return ["--seeds", "1", "--jobs", "1", *as_sets(sets), *QUIET]
    return []


def as_sets(settings: list[str]) -> list[str]:
    return [word for text in settings for word in ("--set", text)]


# --- what each command must leave behind ------------------------------------------------------------


def check_outputs(argv: list[str], work: Path, stdout: str) -> None:
    """The command's main output exists (and, where cheap to know, is complete)."""
    if argv[:2] == ["python", "examples/tabular/make_data.py"]:
        out = work / option(argv, "--out", "examples/tabular/data")
        assert (out / "train.npz").is_file() and (out / "test.npz").is_file()
        return
    assert argv[0] == "kdlab", f"no output check for `{shlex.join(argv[:2])}`: add one to check_outputs"
    command, out = argv[1], option(argv, "--out")
    if command in ("train", "distill"):
        summary = json.loads((work / out / "summary.json").read_text())
        assert summary["epochs"] == 1
    elif command == "eval":
        assert re.search(r"test accuracy \d+\.\d\d% \(\d+ images\)", stdout), stdout
    elif command == "export":
        suffix = FORMATS[option(argv, "--format", "safetensors")]
        assert (work / (out or f"{argv[2]}/export/student{suffix}")).stat().st_size > 1000
    elif command == "demo":
        assert (work / (out or "demo-out") / "results.md").is_file()
    elif command == "recipes":
        assert all(name in stdout for name in recipe_names())
    elif command == "sweep":
        recipe = load_recipe(argv[2], [word for i, word in enumerate(argv) if argv[i - 1] == "--set"])
        teachers_dir = option(argv, "--teachers-dir")
        seeds = int(option(argv, "--seeds", str(recipe.seeds)))
        plan = plan_sweep(
            recipe,
            work / (out or f"sweeps/{Path(argv[2]).stem}"),
            seeds,
            teachers_dir and work / teachers_dir,
        )
        shard = option(argv, "--shard")
        students = select_shard(plan.students, *map(int, shard.split("/"))) if shard else plan.students
        runs = plan.teachers_for(students) if "--teachers-only" in argv else students
        assert runs and all((Path(run.config.out) / "summary.json").is_file() for run in runs)
    elif command == "report":
        assert (work / (out or argv[2]) / "report.md").is_file()
    elif command == "chain":
        stages = sorted((work / out).glob("stage*/summary.json"))
        assert len(stages) == argv.count("--stage"), stages
    elif command == "analyze":
        assert (work / (out or f"{argv[2]}/analysis") / "analysis.json").is_file()
    elif command == "reproduce":
        name = (
            Path(option(argv, "--setting")).stem if "--setting" in argv else option(argv, "--preset", "tiny")
        )
        claims = json.loads((work / (out or f"reproduce-{name}") / "claims.json").read_text())
        assert [claim["claim"] for claim in claims["claims"]] == [f"C{i}" for i in range(1, 10)]
        assert (work / (out or f"reproduce-{name}") / "REPORT.md").is_file()
        if "--publish" in argv:
            assert json.loads((work / option(argv, "--publish") / "claims.json").read_text()) == claims
        if "--readme" in argv:
            text = README.read_text()  # the claims table rewritten from claims.json, the rest as it was
            table = f"{README_START}\n{claims_table(claims)}\n{README_END}"
            expected = text.partition(README_START)[0] + table + text.partition(README_END)[2]
            assert (work / option(argv, "--readme")).read_text() == expected
    else:
        raise AssertionError(f"no output check for `kdlab {command}`: add one to check_outputs")


# --- running a line ---------------------------------------------------------------------------------


def shell_words(text: str, env: dict[str, str]) -> list[str]:
    """The words of the command line ``text`` after bash's quoting, ``~`` and ``$NAME`` expansion."""
    done = subprocess.run(
        ["bash", "-c", f"set -- {text}\nprintf '%s\\0' \"$@\""],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split("\0")[:-1]


def run_words(
    words: list[str], work: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Run ``[NAME=value ...] kdlab|python ARGS`` in ``work``: ``(exit code, stdout, stderr)``.

    ``kdlab`` is its entry point, ``kdlab.cli.main(ARGS)``, in this process (starting a process costs
    3-8 s of CPU in imports, more than most tiny runs take), with the environment and working folder
    set and the registries as a new process has them (what the command's plugins register is undone
    when it ends: ``kdlab eval`` of a plugin's run must import it itself); ``python`` is this
    interpreter."""
    count = next(i for i, word in enumerate(words) if not re.match(r"^[A-Za-z_]\w*=", word))
    env = {**env, **dict(word.split("=", 1) for word in words[:count])}
    program, args = words[count], words[count + 1 :]
    if program == "python":
        done = subprocess.run(
            [sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        return done.returncode, done.stdout, done.stderr
    assert program == "kdlab", words
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch, registries_restored():
        patch.chdir(work)
        for name, value in env.items():
            patch.setenv(name, value)
        try:
            main(args)
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code if isinstance(exit_info.code, int) else int(exit_info.code is not None)
    out, err = capsys.readouterr()
    return code, out, err


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children so far."""
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


# --- the tests --------------------------------------------------------------------------------------


def test_every_readme_line_is_run_or_listed() -> None:
    lines = readme_lines()
    listed = {**NOT_RUN, **TOO_SLOW}
    unknown = [line for line in lines if as_run(line) is None and line not in listed]
    assert not unknown, f"README lines this test neither runs nor lists in NOT_RUN (with a reason): {unknown}"
    stale = [line for line in listed if line not in lines]
    assert not stale, f"NOT_RUN or TOO_SLOW lists lines the README no longer has: {stale}"
    assert sum(as_run(line) is not None for line in lines) >= 30  # the parser found the README's commands


def test_the_parser_reads_shell_as_bash_does() -> None:
    text = "```bash\nkdlab a \\\n    --b 'x # y'   # comment\n# only a comment\nsbatch --wrap 'kdlab c $X'\n```\n"
    assert blocks("bash", text) == [
        "kdlab a \\\n    --b 'x # y'   # comment\n# only a comment\nsbatch --wrap 'kdlab c $X'\n"
    ]
    assert strip_comment("kdlab a --b 'x # y'   # comment") == "kdlab a --b 'x # y'"
    assert strip_comment("kdlab a --b=x#y") == "kdlab a --b=x#y"
    assert program_words("OMP_NUM_THREADS=1 kdlab reproduce --out 'a b'") == [
        "kdlab",
        "reproduce",
        "--out",
        "a b",
    ]
    job = as_run("sbatch --array=0-49 --wrap 'kdlab sweep grid-paper --shard $SLURM_ARRAY_TASK_ID/50'")
    assert job is not None and job.shell == "kdlab sweep grid-paper --shard $SLURM_ARRAY_TASK_ID/50"
    assert job.env == {"SLURM_ARRAY_TASK_ID": "0"} and as_run("make demo") is None
    env = {"HOME": "/home/u", "DATA": "/d", "SLURM_ARRAY_TASK_ID": "0", "PATH": os.environ["PATH"]}
    words = shell_words("A=1 kdlab x ~/data --set k=$DATA 'a b' --shard $SLURM_ARRAY_TASK_ID/50", env)
    assert words == ["A=1", "kdlab", "x", "/home/u/data", "--set", "k=/d", "a b", "--shard", "0/50"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh clone's files in ``work/``, a ``HOME`` with tiny CIFAR-100 at ``~/data``, and the
    environment the commands run with."""
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"{FASHION_MNIST} holds no Fashion-MNIST: the README's small recipes read it there; install it "
            "(Debian: apt-get install dataset-fashion-mnist, as `make data` does)"
        )
    root = tmp_path_factory.mktemp("readme")
    home, work = root / "home", root / "work"
    write_cifar100(home / "data", n_train=CIFAR_TRAIN, n_test=CIFAR_TEST)
    shutil.copytree(
        ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    shutil.copytree(ROOT / "docs" / "results" / "small", work / "docs" / "results" / "small")
    shutil.copy(README, work / "README.md")
    for block in blocks("python"):  # a block that starts with `# NAME.py` is that file
        name = re.match(r"# ([\w.-]+\.py)\n", block)
        if name:
            (work / name[1]).write_text(block)
    env = {
        **os.environ,
        "HOME": str(home),
        "PYTHONPATH": str(ROOT / "src"),  # for any process a command starts
        "OMP_NUM_THREADS": "1",
        "DATA": str(home / "data"),
    }
    return work, env


@pytest.mark.slow  # about 3 minutes of CPU: the README's 31 commands at tiny size
def test_every_readme_command_runs_as_written_in_order(
    workspace: tuple[Path, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    one_torch_thread: None,
) -> None:
    work, env = workspace
    for command in filter(None, map(as_run, readme_lines())):
        words = shell_words(command.shell, {**env, **command.env})
        flags = tiny_flags(program_words(shlex.join(words)), work)
        started, cpu = time.perf_counter(), cpu_seconds()
        code, out, err = run_words([*words, *flags], work, {**env, **command.env}, capsys)
        if request.config.getoption("capture") == "no":  # -s: each command's cost, for the file's budget
            with capsys.disabled():
                print(
                    f"{time.perf_counter() - started:6.1f} s wall {cpu_seconds() - cpu:6.1f} s CPU  {command.line}"
                )
        if command.line in KNOWN_BUGS:
            assert code == 2 and KNOWN_BUGS[command.line] in err, (
                f"`{command.line}` no longer fails as KNOWN_BUGS says (fixed?): remove it from KNOWN_BUGS\n{err}"
            )
            continue
        assert code == 0, f"`{command.line}` (+ {shlex.join(flags)}) exited {code}:\n{err[-3000:]}"
        check_outputs(program_words(shlex.join([*words, *flags])), work, out)


def help_output(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """What ``kdlab ARGS --help`` prints."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_the_help_names_every_command_and_dataset_of_the_readme(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one help row per line
    text = README.read_text()
    commands = {run.argv[1] for run in map(as_run, readme_lines()) if run and run.argv[0] == "kdlab"}
    commands |= set(re.findall(r"`kdlab ([a-z]+)", text))
    panel = help_output(capsys).split("Commands", 1)[1]
    listed = set(re.findall(r"^(?:│ |  )([a-z]+) {2,}\S", panel, flags=re.M))  # rich's panel or click's list
    assert commands == listed, f"README only: {commands - listed}; help only: {listed - commands}"
    # The datasets: every `--dataset NAME` of a command or code span, every name of the `--dataset` list.
    spans = [run.line for run in map(as_run, readme_lines()) if run] + re.findall(r"`([^`\n]+)`", text)
    datasets = {name for span in spans for name in re.findall(r"--dataset ([a-z][a-z0-9-]*)", span)}
    bullet = re.search(r"^- Data \(`--dataset`\):(.*?)^- ", text, flags=re.S | re.M)
    assert bullet, "the README's `- Data (`--dataset`):` list is gone: update this test"
    datasets |= set(re.findall(r"`([a-z][a-z0-9-]*)`", bullet[1]))
    assert datasets == set(DATASETS.names()), "the README's dataset list and kdlab's registry differ"
    for command in ("train", "distill", "eval", "chain"):
        row = " ".join(re.sub(r"[│╭╮╰╯─]", " ", help_output(capsys, command)).split())
        named = re.split(r"--dataset \S+ one of ", row)[1].split(" --", 1)[0].split(" (default", 1)[0]
        assert set(named.split(", ")) == datasets, named
