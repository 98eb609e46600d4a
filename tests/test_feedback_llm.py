"""The follow-up detector with a configured model (`detector.model`): the grammar-constrained
JSON label, the fallback to the rules, `rlhi signals classify --model`, and the daemon labelling
with its own served model.

The "capable model" here is the embedded SmolLM2-135M: its labels are poor (see
benchmarks/feedback_detector.py), but every path a capable model takes runs for real. Each model
call is short: the verdict is a few dozen tokens, and only a handful of lines are labelled.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rlhi_local.client import Client
from rlhi_local.config import load_config
from rlhi_local.errors import ConfigError, ContextLengthError
from rlhi_local.feedback import (ACTIONABLE, DETECTOR_VERSION, KINDS, LocalModel, classify,
                                 classify_with_model)
from rlhi_local.feedback._llm import MAX_INSTRUCTION, SCHEMA, detector_messages, parse_verdict
from rlhi_local.models import embedded_model_path
from rlhi_local.signals_cli import signals
from rlhi_local.store import Store
from tests.conftest import rlhi_cmd, start_thread_daemon, stop_thread_daemon, wait_for

ESSAY = ("Photosynthesis is the process by which plants convert light energy into chemical energy, "
         "using chlorophyll to absorb light and fix carbon dioxide into glucose.")
LINES = [
    {"previous": ESSAY, "followup": "shorter please",
     "context": [{"role": "user", "content": "what is photosynthesis?"}]},
    {"previous": "The capital of Australia is Sydney.", "followup": "No, it's Canberra."},
    {"previous": ESSAY, "followup": "perfect, thanks!"},
    {"previous": ESSAY, "followup": "why is chlorophyll green?"},
    {"previous": ESSAY, "followup": "Write me a limerick about a cat"},
]
INPUT = "".join(json.dumps(line) + "\n" for line in LINES)


@pytest.fixture(scope="module")
def gguf() -> str:
    return str(embedded_model_path())


def outputs(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def assert_valid_label(out: dict[str, Any]) -> None:
    assert out["kind"] in KINDS
    assert isinstance(out["actionable"], bool) and out["actionable"] == (out["kind"] in ACTIONABLE)
    assert isinstance(out["instruction"], str) and (out["instruction"] == "") == (not out["actionable"])
    assert 0.0 <= out["confidence"] <= 1.0
    assert out["detector"] in {"rules", "model"}


def assert_matches_schema(raw: str) -> dict[str, Any]:
    """The model's raw text is one JSON object of exactly the schema's shape (what the grammar forces)."""
    obj = json.loads(raw)
    assert list(obj) == SCHEMA["required"]
    assert obj["kind"] in KINDS and isinstance(obj["actionable"], bool)
    assert isinstance(obj["instruction"], str) and len(obj["instruction"]) <= MAX_INSTRUCTION
    assert isinstance(obj["confidence"], (int, float)) and not isinstance(obj["confidence"], bool)
    return obj


def test_classify_with_the_embedded_model_labels_every_line_through_the_grammar(gguf: str) -> None:
    result = rlhi_cmd("signals", "classify", "--model", gguf, "--threads", "1", input=INPUT)
    assert result.returncode == 0, result.stderr
    outs = outputs(result.stdout)
    assert [o["followup"] for o in outs] == [line["followup"] for line in LINES]
    for out in outs:
        assert_valid_label(out)
        model = assert_matches_schema(out["model_output"])  # the constrained output always parses
        if out["detector"] == "model":
            assert out["fallback"] == "" and out["kind"] == model["kind"]
            assert out["confidence"] == round(min(1.0, max(0.0, model["confidence"])), 3)
        else:
            assert out["fallback"] == "low_confidence" and model["confidence"] < 0.5
    # The default min_confidence (0.5) lets a confident model label win at least once.
    assert any(o["detector"] == "model" for o in outs)


def test_min_confidence_above_one_keeps_every_rules_label(gguf: str) -> None:
    lines = INPUT.splitlines(keepends=True)[:3]  # a rewrite, a correction, a positive: enough here
    rules = outputs(CliRunner().invoke(signals, ["classify"], input="".join(lines)).output)
    result = CliRunner().invoke(signals, ["classify", "--model", gguf, "--threads", "1", "--min-confidence", "1.01"],
                                input="".join(lines))
    assert result.exit_code == 0, result.output
    outs = outputs(result.output)
    assert len(outs) == len(rules) == len(lines)
    keys = ("kind", "actionable", "instruction", "confidence")
    for out, rule in zip(outs, rules):
        assert rule["detector"] == "rules" and "model_output" not in rule
        assert (out["detector"], out["fallback"]) == ("rules", "low_confidence")
        assert_matches_schema(out["model_output"])  # the model ran; its label was not used
        assert [out[k] for k in keys] == [rule[k] for k in keys]


def test_a_broken_detector_model_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "judge.gguf"
    result = rlhi_cmd("signals", "classify", "--model", str(missing), input=INPUT)
    assert result.returncode == 1 and result.stdout == ""
    assert f"Detector model file {missing} does not exist" in result.stderr and "detector.model" in result.stderr

    # The config's detector.model is honoured when it is a path (here through the environment).
    notgguf = tmp_path / "judge.gguf"
    notgguf.write_bytes(b"nope, not a model")
    result = rlhi_cmd("signals", "classify", input=INPUT, env={"RLHI_DETECTOR__MODEL": str(notgguf)})
    assert result.returncode == 1 and result.stdout == ""
    assert f"Detector model file {notgguf} is not a GGUF file" in result.stderr

    result = rlhi_cmd("signals", "classify", input=INPUT, env={"RLHI_DETECTOR__MODEL": "serve"})
    assert result.returncode == 1 and "Config 'detector.model' has value 'serve'" in result.stderr


@pytest.mark.parametrize(("section", "message"), [
    ({"model": "rules"}, "Config 'detector.model' has value 'rules'"),
    ({"min_confidence": -0.1}, "Config 'detector.min_confidence' has value -0.1"),
    ({"max_tokens": 8}, "Config 'detector.max_tokens' has value 8"),
])
def test_detector_settings_are_validated(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config({"detector": section})
    assert load_config({"detector": {"model": "served", "min_confidence": 1.01}}).detector.model == "served"


@pytest.mark.parametrize(("text", "problem"), [
    ('{"kind": "rewrite_request", "actionable": tr', "not JSON"),  # cut off by max_tokens
    ('["rewrite_request"]', "not a JSON object"),
    ('{"kind": "praise", "actionable": false, "instruction": "", "confidence": 0.9}', "unknown kind 'praise'"),
    ('{"kind": "retry", "actionable": false, "instruction": "", "confidence": "high"}', "is not a number"),
    ('{"kind": "retry", "actionable": false, "instruction": "", "confidence": NaN}', "is not a number"),
])
def test_unusable_model_output_is_rejected_with_the_reason(text: str, problem: str) -> None:
    verdict, why = parse_verdict(text)
    assert verdict is None and problem in why


def test_model_output_is_normalised_to_the_taxonomy() -> None:
    # actionable follows the kind; an instruction goes only with an actionable kind; confidence clamps.
    verdict, _ = parse_verdict('{"kind": "correction", "actionable": false, "instruction": " it is  Canberra ", '
                               '"confidence": 7}')
    assert verdict is not None and (verdict.actionable, verdict.instruction, verdict.confidence) == (
        True, "it is Canberra", 1.0)
    verdict, _ = parse_verdict('{"kind": "positive", "actionable": true, "instruction": "be nicer", "confidence": -2}')
    assert verdict is not None and (verdict.actionable, verdict.instruction, verdict.confidence) == (False, "", 0.0)


def test_the_fallback_records_why_and_a_busy_model_defers() -> None:
    # `generate` stands for the model at the boundary: what it answers decides which label stands.
    def too_long(messages: list[dict[str, str]], grammar: str, max_tokens: int) -> str:
        raise ContextLengthError(5000, 2048)

    label = classify_with_model(ESSAY, "shorter please", generate=too_long, n_ctx=2048)
    assert label is not None and label.detector == "rules" and label.fallback.startswith("model_error:")
    assert label.kind == classify(ESSAY, "shorter please").kind
    truncated = classify_with_model(ESSAY, "shorter please", n_ctx=2048,
                                    generate=lambda m, g, n: '{"kind": "retry", "actio')
    assert truncated is not None and truncated.fallback.startswith("bad_output: not JSON")
    assert classify_with_model(ESSAY, "shorter please", generate=lambda m, g, n: None, n_ctx=2048) is None
    empty = classify_with_model(ESSAY, "shorter please", n_ctx=2048, generate=lambda m, g, n: (
        '{"kind": "rewrite_request", "actionable": true, "instruction": "", "confidence": 0.9}'))
    assert empty is not None and (empty.detector, empty.instruction) == ("model", "shorter")


def test_long_inputs_are_cut_to_fit_a_small_context(gguf: str) -> None:
    engine = LocalModel(gguf, n_ctx=1024).load()
    try:
        huge = "word " * 20000
        messages = detector_messages(huge, huge + " Traceback: ValueError: bad", [{"role": "user", "content": huge}],
                                     n_ctx=1024, max_tokens=96)
        assert len(engine.render(messages)) <= 1024 - 96
        assert messages[-1]["content"].endswith("ValueError: bad")  # the end of a paste is kept
    finally:
        engine.close()


def test_the_daemon_labels_follow_ups_with_its_served_model() -> None:
    home = Path(tempfile.mkdtemp(prefix="rhdet", dir="/tmp"))
    # min_confidence 0: any label the served model gives through the grammar is used, so the
    # stored row shows the model path ran end to end (the engine's queue, a background job).
    # One thread: on a shared machine two threads that wait on each other run far slower.
    running = start_thread_daemon(home, {"detector": {"model": "served", "min_confidence": 0.0},
                                         "model": {"n_threads": 1}})
    try:
        with Client(running.socket) as c:
            q = [{"role": "user", "content": "Name one fruit."}]
            a = c.chat(q, conversation_id="det", max_tokens=12, temperature=0)
            h = [*q, {"role": "assistant", "content": a.text}, {"role": "user", "content": "shorter please"}]
            c.chat(h, conversation_id="det", max_tokens=8, temperature=0)
            store = Store(running.db_path)

            def rows() -> list[tuple[str, str, str, float, str]]:
                return store.db.execute(
                    "SELECT message_id, kind, detector, confidence, detector_version FROM feedback "
                    "WHERE source = 'detector'").fetchall()

            assert wait_for(lambda: rows(), timeout=60)
            [(judged, kind, detector, confidence, version)] = rows()
            assert (judged, detector, version) == (a.message_id, "model", DETECTOR_VERSION)
            assert kind in KINDS and 0.0 <= confidence <= 1.0
            [label] = store.detector_labels("local", DETECTOR_VERSION)
            assert label.detector == "model" and label.actionable == (kind in ACTIONABLE)
            assert c._http.post("/v1/signals/mine").json()["labelled"] == 0  # labelled once
            store.close()
    finally:
        stop_thread_daemon(running)
        shutil.rmtree(home, ignore_errors=True)
