"""N students of one architecture as one module: a grid of students costs one launch sequence.

Channel stacking: student ``i``'s channels are channels ``[i*C, (i+1)*C)`` of the stacked model, so
every layer runs once for all N students with N times the work:

- ``Conv2d(C, O, groups=g)`` becomes ``Conv2d(N*C, N*O, groups=N*g)``: each student convolves only
  its own channels (a grouped convolution);
- ``BatchNorm2d(C)`` becomes ``BatchNorm2d(N*C)``: statistics are per channel, hence per student,
  running statistics included;
- ``Linear(D, K)`` becomes :class:`StackedLinear`: ``[B, N*D] -> [B, N*K]``, one batched matmul;
- layers without parameters (ReLU, pooling, flatten) see ``[B, N*C, H, W]`` and act per channel.

The input is repeated N times along the channels, and the logits ``[B, N*K]`` are split into each
student's ``[B, K]``. Every stacked tensor (weight, bias, running statistic, optimiser state) is the
concatenation along dim 0 of the students' tensors, so student ``i``'s slice is
``stacked.chunk(N)[i]`` and each student's own model, optimiser state and checkpoint are written
from it (:meth:`StackedStudents.publish`): checkpoints are the standard per-student format.

Which models stack: any model built from those layers whose forward treats channels independently
(every kdlab CIFAR and small model). A layer of another kind with parameters, or a forward that
mixes channels (a channel shuffle, a channel-wise pad), is found before training by
:func:`stack_models` (the stacked forward must equal the students' on a probe batch); those students
then train in lockstep instead, one after another on each batch.

Numerics: a grouped convolution and a batched matmul may accumulate in another order than the
students' own kernels, so stacked students equal their standalone runs to rounding, not bitwise
(``tests/test_stacked.py`` states the measured difference). A student's slice is computed alike
whatever else is in the stack (every stacked layer acts per slice, and the optimiser updates each
slice as a tensor of its own): a stack without one of its students trains the others bitwise as
the full stack does (CPU, one thread; ``tests/test_diverge.py``).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from kdlab.engine.student import Student, make_optimizer
from kdlab.models.features import feature_layer_of

# The probe compares the stacked forward with the students' own in float64, where neither TF32 (which
# CUDA uses for float32 convolutions by default: ~4e-5 relative between 8 stacked WRN-16-2 students
# and their own forwards) nor float32 rounding (up to 4e-7 on this CPU) hides in the comparison.
# Measured in float64 on the CPU (8 students of convnet-4, mlp-16, wrn-10-1, resnet20, wrn-16-2,
# relative to the largest logit): at most 2.0e-16; a forward that mixes channels differs by O(1)
# (tests/test_stacked.py). The tolerance sits 5e6 times above the one and 1e8 times below the other.
PROBE_TOLERANCE = 1e-9
# A model whose forward does not run in float64 (a float32 constant inside it, say) is probed in
# float32 with TF32 off: measured at most 4e-7 on the CPU, so 1e-5 leaves a margin of 25.
PROBE_TOLERANCE_FP32 = 1e-5


def stacks(setting: str, device: torch.device) -> bool:
    """Whether ``stack`` (auto | on | off) stacks compatible students on ``device``.

    ``auto`` stacks on CUDA, where a student's step is bound by kernel launches and N students in one
    launch sequence do N times the work per launch; not on the CPU, which is bound by arithmetic
    everywhere and where the grouped convolutions measured slower than N separate ones
    (docs/benchmarks.md).
    """
    return setting == "on" or (setting == "auto" and device.type == "cuda")


class StackedLinear(nn.Module):
    """N linear layers ``D -> K`` on ``[..., N*D]`` -> ``[..., N*K]``; ``weight`` ``[N*K, D]``, ``bias`` ``[N*K]``."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        super().__init__()
        self.count = len(layers)
        self.in_features, self.out_features = layers[0].in_features, layers[0].out_features
        self.weight = nn.Parameter(torch.cat([layer.weight.detach() for layer in layers]))
        self.bias = (
            nn.Parameter(torch.cat([layer.bias.detach() for layer in layers]))
            if layers[0].bias is not None
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.count, self.in_features).transpose(0, 1)  # [N, R, D]
        weight = self.weight.view(self.count, self.out_features, self.in_features).transpose(1, 2)
        if self.bias is None:
            out = torch.bmm(rows, weight)
        else:
            out = torch.baddbmm(self.bias.view(self.count, 1, self.out_features), rows, weight)
        return out.transpose(0, 1).reshape(*lead, self.count * self.out_features)


