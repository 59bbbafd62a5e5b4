"""The identity of a run and of every input it reads: recorded when it starts, compared on resume and reuse.

A run records, in ``RUN/inputs.json`` and in the same form in its checkpoints and ``summary.json``::

    format     kdlab-inputs-v1
    run_id     a random id drawn when the run starts (--resume keeps it, --overwrite draws anew):
               two folders with one run id hold one run and its copy (a report counts it once)
    teachers   per teacher (an ensemble: per member, in order) its spec, the file read, its sha256
    data       the dataset's name; ``source_sha256``, of its splits as its files gave them (before
               subset, validation split and label noise); per split ``train``/``val``/``test`` as the
               run loaded them (label noise aside, a setting): size and sha256
    selection  data.select's kept training samples: count, of how many, sha256 of the indices
    cache      the teacher-logit cache read: file, key, sha256 of its bytes
    imports    each plugin's sha256 (kdlab.plugins.plugin_hashes)

A split's fingerprint hashes what kdlab holds in memory: for an in-memory split the dtype, shape and
bytes of its inputs and of its labels; for an ImageFolder its sorted files (relative path, class,
size in bytes). So the same data read from another folder or another archive format is the same data.

``--resume`` and a reuse of a finished run (a sweep, a chain, ``--resume`` of a finished run)
compare what both records hold (:func:`compare_inputs`): teachers by content (a moved teacher is the
same teacher, another one of the same folder name is not), the data split by split, the selection,
the plugins by file name. A run of a kdlab before these records has none: only its settings are
compared. The cache is recorded, not compared: it is a runtime setting (a resume may drop or
rebuild it), and its bytes are checked against its own checksum every time it is opened
(:mod:`kdlab.cache`). A resumed data.select run trains on the indices it recorded
(:func:`recorded_selection`), never on a new ranking.

A student is also checked against its teachers' records when it starts (:func:`check_teacher_data`):
a teacher trained on other files of the same dataset, or on the images the student validates on, is
refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from kdlab.errors import UserError
from kdlab.plugins import HELPERS, same_plugin

if TYPE_CHECKING:
    from kdlab.config import RunConfig
    from kdlab.data import DatasetSplits
    from kdlab.runs import RunFolder

INPUTS_FORMAT = "kdlab-inputs-v1"
INPUTS_NAME = "inputs.json"
SPLITS = ("train", "val", "test")
AGAIN = "start this run again (--overwrite; in a sweep or chain, delete its folder)"


def short(digest: object) -> str:
    """The first 12 hex digits of a sha256, as messages show it (a plugin of several files:
    ``9f8e7d6c5b4a… with its helpers (3 files: 1a2b3c4d5e6f…)``)."""
    if digest is not None and not isinstance(digest, str):  # a record that is not kdlab's
        return "(not a digest)"
    if digest and HELPERS in digest:  # a plugin with its helpers: its file's, then the list's
        own, _, listed = digest.partition("+")
        count, _, listing = listed.partition(HELPERS)
        return f"{own[:12]}… with its helpers ({count} files: {listing[:12]}…)"
    return f"{digest[:12]}…" if digest else "none"


def new_run_id() -> str:
    """A run's id: 32 random hex digits, drawn when it starts."""
    return uuid.uuid4().hex


# --- fingerprints -----------------------------------------------------------------------------------


def hash_tensors(digest: Any, tensors: dict[str, Tensor]) -> None:
    """Feed ``digest`` (a hashlib object) with each tensor's name, dtype, shape and bytes, by name."""
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))


