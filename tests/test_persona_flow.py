"""The persona end to end on the real daemon: mined from chats, in the system prompt, edited by
the user, and the user's edits surviving every rebuild."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from rlhi_local.cli import cli
from rlhi_local.client import Client
from tests.conftest import RunningDaemon

USER = "persona-user"


def chat(c: Client, text: str, conv: str, user: str = USER) -> Any:
    return c.chat([{"role": "user", "content": text}], conversation_id=conv, user=user, max_tokens=4, temperature=0)


def facts(p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["key"]: f for f in p["facts"]}


def test_persona_is_mined_used_in_the_prompt_and_user_edits_survive(daemon: RunningDaemon) -> None:
    with Client(daemon.socket) as c:
        assert c.persona(user=USER)["version"] == 0
        chat(c, "I prefer short answers. How do I list files?", "pc1")
        chat(c, "I use Windows, by the way. What is a registry?", "pc2")
        c._http.post("/v1/signals/mine", params={"user": USER}).raise_for_status()
        p = c.persona(user=USER)
        assert p["version"] >= 1 and p["card"].startswith("User persona:")
        mined = facts(p)
        assert "about_user:os=windows" in mined
        concise = next(k for k in mined if k.startswith("preference:") and "concise" in k)
        assert mined["about_user:os=windows"]["evidence"]  # message ids that support it

        # The card conditions this user's answers (test_engine checks the text reaches the prompt).
        assert chat(c, "Hi", "pc3").raw["rlhi"]["persona_version"] == p["version"]
        assert chat(c, "Hi", "pc4", user="persona-free").raw["rlhi"]["persona_version"] is None

        # The user edits one fact, deletes another, adds one.
        wanted = [{"key": k, "text": f["text"], "deleted": k == "about_user:os=windows"} for k, f in mined.items()]
        for w in wanted:
            if w["key"] == concise:
                w["text"] = "Prefers answers of one or two sentences"
        edited = c.set_persona([*wanted, {"text": "I am a nurse"}], user=USER)
        after = facts(edited)
        assert after[concise]["text"].startswith("Prefers answers of one or two sentences")
        assert after[concise]["source"] == "user"
        assert after["about_user:os=windows"]["deleted"]
        assert "Windows" not in edited["card"] and "nurse" in edited["card"]

        # More chatting and a rebuild: the edit and the deletion stand.
        chat(c, "I use Windows 11 at work, and I prefer short answers.", "pc5")
        c._http.post("/v1/signals/mine", params={"user": USER}).raise_for_status()
        rebuilt = c.persona(user=USER)
        assert facts(rebuilt)[concise]["text"] == after[concise]["text"]
        assert facts(rebuilt)["about_user:os=windows"]["deleted"]
        assert "Windows" not in rebuilt["card"]
        versions = [v["version"] for v in c.persona_history(user=USER)]
        assert versions == sorted(versions) and len(versions) >= 2


def test_persona_cli(daemon: RunningDaemon) -> None:
    env = {"RLHI_HOME": str(daemon.home)}
    runner = CliRunner()
    added = runner.invoke(cli, ["persona", "add", "I live in Lyon"], env=env)
    assert added.exit_code == 0, added.output
    assert "Lyon" in added.output
    shown = runner.invoke(cli, ["persona", "show"], env=env)
    assert shown.exit_code == 0 and "Lyon" in shown.output
    key = next(line.split("]")[0].strip().lstrip("[") for line in shown.output.splitlines() if "Lyon" in line and "[" in line)
    deleted = runner.invoke(cli, ["persona", "delete", key], env=env)
    assert deleted.exit_code == 0 and "Lyon" not in deleted.output
    assert runner.invoke(cli, ["persona", "delete", "no-such-key"], env=env).exit_code == 1
    history = runner.invoke(cli, ["persona", "history"], env=env)
    assert history.exit_code == 0 and "v2" in history.output
