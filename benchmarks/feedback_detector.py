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

With a model (`detector.model`, DESIGN §4: "a capable configured model"):

    .venv/bin/python benchmarks/feedback_detector.py --model PATH.gguf --sets dev --limit 60

labels the same sets with `feedback.classify_with_model` (the grammar-constrained JSON label,
falling back to the rules below `--min-confidence`), and the rules on the very same lines, and
prints both tables, how often the model's label was used, and lines/s for each. `--limit N`
takes N lines spread evenly over each set (the files are grouped by kind, so not the first N).
It writes benchmarks/results/feedback_detector_model.json.

Why the rules stay the default (measured with `--sets dev --limit 60`, the embedded
SmolLM2-135M-Instruct Q4_1 as the model, one thread, on a shared 2-core machine): on the same 60
dev lines the rules scored actionable F1 1.000 and macro-F1(8) 0.931 (accuracy 0.933); the
model-based detector 0.578 (precision 0.407, recall 1.000) and 0.064 (accuracy 0.167): the 135M
model calls nearly every follow-up a rewrite_request, and says so with confidence 0.8-0.9, so
min_confidence cannot catch it (59 of 60 labels were the model's; 1 output was cut off and fell
back). And it ran at 0.15 lines/s (about 2.2 s of CPU a line) against ~1,800 lines/s for the
rules. A larger model the user configures may do better; this script is how to check first.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhi_local.config import DetectorConfig  # noqa: E402
from rlhi_local.feedback import (ACTIONABLE, DETECTOR_VERSION, KINDS, FollowupLabel, LocalModel,  # noqa: E402
                                 classify, classify_with_model)

Label = Callable[[str, str, Sequence[Mapping[str, str]]], FollowupLabel]

DATA = ROOT / "tests" / "data"
SHARED = ROOT / ".." / "shared" / "datasets"
RESULTS = ROOT / "benchmarks" / "results" / "feedback_detector.json"
MODEL_RESULTS = ROOT / "benchmarks" / "results" / "feedback_detector_model.json"
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


def evaluate_labelled(rows: list[dict[str, Any]], label: Label = classify) -> dict[str, Any]:
    labels = [label(r["previous"], r["followup"], r.get("context") or ()) for r in rows]
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
                    mappings: dict[str, frozenset[str]], label: Label = classify) -> dict[str, Any]:
    rows = list(rows)
    kinds = [label(prev, fu, ctx).kind for prev, fu, ctx, _ in rows]
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


def spread(rows: list[Any], limit: int | None) -> list[Any]:
    """At most `limit` rows spread evenly over `rows` (every kind of a grouped file gets some)."""
    if not limit or len(rows) <= limit:
        return rows
    step = len(rows) / limit
    return [rows[math.floor(i * step)] for i in range(limit)]


def print_table(results: dict[str, Any], sets: Sequence[str]) -> None:
    for name in sets:
        r = results.get(name) or {}
        if "actionable_vs_not" in r:
            a = r["actionable_vs_not"]
            print(f"{name:8} actionable P={a['precision']:.3f} R={a['recall']:.3f} F1={a['f1']:.3f} "
                  f"(n={a['n']})  macro-F1(8)={r['macro_f1_8']:.3f}  acc={r['accuracy_8']:.3f}  "
                  f"instruction token-F1={r['instruction_token_f1']:.3f}")
            continue
        for key, v in r.items():
            if isinstance(v, dict) and "f1" in v:
                print(f"{name:10} {key:14} P={v['precision']:.3f} R={v['recall']:.3f} F1={v['f1']:.3f} "
                      f"(support {v['support']}/{v['n']})")


