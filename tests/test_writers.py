"""Every writer follows the run folder's rules (docs/errors.md, "Outputs: reports, copies, READMEs,
caches"): reports, analyses, reproduce's outputs and published copies, the sweep manifest, the demo's
results and the teacher-logit cache's sidecar are written as regular files only, never through a
link, atomically, only over files kdlab wrote (``kdlab-outputs.json``) and still holds as it wrote
them, and nothing before every input is checked; ``--readme`` is rewritten in place, its markers
checked before any training.

Each case runs the real command line in this process (the demo, whose scale the command does not
take, through ``run_demo``) on two tiny digits runs of one sweep made once for the module, and
asserts the exit code, the one-line message and that every file outside ``--out`` is byte for byte
as it was, with no folder left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kdlab.cli import main
from kdlab.errors import UserError
from kdlab.experiments.demo import DemoScale, run_demo
from kdlab.experiments.publish import README_END, README_START
from kdlab.runs import OUTPUTS_MANIFEST, OutputFolder, atomic_write_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)
QUIET = ["--set", "progress=false", "--set", "tensorboard=false"]
RECIPE = """description: two tiny digits students of one teacher
model: mlp-16
data: {name: digits}
optim: {epochs: 1, batch_size: 64}
kd: {teacher: t, loss: kl, alpha: 1.0}
teachers: {t: {model: convnet-4}}
grid: {kd.tau: [1, inf]}
progress: false
tensorboard: false
"""
TINY_DEMO = DemoScale(
    "convnet-4", "mlp-16", subset=None, teacher_epochs=1, student_epochs=1, dataset="digits"
)
README = f"# project\n\nintro ünïcode\n{README_START}\n| old | table |\n{README_END}\ntail without newline"


@dataclass
class Env:
    root: Path
    recipe: Path
    sweep: Path  # a finished sweep: teachers/t and two students
    student: Path
    c3: Path  # `kdlab reproduce --claims C3` output, with a figure added
    demo: Path  # a finished tiny demo


def kdlab(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """``kdlab ARGS`` in this process: (exit code, the error line); an error is one line, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr
    code = exit_info.value.code or 0
    if code:
        assert len(stderr.strip().splitlines()) == 1, stderr
    return code, stderr.strip().removeprefix("kdlab: error: ")


