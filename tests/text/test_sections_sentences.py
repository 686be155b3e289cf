"""Sectioner and sentence splitter: header variants, header-less reports, offsets, abbreviations, lists."""

from __future__ import annotations

import pytest

from medvl.text.sections import deid_tokens, section_text, split_sections
from medvl.text.sentences import split_sentences


@pytest.mark.parametrize("text, names", [
    ("FINDINGS: Heart normal. No effusion.\nIMPRESSION: 1. No acute disease. 2. Stable.", ["findings", "impression"]),
    ("Findings - lungs clear. Impression - normal", ["findings", "impression"]),
    ("INDICATION: cough\n\nFINDINGS\nClear lungs.\n\nIMPRESSION\nNormal.", ["indication", "findings", "impression"]),
    ("History: ___ year old. Comparison: none. Technique: PA and lateral. Findings: XXXX clear. "
     "Conclusion: no acute findings. Recommendation: follow-up CT.",
     ["indication", "comparison", "technique", "findings", "impression", "recommendation"]),
    ("clinical information: fever. opinion: pneumonia", ["indication", "impression"]),
    ("EXAM: chest\nReport text before. IMPRESSION: fine", ["technique", "impression"]),
])
def test_header_variants(text: str, names: list[str]) -> None:
    secs = split_sections(text)
    assert [s.name for s in secs] == names
    for s in secs:  # offsets index the original string
        assert text[s.start:s.end] == s.text


def test_headerless_report_is_findings_and_lowercase_words_are_not_headers() -> None:
    text = "  The heart is normal in size. Findings consistent with mild edema.  "
    (sec,) = split_sections(text)
    assert sec.name == "findings" and sec.header == "" and text[sec.start:sec.end] == sec.text
    assert split_sections("") == []


def test_preamble_and_section_text_fallback() -> None:
    text = "Portable chest. FINDINGS: clear. IMPRESSION: Normal."
    secs = split_sections(text)
    assert [s.name for s in secs] == ["preamble", "findings", "impression"]
    body, offset, found = section_text(text, "impression")
    assert (body, found) == ("Normal.", True) and text[offset:offset + len(body)] == body
    body, offset, found = section_text("Heart normal.", "impression")
    assert (body, offset, found) == ("Heart normal.", 0, False)
    with pytest.raises(ValueError, match="section must be"):
        section_text(text, "summary-ish")


def test_sentences_survive_decimals_abbreviations_and_numbered_lists() -> None:
    text = "Nodule approx. 2.5 cm seen by Dr. Smith, e.g. in the RUL. 1. No effusion. 2. Stable heart. ."
    sents = split_sentences(text)
    assert [s.text for s in sents] == ["Nodule approx. 2.5 cm seen by Dr. Smith, e.g. in the RUL.", "1. No effusion.",
                                       "2. Stable heart."]
    for s in sents:
        assert text[s.start:s.end] == s.text


def test_sentences_newline_items_lowercase_and_offset() -> None:
    assert [s.text for s in split_sentences("IMPRESSION:\n1. No effusion\n2. Mild cardiomegaly")] == [
        "IMPRESSION:", "1. No effusion", "2. Mild cardiomegaly"]
    low = split_sentences("no effusion. heart normal.", offset=10)
    assert [(s.text, s.start) for s in low] == [("no effusion.", 10), ("heart normal.", 23)]
    assert [s.text for s in split_sentences("Stable. 2 views were obtained.")] == ["Stable.", "2 views were obtained."]


def test_deid_tokens() -> None:
    assert deid_tokens("XXXX XXXX and ___ seen by [**Name**] <NAME>; XRAY ok") == ["XXXX", "XXXX", "___", "[**Name**]",
                                                                              "<NAME>"]
