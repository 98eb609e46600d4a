"""How good and how fast is the follow-up detector? (rlhi_local.feedback, issue 4)

Run from the repository root:

    .venv/bin/python benchmarks/feedback_detector.py

It prints a summary and writes benchmarks/results/feedback_detector.json with:

- our labelled assistant conversations (tests/data/followups_dev.jsonl: the rules were tuned on
  it; tests/data/followups_heldout.jsonl: never tuned on): precision/recall/F1 of actionable vs
  not, macro-F1 over the eight kinds, the confusion matrix, and the mean token-F1 of the
  instruction against ours for actionable items labelled actionable;
- eurtad (../shared/datasets/eurtad, the clean subset of its README: review == "checked",
  n_labels >= 2, majority C1/C2 → 64 feedback, 262 hard negatives): feedback-vs-not P/R/F1. Its
  "feedback" (C1) means "the user reacts to an error the system made", which in our taxonomy is a
  complaint, a correction/clarification/rewrite, or a retry (repeat/rephrase): so
  feedback = actionable or complaint or retry. `positive` is not an error reaction, so it counts
  as not feedback;
- uss_redial (../shared/datasets/uss_redial/ReDial-action.txt): every user turn that follows a
  system turn; gold feedback = the `GiveFeedback` intent. In ReDial that intent also covers
  approval and "I've seen it" ("Yes and yes! I have both on dvd"), so two mappings are reported:
  `error_reaction` (the eurtad mapping) and `any_reaction` (that plus `positive`);
- throughput: follow-ups labelled per second on one core, over all of the above.

The shared datasets are read in place and never copied into the repository; a missing folder is
reported and skipped.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhi_local.feedback import ACTIONABLE, DETECTOR_VERSION, KINDS, classify  # noqa: E402

DATA = ROOT / "tests" / "data"
SHARED = ROOT / ".." / "shared" / "datasets"
RESULTS = ROOT / "benchmarks" / "results" / "feedback_detector.json"
ERROR_REACTION = ACTIONABLE | {"complaint", "retry"}
_WORD = re.compile(r"\w+")


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def prf(gold: Sequence[bool], pred: Sequence[bool]) -> dict[str, float]:
    """Precision, recall and F1 of the positive class, plus support."""
    tp = sum(g and p for g, p in zip(gold, pred))
    fp = sum(p and not g for g, p in zip(gold, pred))
    fn = sum(g and not p for g, p in zip(gold, pred))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3),
            "support": sum(gold), "n": len(gold)}


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> tuple[float, dict[str, float]]:
    per = {k: prf([g == k for g in gold], [p == k for p in pred])["f1"] for k in KINDS}
    return round(sum(per.values()) / len(per), 3), per


def token_f1(a: str, b: str) -> float:
    x, y = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
    common = sum((x & y).values())
    if not common:
        return 0.0
    p, r = common / sum(x.values()), common / sum(y.values())
    return 2 * p * r / (p + r)


def evaluate_labelled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    labels = [classify(r["previous"], r["followup"], r.get("context") or ()) for r in rows]
    gold = [r["kind"] for r in rows]
    pred = [lab.kind for lab in labels]
    macro, per = macro_f1(gold, pred)
    inst = [token_f1(lab.instruction, r["instruction"]) for r, lab in zip(rows, labels)
            if r["kind"] in ACTIONABLE and lab.actionable]
    confusion = Counter(f"{g}->{p}" for g, p in zip(gold, pred) if g != p)
    return {
        "actionable_vs_not": prf([g in ACTIONABLE for g in gold], [lab.actionable for lab in labels]),
        "macro_f1_8": macro,
        "accuracy_8": round(sum(g == p for g, p in zip(gold, pred)) / len(rows), 3),
        "f1_per_kind": per,
        "instruction_token_f1": round(sum(inst) / len(inst), 3) if inst else 0.0,
        "errors": dict(confusion.most_common()),
    }


def eurtad_rows() -> list[tuple[str, str, list[dict[str, str]], bool]]:
    path = SHARED / "eurtad" / "filtered_dialogs_turn_level.jsonl"
    out = []
    for r in load_jsonl(path):
        if not (r["review"] == "checked" and r["n_labels"] >= 2
                and r["majority_user_correction"] in {"C1", "C2"}):
            continue
        strip = r["dataset"] == "Personachat"  # its utterances start with a line number
        clean = (lambda t: re.sub(r"^\d+ ", "", (t or "").strip())) if strip else (lambda t: (t or "").strip())
        ctx = [{"role": "user" if m["role"] == "user" else "assistant", "content": clean(m["text"])}
               for m in r["context"][:-1]]
        out.append((clean(r["prev_system_response"]), clean(r["user_followup"]), ctx,
                    r["majority_user_correction"] == "C1"))
    return out


def redial_rows() -> list[tuple[str, str, list[dict[str, str]], bool]]:
    path = SHARED / "uss_redial" / "ReDial-action.txt"
    out: list[tuple[str, str, list[dict[str, str]], bool]] = []
    dialog: list[tuple[str, str, str]] = []

    def flush() -> None:
        for i in range(1, len(dialog)):
            role, text, intent = dialog[i]
            if role == "USER" and dialog[i - 1][0] == "SYSTEM":
                ctx = [{"role": "user" if r == "USER" else "assistant", "content": t}
                       for r, t, _ in dialog[: i - 1]]
                out.append((dialog[i - 1][1], text, ctx, intent == "GiveFeedback"))
        dialog.clear()

    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            flush()
            continue
        parts = line.split("\t")
        if len(parts) >= 3:
            dialog.append((parts[0], parts[1], parts[2]))
    flush()
    return out


def evaluate_binary(rows: Iterable[tuple[str, str, list[dict[str, str]], bool]],
                    mappings: dict[str, frozenset[str]]) -> dict[str, Any]:
    rows = list(rows)
    kinds = [classify(prev, fu, ctx).kind for prev, fu, ctx, _ in rows]
    gold = [g for *_, g in rows]
    out: dict[str, Any] = {name: prf(gold, [k in m for k in kinds]) for name, m in mappings.items()}
    out["predicted_kinds_on_feedback"] = dict(Counter(k for k, g in zip(kinds, gold) if g).most_common())
    out["predicted_kinds_on_other"] = dict(Counter(k for k, g in zip(kinds, gold) if not g).most_common())
    return out


def throughput(pairs: list[tuple[str, str, Sequence[dict[str, str]]]], repeat: int = 3) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for prev, fu, ctx in pairs:
            classify(prev, fu, ctx)
    return round(repeat * len(pairs) / (time.perf_counter() - start), 1)


def main() -> dict[str, Any]:
    results: dict[str, Any] = {"detector_version": DETECTOR_VERSION}
    pairs: list[tuple[str, str, Sequence[dict[str, str]]]] = []
    for name in ("dev", "heldout"):
        rows = load_jsonl(DATA / f"followups_{name}.jsonl")
        results[name] = evaluate_labelled(rows)
        pairs += [(r["previous"], r["followup"], r.get("context") or ()) for r in rows]
    error = frozenset(ERROR_REACTION)
    try:
        rows = eurtad_rows()
        results["eurtad"] = evaluate_binary(rows, {"feedback": error})
        pairs += [(p, f, c) for p, f, c, _ in rows]
    except FileNotFoundError as exc:
        results["eurtad"] = {"skipped": str(exc)}
    try:
        rows = redial_rows()
        results["uss_redial"] = evaluate_binary(
            rows, {"error_reaction": error, "any_reaction": error | {"positive"}})
        pairs += [(p, f, c) for p, f, c, _ in rows]
    except FileNotFoundError as exc:
        results["uss_redial"] = {"skipped": str(exc)}
    results["throughput_lines_per_s"] = throughput(pairs)
    results["throughput_n_lines"] = len(pairs)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name in ("dev", "heldout"):
        r = results[name]
        a = r["actionable_vs_not"]
        print(f"{name:8} actionable P={a['precision']:.3f} R={a['recall']:.3f} F1={a['f1']:.3f} "
              f"(n={a['n']})  macro-F1(8)={r['macro_f1_8']:.3f}  acc={r['accuracy_8']:.3f}  "
              f"instruction token-F1={r['instruction_token_f1']:.3f}")
    for name in ("eurtad", "uss_redial"):
        for key, v in results[name].items():
            if isinstance(v, dict) and "f1" in v:
                print(f"{name:10} {key:14} P={v['precision']:.3f} R={v['recall']:.3f} F1={v['f1']:.3f} "
                      f"(support {v['support']}/{v['n']})")
    print(f"throughput: {results['throughput_lines_per_s']:.0f} lines/s over {len(pairs)} lines")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return results


if __name__ == "__main__":
    main()
