"""Documents in, bounded chunks out: pure functions, no database, no model.

A document is split at its headings (Markdown `#` lines, HTML h1-h6), each section into
paragraphs, and paragraphs are packed into chunks of at most `max_chars` characters (a paragraph
longer than that is cut at sentence, then word, boundaries). Every chunk keeps its section's
heading path, so a snippet says where it comes from.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

TEXT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html",
                 ".htm": "html"}  # fmt: skip
DOC_ID_MAX_CHARS = 200


class CorpusError(ValueError):
    """A corpus that cannot be read: unknown path, bad JSONL, a document without text."""


@dataclass(frozen=True)
class Document:
    doc_id: str  # the id the app's retriever would report as source_id
    title: str
    text: str
    format: str = "text"  # markdown | html | text


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    title: str  # the document's title
    heading: str  # "Section > Subsection", empty before the first heading
    index: int  # position in the document
    text: str


def read_path(path: Path) -> list[Document]:
    """A folder (its .md/.markdown/.txt/.html/.htm files, recursively, doc id = relative path),
    a single such file, or a .jsonl file of {"id", "text", "title"?, "format"?} objects."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES)
        return [_read_file(p, p.relative_to(path).as_posix()) for p in files]
    if not path.is_file():
        raise CorpusError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".jsonl":
        return read_jsonl(path.read_text(encoding="utf-8"), where=str(path))
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise CorpusError(f"{path}: expected a folder, .jsonl, or one of {sorted(TEXT_SUFFIXES)}")
    return [_read_file(path, path.name)]


def read_jsonl(text: str, *, where: str = "jsonl") -> list[Document]:
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{where}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise CorpusError(f"{where}:{n}: expected an object")
        docs.append(document(obj.get("id"), obj.get("text"), obj.get("title"), obj.get("format")))
    return docs


def document(doc_id: object, text: object, title: object = None, fmt: object = None) -> Document:
    """A validated document; its title defaults to its first heading, else its id."""
    if not isinstance(doc_id, str) or not doc_id.strip() or len(doc_id) > DOC_ID_MAX_CHARS:
        raise CorpusError(f"document id must be a string of 1-{DOC_ID_MAX_CHARS} characters")
    if not isinstance(text, str) or not text.strip():
        raise CorpusError(f"document {doc_id!r} has no text")
    fmt = fmt or "markdown"
    if fmt not in ("markdown", "html", "text"):
        raise CorpusError(f"document {doc_id!r}: format must be markdown, html or text")
    if title is not None and not isinstance(title, str):
        raise CorpusError(f"document {doc_id!r}: title must be a string")
    return Document(
        doc_id=doc_id.strip(), title=(title or "").strip() or _first_heading(text, fmt) or doc_id,
        text=text, format=fmt,
    )  # fmt: skip


def _read_file(path: Path, doc_id: str) -> Document:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CorpusError(f"{path}: not UTF-8 text") from None
    return document(doc_id, text, None, TEXT_SUFFIXES[path.suffix.lower()])


def _first_heading(text: str, fmt: str) -> str:
    for heading, _ in sections(text, fmt):
        if heading:
            return heading[0]
    return ""


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def sections(text: str, fmt: str) -> list[tuple[list[str], list[str]]]:
    """(heading path, paragraphs) per section, in order."""
    if fmt == "html":
        return _html_sections(text)
    out: list[tuple[list[str], list[str]]] = []
    path: list[str] = []
    lines: list[str] = []

    def flush() -> None:
        paragraphs = [
            " ".join(p.split()) for p in re.split(r"\n\s*\n", "\n".join(lines)) if p.strip()
        ]
        if paragraphs or path:
            out.append((list(path), paragraphs))
        lines.clear()

    for line in text.splitlines():
        m = _MD_HEADING.match(line) if fmt == "markdown" else None
        if m:
            flush()
            level = len(m.group(1))
            path[:] = [*path[: level - 1], m.group(2)]
        else:
            lines.append(line)
    flush()
    return [(p, paras) for p, paras in out if paras]


class _HtmlSections(HTMLParser):
    BLOCKS = {"p", "li", "div", "br", "tr", "section", "article", "pre", "blockquote"}
    SKIP = {"script", "style", "head", "nav"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[tuple[list[str], list[str]]] = [([], [])]
        self.path: list[str] = []
        self.buf: list[str] = []
        self.heading: int | None = None
        self.skip = 0

    def _flush(self) -> None:
        text = " ".join("".join(self.buf).split())
        self.buf.clear()
        if not text:
            return
        if self.heading is not None:
            self.path = [*self.path[: self.heading - 1], text]
            self.out.append((list(self.path), []))
        else:
            self.out[-1][1].append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading = int(tag[1])
        elif tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading = None
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.buf.append(data)


def _html_sections(text: str) -> list[tuple[list[str], list[str]]]:
    parser = _HtmlSections()
    parser.feed(text)
    parser.close()
    parser._flush()
    return [(p, [html.unescape(x) for x in paras]) for p, paras in parser.out if paras]


def _pieces(paragraph: str, max_chars: int) -> list[str]:
    """A paragraph cut to at most max_chars: at sentence ends, else at spaces, else hard."""
    if len(paragraph) <= max_chars:
        return [paragraph]
    out: list[str] = []
    current = ""
    for unit in re.split(r"(?<=[.!?])\s+", paragraph):
        words = unit.split(" ") if len(unit) > max_chars else [unit]
        for word in words:
            while len(word) > max_chars:
                if current:
                    out.append(current)
                    current = ""
                out.append(word[:max_chars])
                word = word[max_chars:]
            joined = f"{current} {word}" if current else word
            if len(joined) <= max_chars:
                current = joined
            else:
                out.append(current)
                current = word
    if current:
        out.append(current)
    return out


def chunk(doc: Document, max_chars: int) -> list[Chunk]:
    """The document's chunks: never across a heading, paragraphs packed up to max_chars."""
    if max_chars < 50:
        raise ValueError("max_chars must be at least 50")
    chunks: list[Chunk] = []
    for path, paragraphs in sections(doc.text, doc.format):
        heading = " > ".join(path)
        current = ""
        for paragraph in paragraphs:
            for piece in _pieces(paragraph, max_chars):
                joined = f"{current}\n\n{piece}" if current else piece
                if len(joined) <= max_chars:
                    current = joined
                    continue
                chunks.append(Chunk(doc.doc_id, doc.title, heading, len(chunks), current))
                current = piece
        if current:
            chunks.append(Chunk(doc.doc_id, doc.title, heading, len(chunks), current))
    return chunks


def embedding_text(c: Chunk) -> str:
    """What is embedded for a chunk: its heading gives a short paragraph its topic."""
    return f"{c.heading}\n{c.text}" if c.heading else c.text
