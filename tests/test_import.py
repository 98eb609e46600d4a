"""`rlhi import`: OpenAI JSONL and ChatGPT exports into the store, bad items skipped, then mined."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhi_local.cli import cli
from rlhi_local.config import data_dir
from rlhi_local.importer import import_file
from rlhi_local.store import Store

LONG = ("Python lists are ordered, mutable sequences. You create them with square brackets, "
        "index them from zero, slice them, append to them, and hold values of any type.")


def jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_jsonl_import_skips_bad_lines_is_idempotent_and_is_mined(tmp_path: Path) -> None:
    good = {"title": "Lists", "messages": [
        {"role": "user", "content": "What is a Python list?"},
        {"role": "assistant", "content": LONG},
        {"role": "user", "content": "shorter please"},
        {"role": "assistant", "content": "An ordered, mutable sequence."},
        {"role": "user", "content": "thanks!"},
    ]}
    path = jsonl(tmp_path / "chats.jsonl", [good, "{not json", {"messages": []},
                                             {"messages": [{"role": "wizard", "content": "x"}]},
                                             {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}])
    store = Store(tmp_path / "rlhi.db")
    report = import_file(store, path)
    assert (report.conversations, report.messages) == (2, 6)
    assert [p.split(":")[0] for p in report.problems] == ["line 2", "line 3", "line 4"]
    convs = store.list_conversations("local")
    assert sorted(c.title for c in convs) == ["Lists", "hi"]
    lists = store.get_conversation("local", next(c.id for c in convs if c.title == "Lists"))
    assert [m.origin for m in lists.messages] == ["user", "imported", "user", "imported", "user"]
    assert report.mining is not None and report.mining.labelled == 2
    [pair] = store.pairs("local", origin="guided_rewrite")
    assert (pair.status, pair.chosen, pair.rejected) == ("ready", "An ordered, mutable sequence.", LONG)
    again = import_file(store, path)
    assert (again.conversations, again.messages) == (0, 0)
    assert len(store.list_conversations("local")) == 2


def test_chatgpt_export_imports_the_current_branch(tmp_path: Path) -> None:
    def node(i: str, parent: str | None, children: list[str], role: str | None, text: str) -> dict[str, object]:
        message = None if role is None else {"author": {"role": role}, "content": {"content_type": "text", "parts": [text]}}
        return {"id": i, "parent": parent, "children": children, "message": message}

    export = [{
        "title": "Trip",
        "current_node": "a2",
        "mapping": {
            "root": node("root", None, ["u1"], None, ""),
            "u1": node("u1", "root", ["a1", "a2"], "user", "Plan a day in Lyon."),
            "a1": node("a1", "u1", [], "assistant", "First draft."),
            "a2": node("a2", "u1", [], "assistant", "Visit Vieux Lyon, then Fourvière."),
        },
    }, {"title": "broken", "mapping": {}}]
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(export))
    store = Store(tmp_path / "rlhi.db")
    report = import_file(store, path)
    assert report.conversations == 1 and report.problems == ["conversation 2: \"mapping\" must be a non-empty object; skipped"]
    [conv] = store.list_conversations("local")
    messages = store.get_conversation("local", conv.id).messages
    assert conv.title == "Trip"
    assert [m.content for m in messages] == ["Plan a day in Lyon.", "Visit Vieux Lyon, then Fourvière."]


def test_cli_import_reports_and_exits(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "Hello"}]}, "oops"])
    result = CliRunner().invoke(cli, ["import", str(path)])
    assert result.exit_code == 0, result.output
    assert "imported 1 conversations, 1 messages" in result.output and "line 2" in result.output
    assert (data_dir() / "rlhi.db").exists()
    bad = jsonl(tmp_path / "bad.jsonl", ["nope", "[1]"])
    assert CliRunner().invoke(cli, ["import", str(bad)]).exit_code == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(st.text(max_size=60), st.builds(json.dumps, st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["messages", "role", "content", "title"]), inner, max_size=3),
    max_leaves=8))), max_size=8))
def test_fuzzed_files_never_crash_and_problems_name_their_line(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(line.replace("\n", " ") for line in lines))
    store = Store(tmp_path / "fuzz.db")
    report = import_file(store, path)
    assert all(p.startswith(("line ", "conversation ", "fuzz.jsonl")) for p in report.problems)
    assert store.integrity_check() == "ok"
