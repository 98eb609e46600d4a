"""The persona: facts mined from realistic histories, user edits winning, and the card's budget."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhi_local.errors import InvalidRequestError
from rlhi_local.persona import (
    Fact,
    delete_fact,
    edit_fact,
    estimate_tokens,
    fact_from_user_text,
    facts_from_json,
    facts_to_json,
    merge_facts,
    mine_facts,
    render_card,
)
from rlhi_local.records import Message

LONG = ("Here is a detailed explanation. First, consider the context and the main options. "
        "Second, weigh the trade-offs carefully, because each choice has costs. Third, pick the "
        "option that matches your constraints, and test it before relying on it. ") * 2


class History:
    """Builds `Message` records: each conversation is a list of (role, content) turns, each turn a
    child of the one before; ids are `<conversation>-<index>`, timestamps strictly increase."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def conv(self, cid: str, *turns: tuple[str, str], **overrides: dict[str, object]) -> History:
        parent = None
        for i, (role, content) in enumerate(turns):
            mid = f"{cid}-{i}"
            msg = Message(id=mid, conversation_id=cid, parent_id=parent, role=role,  # type: ignore[arg-type]
                          content=content, origin="user" if role == "user" else "model",
                          status="complete", created_at=f"2025-01-01T00:{len(self.messages):04d}")
            self.messages.append(replace(msg, **overrides.get(mid, {})))  # type: ignore[arg-type]
            parent = mid
        return self


def facts_by_key(messages: list[Message]) -> dict[str, Fact]:
    return {f.key: f for f in mine_facts(messages)}


# -- realistic histories ------------------------------------------------------------------------

def nurse_history() -> History:
    return (History()
            .conv("c1", ("user", "Hi! I'm a nurse and I work night shifts. How do I convert a 250 mg dose "
                                 "from a 125 mg/5 mL suspension into mL?"),
                  ("assistant", LONG), ("user", "shorter"), ("assistant", "10 mL."), ("user", "thanks!"))
            .conv("c2", ("user", "I use Windows 11 at work. How do I screenshot just one window?"),
                  ("assistant", LONG), ("user", "too long, just the shortcut"), ("assistant", "Alt+PrtScn."))
            .conv("c3", ("user", "What is sepsis, in plain words?"), ("assistant", LONG), ("user", "tl;dr?"),
                  ("assistant", "A body-wide reaction to infection."))
            .conv("c4", ("user", "my kids won't sleep after my night shifts, any tips?"), ("assistant", LONG),
                  ("user", "shorter please"), ("assistant", "Keep a fixed routine and a dark room."))
            .conv("c5", ("user", "Write a caption for a photo of my garden, no emojis"),
                  ("assistant", "Morning light on the tomatoes."), ("user", "perfect, thanks"))
            .conv("c6", ("user", "My friend is a nurse too and she uses a Mac. Is a Mac better than a PC?"),
                  ("assistant", LONG)))


def test_nurse_history_gives_the_stated_facts_with_counts_and_evidence() -> None:
    facts = facts_by_key(nurse_history().messages)
    assert facts["about_user:job=nurse"].evidence == ("c1-0",)
    assert facts["about_user:job=nurse"].text == "Is a nurse"
    assert facts["about_user:os=windows"].evidence == ("c2-0",)
    assert facts["about_user:family=children"].evidence == ("c4-0",)
    concise = facts["preference:concise"]
    assert (concise.count, concise.evidence) == (4, ("c1-2", "c2-2", "c3-2", "c4-2"))
    assert concise.source == "mined" and not concise.deleted
    # One "no emojis" in one request is not yet a preference; the friend's Mac is not the user's.
    assert "preference:no_emojis" not in facts
    assert "about_user:os=macos" not in facts


def test_mining_is_deterministic_and_order_of_input_does_not_matter() -> None:
    messages = nurse_history().messages
    assert mine_facts(messages) == mine_facts(list(reversed(messages)))


