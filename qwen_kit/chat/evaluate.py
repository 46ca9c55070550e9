"""Evaluating the chat features themselves: long-term memory recall and persona consistency.

Both replay scripted input through the same :class:`ChatEngine` the chat uses, and score
answers by acceptable strings (case-insensitive), so any model can be compared.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from qwen_kit.errors import UserError
from qwen_kit.jsonl import read_jsonl


def read_rows(path: str | Path, kind: str, check: Callable[[dict[str, Any]], str | None]) -> list[dict[str, Any]]:
    """JSON Lines whose rows pass ``check``; a bad row is a UserError with the file and line."""
    rows = [row for _, row in read_jsonl(path, kind, check)]
    if not rows:
        raise UserError(f"{Path(path).expanduser()} has no rows")
    return rows


def _strings(row: dict[str, Any], key: str, required: bool) -> str | None:
    value = row.get(key)
    if value is None:
        return f"needs {key!r} (a list of strings)" if required else None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        return f"{key!r} must be a non-empty list of strings"
    return None


def _contains(text: str, options: list[str]) -> bool:
    low = text.casefold()
    return any(o.casefold() in low for o in options)


CITATION = re.compile(r"\[\d+\]")


def answered(answer: str, options: list[str]) -> bool:
    """Whether a knowledge-base answer says one of ``options``, its citation marks left out: a
    reply made only of source numbers ("[1] [2] … [12]") does not answer "12"."""
    return _contains(CITATION.sub(" ", answer), options)


# -- memory -----------------------------------------------------------------------------------
def read_dialogue(path: str | Path) -> list[dict[str, Any]]:
    def check(row: dict[str, Any]) -> str | None:
        if not isinstance(row.get("user"), str) or not row["user"].strip():
            return 'needs "user" (the text the user types)'
        if "assistant" in row and not isinstance(row["assistant"], str):
            return '"assistant" (a scripted reply) must be a string'
        return _strings(row, "expect", required=False)

    return read_rows(path, "dialogue", check)


@dataclass
class MemoryEvalResult:
    layout: str
    probes: int = 0
    retrieved: int = 0  # the planted round was recalled from memory (the headline)
    still_in_prompt: int = 0  # the planted round had not left the prompt yet: nothing to recall
    answered: int = 0
    answers_scored: bool = False
    details: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        out = {"layout": self.layout, "probes": self.probes,
               "recalled from memory": self.retrieved / max(self.probes, 1),
               "still in the prompt": self.still_in_prompt / max(self.probes, 1)}
        if self.answers_scored:
            out["answer recall"] = self.answered / max(self.probes, 1)
        return out


def eval_memory(dialogue: list[dict[str, Any]], loaded: Any, embedder: Any, max_context: int = 512,
                max_new_tokens: int = 64, layout: str = "user", answers: bool = True, top_k: int = 3,
                progress: bool = True) -> MemoryEvalResult:
    """Replay ``dialogue`` with a small context so early rounds overflow into a fresh memory file.

    Rows with ``assistant`` are scripted (no generation); other rows are answered by the model
    (or get a placeholder reply when ``answers`` is False). Probe rows (``expect``) are asked
    and then taken back, so one probe's answer cannot sway the next. For probes, the
    planted round counts as recalled from memory only when a recalled memory's user text
    contains an expected string; a planted round still in the prompt is counted apart (the
    model sees it without any memory); the answer counts when it contains one.
    """
    from tqdm import tqdm

    from qwen_kit.chat.engine import ChatEngine, GenerationSettings
    from qwen_kit.chat.memory import LongTermMemory

    result = MemoryEvalResult(layout, answers_scored=answers)
    with tempfile.TemporaryDirectory() as tmp:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, greedy=True)
        memory = LongTermMemory(Path(tmp) / "chat_history.txt", embedder, loaded.tokenizer, user="eval",
                                top_k=top_k, max_tokens=int(0.3 * (max_context - max_new_tokens)), quiet=True)
        engine = ChatEngine(loaded.model, loaded.tokenizer, settings=settings, max_context=max_context,
                            eos_token_ids=loaded.eos_token_ids, context_fn=memory, context_placement=layout,
                            on_evict=memory.remember)
        for row in tqdm(dialogue, desc=f"memory eval ({layout})", disable=not progress, leave=False):
            turn = engine.start_turn(row["user"])
            expect = row.get("expect")
            if expect:
                recalled = [m["user_text"] for m in turn.extras.get("memories", [])]
                in_prompt = any(_contains(r.user, expect) for r in engine.in_prompt())
                hit = any(_contains(t, expect) for t in recalled)
                result.probes += 1
                result.retrieved += hit
                result.still_in_prompt += in_prompt
            if "assistant" in row:
                turn.complete(row["assistant"])
            elif answers:
                turn.run()
            else:
                turn.complete("OK.")
            if expect:
                # probes leave no trace: a wrong answer left in the prompt is copied by the next
                # probe (seen with the 135M demo model), which would measure the model, not memory
                engine.rounds.pop()
                ok = answers and _contains(turn.text, expect)
                result.answered += ok
                result.details.append({"user": row["user"], "expect": expect, "retrieved": hit,
                                       "in_prompt": in_prompt, "answer": turn.text, "answer_ok": ok,
                                       "memories": turn.extras.get("memories", [])})
    return result


# -- persona ----------------------------------------------------------------------------------
def read_probes(path: str | Path) -> list[dict[str, Any]]:
    def check(row: dict[str, Any]) -> str | None:
        if not isinstance(row.get("user"), str) or not row["user"].strip():
            return 'needs "user" (the question to ask)'
        return _strings(row, "expect_any", required=True) or _strings(row, "forbid", required=False)

    return read_rows(path, "probes", check)


@dataclass
class PersonaEvalResult:
    layout: str
    probes: int = 0
    in_character: int = 0
    named_ok: int = 0  # answers containing an expected string
    forbidden: int = 0  # answers containing a forbidden string
    details: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        n = max(self.probes, 1)
        return {"layout": self.layout, "probes": self.probes, "in character": self.in_character / n,
                "expected found": self.named_ok / n, "forbidden said": self.forbidden / n}


def eval_persona(persona: Any, probes: list[dict[str, Any]], loaded: Any, layout: str = "second",
                 max_new_tokens: int = 64, user: str = "User", progress: bool = True) -> PersonaEvalResult:
    """Ask each probe in a fresh conversation (greeting included); an answer is in character
    when it contains one of ``expect_any`` and none of ``forbid``."""
    from tqdm import tqdm

    from qwen_kit.chat.engine import ChatEngine, GenerationSettings
    from qwen_kit.chat.persona import PersonaContext

    result = PersonaEvalResult(layout)
    system = persona.system_message(user, layout)
    for row in tqdm(probes, desc=f"persona eval ({layout})", disable=not progress, leave=False):
        engine = ChatEngine(loaded.model, loaded.tokenizer, system=system,
                            settings=GenerationSettings(max_new_tokens=max_new_tokens, greedy=True),
                            max_context=2048, eos_token_ids=loaded.eos_token_ids,
                            context_fn=PersonaContext(persona, user))
        if (opening := persona.opening(user)) is not None:
            engine.rounds.append(opening)
        answer = engine.reply(row["user"])
        good = _contains(answer, row["expect_any"])
        bad = _contains(answer, row.get("forbid", []))
        result.probes += 1
        result.named_ok += good
        result.forbidden += bad
        result.in_character += good and not bad
        result.details.append({"user": row["user"], "answer": answer, "expected_found": good, "forbidden_said": bad})
    return result


def write_table(out_dir: Path, name: str, title: str, rows: list[dict[str, Any]], details: Any) -> Path:
    """``NAME.md`` (a markdown table) and ``NAME.json`` (every probe and answer)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / f"{name}.json").write_text(json.dumps(details, ensure_ascii=False, indent=1), encoding="utf-8")
    return out_dir / f"{name}.md"


