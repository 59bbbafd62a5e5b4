"""Your own setting through the command line: ``--import`` and ``imports:`` bring a user's models and
losses to every command (train, distill, sweep with worker processes, chain, eval, report), a loss
hyperparameter is declared once, settings a loss does not read are refused, registries refuse to
replace a name by accident, and a student takes its teacher's data unless told otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from fixtures_engine import kdlab_error

from kdlab.cli import main
from kdlab.config import build_config
from kdlab.errors import UserError
from kdlab.registry import Registry

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_registries")  # tests/conftest.py
SRC = Path(__file__).resolve().parents[1] / "src"
QUIET = ["--set", "progress=false", "--set", "tensorboard=false"]

# A plugin as a user writes it: a model of their own, a loss with a hyperparameter of its own.
PLUGIN = textwrap.dedent(
    """
    import torch.nn.functional as F
    from torch import nn

    from kdlab.config import declare_hyperparameter
    from kdlab.losses import register_loss
    from kdlab.models import MODELS, Classifier


    class TinyNet(Classifier):
        def __init__(self, num_classes, in_channels=1, image_size=8):
            super().__init__(num_classes, in_channels)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 32), nn.ReLU())
            self.classifier = nn.Linear(32, num_classes)

        def forward_features(self, x):
            return self.body(x)


    @MODELS.register("tinynet")
    def tinynet(num_classes, in_channels=1, image_size=8):
        return TinyNet(num_classes, in_channels, image_size)


    declare_hyperparameter("rkl_mix", 0.5, token="m", low=0.0, high=1.0, hint="e.g. --set kd.rkl_mix=0.5")


    @register_loss("rkl", label="RKL", params={"tau": "tau", "mix": "rkl_mix"}, excludes={"tau": (0.0, float("inf"))})
    def reverse_kl(student_logits, targets, *, teacher_logits, tau, mix):
        log_s = F.log_softmax(student_logits / tau, dim=1)
        log_t = F.log_softmax(teacher_logits / tau, dim=1)
        reverse = tau * tau * (log_s.exp() * (log_s - log_t)).sum(dim=1).mean()
        return {"ce": (1 - mix) * F.cross_entropy(student_logits, targets), "rkl": mix * reverse}
    """
)


def kdlab(*args: object) -> None:
    try:
        main([str(arg) for arg in args])
    except SystemExit as error:
        assert error.code in (0, None), error.code


def run_subprocess(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """``kdlab ARGS`` in a fresh Python process (nothing of this process's registrations)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "kdlab", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    """A folder with the plugin file and a digits teacher trained through ``--import``."""
    root = tmp_path_factory.mktemp("setting")
    (root / "my_kd.py").write_text(PLUGIN)
    kdlab("train", "--import", root / "my_kd.py", "--dataset", "digits", "--model", "tinynet", "--epochs", 3,
          "--batch-size", 64, "--lr", 0.05, "--out", root / "teacher", *QUIET)  # fmt: skip
    return root


def test_a_plugin_model_and_loss_train_distill_and_reload_in_a_new_process(
    setting: Path, tmp_path: Path
) -> None:
    plugin = setting / "my_kd.py"
    stored = yaml.safe_load((setting / "teacher" / "config.yaml").read_text())
    assert stored["imports"] == [str(plugin)] and stored["model"] == "tinynet"
    assert len(stored["run_info"]["imports"][str(plugin)]) == 64  # the plugin file's SHA-256, recorded
    # Distilled with the plugin's loss and its own hyperparameter; the dataset comes from the teacher.
    kdlab("distill", "--import", plugin, "--teacher", setting / "teacher", "--model", "tinynet", "--loss", "rkl",
          "--tau", 4, "--set", "kd.rkl_mix=0.8", "--epochs", 2, "--batch-size", 64, "--out", tmp_path / "s", *QUIET)  # fmt: skip
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["dataset"] == "digits"
    assert summary["hyperparameters"] == {"tau": 4.0, "rkl_mix": 0.8}  # exactly the loss's own
    assert summary["test_acc_best"] > 50  # digits: chance is 10%
    config = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert config["kd"]["rkl_mix"] == 0.8 and "extra" not in config["kd"]
    # A fresh process finds the plugin from the run folder alone: eval, then a longer --resume.
    done = run_subprocess("eval", tmp_path / "s", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"digits test accuracy {summary['test_acc_last']:.2f}%" in done.stdout
    resumed = run_subprocess("distill", "--teacher", setting / "teacher", "--model", "tinynet", "--loss", "rkl",
                             "--tau", 4, "--set", "kd.rkl_mix=0.8", "--epochs", 3, "--batch-size", 64,
                             "--out", tmp_path / "s", "--resume", *QUIET, "--import", plugin, cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["epochs"] == 3


def test_a_plugin_reaches_a_sweep_its_worker_processes_and_its_report(setting: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"  # names the plugin relative to itself
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "kd.py").write_text(PLUGIN)
    recipe.write_text(
        "imports: [plugins/kd.py]\nmodel: tinynet\ndata: {name: digits}\noptim: {epochs: 2, batch_size: 64}\n"
        "progress: false\ntensorboard: false\nkd: {teacher: big, loss: rkl, tau: 4}\n"
        "teachers: {big: {model: tinynet, optim: {epochs: 2}}}\n"
        "grid: {kd.rkl_mix: [0.2, 0.9]}\nruns: [{kd.loss: ce}]\n"
    )
    done = run_subprocess("sweep", recipe, "--out", tmp_path / "sweep", "--jobs", 2, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    names = sorted(path.name for path in (tmp_path / "sweep").iterdir() if (path / "summary.json").is_file())
    assert names == ["ce-s0", "rkl-t4-m0.2-s0", "rkl-t4-m0.9-s0"]
    reported = run_subprocess("report", tmp_path / "sweep", cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr
    assert "RKL tau=4 mix=0.2" in (tmp_path / "sweep" / "report.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["distill", "--loss", "mse", "--tau", "3"], "kd.tau is not read by loss mse, which reads kd.alpha, kd.ce_weight, kd.kd_weight: drop kd.tau"),
        (["distill", "--loss", "dkd", "--alpha", "0.3"],
         "kd.alpha is not read by loss dkd, which reads kd.dkd_alpha, kd.dkd_beta, kd.tau, kd.dkd_warmup"),
        (["distill", "--loss", "kl", "--set", "kd.dkd_beta=4"], "kd.dkd_beta is not read by loss kl"),
        (["distill", "--loss", "ce", "--tau", "2"], "kd.tau is not read by loss ce, which reads no hyperparameter"),
    ],
)  # fmt: skip
def test_a_setting_the_loss_does_not_read_is_one_line(
    capsys: pytest.CaptureFixture[str], setting: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    line = kdlab_error(capsys, *args, "--teacher", setting / "teacher", "--model", "mlp-16", "--out", tmp_path / "o",
                       "--import", setting / "my_kd.py")  # fmt: skip
    assert line.startswith(message)
    assert not (tmp_path / "o").exists()
    line = kdlab_error(capsys, "train", "--dataset", "digits", "--set", "kd.tau=3", "--out", tmp_path / "o")
    assert line.startswith("kd.tau is not read by loss ce")


def test_unread_grid_axes_and_chain_options_are_refused(tmp_path: Path) -> None:
    from kdlab.experiments.chain import parse_stage, plan_chain
    from kdlab.experiments.recipes import parse_recipe, plan_sweep

    document = {"model": "mlp-16", "data": {"name": "digits"}, "kd": {"teacher": "big", "loss": "kl"},
                "teachers": {"big": {"model": "convnet-4"}}, "grid": {"kd.dkd_beta": [4, 8]}}  # fmt: skip
    with pytest.raises(
        UserError, match=r"kd.dkd_beta is not read by loss kl, which reads kd.standardize, kd.alpha"
    ):
        plan_sweep(parse_recipe(document, "r"), tmp_path / "sweep")
    document = {
        **document,
        "grid": {"kd.tau": [1, 2]},
        "kd": {"teacher": "big", "loss": "kl", "dist_beta": 3},
    }
    with pytest.raises(
        UserError, match=r"recipe r: kd.dist_beta is not read by the loss of any run \(ce, kl\)"
    ):
        plan_sweep(parse_recipe(document, "r"), tmp_path / "sweep")
    # Shared settings may serve some stages only; a stage's own options must be its loss's.
    stages = [parse_stage("convnet-4:ce"), parse_stage("mlp-16:kl:tau=3")]
    plan_chain(stages, tmp_path / "chain", flags={"data": {"name": "digits"}}, overrides=["kd.alpha=0.5"])
    with pytest.raises(UserError, match=r"--stage 1 \(convnet-4:ce\): kd.tau is not read by loss ce"):
        plan_chain(
            [parse_stage("convnet-4:ce:tau=3")], tmp_path / "chain", flags={"data": {"name": "digits"}}
        )
    with pytest.raises(UserError, match=r"kd.dkd_beta is not read by the loss of any stage \(ce, kl\)"):
        plan_chain(
            stages, tmp_path / "chain", flags={"data": {"name": "digits"}}, overrides=["kd.dkd_beta=2"]
        )


def test_a_student_takes_its_teachers_data_unless_told(capsys, setting: Path, tmp_path: Path) -> None:
    config = build_config(flags={"kd": {"loss": "kl", "teacher": str(setting / "teacher")}, "imports": [str(setting / "my_kd.py")]},
                          complete=__import__("kdlab.teacher").teacher.with_teacher_data)  # fmt: skip
    assert config.data.name == "digits"
    line = kdlab_error(capsys, "distill", "--teacher", setting / "teacher", "--dataset", "fashion-mnist",
                       "--model", "mlp-16", "--out", tmp_path / "o", "--import", setting / "my_kd.py")  # fmt: skip
    assert line == (
        f"--dataset fashion-mnist differs from teacher {setting / 'teacher'}'s digits: drop --dataset (a student "
        "takes its teacher's), or use a teacher trained on fashion-mnist"
    )


def test_registries_refuse_a_second_name_and_find_names_as_stored() -> None:
    registry: Registry[object] = Registry("thing")
    registry.register("Foo")(lambda: 1)
    assert registry.get("Foo")() == 1 and registry.get("foo")() == 1 and registry.names() == ["Foo"]
    with pytest.raises(ValueError, match="thing 'FOO' is already registered \\(as 'Foo'\\)"):
        registry.register("FOO")(lambda: 2)
    registry.register("foo", replace=True)(lambda: 3)
    assert registry.get("Foo")() == 3
    registry.register("net-{width}")(lambda width: width)
    with pytest.raises(ValueError, match="thing 'net-5' is already registered \\(as 'net-\\{width\\}'\\)"):
        registry.register("net-5")(lambda: 5)
    assert registry.get("NET-7")() == 7


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        ("from kdlab.losses import register_loss\n\n@register_loss('kl', label='KL')\ndef kl(s, y, *, teacher_logits):\n    return {}\n",
         "importing it failed (plugin.py, line 3): ValueError: loss 'kl' is already registered (as 'kl'): choose "
         "another name, or pass replace=True to replace it on purpose; fix the plugin"),
        ("def broken(:\n", "importing it failed: SyntaxError: invalid syntax (plugin.py, line 1); fix the plugin"),
        ("import sys\nsys.exit(0)\n", "importing it failed (plugin.py, line 2): SystemExit: 0; fix the plugin"),
        ("import not_a_module_anywhere\n",
         "importing it failed (plugin.py, line 1): ModuleNotFoundError: No module named 'not_a_module_anywhere'; fix the plugin"),
    ],
)  # fmt: skip
def test_a_broken_plugin_is_one_line(capsys, tmp_path: Path, plugin: str, message: str) -> None:
    path = tmp_path / "plugin.py"
    path.write_text(plugin)
    line = kdlab_error(capsys, "train", "--import", path, "--dataset", "digits", "--out", tmp_path / "o")
    assert line == f"--import {path}: {message}"
    assert not (tmp_path / "o").exists()


def test_imports_that_are_not_plugins_are_one_line(capsys, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not python")
    os.mkfifo(tmp_path / "fifo.py")
    (tmp_path / "folder.py").mkdir()
    cases = {
        tmp_path / "missing.py": "no such file or directory: check the path of the plugin file",
        tmp_path / "notes.txt": "is not a .py file: name a Python file (or a module)",
        tmp_path / "fifo.py": "is not a regular file: name a .py file (or a module)",
        tmp_path / "folder.py": "is not a regular file: name a .py file (or a module)",
        "no_such_module_xyz": "no module named 'no_such_module_xyz': install it, or pass a .py file",
        "bad name": "not a module name or a .py file",
    }
    for spec, message in cases.items():
        line = kdlab_error(capsys, "recipes", "--import", spec)
        assert message in line, line


def test_help_lists_what_plugins_register(setting: Path, capsys) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["distill", "--help", "--import", str(setting / "my_kd.py")])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "tinynet" in help_text and "rkl" in help_text and "svhn" in help_text


def test_a_sweep_takes_an_outside_teachers_data_unless_its_recipe_names_it(
    setting: Path, tmp_path: Path
) -> None:
    from kdlab.experiments.recipes import parse_recipe, plan_sweep

    document = {"model": "tinynet", "imports": [str(setting / "my_kd.py")],
                "kd": {"teacher": str(setting / "teacher"), "loss": "kl", "tau": 4}, "grid": {"kd.tau": [1, 4]}}  # fmt: skip
    plan = plan_sweep(parse_recipe(document, "r"), tmp_path / "sweep")
    assert {run.config.data.name for run in plan.students} == {"digits"}  # the teacher's, not cifar100
    document["data"] = {"name": "mnist"}
    with pytest.raises(UserError, match="data.name mnist differs from teacher .*'s digits: drop data.name"):
        plan_sweep(parse_recipe(document, "r"), tmp_path / "sweep")
