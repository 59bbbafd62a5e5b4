"""``kdlab chain``: sequential distillation of any length, each stage an ordinary run folder.

A stage is ``MODEL:LOSS[:key=value,...]``, e.g. ``wrn-28-4:ce``, ``wrn-16-4:kl:tau=3``,
``wrn-16-2:mse``, ``convnet-8:kl:tau=3,alpha=0.9,optim.epochs=5`` or ``wrn-16-2:dkd:beta=6``. The
short keys are the stage loss's hyperparameter names from its registration (for ``dkd``, ``alpha``
is ``kd.dkd_alpha``; for ``kl``, ``kd.alpha``), plus ``epochs`` and ``lr``; any other dotted config
key may be given. Stage ``i`` trains into
``OUT/stage{i}-MODEL-LOSS...`` and becomes the teacher of stage ``i + 1``; the first stage reads
``--teacher`` when its loss needs one. Finished stages are reused, interrupted ones resumed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlab.config import (
    RunConfig,
    build_config,
    check_unread,
    declared_hyperparameters,
    flatten,
    load_yaml,
    merge,
    parse_override,
)
from kdlab.errors import UserError
from kdlab.experiments.recipes import run_name
from kdlab.losses import loss_spec, needs_teacher
from kdlab.teacher import TEACHER_DATA_KEYS, with_teacher_data

_SHORT_KEYS = {"epochs": "optim.epochs", "lr": "optim.lr"}


@dataclass(frozen=True)
class Stage:
    model: str
    loss: str
    overrides: tuple[str, ...] = ()  # "kd.tau=3", ...


def parse_stage(text: str) -> Stage:
    """``"wrn-16-4:kl:tau=3,alpha=0.9"`` -> ``Stage("wrn-16-4", "kl", ("kd.tau=3", "kd.alpha=0.9"))``."""
    model, _, rest = str(text).partition(":")
    loss, _, options = rest.partition(":")
    model, loss = model.strip(), loss.strip()
    if not model or not loss:
        raise UserError(
            f"--stage {text!r} is malformed: write MODEL:LOSS[:key=value,...], e.g. --stage wrn-16-4:kl:tau=3"
        )
    spec = loss_spec(loss)
    overrides = []
    for option in filter(None, (part.strip() for part in options.split(","))):
        key, sep, value = option.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"--stage {text!r}: option {option!r} must be key=value, e.g. tau=3")
        # The loss's own keyword, or any hyperparameter's field (refused below when the loss ignores it).
        field = spec.field_of(key) or (key if key in declared_hyperparameters() else None)
        overrides.append(f"{'kd.' + field if field else _SHORT_KEYS.get(key, key)}={value}")
    return Stage(model, loss, tuple(overrides))


def plan_chain(
    stages: list[Stage],
    out: str | Path,
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    teacher: str | list[str] | None = None,
) -> list[RunConfig]:
    """One config per stage (``build_config`` of the shared file, flags and overrides, then the
    stage's model, loss and options); stage ``i``'s folder is stage ``i + 1``'s ``kd.teacher``."""
    if not stages:
        raise UserError("a chain needs at least one --stage MODEL:LOSS, e.g. --stage wrn-28-4:ce")
    out = Path(out)
    configs: list[RunConfig] = []
    previous: str | list[str] | None = teacher
    for index, stage in enumerate(stages):
        if needs_teacher(stage.loss) and previous is None:
            raise UserError(
                f"stage 1 ({stage.model}:{stage.loss}) needs a teacher: start the chain with a ce stage "
                "or pass --teacher RUN"
            )
        stage_flags = {"model": stage.model, "kd": {"loss": stage.loss, "teacher": previous}}
        # Data as the chain's teacher's unless given; later stages train on the first stage's data.
        complete = with_teacher_data if not configs else functools.partial(_same_data, configs[0])
        try:
            config = build_config(
                config_file, merge(flags or {}, stage_flags), [*(overrides or []), *stage.overrides],
                strict=False, complete=complete,
            )  # fmt: skip
            # A stage's own options must all be read by its loss; shared settings by some stage's loss.
            check_unread(config, [key for text in stage.overrides for key in flatten(parse_override(text))])
        except UserError as error:
            raise UserError(f"--stage {index + 1} ({stage.model}:{stage.loss}): {error}") from None
        config.out = str(
            out / f"stage{index + 1}-{run_name({'model': stage.model}, config, with_seed=False)}"
        )
        configs.append(config)
        previous = config.out
    shared = [dict(load_yaml(config_file)) if config_file else {}, flags or {}]
    shared += [parse_override(text) for text in overrides or []]
    read = {field for config in configs for field in loss_spec(config.kd.loss).fields}
    for key in (key for layer in shared for key, value in flatten(layer).items() if value is not None):
        name = key.removeprefix("kd.")
        if key.startswith("kd.") and name in declared_hyperparameters() and name not in read:
            losses = ", ".join(dict.fromkeys(config.kd.loss for config in configs))
            raise UserError(
                f"{key} is not read by the loss of any stage ({losses}): drop it, or give it to a stage that "
                f"reads it (--stage MODEL:LOSS:{name}=VALUE)"
            )
    return configs


def _same_data(first: RunConfig, document: dict[str, Any]) -> dict[str, Any]:
    data = dict(document.get("data") or {})
    for key in TEACHER_DATA_KEYS:
        if data.get(key) is None:
            data[key] = getattr(first.data, key)
    return {**document, "data": data}


def run_chain(
    stages: list[Stage],
    out: str | Path,
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    teacher: str | list[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train the stages in order (each resuming if interrupted, skipped if finished); their summaries."""
    from kdlab.engine import train

    summaries = []
    for index, config in enumerate(plan_chain(stages, out, config_file, flags, overrides, teacher)):
        log(f"chain: stage {index + 1}/{len(stages)} {Path(config.out or '').name}")
        summaries.append(train(config, resume=True))
    return summaries
