"""The outcome of a check as a table per module, or as one JSON object."""

from __future__ import annotations

import json

from mlplab.check.catalogue import MODULE_SECTIONS, UNRECOGNISED
from mlplab.check.runner import Outcome


def diagnoses(outcome: Outcome) -> list[dict]:
    """One entry per named mistake and module, in the order found. The first numeric failure of a
    module with no named mistake is ``unrecognised``, with its numbers."""
    named = [c for c in outcome.checks if not c["passed"] and c.get("diagnosis")]
    explained = {c["module"] for c in named}
    found, seen = [], set()
    for check in outcome.checks:
        if check["passed"]:
            continue
        if check.get("diagnosis"):
            key = (check["diagnosis"]["id"], check["module"])
            if key not in seen:
                seen.add(key)
                found.append({"id": key[0], "module": key[1], "message": check["diagnosis"]["message"]})
        elif check.get("kind") == "numbers" and check["module"] not in explained:
            explained.add(check["module"])  # one per module: its other rows are usually the same error seen again
            found.append(
                {
                    "id": UNRECOGNISED,
                    "module": check["module"],
                    "message": f"{check['name']}: {check['evidence']} (no known mistake gives these numbers)"
                    + (
                        f'. Derived in docs/backprop.md, section "{MODULE_SECTIONS[check["module"]]}".'
                        if check["module"] in MODULE_SECTIONS
                        else ""
                    ),
                }
            )
    return found


def as_json(outcome: Outcome) -> str:
    return json.dumps(
        {
            "folder": str(outcome.folder),
            "seed": outcome.seed,
            "passed": outcome.passed,
            "stopped": outcome.stopped,
            "output_tail": outcome.output_tail if outcome.stopped else "",
            "checks": [
                {"name": c["name"], "module": c["module"], "passed": c["passed"], "evidence": c["evidence"]}
                for c in outcome.checks
            ],
            "diagnoses": diagnoses(outcome),
            "notes": [{"module": n["module"], "text": n["text"]} for n in outcome.notes],
            "train": outcome.train,
        },
        indent=2,
        ensure_ascii=False,
    )


def as_text(outcome: Outcome) -> str:
    lines = [f"mlplab check {outcome.folder} (seed {outcome.seed})"]
    modules: dict[str, list[dict]] = {}
    for check in outcome.checks:
        modules.setdefault(check["module"], []).append(check)
    notes: dict[str, list[str]] = {}
    for note in outcome.notes:
        notes.setdefault(note["module"], []).append(note["text"])
        modules.setdefault(note["module"], [])
    for module, checks in modules.items():
        lines += ["", module]
        if checks:
            width = max(len(c["name"]) for c in checks)
            lines.append(f"  {'check':<{width}}  result  evidence")
            for c in checks:
                evidence = c["evidence"].replace("\n", "\n" + " " * (width + 12))
                lines.append(f"  {c['name']:<{width}}  {'pass' if c['passed'] else 'FAIL':<6}  {evidence}".rstrip())
        lines += [f"  ({text})" for text in notes.get(module, [])]
    if outcome.stopped:
        lines += ["", f"The check did not finish: {outcome.stopped}."]
        if outcome.output_tail:
            lines += ["Last output of the checking process:"] + ["  " + s for s in outcome.output_tail.splitlines()]
    found = diagnoses(outcome)
    if found:
        lines += ["", "Diagnoses"]
        for d in found:
            lines.append(f"  [{d['id']}] {d['module']}: {d['message']}")
    if outcome.train:
        lines += ["", *training_table(outcome.train)]
    failed = sum(not c["passed"] for c in outcome.checks)
    named = sum(d["id"] != UNRECOGNISED for d in found)
    lines += [
        "",
        f"{len(outcome.checks) - failed} of {len(outcome.checks)} checks passed"
        + (f"; {named} mistake{'s' if named != 1 else ''} named" if named else "")
        + ("; the check did not finish" if outcome.stopped else "")
        + ".",
    ]
    return "\n".join(lines)


def training_table(train: dict) -> list[str]:
    lines = [
        (
            f"Training: {train['steps']} SGD steps on digits, lr {train['lr']}, batch {train['batch']}, "
            f"hidden {train['hidden']}, from mlplab's initial weights"
        )
    ]
    if train["mlplab"]:
        lines.append(f"  {'step':>4}  {'mlplab':>12}  {'yours':>12}  {'difference':>11}")
        for step, (mine, theirs) in enumerate(zip(train["mlplab"], train["yours"]), start=1):
            mark = "  <- first step at which they part" if step == train["parted_at"] else ""
            lines.append(f"  {step:>4}  {mine:>12.8f}  {theirs:>12.8f}  {theirs - mine:>11.2e}{mark}")
    if train.get("error"):
        lines.append(f"  {train['error']}")
    elif train["parted_at"] is None and train["mlplab"]:
        lines.append("  The two runs agree at every step.")
    return lines
