"""Write the example setting's dataset: ``data/train.npz`` and ``data/test.npz``, each holding ``x``
(float32 ``[N, 20]``) and ``y`` (int64 ``[N]``), the format of kdlab's ``tensors`` dataset.

The data are scikit-learn's ``make_classification``: 8 classes, 20 features of which 12 carry the
class, each class a mixture of 3 Gaussian clusters, with a fixed seed. Run from anywhere::

    python examples/tabular/make_data.py                 # 6,000 training and 2,000 test samples
    python examples/tabular/make_data.py --train 600 --test 300 --out /tmp/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import make_classification


def make(train: int, test: int, out: Path, seed: int = 0) -> None:
    x, y = make_classification(
        n_samples=train + test, n_features=20, n_informative=12, n_redundant=4, n_classes=8,
        n_clusters_per_class=3, class_sep=1.5, random_state=seed,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    x, y = x.astype(np.float32), y.astype(np.int64)
    np.savez(out / "train.npz", x=x[:train], y=y[:train])
    np.savez(out / "test.npz", x=x[train:], y=y[train:])
    print(f"wrote {out / 'train.npz'} ({train} samples) and {out / 'test.npz'} ({test} samples)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    arguments = parser.parse_args()
    make(arguments.train, arguments.test, arguments.out)
