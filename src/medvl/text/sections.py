"""Split a radiology report into its sections, keeping character offsets.

Reports from different sites spell their headers differently ("FINDINGS:", "Findings -",
"IMPRESSION" on its own line, "Conclusion:", "CLINICAL HISTORY:"), and many exports (IU X-ray's
R2Gen file, most generated reports) have no headers at all. The sectioner maps every variant onto
six canonical names and treats a header-less report as one findings section, so the labeler can
ask for "the impression" and get a sensible answer everywhere. De-identification tokens (``XXXX``,
``___``, ``[** ... **]``) are ordinary text here; :func:`deid_tokens` finds them for reporting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SECTION_NAMES", "Section", "split_sections", "section_text", "deid_tokens", "HEADER_ALIASES"]

SECTION_NAMES = ("indication", "comparison", "technique", "findings", "impression", "recommendation")

# canonical name -> header spellings (lower case; whitespace is flexible)
HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "indication": ("indication", "indications", "history", "clinical history", "clinical information",
                   "clinical indication", "clinical details", "clinical notes", "reason for exam",
                   "reason for examination", "reason for study", "reason for referral", "clinical data"),
    "comparison": ("comparison", "comparisons", "comparison study", "comparison studies", "prior studies",
                   "priors"),
    "technique": ("technique", "techniques", "examination", "exam", "procedure", "views", "study"),
    "findings": ("findings", "finding", "description", "report"),
    "impression": ("impression", "impressions", "conclusion", "conclusions", "opinion", "interpretation",
                   "summary", "diagnosis", "final impression"),
    "recommendation": ("recommendation", "recommendations", "follow-up", "follow up", "advice", "plan"),
}
_ALIAS_TO_NAME = {a: name for name, aliases in HEADER_ALIASES.items() for a in aliases}
_ALT = "|".join(sorted((re.escape(a).replace(r"\ ", r"\s+") for a in _ALIAS_TO_NAME), key=len, reverse=True))
# A header opens the text, a line, or follows a sentence end; it is closed by ':' or a dash, or (written
# in capitals) by the end of its line.
_HEADER = re.compile(
    rf"(?:^|(?<=\n)|(?<=[.!?]\s)|(?<=[.!?]\s\s))[ \t]*(?P<h>{_ALT})[ \t]*(?::|\s[-\u2013\u2014](?=\s)|(?=[ \t]*\n)|$)",
    re.IGNORECASE)
_DEID = re.compile(r"\bX{2,}\b|_{3,}|\[\*\*.*?\*\*\]|<(?:name|date|hospital|id|phi)>", re.IGNORECASE)


@dataclass(frozen=True)
class Section:
    """A section: canonical ``name`` (or "preamble" for text before the first header), the header as
    written ("" when there was none), the body ``text`` and its ``[start, end)`` offsets."""

    name: str
    header: str
    text: str
    start: int
    end: int


def _accept(m: re.Match[str], text: str) -> bool:
    """Colon/dash headers are accepted in any case; a bare header only in capitals on its own line."""
    tail = text[m.end("h"):m.end()]
    if ":" in tail or any(d in tail for d in "-\u2013\u2014"):
        return True
    return m.group("h").isupper()


def _body(text: str, start: int, end: int) -> tuple[str, int, int]:
    piece = text[start:end]
    lead = len(piece) - len(piece.lstrip())
    body = piece.strip()
    return body, start + lead, start + lead + len(body)


def split_sections(text: str) -> list[Section]:
    """The sections of ``text`` in order of appearance.

    A report without any recognised header is a single ``findings`` section (the R2Gen/IU layout).
    Empty bodies are kept (a header with nothing under it is information), a repeated header gives
    two sections of the same name.
    """
    heads = [m for m in _HEADER.finditer(text) if _accept(m, text)]
    if not heads:
        body, s, e = _body(text, 0, len(text))
        return [Section("findings", "", body, s, e)] if body else []
    out: list[Section] = []
    pre, s, e = _body(text, 0, heads[0].start())
    if pre:
        out.append(Section("preamble", "", pre, s, e))
    for i, m in enumerate(heads):
        stop = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body, s, e = _body(text, m.end(), stop)
        name = _ALIAS_TO_NAME[re.sub(r"\s+", " ", m.group("h").lower())]
        out.append(Section(name, m.group("h"), body, s, e))
    return out


def section_text(text: str, section: str = "all") -> tuple[str, int, bool]:
    """The text to label for ``section`` ("impression", "findings" or "all").

    Returns ``(text, offset, found)``: the joined bodies of every section of that name, the offset of
    the first one in ``text``, and whether it was present. When absent the whole report is returned
    with ``found=False`` (so a report without an impression is still labelled, and the caller can
    count how often that happened).
    """
    if section == "all":
        return text, 0, True
    if section not in SECTION_NAMES:
        raise ValueError(f"section must be 'all' or one of {', '.join(SECTION_NAMES)}, got {section!r}")
    parts = [s for s in split_sections(text) if s.name == section]
    if not parts:
        return text, 0, False
    if len(parts) == 1:
        return parts[0].text, parts[0].start, True
    # several sections of one name: keep offsets exact by returning the span that covers them all
    start, end = parts[0].start, parts[-1].end
    return text[start:end], start, True


def deid_tokens(text: str) -> list[str]:
    """De-identification placeholders in ``text`` (``XXXX``, ``___``, ``[** ... **]``, ``<NAME>``)."""
    return _DEID.findall(text)
