"""Fuzz the HTTP API from its own OpenAPI document: no 5xx, no hang, the daemon stays up.

A private daemon serves on its Unix socket. For every operation in its `/openapi.json`,
schemathesis makes its coverage cases (boundary values, missing and wrong-typed fields,
unexpected methods) and Hypothesis draws valid and invalid requests; each is sent over the socket
with httpx, and schemathesis checks the response against the document (status code, content
type, headers, body schema; invalid data refused with 4xx, valid data accepted). The operations
that refuse schema-valid requests by rules the document cannot state (the last message must be
the user's, the prompt must fit the context; training needs pairs; a rollback needs an adapter;
a forget names one selector and a non-empty range) may answer those with a documented 400.

Generation stays cheap: the daemon's context is 512 tokens and an answer is 4 tokens unless a
request asks for fewer, and requests are capped at 4 before they are sent. Training never starts:
`training.min_pairs` is out of reach, so `POST /v1/train` is fuzzed but refused.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import RunningDaemon, start_thread_daemon, stop_thread_daemon

MIN_CASES = 1000
FUZZ_EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 8}
REQUEST_TIMEOUT_S = 60.0  # a hang detector, far above any answer here (4 tokens, 512 of context)
MAX_TOKENS = 4
FLAGS: dict[str, dict[str, Any]] = {
    "model": {"n_ctx": 512, "n_threads": 1},
    "generation": {"max_tokens": MAX_TOKENS},
    "training": {"min_pairs": 10**6},
    # Background mining would run after each stored turn; POST /v1/signals/mine still mines.
    "learning": {"mining_delay_s": 3600.0},
}
CONFIG = """
[checks]
negative_data_rejection.expected-statuses = [400, 404, 405, 413]

[[operations]]
include-operation-id = ["create_chat_completion", "start_training", "rollback_adapter", "forget_data"]
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 404]
"""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]


@pytest.fixture()
def fuzz_daemon(rlhi_home: Path) -> Iterator[RunningDaemon]:
    running = start_thread_daemon(rlhi_home, FLAGS)
    yield running
    stop_thread_daemon(running)


def cheap(case: Any) -> None:
    """Keep a generated chat request cheap, and make a valid one reach the model: the model
    name is free text in the schema and the last message must be the user's."""
    body = case.body
    if case.operation.path != "/v1/chat/completions" or not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)  # JSON Schema's integers include 211.0, which the API takes as 211
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_TOKENS:
            body[key] = MAX_TOKENS
    if case.meta is not None and case.meta.generation.mode.is_positive:
        body["model"] = "default"
        messages = body.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            messages[-1]["role"] = "user"


def send(http: httpx.Client, case: Any) -> httpx.Response:
    """Send a schemathesis case over the daemon's socket (its own transport speaks TCP only)."""
    kwargs = case.as_transport_kwargs(base_url="http://rlhi")
    if "json" in kwargs:
        content: Any = json.dumps(kwargs["json"]).encode()
    else:
        content = kwargs.get("data")
    return http.request(kwargs["method"], kwargs["url"], params=kwargs.get("params") or None,
                        headers=kwargs.get("headers"), content=content)


def openai_error(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and {"message", "type"} <= set(error)


def test_fuzz_every_operation_of_the_openapi_document(fuzz_daemon: RunningDaemon) -> None:
    transport = httpx.HTTPTransport(uds=str(fuzz_daemon.socket))
    with httpx.Client(transport=transport, base_url="http://rlhi", timeout=REQUEST_TIMEOUT_S) as http:
        doc = http.get("/openapi.json").json()
        schema = schemathesis.openapi.from_dict(doc, config=SchemathesisConfig.from_str(CONFIG))
        sent: Counter[str] = Counter()
        statuses: Counter[int] = Counter()
        failures: list[str] = []
        slowest = (0.0, "")

        def run(case: Any) -> None:
            nonlocal slowest
            cheap(case)
            label = case.operation.label
            started = time.monotonic()
            try:
                response = send(http, case)
            except httpx.TimeoutException:
                failures.append(f"{label}: no answer within {REQUEST_TIMEOUT_S:g} s\n{case.as_curl_command()}")
                return
            except httpx.TransportError as exc:  # the daemon dropped the connection
                failures.append(f"{label}: {exc!r}\n{case.as_curl_command()}")
                return
            slowest = max(slowest, (time.monotonic() - started, label))
            sent[label] += 1
            statuses[response.status_code] += 1
            if response.status_code >= 400 and not openai_error(response):
                failures.append(f"{label}: {response.status_code} is not an OpenAI-shaped error: {response.text[:300]}")
            try:
                case.validate_response(response, checks=CHECKS)
            except (AssertionError, BaseExceptionGroup) as exc:
                failures.append(f"{label}: {exc}"[:3000])

        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20, [op.label for op in operations]
        for op in operations:
            config = schema.config.generation_for(operation=op, phase="coverage")
            for case in schema.iter_coverage_cases(
                op, generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], generation_config=config
            ):
                run(case)
            for mode, examples in FUZZ_EXAMPLES.items():
                # No shrinking: `run` records a failure and goes on, so Hypothesis sees none.
                @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                          phases=[Phase.generate], suppress_health_check=list(HealthCheck))
                @given(case=op.as_strategy(generation_mode=mode))
                def fuzz(case: Any) -> None:
                    run(case)

                try:
                    fuzz()
                except Unsatisfiable:
                    # Nothing in its input can be made invalid: none, or only a free-form string
                    # in the path (its coverage cases above still try the rest).
                    assert mode is GenerationMode.NEGATIVE, op.label

        total = sum(sent.values())
        print(f"fuzz: {total} requests over {len(operations)} operations; statuses {dict(statuses)}; "
              f"slowest {slowest[0]:.2f} s ({slowest[1]})")
        assert not failures, f"{len(failures)} failures, first ones:\n\n" + "\n\n".join(failures[:5])
        assert total >= MIN_CASES, sent
        assert statuses[200] > 50 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 200, statuses
        assert sent["POST /v1/chat/completions"] >= 50, sent
        assert http.get("/health").json()["status"] == "ok"
        answer = http.post("/v1/chat/completions", json={
            "model": "default", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["role"] == "assistant"
    conn = sqlite3.connect(fuzz_daemon.db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