def split_fingerprint(split: Any) -> dict[str, Any] | None:
    """``{"size": N, "sha256": ...}`` of one split (None for no split): an in-memory split's inputs
    and labels (``hash_tensors``), an ImageFolder's (or a subset's) sorted ``path class size`` lines;
    sha256 None for a Dataset of another kind, which kdlab cannot fingerprint."""
    from kdlab.data import TensorData

    if split is None:
        return None
    if isinstance(split, TensorData):
        digest = hashlib.sha256()
        hash_tensors(digest, {"inputs": split.images, "labels": split.labels})
        return {"size": len(split), "sha256": digest.hexdigest()}
    base, indices = split, None
    if hasattr(split, "indices") and hasattr(split, "dataset"):  # a LabelledSubset of an ImageFolder
        base, indices = split.dataset, list(split.indices)
    samples = getattr(base, "samples", None)
    root = getattr(base, "root", None)
    if not isinstance(samples, list) or root is None:
        return {"size": len(split), "sha256": None}
    chosen = samples if indices is None else [samples[i] for i in indices]
    digest = hashlib.sha256()
    for path, target in sorted(chosen):
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1
        digest.update(f"{os.path.relpath(path, root)}\t{target}\t{size}\n".encode())
    return {"size": len(split), "sha256": digest.hexdigest()}


def split_fingerprints(
    splits: DatasetSplits, known: dict[str, tuple[Any, Any]] | None = None
) -> dict[str, Any]:
    """``{split: fingerprint}`` for train, val and test; a split that is still the very object in
    ``known`` (``{split: (object, fingerprint)}``) keeps that fingerprint instead of being hashed again."""
    found = {}
    for name in SPLITS:
        split = getattr(splits, name)
        before = (known or {}).get(name)
        found[name] = before[1] if before is not None and before[0] is split else split_fingerprint(split)
    return found


def source_splits(splits: DatasetSplits) -> dict[str, tuple[Any, Any]]:
    """``{split: (object, fingerprint)}`` of the splits as the dataset's files gave them (before any
    subset): what :func:`data_identity` takes as ``source``."""
    return {name: (getattr(splits, name), split_fingerprint(getattr(splits, name))) for name in SPLITS}


