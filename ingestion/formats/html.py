"""HTML: only the readable main text is indexed; markup, scripts, styles and navigation are dropped.

Navigation, headers and footers repeat on every page of a site, so indexing them makes every page
match the same queries.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import DocumentError
from common.isolation import NEVER_CAUGHT
from common.types import Document
from ingestion.formats.common import read_nonempty, tidy_text

if TYPE_CHECKING:
    from bs4 import BeautifulSoup, Tag

NOISE_TAGS = (
    "script", "style", "noscript", "template", "iframe", "object", "embed", "svg", "canvas",
    "nav", "aside", "button", "input", "select", "textarea", "dialog", "menu",
)  # fmt: skip
"""Elements whose content is never main text. Not <form>: some sites wrap the whole page in one."""

PAGE_CHROME = ("header", "footer")
"""Site banner and footer, removed unless inside an <article> or <main>, where they belong to the text."""

NOISE_SELECTORS = '[hidden], [aria-hidden="true"], [role="navigation"], [role="banner"], [role="contentinfo"]'

BLOCK_TAGS = (
    "address", "article", "blockquote", "dd", "details", "div", "dl", "dt", "figcaption", "figure",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "main", "ol", "p", "pre", "section", "summary",
    "table", "tr", "caption", "ul", "body",
)  # fmt: skip
"""Elements that end a line when rendered; their text must not run into the next block's."""


def parse_html(path: Path, name: str) -> Document:
    """Main text of an HTML page; the title comes from <title>, else the first <h1>."""
    soup = _soup(read_nonempty(path, name), name)
    title = _title(soup)
    _drop_noise(soup)
    text = tidy_text(_block_text(_main_element(soup)))
    if not text:
        raise DocumentError(f"{name}: no text content after removing markup")
    return Document(id=name, text=text, title=title)


def _soup(data: bytes, name: str) -> BeautifulSoup:
    """Parse with lxml; bytes are given so the page's own charset declaration is honoured."""
    from bs4 import BeautifulSoup  # noqa: PLC0415 - parser loaded on first use: the API imports this module

    try:
        return BeautifulSoup(data, "lxml")
    except NEVER_CAUGHT:
        raise
    except Exception as exc:  # lxml is lenient; anything it still rejects is an unreadable page
        raise DocumentError(f"{name}: not a readable HTML page ({exc})") from exc


def _title(soup: BeautifulSoup) -> str:
    """<title> if it has text, else the first <h1>: either is how the author names the page."""
    for tag in (soup.title, soup.find("h1")):
        if tag is not None:
            title = " ".join(tag.get_text(" ").split())
            if title:
                return title
    return ""


def _drop_noise(soup: BeautifulSoup) -> None:
    """Remove non-content elements and comments, doctype and processing instructions."""
    from bs4 import Comment, Declaration, Doctype, ProcessingInstruction  # noqa: PLC0415 - parser loaded on first use: the API imports this module

    for tag in soup.find_all(NOISE_TAGS):
        tag.decompose()
    for tag in soup.find_all(PAGE_CHROME):
        if tag.find_parent(("article", "main")) is None:
            tag.decompose()
    for tag in soup.select(NOISE_SELECTORS):
        tag.decompose()
    if soup.head is not None:
        soup.head.decompose()
    for node in soup.find_all(string=True):
        if isinstance(node, Comment | Declaration | Doctype | ProcessingInstruction):
            node.extract()


def _main_element(soup: BeautifulSoup) -> BeautifulSoup | Tag:
    """<main>, or the single <article>, when the page marks its content; else the whole page."""
    main = soup.find("main")
    if main is not None and main.get_text(strip=True):
        return main
    articles = soup.find_all("article")
    if len(articles) == 1 and articles[0].get_text(strip=True):
        return articles[0]
    return soup


def _block_text(root: BeautifulSoup | Tag) -> str:
    """Text with line breaks where blocks and <br> are, so paragraphs do not run together."""
    for br in root.find_all("br"):
        br.replace_with("\n")
    for block in root.find_all(BLOCK_TAGS):
        block.insert_before("\n")
        block.insert_after("\n")
    for cell in root.find_all(("td", "th")):
        cell.insert_after("\t")
    return root.get_text()
