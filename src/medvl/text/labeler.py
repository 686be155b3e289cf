"""A CheXpert-style report labeler: mention -> negation -> uncertainty -> aggregation.

Why rules and not a model: labels must be reproducible, explainable to a radiologist ("which words
made this 'uncertain'?") and fast enough to label a hospital's archive on one core; the CheXpert
labeler (Irvin et al., 2019) showed that a careful rule set is a strong baseline, and its slow part
(the NegBio dependency parse) is replaced here by cue phrases with scopes.

For every sentence of the chosen text:

1. **mentions** of each class: the class's phrases (the built-in lexicon of the 14 CheXpert
   observations, plus a dataset card's class names and synonyms), and for Cardiomegaly / Enlarged
   Cardiomediastinum an anatomy word with its nearest modifier ("heart size is normal" is a negative
   mention, "the heart is enlarged" a positive one, "borderline heart size" an uncertain one);
2. each mention is classified by the cues whose scope reaches it, in CheXpert's order: a hedge that
   contains a negation word ("cannot exclude") -> uncertain; a negation ("no", "without", "resolved",
   "... is not seen") -> negative; a hedge ("possible", "may represent", "versus") -> uncertain; else
   positive. A cue before the mention reaches at most 12 words forward, one after it 6 words back,
   and no scope crosses "but", "however", "although", "there is", ";" or the sentence end.
   Pseudo-negations are not cues: "no change in the effusion" asserts the effusion;
3. **aggregation** per class over all mentions: positive beats uncertain beats negative; a class
   without mentions is blank (``None``). **No Finding** follows the CheXpert rule: 1 when no other
   observation (Support Devices excepted) is positive or uncertain, else blank.

Every decision is a :class:`Decision` naming the mention, the cue and their character spans in the
report, which ``medvl data label --explain`` prints.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from medvl.text import lexicon
from medvl.text.lexicon import CHEXPERT_CLASSES, NO_FINDING
from medvl.text.sections import section_text
from medvl.text.sentences import split_sentences

__all__ = ["CHEXPERT_CLASSES", "NO_FINDING", "Decision", "Labeling", "Labeler", "label_report", "label_reports",
           "explain_report", "get_labeler", "POSITIVE", "NEGATIVE", "UNCERTAIN"]

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
PRE_NEG_WINDOW, PRE_UNC_WINDOW, POST_WINDOW, ATTR_AFTER, ATTR_BEFORE = 12, 10, 6, 8, 4
_NO_FINDING_EXEMPT = {"support devices"}
_WORD = re.compile(r"[a-z0-9]+")


def _alt(patterns: Iterable[str]) -> str:
    return "|".join(f"(?:{p})" for p in patterns)


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    """Whole-word alternation (word edges tested as non-word neighbours so that ';' and '?' work)."""
    return re.compile(rf"(?<![\w/])(?:{_alt(patterns)})(?![\w/])", re.IGNORECASE)


def _phrase_pattern(phrase: str) -> str:
    """A card phrase as a regex: literal words, flexible spaces/hyphens, optional plural."""
    words = [re.escape(w) for w in re.split(r"[\s\-]+", phrase.strip().lower()) if w]
    if not words:
        return ""
    pat = r"[\s\-]+".join(words)
    return pat + "(?:s|es)?" if words[-1][-1:].isalpha() else pat


@dataclass(frozen=True)
class Decision:
    """One mention and what decided its value. Spans are ``(start, end)`` offsets in the report."""

    cls: str
    value: float
    mention: str
    span: tuple[int, int]
    rule: str  # positive | negation | uncertainty | uncertainty-before-negation | normal | borderline
    cue: str = ""
    cue_span: tuple[int, int] | None = None
    sentence: str = ""

    def describe(self) -> str:
        v = {1.0: "1", 0.0: "0", -1.0: "-1"}[self.value]
        cue = f", cue {self.cue!r} at {self.cue_span[0]}-{self.cue_span[1]}" if self.cue_span else ""
        return (f"{self.cls} = {v}: mention {self.mention!r} at {self.span[0]}-{self.span[1]} ({self.rule}{cue}) "
                f"in {self.sentence!r}")


@dataclass
class Labeling:
    """The labels of one report and the decisions behind them."""

    labels: dict[str, float | None]
    decisions: list[Decision] = field(default_factory=list)
    section_found: bool = True

    def explain(self) -> list[str]:
        lines = [d.describe() for d in self.decisions]
        for c, v in self.labels.items():
            if c.lower() == NO_FINDING.lower() and v is not None:
                lines.append(f"{c} = 1: no other observation is positive or uncertain (CheXpert rule)")
        return lines


@dataclass
class _ClassRules:
    name: str
    mention: re.Pattern[str] | None
    anatomy: re.Pattern[str] | None
    no_finding: bool = False


@dataclass
class _Cue:
    kind: str  # ubn | neg | unc
    where: str  # pre | post
    start: int
    end: int
    text: str


class Labeler:
    """A compiled rule set for a list of classes (see the module docstring for the rules).

    ``classes`` are the output columns in order; a class whose name (any case) is a CheXpert
    observation uses the built-in lexicon, plus the ``extra_phrases`` given for it (a card's
    synonyms); any other class is matched by its extra phrases and its own name.
    """

    def __init__(self, classes: Sequence[str], extra_phrases: dict[str, Sequence[str]] | None = None):
        extra_phrases = extra_phrases or {}
        builtin = {c.lower(): c for c in CHEXPERT_CLASSES}
        self.classes = list(classes)
        self.rules: list[_ClassRules] = []
        for name in self.classes:
            key = builtin.get(name.lower())
            if (key or "").lower() == NO_FINDING.lower() or name.lower() in ("no finding", "no findings", "normal"):
                self.rules.append(_ClassRules(name, None, None, no_finding=True))
                continue
            pats = list(lexicon.MENTIONS.get(key, [])) if key else []
            own = [name] if not key else []
            pats += [p for p in (_phrase_pattern(x) for x in [*own, *extra_phrases.get(name, [])]) if p]
            attr = lexicon.ATTRIBUTES.get(key or "")
            self.rules.append(_ClassRules(
                name, _compile(pats) if pats else None, _compile(attr["anatomy"]) if attr else None))
        self._modifier = re.compile(
            rf"(?<!\w)(?:(?P<borderline>{_alt(lexicon.BORDERLINE_MODIFIERS)})|(?P<normal>{_alt(lexicon.NORMAL_MODIFIERS)})"
            rf"|(?P<abnormal>{_alt(lexicon.ABNORMAL_MODIFIERS)}))(?!\w)", re.IGNORECASE)
        self._cues = [
            ("ubn", "both", _compile(lexicon.UNCERTAIN_BEFORE_NEGATION)),
            ("pseudo", "both", _compile(lexicon.PSEUDO_NEGATIONS)),
            ("neg", "pre", _compile(lexicon.NEGATION_PRE)),
            ("neg", "post", _compile(lexicon.NEGATION_POST)),
            ("unc", "pre", _compile(lexicon.UNCERTAIN_PRE)),
            ("unc", "post", _compile(lexicon.UNCERTAIN_POST)),
        ]
        self._term = _compile(lexicon.TERMINATORS)

    # ------------------------------------------------------------------ cues and scopes
    def _find_cues(self, s: str) -> list[_Cue]:
        blocked: list[tuple[int, int]] = []
        cues: list[_Cue] = []
        for kind, where, rx in self._cues:
            for m in rx.finditer(s):
                if m.start() == m.end():
                    continue
                if kind in ("ubn", "pseudo"):
                    blocked.append((m.start(), m.end()))
                    if kind == "ubn":
                        cues += [_Cue("ubn", "pre", m.start(), m.end(), m.group()),
                                 _Cue("ubn", "post", m.start(), m.end(), m.group())]
                    continue
                if any(a < m.end() and m.start() < b for a, b in blocked):
                    continue  # "not" inside "cannot exclude" / "no" inside "no change"
                cues.append(_Cue(kind, where, m.start(), m.end(), m.group().strip()))
        return cues

    def _in_scope(self, s: str, cue: _Cue, start: int, end: int) -> bool:
        if cue.where == "pre":
            if cue.end > end or cue.start >= start and cue.end > start and cue.start > start:
                return False
            gap = s[cue.end:start] if cue.end <= start else ""
            limit = PRE_NEG_WINDOW if cue.kind == "neg" else PRE_UNC_WINDOW
        else:
            if cue.start < end:
                return False
            gap = s[end:cue.start]
            limit = POST_WINDOW
        if len(_WORD.findall(gap)) > limit:
            return False
        return not self._term.search(gap)

    def _classify(self, s: str, cues: list[_Cue], start: int, end: int) -> tuple[float, str, _Cue | None]:
        for kind, value, rule in (("ubn", UNCERTAIN, "uncertainty-before-negation"), ("neg", NEGATIVE, "negation"),
                                  ("unc", UNCERTAIN, "uncertainty")):
            hits = [c for c in cues if c.kind == kind and self._in_scope(s, c, start, end)]
            if hits:
                near = min(hits, key=lambda c: abs(c.start - start))
                return value, rule, near
        return POSITIVE, "positive", None

    # ------------------------------------------------------------------ mentions
    def _attribute_mentions(self, s: str, rules: _ClassRules) -> Iterable[tuple[int, int, str, str, int, int]]:
        """(start, end, kind, modifier text, mod start, mod end) per anatomy word with a modifier nearby."""
        assert rules.anatomy is not None
        mods = list(self._modifier.finditer(s))
        for a in rules.anatomy.finditer(s):
            best = None
            for m in mods:
                if m.start() >= a.end():
                    gap, limit = s[a.end():m.start()], ATTR_AFTER
                elif m.end() <= a.start():
                    gap, limit = s[m.end():a.start()], ATTR_BEFORE
                else:
                    continue
                n = len(_WORD.findall(gap))
                if n > limit or self._term.search(gap) or re.search(r"[,.]", gap) and m.lastgroup == "abnormal":
                    continue
                if best is None or n < best[0]:
                    best = (n, m)
            if best is not None:
                m = best[1]
                yield min(a.start(), m.start()), max(a.end(), m.end()), str(m.lastgroup), m.group(), m.start(), m.end()

    def label_sentence(self, s: str, offset: int = 0) -> list[Decision]:
        """Decisions for one sentence (``offset`` = its position in the report)."""
        cues = self._find_cues(s)
        out: list[Decision] = []
        for r in self.rules:
            if r.mention is not None:
                for m in r.mention.finditer(s):
                    value, rule, cue = self._classify(s, cues, m.start(), m.end())
                    out.append(_decision(r.name, value, rule, s, offset, m.start(), m.end(), cue))
            if r.anatomy is not None:
                for a0, a1, kind, mod, m0, m1 in self._attribute_mentions(s, r):
                    if kind == "normal":
                        out.append(Decision(r.name, NEGATIVE, s[a0:a1], (offset + a0, offset + a1), "normal", mod,
                                            (offset + m0, offset + m1), s))
                        continue
                    value, rule, cue = self._classify(s, cues, a0, a1)
                    if kind == "borderline" and value == POSITIVE:
                        value, rule = UNCERTAIN, "borderline"
                        cue = _Cue("unc", "pre", m0, m1, mod)
                    out.append(_decision(r.name, value, rule, s, offset, a0, a1, cue))
        return out

    def label(self, text: str, section: str = "all") -> Labeling:
        """Label one report; ``section`` picks the text (see :func:`medvl.text.sections.section_text`)."""
        body, offset, found = section_text(text, section)
        decisions: list[Decision] = []
        for sent in split_sentences(body, offset):
            decisions += self.label_sentence(text[sent.start:sent.end], sent.start)
        labels: dict[str, float | None] = {c: None for c in self.classes}
        for d in decisions:
            cur = labels[d.cls]
            if cur is None or _RANK[d.value] > _RANK[cur]:
                labels[d.cls] = d.value
        for r in self.rules:
            if r.no_finding:
                others = [labels[o.name] for o in self.rules
                          if not o.no_finding and o.name.lower() not in _NO_FINDING_EXEMPT]
                labels[r.name] = None if any(v in (POSITIVE, UNCERTAIN) for v in others) else POSITIVE
        return Labeling(labels, decisions, found)


_RANK = {NEGATIVE: 0, UNCERTAIN: 1, POSITIVE: 2}


def _decision(cls: str, value: float, rule: str, s: str, offset: int, a: int, b: int, cue: _Cue | None) -> Decision:
    return Decision(cls, value, s[a:b], (offset + a, offset + b), rule, cue.text if cue else "",
                    (offset + cue.start, offset + cue.end) if cue else None, s)


def _card_phrases(card: Any) -> tuple[list[str], dict[str, list[str]]]:
    names = list(card.class_names)
    return names, {c.name: list(c.synonyms) for c in card.classes}


@lru_cache(maxsize=32)
def _cached(classes: tuple[str, ...], extra: tuple[tuple[str, tuple[str, ...]], ...]) -> Labeler:
    return Labeler(list(classes), {k: list(v) for k, v in extra})


def get_labeler(classes: Sequence[str] | None = None, card: Any = None) -> Labeler:
    """The (cached) labeler for ``classes``; default: the 14 CheXpert observations plus the card's classes.

    A card contributes its class names and synonyms as mentions; a card class named like a CheXpert
    observation (any case) also gets the built-in lexicon of that observation.
    """
    extra: dict[str, list[str]] = {}
    card_names: list[str] = []
    if card is not None:
        card_names, extra = _card_phrases(card)
    if classes is None:
        lower = {c.lower() for c in card_names}
        classes = [c for c in CHEXPERT_CLASSES if c.lower() not in lower] + card_names
    if len(set(classes)) != len(classes):
        raise ValueError(f"duplicate class names: {list(classes)}")
    key = tuple((k, tuple(v)) for k, v in sorted(extra.items()) if k in classes)
    return _cached(tuple(classes), key)


def label_report(text: str, classes: list[str] | None = None, card: Any = None,
                 section: str = "all") -> dict[str, float | None]:
    """Labels of one report: class -> 1.0 (positive), 0.0 (negative), -1.0 (uncertain), None (not mentioned).

    ``classes`` default to the 14 CheXpert observations plus any ``card`` classes (a
    :class:`medvl.data.card.DatasetCard`, whose synonyms become mentions).
    """
    return get_labeler(classes, card).label(text, section).labels


def label_reports(texts: Iterable[str], classes: list[str] | None = None, card: Any = None,
                  section: str = "all") -> list[dict[str, float | None]]:
    """:func:`label_report` for many reports (the rules are compiled once)."""
    lab = get_labeler(classes, card)
    return [lab.label(t, section).labels for t in texts]


def explain_report(text: str, classes: list[str] | None = None, card: Any = None,
                   section: str = "all") -> Labeling:
    """Labels plus every :class:`Decision` (mention, cue, spans) that produced them."""
    return get_labeler(classes, card).label(text, section)
