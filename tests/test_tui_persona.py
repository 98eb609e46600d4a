"""The persona panel (F3) driven by Pilot against the real daemon: the facts and the card on screen,
and edits, deletions and additions checked in the daemon's persona; plus one snapshot.

Each test is its own `user`, so it sees only its own persona.
"""

from __future__ import annotations

import asyncio
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from rlhi_local.client import Client
from tests.conftest import RunningDaemon
from tests.test_tui import FAST, SIZE, connected, notes, until
from tui.app import ChatApp
from tui.screens import ConfirmScreen, PersonaScreen
from tui.widgets import ConversationList

SEED = [{"text": "I use Windows"}, {"text": "Prefers concise answers"}]


def facts(persona: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["text"]: f for f in persona["facts"]}


def rows(screen: PersonaScreen) -> list[list[str]]:
    table = screen.query_one("#facts", DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def text_of(screen: PersonaScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def open_persona(pilot: Pilot[Any], count: int) -> PersonaScreen:
    await pilot.press("f3")
    await until(pilot, lambda: isinstance(pilot.app.screen, PersonaScreen))
    screen = pilot.app.screen
    assert isinstance(screen, PersonaScreen)
    await until(pilot, lambda: screen.query_one("#facts", DataTable).row_count == count)
    return screen


async def highlight(pilot: Pilot[Any], screen: PersonaScreen, text: str) -> None:
    table = screen.query_one("#facts", DataTable)
    table.focus()
    table.move_cursor(row=[r[0] for r in rows(screen)].index(text))
    await until(pilot, lambda: text in text_of(screen, "#fact-detail"))


def test_persona_panel_edits_deletes_and_adds_facts(daemon: RunningDaemon) -> None:
    user = "t-persona"
    with Client(daemon.socket) as client:
        client.set_persona(SEED, user=user)
        # One mined fact too, from a chat, so one row is "mined" and has evidence to quote.
        client.chat([{"role": "user", "content": "I am a nurse."}], user=user, max_tokens=1)
        client._http.post("/v1/signals/mine", params={"user": user}).raise_for_status()
        seeded = client.persona(user=user)
    mined = next(f for f in seeded["facts"] if f["source"] == "mined")
    assert mined["evidence"]

    def persona() -> dict[str, Any]:
        with Client(daemon.socket) as c:
            return c.persona(user=user)

    async def main() -> None:
        app = ChatApp(daemon.socket, user=user, **FAST)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await connected(pilot)
            # Open the conversation the mined fact comes from, so its evidence can be quoted.
            listing = app.query_one(ConversationList)
            await until(pilot, lambda: listing.option_count == 1)
            listing.focus()
            listing.highlighted = 0
            await pilot.press("enter")
            await until(pilot, lambda: any(m["content"] == "I am a nurse." for m in app.messages))

            screen = await open_persona(pilot, 3)
            shown = {r[0]: r for r in rows(screen)}
            assert shown["I use Windows"][1:] == ["about user", "0", "yours"]
            assert shown["Prefers concise answers"][1:] == ["preference", "0", "yours"]
            assert shown[mined["text"]][2:] == [str(mined["count"]), "mined"]
            assert text_of(screen, "#persona-card") == seeded["card"]
            await highlight(pilot, screen, mined["text"])
            assert "mined" in text_of(screen, "#fact-detail")
            assert "› I am a nurse." in text_of(screen, "#fact-detail")

            # Edit the mined fact: it keeps its key and becomes the user's.
            box = screen.query_one("#fact-input", Input)
            await pilot.press("e")
            assert box.has_focus and box.value == mined["text"]
            box.value = "I am a night-shift nurse"
            await pilot.press("enter")
            await until(pilot, lambda: "I am a night-shift nurse" in [r[0] for r in rows(screen)])
            after = {f["key"]: f for f in persona()["facts"]}
            assert after[mined["key"]]["text"] == "I am a night-shift nurse"
            assert after[mined["key"]]["source"] == "user"
            assert box.value == ""

            # Delete one: "n" keeps it, "y" deletes it.
            await highlight(pilot, screen, "I use Windows")
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("n")
            await until(pilot, lambda: app.screen is screen)
            assert not facts(persona())["I use Windows"]["deleted"]
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: "I use Windows" not in [r[0] for r in rows(screen)])
            assert facts(persona())["I use Windows"]["deleted"]

            # Add one; a refused fact stays in the box, with an error.
            await pilot.press("a")
            assert box.has_focus and box.value == ""
            too_long = "Likes tea " * 40  # over the daemon's 300 characters
            box.value = too_long
            await pilot.press("enter")
            await until(pilot, lambda: any("300" in m for m in notes(app)))
            assert box.value == too_long and len(rows(screen)) == 2
            box.value = "Likes green tea"
            await pilot.press("enter")
            await until(pilot, lambda: "Likes green tea" in [r[0] for r in rows(screen)])
            final = persona()
            added = facts(final)["Likes green tea"]
            assert added["source"] == "user" and not added["deleted"]

            # The card on screen is the daemon's new card.
            card = text_of(screen, "#persona-card")
            assert card == final["card"] and "Windows" not in card and "green tea" in card
            assert "night-shift nurse" in card

            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, PersonaScreen))

    asyncio.run(main())


def test_snapshot_persona_panel(daemon: RunningDaemon, snap_compare: Any) -> None:
    user = "snap-persona"
    with Client(daemon.socket) as client:
        if not client.persona(user=user)["version"]:
            client.set_persona(SEED, user=user)

    async def run_before(pilot: Pilot[Any]) -> None:
        await connected(pilot)
        await open_persona(pilot, 2)
        await pilot.pause(0.2)

    assert snap_compare(ChatApp(daemon.socket, user=user, **FAST), terminal_size=SIZE, run_before=run_before)