TRICKY = [
    "My friend is a nurse. Can you help me write her a birthday card?",
    "I don't use Windows, so skip the PowerShell part.",
    'My colleague wrote "I\'m a nurse and I live in Lyon" in her bio. Is that too short?',
    "Are you a nurse? You sound like one.",
    "Should I use Windows or Linux for gaming?",
    "If I lived in Paris, which neighbourhood would suit me?",
    "Pretend I'm a doctor and explain the lab results.",
    "Write a story where I am a pilot lost over the Alps.",
    "I'm a good cook but a terrible baker. Any bread tips?",
    "I'm a former teacher looking at new careers.",
    "My windows fog up every morning, how do I stop it?",
    "I like short stories, recommend one by Chekhov.",
    "I don't mind emojis in casual chats.",
    "Here is the log:\n```\n# I'm a nurse\nprint('I use Windows')\n```\nwhy does it fail?",
    "> I'm a nurse and I use Windows\nWhat does this quote from the forum mean?",
    "She said: I live in Lyon and I'm a teacher.",
    "I'm not a nurse, but I need to understand triage.",
    "Am I a developer if I only write SQL?",
    "I'm a big fan of nurses everywhere.",
    "I'm learning a lot from these answers.",
]


def test_tricky_text_yields_no_facts_about_the_user() -> None:
    h = History()
    for i, text in enumerate(TRICKY):
        h.conv(f"t{i}", ("user", text), ("assistant", LONG), ("user", "ok thanks"))
    facts = mine_facts(h.messages)
    wrong = [f for f in facts if f.category in ("preference", "about_user", "expertise")]
    assert wrong == []


# Single messages with the keys they must give: the labelled set behind the precision figure.
LABELLED: list[tuple[str, set[str]]] = [
    ("I'm a nurse and I work night shifts.", {"about_user:job=nurse"}),
    ("I'm a nurse, how do I calculate drip rates?", {"about_user:job=nurse"}),
    ("As a teacher, I often grade essays late at night.", {"about_user:job=teacher"}),
    ("I work as a data analyst in a bank.", {"about_user:job=data-analyst"}),
    ("I'm a senior Python developer.", {"about_user:job=developer", "expertise:python=expert"}),
    ("I'm a stay-at-home mom of two.", {"about_user:job=stay-at-home-parent", "about_user:family=children"}),
    ("I use Windows 11 at work.", {"about_user:os=windows"}),
    ("I'm on a Mac, what is the shortcut?", {"about_user:os=macos"}),
    ("My Windows laptop won't boot after the update.", {"about_user:os=windows"}),
    ("I'm a Windows user.", {"about_user:os=windows"}),
    ("I live in Lyon.", {"about_user:location=lyon"}),
    ("I'm from Brazil originally.", {"about_user:from=brazil"}),
    ("I'm learning Rust.", {"about_user:learning=rust"}),
    ("I'm learning to code in my spare time.", {"about_user:learning=code"}),
    ("How do I help my kids with homework?", {"about_user:family=children"}),
    ("My wife thinks I work too much.", {"about_user:partner=wife"}),
    ("My iPhone keeps crashing.", {"about_user:phone=iphone"}),
    ("I'm new to Python, so go easy.", {"expertise:python=beginner"}),
    ("I have 10 years of experience with Java.", {"expertise:java=expert"}),
    ("I'm not very technical.", {"expertise:tech=beginner"}),
    ("I'm a native German speaker.", {"expertise:german=native"}),
    ("Please keep answers short.", {"preference:concise"}),
    ("I prefer bullet points.", {"preference:bullets"}),
    ("Always use Python 3.", {"preference:python3"}),
    ("Never use emojis in your replies.", {"preference:no_emojis"}),
    ("I hate long answers.", {"preference:concise"}),
    ("I prefer short answers over long ones.", {"preference:concise"}),
    ("Can you always answer in French?", {"preference:language=french"}),
    ("I use metric.", {"preference:metric"}),
    ("je suis infirmière et j'habite à Lyon", {"about_user:job=nurse", "about_user:location=lyon"}),
    ("Je préfère des réponses courtes.", {"preference:concise"}),
    ("Réponds toujours en français s'il te plaît.", {"preference:language=french"}),
    ("Ich bin Lehrerin.", {"about_user:job=teacher"}),
    ("Ich mag keine Emojis.", {"preference:no_emojis"}),
    ("Ich wohne in München.", {"about_user:location=münchen"}),
    ("Soy enfermera y vivo en Madrid.", {"about_user:job=nurse", "about_user:location=madrid"}),
    ("Prefiero respuestas cortas.", {"preference:concise"}),
    ("j'utilise Windows", {"about_user:os=windows"}),
    *[(text, set()) for text in TRICKY],
    ("Keep it short.", set()),  # one request, not yet a preference
    ("I want a short poem about cats.", set()),
    ("I used to live in Lyon.", set()),
    ("My dad has a Mac.", set()),
    ("I'm a nurse's aide.", set()),
    ("I'm a teacher?", set()),
    ("i live in lyon", set()),  # missed on purpose: no capital, no boundary to trust
]


