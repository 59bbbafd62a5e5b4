"""A run is tied to the exact teachers and data it read (kdlab.identity, docs/errors.md "Identity of a
run's inputs"): each case runs ``kdlab.cli.main`` in-process and asserts exit code 2, one line on
stderr naming the input, both hashes and the fix, and the run folder byte for byte as it was; the
legitimate cases (a moved run folder, a moved teacher, a teacher restored to the same bytes, the same
data in another folder) run to the end.

Tiny runs: convnet-4 on digits (or on a tensors folder of 8x8 images) for 1 epoch, one torch thread.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_engine import kdlab_error

import kdlab.data.select
from kdlab.cli import main
from kdlab.errors import UserError
from kdlab.identity import indices_sha256, short
from kdlab.runs import file_sha256

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)
QUIET = ["--set", "progress=false", "--set", "tensorboard=false"]
DIGITS = ["--dataset", "digits", "--model", "convnet-4", "--batch-size", "64", *QUIET, "--epochs", "1"]
STUDENT = ["--model", "convnet-4", "--batch-size", "64", *QUIET]


def run(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    """``kdlab ARGS``; it must succeed. Returns what it printed."""
    capsys.readouterr()
    try:
        main([str(arg) for arg in args])
    except SystemExit as exit_info:
        assert exit_info.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def last_pt(run_folder: Path) -> Path:
    return run_folder / "checkpoints" / "last.pt"


def summary(run_folder: Path) -> dict:
    return json.loads((run_folder / "summary.json").read_text())


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path / "kdlab-cache"))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> dict[str, Path]:
    """Two digits teachers of one setting but another seed (their checkpoints differ), and one held out
    the validation images of ``--val-split 100``: trained once, copied by the tests that change them."""
    root = tmp_path_factory.mktemp("teachers")
    found = {}
    for name, extra in (("a", ["--seed", "0"]), ("b", ["--seed", "1"]), ("val", ["--val-split", "100"])):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", *DIGITS, *extra, "--out", str(root / name)])
        assert exit_info.value.code in (0, None)
        found[name] = root / name
    return found


@pytest.fixture
def pair(tmp_path: Path, teachers: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """``(teacher, student)``: a copy of teacher a in ``tmp_path/teacher`` and a 1-epoch student of it."""
    teacher = tmp_path / "teacher"
    shutil.copytree(teachers["a"], teacher)
    student = tmp_path / "student"
    run(capsys, "distill", "--teacher", teacher, *STUDENT, "--epochs", "1", "--out", student)
    return teacher, student


def retrain_in_place(teacher: Path, other: Path) -> None:
    """The teacher folder now holds another training (teacher b's checkpoint under its name)."""
    shutil.copyfile(last_pt(other), last_pt(teacher))


# --- teachers ------------------------------------------------------------------------------------


def test_the_record_names_every_input(pair, teachers):
    teacher, student = pair
    record = json.loads((student / "inputs.json").read_text())
    assert record["format"] == "kdlab-inputs-v1" and len(record["run_id"]) == 32
    assert record["teachers"] == [
        {
            "spec": str(teacher),
            "file": str(last_pt(teacher).resolve()),
            "sha256": file_sha256(last_pt(teacher)),
        }
    ]
    data = record["data"]
    assert data["name"] == "digits"
    assert (data["train"]["size"], data["val"], data["test"]["size"]) == (1437, None, 360)  # sklearn's split
    assert summary(student)["inputs"] == record  # the same record in the summary
    assert record["selection"] is None and record["cache"] is None and record["imports"] == {}
    # The teacher trained on the same digits, without --subset: its files (source) and splits are these.
    taught = json.loads((teacher / "inputs.json").read_text())["data"]
    assert taught == data


def test_resume_refuses_a_teacher_retrained_in_place(pair, teachers, capsys):
    teacher, student = pair
    then, before = file_sha256(last_pt(teacher)), snapshot(student)
    retrain_in_place(teacher, teachers["b"])
    now = file_sha256(last_pt(teacher))
    message = kdlab_error(
        capsys, "distill", "--teacher", teacher, *STUDENT, "--epochs", "2", "--out", student, "--resume"
    )
    assert message == (
        f"the teacher at {teacher} was retrained or changed after {student} started (sha256 {then[:12]}… then, "
        f"{now[:12]}… now): restore that teacher, or start this run again (--overwrite; in a sweep or chain, "
        "delete its folder)"
    )
    assert snapshot(student) == before


def test_a_finished_run_is_not_reused_against_a_retrained_teacher(pair, teachers, capsys):
    """``--resume`` of a finished run returns its summary (the path sweeps and chains reuse): compared too."""
    teacher, student = pair
    before = snapshot(student)
    retrain_in_place(teacher, teachers["b"])
    message = kdlab_error(
        capsys, "distill", "--teacher", teacher, *STUDENT, "--epochs", "1", "--out", student, "--resume"
    )
    assert message.startswith(f"the teacher at {teacher} was retrained or changed after {student} started")
    assert snapshot(student) == before


def test_resume_refuses_another_teacher_with_the_same_folder_name(pair, teachers, tmp_path, capsys):
    teacher, student = pair
    impostor = tmp_path / "elsewhere" / "teacher"
    shutil.copytree(teachers["b"], impostor)
    before = snapshot(student)
    message = kdlab_error(
        capsys, "distill", "--teacher", impostor, *STUDENT, "--epochs", "2", "--out", student, "--resume"
    )
    assert message == (
        f"the teacher {impostor} is not the one {student} started with ({last_pt(teacher).resolve()}, sha256 "
        f"{short(file_sha256(last_pt(teacher)))}; now {last_pt(impostor).resolve()}, sha256 "
        f"{short(file_sha256(last_pt(impostor)))}): pass that teacher, or start this run again (--overwrite; in a "
        "sweep or chain, delete its folder)"
    )
    assert snapshot(student) == before


def test_a_moved_run_and_a_moved_teacher_resume(pair, tmp_path, capsys):
    """Content, not names: the run folder and its teacher's folder both moved (and renamed) still resume."""
    teacher, student = pair
    run_id = json.loads((student / "inputs.json").read_text())["run_id"]
    moved_student, moved_teacher = tmp_path / "archive" / "run-1", tmp_path / "archive" / "t-renamed"
    moved_student.parent.mkdir()
    student.rename(moved_student)
    teacher.rename(moved_teacher)
    run(
        capsys,
        "distill",
        "--teacher",
        moved_teacher,
        *STUDENT,
        "--epochs",
        "2",
        "--out",
        moved_student,
        "--resume",
    )
    done = summary(moved_student)
    assert done["epochs"] == 2 and [
        row["epoch"] for row in map(json.loads, (moved_student / "metrics.jsonl").open())
    ] == [1, 2]
    assert done["inputs"]["run_id"] == run_id  # one run, continued
    assert done["inputs"]["teachers"][0]["file"] == str(last_pt(moved_teacher).resolve())


def test_a_teacher_restored_to_the_same_bytes_resumes(pair, teachers, tmp_path, capsys):
    teacher, student = pair
    backup = tmp_path / "last.pt.backup"
    shutil.copyfile(last_pt(teacher), backup)
    retrain_in_place(teacher, teachers["b"])
    kdlab_error(
        capsys, "distill", "--teacher", teacher, *STUDENT, "--epochs", "2", "--out", student, "--resume"
    )
    shutil.copyfile(backup, last_pt(teacher))  # rebuilt: the very bytes the run started with
    run(capsys, "distill", "--teacher", teacher, *STUDENT, "--epochs", "2", "--out", student, "--resume")
    assert summary(student)["epochs"] == 2


def test_resume_refuses_another_number_of_teachers(pair, capsys):
    teacher, student = pair
    before = snapshot(student)
    message = kdlab_error(
        capsys, "distill", "--teacher", teacher, "--teacher", teacher, *STUDENT, "--epochs", "2", "--out", student,
        "--resume",
    )  # fmt: skip
    assert message == (
        f"{student} started with 1 teacher(s), not 2: pass the teachers it started with, or start this run again "
        "(--overwrite; in a sweep or chain, delete its folder)"
    )
    assert snapshot(student) == before


def test_resume_refuses_a_plugin_changed_since_the_run_started(tmp_path, capsys, restore_registries):
    plugin = tmp_path / "my_setting.py"
    plugin.write_text("SCALE = 1.0  # a plugin's code is an input of the run\n")
    out = tmp_path / "run"
    run(capsys, "train", "--import", plugin, *DIGITS, "--out", out)
    then = file_sha256(plugin)
    plugin.write_text("SCALE = 2.0  # changed after the run started\n")
    before = snapshot(out)
    message = kdlab_error(capsys, "train", "--import", plugin, *DIGITS[:-1], "2", "--out", out, "--resume")
    assert message == (
        f"the plugin {plugin} changed after {out} started (sha256 {then[:12]}… then, {file_sha256(plugin)[:12]}… now): "
        "restore it, or start this run again (--overwrite; in a sweep or chain, delete its folder)"
    )
    assert snapshot(out) == before


def test_a_plugins_own_helper_module_is_part_of_the_plugin(tmp_path, capsys, restore_registries):
    """A file plugin imports a module beside it, as a script would: the run records both files, and a
    changed helper is a changed plugin."""
    folder = tmp_path / "setting"
    folder.mkdir()
    plugin, helper = folder / "my_setting_with_helper.py", folder / "my_kd_helper_3f9.py"
    plugin.write_text("import my_kd_helper_3f9\n\nSCALE = my_kd_helper_3f9.SCALE\n")
    helper.write_text("SCALE = 1.0\n")
    out = tmp_path / "run"
    run(capsys, "train", "--import", plugin, *DIGITS, "--out", out)

    def digest() -> str:  # by hand: each file's path in the plugin's folder and sha256, sorted
        listing = "".join(f"{path.name}\0{file_sha256(path)}\n" for path in sorted([helper, plugin]))
        return f"{file_sha256(plugin)}+2 files:" + hashlib.sha256(listing.encode()).hexdigest()

    then = digest()
    assert json.loads((out / "inputs.json").read_text())["imports"] == {str(plugin): then}
    helper.write_text("SCALE = 2.0  # changed after the run started\n")
    before = snapshot(out)
    message = kdlab_error(capsys, "train", "--import", plugin, *DIGITS[:-1], "2", "--out", out, "--resume")
    assert message == (
        f"the plugin {plugin} changed after {out} started (sha256 {then[:12]}… with its helpers (2 files: "
        f"{then[-64:][:12]}…) then, {then[:12]}… with its helpers (2 files: {digest()[-64:][:12]}…) now): restore "
        "it, or start this run again (--overwrite; in a sweep or chain, delete its folder)"
    )
    assert snapshot(out) == before


def test_a_plugin_recorded_by_its_file_alone_is_compared_on_that_file(tmp_path, restore_registries):
    """A run of a kdlab that hashed a plugin's file alone, or a process that had not loaded a helper
    the plugin imports later, is compared on the plugin's file, not refused for the form of the digest."""
    from kdlab.identity import compare_inputs
    from kdlab.plugins import import_plugins, plugin_hashes

    folder = tmp_path / "setting"
    folder.mkdir()
    plugin = folder / "my_old_plugin_7c1.py"
    plugin.write_text("import my_old_helper_7c1\n")
    (folder / "my_old_helper_7c1.py").write_text("X = 1\n")
    (spec,) = import_plugins([str(plugin)])
    now = plugin_hashes([spec])
    assert now[spec].startswith(f"{file_sha256(plugin)}+2 files:")
    compare_inputs({"imports": {spec: file_sha256(plugin)}}, {"imports": now}, "old-run")  # accepted
    with pytest.raises(UserError, match=f"the plugin {spec} changed after old-run started"):
        compare_inputs({"imports": {spec: "0" * 64}}, {"imports": now}, "old-run")
    # A helper loaded in the recording process but not (yet) in this one: the plugin's file decides.
    compare_inputs({"imports": now}, {"imports": {spec: file_sha256(plugin)}}, "old-run")
    with pytest.raises(UserError, match=f"the plugin {spec} changed after old-run started"):
        compare_inputs(
            {"imports": {spec: "0" * 64 + now[spec][64:]}},
            {"imports": {spec: file_sha256(plugin)}},
            "old-run",
        )
    with pytest.raises(
        UserError, match=f"the plugin {spec} changed after old-run started"
    ):  # both list helpers
        compare_inputs({"imports": {spec: now[spec][:-1] + "0"}}, {"imports": now}, "old-run")
    with pytest.raises(UserError, match=f"the plugin {spec} changed after old-run started"):  # not a digest
        compare_inputs({"imports": {spec: 7}}, {"imports": now}, "old-run")


def test_a_module_plugin_of_a_package_counts_the_package_modules_it_loaded(
    tmp_path, monkeypatch, restore_registries
):
    from kdlab.plugins import import_plugins, plugin_hashes

    package = tmp_path / "pkg_e41"
    (package / "sub").mkdir(parents=True)
    files = {"__init__.py": "", "kd.py": "from pkg_e41.sub import util\n", "sub/__init__.py": "",
             "sub/util.py": "X = 1\n", "unused.py": "never imported\n"}  # fmt: skip
    for name, text in files.items():
        (package / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    (spec,) = import_plugins(["pkg_e41.kd"])
    loaded = ["__init__.py", "kd.py", "sub/__init__.py", "sub/util.py"]  # not unused.py
    listing = "".join(f"{name}\0{file_sha256(package / name)}\n" for name in loaded)
    own = file_sha256(package / "kd.py")
    assert plugin_hashes([spec]) == {spec: f"{own}+4 files:" + hashlib.sha256(listing.encode()).hexdigest()}


def test_a_plugin_alone_in_the_working_folder_is_hashed_by_its_file(
    tmp_path, monkeypatch, restore_registries
):
    """torch's ``torch._classes`` and ``torch._ops`` carry relative ``__file__`` names ("_classes.py"),
    which resolve into the working folder: they are no helper of a plugin there."""
    from kdlab.plugins import import_plugins, plugin_hashes

    monkeypatch.chdir(tmp_path)
    (tmp_path / "alone_5d2.py").write_text("X = 1\n")
    assert any(getattr(module, "__file__", None) == "_classes.py" for module in list(sys.modules.values()))
    (spec,) = import_plugins(["alone_5d2.py"])
    assert plugin_hashes([spec]) == {spec: file_sha256(tmp_path / "alone_5d2.py")}


def test_a_run_of_a_kdlab_before_records_resumes_on_its_settings_alone(pair, teachers, capsys):
    """Nothing recorded, nothing compared but the settings (teachers by folder name): old runs resume."""
    teacher, student = pair
    checkpoint = torch.load(last_pt(student), weights_only=True)
    del checkpoint["inputs"]
    torch.save(checkpoint, last_pt(student))
    (student / "inputs.json").unlink()
    retrain_in_place(teacher, teachers["b"])  # cannot be told apart without a record
    run(capsys, "distill", "--teacher", teacher, *STUDENT, "--epochs", "2", "--out", student, "--resume")
    record = json.loads((student / "inputs.json").read_text())  # recorded from now on
    assert summary(student)["epochs"] == 2 and record["teachers"][0]["sha256"] == file_sha256(
        last_pt(teachers["b"])
    )


# --- the selection -------------------------------------------------------------------------------


def test_a_selection_is_recorded_once_and_read_back_on_resume(teachers, tmp_path, capsys, monkeypatch):
    teacher = tmp_path / "teacher"
    shutil.copytree(teachers["a"], teacher)
    student = tmp_path / "student"
    select = ["--set", "data.select=samples:entropy:0-0.5"]
    run(capsys, "distill", "--teacher", teacher, *STUDENT, *select, "--epochs", "1", "--out", student)
    selection = json.loads((student / "selection.json").read_text())
    kept = np.array(selection["indices"])
    assert (selection["kept"], selection["of"]) == (len(kept), 1437) and 700 <= len(
        kept
    ) <= 720  # half per class
    assert selection["sha256"] == indices_sha256(kept)
    record = json.loads((student / "inputs.json").read_text())["selection"]
    assert record == {
        "select": "samples:entropy:0-0.5",
        "kept": len(kept),
        "of": 1437,
        "sha256": selection["sha256"],
    }
    written = (student / "selection.json").read_bytes()

    # A retrained teacher would rank other samples: refused, and selection.json is not rewritten.
    backup = tmp_path / "backup.pt"
    shutil.copyfile(last_pt(teacher), backup)
    retrain_in_place(teacher, teachers["b"])
    message = kdlab_error(
        capsys,
        "distill",
        "--teacher",
        teacher,
        *STUDENT,
        *select,
        "--epochs",
        "2",
        "--out",
        student,
        "--resume",
    )
    assert message.startswith(f"the teacher at {teacher} was retrained or changed after {student} started")
    assert (student / "selection.json").read_bytes() == written

    # With its own teacher, the resume trains on the recorded samples without scoring them again.
    shutil.copyfile(backup, last_pt(teacher))

    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("the selection was computed again")

    monkeypatch.setattr(kdlab.data.select, "score_training_set", no_teacher_pass)
    run(
        capsys,
        "distill",
        "--teacher",
        teacher,
        *STUDENT,
        *select,
        "--epochs",
        "2",
        "--out",
        student,
        "--resume",
    )
    assert (student / "selection.json").read_bytes() == written
    assert summary(student)["train_images"] == len(kept) and summary(student)["epochs"] == 2


def test_a_selection_computed_otherwise_on_resume_is_refused(teachers, tmp_path, capsys, monkeypatch):
    """Its selection.json lost, a resume ranks the samples again; a ranking that differs (another device's
    rounding, simulated here by other scores) is refused, not trained on."""
    teacher = tmp_path / "teacher"
    shutil.copytree(teachers["a"], teacher)
    student = tmp_path / "student"
    select = ["--set", "data.select=samples:entropy:0-0.5"]
    run(capsys, "distill", "--teacher", teacher, *STUDENT, *select, "--epochs", "1", "--out", student)
    then = json.loads((student / "inputs.json").read_text())["selection"]
    (student / "selection.json").unlink()
    before = snapshot(student)
    score = kdlab.data.select.score_training_set
    monkeypatch.setattr(
        kdlab.data.select, "score_training_set", lambda *args: -score(*args)
    )  # the other half
    message = kdlab_error(
        capsys,
        "distill",
        "--teacher",
        teacher,
        *STUDENT,
        *select,
        "--epochs",
        "2",
        "--out",
        student,
        "--resume",
    )
    assert message.startswith(
        f"data.select keeps other training samples now than when {student} started ({then['kept']} of 1437, sha256 "
        f"{then['sha256'][:12]}… then; "
    )
    assert message.endswith(
        "now): restore its selection.json, or start this run again (--overwrite; in a sweep or chain, delete its folder)"
    )
    assert snapshot(student) == before


# --- the data ------------------------------------------------------------------------------------


def write_tensors(folder: Path, seed: int) -> Path:
    """A tensors folder of uint8 8x8 one-channel images, 3 classes (brightness tells them apart): 120
    training and 40 test samples."""
    generator = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for split, count in (("train", 120), ("test", 40)):
        y = np.arange(count) % 3
        x = (generator.integers(0, 60, size=(count, 1, 8, 8)) + 80 * y[:, None, None, None]).astype(np.uint8)
        np.savez(folder / f"{split}.npz", x=x, y=y)
    return folder


TENSORS = ["--model", "convnet-4", "--batch-size", "16", *QUIET, "--epochs", "1"]


def test_a_teacher_of_other_files_under_the_same_dataset_name_is_refused(tmp_path, capsys):
    ours, theirs = write_tensors(tmp_path / "ours", 0), write_tensors(tmp_path / "theirs", 1)
    teacher = tmp_path / "teacher"
    run(capsys, "train", "--dataset", "tensors", "--data-dir", theirs, *TENSORS, "--out", teacher)
    source = json.loads((teacher / "inputs.json").read_text())["data"]["source_sha256"]
    out = tmp_path / "student"
    message = kdlab_error(capsys, "distill", "--teacher", teacher, "--data-dir", ours, *TENSORS, "--out", out)
    run(capsys, "train", "--dataset", "tensors", "--data-dir", ours, *TENSORS, "--out", tmp_path / "probe")
    here = json.loads((tmp_path / "probe" / "inputs.json").read_text())["data"]["source_sha256"]
    assert message == (
        f"teacher {teacher} was trained on other tensors data than this run reads (sha256 {source[:12]}… of its "
        f"files, {here[:12]}… here): point --data-dir at the teacher's data, or use a teacher trained on these files"
    )
    assert not out.exists()
    # The same data in another folder is the same data.
    copy = tmp_path / "copy-of-theirs"
    shutil.copytree(theirs, copy)
    run(capsys, "distill", "--teacher", teacher, "--data-dir", copy, *TENSORS, "--out", out)
    assert summary(out)["inputs"]["data"]["source_sha256"] == source


def test_resume_refuses_data_files_changed_since_the_run_started(tmp_path, capsys):
    data = write_tensors(tmp_path / "data", 0)
    out = tmp_path / "run"
    run(capsys, "train", "--dataset", "tensors", "--data-dir", data, *TENSORS, "--out", out)
    then = json.loads((out / "inputs.json").read_text())["data"]["train"]["sha256"]
    with np.load(data / "train.npz") as archive:
        x, y = archive["x"].copy(), archive["y"]
    x[5, 0, 0, 0] += 1  # one pixel of one image
    np.savez(data / "train.npz", x=x, y=y)
    before = snapshot(out)
    message = kdlab_error(
        capsys, "train", "--dataset", "tensors", "--data-dir", data, *TENSORS[:-1], "2",
        "--out", out, "--resume",
    )  # fmt: skip
    assert message.startswith(
        f"the train split of tensors is not the data {out} started with (120 samples, sha256 {then[:12]}… then; 120, "
    )
    assert message.endswith(
        "now): point --data-dir at the data it started with, or start this run again (--overwrite; in a sweep or "
        "chain, delete its folder)"
    )
    assert snapshot(out) == before


def test_a_validation_split_holding_the_teachers_training_images_is_refused(teachers, tmp_path, capsys):
    out = tmp_path / "student"
    message = kdlab_error(
        capsys,
        "distill",
        "--teacher",
        teachers["a"],
        *STUDENT,
        "--epochs",
        "1",
        "--val-split",
        "100",
        "--out",
        out,
    )
    assert message == (
        f"the validation split of this run (val_split=100 of digits) holds images its teacher {teachers['a']} "
        "trained on (it was trained with val_split=None, subset=None, subset_seed=0): an epoch chosen on them is "
        "chosen on images the teacher fitted; train the teacher with val_split=100, subset=None and subset_seed=0, "
        "or drop --val-split"
    )
    assert not out.exists()
    # A teacher that held out the same 100 images never saw them: accepted.
    run(
        capsys,
        "distill",
        "--teacher",
        teachers["val"],
        *STUDENT,
        "--epochs",
        "1",
        "--val-split",
        "100",
        "--out",
        out,
    )
    assert summary(out)["val_images"] == 100
    held_out = json.loads((teachers["val"] / "inputs.json").read_text())["data"]["val"]
    assert summary(out)["inputs"]["data"]["val"] == held_out


# --- the teacher-logit cache ---------------------------------------------------------------------


def test_a_cache_of_the_right_shape_but_other_bytes_is_refused(teachers, tmp_path, capsys):
    cache = ["--set", "kd.cache=true", "--set", f"kd.cache_dir={tmp_path / 'cache'}"]
    first = tmp_path / "first"
    run(capsys, "distill", "--teacher", teachers["a"], *STUDENT, "--epochs", "1", *cache, "--out", first)
    (path,) = (tmp_path / "cache").glob("*.npy")
    recorded = json.loads(path.with_suffix(".json").read_text())["sha256"]
    assert recorded == file_sha256(path)
    assert summary(first)["inputs"]["cache"] == {
        "file": str(path.resolve()),
        "key": path.stem.split("-")[-1],
        "sha256": recorded,
    }
    table = np.load(path, mmap_mode="r+")  # the same shape and dtype, other logits
    table[0, 0, 0] += 1
    table.flush()
    del table
    now = file_sha256(path)
    out = tmp_path / "second"
    message = kdlab_error(
        capsys, "distill", "--teacher", teachers["a"], *STUDENT, "--epochs", "1", *cache, "--out", out
    )
    assert message == (
        f"{path} changed after it was built (sha256 {recorded[:12]}… at its build, {now[:12]}… now): delete it "
        "(the next run builds it again)"
    )
    assert not out.exists()
    record = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**record, "num_images": 5}))  # another build's record
    message = kdlab_error(
        capsys, "distill", "--teacher", teachers["a"], *STUDENT, "--epochs", "1", *cache, "--out", out
    )
    assert message == (
        f"{path} was built from other inputs than its name says (num_images 5 in {path.stem}.json, 1437 now): "
        "delete it (the next run builds it again)"
    )
    path.with_suffix(".json").unlink()  # a cache without its record cannot be vouched for either
    message = kdlab_error(
        capsys, "distill", "--teacher", teachers["a"], *STUDENT, "--epochs", "1", *cache, "--out", out
    )
    assert message.startswith(
        f"{path} has no checksum in {path.stem}.json (missing, damaged, or written by a kdlab"
    )
    path.unlink()  # the fix: deleted, it is built again
    run(capsys, "distill", "--teacher", teachers["a"], *STUDENT, "--epochs", "1", *cache, "--out", out)
    assert summary(out)["inputs"]["cache"]["sha256"] == recorded  # the same logits as the first build


