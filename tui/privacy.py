"""Off the record and paused learning, as the chat shows them. Pure functions over plain dicts.

An off-the-record conversation lives only in the app's memory: each request carries the
`x-rlhi-off-record` header (the daemon answers and stores nothing), and its turns are kept here
with local ids and `off_record: True`, so the message boxes disable the actions that would teach
the model (edit, regenerate, thumbs, prefer). Leaving the conversation drops them for good.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["OFF_RECORD_HINT", "OFF_RECORD_NOTE", "OFF_RECORD_PLACEHOLDER", "learning_note", "off_record_turn"]

OFF_RECORD_HINT = ("Off the record. Answers come as usual, but nothing of this conversation is stored, "
                   "mined or learned from, and it is gone when you leave it (Ctrl+N or another conversation).")
OFF_RECORD_NOTE = "Off the record: nothing of this conversation is stored or learned from. Ctrl+N leaves it."
OFF_RECORD_PLACEHOLDER = "Off the record: nothing is stored (Enter sends, Ctrl+N leaves)"


def off_record_turn(messages: Sequence[dict[str, Any]], user_text: str | None, answer: str,
                    stopped: bool) -> list[dict[str, Any]]:
    """The user's turn and the answer as message dicts chained after `messages` (the in-memory
    conversation so far), shaped like the daemon's so the chat shows them the same way."""
    parent = messages[-1]["id"] if messages else None
    out: list[dict[str, Any]] = []
    n = len(messages)
    if user_text is not None:
        out.append({"id": f"off-record-{n + 1}", "parent_id": parent, "role": "user", "content": user_text,
                    "origin": "user", "status": "complete", "off_record": True})
        parent = out[-1]["id"]
    out.append({"id": f"off-record-{n + len(out) + 1}", "parent_id": parent, "role": "assistant",
                "content": answer, "origin": "model", "status": "incomplete" if stopped else "complete",
                "off_record": True})
    return out


def learning_note(state: dict[str, Any], resumed: bool) -> str:
    """What the app says after F5 paused (`resumed` False) or resumed learning, from the daemon's
    `/v1/learning` answer (a resume leaves it paused while the config's switch is off)."""
    if resumed:
        if state.get("paused"):
            return f"Resumed, but {state.get('reason')}."
        return "Learning resumed: what you said meanwhile is learned from soon."
    cancelled = f" Training run {state['cancelled_run']} was cancelled." if state.get("cancelled_run") else ""
    return ("Learning paused: nothing is mined, sampled or trained until you press F5 again. "
            "Chats are still answered and stored." + cancelled)