def _stack_conv(layers: list[nn.Conv2d]) -> nn.Conv2d:
    first, count = layers[0], len(layers)
    return nn.Conv2d(
        count * first.in_channels, count * first.out_channels, first.kernel_size, first.stride,
        first.padding, first.dilation, count * first.groups, first.bias is not None, first.padding_mode,
    )  # fmt: skip


def _stack_batch_norm(layers: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    first = layers[0]
    return nn.BatchNorm2d(
        len(layers) * first.num_features, first.eps, first.momentum, first.affine, first.track_running_stats
    )


STACKERS = {nn.Conv2d: _stack_conv, nn.BatchNorm2d: _stack_batch_norm, nn.Linear: StackedLinear}


@torch.no_grad()
def _stacked_layer(layers: list[nn.Module]) -> nn.Module:
    """One layer for N students' ``layers``; each tensor the students' concatenated along dim 0."""
    stacked = STACKERS[type(layers[0])](layers)
    for name, tensor in [*stacked.named_parameters(), *stacked.named_buffers()]:
        parts = [getattr(layer, name) for layer in layers]
        tensor.copy_(parts[0] if tensor.ndim == 0 else torch.cat(parts))
    return stacked


class StackedModel(nn.Module):
    """The N students as one module: ``forward(x [B, C, H, W]) -> [B, N, K]``."""

    def __init__(self, models: list[nn.Module], channels_last: bool = False) -> None:
        super().__init__()
        self.count, self.channels_last = len(models), channels_last
        body = copy.deepcopy(models[0])
        for name, layer in list(body.named_modules()):
            if type(layer) in STACKERS:
                parent, _, attribute = name.rpartition(".")
                layers = [model.get_submodule(name) for model in models]
                setattr(body.get_submodule(parent), attribute, _stacked_layer(layers))
        if hasattr(body, "in_channels"):  # models that check their input's channels see N times as many
            body.in_channels = self.count * body.in_channels
        self.body = body

    def stack_input(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, N*C, H, W]``: every student's copy of the batch."""
        stacked = x.repeat(1, self.count, *([1] * (x.dim() - 2)))
        return stacked.contiguous(memory_format=torch.channels_last) if self.channels_last else stacked

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, N, D]``: each student's penultimate vector."""
        features = self.body.forward_features(self.stack_input(x))
        return features.view(len(x), self.count, -1)

    def classifier(self, features: Tensor) -> Tensor:
        """``[B, N, D]`` -> ``[B, N, K]``."""
        return self.body.classifier(features.flatten(1)).view(len(features), self.count, -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.stack_input(x)).view(len(x), self.count, -1)


def _unstackable(model: nn.Module) -> str | None:
    """Why ``model`` cannot be channel-stacked, or None."""
    for name, layer in model.named_modules():
        own = [*layer.named_parameters(recurse=False), *layer.named_buffers(recurse=False)]
        if own and type(layer) not in STACKERS:
            return (
                f"its layer {name or 'the model'} ({type(layer).__name__}) has parameters kdlab cannot stack"
            )
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            return f"its layer {name} pads with {layer.padding_mode!r}"
    if not hasattr(model, "forward_features") or not hasattr(model, "classifier"):
        return "it has no forward_features/classifier"  # any nn.Module: features come from a hook
    return None