def data_identity(splits: DatasetSplits, source: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """The data record of a run: name, ``source_sha256`` (of the ``source`` splits' fingerprints,
    :func:`source_splits`) and each split's fingerprint as loaded (a split left as the files gave it
    is not hashed twice)."""
    parts = [f"{name}:{(source[name][1] or {}).get('sha256')}" for name in SPLITS]
    return {
        "name": splits.name,
        "source_sha256": hashlib.sha256(";".join(parts).encode()).hexdigest(),
        **split_fingerprints(splits, source),
    }


def indices_sha256(indices: Tensor) -> str:
    """sha256 of kept sample indices (int64, sorted)."""
    return hashlib.sha256(torch.as_tensor(indices, dtype=torch.int64).cpu().numpy().tobytes()).hexdigest()


def teacher_identity(value: Any) -> list[dict[str, Any]]:
    """Per teacher spec of ``kd.teacher`` (an ensemble's members in order): the spec, the file it
    reads (absolute) and that file's sha256."""
    from kdlab.config import teacher_specs
    from kdlab.runs import file_sha256
    from kdlab.teacher import member_file

    records = []
    for spec in teacher_specs(value):
        path = member_file(spec)
        records.append({"spec": spec, "file": str(Path(path).resolve()), "sha256": file_sha256(path)})
    return records


# --- what a run recorded ----------------------------------------------------------------------------


def read_inputs(run: RunFolder) -> dict[str, Any]:
    """The record in ``RUN/inputs.json``; ``{}`` when the folder has none (a run of an older kdlab) or
    it is not a record of kdlab's."""
    record = _read_json(run.path / INPUTS_NAME)
    return record if isinstance(record, dict) and record.get("format") == INPUTS_FORMAT else {}


def checkpoint_inputs(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The record a checkpoint carries; ``{}`` for a checkpoint of an older kdlab."""
    record = checkpoint.get("inputs")
    return record if isinstance(record, dict) and record.get("format") == INPUTS_FORMAT else {}


def compare_inputs(recorded: dict[str, Any], current: dict[str, Any], where: str | Path) -> None:
    """A UserError naming the first input whose identity differs between what the run at ``where``
    recorded when it started and what it reads now: its teachers, its data (split by split), its
    selection, its plugins. Only what both records hold is compared (see the module docstring)."""
    _compare_teachers(recorded.get("teachers"), current.get("teachers"), where)
    _compare_data(recorded.get("data"), current.get("data"), where)
    before, after = recorded.get("selection"), current.get("selection")
    if isinstance(before, dict) and isinstance(after, dict) and before.get("sha256") != after.get("sha256"):
        raise UserError(
            f"data.select keeps other training samples now than when {where} started ({before.get('kept')} of "
            f"{before.get('of')}, sha256 {short(before.get('sha256'))} then; {after.get('kept')} of {after.get('of')}, "
            f"{short(after.get('sha256'))} now): restore its selection.json, or {AGAIN}"
        )
    plugins_then, plugins_now = recorded.get("imports"), current.get("imports")
    if isinstance(plugins_then, dict) and isinstance(plugins_now, dict):
        by_name = {_plugin_name(spec): digest for spec, digest in plugins_then.items()}
        for spec, digest in plugins_now.items():
            then = by_name.get(_plugin_name(spec))
            if (
                then is not None
                and digest is not None
                and not (isinstance(then, str) and same_plugin(then, digest))
            ):
                raise UserError(
                    f"the plugin {spec} changed after {where} started (sha256 {short(then)} then, {short(digest)} "
                    f"now): restore it, or {AGAIN}"
                )


def compares_teachers(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether both records name their teachers' contents, so that teachers are compared by content
    (and their folder names may differ: a moved teacher)."""
    return isinstance(recorded.get("teachers"), list) and isinstance(current.get("teachers"), list)


def _compare_teachers(before: Any, after: Any, where: str | Path) -> None:
    if not isinstance(before, list) or not isinstance(after, list):
        return
    if len(before) != len(after):
        raise UserError(
            f"{where} started with {len(before)} teacher(s), not {len(after)}: pass the teachers it started "
            f"with, or {AGAIN}"
        )
    for then, now in zip(before, after, strict=True):
        if not isinstance(then, dict) or then.get("sha256") == now["sha256"]:
            continue
        if then.get("file") == now["file"]:
            raise UserError(
                f"the teacher at {now['spec']} was retrained or changed after {where} started (sha256 "
                f"{short(then.get('sha256'))} then, {short(now['sha256'])} now): restore that teacher, or {AGAIN}"
            )
        raise UserError(
            f"the teacher {now['spec']} is not the one {where} started with ({then.get('file')}, sha256 "
            f"{short(then.get('sha256'))}; now {now['file']}, sha256 {short(now['sha256'])}): pass that teacher, "
            f"or {AGAIN}"
        )


def _compare_data(before: Any, after: Any, where: str | Path) -> None:
    if not isinstance(before, dict) or not isinstance(after, dict):
        return
    for split in SPLITS:
        then, now = before.get(split), after.get(split)
        if then is None and now is None:
            continue
        if not isinstance(then, dict) or not isinstance(now, dict):
            raise UserError(
                f"{where} started {'with' if then else 'without'} a {split} split and now reads "
                f"{'one' if now else 'none'}: point --data-dir at the data it started with, or {AGAIN}"
            )
        if then.get("sha256") is None or now.get("sha256") is None:
            continue  # a Dataset kdlab cannot fingerprint
        if (then.get("size"), then["sha256"]) != (now.get("size"), now["sha256"]):
            raise UserError(
                f"the {split} split of {after.get('name')} is not the data {where} started with ({then.get('size')} "
                f"samples, sha256 {short(then['sha256'])} then; {now.get('size')}, {short(now['sha256'])} now): "
                f"point --data-dir at the data it started with, or {AGAIN}"
            )


def _plugin_name(spec: str) -> str:
    return Path(spec).name if spec.endswith(".py") else spec


# --- the teacher's data -----------------------------------------------------------------------------


def check_teacher_data(config: RunConfig, data: dict[str, Any]) -> None:
    """A UserError when a teacher kdlab trained learnt other data than this run reads, where it
    matters:

    - other files: the teacher's record names the same dataset with another ``source_sha256``;
    - the run's validation split (``data.val_split``) holds images its teacher trained on. It does
      not when the teacher held out exactly these images: its record's val fingerprint equals the
      run's (or, for a teacher of an older kdlab, it was trained with the same ``val_split``,
      ``subset`` and ``subset_seed``). Otherwise an epoch chosen on validation would be chosen on
      images the teacher fitted, whose logits are not those of unseen images.
    """
    from kdlab.config import teacher_specs
    from kdlab.runs import load_checkpoint, resolve_checkpoint
    from kdlab.teacher import FOREIGN_PREFIX

    for spec in teacher_specs(config.kd.teacher):
        if spec.startswith(FOREIGN_PREFIX):  # weights kdlab did not train: nothing recorded
            continue
        checkpoint = load_checkpoint(resolve_checkpoint(spec))
        recorded = checkpoint_inputs(checkpoint).get("data")
        recorded = recorded if isinstance(recorded, dict) else {}
        stored = checkpoint.get("config")
        taught = (
            stored.get("data") if isinstance(stored, dict) and isinstance(stored.get("data"), dict) else {}
        )
        if recorded.get("name") == data["name"] and recorded.get("source_sha256") not in (
            None,
            data["source_sha256"],
        ):
            raise UserError(
                f"teacher {spec} was trained on other {data['name']} data than this run reads (sha256 "
                f"{short(recorded['source_sha256'])} of its files, {short(data['source_sha256'])} here): point "
                "--data-dir at the teacher's data, or use a teacher trained on these files"
            )
        if config.data.val_split is None:
            continue
        if isinstance(recorded.get("train"), dict):  # recorded: compare the held-out images themselves
            held_out = recorded.get("val")
            same = isinstance(held_out, dict) and held_out.get("sha256") == (data.get("val") or {}).get(
                "sha256"
            )
        else:
            same = (taught.get("val_split"), taught.get("subset"), taught.get("subset_seed", 0)) == (
                config.data.val_split,
                config.data.subset,
                config.data.subset_seed,
            )
        if not same:
            raise UserError(
                f"the validation split of this run (val_split={config.data.val_split} of {data['name']}) holds "
                f"images its teacher {spec} trained on (it was trained with val_split={taught.get('val_split')}, "
                f"subset={taught.get('subset')}, subset_seed={taught.get('subset_seed', 0)}): an epoch chosen on "
                f"them is chosen on images the teacher fitted; train the teacher with val_split="
                f"{config.data.val_split}, subset={config.data.subset} and subset_seed={config.data.subset_seed}, "
                "or drop --val-split"
            )


# --- the selection a resumed run started with ------------------------------------------------------


def recorded_selection(configs: list[RunConfig], num_samples: int) -> Tensor | None:
    """The kept indices (int64, sorted) of ``data.select`` that a run to be resumed recorded, so that
    it goes on training on the samples it started with, without a new teacher pass (whose ranking may
    differ by a float's rounding on another device): its ``selection.json``, when it holds valid
    indices of the ``num_samples`` training samples and, if the run's checkpoint records the
    selection's sha256, matches it. None when no run of ``configs`` has one (a new run)."""
    from kdlab.runs import RunFolder, load_checkpoint

    for config in configs:
        if not config.data.select or not config.out:
            continue
        run = RunFolder(config.out)
        if not run.last_checkpoint.is_file():
            continue
        record = _read_json(run.path / "selection.json")
        indices = record.get("indices") if isinstance(record, dict) else None
        if not isinstance(indices, list) or not indices or not all(type(i) is int for i in indices):
            continue
        kept = torch.tensor(indices, dtype=torch.int64)
        if kept[0] < 0 or kept[-1] >= num_samples or not bool((kept[1:] > kept[:-1]).all()):
            continue
        try:
            selection = checkpoint_inputs(load_checkpoint(run.last_checkpoint)).get("selection")
        except UserError:  # a damaged checkpoint: its resume says so
            continue
        if isinstance(selection, dict) and selection.get("sha256") != indices_sha256(kept):
            continue  # not the selection the run recorded: computed anew, then compared
        return kept
    return None


def _read_json(path: Path) -> Any:
    """The JSON value in ``path``; None when it is missing or cannot be parsed."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def write_inputs(run: RunFolder, record: dict[str, Any]) -> None:
    """``RUN/inputs.json``."""
    from kdlab.runs import atomic_write_json

    atomic_write_json(run.path / INPUTS_NAME, record)


def summary_sha256(summary: dict[str, Any]) -> str:
    """sha256 of a summary's content (canonical JSON): a run's identity before run ids."""
    return hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode()).hexdigest()
