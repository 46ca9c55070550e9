"""Personas: the system message, Character Card V2 import, lore, greeting, evaluation."""

from __future__ import annotations

import json

import pytest

from qwen_kit.chat.engine import ChatEngine, GenerationSettings
from qwen_kit.chat.persona import PersonaContext, load_persona, parse_mes_example
from qwen_kit.errors import UserError
from tests.conftest import ROOT, run_script

PERSONAS = ROOT / "data" / "personas"
LIGHTHOUSE = PERSONAS / "lighthouse_keeper.yaml"
CARD = PERSONAS / "card_v2_example.json"


def test_the_persona_replaces_qwens_default_system_prompt(tiny):
    persona = load_persona(LIGHTHOUSE)
    engine = ChatEngine(tiny.model, tiny.tokenizer, system=persona.system_message("Alice"),
                        settings=GenerationSettings(max_new_tokens=2, greedy=True), eos_token_ids=tiny.eos_token_ids)
    engine.rounds.append(persona.opening("Alice"))
    prompt = engine.start_turn("Who are you?").prompt
    assert "You are Maren Holt." in prompt and "Qwen" not in prompt and "Alibaba" not in prompt
    assert "{{" not in prompt and "Alice has rowed to the island" in prompt
    # the greeting opens the dialogue as the assistant's first message
    assert prompt.index("Shut the door, friend") < prompt.index("Who are you?")


@pytest.mark.slow
def test_the_demo_model_answers_with_the_personas_name(demo):
    persona = load_persona(LIGHTHOUSE)
    engine = ChatEngine(demo.model, demo.tokenizer, system=persona.system_message(),
                        settings=GenerationSettings(max_new_tokens=24, greedy=True), eos_token_ids=demo.eos_token_ids)
    assert "Maren" in engine.reply("What is your name?")


def test_card_v2_import_maps_every_field():
    p = load_persona(CARD)
    assert p.name == "Professor Ada Quill"
    assert p.description.startswith("{{char}} is a retired clockmaker")
    assert p.personality == "patient, precise, fond of riddles"
    assert p.scenario == "{{user}} is a new student who arrived early to class."
    assert p.greeting.startswith("Ah, {{user}}, early!")
    assert p.alternate_greetings == ["Good evening, {{user}}. Mind the pendulum."]
    assert p.examples == [
        {"user": "What is your favourite puzzle?",
         "assistant": "The Tower of Hanoi. Sixty-four discs, and the world ends when you finish."},
        {"user": "Why clocks?", "assistant": "Because a clock never lies, it is only ever wound badly."}]
    assert p.system_prompt == "{{original}}\nAnswer in at most three sentences."
    assert p.post_history_instructions.startswith("Stay in character as {{char}}")
    assert [e.name for e in p.lore] == ["workshop", "no cat", "class time"] and p.lore[2].constant
    assert p.lore[0].keys == ["workshop", "tools"] and p.lore[0].order == 10 and p.lore_scan_depth == 2
    assert p.notes.startswith("Sample card") and p.meta["creator"] == "qwen_kit" and p.meta["tags"] == ["sample", "english"]
    system = p.system_message("Sam")
    # {{original}} is the built persona text; the card's own line follows it
    assert system.startswith("You are Professor Ada Quill.") and system.endswith("Answer in at most three sentences.")
    assert "Sam is a new student" in system and "{{" not in system
    assert p.opening("Sam").assistant.startswith("Ah, Sam, early!")


def test_lore_entries_join_the_prompt_when_their_keys_appear():
    p = load_persona(CARD)
    ctx = PersonaContext(p, "Sam")
    text, extras = ctx("Where is your workshop?", [])
    assert "Cockburn Street" in text and "Tuesdays at 7 pm" in text and "allergic" not in text
    assert extras["lore"] == ["class time", "workshop"]  # by insertion order
    assert text.rstrip().endswith("mention a gear or a clock when it fits.")  # post-history instructions
    text, _ = ctx("Nice weather.", [])
    assert "Cockburn" not in text and "Tuesdays" in text


