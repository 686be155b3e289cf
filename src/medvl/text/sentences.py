"""Sentence splitting for radiology reports, with character offsets.

Why not a general-purpose splitter: reports are full of periods that do not end a sentence --
decimals ("2.5 cm"), abbreviations ("Dr.", "approx.", "e.g."), list markers ("1. No effusion.
2. ...") -- and of sentence ends without a following capital (lower-cased corpora). This splitter is
a few regular expressions and rules tuned for that text; offsets index the original string so a
labeler decision can point at the exact span it used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Sentence", "split_sentences", "ABBREVIATIONS"]

# Lower-cased words that are followed by a period without ending the sentence.
ABBREVIATIONS = frozenset({
    "dr", "drs", "mr", "mrs", "ms", "prof", "st", "approx", "appr", "apprx", "vs", "v", "e.g", "i.e", "eg", "ie",
    "cf", "fig", "figs", "incl", "resp", "pt", "pts", "hx", "yr", "yrs", "wk", "wks", "mo", "mos", "no.", "nos",
    "ca", "cm.", "a.m", "p.m", "et al", "al", "u.s", "ap.", "lat.", "l.", "r.",
})

_CANDIDATE = re.compile(r"[.!?]+(?=\s|$)|\n\s*\n|;(?=\s*\n)")
_NEWLINE_ITEM = re.compile(r"\n(?=\s*(?:\d{1,2}[.)]\s|[-*\u2022]\s))")
_PREV_WORD = re.compile(r"(\S+)$")
_HAS_WORD = re.compile(r"[A-Za-z0-9]")


@dataclass(frozen=True)
class Sentence:
    """One sentence: its text (stripped) and ``[start, end)`` offsets in the source string."""

    text: str
    start: int
    end: int


def _is_boundary(text: str, start: int, pos: int, end: int, cased: bool) -> bool:
    """Whether the punctuation ``text[pos:end]`` ends the sentence that began at ``start``."""
    if text[pos] == "\n" or text[pos] == ";":
        return True
    m = _PREV_WORD.search(text, start, pos)
    word = m.group(1).lower().lstrip("([\"'") if m else ""
    if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha() and text[pos:end] == "."):
        return False  # "Dr.", "approx.", an initial
    if m and word.isdigit() and len(word) <= 2:
        line_start = max(start, text.rfind("\n", 0, m.start()) + 1)
        if not text[line_start:m.start()].strip():
            return False  # "1." opening a numbered item
    if cased:
        nxt = re.match(r"\s*(\S)", text[end:])
        if nxt and nxt.group(1).islower():
            return False  # "... approx. 2 cm in size"
    return True


def split_sentences(text: str, offset: int = 0) -> list[Sentence]:
    """Sentences of ``text`` in order; ``offset`` is added to every offset (for a section's body).

    Pieces with no letter or digit (a stray "." after a list) are dropped; everything else, de-id
    tokens included, is kept.
    """
    cased = any(c.isupper() for c in text)
    cuts: list[int] = []
    start = 0
    for m in _CANDIDATE.finditer(text):
        if _is_boundary(text, start, m.start(), m.end(), cased):
            cuts.append(m.end())
            start = m.end()
    cuts += [m.start() for m in _NEWLINE_ITEM.finditer(text)]
    cuts = sorted(set(cuts + [len(text)]))
    out: list[Sentence] = []
    prev = 0
    for cut in cuts:
        piece = text[prev:cut]
        lead = len(piece) - len(piece.lstrip())
        body = piece.strip()
        if body and _HAS_WORD.search(body):
            s = prev + lead
            out.append(Sentence(body, offset + s, offset + s + len(body)))
        prev = cut
    return out
