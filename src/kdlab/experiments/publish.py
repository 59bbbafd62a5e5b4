"""Publishing a reproduce run into the repository: the figures reproduce draws, REPORT.md, claims.json,
runs.csv and figures/ copied to DEST (``kdlab reproduce --publish``), and the README's claims table
rewritten from claims.json (``--readme``)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdlab.errors import UserError
from kdlab.experiments.runtable import RUNS_CSV
from kdlab.runs import (
    OutputFolder,
    read_regular_file,
    read_user_file,
    rewrite_user_file,
)

C6_FIGURES = ("c6-projection.png", "c6-penultimate_norm.png")  # copied from OUT/analysis
README_START, README_END = "<!-- claims-table:start -->", "<!-- claims-table:end -->"

# The figures reproduce may write into OUT/figures/ (then copied by --publish): one heatmap and one set
# of tau curves per teacher seed (-1, -2, ... when several), and the C6 figures.
FIGURE_PATTERNS = ("heatmap.png", "heatmap-*.png", "tau_curves.png", "tau_curves-*.png", *C6_FIGURES)


def figure_names(teacher_seeds: int) -> list[str]:
    suffixes = [""] if teacher_seeds == 1 else [f"-{i + 1}" for i in range(teacher_seeds)]
    plots = [f"{name}{suffix}.png" for name in ("heatmap", "tau_curves") for suffix in suffixes]
    return [f"figures/{name}" for name in (*plots, *C6_FIGURES)]


def is_figure(name: str) -> bool:
    """Whether ``name`` (relative to OUT) is a figure kdlab reproduce draws."""
    folder, _, file = name.partition("/")
    return (
        folder == "figures" and "/" not in file and any(fnmatch.fnmatchcase(file, p) for p in FIGURE_PATTERNS)
    )


# --- publishing a run's report into the repository ---------------------------------------------------


def _worst_gates(regime: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """``{scope: {gate: "value passes|**fails**"}}``, the teacher seeds of one scope (``[tsK]``) folded into
    one row holding each gate's worst value (the lowest: every gate is ``value >= or > threshold``)."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for gate in regime:
        scope = re.sub(r" \[ts\d+\]", "", gate["scope"])
        grouped.setdefault(scope, {}).setdefault(gate["name"], []).append(gate)
    cells: dict[str, dict[str, str]] = {}
    for scope, gates in grouped.items():
        for name, measured in gates.items():
            values = [gate["value"] for gate in measured if gate["value"] is not None]
            value = "n/a" if len(values) < len(measured) else f"{min(values):.2f}"
            state = "passes" if all(gate["passed"] for gate in measured) else "**fails**"
            worst = f" (worst of {len(measured)})" if len(measured) > 1 else ""
            cells.setdefault(scope, {})[name] = f"{value} {state}{worst}"
    return cells


