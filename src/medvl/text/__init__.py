"""Radiology report text: sections, sentences, a CheXpert-style labeler and report metrics.

Pure Python (re + the standard library; numpy only where arrays are returned), offline and
deterministic, so that labels and scores are reproducible everywhere medvl runs. Sub-modules:

* :mod:`medvl.text.sections` -- split a report into indication / comparison / technique /
  findings / impression / recommendation with character offsets;
* :mod:`medvl.text.sentences` -- sentence splitting that survives "2.5 cm", "Dr." and numbered lists;
* :mod:`medvl.text.labeler` -- mention -> negation -> uncertainty -> aggregation labels (1/0/-1/blank)
  for the 14 CheXpert observations and any dataset card's classes;
* :mod:`medvl.text.metrics` -- BLEU-1..4, ROUGE-L, CIDEr-D (pycocoevalcap's definitions) and
  clinical efficacy (labeler-based precision/recall/F1).
"""