def test_second_person_prose_and_labelled_fields():
    p = load_persona(PERSONAS / "teahouse_owner_zh.yaml")
    second = p.system_message("小李", "second")
    assert second.startswith("你是老周。") and "你是成都宽窄巷子" in second and "小李第一次走进" in second
    fields = p.system_message("小李", "fields")
    assert fields.startswith("Character: 老周") and "Description: 老周是成都" in fields


def test_mes_example_parsing_keeps_multiline_replies():
    pairs = parse_mes_example("<START>\n{{user}}: Hi\n{{char}}: Hello.\nHow are you?\n<START>\n<USER>: Bye\n<BOT>: Farewell")
    assert pairs == [{"user": "Hi", "assistant": "Hello.\nHow are you?"}, {"user": "Bye", "assistant": "Farewell"}]


def test_chat_script_shows_the_greeting_first(tiny_qwen_dir):
    res = run_script("chat.py", "--model", str(tiny_qwen_dir), "--greedy", "--max-new-tokens", "4", "--jsonl",
                     "--persona", str(CARD), "--user", "Sam", input="Tell me about the workshop.\n")
    assert res.returncode == 0, res.stderr.decode()[-1500:]
    greeting, turn = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert greeting == {"assistant": "Ah, Sam, early! Good. Punctuality is the first gear of any machine.", "greeting": True}
    assert turn["lore"] == ["class time", "workshop"]


@pytest.mark.parametrize("content, message", [
    ("name: [unclosed", "not valid YAML"),
    ("description: no name here\n", "has no 'name'"),
    ("name: X\nfavourite_colour: blue\n", "unknown field(s) favourite_colour"),
    ("name: X\nexamples: [hello]\n", "'examples' must be a list"),
    ("name: X\ndocuments: missing_folder\n", "documents entry 'missing_folder' must be a folder"),
])
def test_a_broken_persona_file_is_one_line_and_exit_2(tmp_path, tiny_qwen_dir, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match="bad.yaml"):
        load_persona(bad)
    res = run_script("chat.py", "--model", str(tiny_qwen_dir), "--persona", str(bad), input="hi\n")
    err = res.stderr.decode().strip()
    assert res.returncode == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_persona_eval_script_writes_a_table(tiny_qwen_dir, tmp_path):
    probes = tmp_path / "probes.jsonl"
    probes.write_text('{"user": "Who are you?", "expect_any": ["Maren"], "forbid": ["Qwen"]}\n', encoding="utf-8")
    res = run_script("eval_persona.py", "--persona", str(LIGHTHOUSE), "--probes", str(probes), "--model",
                     str(tiny_qwen_dir), "--layout", "second", "fields", "--max-new-tokens", "4",
                     "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr.decode()[-1500:]
    table = (tmp_path / "out" / "persona_eval.md").read_text(encoding="utf-8")
    assert "| second | 1 |" in table and "| fields | 1 |" in table
    details = json.loads((tmp_path / "out" / "persona_eval.json").read_text(encoding="utf-8"))
    assert set(details) == {"second", "fields"} and details["second"][0]["user"] == "Who are you?"


def test_an_alternate_greeting_opens_the_chat_when_asked(tiny_qwen_dir):
    from tests.conftest import ROOT, run_script

    card = str(ROOT / "data" / "personas" / "card_v2_example.json")
    common = ["--model", str(tiny_qwen_dir), "--persona", card, "--greedy", "--max-new-tokens", "4", "--jsonl"]
    first = run_script("chat.py", *common, "--user", "Ada", "--greeting", "1", input="/exit\n")
    assert first.returncode == 0, first.stderr.decode()[-1500:]
    opening = json.loads(first.stdout.decode().splitlines()[0])
    assert opening["greeting"] and opening["assistant"] == "Good evening, Ada. Mind the pendulum."
    default = run_script("chat.py", *common, input="/exit\n")
    assert "Mind the pendulum" not in json.loads(default.stdout.decode().splitlines()[0])["assistant"]
    wrong = run_script("chat.py", *common, "--greeting", "5", input="/exit\n")
    err = wrong.stderr.decode().strip().splitlines()
    assert wrong.returncode == 2 and "--greeting 5" in err[-1] and "1 alternate greeting" in err[-1]