def claims_table(claims_json: dict[str, Any]) -> str:
    """The README's claims table from a claims.json: the gates first (one row per set of runs, the teacher
    seeds of a teacher folded into their worst value; one column per gate), then one row per claim with
    its verdict, its seeds (teacher x student) and its primary test's one-line evidence. Reads the
    claims.json of protocol v1 too (one seed count per claim)."""
    lines = []
    regime = claims_json.get("regime") or []
    if regime:
        names = list(dict.fromkeys(gate["name"] for gate in regime))
        rules = {gate["name"]: gate["rule"] for gate in regime}
        lines += [
            "Gates: " + "; ".join(f"{name}: {rules[name]}" for name in names) + ".",
            "",
            "| runs | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for scope, cells in _worst_gates(regime).items():
            lines.append(f"| {scope} | " + " | ".join(cells.get(name, "") for name in names) + " |")
        lines.append("")
    version = claims_json.get("protocol_version", 1)
    lines += [
        "| claim | verdict | seeds (teacher x student) | evidence: primary test, effect, interval, Holm p |",
        "|---|---|---|---|",
    ]
    for claim in claims_json["claims"]:
        if version >= 2:
            teachers, students = claim.get("n_teacher_seeds"), claim.get("n_student_seeds")
            seeds = "-" if teachers is None else f"{teachers} x {students}"
        else:
            seeds = "-" if claim.get("n_seeds") is None else f"1 x {claim['n_seeds']}"
        verdict = claim["verdict"] + (f" ({claim['caveat']})" if claim.get("caveat") else "")
        lines.append(f"| {claim['claim']} | {verdict} | {seeds} | {claim['evidence']} |")
    return "\n".join(lines)


def check_readme(readme: str | Path) -> tuple[str, str, str]:
    """The README's text split around its claims table, ``(before, table, after)``, markers excluded:
    a one-line UserError unless it is a regular file kdlab may rewrite in place (not a link, FIFO or
    device; see ``kdlab.runs.read_user_file``) holding each marker once, the start marker first."""
    readme = Path(readme)
    text, _ = read_user_file(readme, "--readme")
    starts, ends = text.count(README_START), text.count(README_END)
    need = f"--readme {readme} needs one {README_START} and one {README_END} line around its claims table"
    if starts != 1 or ends != 1:
        raise UserError(f"{need} (it holds {starts} and {ends}): put each marker there once")
    if text.index(README_END) < text.index(README_START):
        raise UserError(f"{need}, in this order (its end marker comes first): swap them")
    before, rest = text.split(README_START)
    table, after = rest.split(README_END)
    return before, table, after


def update_readme(readme: str | Path, table: str) -> None:
    """Replace what lies between the README's claims-table markers with ``table``: the file is edited
    in place, atomically, keeping its mode; everything outside the markers is kept byte for byte."""
    readme = Path(readme)
    before, old_table, after = check_readme(readme)
    text = f"{before}{README_START}{old_table}{README_END}{after}"
    rewrite_user_file(readme, text, f"{before}{README_START}\n{table}\n{README_END}{after}", "--readme")


def check_publish(dest: str | Path, readme: str | Path | None = None) -> None:
    """Before any training: ``--publish DEST`` may receive REPORT.md, claims.json, runs.csv and figures/
    (any figure name kdlab draws, whatever the number of teacher seeds), and ``--readme`` may be
    rewritten. Writes nothing."""
    target = OutputFolder(dest, "published", flag="--publish")
    target.check(["REPORT.md", "claims.json", RUNS_CSV, "figures/", *figure_names(1)])
    figures = Path(dest) / "figures"
    if figures.is_dir() and not figures.is_symlink():  # heatmap-2.png, ...: checked like the others
        target.check(
            [
                f"figures/{entry.name}"
                for entry in sorted(figures.iterdir())
                if is_figure(f"figures/{entry.name}")
            ]
        )
    if readme is not None:
        check_readme(readme)


def publish(
    out: str | Path, dest: str | Path, readme: str | Path | None = None, log: Callable[[str], None] = print
) -> None:
    """Copy ``OUT/REPORT.md``, ``claims.json``, ``runs.csv`` and ``figures/`` into ``dest``; with ``readme``, rewrite its
    claims table (between the markers) from claims.json. Everything is checked before the first copy:
    DEST follows ``OutputFolder``'s rules (only over files kdlab published there), the README
    ``check_readme``'s."""
    out, dest = Path(out), Path(dest)
    for name in ("REPORT.md", "claims.json"):
        if not (out / name).is_file():
            raise UserError(f"{out / name} does not exist: run kdlab reproduce --out {out} first")
    files = {name: read_regular_file(out / name) for name in ("REPORT.md", "claims.json")}
    if (out / RUNS_CSV).is_file():  # the evidence: claims.json is recomputed from it by --rejudge
        files[RUNS_CSV] = read_regular_file(out / RUNS_CSV)
    # Only the figures kdlab made in OUT (its manifest), as it made them: a file of yours there is not copied.
    listed = OutputFolder(out, "reproduce").listed()
    for name in sorted(name for name in listed if is_figure(name) and (out / name).is_file()):
        data = read_regular_file(out / name)
        if hashlib.sha256(data).hexdigest() != listed[name]["sha256"]:
            raise UserError(
                f"{out / name} was changed since kdlab reproduce wrote it, and --publish copies only kdlab's "
                f"own figures: run kdlab reproduce --out {out} again to redraw it"
            )
        files[name] = data
    target = OutputFolder(dest, "published", flag="--publish")
    target.check(files, files)
    table = None
    if readme is not None:
        check_readme(readme)
        try:
            table = claims_table(json.loads(files["claims.json"]))
        except (ValueError, KeyError, TypeError):
            raise UserError(
                f"{out / 'claims.json'} is damaged (not the claims kdlab reproduce writes): run kdlab reproduce "
                f"--out {out} again"
            ) from None
    target.write_files(files)
    log(f"reproduce: published {', '.join(name for name in files if '/' not in name)} and figures to {dest}")
    if readme is not None and table is not None:
        update_readme(Path(readme), table)
        log(f"reproduce: rewrote the claims table of {readme}")