# -- the real path: what chat.py does, with its defaults ---------------------------------------
@dataclass
class RealPathResult:
    """One feature replayed through :func:`~qwen_kit.chat.pipeline.assemble_chat` as ``chat.py`` builds
    it, in a flowing conversation: nothing is taken back, every default is the user's."""

    feature: str
    asked: int = 0
    right: int = 0  # the answer holds an expected string
    found: int = 0  # what the answer needs reached the prompt (gold source / planted memory)
    right_and_found: int = 0
    by_language: dict[str, list[int]] = field(default_factory=dict)  # lang -> [asked, right, right and found]
    details: list[dict[str, Any]] = field(default_factory=list)

    def add(self, lang: str, right: bool, found: bool, detail: dict[str, Any]) -> None:
        self.asked += 1
        self.right += right
        self.found += found
        self.right_and_found += right and found
        counts = self.by_language.setdefault(lang, [0, 0, 0])
        counts[0] += 1
        counts[1] += right
        counts[2] += right and found
        self.details.append({**detail, "right": right, "found": found})

    def row(self, found_name: str) -> dict[str, Any]:
        n = max(self.asked, 1)
        out: dict[str, Any] = {"layout": "real path (chat.py defaults)", "asked": self.asked,
                               found_name: self.found / n, "answer right": self.right / n,
                               f"right, with {found_name}": self.right_and_found / n}
        for lang, (asked, _, both) in sorted(self.by_language.items()):
            out[f"{lang}: right, with {found_name}"] = f"{both}/{asked}"
        return out


