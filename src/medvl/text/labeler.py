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
from bisect import bisect_left
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
PRE_NEG_WINDOW, PRE_UNC_WINDOW, POST_WINDOW, ATTR_AFTER, ATTR_BEFORE = 12, 10, 6, 8, 6
_NO_FINDING_EXEMPT = {"support devices"}
_WORD = re.compile(r"[A-Za-z0-9]+")


def _alt(patterns: Iterable[str]) -> str:
    return "|".join(f"(?:{p})" for p in patterns)


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    """Whole-word alternation, matched on lower-cased text.

    Why ``\b`` and no IGNORECASE: a leading look-behind and case folding stop ``re`` from skipping
    positions that cannot start a match, which made labelling ~3x slower. Patterns that start with
    punctuation (";", "?") get no word-boundary test.
    """
    pats = list(patterns)
    other = [p for p in pats if p[:1] in (";", ":") or (p.startswith("\\") and not p.startswith(("\\b", "\\w", "\\d")))]
    word = [p for p in pats if p not in other]
    parts = ([rf"\b(?:{_alt(word)})"] if word else []) + ([f"(?:{_alt(other)})"] if other else [])
    return re.compile(rf"(?:{'|'.join(parts)})(?![\w/])")


def _lower(text: str) -> str:
    """Lower case with the same length (offsets stay valid; the rare characters whose lower case is
    longer, such as 'İ', are left as they are)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


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


class _Scan:
    """Every match of each pattern in one lower-cased text, computed once and served per sentence.

    Why: running ~25 patterns on each sentence separately cost more in call overhead than in matching;
    one pass per report and a bisect per sentence is ~2x faster. A match that crosses a sentence end
    belongs to no sentence.
    """

    def __init__(self, text: str, lo: int = 0, hi: int | None = None):
        self.text, self.lo, self.hi = text, lo, len(text) if hi is None else hi
        self._found: dict[int, tuple[list[int], list[re.Match[str]]]] = {}

    def within(self, rx: re.Pattern[str], a: int, b: int) -> list[re.Match[str]]:
        got = self._found.get(id(rx))
        if got is None:
            ms = list(rx.finditer(self.text, self.lo, self.hi))
            got = ([m.start() for m in ms], ms)
            self._found[id(rx)] = got
        starts, ms = got
        if not starts or starts[-1] < a:
            return []
        out = []
        for i in range(bisect_left(starts, a), len(starts)):
            m = ms[i]
            if m.start() >= b:
                break
            if m.end() <= b:
                out.append(m)
        return out


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
            rf"\b(?:(?P<borderline>{_alt(lexicon.BORDERLINE_MODIFIERS)})|(?P<normal>{_alt(lexicon.NORMAL_MODIFIERS)})"
            rf"|(?P<abnormal>{_alt(lexicon.ABNORMAL_MODIFIERS)})|(?P<neutral>{_alt(lexicon.NEUTRAL_MODIFIERS)}))(?!\w)")
        self._cues = [
            ("ubn", "both", _compile(lexicon.UNCERTAIN_BEFORE_NEGATION)),
            ("pseudo", "both", _compile(lexicon.PSEUDO_NEGATIONS)),
            ("neg", "pre", _compile(lexicon.NEGATION_PRE)),
            ("neg", "post", _compile(lexicon.NEGATION_POST)),
            ("unc", "pre", _compile(lexicon.UNCERTAIN_PRE)),
            ("unc", "post", _compile(lexicon.UNCERTAIN_POST)),
            ("short", "pre", _compile(lexicon.UNCERTAIN_SHORT)),
            ("short", "post", _compile(lexicon.UNCERTAIN_SHORT)),
        ]
        self._term = _compile(lexicon.TERMINATORS)

    # ------------------------------------------------------------------ cues and scopes
    def _find_cues(self, scan: _Scan, a: int, b: int) -> list[_Cue]:
        blocked: list[tuple[int, int]] = []
        cues: list[_Cue] = []
        for kind, where, rx in self._cues:
            for m in scan.within(rx, a, b):
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
            if cue.end > end:  # a cue inside the span counts: "heart size is probably enlarged"
                return False
            gap = s[cue.end:start] if cue.end <= start else ""
            limit = PRE_NEG_WINDOW if cue.kind == "neg" else PRE_UNC_WINDOW
        else:
            if cue.start < end:
                return False
            gap = s[end:cue.start]
            limit = POST_WINDOW
        if cue.kind == "short":
            if "," in gap:
                return False
            limit = lexicon.SHORT_WINDOW
        if len(_WORD.findall(gap)) > limit:
            return False
        return not self._term.search(gap)

    def _classify(self, s: str, cues: list[_Cue], start: int, end: int) -> tuple[float, str, _Cue | None]:
        for kinds, value, rule in ((("ubn",), UNCERTAIN, "uncertainty-before-negation"),
                                   (("neg",), NEGATIVE, "negation"),
                                   (("unc", "short"), UNCERTAIN, "uncertainty")):
            hits = [c for c in cues if c.kind in kinds and self._in_scope(s, c, start, end)]
            if hits:
                near = min(hits, key=lambda c: abs(c.start - start))
                return value, rule, near
        return POSITIVE, "positive", None

    # ------------------------------------------------------------------ mentions
    def _attribute_mentions(self, scan: _Scan, lo: int, hi: int,
                            rules: _ClassRules) -> Iterable[tuple[int, int, str, str, int, int]]:
        """(start, end, kind, modifier text, mod start, mod end) per anatomy word with a modifier nearby."""
        assert rules.anatomy is not None
        s = scan.text
        mods = scan.within(self._modifier, lo, hi)
        for a in scan.within(rules.anatomy, lo, hi):
            best = strong = None
            for m in mods:
                if m.start() >= a.end():
                    gap, limit = s[a.end():m.start()], ATTR_AFTER
                elif m.end() <= a.start():
                    gap, limit = s[m.end():a.start()], ATTR_BEFORE
                else:
                    continue
                n = len(_WORD.findall(gap))
                comma = bool(re.search(r"[,.]", gap))
                if n > limit or self._term.search(gap) or comma and m.lastgroup in ("abnormal", "neutral"):
                    continue
                if best is None or (n, comma) < best[0]:
                    best = ((n, comma), m)
                if m.lastgroup != "neutral" and (strong is None or (n, comma) < strong[0]):
                    strong = ((n, comma), m)
            if best is not None and best[1].lastgroup == "neutral":
                if strong is None or strong[0][1]:
                    continue  # "stable" nearer than a normal/abnormal word across a comma: no size statement
                best = strong
            if best is not None:
                m = best[1]
                yield min(a.start(), m.start()), max(a.end(), m.end()), str(m.lastgroup), m.group(), m.start(), m.end()

    def label_sentence(self, sentence: str, offset: int = 0) -> list[Decision]:
        """Decisions for one sentence (``offset`` = its position in the report)."""
        return self._label_span(_Scan(_lower(sentence)), sentence, 0, len(sentence), offset)

    def _label_span(self, scan: _Scan, orig: str, lo: int, hi: int, offset: int = 0) -> list[Decision]:
        """Decisions for the sentence ``[lo, hi)`` of the scanned text (``orig`` is the same text, original case)."""
        s = scan.text
        cues = self._find_cues(scan, lo, hi)
        out: list[Decision] = []
        for r in self.rules:
            if r.mention is not None:
                for m in scan.within(r.mention, lo, hi):
                    value, rule, cue = self._classify(s, cues, m.start(), m.end())
                    out.append(_decision(r.name, value, rule, orig, offset, m.start(), m.end(), cue, lo, hi))
            if r.anatomy is not None:
                for a0, a1, kind, mod, m0, m1 in self._attribute_mentions(scan, lo, hi, r):
                    if kind == "normal":
                        out.append(Decision(r.name, NEGATIVE, orig[a0:a1], (offset + a0, offset + a1), "normal",
                                            orig[m0:m1], (offset + m0, offset + m1), orig[lo:hi]))
                        continue
                    value, rule, cue = self._classify(s, cues, a0, a1)
                    if kind == "borderline" and value == POSITIVE:
                        value, rule = UNCERTAIN, "borderline"
                        cue = _Cue("unc", "pre", m0, m1, mod)
                    out.append(_decision(r.name, value, rule, orig, offset, a0, a1, cue, lo, hi))
        return out

    def label(self, text: str, section: str = "all") -> Labeling:
        """Label one report; ``section`` picks the text (see :func:`medvl.text.sections.section_text`)."""
        body, offset, found = section_text(text, section)
        decisions: list[Decision] = []
        scan = _Scan(_lower(text), offset, offset + len(body))
        for sent in split_sentences(body, offset):
            decisions += self._label_span(scan, text, sent.start, sent.end)
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


def _decision(cls: str, value: float, rule: str, s: str, offset: int, a: int, b: int, cue: _Cue | None,
              lo: int, hi: int) -> Decision:
    return Decision(cls, value, s[a:b], (offset + a, offset + b), rule, s[cue.start:cue.end].strip() if cue else "",
                    (offset + cue.start, offset + cue.end) if cue else None, s[lo:hi])


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
