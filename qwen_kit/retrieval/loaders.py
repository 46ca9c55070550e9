"""Reading a folder of documents (.txt .md .pdf .docx .html), never crashing on a bad file."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

SUFFIXES = {".txt", ".md", ".markdown", ".pdf", ".docx", ".html", ".htm"}


@dataclass
class Document:
    path: str  # relative to the folder it was loaded from
    text: str


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)

    def summary(self) -> str:
        if not self.skipped:
            return f"loaded {self.loaded} documents"
        shown = "; ".join(f"{f}: {why}" for f, why in self.skipped[:5])
        return f"loaded {self.loaded} documents, skipped {len(self.skipped)} ({shown})"


class _HTMLText(HTMLParser):
    """Visible text of an HTML page; headings become Markdown headings so chunks keep them."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "noscript"):
            self._skip += 1
        elif tag in ("h1", "h2", "h3", "h4"):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in ("p", "br", "li", "div", "tr"):
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "noscript") and self._skip:
            self._skip -= 1
        elif tag in ("h1", "h2", "h3", "h4"):
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def read_document(path: Path) -> str:
    """Text of one file. Raises ``ValueError`` with a short reason when it cannot be read."""
    suffix = path.suffix.lower()
    if suffix in (".txt", ".md", ".markdown", ".html", ".htm"):
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise ValueError(f"not UTF-8 (byte {err.start}); re-save it as UTF-8") from None
        if suffix in (".html", ".htm"):
            parser = _HTMLText()
            parser.feed(text)
            text = "".join(parser.parts)
        return text
    if suffix == ".pdf":
        from pypdf import PdfReader

        try:
            return "\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)
        except Exception as err:  # damaged PDFs raise many types
            raise ValueError(f"unreadable PDF ({type(err).__name__})") from None
    if suffix == ".docx":
        import docx

        try:
            d = docx.Document(str(path))
        except Exception as err:
            raise ValueError(f"unreadable .docx ({type(err).__name__})") from None
        lines = []
        for para in d.paragraphs:
            style = (para.style.name or "").lower() if para.style is not None else ""
            level = style.replace("heading", "").strip()
            lines.append(("#" * int(level) + " " if style.startswith("heading") and level.isdigit() else "") + para.text)
        return "\n".join(lines)
    raise ValueError(f"unsupported type {suffix}")


def load_folder(folder: Path, quiet: bool = False) -> tuple[list[Document], LoadReport]:
    """Every supported file below ``folder`` (recursively). Links pointing outside the folder
    are not followed; unreadable, empty or non-UTF-8 files are skipped and counted."""
    root = folder.resolve()
    docs: list[Document] = []
    report = LoadReport()
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in SUFFIXES or not path.is_file():
            continue
        rel = str(path.relative_to(folder))
        real = path.resolve()
        if root not in real.parents:
            report.skipped.append((rel, "links outside the folder"))
            continue
        try:
            text = read_document(real)
        except (ValueError, OSError) as err:
            report.skipped.append((rel, str(err)))
            continue
        if not text.strip():
            report.skipped.append((rel, "empty"))
            continue
        docs.append(Document(rel, text))
    report.loaded = len(docs)
    if report.skipped and not quiet:
        print(f"{folder}: {report.summary()}", file=sys.stderr)
    return docs, report