def test_labelled_statements_precision_and_recall() -> None:
    tp = fp = fn = 0
    errors = []
    for i, (text, expected) in enumerate(LABELLED):
        got = {f.key for f in mine_facts(History().conv(f"l{i}", ("user", text)).messages)
               if f.category != "topic"}
        tp, fp, fn = tp + len(got & expected), fp + len(got - expected), fn + len(expected - got)
        if got != expected:
            errors.append((text, sorted(got), sorted(expected)))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert precision == 1.0 and recall >= 0.95, errors


def test_multilingual_followups_count_towards_one_preference() -> None:
    h = (History()
         .conv("f1", ("user", "Explique la photosynthèse"), ("assistant", LONG), ("user", "plus court stp"))
         .conv("f2", ("user", "Wie funktioniert ein Kühlschrank?"), ("assistant", LONG), ("user", "kürzer bitte"))
         .conv("f3", ("user", "¿Qué es la inflación?"), ("assistant", LONG), ("user", "más corto, por favor")))
    concise = facts_by_key(h.messages)["preference:concise"]
    assert concise.evidence == ("f1-2", "f2-2", "f3-2") and concise.text == "Prefers concise answers"


def test_repeated_request_style_becomes_a_preference_but_a_single_one_does_not() -> None:
    one = History().conv("a", ("user", "summarise this"), ("assistant", LONG), ("user", "bullet points please"))
    assert "preference:bullets" not in facts_by_key(one.messages)
    two = one.conv("b", ("user", "list the planets"), ("assistant", LONG), ("user", "as a list please"))
    assert facts_by_key(two.messages)["preference:bullets"].evidence == ("a-2", "b-2")


def test_recurring_topics_need_two_conversations() -> None:
    h = (History()
         .conv("p1", ("user", "How do I read a CSV with pandas?"), ("assistant", LONG))
         .conv("p2", ("user", "Why is my Python loop slow?"), ("assistant", LONG),
               ("user", "And how do I profile Python code?"), ("assistant", LONG))
         .conv("k1", ("user", "Give me a recipe for lentil soup"), ("assistant", LONG)))
    facts = facts_by_key(h.messages)
    assert facts["topic:python"].evidence == ("p1-0", "p2-0", "p2-2")
    assert facts["topic:python"].count == 3
    assert "topic:cooking" not in facts


def test_vocabulary_expertise_needs_many_terms_across_conversations() -> None:
    h = (History()
         .conv("j1", ("user", "Is there a race condition if two goroutines share this hash map without a mutex?"),
               ("assistant", LONG))
         .conv("j2", ("user", "Should I refactor this to use dependency injection, or is that overkill for unit tests?"),
               ("assistant", LONG)))
    assert facts_by_key(h.messages)["expertise:programming=jargon"].evidence == ("j1-0", "j2-0")
    h.conv("j3", ("user", "I'm not a programmer, I just copy code."), ("assistant", LONG))
    keys = facts_by_key(h.messages)
    assert "expertise:programming=jargon" not in keys and "expertise:programming=beginner" in keys


def test_style_statistics_come_from_accepted_answers_only() -> None:
    listy = "Steps:\n- open the settings\n- choose display\n- set the scale to 125%"
    h = History()
    for i in range(5):
        h.conv(f"s{i}", ("user", f"question {i}"), ("assistant", listy), ("user", "thanks, that worked"))
    h.conv("bad", ("user", "capital of Canada?"), ("assistant", "Toronto. " + LONG),
           ("user", "that's wrong, it's Ottawa"))
    h.conv("down", ("user", "a joke please"), ("assistant", LONG), **{"down-1": {"feedback": ("thumbs_down",)}})
    # A regenerated answer: the one the user continued from is accepted, its sibling is not.
    h.conv("rg", ("user", "name a colour"), ("assistant", LONG), ("user", "nice"))
    h.messages.append(replace(h.messages[-2], id="rg-1b", content="Blue. " + LONG, origin="regenerate",
                              created_at="2025-01-01T01:0000"))
    style = facts_by_key(h.messages)["style:accepted_answers"]
    assert style.evidence == ("s0-1", "s1-1", "s2-1", "s3-1", "s4-1", "rg-1")
    assert style.count == 6
    assert "with lists" in style.text and style.text.startswith("Answers the user accepted: about")


