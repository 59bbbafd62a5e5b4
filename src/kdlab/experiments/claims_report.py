"""What a judging writes: claims.json (every claim's tests and verdict, the regime, the teachers,
the provenance) and REPORT.md, from runs.csv's rows and the claims' results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdlab.experiments import provenance
from kdlab.experiments.claims import CLAIMS
from kdlab.experiments.presets import Preset
from kdlab.experiments.regime import GATES_TEXT, gates_table
from kdlab.experiments.runtable import Row
from kdlab.experiments.verdicts import PROTOCOL_VERSION, VERDICT_RULE, ClaimResult
from kdlab.runs import environment, file_sha256

CLAIMS_FORMAT = "kdlab-claims-v2"


def judged_outputs(
    preset: Preset, results: list[ClaimResult], rows: list[Row], wall_time: float, rejudged: str | None
) -> tuple[str, dict[str, Any]]:
    """``(REPORT.md text, claims.json document)``. Everything in claims.json but its ``invocation`` block
    is computed from the rows, the protocol's git history and the code's rules: a rejudge of the same
    runs.csv writes it again byte for byte."""
    root = provenance.repository()
    runs = provenance.runs_provenance(rows)
    protocol = None
    if preset.protocol is not None:
        stamps = [provenance.RunStamp.of(row) for row in rows]
        protocol = provenance.check_protocol(root, preset.protocol, stamps)
        protocol["deviations"] = provenance.deviations(
            root, protocol["commit"], [c["commit"] for c in runs["commits"]]
        )
    caveat = None
    if protocol is not None and protocol["status"] != provenance.PASSED:
        caveat = f"protocol check {protocol['status']}"
    judge_env = environment()
    judging = {
        "commit": judge_env.get("git_commit"), "dirty": judge_env.get("git_dirty"), "torch": judge_env.get("torch"),
        "wall_time_s": wall_time, "rejudged_from": rejudged,
        # What this invocation's preset (and --seeds) declared: a rejudge does not know a --seeds of the run.
        "declared": {"teacher_seeds": preset.teacher_seeds, "student_seeds": preset.seeds},
        "rule_changes_since_protocol": [] if protocol is None else provenance.deviations(
            root, protocol["commit"], [judge_env.get("git_commit")], provenance.RULE_PATHS),
    }  # fmt: skip
    family = [test for result in results for test in result.primary if test.holm_p is not None]
    document = {
        "format": CLAIMS_FORMAT, "protocol_version": PROTOCOL_VERSION, "preset": preset.name,
        "observed": {
            "teacher_seeds": len({row.teacher_seed for row in rows if row.role == "teacher"}),
            "student_seeds": len({row.seed for row in rows if row.role == "student"}),
        },
        "protocol": protocol, "runs": runs, "holm_family": len(family),
        "regime": regime_list(results), "teachers": teacher_rows(rows),
        "setting": None if preset.setting is None else
        {"path": str(preset.setting.path), "sha256": preset.setting.sha256, "imports": preset.setting.imports},
        "claims": [{**result.to_dict(), "caveat": caveat if reads_runs(result) else None} for result in results],
        "invocation": judging,
    }  # fmt: skip
    report = format_report(preset, results, rows, document)
    return report, document


def reads_runs(result: ClaimResult) -> bool:
    """Whether a verdict rests on runs (a protocol check that fails concerns it): not C3's exact checks, not
    a claim the setting cannot judge."""
    return result.not_judged is None and result.exact_verdict is None


def regime_list(results: list[ClaimResult]) -> list[dict[str, Any]]:
    """Every distinct gate the claims were measured against, with the claims that read it."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for result in results:
        for gate in result.gates:
            entry = found.setdefault((gate.name, gate.scope), {**gate.to_dict(), "claims": []})
            if result.claim not in entry["claims"]:
                entry["claims"].append(result.claim)
    return list(found.values())


def checkpoint_hash(path: Path) -> str | None:
    """SHA-256 of a file (None when absent)."""
    return file_sha256(path) if path.is_file() else None


