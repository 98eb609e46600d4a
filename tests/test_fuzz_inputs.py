"""Fuzz what `rlhi import` and `rlhi signals classify` read: every bad line costs only itself.

Hypothesis builds files line by line from three kinds: valid lines (which must be processed,
exactly once), lines that are certainly bad (invalid UTF-8, broken or too deeply nested JSON,
the wrong JSON shape or types, a lone surrogate where text is stored), and free-form bytes (which
may be either). The functions run in-process for the many examples; the real commands run in a
subprocess on a few fixed nasty inputs, where exit codes and stderr are what a user sees.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhi_local.importer import import_file
from rlhi_local.signals_cli import classify_lines
from rlhi_local.store import Store

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
PROBLEM = re.compile(r"^line (\d+): (.+); skipped$")

# Text as people (and other tools) write it: NUL and control characters, non-BMP, huge runs.
text = st.one_of(
    st.text(min_size=1, max_size=40),
    st.text(st.characters(codec="utf-8", categories=["Cc", "Zs", "So", "Lo"]), min_size=1, max_size=20),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "\x00", " é", "\u2028", "🙂"]), st.integers(1, 200_000)),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
deep = st.builds(lambda n, c: c * n, st.integers(2_000, 200_000), st.sampled_from(["[", '{"a":']))
garbage = st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")),
    json_value.map(lambda v: json.dumps(v).encode()),
)


def fresh(tmp_path: Path) -> Path:
    """A new directory per Hypothesis example (`tmp_path` is shared by all of them)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


def one_json_array(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data.decode("utf-8", "replace")), list)
    except (ValueError, RecursionError):
        return False