@torch.no_grad()
def stack_models(
    models: list[nn.Module], probe: Tensor, channels_last: bool = False
) -> tuple[StackedModel | None, str | None]:
    """The stacked model of ``models`` (one architecture), or ``(None, reason)`` when it cannot be.

    ``probe``: a small input batch ``[b, C, H, W]``. The stacked forward must match each student's
    own on it (eval mode, so nothing changes; in float64, :func:`probe_difference`): a forward that
    mixes channels fails here.
    """
    reason = _unstackable(models[0])
    named = [layer for layer in map(feature_layer_of, models) if layer is not None]
    if reason is None and named:  # the stacked forward_features is not the hook on that layer
        reason = f"features are read from layer {named[0]!r}"
    if reason is not None:
        return None, reason
    stacked = StackedModel(models, channels_last).to(probe.device)
    if channels_last:
        stacked = stacked.to(memory_format=torch.channels_last)
    try:
        difference, precision, tolerance = probe_difference(stacked, models, probe)
    except Exception as error:  # a forward that breaks on N*C channels cannot be stacked
        return None, f"its forward fails on stacked channels ({type(error).__name__})"
    if not difference <= tolerance:
        return None, (
            f"its forward mixes channels: the stacked forward differs from the students' by {difference:.1e} of "
            f"their largest logit in {precision}, above the {tolerance:.0e} that rounding allows"
        )
    return stacked.train(), None


def probe_difference(
    stacked: StackedModel, models: list[nn.Module], probe: Tensor
) -> tuple[float, str, float]:
    """``(difference, precision, tolerance)``: the largest difference between the stacked forward and
    the students' own on ``probe``, relative to their largest logit, in eval mode, computed on copies
    in float64 (MPS has no float64: there on the CPU). A model whose own forward does not run in
    float64 is compared in float32 with TF32 off. The models and ``stacked`` are left as they were."""
    device = torch.device("cpu") if probe.device.type == "mps" else probe.device
    try:
        alone = _forwards(models, probe, device, torch.float64, stacked=False)
    except Exception:  # the students themselves do not run in float64: compare in float32
        with _tf32_off():
            alone = _forwards(models, probe, device, torch.float32, stacked=False)
            together = _forwards([stacked], probe, device, torch.float32, stacked=True)
        precision, tolerance = "float32 (TF32 off)", PROBE_TOLERANCE_FP32
    else:
        together = _forwards([stacked], probe, device, torch.float64, stacked=True)
        precision, tolerance = "float64", PROBE_TOLERANCE
    if together.shape != alone.shape:
        return math.inf, precision, tolerance
    scale = alone.abs().max().clamp_min(torch.finfo(alone.dtype).tiny)
    return ((together - alone).abs().max() / scale).item(), precision, tolerance


def _forwards(
    modules: list[nn.Module], probe: Tensor, device: torch.device, dtype: torch.dtype, stacked: bool
) -> Tensor:
    """``[b, N, K]``: eval-mode forwards of copies of ``modules`` in ``dtype`` on ``device`` (the
    stacked model's own output, or the students' stacked along dim 1)."""
    inputs = probe.to(device, dtype) if probe.is_floating_point() else probe.to(device)
    outputs = []
    for module in modules:
        copied = copy.deepcopy(module).to(device=device, dtype=dtype).eval()
        outputs.append(copied(inputs).to(dtype))
    return outputs[0] if stacked else torch.stack(outputs, dim=1)