def teacher_rows(rows: list[Row]) -> list[dict[str, Any]]:
    """Every teacher the claims read (from its runs.csv row): model, teacher seed, accuracies, epochs and
    the hash of the ``last.pt`` its students read."""
    found = []
    for row in sorted(
        (r for r in rows if r.role == "teacher"), key=lambda r: (r.name, r.teacher_seed, r.run)
    ):
        found.append({
            "name": row.run, "role": row.name, "teacher_seed": row.teacher_seed, "seed": row.seed, "model": row.model,
            "train_acc": row.metric("train_acc"), "test_acc_last": row.metric("test_acc_last"),
            "epochs": row.metric("epochs"), "train_images": row.metric("train_images"),
            "label_noise": row.text("label_noise") or None,
            "kd": f"{row.loss} from " + ", ".join(row.teacher) if row.teacher else None,
            "last_pt_sha256": row.text("last_pt_sha256") or None,
        })  # fmt: skip
    return found


def _teachers_table(teachers: list[dict[str, Any]]) -> str:
    lines = [
        "| teacher | model | teacher seed (seed) | trained | train images | clean-train acc (%) | test acc last (%) "
        "| epochs | last.pt SHA-256 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in teachers:
        trained = row["kd"] or "CE" + (f", {row['label_noise']} noise" if row["label_noise"] else "")
        sha = row["last_pt_sha256"]
        lines.append(
            f"| {row['name']} | {row['model']} | {row['teacher_seed']} ({row['seed']}) | {trained} | "
            f"{row['train_images']:.0f} | {row['train_acc']:.2f} | {row['test_acc_last']:.2f} | {row['epochs']:.0f} | "
            f"`{sha[:16] if sha else '-'}` |"
        )
    return "\n".join(lines)


def _minutes(seconds: float | None) -> str:
    return "unknown" if seconds is None or seconds != seconds else f"{seconds / 60:.1f} min"


def provenance_lines(document: dict[str, Any]) -> list[str]:
    """REPORT.md's provenance section: code, versions, devices, times, the protocol check, deviations."""
    runs, protocol, judging = document["runs"], document["protocol"], document["invocation"]
    judged_by = (judging["commit"] or "unknown")[:12]
    state = {True: "uncommitted changes", False: "clean", None: "state unknown"}[judging["dirty"]]
    lines = [
        "## Provenance",
        "",
        f"- Runs: {runs['count']} (students and teachers), made by the code at "
        f"{provenance.describe_commits(runs['commits'])}; torch {', '.join(runs['torch'])}; "
        f"device {', '.join(runs['devices'])}.",
        f"- Wall time of the runs: {_minutes(runs['elapsed_s'])} from the first start ({runs['first_start'] or 'unknown'}) "
        f"to the last finish ({runs['last_finish'] or 'unknown'}), across invocations; each run's own wall time "
        f"summed: {_minutes(runs['summed_run_wall_time_s'])} (students trained in lockstep each count their group's "
        "time).",
        f"- This invocation ({'judging only' if judging['rejudged_from'] else 'training what was missing, then judging'}): "
        f"code `{judged_by}` ({state}), torch {judging['torch']}, "
        f"{judging['wall_time_s']:.1f} s"
        + (
            f", rejudged from `{judging['rejudged_from']}` (no run folder read)"
            if judging["rejudged_from"]
            else ""
        )
        + ".",
    ]
    if protocol is not None:
        commit = (protocol["commit"] or "unknown")[:12]
        lines.append(
            f"- Protocol `{protocol['path']}` at commit `{commit}` ({protocol['committed_at'] or 'unknown'}); "
            f"check: **{protocol['status']}**: {protocol['text']}."
        )
        deviations = protocol["deviations"]
        lines.append(
            f"- Deviations: {len(deviations)} commit(s) between the protocol and the runs' code touch "
            f"{', '.join(provenance.DEVIATION_PATHS)}" + (":" if deviations else ".")
        )
        lines += [
            f"  - `{entry['commit'][:12]}` {entry['time']}: {entry['subject']} ({', '.join(entry['files'])})"
            for entry in deviations
        ]
        changed = judging["rule_changes_since_protocol"]
        if changed:
            lines.append(
                f"- The rules changed after the protocol, up to the judging code: {len(changed)} commit(s):"
            )
            lines += [
                f"  - `{entry['commit'][:12]}` {entry['time']}: {entry['subject']}" for entry in changed
            ]
    return [*lines, ""]


def format_report(
    preset: Preset, results: list[ClaimResult], rows: list[Row], document: dict[str, Any]
) -> str:
    """REPORT.md: setup and provenance, the gates, a verdict table, the rule, the teachers, then each claim."""
    students = sum(row.role == "student" for row in rows)
    teachers = document["teachers"]
    title = (
        f"--setting {preset.setting.path.name}" if preset.setting is not None else f"--preset {preset.name}"
    )
    lines = [f"# kdlab reproduce {title}", ""]
    protocol = document["protocol"]
    if protocol is not None and protocol["status"] != provenance.PASSED:
        lines += [
            f"> **PROTOCOL CHECK {protocol['status'].upper()}: {protocol['text']}.** Every verdict below carries this.",
            "",
        ]
    lines += [preset.description, ""]
    declared, observed = document["invocation"]["declared"], document["observed"]
    lines += [
        f"Judged under protocol v{PROTOCOL_VERSION} (`kdlab.experiments.claims`). Declared by the preset: "
        f"{declared['teacher_seeds']} teacher seed(s) per teacher, {declared['student_seeds']} student seed(s) paired "
        f"within each; found in the runs: {observed['teacher_seeds']} and {observed['student_seeds']}. "
        f"{students} student runs and {len(teachers)} teacher runs were read (runs.csv beside this file "
        f"holds every one; `kdlab reproduce --rejudge runs.csv` judges them again). Holm's correction ran across "
        f"{document['holm_family']} primary test(s).",
        "",
        *provenance_lines(document),
        "## The regime: gates",
        "",
        GATES_TEXT,
        "",
    ]
    unique = {(gate.name, gate.scope): gate for r in results for gate in r.gates}
    if unique:
        failing = [gate for gate in unique.values() if not gate.passed]
        if failing:
            lines += ["Failing gates:", ""]
            lines += [f"- {gate.text()} [{gate.scope}]" for gate in failing]
            lines.append("")
        lines += [gates_table(list(unique.values())), ""]
    caveat = (
        " (protocol check not passed)"
        if protocol is not None and protocol["status"] != provenance.PASSED
        else ""
    )
    lines += [
        "## Verdicts",
        "",
        "Each verdict rests on the claim's primary test(s) only; secondary tests are in each claim's section.",
        "",
        "| claim | verdict | primary test: effect, interval, Holm p, seeds | statement |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r.claim} | **{r.verdict}**{caveat if reads_runs(r) else ''} | {r.evidence()} | {r.statement} |"
        for r in results
    ]
    lines += [
        "",
        "## How claims are judged",
        "",
        VERDICT_RULE,
        "",
        "These are runs at the preset's scale: a claim that does not hold here may still hold in the paper's "
        "setting, and the other way round.",
        "",
    ]
    if teachers:
        lines += [
            "## Teachers",
            "",
            "Every teacher the runs read, at every teacher seed (students read its `last.pt`; clean-train accuracy "
            "on the unaugmented training set at the end of training).",
            "",
            _teachers_table(teachers),
            "",
        ]
    for result in results:
        lines += [f"## {result.claim}: {result.verdict}", "", result.statement, ""]
        primary = CLAIMS[result.claim].primary
        if primary:
            lines += [f"Primary test (declared): {primary}.", ""]
        if result.gates:
            lines += [gates_table(result.gates), ""]
        summary = result.summary()
        if summary:
            lines += [f"Summary: {summary}.", ""]
        for note in result.notes:
            lines += [note, ""]
        for table in result.tables:
            lines += [table, ""]
        tests = [*result.primary, *result.secondary]
        if tests:
            lines += ["Statistics:", ""]
            lines += [f"- {test.text()}" for test in tests]
            lines.append("")
        for caption, link in result.figures:
            lines += [f"![{caption}]({link})", ""]
    folders = sorted({row.folder for row in rows if row.role == "student"})
    if folders:
        lines += ["Run folders (not committed; runs.csv holds what the claims read), each with its `kdlab report`: "
                  + ", ".join(f"`{folder}/`" for folder in folders) + "; teachers in `teachers/`.", ""]  # fmt: skip
    return "\n".join(lines)