def one_line(value: object) -> bytes:
    """`value` as one JSONL line: json.dumps escapes newlines, and U+2028 is written raw (JSON allows
    it; a reader that splits lines at it would break the line in two)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


# -- rlhi import ---------------------------------------------------------------------------------

def conversation(marker: int, content: str) -> dict[str, object]:
    return {"title": f"t{marker}", "messages": [{"role": "user", "content": f"#{marker} {content}"},
                                              {"role": "assistant", "content": content[:50]}]}


bad_import_lines = st.one_of(
    st.builds(lambda b: b'{"messages": [{"role": "user", "content": "' + b + b'"}]}',
              st.sampled_from([b"\xff", b"\xc3", b"a\xed\xa0\x80b", b"\xf8\x88\x80\x80\x80"])),
    st.builds(lambda v: one_line(v)[:-1], st.builds(conversation, st.integers(0, 9), text)),  # cut short
    st.builds(lambda v: one_line([v]), json_value),  # not an object
    st.builds(lambda v: one_line({"messages": v}), st.none() | st.integers() | st.text() | st.just([])),
    st.builds(lambda r, c: one_line({"messages": [{"role": r, "content": c}]}),
              st.text(max_size=8).filter(lambda r: r not in {"system", "user", "assistant", "developer"}), text),
    st.builds(lambda c: one_line({"messages": [{"role": "user", "content": c}]}),
              st.integers() | st.floats(allow_nan=False) | st.booleans()),
    st.builds(lambda d: ('{"messages": ' + d).encode(), deep),
    st.builds(lambda c: one_line({"messages": [{"role": "user", "content": "a\ud800" + c}]}), text),
    st.builds(lambda t: one_line({"title": "\udfff" + t, "messages": [{"role": "user", "content": "x"}]}), text),
    st.builds(lambda i: one_line({"conversation_id": i, "messages": [{"role": "user", "content": "x"}]}),
              st.sampled_from(["has space", "", "x" * 129, "../etc", "\ud800"]) | st.integers()),
)


@FUZZ
@given(kinds=st.lists(st.tuples(st.sampled_from(["valid", "bad", "garbage", "blank"]), st.data()),
                      min_size=1, max_size=8))
def test_import_processes_valid_lines_and_names_each_bad_one(tmp_path: Path, kinds: list) -> None:
    lines: list[bytes] = []
    valid: dict[int, dict[str, object]] = {}
    bad: set[int] = set()
    for n, (kind, data) in enumerate(kinds, start=1):
        if kind == "valid":
            valid[n] = conversation(n, data.draw(text))
            lines.append(one_line(valid[n]))
        elif kind == "bad":
            bad.add(n)
            lines.append(data.draw(bad_import_lines))
        elif kind == "garbage":
            lines.append(data.draw(garbage))
        else:
            lines.append(data.draw(st.sampled_from([b"", b"  ", b"\t"])))
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    store = Store(fresh(tmp_path) / "fuzz.db")
    report = import_file(store, path, learn=False)
    assert store.integrity_check() == "ok"
    if one_json_array(path.read_bytes()):  # then it is read as a ChatGPT export, as it should be
        assert all(p.startswith("conversation ") for p in report.problems), report.problems
        return

    named: dict[int, str] = {}
    for problem in report.problems:
        match = PROBLEM.match(problem)
        assert match, problem
        named[int(match[1])] = match[2]
    assert bad <= set(named), (sorted(bad), report.problems)
    assert not set(named) & set(valid), report.problems
    stored = {c.title: store.get_conversation("local", c.id).messages for c in store.list_conversations("local", limit=1000)}
    for n, conv in valid.items():
        messages = stored[f"t{n}"]
        assert [(m.role, m.content) for m in messages] == [
            (m["role"], m["content"]) for m in conv["messages"]]  # type: ignore[index]
    assert report.conversations >= len(valid)


chatgpt_node = st.fixed_dictionaries({}, optional={
    "parent": st.none() | st.sampled_from(["a", "b", "c"]) | json_value,
    "children": st.lists(st.sampled_from(["a", "b", "c", "zz"]), max_size=3) | json_value,
    "message": st.none() | json_value | st.fixed_dictionaries({}, optional={
        "author": json_value | st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool", 3])}),
        "content": json_value | st.fixed_dictionaries({"parts": st.lists(text | json_value, max_size=2)}),
    }),
})
chatgpt_conversation = json_value | st.fixed_dictionaries({}, optional={
    "title": json_value | text,
    "current_node": st.sampled_from(["a", "b", "c", "missing"]) | json_value,
    "mapping": json_value | st.dictionaries(st.sampled_from(["a", "b", "c"]), chatgpt_node | json_value, max_size=3),
})


@FUZZ
@given(export=st.lists(chatgpt_conversation, max_size=5))
def test_chatgpt_exports_of_any_shape_never_crash(tmp_path: Path, export: list[object]) -> None:
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(export))
    store = Store(fresh(tmp_path) / "export.db")
    report = import_file(store, path, learn=False)
    numbers = [int(re.match(r"^conversation (\d+): .+; skipped$", p)[1]) for p in report.problems]  # type: ignore[index]
    assert all(1 <= n <= len(export) for n in numbers) and len(set(numbers)) == len(numbers), report.problems
    assert report.conversations + len(numbers) <= len(export)
    assert store.integrity_check() == "ok"


def test_deeply_nested_export_and_bom_and_line_separators(tmp_path: Path) -> None:
    """Regression: a deeply nested file raised RecursionError out of `rlhi import`; a BOM made
    line 1 invalid; a raw U+2028 inside a JSON string split the line in two; and a JSONL file
    whose line 1 was an array was read as one broken export, losing every valid line after it."""
    store = Store(tmp_path / "first.db")
    path = tmp_path / "array_first.jsonl"
    path.write_bytes(b"[1, 2]\n" + one_line(conversation(0, "kept")) + b"\n")
    report = import_file(store, path, learn=False)
    assert (report.conversations, report.problems) == (1, ["line 1: expected a JSON object; skipped"])

    store = Store(tmp_path / "x.db")
    deep_export = tmp_path / "conversations.json"
    deep_export.write_text("[" * 100_000)
    assert import_file(store, deep_export).problems == ["conversations.json: not valid JSON (nested too deeply)"]
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + one_line(conversation(1, "a\u2028b\x85c")) + b"\n")
    report = import_file(store, path, learn=False)
    assert (report.conversations, report.problems) == (1, [])
    [conv] = store.list_conversations("local")
    assert store.get_conversation("local", conv.id).messages[0].content == "#1 a\u2028b\x85c"


# -- rlhi signals classify -----------------------------------------------------------------------

def followup(marker: int, previous: str, said: str) -> dict[str, object]:
    return {"previous": previous, "followup": f"{said} #{marker}",
            "context": [{"role": "user", "content": previous[:20]}]}


bad_classify_lines = st.one_of(
    st.sampled_from([b"\xff\xfe", b'{"previous": "\xc3", "followup": "x"}', b"\x80"]),
    st.builds(lambda v: one_line(v)[:-1], st.builds(followup, st.integers(0, 9), text, text)),
    st.builds(lambda v: one_line([v]), json_value),
    st.builds(lambda p, f: one_line({"previous": p, "followup": f}),
              json_value.filter(lambda v: not isinstance(v, str)), text | json_value),
    st.builds(lambda c: one_line({"previous": "a", "followup": "b", "context": c}),
              st.integers() | st.text() | st.lists(st.integers() | st.text(), min_size=1)),
    st.builds(lambda d: ('{"previous": ' + d).encode(), deep),
)


@FUZZ
@given(kinds=st.lists(st.tuples(st.sampled_from(["valid", "bad", "garbage", "blank"]), st.data()),
                      min_size=1, max_size=8))
def test_classify_labels_valid_lines_and_names_each_bad_one(kinds: list) -> None:
    lines: list[bytes] = []
    valid: dict[int, dict[str, object]] = {}
    bad: set[int] = set()
    for n, (kind, data) in enumerate(kinds, start=1):
        if kind == "valid":
            # Huge texts are single runs: the rules read every word, and 100k words take seconds.
            valid[n] = followup(n, data.draw(text), data.draw(st.text(max_size=30) | st.just("x" * 100_000)))
            lines.append(one_line(valid[n]))
        elif kind == "bad":
            bad.add(n)
            lines.append(data.draw(bad_classify_lines))
        elif kind == "garbage":
            lines.append(data.draw(garbage))
        else:
            lines.append(b"   ")
    out, err = io.StringIO(), io.StringIO()
    ok, n_bad = classify_lines(io.BytesIO(b"\n".join(lines) + b"\n"), out, err)

    named = [PROBLEM.match(line) for line in err.getvalue().splitlines()]
    assert all(named), err.getvalue()
    numbers = {int(m[1]) for m in named if m}
    assert bad <= numbers and not numbers & set(valid) and n_bad == len(named), err.getvalue()
    # Split at "\n" only: the output keeps a U+2028 raw, as JSON allows (str.splitlines splits there).
    labelled = [json.loads(line) for line in out.getvalue().split("\n")[:-1]]
    assert ok == len(labelled) == len(lines) - n_bad - sum(1 for b in lines if not b.strip())
    mine = [o for o in labelled if isinstance(o.get("followup"), str) and o["followup"].endswith(tuple(
        f" #{n}" for n in valid))]
    assert [o["followup"] for o in mine] == [v["followup"] for v in valid.values()]
    assert all(o["kind"] and 0 <= o["confidence"] <= 1 and o["detector"] == "rules" for o in labelled)


# -- the real commands ---------------------------------------------------------------------------

def rlhi(*args: str, stdin: bytes = b"", home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real `rlhi` in a subprocess, fed bytes (conftest's rlhi_cmd takes text, which cannot
    hold invalid UTF-8)."""
    env = {**os.environ, **({"RLHI_HOME": str(home)} if home else {})}
    done = subprocess.run([sys.executable, "-m", "rlhi_local", *args], input=stdin, capture_output=True,
                          timeout=120, env=env)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode("utf-8"),
                                       done.stderr.decode("utf-8"))


