"""Personas ("virtual humans"): a character card that becomes the system message.

Two file formats are read:

- the kit's own YAML or JSON (``data/personas/*.yaml``): ``name``, ``description``,
  ``personality``, ``speaking_style``, ``scenario``, ``greeting``, ``examples`` (a list of
  ``{user, assistant}``), ``documents`` (one folder or a list of folders, relative to the
  persona file, retrieved like a knowledge base), and optionally ``system_prompt``,
  ``post_history_instructions`` and ``character_book``;
- SillyTavern Character Card V2 JSON (``spec: chara_card_v2``), field by field (see
  :func:`from_card_v2`).

``{{char}}`` and ``{{user}}`` (and the older ``<BOT>``/``<USER>``) are filled in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from qwen_kit.chat.prompt import Round
from qwen_kit.errors import UserError

LAYOUTS = ("second", "fields")


@dataclass
class LoreEntry:
    """A character-book entry: its text joins the prompt when a key appears in the dialogue."""

    keys: list[str]
    content: str
    constant: bool = False
    enabled: bool = True
    case_sensitive: bool = False
    order: int = 100
    name: str = ""


@dataclass
class Persona:
    name: str
    description: str = ""
    personality: str = ""
    speaking_style: str = ""
    scenario: str = ""
    greeting: str = ""
    alternate_greetings: list[str] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)  # {"user": ..., "assistant": ...}
    system_prompt: str = ""  # replaces the built system text; "{{original}}" inserts it
    post_history_instructions: str = ""
    lore: list[LoreEntry] = field(default_factory=list)
    lore_scan_depth: int = 2  # recent user messages searched for lore keys
    documents: list[str] = field(default_factory=list)  # absolute paths
    notes: str = ""  # creator notes: shown to people, never to the model
    meta: dict[str, Any] = field(default_factory=dict)  # tags, creator, version, extensions
    source: str = ""

    # -- text -------------------------------------------------------------------------------
    def fill(self, text: str, user: str) -> str:
        """Replace ``{{char}}``/``{{user}}`` (any case, and ``<BOT>``/``<USER>``)."""
        text = re.sub(r"\{\{\s*char\s*\}\}|<BOT>", lambda _m: self.name, text, flags=re.I)
        return re.sub(r"\{\{\s*user\s*\}\}|<USER>", lambda _m: user, text, flags=re.I)

    def system_message(self, user: str = "User", layout: str = "second") -> str:
        """The persona as a system message. ``second``: prose addressed to the model ("You
        are …"); ``fields``: the card's fields, labelled. eval_persona.py compares them."""
        if layout not in LAYOUTS:
            raise UserError(f"persona layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if layout == "second":
            you = lambda s: _second_person(s, self.name)  # noqa: E731
            parts = [f"You are {self.name}." if not _is_chinese(self.description) else f"你是{self.name}。"]
            parts += [self.fill(you(t), user) for t in (self.description, self.personality) if t]
            if self.speaking_style:
                parts.append(self.fill(you(self.speaking_style), user))
            if self.scenario:
                parts.append(self.fill(you(self.scenario), user))
            parts.append(f"Always stay in character as {self.name}. Never say that you are an AI "
                         "or a language model.")
        else:
            parts = [f"Character: {self.name}"]
            for label, value in (("Description", self.description), ("Personality", self.personality),
                                 ("Speaking style", self.speaking_style), ("Scenario", self.scenario)):
                if value:
                    parts.append(f"{label}: {self.fill(value, user)}")
            parts.append(f"Reply as {self.name} would, in character. Do not mention being an AI.")
        if self.examples:
            shown = "\n".join(f"{user}: {self.fill(e.get('user', ''), user)}\n{self.name}: "
                              f"{self.fill(e.get('assistant', ''), user)}" for e in self.examples)
            parts.append(f"Examples of how {self.name} talks:\n{shown}")
        built = "\n".join(parts)
        if self.system_prompt.strip():
            return self.fill(self.system_prompt.replace("{{original}}", built), user)
        return built

    def opening(self, user: str = "User", choice: str = "0") -> Round | None:
        """The greeting as the conversation's first assistant message. ``choice``: ``0`` the
        greeting, ``N`` the N-th of ``alternate_greetings``, ``random`` any of them.

        Raises:
            UserError: ``choice`` names a greeting the persona does not have.
        """
        import random

        greetings = [g for g in [self.greeting, *self.alternate_greetings]]
        if choice == "random":
            options = [g for g in greetings if g.strip()]
            text = random.choice(options) if options else ""
        else:
            try:
                text = greetings[int(choice)]
            except (ValueError, IndexError):
                raise UserError(f"--greeting {choice}: {self.name} has the greeting 0 and "
                                f"{len(self.alternate_greetings)} alternate greeting(s) (1 to "
                                f"{len(self.alternate_greetings)}); or use random") from None
        if not text.strip():
            return None
        return Round("", self.fill(text, user))


class PersonaContext:
    """``ChatEngine`` context source: character-book entries whose keys appear in the recent
    dialogue, and the card's post-history instructions."""

    def __init__(self, persona: Persona, user: str = "User"):
        self.persona, self.user = persona, user

    def __call__(self, user_text: str, recent: Sequence[Round]) -> tuple[str, dict[str, Any]]:
        p = self.persona
        depth = max(p.lore_scan_depth, 1)
        window = "\n".join([r.user for r in recent][-(depth - 1):] + [user_text]) if depth > 1 else user_text
        hits = []
        for e in p.lore:
            if not e.enabled:
                continue
            hay = window if e.case_sensitive else window.lower()
            if e.constant or any(k and (k if e.case_sensitive else k.lower()) in hay for k in e.keys):
                hits.append(e)
        hits.sort(key=lambda e: e.order)
        parts = [p.fill(e.content, self.user) for e in hits]
        if p.post_history_instructions.strip():
            parts.append(p.fill(p.post_history_instructions, self.user))
        extras = {"lore": [e.name or (e.keys[0] if e.keys else "") for e in hits]} if p.lore else {}
        return "\n".join(parts), extras


# -- loading ----------------------------------------------------------------------------------
def load_persona(path: str | Path) -> Persona:
    """A persona from YAML/JSON, or a Character Card V2 JSON. Errors name the file and field."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"persona file {p} does not exist; see data/personas/ for examples")
    text = p.read_text(encoding="utf-8-sig")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # yaml and json raise different types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{p}: not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'} "
                        f"({first}); fix the file and run again") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a persona must be a mapping with at least a 'name'")
    if data.get("spec") in ("chara_card_v2", "chara_card_v3"):
        persona = from_card_v2(data, str(p))
    elif "first_mes" in data and "name" in data:  # a V1 card: the V2 fields at the top level
        persona = from_card_v2({"data": data}, str(p))
    else:
        persona = _from_kit(data, p)
    if not persona.name.strip():
        raise UserError(f"{p}: the persona has no 'name'")
    return persona


def _from_kit(data: dict[str, Any], path: Path) -> Persona:
    known = {"name", "description", "identity", "personality", "speaking_style", "scenario", "greeting",
             "alternate_greetings", "examples", "system_prompt", "post_history_instructions", "character_book",
             "documents", "notes", "tags"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    examples = data.get("examples") or []
    if not isinstance(examples, list) or not all(isinstance(e, dict) and "assistant" in e for e in examples):
        raise UserError(f"{path}: 'examples' must be a list of {{user: ..., assistant: ...}}")
    docs = data.get("documents") or []
    docs = [docs] if isinstance(docs, str) else list(docs)
    resolved = []
    for d in docs:
        full = (path.parent / d).resolve() if not Path(d).is_absolute() else Path(d)
        if not full.is_dir():
            raise UserError(f"{path}: documents entry {d!r} must be a folder of documents (looked at {full})")
        resolved.append(str(full))
    book = data.get("character_book") or []
    entries = book.get("entries", []) if isinstance(book, dict) else book
    return Persona(name=str(data.get("name", "")), description=str(data.get("description") or data.get("identity") or ""),
                   personality=str(data.get("personality", "")), speaking_style=str(data.get("speaking_style", "")),
                   scenario=str(data.get("scenario", "")), greeting=str(data.get("greeting", "")),
                   alternate_greetings=list(data.get("alternate_greetings") or []),
                   examples=[{"user": str(e.get("user", "")), "assistant": str(e["assistant"])} for e in examples],
                   system_prompt=str(data.get("system_prompt", "")),
                   post_history_instructions=str(data.get("post_history_instructions", "")),
                   lore=[_lore(e, path) for e in entries], documents=resolved, notes=str(data.get("notes", "")),
                   meta={"tags": data.get("tags", [])}, source=str(path))


def from_card_v2(card: dict[str, Any], source: str = "") -> Persona:
    """Map a Character Card V2: name, description, personality, scenario, first_mes → greeting,
    alternate_greetings, mes_example → examples, system_prompt, post_history_instructions,
    character_book entries → lore, creator_notes → notes; tags, creator, character_version and
    extensions are kept in ``meta``."""
    data = card.get("data")
    if not isinstance(data, dict):
        raise UserError(f"{source}: a chara_card_v2 file needs a 'data' object")
    book = data.get("character_book") or {}
    entries = book.get("entries", []) if isinstance(book, dict) else []
    persona = Persona(
        name=str(data.get("name", "")), description=str(data.get("description", "")),
        personality=str(data.get("personality", "")), scenario=str(data.get("scenario", "")),
        greeting=str(data.get("first_mes", "")), alternate_greetings=[str(g) for g in data.get("alternate_greetings") or []],
        examples=parse_mes_example(str(data.get("mes_example", ""))),
        system_prompt=str(data.get("system_prompt", "")),
        post_history_instructions=str(data.get("post_history_instructions", "")),
        lore=[_lore(e, source) for e in entries],
        lore_scan_depth=int(book.get("scan_depth") or 2) if isinstance(book, dict) else 2,
        notes=str(data.get("creator_notes", "")),
        meta={k: data[k] for k in ("tags", "creator", "character_version", "extensions") if k in data},
        source=source)
    return persona


def parse_mes_example(text: str) -> list[dict[str, str]]:
    """SillyTavern example dialogue (``<START>`` blocks of ``{{user}}:``/``{{char}}:`` lines)
    into ``{user, assistant}`` pairs."""
    pairs: list[dict[str, str]] = []
    for block in re.split(r"<START>", text, flags=re.I):
        speaker, buf, pending_user = None, [], ""
        turns: list[tuple[str, str]] = []
        for line in block.splitlines():
            m = re.match(r"\s*(\{\{\s*user\s*\}\}|<USER>|\{\{\s*char\s*\}\}|<BOT>)\s*:\s*(.*)", line, flags=re.I)
            if m:
                if speaker:
                    turns.append((speaker, "\n".join(buf).strip()))
                speaker = "user" if re.search(r"user", m.group(1), re.I) else "char"
                buf = [m.group(2)]
            elif speaker:
                buf.append(line)
        if speaker:
            turns.append((speaker, "\n".join(buf).strip()))
        for who, said in turns:
            if who == "user":
                pending_user = said
            else:
                pairs.append({"user": pending_user, "assistant": said})
                pending_user = ""
    return pairs


def _lore(entry: Any, source: Any) -> LoreEntry:
    if not isinstance(entry, dict) or "content" not in entry:
        raise UserError(f"{source}: each character_book entry needs 'keys' and 'content'")
    keys = entry.get("keys") or []
    return LoreEntry(keys=[str(k) for k in ([keys] if isinstance(keys, str) else keys)], content=str(entry["content"]),
                     constant=bool(entry.get("constant", False)), enabled=bool(entry.get("enabled", True)),
                     case_sensitive=bool(entry.get("case_sensitive", False)),
                     order=int(entry.get("insertion_order", 100) or 100), name=str(entry.get("name", "")))


def _is_chinese(text: str) -> bool:
    return bool(re.search(r"[\u4e00-\u9fff]", text))


def _second_person(text: str, name: str) -> str:
    """Turn third-person card prose into second person: "{{char}} is" → "You are", "{{char}}'s"
    → "your", "{{char}}是" → "你是"; other mentions of the character become "you"/"你"."""
    char = r"(?:\{\{\s*char\s*\}\}|<BOT>)"
    rules = [(rf"{char}\s+is\b", "you are"), (rf"{char}\s+was\b", "you were"), (rf"{char}\s+has\b", "you have"),
             (rf"{char}\s+does\b", "you do"), (rf"{char}['’]s\b", "your"),
             (rf"{char}(?=[\u4e00-\u9fff])", "你"), (char, "you")]
    for pattern, repl in rules:
        text = re.sub(pattern, repl, text, flags=re.I)
    # capitalise a "you"/"your" that starts a sentence
    return re.sub(r"(^|[.!?]\s+)(you)", lambda m: m.group(1) + m.group(2).capitalize(), text)