def _lang(text: str) -> str:
    from qwen_kit.retrieval.hybrid import mostly_cjk

    return "zh" if mostly_cjk(text) else "en"


def real_path_rag(cfg: Any, loaded: Any, knowledge: Any, qa: list[dict[str, Any]],
                  progress: bool = True) -> RealPathResult:
    """Each question asked in ``chat.py --rag``'s conversation, ``/reset`` between questions
    (as a user starting a new topic), scored by whether the answer holds an acceptable string
    and whether the gold document was among the sources shown."""
    from tqdm import tqdm

    from qwen_kit.chat.pipeline import assemble_chat

    result = RealPathResult("knowledge base")
    chat = assemble_chat(cfg, loaded, knowledge=knowledge)
    for item in tqdm(qa, desc="knowledge base, real path", disable=not progress, leave=False):
        chat.engine.reset()
        turn = chat.engine.start_turn(item["question"])
        answer = turn.run()
        files = [s["file"] for s in turn.extras.get("sources", [])]
        gold = item["doc"] in files
        result.add(_lang(item["question"]), answered(answer, item["answers"]), gold,
                   {"question": item["question"], "answer": answer, "sources": files, "gold": item["doc"]})
    return result


def real_path_memory(cfg: Any, loaded: Any, embedder: Any, dialogue: list[dict[str, Any]],
                     progress: bool = True) -> RealPathResult:
    """The dialogue through ``chat.py --memory``: a fresh memory file, the model answering every
    unscripted turn, probes asked and left in the conversation like any other turn. A probe is
    right when the answer holds an expected string, found when the planted round was recalled."""
    from dataclasses import replace

    from tqdm import tqdm

    from qwen_kit.chat.pipeline import assemble_chat, context_budget, open_memory

    result = RealPathResult("memory")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(cfg, memory=True, memory_file=str(Path(tmp) / "chat_history.txt"), user="eval")
        _, budget = context_budget(cfg, loaded)
        with contextlib.redirect_stderr(io.StringIO()):
            memory = open_memory(cfg, embedder, loaded.tokenizer, budget)
        chat = assemble_chat(cfg, loaded, memory=memory)
        for row in tqdm(dialogue, desc="memory, real path", disable=not progress, leave=False):
            turn = chat.engine.start_turn(row["user"])
            if "assistant" in row:
                turn.complete(row["assistant"])
            else:
                turn.run()
            expect = row.get("expect")
            if expect:
                recalled = [m["user_text"] for m in turn.extras.get("memories", [])]
                hit = any(_contains(t, expect) for t in recalled)
                result.add(_lang(row["user"]), _contains(turn.text, expect), hit,
                           {"user": row["user"], "expect": expect, "answer": turn.text, "recalled": recalled})
    return result


def real_path_persona(cfg: Any, loaded: Any, persona: Any, probes: list[dict[str, Any]], persona_knowledge: Any = None,
                      progress: bool = True) -> RealPathResult:
    """Every probe in one conversation with ``chat.py --persona``, after its greeting: in
    character when the answer holds an expected string and no forbidden one; found when one
    of them was in what the model was shown (the card, a lore entry, a document, an earlier
    turn) apart from the probe's own question, so a right answer can be told from a lucky one
    and a lore entry that never fired shows."""
    from tqdm import tqdm

    from qwen_kit.chat.pipeline import assemble_chat

    result = RealPathResult("persona")
    chat = assemble_chat(cfg, loaded, persona=persona, persona_knowledge=persona_knowledge)
    for row in tqdm(probes, desc="persona, real path", disable=not progress, leave=False):
        turn = chat.engine.start_turn(row["user"])
        shown = turn.prompt or "\n".join(m["content"] for m in turn.messages)
        if row["user"] in shown:  # the question itself is no evidence
            before, _, after = shown.rpartition(row["user"])
            shown = before + after
        found = _contains(shown, row["expect_any"])
        answer = turn.run()
        good = _contains(answer, row["expect_any"]) and not _contains(answer, row.get("forbid", []))
        result.add(_lang(row["user"]), good, found, {"user": row["user"], "answer": answer})
    return result
