"""Knowledge-base answers: retrieved chunks, numbered, placed in the prompt within a budget."""

from __future__ import annotations

from typing import Any, Sequence

from qwen_kit.chat.prompt import Round, count_tokens
from qwen_kit.retrieval.hybrid import HybridRetriever

INSTRUCTION = ("Answer the user's question using the numbered sources below. If they do not contain the "
               "answer, say so. Cite the sources you use like [1].")
LAYOUTS = ("numbered", "plain", "brief")
# after the question, for the "brief" layout: what small models need said last
BRIEF = "Answer in one sentence, using only the text above."


class KnowledgeContext:
    """``ChatEngine.context_fn`` for knowledge-base chat.

    The search query is the new message plus the previous user message, so a follow-up such
    as "and when does it close?" still finds the document the conversation is about.
    """

    def __init__(self, retriever: HybridRetriever, tokenizer: Any, top_k: int = 4, max_tokens: int = 1024,
                 layout: str = "numbered", min_score_ratio: float = 0.0):
        if layout not in LAYOUTS:
            raise ValueError(f"knowledge layout {layout!r}: one of {', '.join(LAYOUTS)}")
        self.retriever, self.tokenizer, self.top_k, self.max_tokens = retriever, tokenizer, top_k, max_tokens
        self.layout = layout  # numbered: instruction + [n] blocks, best first; plain/brief: texts, best last
        self.min_score_ratio = min_score_ratio  # drop passages scoring below this share of the best

    def query(self, user_text: str, recent: Sequence[Round]) -> str:
        return f"{recent[-1].user}\n{user_text}" if recent else user_text

    def search(self, user_text: str, recent: Sequence[Round]) -> list[Any]:
        """The question alone and, after a turn, with the previous question too (a follow-up such
        as "and on Saturdays?" needs it); each chunk keeps its better score. With a bilingual
        embedder the joined text of a question on a new topic still leaned to the last one."""
        hits = self.retriever.search(user_text, k=self.top_k)
        if recent:
            best = {h.chunk.id: h for h in hits}
            for h in self.retriever.search(self.query(user_text, recent), k=self.top_k):
                if h.chunk.id not in best or h.score > best[h.chunk.id].score:
                    best[h.chunk.id] = h
            hits = sorted(best.values(), key=lambda h: -h.score)[: self.top_k]
        return hits

    def __call__(self, user_text: str, recent: Sequence[Round]) -> tuple[str, dict[str, Any]]:
        hits = self.search(user_text, recent)
        if hits and self.min_score_ratio > 0:
            hits = [h for h in hits if h.score >= self.min_score_ratio * hits[0].score]
        numbered = self.layout == "numbered"
        blocks, sources, used = [], [], count_tokens(self.tokenizer, INSTRUCTION if numbered else BRIEF)
        for hit in hits:
            c = hit.chunk
            title = f"{c.file}" + (f" — {c.heading}" if c.heading else "")
            block = f"[{len(blocks) + 1}] ({title})\n{c.text}" if numbered else c.text
            n = count_tokens(self.tokenizer, block)
            if used + n > self.max_tokens:
                continue  # a lower-ranked, shorter chunk may still fit
            blocks.append(block)
            sources.append({"file": c.file, "chunk_id": c.id, "score": round(hit.score, 6)})
            used += n
        if not blocks:
            return "", {"sources": []}
        if numbered:
            return INSTRUCTION + "\n\n" + "\n\n".join(blocks), {"sources": sources}
        # the best passage last, next to the question, where a small model attends most
        extras: dict[str, Any] = {"sources": sources}
        if self.layout == "brief":
            extras["after_question"] = BRIEF
        return "\n\n".join(reversed(blocks)), extras