def test_contradicting_preferences_keep_the_better_supported_one() -> None:
    h = (History()
         .conv("x1", ("user", "I like detailed answers."), ("assistant", LONG))
         .conv("x2", ("user", "Please keep your answers short."), ("assistant", LONG))
         .conv("x3", ("user", "I prefer short answers, really."), ("assistant", LONG)))
    keys = facts_by_key(h.messages)
    assert "preference:concise" in keys and "preference:detailed" not in keys


def test_newest_place_wins() -> None:
    h = (History().conv("m1", ("user", "I live in Lyon."), ("assistant", "ok"))
         .conv("m2", ("user", "I moved to Berlin last month."), ("assistant", "ok")))
    keys = facts_by_key(h.messages)
    assert "about_user:location=berlin" in keys and "about_user:location=lyon" not in keys


# -- merge: user edits win ----------------------------------------------------------------------

def test_user_edits_and_deletions_survive_a_remine() -> None:
    history = nurse_history()
    current = merge_facts([], mine_facts(history.messages))
    by_key = {f.key: f for f in current}
    edited = edit_fact(by_key["about_user:job=nurse"], "ICU nurse, nights")
    gone = delete_fact(by_key["about_user:os=windows"])
    added = fact_from_user_text("Vegetarian")
    current = [edited if f.key == edited.key else gone if f.key == gone.key else f for f in current] + [added]
    history.conv("c7", ("user", "I'm a nurse on Windows, and I use Windows at home too."), ("assistant", LONG),
                 ("user", "shorter"))
    merged = {f.key: f for f in merge_facts(current, mine_facts(history.messages))}
    assert merged[edited.key] == edited and merged[edited.key].text == "ICU nurse, nights"
    assert merged[gone.key].deleted and merged[gone.key].evidence == ("c2-0",)
    assert merged[added.key] == added
    assert merged["preference:concise"].count == 5  # the mined fact took the new evidence
    card = render_card(list(merged.values()))
    assert "Windows" not in card and "ICU nurse, nights" in card


def test_merge_keeps_current_order_and_adds_new_keys_after() -> None:
    a = Fact("preference:concise", "preference", "Prefers concise answers", 2, ("m1", "m2"), "mined")
    b = Fact("topic:python", "topic", "Often asks about Python", 2, ("m3", "m4"), "mined")
    new = replace(a, count=3, evidence=("m5", "m1", "m2"))
    merged = merge_facts([a, b], [new, replace(b, key="topic:git", evidence=("m6", "m7"))])
    assert [f.key for f in merged] == ["preference:concise", "topic:python", "topic:git"]
    assert merged[0].count == 3 and merged[0].evidence == ("m5", "m1", "m2")


KEYS = ["preference:concise", "about_user:os=windows", "topic:python", "style:accepted_answers",
        "expertise:rust=beginner"]
facts_st = st.builds(
    lambda key, text, count, evidence, source, deleted: Fact(
        key, key.split(":")[0], text, count, tuple(evidence), source, deleted),  # type: ignore[arg-type]
    st.sampled_from(KEYS), st.text(min_size=1, max_size=20).filter(str.strip), st.integers(0, 80),
    st.lists(st.sampled_from([f"m{i}" for i in range(70)]), max_size=60),
    st.sampled_from(["mined", "user"]), st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(facts_st, max_size=6), st.lists(facts_st.map(lambda f: replace(f, source="mined", deleted=False)),
                                                 max_size=6))
def test_merge_is_idempotent_and_never_touches_user_or_deleted_facts(current: list[Fact], mined: list[Fact]) -> None:
    once = merge_facts(current, mined)
    assert merge_facts(once, mined) == once
    protected = {f.key: f for f in merge_facts(current, []) if f.source == "user" or f.deleted}
    for fact in once:
        if fact.key in protected:
            assert fact == protected[fact.key]


