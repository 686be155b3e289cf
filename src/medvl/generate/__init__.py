"""The generative half: decoding strategies, report writers and the baselines they are compared with.

* :mod:`.decoding` -- greedy, beam search (length penalty), sampling (temperature, top-p); model-free.
* :mod:`.captioner` -- :func:`load_captioner`: a checkpoint trained with the ``caption`` objective.
* :mod:`.reports` -- :func:`generate_reports` over a manifest split, the JSONL prediction file.
* :mod:`.baselines` -- nearest-neighbour retrieval, most frequent normal report, label templates.
"""

from __future__ import annotations

from medvl.generate.captioner import Captioner, load_captioner, resolve_checkpoint
from medvl.generate.decoding import METHODS, DecodeConfig, Generation, beam_search, decode, greedy, sample
from medvl.generate.reports import (
    GenerationError,
    ReportRun,
    generate_reports,
    single_image_manifest,
    study_key,
    write_predictions,
)

__all__ = [
    "METHODS", "Captioner", "DecodeConfig", "Generation", "GenerationError", "ReportRun", "beam_search",
    "decode", "generate_reports", "greedy", "load_captioner", "resolve_checkpoint", "sample",
    "single_image_manifest", "study_key", "write_predictions",
]