NASTY_CLASSIFY = b"\n".join([
    one_line(followup(1, "Here is a long essay about DNS.", "shorter please")),
    b"\xff\xfe not utf-8",
    b"[" * 100_000,
    json.dumps({"previous": "a\ud800", "followup": "thanks \udfff"}).encode(),  # escaped: "\ud800"
    b'{"previous": "NUL\\u0000", "followup": "ok\\u0000"}',
    one_line({"previous": 3, "followup": "x"}),
    b"",
]) + b"\n"


def test_cli_classify_on_nasty_stdin_reports_each_line_and_exits_0() -> None:
    result = rlhi("signals", "classify", stdin=NASTY_CLASSIFY)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["followup"] for o in out] == ["shorter please #1", "thanks \udfff", "ok\x00"]
    assert out[0]["kind"] == "rewrite_request"
    for needle in ["line 2: not valid UTF-8 (byte 0xff at column 1)", "line 3: not valid JSON (nested too deeply)",
                   'line 6: "previous" must be a string', "warning: skipped 3 bad line(s); labelled 3"]:
        assert needle in result.stderr, result.stderr


def test_cli_classify_exit_codes() -> None:
    none_usable = rlhi("signals", "classify", stdin=b"\xff\n[1]\n")
    assert none_usable.returncode == 1 and "Traceback" not in none_usable.stderr
    assert "line 1: not valid UTF-8" in none_usable.stderr and "none of the 2 input lines" in none_usable.stderr
    assert rlhi("signals", "classify").returncode == 0


def test_cli_import_of_a_nasty_file_reports_lines_and_learns(tmp_path: Path) -> None:
    path = tmp_path / "nasty.jsonl"
    path.write_bytes(b"\n".join([
        one_line(conversation(1, "What is DNS?")),
        b'{"messages": [{"role": "user", "content": "\xff"}]}',
        b'{"messages": ' + b"[" * 50_000,
        one_line({"title": "\ud800", "messages": [{"role": "user", "content": "x"}]}),
        one_line({"conversation_id": "bad id", "messages": [{"role": "user", "content": "x"}]}),
        one_line({"messages": [{"role": "user", "content": "NUL \x00 and \u2028 kept"}]}),
    ]))
    result = rlhi("import", str(path), home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "imported 2 conversations, 3 messages" in result.stdout
    report = result.stdout + result.stderr
    for line in (2, 3, 4, 5):
        assert f"line {line}: " in report, report
    assert "line 1:" not in report and "line 6:" not in report
    every_line_bad = tmp_path / "bad.jsonl"
    every_line_bad.write_bytes(b"\xff\n[1]\n")
    failed = rlhi("import", str(every_line_bad), home=tmp_path / "home")
    assert failed.returncode == 1 and "line 1: not valid UTF-8" in failed.stdout + failed.stderr