def tree(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``: file bytes, ``link -> target``, or ``dir`` (links not followed)."""
    entries: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            entries[key] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            entries[key] = "dir"
        elif path.is_file():
            entries[key] = path.read_bytes()
        else:
            entries[key] = "special"
    return entries


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Env:
    root = tmp_path_factory.mktemp("writers")
    recipe = root / "tiny.yaml"
    recipe.write_text(RECIPE)
    sweep = root / "sweep"
    _run(["sweep", recipe, "--out", sweep])
    student = next(path.parent for path in sorted(sweep.glob("*/summary.json")) if path.parent.name != "t")
    c3 = root / "c3"
    _run(["reproduce", "--claims", "C3", "--out", c3])
    (c3 / "figures").mkdir()
    (c3 / "figures" / "extra.png").write_bytes(b"\x89PNG a figure")
    demo = root / "demo"
    run_demo(demo, scale=TINY_DEMO, device="cpu", log=lambda line: None)
    return Env(root, recipe, sweep, student, c3, demo)


def _run(args: list[object]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    assert exit_info.value.code in (0, None)


@dataclass
class Writer:
    """One writer: the command that writes ``out`` (CLI args, or a callable for the demo), the file
    name the cases target, and the flag naming ``out`` in messages."""

    name: str
    command: Callable[[Env, Path], list[object]] | None
    target: str
    flag: str = "--out"
    kind: str = "outputs"
    finished: Callable[[Env, Path], Path] = lambda env, tmp: tmp / "out"  # an --out the run succeeds in

    def run(self, capsys: pytest.CaptureFixture[str], env: Env, out: Path) -> tuple[int, str]:
        if self.command is not None:
            return kdlab(capsys, *self.command(env, out))
        try:  # the demo: kdlab demo --out would train on Fashion-MNIST at its own scale
            run_demo(out, scale=TINY_DEMO, device="cpu", log=lambda line: None)
        except UserError as error:
            return 2, str(error)
        return 0, ""


WRITERS = [
    Writer("report", lambda env, out: ["report", env.sweep, "--out", out], "report.md", kind="report"),
    Writer(
        "report-plot", lambda env, out: ["report", env.sweep, "--out", out], "tau_curves.png", kind="report"
    ),
    Writer(
        "analyze", lambda env, out: ["analyze", env.student, "--out", out], "analysis.json", kind="analysis"
    ),
    Writer("analyze-plot", lambda env, out: ["analyze", env.student, "--out", out], "projection.png"),
    Writer("reproduce", lambda env, out: ["reproduce", "--claims", "C3", "--out", out], "REPORT.md"),
    Writer(
        "publish",
        lambda env, out: ["reproduce", "--claims", "C3", "--out", env.c3, "--publish", out],
        "REPORT.md",
        flag="--publish",
    ),
    Writer(
        "sweep",
        lambda env, out: ["sweep", env.recipe, "--out", out],
        "sweep-tiny.yaml",
        kind="sweep",
        finished=lambda env, tmp: env.sweep,
    ),
    Writer("demo", None, "results.md", kind="demo", finished=lambda env, tmp: env.demo),
]
IDS = [writer.name for writer in WRITERS]


def _refused(writer: Writer, capsys, env: Env, out: Path, root: Path, expected: str) -> None:
    """The writer fails with ``expected`` in its one line, exit 2, and ``root`` is as it was."""
    before = tree(root)
    code, message = writer.run(capsys, env, out)
    assert code == 2, message
    assert expected in message, message
    assert tree(root) == before


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_link_at_an_output_name_is_refused_and_the_file_it_leads_to_kept(writer, env, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere.md"
    elsewhere.write_bytes(b"the user's file, elsewhere\n")
    out = tmp_path / "out"
    (out / writer.target).parent.mkdir(parents=True)
    (out / writer.target).symlink_to(elsewhere)
    expected = (
        f"{out / writer.target} is a symbolic link; kdlab writes only regular files, never through a link"
    )
    _refused(writer, capsys, env, out, tmp_path, expected)
    assert elsewhere.read_bytes() == b"the user's file, elsewhere\n"


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_file_of_yours_at_an_output_name_is_refused(writer, env, tmp_path, capsys):
    out = tmp_path / "out"
    (out / writer.target).parent.mkdir(parents=True)
    (out / writer.target).write_bytes(b"my notes\n")
    expected = (
        f"{out / writer.target} exists and kdlab did not write it (it is not listed in kdlab-outputs.json), and "
        f"kdlab overwrites only its own outputs: move it away, or choose another {writer.flag}"
    )
    _refused(writer, capsys, env, out, tmp_path, expected)


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_an_output_you_edited_is_refused(writer, env, tmp_path, capsys):
    out = tmp_path / "out"
    OutputFolder(out, writer.kind).write_text(writer.target, "as kdlab wrote it\n")
    (out / writer.target).write_text("as kdlab wrote it\nand my edit\n")
    expected = (
        f"{out / writer.target} has changed since kdlab wrote it (its SHA-256 is not the one in kdlab-outputs.json), "
        "and kdlab does not overwrite your edits"
    )
    _refused(writer, capsys, env, out, tmp_path, expected)


@pytest.mark.parametrize(
    "writer", [w for w in WRITERS if w.name != "analyze-plot"], ids=[i for i in IDS if i != "analyze-plot"]
)
def test_a_previous_output_of_kdlab_is_overwritten(writer, env, tmp_path, capsys):
    out = writer.finished(env, tmp_path)
    OutputFolder(out, writer.kind).write_text(writer.target, "an older output of kdlab\n")
    code, message = writer.run(capsys, env, out)
    assert code == 0, message
    data = (out / writer.target).read_bytes()
    assert data != b"an older output of kdlab\n" and len(data) > 10
    manifest = json.loads((out / OUTPUTS_MANIFEST).read_text())
    assert manifest["format"] == "kdlab-outputs-v1"
    assert manifest["files"][writer.target]["sha256"] == hashlib.sha256(data).hexdigest()
    if writer.name == "publish":  # the copy is byte for byte the source
        assert data == (env.c3 / "REPORT.md").read_bytes()
        assert (out / "claims.json").read_bytes() == (env.c3 / "claims.json").read_bytes()


def test_a_fifo_at_an_output_name_is_refused_without_opening_it(env, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "report.md")
    expected = f"{out / 'report.md'} is a FIFO, not a regular file; kdlab writes only regular files"
    with _deadline(60):
        _refused(WRITERS[0], capsys, env, out, tmp_path, expected)


def test_a_link_in_place_of_an_output_folder_is_refused(env, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "extra.png").write_bytes(b"the user's figure")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "figures").symlink_to(elsewhere)
    expected = f"{dest / 'figures'} is a symbolic link; kdlab writes only real files and folders, never through a link"
    _refused(WRITERS[5], capsys, env, dest, tmp_path, expected)


@pytest.mark.parametrize("writer", ["analyze", "reproduce"])
def test_a_link_in_place_of_a_folder_kdlab_makes_is_refused(writer, env, tmp_path, capsys):
    # analyze's default RUN/analysis, reproduce's OUT/main (a sweep folder): kdlab names them, so a link
    # there would send its writes elsewhere.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if writer == "analyze":
        run = tmp_path / "run"
        shutil.copytree(env.student, run)
        (run / "analysis").symlink_to(elsewhere)
        link, args = run / "analysis", ["analyze", run]
    else:
        (tmp_path / "out").mkdir()
        link, args = tmp_path / "out" / "main", ["reproduce", "--claims", "C1", "--out", tmp_path / "out"]
        link.symlink_to(elsewhere)
    before = tree(tmp_path)
    code, message = kdlab(capsys, *args)
    assert code == 2
    assert message.startswith(
        f"{link} is a symbolic link; kdlab writes only real files and folders, never through"
    )
    assert tree(tmp_path) == before


def test_a_manifest_that_is_not_kdlabs_is_refused(env, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / OUTPUTS_MANIFEST).write_text('{"files": {"report.md": "mine"}}')
    (out / "report.md").write_text("mine\n")
    expected = f"{out / OUTPUTS_MANIFEST} is not a list of outputs kdlab wrote (damaged, or not kdlab's)"
    _refused(WRITERS[0], capsys, env, out, tmp_path, expected)


def test_a_second_writer_of_an_output_folder_is_refused(env, tmp_path, capsys):
    # Another process holds the folder's lock as kdlab does (flock, its pid in the file): plain Python,
    # so that the test need not import torch twice.
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666); fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, f'{os.getpid()}\\n'.encode()); print('held', flush=True); time.sleep(60)",
         str(out / ".kdlab-outputs.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        code, message = kdlab(capsys, "report", env.sweep, "--out", out)
        assert code == 2
        assert message == (
            f"--out {out} is being written by another kdlab process (pid {holder.pid}): wait for it to finish, stop "
            "it, or choose another --out"
        )
        assert sorted(path.name for path in out.iterdir()) == [".kdlab-outputs.lock"]
    finally:
        holder.kill()
        holder.wait()


# --- --out: a file, read-only, under a file, a link that leads nowhere ---------------------------


def _bad_out(kind: str, tmp_path: Path) -> tuple[Path, str]:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    if kind == "file":
        return notes, f"{notes} is a file: name a folder (it is created if missing)"
    if kind == "read-only":  # not writable for any user, root included
        return Path("/proc/self"), "/proc/self is not writable: choose a folder you can write"
    if kind == "under a file":
        return notes / "out", f"{notes / 'out'} cannot be created: {notes} is a file, not a folder"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    return loop, f"{loop} is a symbolic link that leads nowhere (dangling, or a loop): remove it"


OUT_WRITERS = [writer for writer in WRITERS if not writer.name.endswith("-plot")]
CLI_DEMO = Writer("demo-cli", lambda env, out: ["demo", "--quick", "--out", out], "results.md")


@pytest.mark.parametrize("kind", ["file", "read-only", "under a file", "loop"])
@pytest.mark.parametrize("writer", [*OUT_WRITERS, CLI_DEMO], ids=[w.name for w in [*OUT_WRITERS, CLI_DEMO]])
def test_a_bad_out_is_one_line_and_leaves_nothing(writer, kind, env, tmp_path, capsys):
    out, expected = _bad_out(kind, tmp_path)
    _refused(writer, capsys, env, out, tmp_path, f"{writer.flag} {expected}")


# --- --readme: checked before any training, rewritten in place -----------------------------------


def _readme_refused(capsys, tmp_path: Path, readme: Path, expected: str) -> None:
    """``reproduce --claims C1`` (which trains) refused before any training: no --out, no --publish."""
    before = tree(tmp_path)
    out, dest = tmp_path / "out", tmp_path / "dest"
    with _deadline(60):
        code, message = kdlab(
            capsys, "reproduce", "--claims", "C1", "--out", out, "--publish", dest, "--readme", readme
        )
    assert code == 2 and message == expected
    assert tree(tmp_path) == before  # no run folder, no sweep folder, nothing published


def test_readme_link_is_refused_before_training(tmp_path, capsys):
    real = tmp_path / "README.md"
    real.write_text(README)
    link = tmp_path / "link.md"
    link.symlink_to(real)
    expected = (
        f"--readme {link} is a symbolic link; kdlab rewrites only a regular file in place, never through a link: "
        "pass the file itself"
    )
    _readme_refused(capsys, tmp_path, link, expected)


def test_readme_fifo_is_refused_before_training_without_waiting(tmp_path, capsys):
    fifo = tmp_path / "README.md"
    os.mkfifo(fifo)
    expected = (
        f"--readme {fifo} is a FIFO, not a regular file; kdlab rewrites only a regular file in place, never through "
        "a link: pass the file itself"
    )
    _readme_refused(capsys, tmp_path, fifo, expected)


def test_readme_with_another_hard_link_is_refused_before_training(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    os.link(readme, tmp_path / "same-file.md")
    expected = (
        f"--readme {readme} has 2 hard links, and rewriting it would leave the others as they are: pass a file "
        "with one name"
    )
    _readme_refused(capsys, tmp_path, readme, expected)


NEED = f"needs one {README_START} and one {README_END} line around its claims table"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("# no markers\n", " (it holds 0 and 0): put each marker there once"),
        (f"{README_START}\n| t |\n", " (it holds 1 and 0): put each marker there once"),
        (
            f"{README_START}\n{README_END}\n{README_START}\n{README_END}\n",
            " (it holds 2 and 2): put each marker there once",
        ),
        (f"{README_END}\n| t |\n{README_START}\n", ", in this order (its end marker comes first): swap them"),
    ],
    ids=["missing", "end missing", "doubled", "reversed"],
)
def test_readme_markers_are_checked_before_training(tmp_path, capsys, text, problem):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    _readme_refused(capsys, tmp_path, readme, f"--readme {readme} {NEED}{problem}")


def test_readme_rewrite_keeps_its_mode_and_changes_only_the_table(env, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_bytes(README.replace("\n", "\r\n").encode())  # CRLF line ends: kept as they are
    readme.chmod(0o640)
    code, message = kdlab(
        capsys,
        "reproduce",
        "--claims",
        "C3",
        "--out",
        env.c3,
        "--publish",
        tmp_path / "dest",
        "--readme",
        readme,
    )
    assert code == 0, message
    text = readme.read_bytes().decode()
    before, rest = text.split(README_START)
    table, after = rest.split(README_END)
    assert before == "# project\r\n\r\nintro ünïcode\r\n" and after == "\r\ntail without newline"
    assert (
        "| C3 | holds | - | exact checks on the loss functions (float64) |" in table
        and "| old | table |" not in table
    )
    assert readme.stat().st_mode & 0o777 == 0o640
    assert not readme.is_symlink() and readme.stat().st_nlink == 1


def test_publish_into_a_link_readme_target_is_refused_and_the_target_kept(env, tmp_path, capsys):
    # The reported case: DEST/REPORT.md a link to a file elsewhere; refused before anything is copied.
    elsewhere = tmp_path / "elsewhere.md"
    elsewhere.write_text("not a report\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "REPORT.md").symlink_to(elsewhere)
    expected = (
        f"{dest / 'REPORT.md'} is a symbolic link; kdlab writes only regular files, never through a link"
    )
    before = tree(tmp_path)
    code, message = kdlab(capsys, "reproduce", "--claims", "C1", "--out", tmp_path / "out", "--publish", dest)
    assert code == 2 and expected in message
    assert tree(tmp_path) == before  # refused before any training: no --out either


def test_publish_copies_only_kdlabs_figures_and_checks_their_names_before_judging(env, tmp_path, capsys):
    # env.c3/figures/extra.png is a file of the user's in reproduce's OUT: never copied. A link at a
    # figure name kdlab may publish is refused before the claims are judged again (OUT as it was).
    dest = tmp_path / "dest"
    (dest / "figures").mkdir(parents=True)
    (dest / "figures" / "extra.png").symlink_to(tmp_path / "elsewhere.png")
    code, message = kdlab(capsys, "reproduce", "--claims", "C3", "--out", env.c3, "--publish", dest)
    assert code == 0, message
    assert (dest / "figures" / "extra.png").is_symlink() and not (tmp_path / "elsewhere.png").exists()
    assert sorted(json.loads((dest / OUTPUTS_MANIFEST).read_text())["files"]) == [
        "REPORT.md",
        "claims.json",
        "runs.csv",
    ]
    (dest / "figures" / "heatmap.png").symlink_to(tmp_path / "elsewhere.png")
    before = tree(env.c3)
    code, message = kdlab(capsys, "reproduce", "--claims", "C3", "--out", env.c3, "--publish", dest)
    assert code == 2 and f"{dest / 'figures' / 'heatmap.png'} is a symbolic link" in message
    assert tree(env.c3) == before and not (tmp_path / "elsewhere.png").exists()


def test_reproduce_checks_every_report_it_will_write_before_training(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "main").mkdir(parents=True)
    (out / "main" / "report.md").write_text("my report of these runs\n")
    before = tree(tmp_path)
    code, message = kdlab(capsys, "reproduce", "--claims", "C1", "--out", out)
    assert code == 2
    assert message.startswith(f"{out / 'main' / 'report.md'} exists and kdlab did not write it")
    assert tree(tmp_path) == before  # no teacher trained, no sweep manifest written


# --- the teacher-logit cache's sidecar ---------------------------------------------------------------


def test_cache_sidecar_follows_the_output_rules(env, tmp_path, capsys):
    cache = tmp_path / "cache"
    teacher = env.sweep / "teachers" / "t"
    args = ["distill", "--teacher", teacher, "--dataset", "digits", "--model", "mlp-16", "--epochs", "1", *QUIET,
            "--set", "kd.cache=true", "--set", f"kd.cache_dir={cache}"]  # fmt: skip
    code, message = kdlab(capsys, *args, "--out", tmp_path / "first")
    assert code == 0, message
    (table,) = cache.glob("*.npy")
    sidecar = table.with_suffix(".json")
    manifest = json.loads((cache / OUTPUTS_MANIFEST).read_text())["files"]
    assert manifest == {
        sidecar.name: {"sha256": hashlib.sha256(sidecar.read_bytes()).hexdigest(), "kind": "cache"}
    }

    # A previous sidecar of kdlab's (its table deleted, as "delete it to rebuild" asks): rebuilt, overwritten.
    OutputFolder(cache, "cache").write_text(sidecar.name, "{}\n")
    table.unlink()
    code, message = kdlab(capsys, *args, "--out", tmp_path / "second")
    assert code == 0, message
    assert json.loads(sidecar.read_text())["format"] == "kdlab-teacher-logits-v1" and table.is_file()
    # A link, a file of the user's, an edited sidecar: refused before the build (no table, no run folder).
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("the user's\n")

    def yours() -> None:  # in a cache folder of a kdlab before the manifest
        (cache / OUTPUTS_MANIFEST).unlink()
        sidecar.write_text("mine\n")

    def edited() -> None:
        OutputFolder(cache, "cache").write_text(sidecar.name, "{}\n")
        sidecar.write_text("{} and an edit\n")

    table.unlink()
    for case, make, expected in [
        (
            "link",
            lambda: sidecar.symlink_to(elsewhere),
            "is a symbolic link; kdlab writes only regular files",
        ),
        ("yours", yours, "exists and kdlab did not write it"),
        ("edited", edited, "has changed since kdlab wrote it"),
    ]:
        sidecar.unlink()
        make()
        before = tree(tmp_path)
        code, message = kdlab(capsys, *args, "--out", tmp_path / case)
        assert code == 2 and f"{sidecar} {expected}" in message, (case, message)
        assert message.endswith("move it away, or choose another kd.cache_dir")
        assert tree(tmp_path) == before, case
        assert elsewhere.read_text() == "the user's\n"
    # A link to nothing at the table's name: exists() is False there, and the build would replace the link.
    sidecar.unlink()
    table.symlink_to(tmp_path / "nowhere.npy")
    before = tree(tmp_path)
    code, message = kdlab(capsys, *args, "--out", tmp_path / "dangling")
    assert code == 2 and message == (
        f"{table} is a symbolic link to nothing; kdlab writes the teacher-logit cache only as a regular file: "
        "remove the link, or choose another kd.cache_dir"
    )
    assert tree(tmp_path) == before and table.is_symlink()


# --- the write helpers themselves --------------------------------------------------------------------


def test_atomic_writes_refuse_links_and_special_files(tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("the user's\n")
    link, fifo, folder = tmp_path / "link.txt", tmp_path / "fifo", tmp_path / "folder"
    link.symlink_to(elsewhere)
    os.mkfifo(fifo)
    folder.mkdir()
    for path, kind in (
        (link, "a symbolic link"),
        (fifo, "a FIFO, not a regular file"),
        (folder, "a folder, not a regular file"),
    ):
        with (
            _deadline(30),
            pytest.raises(UserError, match=f"^{path} is {kind}; kdlab writes only regular files"),
        ):
            atomic_write_text(path, "x")
    assert elsewhere.read_text() == "the user's\n" and link.is_symlink() and folder.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.txt", "fifo", "folder", "link.txt"]


def test_output_folder_adopts_only_identical_bytes_and_checks_every_file_first(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.txt").write_text("same\n")  # as a kdlab before the manifest wrote it
    (folder / "b.txt").write_text("mine\n")
    out = OutputFolder(folder)
    out.write_text("a.txt", "same\n")  # identical bytes: replacing them loses nothing; now listed
    with pytest.raises(UserError, match="b.txt exists and kdlab did not write it"):
        out.write_files({"c.txt": b"c\n", "b.txt": b"other\n"})
    assert not (folder / "c.txt").exists() and (folder / "b.txt").read_text() == "mine\n"
    out.write_text("a.txt", "new\n")  # listed and unchanged since: overwritten
    out.write_text("c.txt", "c\n")
    (folder / "c.txt").unlink()  # removed by the user: dropped from the list at the next write
    out.write_text("d/e.txt", "e\n")
    files = json.loads((folder / OUTPUTS_MANIFEST).read_text())["files"]
    assert sorted(files) == ["a.txt", "d/e.txt"]
    assert files["a.txt"] == {"sha256": hashlib.sha256(b"new\n").hexdigest(), "kind": "outputs"}
    assert sorted(path.name for path in folder.iterdir()) == ["a.txt", "b.txt", "d", OUTPUTS_MANIFEST]
    # A figure: rendered in memory, written as any other file.
    from kdlab.analysis.plots import _pyplot, plot_bars

    figure = _pyplot().figure()
    png = out.savefig("figure.png", figure).read_bytes()
    _pyplot().close(figure)
    assert png.startswith(b"\x89PNG") and len(png) > 100
    # A plot function given a path writes through the same rules (its folder's manifest).
    bars = plot_bars([{"labels": ["a", "b"], "values": [1.0, 2.0], "ylabel": "y"}], folder / "bars.png")
    assert (folder / "bars.png").read_bytes() == bars
    files = json.loads((folder / OUTPUTS_MANIFEST).read_text())["files"]
    assert files["figure.png"]["sha256"] == hashlib.sha256(png).hexdigest()
    assert files["bars.png"] == {"sha256": hashlib.sha256(bars).hexdigest(), "kind": "plot"}
    (folder / "bars.png").write_bytes(b"my edit")
    with pytest.raises(UserError, match="bars.png has changed since kdlab wrote it"):
        plot_bars([{"labels": ["a"], "values": [1.0], "ylabel": "y"}], folder / "bars.png")


class _deadline:
    """Fail (instead of hanging) when the block runs longer than ``seconds``: a FIFO opened by mistake."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        def expire(signum, frame):
            raise TimeoutError(f"still running after {self.seconds} s: a FIFO was opened?")

        self.previous = signal.signal(signal.SIGALRM, expire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc) -> None:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)
