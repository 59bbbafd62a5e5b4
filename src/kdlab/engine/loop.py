"""The one training loop: teacher frozen, students trained, test set every epoch, checkpoints, resume.

``train(config)`` runs one student (a teacher is trained the same way, with the 'ce' loss and no
teacher). ``train_lockstep(configs)`` runs several students that share the data order and the
teacher: each batch goes through the teacher once and through every student, each with its own
loss, optimiser and run folder; a standalone run is the one-student case of the same loop. A
student whose loss becomes NaN or inf stops a standalone run; in a group it is recorded as diverged
and the others train on without it (:meth:`Trainer.drop_diverged`).

Read :meth:`Trainer.fit` and :meth:`Trainer.train_epoch` top to bottom; the step itself is
:func:`kdlab.engine.step.train_step`, the epoch's running sums :class:`kdlab.engine.state.EpochState`,
stopping :mod:`kdlab.engine.stop`, and one student's model, optimiser and checkpoint
:mod:`kdlab.engine.student`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kdlab import distributed
from kdlab.cache import CacheDecision, TeacherLogitCache, decide_cache, open_logit_cache
from kdlab.config import RunConfig, loss_settings
from kdlab.data import Batch, DatasetSplits, TensorData, apply_label_noise, load_dataset, make_loader
from kdlab.data.loader import check_train_batches
from kdlab.data.select import select_training_set
from kdlab.device import World, autocast_context, current_world, resolve_device
from kdlab.engine.stacked import StackedStudents, stack_models, stacks
from kdlab.engine.state import EpochState
from kdlab.engine.step import (
    OneStudent,
    StepTeacher,
    TrainStep,
    Unit,
    check_feature_losses,
    graph_backend,
    live_teacher_logits,
    set_units_lr,
)
from kdlab.engine.stop import NotFinite, StopRequests, first_non_finite, interrupted, weights_finite
from kdlab.engine.student import (
    Student,
    check_group,
    check_model_takes,
    check_resume,
    lr_at,
    make_optimizer,
    stack_key,
    tensorboard_writer,
)
from kdlab.errors import UserError
from kdlab.identity import (
    INPUTS_FORMAT,
    check_teacher_data,
    checkpoint_inputs,
    new_run_id,
    recorded_selection,
    teacher_identity,
    write_inputs,
)
from kdlab.losses import loss_spec, needs_teacher
from kdlab.models import batch_needs, count_parameters, create_model
from kdlab.models.features import check_features, set_feature_layer
from kdlab.plugins import import_plugins, plugin_hashes
from kdlab.runs import (
    DIVERGED,
    FINISHED,
    RunFolder,
    atomic_torch_save,
    atomic_write_json,
    environment,
    load_checkpoint,
)
from kdlab.teacher import check_teacher, load_teacher, teacher_files


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def load_data(config: RunConfig, world: World) -> tuple[DatasetSplits, Tensor | None, dict[str, Any] | None]:
    """The dataset (validation images held out, then label noise applied to the training images), with
    its identity in ``splits.identity`` (kdlab.identity); returns (splits, clean training labels, noise
    record)."""
    data = config.data
    splits = load_dataset(
        data.name,
        data.data_dir,
        subset=data.subset,
        test_subset=data.test_subset,
        subset_seed=data.subset_seed,
        download=data.download and world.is_main,
        image_size=data.image_size,
        val_split=data.val_split,
        fingerprint=True,
    )
    if not data.label_noise:
        return splits, None, None
    if not isinstance(splits.train, TensorData):
        raise UserError(
            f"--label-noise is supported for in-memory datasets, not {data.name}: drop --label-noise"
        )
    clean = splits.train.labels
    noisy, flipped = apply_label_noise(
        clean, splits.num_classes, data.label_noise, data.noise_seed, dataset=data.name
    )
    splits.train = TensorData(splits.train.images, noisy)
    record = {
        "spec": data.label_noise,
        "noise_seed": data.noise_seed,
        "realised_rate": len(flipped) / len(clean),
        "flipped_indices": flipped.tolist(),
    }
    return splits, clean, record


class Trainer:
    """Shared state of one lockstep group: device, data, loaders, the teacher and the identity of
    what the group reads (``inputs``, kdlab.identity). ``resume``: the runs are to be continued, so a
    data.select run trains on the selection it recorded. ``teacher_passes``: how many times the
    teacher would go over the training images in the work this group belongs to (``kd.cache:
    auto``; default this group's epochs)."""

    def __init__(
        self, configs: list[RunConfig], resume: bool = False, teacher_passes: int | None = None
    ) -> None:
        self.configs = configs
        lead = configs[0]
        # Under torchrun this joins the process group and takes this process's GPU (cuda:LOCAL_RANK).
        self.device = distributed.init_from_env(resolve_device(lead.device))
        self.world = current_world()
        self.stop = StopRequests(self.world, self.device)  # SIGTERM/SIGINT ask the loop to stop
        if self.world.size > 1 and self.device.type != "cuda" and any(c.sync_bn for c in configs):
            raise UserError(
                "sync_bn needs CUDA: PyTorch's SyncBatchNorm has no CPU kernel; drop --set sync_bn=true "
                "(each process then normalises with its own batch statistics)"
            )
        if lead.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":  # static shapes: cuDNN times its kernels once per shape
            torch.backends.cudnn.benchmark = not lead.deterministic
        self.splits, self.clean_labels, self.noise_record = load_data(lead, self.world)
        for split in ("train", "val", "test"):  # once, so that every loader below shares one device copy
            if isinstance(getattr(self.splits, split), TensorData):
                setattr(self.splits, split, getattr(self.splits, split).to(self.device))
        # A few test images: the teacher and the students must take them before anything is written.
        self.sample_inputs = next(
            iter(make_loader(self.splits, "test", 4, train=False, device=self.device, num_workers=0))
        ).inputs
        num_classes = self.splits.num_classes
        self.teacher = (
            load_teacher(lead.kd.teacher, self.device, lead.kd.ensemble, num_classes, lead.data.name)
            if lead.kd.teacher
            else None
        )
        if self.teacher is not None:
            check_teacher(self.teacher, lead.kd.teacher, self.sample_inputs, lead.data.name, num_classes)
            check_teacher_data(lead, self.splits.identity)  # other files, or validation images it fitted
            if lead.channels_last:
                self.teacher = self.teacher.to(memory_format=torch.channels_last)
        # A teacher-chosen fraction of the training set (data.select), before any loader is built.
        teacher_fn = self.live_teacher_logits if self.teacher is not None else None
        recorded = recorded_selection(configs, len(self.splits.train)) if resume else None
        self.selection = select_training_set(lead.data, self.splits, teacher_fn, self.device, recorded)
        check_train_batches(  # every batch, the epoch's last one too, as large as the losses need
            len(self.splits.train), lead.optim.batch_size, self.world.size,
            [(loss_spec(c.kd.loss).min_batch, loss_spec(c.kd.loss).batch_need) for c in configs],
        )  # fmt: skip
        loader_args = {
            "device": self.device,
            "num_workers": lead.data.num_workers,
            "channels_last": lead.channels_last,
        }
        self.train_loader = make_loader(
            self.splits, "train", lead.optim.batch_size, train=True, seed=lead.seed, augment=lead.data.augment,
            rank=self.world.rank, world_size=self.world.size, **loader_args,
        )  # fmt: skip
        eval_batch = max(256, 2 * lead.optim.batch_size)
        self.test_loader = make_loader(self.splits, "test", eval_batch, train=False, **loader_args)
        self.val_loader = (
            make_loader(self.splits, "val", eval_batch, train=False, **loader_args)
            if self.splits.val is not None
            else None
        )
        self.clean_train_loader = make_loader(self.splits, "train", eval_batch, train=False, **loader_args)
        self.left_out_loader = (  # the training samples data.select left out: the official code's valid loader
            make_loader(self.splits, "left_out", eval_batch, train=False, **loader_args)
            if self.splits.left_out is not None and lead.data.eval_left_out
            else None
        )
        self.teacher_needed = any(needs_teacher(config.kd.loss) for config in configs)
        self.teacher_features_needed = any("teacher_features" in loss_spec(c.kd.loss).reads for c in configs)
        check_feature_losses(configs, self.teacher, self.world.size, self.sample_inputs)
        if self.teacher is not None and lead.compile:  # the teacher's forward is most of a KD step
            self.teacher = torch.compile(self.teacher)
        self.logit_cache: TeacherLogitCache | None = None
        self.step: TrainStep | None = None  # made by the first epoch (train_step_for)
        self.step_students: list[int] = []
        self.stack_reasons: set[tuple[str, str]] = set()  # said once each (make_units)
        # kd.cache: auto decides from the teacher passes planned (a sweep gives its total) against
        # the views the cache holds (kdlab.cache.decide_cache); printed once, recorded in config.yaml.
        self.cache_decision = decide_cache(
            lead, self.train_loader, self.splits.num_classes, self.teacher is not None and self.teacher_needed,
            self.teacher_features_needed, self.world.size, teacher_passes or lead.optim.epochs,
        )  # fmt: skip
        if self.cache_decision is not None and lead.kd.cache == "auto" and resume:
            self.cache_decision = kept_cache_decision(configs, self.cache_decision)
        if self.cache_decision is not None and lead.kd.cache == "auto" and self.world.is_main:
            print(
                f"teacher-logit cache (kd.cache: auto): {'on' if self.cache_decision.use else 'off'}: "
                f"{self.cache_decision.reason}"
            )
        if self.cache_decision is not None and self.cache_decision.use:
            self.logit_cache = open_logit_cache(
                lead, self.train_loader, self.teacher, self.live_teacher_logits, self.splits.num_classes,
                self.device, world_size=self.world.size, batch_size=eval_batch,
            )  # fmt: skip
        selection = None
        if self.selection is not None:  # its indices are in selection.json; the record holds their hash
            selection = {key: self.selection[key] for key in ("select", "kept", "of", "sha256")}
        self.inputs = {  # what every student of the group reads; each adds its run id and plugins
            "teachers": teacher_identity(lead.kd.teacher),
            "data": self.splits.identity,
            "selection": selection,
            "cache": self.logit_cache.identity if self.logit_cache is not None else None,
        }

    # -- teacher -----------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        # A method, not a lambda stored on self: that made a reference cycle, and DataLoader workers
        # freed by the cyclic garbage collector were measured to take 5 s each to shut down.
        return autocast_context(self.configs[0], self.device)

    def teacher_logits(self, batch: Batch) -> Tensor:
        """float32 ``[B, K]`` teacher logits of a training-split batch: from the cache when there is one."""
        if self.logit_cache is not None:
            return self.logit_cache.lookup(batch.indices, batch.aug)
        return self.live_teacher_logits(batch.inputs)

    def step_teacher(self) -> StepTeacher:
        """The training step's teacher: the cache, the live teacher, or none when no student reads one."""
        autocast = functools.partial(autocast_context, self.configs[0], self.device)
        if not self.teacher_needed:
            return StepTeacher(None, None, autocast)
        if self.teacher_features_needed:  # features come from the live teacher only, its logits with them
            return StepTeacher(self.teacher, None, autocast, features=True)
        return StepTeacher(self.teacher if self.logit_cache is None else None, self.logit_cache, autocast)

    def cache_rows(self, batch: Batch) -> Tensor | None:
        """The cache rows of a training batch, on the cache's device (None without a cache)."""
        if self.logit_cache is None or not self.teacher_needed or self.teacher_features_needed:
            return None
        indices = batch.device_indices if batch.device_indices is not None else batch.indices
        return self.logit_cache.rows(indices, batch.aug)

    def live_teacher_logits(self, inputs: Tensor) -> Tensor:
        """The frozen teacher's float32 logits; cloned out of inference mode so autograd may read them."""
        return live_teacher_logits(self.teacher, inputs, self.autocast)

    # -- students ----------------------------------------------------------------------------

    def build_student(self, config: RunConfig, resume: bool, overwrite: bool) -> Student:
        """A student ready to train, restored from ``last.pt`` when resuming. Writes nothing: its run
        folder is taken, cleared (``--overwrite``) and written when :meth:`fit` starts."""
        if not config.out:
            raise UserError("no output folder: pass --out RUN")
        run = RunFolder(config.out)
        protected = teacher_files(config.kd.teacher)
        can_resume = distributed.main_process_decides(lambda: run.check_out(resume, overwrite, protected))
        torch.manual_seed(config.seed)  # the same initial weights standalone or in lockstep
        splits = self.splits
        model = create_model(
            config.model, splits.num_classes, splits.in_channels, splits.image_size, splits.input_shape
        )
        model = model.to(self.device)
        check_model_takes(model, self.sample_inputs, config, splits.num_classes)
        check_train_batches(
            len(splits.train), config.optim.batch_size, self.world.size, batch_needs(model, config.model)
        )
        set_feature_layer(model, config.features)
        if config.features is not None or "student_features" in loss_spec(config.kd.loss).reads:
            check_features(model, self.sample_inputs, f"--model {config.model}")
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        data_info = {
            "num_classes": splits.num_classes,
            "in_channels": splits.in_channels,
            "image_size": splits.image_size,
            "input_shape": list(splits.input_shape),
            # What a sample is made of, as the model receives it: float32 (images after normalisation,
            # float features) or int64 (token ids); so that an exporter can build an example input.
            "input_dtype": "int64" if self.sample_inputs.dtype == torch.int64 else "float32",
            # The input normalisation, so that kdlab.export.load_student needs no dataset files.
            "mean": list(splits.mean or ()),
            "std": list(splits.std or ()),
        }
        inputs = {
            "format": INPUTS_FORMAT,
            "run_id": new_run_id(),
            **self.inputs,
            "imports": plugin_hashes(config.imports),
        }
        student = Student(
            config, run, model, make_optimizer(model, config), module=model, data_info=data_info,
            resume=resume, overwrite=overwrite, inputs=inputs,
        )  # fmt: skip
        if can_resume:
            student.restore(self.device)
        if config.sync_bn and self.world.size > 1:
            student.module = nn.SyncBatchNorm.convert_sync_batchnorm(student.module)
        if self.world.size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            student.module = nn.parallel.DistributedDataParallel(student.module, device_ids=device_ids)
        if config.compile:
            student.module = torch.compile(student.module)
        return student

    def make_units(self, students: list[Student]) -> list[Unit]:
        """Students that share architecture and optimiser settings (``stack_key``) as stacked units
        where ``stack`` allows it (:func:`kdlab.engine.stacked.stacks`), every other one alone."""
        lead = self.configs[0]
        if not stacks(lead.stack, self.device) or self.world.size > 1:
            return [OneStudent(student, slot) for slot, student in enumerate(students)]
        by_key: dict[str, list[int]] = {}
        for slot, student in enumerate(students):
            by_key.setdefault(repr(stack_key(student.config)), []).append(slot)
        units: list[Unit] = []
        for slots in by_key.values():
            members = [students[slot] for slot in slots]
            stacked, reason = None, None
            if len(members) > 1:
                stacked, reason = stack_models(
                    [member.model for member in members], self.probe(), lead.channels_last
                )
            if stacked is not None:
                units.append(StackedStudents(members, slots, stacked))
                continue
            said = (members[0].config.model, reason)
            if reason is not None and self.world.is_main and said not in self.stack_reasons:
                self.stack_reasons.add(said)  # once: the units are made again when a student diverges
                print(
                    f"kdlab: {members[0].config.model} students not stacked ({reason}): lockstep instead",
                    file=sys.stderr,
                )
            units += [OneStudent(student, slot) for slot, student in zip(slots, members, strict=True)]
        return units

    def probe(self) -> Tensor:
        """A 2-sample input batch of the training data's shape (to check that students stack): random
        floats, or for integer inputs (token ids) the first test samples."""
        if not self.sample_inputs.is_floating_point():
            return self.sample_inputs[:2]
        size = (2, *self.splits.input_shape)
        probe = torch.randn(size, generator=torch.Generator().manual_seed(0)).to(self.device)
        return probe.contiguous(memory_format=torch.channels_last) if self.configs[0].channels_last else probe

    def train_step_for(self, students: list[Student]) -> TrainStep:
        """The group's step (units, epoch state and, on CUDA, its graph): made once, kept for every epoch."""
        if self.step is None or self.step_students != [id(student) for student in students]:
            lead = self.configs[0]
            autocast = functools.partial(autocast_context, lead, self.device)  # no reference to self
            self.step_students = [id(student) for student in students]
            units = self.make_units(students)
            self.step = TrainStep(
                units, EpochState(len(students), self.device), self.step_teacher(), autocast,
                lead.optim.batch_size, graph_backend(self.device, self.world.size, lead.cuda_graph),
            )  # fmt: skip
        return self.step

    @contextlib.contextmanager
    def started(self, students: list[Student]) -> Iterator[None]:
        """Hold the students' run folders while the block trains them (see :meth:`start`)."""
        with contextlib.ExitStack() as held:
            for student in students:
                distributed.main_process_decides(lambda student=student: self.start(student, held))
            yield

    def start(self, student: Student, held: contextlib.ExitStack) -> None:
        """Take the student's run folder (rank 0): its lock, held in ``held`` until the run ends, the
        same checks as before under the lock, then clear it (``--overwrite``) and write the marker,
        config.yaml, label noise, the data selection, restored metrics rows and the TensorBoard writer."""
        config, run = student.config, student.run
        held.enter_context(run.lock())
        protected = teacher_files(config.kd.teacher)
        if run.check_out(student.resume, student.overwrite, protected) != student.resumed:
            raise UserError(f"--out {run.path} changed while the run was starting: run the command again")
        run.remove_temporaries()  # left by a process killed mid-write (kill -9)
        if student.overwrite:
            run.clear()
        run.write_marker()
        if student.start_epoch < config.optim.epochs:  # more --epochs (or a diverged run given more epochs)
            run.summary_path.unlink(missing_ok=True)  # unfinished until they are done
        if student.resumed:
            run.write_metrics(student.metrics)  # the rows the checkpoint holds, whatever the file held
        # The first start is kept across resumes: a report checks that its protocol precedes it.
        started = run.run_info().get("started_at") if student.resumed else None
        run_info = {**environment(), "world_size": self.world.size, "device": str(self.device)}
        run_info["started_at"] = started or datetime.now(timezone.utc).isoformat(timespec="seconds")
        if config.imports:  # the plugins' code is an input of the run too
            run_info["imports"] = plugin_hashes(config.imports)
        run_info["global_batch_size"] = config.optim.batch_size * self.world.size
        if self.cache_decision is not None:
            run_info["kd_cache"] = self.cache_decision.record(config.kd.cache)
        run.write_config(config, run_info)
        write_inputs(run, student.inputs)
        if self.noise_record is not None:
            atomic_write_json(run.path / "label_noise.json", self.noise_record)
        if self.selection is not None:
            atomic_write_json(run.path / "selection.json", self.selection)
        student.writer = tensorboard_writer(config, run)

    # -- the loop ----------------------------------------------------------------------------

    def fit(self, students: list[Student], record_diverged: bool = True) -> list[dict[str, Any]]:
        """Train ``students`` to their last epoch; their summaries, in their order.

        A student whose loss (or weights) becomes NaN or inf stops a single run (``record_diverged``
        False: :class:`~kdlab.engine.stop.NonFiniteLoss`); in a group it is recorded as diverged
        (:meth:`drop_diverged`) and the others train on without it, as if it had never been there.
        """
        start = time.perf_counter()
        lead = self.configs[0]
        starts = {(student.start_epoch, (student.progress or {}).get("step", 0)) for student in students}
        if len(starts) > 1:
            raise UserError("lockstep students are at different epochs: resume them separately")
        first_epoch = starts.pop()[0]
        training = list(students)
        diverged: dict[int, dict[str, Any]] = {}  # id(student) -> its summary
        with self.stop.listening():
            for epoch in range(first_epoch, lead.optim.epochs):
                for student, summary in self.train_epoch(training, epoch, record_diverged):
                    diverged[id(student)] = summary
                training = [student for student in training if id(student) not in diverged]
                signum = self.stop.agreed()
                if signum is not None:
                    raise interrupted(training, signum, f"after epoch {epoch + 1}")
                if not training:
                    break
        finished = self.finish(training, time.perf_counter() - start) if training else []
        for student in training:
            if student.writer is not None:
                student.writer.close()
        by_id = {id(student): summary for student, summary in zip(training, finished, strict=True)}
        return [diverged.get(id(student)) or by_id[id(student)] for student in students]

    def train_epoch(
        self, students: list[Student], epoch: int, record_diverged: bool = True
    ) -> list[tuple[Student, dict[str, Any]]]:
        """One epoch of ``students``: their steps, then each one's metrics row and checkpoint.
        Returns the students that diverged in it, each with its summary (see :meth:`drop_diverged`)."""
        lead = self.configs[0]
        epoch_start = time.perf_counter()
        step = self.train_step_for(students)
        state = step.state
        self.train_loader.set_epoch(epoch)
        set_units_lr(step.units, lambda student: lr_at(student.config, epoch))
        for unit in step.units:
            unit.train()
        state.begin([student.progress for student in students], self.world)
        for student in students:
            student.progress = None  # used once: the next epoch starts from zero
        bar = tqdm(
            self.train_loader, desc=f"epoch {epoch + 1}/{lead.optim.epochs}", leave=False,
            disable=None if lead.progress and self.world.is_main else True, unit="batch",
        )  # fmt: skip
        for index, batch in enumerate(bar):
            if index < state.first_step:
                continue  # replays the epoch's fixed order up to where a mid-epoch checkpoint stopped
            step(batch.inputs, batch.targets, self.cache_rows(batch), epoch)
            state.seen += len(batch.targets)
            if (index + 1) % self.stop.check_every == 0 and index + 1 < len(self.train_loader):
                signum = self.stop.agreed()
                if signum is not None:
                    self.stop_mid_epoch(students, epoch, index + 1, state, signum, record_diverged)
        for unit in step.units:
            unit.publish()  # each student's own model and optimiser: evaluated and saved below
        count = self.world.all_reduce(torch.tensor(float(state.seen), device=self.device)).item()
        train_time = time.perf_counter() - epoch_start  # after .item(), so the device's queue is done too
        # Rows of the students still finite; nothing is saved before every student is checked, so that
        # a single run that stops here keeps its last finite checkpoint.
        bad = self.not_finite(students, state, epoch, len(self.train_loader))
        rows: dict[int, dict[str, Any]] = {}
        for index, student in enumerate(students):
            if index in bad:
                continue
            totals = state.totals(index, self.world)
            values = dict(zip(totals, (torch.stack(list(totals.values())) / count).tolist(), strict=True))
            test = self.evaluate(student.module, self.test_loader)
            row = {"epoch": epoch + 1, "lr": lr_at(student.config, epoch)}
            row |= {f"train_{name}": value for name, value in values.items() if name != "correct"}
            row |= {
                "train_acc_running": 100.0 * values["correct"],
                "test_acc": test["acc"],
                "test_loss": test["loss"],
            }
            if self.val_loader is not None:  # held-out training images: choose epochs here, never on test
                val = self.evaluate(student.module, self.val_loader)
                row |= {"val_acc": val["acc"], "val_loss": val["loss"]}
            if self.left_out_loader is not None:  # unaugmented, against the run's training labels
                left_out = self.evaluate(student.module, self.left_out_loader)
                row |= {"left_out_acc": left_out["acc"], "left_out_loss": left_out["loss"]}
            row |= {
                "epoch_time_s": time.perf_counter() - epoch_start,
                "train_images_per_s": count / train_time,
            }
            rows[index] = row
        dropped = self.drop_diverged(students, bad, record_diverged)
        for index, row in rows.items():
            self.end_epoch(students[index], row)
        return dropped

    def stop_mid_epoch(
        self, students: list[Student], epoch: int, step: int, state: EpochState, signum: int, record: bool
    ) -> None:
        """Stop after ``step`` steps of ``epoch`` (0-based): the students that diverged are recorded
        (or a single run stops with its NonFiniteLoss), the others save a mid-epoch ``last.pt``."""
        for unit in self.step.units:
            unit.publish()  # each student's weights, checked before its checkpoint
        bad = self.not_finite(students, state, epoch, step)
        self.drop_diverged(students, bad, record)
        going_on = [student for index, student in enumerate(students) if index not in bad]
        self.save_mid_epoch(students, epoch, step, state, going_on)
        raise interrupted(going_on, signum, f"at epoch {epoch + 1}, step {step}")

    def not_finite(
        self, students: list[Student], state: EpochState, epoch: int, steps: int
    ) -> dict[int, NotFinite]:
        """``{index: NotFinite}`` of the students whose loss was NaN or inf in this epoch, or whose
        (published) weights are now after ``steps`` steps of it though every loss was finite (a NaN
        gradient of a finite loss at the last step). A collective: every rank calls it."""
        bad = first_non_finite(students, state, self.world, epoch)
        for index, student in enumerate(students):
            if index not in bad and not weights_finite(student.model):
                bad[index] = NotFinite(epoch, steps - 1, weights=True)
        return bad

    def drop_diverged(
        self, students: list[Student], bad: dict[int, NotFinite], record: bool
    ) -> list[tuple[Student, dict[str, Any]]]:
        """The students of ``bad`` (by index), each recorded as diverged: ``summary.json`` with
        ``"status": "diverged"`` (:meth:`diverged_summary`), its ``last.pt`` and metrics rows left as
        the last finite epoch wrote them; a single run (``record`` False) raises instead.

        The others are untouched by a diverged student: its parameters, optimiser state and loss sums
        are its own (in a stacked unit, its slice of each stacked tensor, which every stacked layer and
        the elementwise fused optimiser keep apart), so its NaN never reaches them; the next epoch
        rebuilds the group's step without it (:meth:`train_step_for`).
        """
        if bad and not record:
            index, where = next(iter(bad.items()))
            raise where.error(students[index])
        dropped = []
        for index, where in bad.items():
            student = students[index]
            summary = self.diverged_summary(student, where)
            if self.world.is_main:
                student.run.write_summary(summary)
                print(
                    f"kdlab: {where.where(student)}; recorded as diverged (summary.json), its last.pt kept; "
                    "the rest of its group trains on",
                    file=sys.stderr,
                )
            if student.writer is not None:
                student.writer.close()
            dropped.append((student, summary))
        return dropped

    def diverged_summary(self, student: Student, where: NotFinite) -> dict[str, Any]:
        """The summary of a student that diverged: what it is, where and why it stopped, its last finite
        epoch and checkpoint. ``test_acc_last`` is None: it has no final weights, so no report or claim
        counts it as a result (``kdlab.analysis.records``)."""
        config = student.config
        last_row = student.metrics[-1] if student.metrics else {}
        return {
            "status": DIVERGED,
            **summary_identity(config),
            "reason": where.reason,
            "diverged_epoch": where.epoch + 1,
            "diverged_step": where.step + 1,
            "last_finite_epoch": len(student.metrics),
            "last_checkpoint": "checkpoints/last.pt" if student.run.last_checkpoint.is_file() else None,
            "test_acc_last": None,
            "test_acc_last_finite": last_row.get("test_acc"),
            "epochs": config.optim.epochs,
            "seed": config.seed,
            "world_size": self.world.size,
        }

    def save_mid_epoch(
        self,
        students: list[Student],
        epoch: int,
        step: int,
        state: EpochState,
        saved: list[Student] | None = None,
    ) -> None:
        """``last.pt`` of each student (of ``saved``, default all) after ``step`` steps of ``epoch``
        (0-based), with the running sums of all ranks, so that ``--resume`` continues the epoch at the
        next step. The units have published their students' state (:meth:`stop_mid_epoch`)."""
        chosen = {id(student) for student in (students if saved is None else saved)}
        for student, progress in zip(students, state.progress(step, self.world), strict=True):
            if self.world.is_main and id(student) in chosen:
                atomic_torch_save(student.checkpoint(epoch, progress), student.run.last_checkpoint)

    def end_epoch(self, student: Student, row: dict[str, Any]) -> None:
        epoch = row["epoch"]
        improved = row["test_acc"] > student.test_acc_best
        if improved:
            student.test_acc_best, student.best_epoch = row["test_acc"], epoch
        student.metrics.append(row)
        if not self.world.is_main:
            return
        # Rows first, last.pt last: if a write fails, last.pt still holds the previous epoch, whose
        # --resume redoes this one; the checkpoint carries the rows too (see Student.restore).
        student.run.write_metrics(student.metrics)
        checkpoint = student.checkpoint(epoch)
        if improved:
            atomic_torch_save(checkpoint, student.run.best_checkpoint)
        atomic_torch_save(checkpoint, student.run.last_checkpoint)
        if student.writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    student.writer.add_scalar(key, value, epoch)
        if student.config.progress:
            tqdm.write(
                f"{student.run.path.name}: epoch {epoch}/{student.config.optim.epochs} loss {row['train_loss']:.4f} "
                f"test acc {row['test_acc']:.2f}% ({row['epoch_time_s']:.1f}s)"
            )

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        """Top-1 accuracy (%) and mean cross-entropy of ``model`` over ``loader`` (eval mode)."""
        was_training = model.training
        model.eval()
        correct = torch.zeros((), device=self.device)
        loss = torch.zeros((), device=self.device, dtype=torch.float64)
        count = 0
        for batch in loader:
            with self.autocast():
                logits = model(batch.inputs).float()
            correct += (logits.argmax(dim=1) == batch.targets).sum()
            loss += nn.functional.cross_entropy(logits, batch.targets, reduction="sum").double()
            count += len(batch.targets)
        model.train(was_training)
        return {"acc": 100.0 * correct.item() / count, "loss": loss.item() / count}

    @torch.no_grad()
    def final_train_metrics(self, students: list[Student]) -> list[dict[str, float]]:
        """One pass over the clean (unaugmented) training set: accuracy and, with a teacher, the mean over
        images of ``||z_s - z_t||_2`` (``logit_distance``) and of its mean-centred form
        ``||(z_s - mean z_s) - (z_t - mean z_t)||_2`` (what KL at tau = inf matches), and the RMS
        ``sqrt(mean over images and classes of (z_s - z_t)^2)`` (the square root of the MSE loss)."""
        correct = [torch.zeros((), device=self.device) for _ in students]
        correct_clean = [torch.zeros((), device=self.device) for _ in students]
        zero = torch.zeros(3, device=self.device, dtype=torch.float64)
        distance = [zero.clone() for _ in students]  # sums of: norm, centred norm, squares
        for student in students:
            student.module.eval()
        count = 0
        for batch in self.clean_train_loader:
            teacher_logits = self.teacher_logits(batch) if self.teacher is not None else None
            clean = (
                self.clean_labels[batch.indices.cpu()].to(self.device)
                if self.clean_labels is not None
                else None
            )
            for index, student in enumerate(students):
                with self.autocast():
                    logits = student.module(batch.inputs).float()
                predicted = logits.argmax(dim=1)
                correct[index] += (predicted == batch.targets).sum()
                if clean is not None:
                    correct_clean[index] += (predicted == clean).sum()
                if teacher_logits is not None:
                    gap = (logits - teacher_logits).double()
                    centred = gap - gap.mean(dim=1, keepdim=True)
                    distance[index] += torch.stack(
                        [gap.norm(dim=1).sum(), centred.norm(dim=1).sum(), gap.square().sum()]
                    )
            count += len(batch.targets)
        results = []
        for index in range(len(students)):
            result = {"train_acc": 100.0 * correct[index].item() / count}
            if self.clean_labels is not None:
                result["train_acc_clean_labels"] = 100.0 * correct_clean[index].item() / count
            if self.teacher is not None:
                norm, centred, squares = distance[index].tolist()
                result["logit_distance"] = norm / count
                result["logit_distance_centred"] = centred / count
                result["logit_distance_rms"] = math.sqrt(squares / (count * self.splits.num_classes))
            results.append(result)
        return results

    def finish(self, students: list[Student], wall_time_s: float) -> list[dict[str, Any]]:
        summaries = []
        for student, train_metrics in zip(students, self.final_train_metrics(students), strict=True):
            config = student.config
            last = student.metrics[-1] if student.metrics else {}
            summary = {
                "status": FINISHED,
                **summary_identity(config),
                "test_acc_last": last.get("test_acc"),
                "test_acc_best": student.test_acc_best,
                "best_epoch": student.best_epoch,
                **train_metrics,
                "epochs": config.optim.epochs,
                "seed": config.seed,
                "wall_time_s": wall_time_s,
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "num_params": count_parameters(student.model),
                "train_images": len(self.splits.train),
                "world_size": self.world.size,
                "inputs": student.inputs,  # its run id (a report counts a copied folder once) and inputs
            }
            if self.splits.val is not None:
                summary |= {"val_images": len(self.splits.val), **best_on_val(student.metrics)}
            if self.left_out_loader is not None:
                summary |= {
                    "left_out_images": len(self.splits.left_out),
                    "left_out_acc_last": last.get("left_out_acc"),
                }
            if self.noise_record is not None:
                summary["label_noise"] = config.data.label_noise
                summary["label_noise_realised_rate"] = self.noise_record["realised_rate"]
            if self.world.is_main:
                student.run.write_summary(summary)
            summaries.append(summary)
        return summaries


def summary_identity(config: RunConfig) -> dict[str, Any]:
    """What every summary says the run was: model, dataset, loss, the hyperparameters the loss reads
    (a CE run has none) and the teacher."""
    return {
        "model": config.model,
        "dataset": config.data.name,
        "loss": config.kd.loss,
        "hyperparameters": {k: _json_float(v) for k, v in loss_settings(config.kd).items()},
        "teacher": config.kd.teacher,
    }


def best_on_val(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """From the epochs' rows: the last and best validation accuracy, the best one's epoch (the first on a
    tie) and the test accuracy at that epoch: what a run reports when its epoch is chosen on validation."""
    rows = [row for row in metrics if "val_acc" in row]
    if not rows:
        return {}
    best = max(rows, key=lambda row: row["val_acc"])
    return {
        "val_acc_last": rows[-1]["val_acc"],
        "val_acc_best": best["val_acc"],
        "val_best_epoch": best["epoch"],
        "test_acc_at_best_val": best["test_acc"],
    }


def kept_cache_decision(configs: list[RunConfig], decision: CacheDecision) -> CacheDecision:
    """A resumed run keeps the teacher logits it started with: ``kd.cache: auto`` takes the decision
    recorded in its config.yaml (``run_info.kd_cache``; a run recorded before ``auto`` existed read a
    live teacher, the default then), not a new one that a different plan would make."""
    for config in configs:
        run = RunFolder(config.out or "")
        if not (config.out and run.last_checkpoint.is_file() and run.config_path.is_file()):
            continue  # starts now: the new decision holds
        recorded = run.run_info().get("kd_cache")
        used = bool(recorded.get("used")) if isinstance(recorded, dict) else False
        if used != decision.use:
            return CacheDecision(
                used,
                f"kept from the start of {config.out} (its record: {'on' if used else 'off'}); the plan now "
                f"would say {'on' if decision.use else 'off'}: {decision.reason}",
                decision.views_needed,
                decision.views_cached,
            )
        return decision
    return decision


def train_lockstep(
    configs: list[RunConfig],
    resume: bool = False,
    overwrite: bool = False,
    record_diverged: bool = True,
    teacher_passes: int | None = None,
) -> list[dict[str, Any]]:
    """Train several students on one data order and one teacher pass per batch; a summary each.

    Finished runs (with ``resume``) are returned from their summary.json without training; so are
    runs that diverged (``"status": "diverged"``). ``record_diverged``: a student whose loss becomes
    NaN or inf is recorded as diverged and the others finish (False: it stops the group with a
    :class:`~kdlab.engine.stop.NonFiniteLoss`, as a single run does). ``teacher_passes``: see
    :class:`Trainer` (a sweep passes the total of the groups that share the teacher).
    """
    import_plugins([spec for config in configs for spec in config.imports])  # e.g. in a sweep's worker
    check_group(configs)
    outs = [os.path.realpath(config.out) for config in configs if config.out]
    if len(set(outs)) < len(outs):
        raise UserError(f"two runs of one group write --out {outs[0]}: give each run its own folder")
    pending = []
    summaries: dict[int, dict[str, Any]] = {}
    data: dict[str, dict[str, Any]] = {}  # data identities by data settings: loaded once per group
    for index, config in enumerate(configs):
        run = RunFolder(config.out or "")
        if resume and config.out and not overwrite:
            run.check_files()  # a finished run is reused as it is: its files must still be kdlab's kind
        summary = run.summary() if resume and config.out and run.is_finished() and not overwrite else None
        if summary is not None and run.last_checkpoint.is_file():  # finished, but as asked now? and read now?
            checkpoint = load_checkpoint(run.last_checkpoint, resume=True)
            inputs = finished_inputs(config, data) if checkpoint_inputs(checkpoint) else None
            check_resume(checkpoint, config, run, inputs)
        if summary is not None and summary.get("epochs") == config.optim.epochs:
            summaries[index] = summary  # finished as asked (more --epochs: continued below)
        else:
            pending.append(index)
    if pending:
        trainer = Trainer(
            [configs[i] for i in pending], resume=resume and not overwrite, teacher_passes=teacher_passes
        )
        students = [trainer.build_student(configs[i], resume, overwrite) for i in pending]
        with trainer.started(students):  # every input checked: now the run folders are taken and written
            results = trainer.fit(students, record_diverged)
        for index, summary in zip(pending, results, strict=True):
            summaries[index] = summary
    return [summaries[index] for index in range(len(configs))]


def finished_inputs(config: RunConfig, data: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a finished run would read now, to compare with its record before it is reused: its
    teachers, plugins and data (loaded once per data setting into ``data``). Not its selection,
    which needs a teacher pass: with the same teachers, data and settings it is the same."""
    key = repr(config.data)
    if key not in data:
        data[key] = load_data(config, current_world())[0].identity
    return {
        "format": INPUTS_FORMAT,
        "teachers": teacher_identity(config.kd.teacher),
        "data": data[key],
        "imports": plugin_hashes(config.imports),
    }


def train(
    config: RunConfig, resume: bool = False, overwrite: bool = False, record_diverged: bool = False
) -> dict[str, Any]:
    """Train one model (teacher or student) into ``config.out``; returns its summary. A loss that
    becomes NaN or inf stops it with :class:`~kdlab.engine.stop.NonFiniteLoss` (its last finite
    ``last.pt`` kept, no summary: fix and ``--resume``, or start again), unless ``record_diverged``
    (a student of a sweep: recorded as diverged in its summary, like a student of a group)."""
    return train_lockstep([config], resume=resume, overwrite=overwrite, record_diverged=record_diverged)[0]
