"""The user's persona: the card the model sees and the facts behind it, to edit, delete or add.

Every change sends the whole list of facts the user wants (`set_persona`) and shows the persona
the daemon answers with. The list is fetched again just before, so a fact mined meanwhile is kept
rather than dropped. What the user typed stays in the box when the daemon refuses it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static

from rlhi_local.client import AsyncClient

from ._calls import ask_daemon
from .confirm import ConfirmScreen

log = logging.getLogger(__name__)

SOURCES = {"mined": "mined", "user": "yours"}
QUOTES = 3
"""How many evidence messages are quoted (those in the conversation on screen)."""
QUOTE_CHARS = 90


class PersonaScreen(ModalScreen[None]):
    """Shows the persona of `user`; `client` gives the app's current client (it changes when the
    app reconnects); `messages` are the loaded conversation's, to quote a fact's evidence."""

    BINDINGS = [
        Binding("e", "edit", "Edit", tooltip="Edit the highlighted fact"),
        Binding("a", "add", "Add", tooltip="Add a fact of your own"),
        Binding("d,delete", "delete", "Delete", tooltip="Delete the highlighted fact (asks first)"),
        Binding("escape", "close", "Close", tooltip="Cancel the edit, else close the persona"),
    ]

    def __init__(self, client: Callable[[], AsyncClient], user: str | None,
                 messages: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__()
        self.client = client
        self.user = user
        self.messages = {str(m["id"]): m for m in messages}
        self.persona: dict[str, Any] = {}
        self.editing: str | None = None
        """The key of the fact being edited; None while the box adds a new fact."""
        self._saving = asyncio.Lock()

    @property
    def facts(self) -> list[dict[str, Any]]:
        """The visible (not deleted) facts, in the daemon's order."""
        return [f for f in self.persona.get("facts", []) if not f.get("deleted")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Your persona: what the model is told about you. Mining never changes a "
                         "fact you edited, deleted or added.  (Esc closes)", id="question")
            yield Static("Loading…", markup=False, id="persona-card")
            yield DataTable(cursor_type="row", zebra_stripes=False, id="facts")
            yield Static("", markup=False, id="fact-detail")
            yield Input(placeholder="Type a new fact and press Enter (e edits the highlighted one)",
                        id="fact-input")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#persona-card", Static).border_title = "Card (in the model's system prompt)"
        table = self.query_one("#facts", DataTable)
        table.border_title = "Facts"
        table.add_column("Fact", key="text")
        table.add_column("Category", key="category")
        table.add_column("Evidence", key="count")
        table.add_column("Source", key="source")
        self._set_mode(None)
        table.focus()
        self._load()

    # ---- showing ---------------------------------------------------------------------------

    @work(exclusive=True, group="persona-load", exit_on_error=False)
    async def _load(self) -> None:
        persona = await self._ask(self.client().persona(user=self.user))
        if persona is not None:
            self._show(persona)

    def _show(self, persona: dict[str, Any], highlight: str | None = None) -> None:
        table = self.query_one("#facts", DataTable)
        current = self._highlighted_key()
        self.persona = persona
        card = str(persona.get("card") or "")
        self.query_one("#persona-card", Static).update(card or "(empty: no facts yet)")
        table.clear()
        for fact in self.facts:
            table.add_row(
                fact["text"], str(fact["category"]).replace("_", " "), str(fact.get("count", 0)),
                SOURCES.get(fact.get("source", ""), str(fact.get("source"))), key=fact["key"],
            )
        table.border_subtitle = f"{len(self.facts)} facts · version {persona.get('version', 0)}"
        target = highlight or current
        keys = [f["key"] for f in self.facts]
        if target in keys:
            table.move_cursor(row=keys.index(target), animate=False)
        self._show_detail()

    def _highlighted_key(self) -> str | None:
        table = self.query_one("#facts", DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return None if row_key.value is None else str(row_key.value)

    def _fact(self, key: str | None) -> dict[str, Any] | None:
        return next((f for f in self.facts if f["key"] == key), None)

    @on(DataTable.RowHighlighted, "#facts")
    def _highlighted(self) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        self.query_one("#fact-detail", Static).update(describe(self._fact(self._highlighted_key()),
                                                               self.messages))

    # ---- changing --------------------------------------------------------------------------

    def _set_mode(self, key: str | None) -> None:
        self.editing = key
        box = self.query_one("#fact-input", Input)
        box.border_title = "Edit the fact (Enter saves, Esc cancels)" if key else "New fact"

    def action_edit(self) -> None:
        fact = self._fact(self._highlighted_key())
        if fact is None:
            return
        self._set_mode(fact["key"])
        box = self.query_one("#fact-input", Input)
        box.value = fact["text"]
        box.focus()
        box.cursor_position = len(box.value)

    @on(DataTable.RowSelected, "#facts")
    def _selected(self) -> None:
        self.action_edit()

    def action_add(self) -> None:
        self._set_mode(None)
        box = self.query_one("#fact-input", Input)
        box.value = ""
        box.focus()

    def action_close(self) -> None:
        box = self.query_one("#fact-input", Input)
        if box.has_focus and (self.editing is not None or box.value):
            self._set_mode(None)
            box.value = ""
            self.query_one("#facts", DataTable).focus()
            return
        self.dismiss(None)

    @on(Input.Submitted, "#fact-input")
    def _submitted(self, event: Input.Submitted) -> None:
        text = " ".join(event.value.split())
        if not text:
            self.notify("A fact needs some text; d deletes one.", severity="warning")
            return
        self._save(self.editing, text)

    @work(group="persona-save", exit_on_error=False)
    async def _save(self, key: str | None, text: str) -> None:
        """Edit the fact `key` to `text`, or add `text` as a new fact when `key` is None."""
        persona = await self._change(lambda wanted: _edited(wanted, key, text))
        if persona is None:
            return  # refused: the text stays in the box to fix or retry
        self._set_mode(None)
        self.query_one("#fact-input", Input).value = ""
        self.query_one("#facts", DataTable).focus()
        old = {f["key"] for f in self.facts}
        new = [f["key"] for f in persona["facts"] if not f.get("deleted") and f["key"] not in old]
        self._show(persona, highlight=key or (new[0] if new else None))
        self.notify("Saved your fact." if key else "Added your fact.")

    def action_delete(self) -> None:
        if (fact := self._fact(self._highlighted_key())) is not None:
            self._delete(fact)

    @work(group="persona-save", exit_on_error=False)
    async def _delete(self, fact: dict[str, Any]) -> None:
        question = (f"Delete “{fact['text']}”? The model stops being told it, and mining will not "
                    f"bring it back.")
        if not await self.app.push_screen_wait(ConfirmScreen(question)):
            return
        persona = await self._change(lambda wanted: _deleted(wanted, fact["key"]))
        if persona is not None:
            if self.editing == fact["key"]:
                self._set_mode(None)
            self._show(persona)
            self.notify("Fact deleted.")

    async def _change(self, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
                      ) -> dict[str, Any] | None:
        """Apply `change` to the facts as the daemon has them now and send the result."""
        async with self._saving:
            current = await self._ask(self.client().persona(user=self.user))
            if current is None:
                return None
            wanted = [{"key": f["key"], "text": f["text"], "deleted": False}
                      for f in current.get("facts", []) if not f.get("deleted")]
            return await self._ask(self.client().set_persona(change(wanted), user=self.user))

    async def _ask(self, call: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
        result = await ask_daemon(self, call, "The persona could not be saved")
        return None if result is None else dict(result)


def _edited(wanted: list[dict[str, Any]], key: str | None, text: str) -> list[dict[str, Any]]:
    if key is None or not any(w["key"] == key for w in wanted):
        return [*wanted, {"key": key, "text": text, "deleted": False}]
    return [{**w, "text": text} if w["key"] == key else w for w in wanted]


def _deleted(wanted: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [{**w, "deleted": True} if w["key"] == key else w for w in wanted]


def describe(fact: dict[str, Any] | None, messages: dict[str, dict[str, Any]]) -> str:
    """A fact's full text, where it came from, and up to QUOTES of its evidence messages (those
    in `messages`, the conversation on screen)."""
    if fact is None:
        return "No facts yet: press a to add one, or keep chatting and they are mined."
    evidence = [str(e) for e in fact.get("evidence", [])]
    count = int(fact.get("count", len(evidence)))
    mined = f"seen in {count} of your messages"
    if fact.get("source") == "mined":
        lines = [f"“{fact['text']}”: mined, {mined}."]
    elif count or evidence:
        lines = [f"“{fact['text']}”: yours (you changed it), first {mined}."]
    else:
        lines = [f"“{fact['text']}”: yours; you added it."]
    quotes = [messages[e] for e in evidence if e in messages][:QUOTES]
    for message in quotes:
        text = " ".join(str(message.get("content") or "").split())
        lines.append(f"  › {text[:QUOTE_CHARS]}{'…' if len(text) > QUOTE_CHARS else ''}")
    if evidence and not quotes:
        lines.append("  Open a conversation it comes from to read the messages here.")
    return "\n".join(lines)