def evaluate_sets(sets: Sequence[str], label: Label, limit: int | None) -> tuple[dict[str, Any], int]:
    """Every requested set evaluated with `label`; returns (results, lines labelled)."""
    results: dict[str, Any] = {}
    n = 0
    error = frozenset(ERROR_REACTION)
    for name in sets:
        if name in ("dev", "heldout"):
            rows = spread(load_jsonl(DATA / f"followups_{name}.jsonl"), limit)
            results[name] = evaluate_labelled(rows, label)
            n += len(rows)
            continue
        try:
            binary = spread(eurtad_rows() if name == "eurtad" else redial_rows(), limit)
        except FileNotFoundError as exc:
            results[name] = {"skipped": str(exc)}
            continue
        mappings = {"feedback": error} if name == "eurtad" else {"error_reaction": error,
                                                                 "any_reaction": error | {"positive"}}
        results[name] = evaluate_binary(binary, mappings, label)
        n += len(binary)
    return results, n


def main_model(args: argparse.Namespace) -> dict[str, Any]:
    """The model-based detector against the rules, on the same (limited) lines."""
    model = LocalModel(args.model, n_threads=args.threads)
    model.load()
    detectors: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()

    def with_model(previous: str, followup: str, context: Sequence[Mapping[str, str]]) -> FollowupLabel:
        label = classify_with_model(previous, followup, context, generate=model.generate, n_ctx=model.n_ctx,
                                    max_tokens=args.max_tokens, min_confidence=args.min_confidence)
        assert label is not None  # a local model is never busy
        detectors[label.detector] += 1
        if label.fallback:
            fallbacks[label.fallback.split(":")[0]] += 1
        return label

    spent = {"rules": 0.0, "model": 0.0}

    def timed(name: str, label: Label) -> Label:
        """`label`, adding the seconds spent labelling (not loading the sets) to `spent[name]`."""
        def run(previous: str, followup: str, context: Sequence[Mapping[str, str]]) -> FollowupLabel:
            started = time.perf_counter()
            try:
                return label(previous, followup, context)
            finally:
                spent[name] += time.perf_counter() - started
        return run

    rules, n = evaluate_sets(args.sets, timed("rules", classify), args.limit)
    candidate, _ = evaluate_sets(args.sets, timed("model", with_model), args.limit)
    rules_s, model_s = spent["rules"], spent["model"]
    model.close()
    results = {
        "detector_version": DETECTOR_VERSION, "model": Path(args.model).name, "threads": args.threads,
        "min_confidence": args.min_confidence, "max_tokens": args.max_tokens, "limit": args.limit,
        "lines": n, "rules": rules, "model_detector": candidate,
        "labels_by_detector": dict(detectors), "fallbacks": dict(fallbacks),
        "rules_lines_per_s": round(n / rules_s, 1) if rules_s else None,
        "model_lines_per_s": round(n / model_s, 3) if model_s else None,
    }
    MODEL_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    MODEL_RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"rules on the same {n} lines:")
    print_table(rules, args.sets)
    print(f"model detector ({Path(args.model).name}, min_confidence={args.min_confidence}):")
    print_table(candidate, args.sets)
    print(f"labels by detector: {dict(detectors)}; fallbacks: {dict(fallbacks)}")
    print(f"throughput: rules {results['rules_lines_per_s']} lines/s, model {results['model_lines_per_s']} lines/s "
          f"({args.threads} thread(s))")
    print(f"wrote {MODEL_RESULTS.relative_to(ROOT)}")
    return results


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a GGUF file: evaluate the model-based detector against the rules")
    parser.add_argument("--sets", default="dev,heldout,eurtad,uss_redial",
                        help="comma-separated: dev, heldout, eurtad, uss_redial (with --model)")
    parser.add_argument("--limit", type=int, default=None, help="lines per set, spread evenly (with --model)")
    parser.add_argument("--threads", type=int, default=1, help="model threads (with --model; 0: physical cores)")
    parser.add_argument("--min-confidence", type=float, default=DetectorConfig().min_confidence)
    parser.add_argument("--max-tokens", type=int, default=DetectorConfig().max_tokens)
    args = parser.parse_args()
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if args.model:
        return main_model(args)
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
