"""Shared test setup: one CPU thread everywhere, and the determinism switch restored after each test.

One thread: the tests run tiny models, where a second thread gains nothing, and on a busy 2-core
machine two threads per process were measured to make steps 10-100x slower. Setting
OMP_NUM_THREADS also reaches the kdlab processes the tests start (kdlab.cli honours it).
"""

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# Teacher-logit caches (kd.cache: auto builds one when a run would reuse it) and downloads go to a
# folder of this test session, never the user's ~/.cache/kdlab. Set here, before the test modules
# are imported: some build their subprocesses' environment from os.environ at import. A test may
# still point it elsewhere (monkeypatch.setenv).
_SESSION_CACHE = tempfile.mkdtemp(prefix="kdlab-test-cache-")
os.environ["KDLAB_CACHE_DIR"] = _SESSION_CACHE
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_determinism() -> Iterator[None]:
    """Runs with ``deterministic: true`` switch torch's global flag on; give each test a clean one."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a test module, in this process and in the kdlab processes it starts
    (kdlab.cli.main honours OMP_NUM_THREADS; torchrun's workers get 1 anyway). For tests that compare
    runs bitwise (results depend on the thread count) or run tiny models, where a second thread
    gains nothing and, on a shared 2-core machine, was measured to make steps up to 20x slower.
    Also restores the deterministic-algorithms switch that `deterministic: true` runs set globally."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory, one_torch_thread) -> str:
    """A convnet-8 trained for 3 epochs on digits (about 80% test accuracy; module-scoped: trained once)."""
    from fixtures_engine import make_config

    from kdlab.engine import train

    out = tmp_path_factory.mktemp("teacher") / "run"
    config = make_config(out)
    config.model, config.optim.epochs = "convnet-8", 3
    train(config)
    return str(out)


@pytest.fixture(scope="module")
def restore_registries() -> Iterator[None]:
    """Undo what a test module's plugins registered (models, datasets, losses, hyperparameters, the
    plugin files imported), so that later modules see kdlab's own registries only."""
    from fixtures_engine import registries_restored

    with registries_restored():
        yield