# --- reports and sweeps --------------------------------------------------------------------------


def test_a_report_counts_a_copied_run_once_and_names_the_copy(pair, tmp_path, capsys):
    teacher, student = pair
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    student.rename(sweep / "student")
    shutil.copytree(sweep / "student", sweep / "student-backup")
    out = run(capsys, "report", sweep)
    report = (sweep / "report.md").read_text()
    assert "1 finished runs (1 copies of them not counted: see below) in 1 groups" in report
    run_id = summary(sweep / "student")["inputs"]["run_id"]
    assert f"- `student-backup` is a copy of `student` (run {run_id[:12]})" in report
    assert f"{sweep / 'student-backup'} is a copy of {sweep / 'student'} (one run): counted once" in out
    rows = (sweep / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and ",1," in rows[1]  # one group of one seed


def test_a_sweep_refuses_to_reuse_runs_of_a_retrained_teacher(teachers, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        json.dumps(
            {
                "model": "convnet-4",
                "data": {"name": "digits"},
                "optim": {"epochs": 1, "batch_size": 64},
                "kd": {"teacher": "big", "loss": "kl"},
                "teachers": {"big": {"model": "convnet-4"}},
                "progress": False,
                "tensorboard": False,
            }  # fmt: skip
        )
    )
    sweep = tmp_path / "sweep"
    run(capsys, "sweep", recipe, "--out", sweep)
    (student,) = [
        path.parent for path in sweep.rglob("inputs.json") if json.loads(path.read_text())["teachers"]
    ]
    (teacher,) = [
        path.parent for path in sweep.rglob("inputs.json") if not json.loads(path.read_text())["teachers"]
    ]
    then, spec = (
        file_sha256(last_pt(teacher)),
        json.loads((student / "inputs.json").read_text())["teachers"][0]["spec"],
    )
    before = snapshot(student)
    # Another training in the teacher's folder: refused before anything trains.
    retrain_in_place(teacher, teachers["b"])
    message = kdlab_error(capsys, "sweep", recipe, "--out", sweep)
    assert message.startswith(
        f"the teacher at {spec} was retrained or changed after {student} started (sha256 {then[:12]}… then"
    )
    assert snapshot(student) == before
    # The teacher deleted: the sweep trains it again, then refuses to reuse the student of the old one.
    shutil.rmtree(teacher)
    message = kdlab_error(capsys, "sweep", recipe, "--out", sweep)
    assert f"was retrained or changed after {student} started (sha256 {then[:12]}… then" in message
    assert snapshot(student) == before