@contextlib.contextmanager
def _tf32_off() -> Iterator[None]:
    """float32 matmuls and convolutions in full float32 for the block (CUDA's TF32 rounds their
    inputs to 10 bits of mantissa); restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class StackedStudents:
    """One training unit of N students as a :class:`StackedModel` with one optimiser (all students
    share the optimiser settings: ``engine.student.stack_key``).

    The optimiser updates each student's slice of every stacked parameter as a tensor of its own (a
    view: :attr:`slices`), with that student's own state (SGD's momentum, AdamW's moments and step
    count), never the stacked tensor as one: a fused optimiser's rounding of an element depends on
    where the element falls in the tensor it updates (the vectorised body or the scalar tail: measured
    on this CPU, the slices of an SGD step with momentum over a 3-student tensor differed in the last
    bit from the same slices of a 2-student one). Per-slice tensors give each student the update its
    own optimiser gives it, whatever else is in the stack, so that a student dropped from the stack
    (it diverged) changes nothing for the others.
    """

    def __init__(self, students: list[Student], slots: list[int], model: StackedModel) -> None:
        self.students, self.slots, self.count = students, slots, len(students)
        lead = students[0]
        self.model = model
        # (stacked tensor, [each student's tensor of that name]) for parameters and for buffers
        self.parameters = self._pairs("parameters")
        self.buffers = self._pairs("buffers")
        # Per stacked parameter, each student's slice: views the optimiser updates in place.
        self.slices = [list(stacked.detach().chunk(self.count)) for stacked, _ in self.parameters]
        pieces = [piece for slices in self.slices for piece in slices]
        self.optimizer = make_optimizer(model, lead.config, lr=lead.lr, parameters=pieces)
        self._load_state()
        self.module: nn.Module = torch.compile(model) if lead.config.compile else model

    def _pairs(self, kind: str) -> list[tuple[Tensor, list[Tensor]]]:
        own = [dict(getattr(student.model, f"named_{kind}")()) for student in self.students]
        return [
            (tensor, [named[name] for named in own])
            for name, tensor in getattr(self.model.body, f"named_{kind}")()
        ]

    def _own_state(self) -> list[tuple[Tensor, Student, Tensor]]:
        """``(slice, student, the student's own parameter)`` for every slice the optimiser updates."""
        return [
            (piece, student, part)
            for (_, parts), slices in zip(self.parameters, self.slices, strict=True)
            for piece, student, part in zip(slices, self.students, parts, strict=True)
        ]

    def _load_state(self) -> None:
        """Each slice's optimiser state from its student's optimiser (restored from its checkpoint or
        left by an earlier stack of it; none before the first step, which makes it)."""
        for piece, student, part in self._own_state():
            state = student.optimizer.state.get(part)
            if state:
                self.optimizer.state[piece] = {key: value.clone() for key, value in state.items()}

    def forward(self, inputs: Tensor, features: bool) -> list[tuple[Tensor, Tensor | None]]:
        """Each student's logits ``[B, K]`` and, with ``features``, penultimate features ``[B, D]``
        (contiguous: the losses then reduce as for a student alone)."""
        if not features:
            return [(logits.contiguous(), None) for logits in self.module(inputs).unbind(1)]
        penultimate = self.model.forward_features(inputs)
        logits = self.model.classifier(penultimate)
        return [
            (one.contiguous(), own.contiguous())
            for one, own in zip(logits.unbind(1), penultimate.unbind(1), strict=True)
        ]

    def train(self) -> None:
        self.module.train()

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)
        for slices in self.slices:  # views of the freed gradients: let them go too
            for piece in slices:
                piece.grad = None

    def step(self) -> None:
        """One optimiser step: each slice's gradient is its student's part of the stacked gradient."""
        for (stacked, _), slices in zip(self.parameters, self.slices, strict=True):
            grads = [None] * self.count if stacked.grad is None else stacked.grad.chunk(self.count)
            for piece, grad in zip(slices, grads, strict=True):
                piece.grad = grad
        self.optimizer.step()

    @torch.no_grad()
    def publish(self) -> None:
        """Write every student's slice into its own model and optimiser (before evaluation or a checkpoint)."""
        for stacked, parts in self.parameters + self.buffers:
            for part, piece in zip(parts, _slices(stacked, self.count), strict=True):
                part.copy_(piece)
        for piece, student, part in self._own_state():
            state = student.optimizer.state[part]
            for key, value in self.optimizer.state.get(piece, {}).items():
                if key in state:
                    state[key].copy_(value)
                else:
                    state[key] = value.clone()


def _slices(stacked: Tensor, count: int) -> list[Tensor]:
    """Student i's part of a stacked tensor: the i-th of N equal chunks along dim 0 (a 0-d tensor,
    such as BatchNorm's batch counter, is shared)."""
    return [stacked] * count if stacked.ndim == 0 else list(stacked.chunk(count))