# -- the card -------------------------------------------------------------------------------------

def test_card_orders_by_importance_and_skips_deleted() -> None:
    facts = [
        Fact("style:accepted_answers", "style", "Answers the user accepted: about 80 words (median)", 9, (), "mined"),
        Fact("topic:python", "topic", "Often asks about Python", 5, (), "mined"),
        Fact("about_user:os=windows", "about_user", "Uses Windows", 1, (), "mined"),
        Fact("about_user:job=nurse", "about_user", "Is a nurse", 1, (), "mined", deleted=True),
        Fact("preference:concise", "preference", "Prefers concise answers", 5, (), "mined"),
        fact_from_user_text("Vegetarian"),
    ]
    assert render_card(facts) == (
        "User persona:\n- Vegetarian.\n- Prefers concise answers.\n- Uses Windows.\n"
        "- Often asks about Python.\n- Answers the user accepted: about 80 words (median)."
    )
    assert render_card([]) == "" and render_card([replace(facts[0], deleted=True)]) == ""


@pytest.mark.parametrize("budget", [0, 5, 12, 20, 40, 300])
def test_card_never_exceeds_its_token_budget(budget: int) -> None:
    facts = [Fact(f"topic:t{i}", "topic", f"Often asks about subject number {i} in some depth", 10 - i, (), "mined")
             for i in range(10)] + [fact_from_user_text("x" * 300)]
    card = render_card(facts, max_tokens=budget)
    assert estimate_tokens(card) <= budget
    assert (card == "") == (budget < 20)


def test_token_estimate_takes_the_larger_of_words_and_characters() -> None:
    assert estimate_tokens("one two three four five") == 7  # ceil(5 * 1.4) > ceil(23 / 4)
    assert estimate_tokens("a" * 40) == 10  # one word, 40 characters


# -- the user's own facts and JSON ----------------------------------------------------------------

def test_typed_facts_take_the_mined_key_when_they_say_the_same_thing() -> None:
    assert fact_from_user_text("Uses Windows").key == "about_user:os=windows"
    assert fact_from_user_text("I'm a nurse.").key == "about_user:job=nurse"
    assert fact_from_user_text("Prefers concise answers").key == "preference:concise"
    assert fact_from_user_text("No tables, ever").key == "preference:user=no-tables-ever"
    typed = fact_from_user_text("Uses   Windows\n")
    assert (typed.text, typed.source, typed.count, typed.evidence) == ("Uses Windows", "user", 0, ())
    merged = merge_facts([typed], mine_facts(nurse_history().messages))
    assert [f.text for f in merged if f.key == "about_user:os=windows"] == ["Uses Windows"]
    assert [f for f in merged if f.key == typed.key][0].source == "user"


@pytest.mark.parametrize("text", ["", "   ", "x" * 301])
def test_typed_facts_reject_empty_or_huge_text(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        fact_from_user_text(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(facts_st, max_size=8))
def test_json_round_trip(facts: list[Fact]) -> None:
    assert facts_from_json(facts_to_json(facts)) == facts


@pytest.mark.parametrize("text", ["not json", "42", '{"version": 2, "facts": []}',
                                  '[{"key": "k", "category": "mood", "text": "x"}]', '[{"key": "k"}]'])
def test_bad_json_is_an_invalid_request(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        facts_from_json(text)


# -- never raises -----------------------------------------------------------------------------------

turns_st = st.lists(st.tuples(st.sampled_from(["user", "assistant", "system"]), st.text(max_size=200)),
                    max_size=8)
tricky_text = st.sampled_from(["I'm a ", "I use ", "my ", "```", '"', "?", "\n", "I live in ", "Windows",
                               "nurse", "no ", "always ", "shorter", "> ", "à ", "ich bin "])


@settings(max_examples=60, deadline=None)
@given(turns_st, st.lists(st.lists(tricky_text, max_size=12).map("".join), max_size=4))
def test_mining_never_raises_on_arbitrary_text(turns: list[tuple[str, str]], extra: list[str]) -> None:
    h = History().conv("h", *turns, *[("user", t) for t in extra])
    facts = mine_facts(h.messages)
    assert all(f.source == "mined" and f.count >= len(f.evidence) >= 1 for f in facts)
    assert estimate_tokens(render_card(facts, 300)) <= 300
