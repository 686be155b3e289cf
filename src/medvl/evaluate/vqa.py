"""Visual question answering: load a VQA manifest, answer it (CLIP-style ranking, a caption
decoder, or an external model's answer file) and score it with patient-level CIs.

Manifest form (CSV/JSONL/Parquet, like every medvl manifest): ``image, question, answer,
answer_type`` (``closed`` | ``open``) plus optional ``id``, ``question_type``, ``candidates``
(``|``-separated allowed answers of a closed question), ``split``, ``patient_id``, ``study_id``,
``pair_id`` (MediConfusion-style pairs; see :mod:`medvl.data.vqa_synth`).

Scoring (answers are lower-cased, punctuation and articles removed, before comparison):

* closed questions: *accuracy*. A free-text answer counts as the candidate it equals, or the one
  candidate whose words it contains (``"Yes, there is."`` -> ``yes``); otherwise it is wrong.
* open questions: *exact match*, *token F1* and *recall* (share of the reference's tokens the
  answer contains; the measure LLaVA-Med reports for open questions).
* *pair accuracy*: share of pairs whose every question is answered right.

CIs resample patients (the bootstrap of :mod:`medvl.evaluate.stats`). Per-question arrays
``correct``, ``token_f1`` and ``recall`` (closed questions: 1/0 in all three) are stored with the
result, so ``medvl eval compare A.json B.json`` runs a paired bootstrap between any two systems --
a medvl model and an external MedGemma/LLaVA-Med answer file alike.

Answering with a medvl dual encoder ranks each question's candidates by the cosine between the
image and a prompt: ``"<question> <candidate>"`` (default), or the answer as a report-like statement
("Is there a nodule?" + "no" -> "no nodule", ``prompt="statement"``, :func:`statement_prompt`); open
questions rank the answers that question has anywhere in the manifest (its answer vocabulary). A
caption decoder answers generatively: the question is its prompt and the continuation its answer
(only meaningful for a decoder trained on question-answer text).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl.data.manifest import Manifest, Sample, load_manifest
from medvl.errors import ConfigError, ManifestError, MedvlError

ANSWER_TYPES = ("closed", "open")
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


@dataclass
class VQAItem:
    """One question about one image (``image``: path(s) relative to the manifest)."""

    id: str
    image: list[str]
    question: str
    answer: str
    answer_type: str
    question_type: str = ""
    candidates: list[str] = field(default_factory=list)
    patient_id: str = ""
    study_id: str = ""
    pair_id: str = ""
    split: str = ""
    row: int = 0


# ------------------------------------------------------------------------------ loading
def load_vqa(path: str | Path, split: str | None = None) -> tuple[Manifest, list[VQAItem]]:
    """The VQA rows of ``split`` (None: all); one clear error per bad row (file + row)."""
    manifest = load_manifest(path)
    items: list[VQAItem] = []
    seen: set[str] = set()
    for s in manifest.samples:
        where = f"{manifest.path}, row {s.row}"
        ex = s.extra
        if "question" not in ex:
            raise ManifestError(f"{manifest.path}: no 'question' column; a VQA manifest needs image, question, "
                                f"answer, answer_type")
        question, answer = str(ex.get("question") or "").strip(), str(ex.get("answer") or "").strip()
        atype = str(ex.get("answer_type") or "").strip().lower()
        if not question:
            raise ManifestError(f"{where}: empty question")
        if not answer:
            raise ManifestError(f"{where}: question {question!r} has no answer")
        if atype not in ANSWER_TYPES:
            raise ManifestError(f"{where}: answer_type must be closed or open, got {atype or '(empty)'!r}")
        candidates = [c.strip() for c in str(ex.get("candidates") or "").split("|") if c.strip()]
        if atype == "closed" and candidates and normalize_answer(answer) not in map(normalize_answer, candidates):
            raise ManifestError(f"{where}: answer {answer!r} is not one of its candidates {candidates}")
        qid = str(ex.get("id") or "").strip() or f"row{s.row}"
        if qid in seen:
            raise ManifestError(f"{where}: duplicate question id {qid!r}")
        seen.add(qid)
        if split is not None and s.split != split:
            continue
        items.append(VQAItem(qid, list(s.image), question, answer, atype, str(ex.get("question_type") or ""),
                             candidates, s.patient_id, s.study_id, str(ex.get("pair_id") or ""), s.split, s.row))
    if not items:
        raise ManifestError(f"{manifest.path}: no questions in split {split!r}; splits present: "
                            f"{', '.join(manifest.splits) or '(none)'}")
    return manifest, items


# ------------------------------------------------------------------------------ answer matching
def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse spaces (SQuAD's normalisation)."""
    words = _PUNCT.sub(" ", str(text).lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def token_f1(pred: str, ref: str) -> float:
    p, r = answer_tokens(pred), answer_tokens(ref)
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r or not common:
        return float(p == r)
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def token_recall(pred: str, ref: str) -> float:
    p, r = answer_tokens(pred), answer_tokens(ref)
    if not r:
        return float(not p)
    return sum((Counter(p) & Counter(r)).values()) / len(r)


def match_closed(pred: str, candidates: list[str]) -> str | None:
    """The candidate ``pred`` means: equal after normalisation, else the only one whose words it contains."""
    norm = normalize_answer(pred)
    cands = {normalize_answer(c): c for c in candidates}
    if norm in cands:
        return cands[norm]
    words = set(norm.split())
    hits = [c for n, c in cands.items() if n and set(n.split()) <= words]
    return hits[0] if len(hits) == 1 else None


def candidates_of(item: VQAItem, vocabulary: dict[str, list[str]]) -> list[str]:
    return item.candidates or vocabulary.get(item.question, [item.answer])


def answer_vocabulary(items: list[VQAItem]) -> dict[str, list[str]]:
    """Every distinct answer each question text has, in first-seen order (open-question candidates)."""
    vocab: dict[str, list[str]] = defaultdict(list)
    for it in items:
        if it.answer not in vocab[it.question]:
            vocab[it.question].append(it.answer)
    return dict(vocab)


def score_answers(items: list[VQAItem], answers: dict[str, str]) -> dict[str, np.ndarray]:
    """Per-question ``correct``, ``token_f1``, ``recall`` (closed questions: correctness in all three)."""
    correct, f1, recall = [], [], []
    vocab = answer_vocabulary(items)
    for it in items:
        pred = answers[it.id]
        if it.answer_type == "closed":
            chosen = match_closed(pred, candidates_of(it, vocab))
            ok = float(chosen is not None and normalize_answer(chosen) == normalize_answer(it.answer))
            correct.append(ok)
            f1.append(ok)
            recall.append(ok)
        else:
            correct.append(float(normalize_answer(pred) == normalize_answer(it.answer)))
            f1.append(token_f1(pred, it.answer))
            recall.append(token_recall(pred, it.answer))
    return {"correct": np.array(correct), "token_f1": np.array(f1), "recall": np.array(recall)}


# ------------------------------------------------------------------------------ scoring
def evaluate_vqa(items: list[VQAItem], answers: dict[str, str], *, model_name: str = "", dataset: str = "",
                 split: str = "", n_boot: int = 1000, seed: int = 0, config: dict[str, Any] | None = None) -> Any:
    """Metric records with patient-level CIs plus per-question predictions (an :class:`EvalResult`)."""
    from medvl.evaluate.results import EvalResult, MetricRecord, Predictions
    from medvl.evaluate.stats import bootstrap_statistic

    missing = [it.id for it in items if it.id not in answers]
    if missing:
        raise MedvlError(f"{len(missing)} of {len(items)} questions have no answer (e.g. {', '.join(missing[:3])})")
    per = score_answers(items, answers)
    groups = np.array([it.patient_id or f"q:{it.id}" for it in items])
    records: list[MetricRecord] = []

    def add(metric: str, values: np.ndarray, grp: np.ndarray) -> None:
        if values.size == 0:
            return
        ci = bootstrap_statistic(values, groups=grp, n_boot=n_boot, seed=seed, name=metric)
        records.append(MetricRecord(model_name, "vqa", dataset, split, metric, ci.value, ci.low, ci.high,
                                    ci.n, ci.n_groups, dict(config or {})))

    closed = np.array([it.answer_type == "closed" for it in items])
    add("accuracy_closed", per["correct"][closed], groups[closed])
    add("exact_match_open", per["correct"][~closed], groups[~closed])
    add("token_f1_open", per["token_f1"][~closed], groups[~closed])
    add("recall_open", per["recall"][~closed], groups[~closed])
    add("accuracy_all", per["correct"], groups)
    for qtype in sorted({it.question_type for it in items if it.question_type}):
        mask = np.array([it.question_type == qtype for it in items])
        add(f"accuracy[{qtype}]", per["correct"][mask], groups[mask])
    pairs: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        if it.pair_id:
            pairs[it.pair_id].append(i)
    complete = {p: idx for p, idx in pairs.items() if len(idx) >= 2}
    if complete:
        values = np.array([float(all(per["correct"][i] for i in idx)) for idx in complete.values()])
        add("pair_accuracy", values, np.array([groups[idx[0]] for idx in complete.values()]))
    preds = Predictions(ids=np.array([it.id for it in items]), scores=np.zeros((len(items), 0)),
                        labels=np.zeros((len(items), 0)), label_task="", classes=[],
                        patient_ids=np.array([it.patient_id for it in items]),
                        rows=np.array([it.row for it in items]),
                        meta={"model": model_name, "task": "vqa", "dataset": dataset, "split": split},
                        extra=per)
    return EvalResult(records, preds)


# ------------------------------------------------------------------------------ answer sources
def read_answer_file(path: str | Path, items: list[VQAItem]) -> dict[str, str]:
    """External answers (JSONL ``{"id" | "study_id", "question", "answer"}``) matched to ``items``.

    A line with ``id`` matches that question; otherwise ``(study_id, question)`` does. Unknown
    ids, duplicates, lines without an answer and questions left unanswered are errors naming
    the file and line (or the first missing ids).
    """
    path = Path(path)
    if not path.is_file():
        raise MedvlError(f"answer file not found: {path}")
    by_id = {it.id: it for it in items}
    by_pair = {(it.study_id, normalize_answer(it.question)): it for it in items if it.study_id}
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MedvlError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or "answer" not in row or row["answer"] is None:
            raise MedvlError(f"{where}: no 'answer'")
        if row.get("id") not in (None, ""):
            item = by_id.get(str(row["id"]))
            if item is None:
                raise MedvlError(f"{where}: unknown question id {row['id']!r} (not in the evaluated split)")
        elif row.get("study_id") not in (None, "") and row.get("question"):
            item = by_pair.get((str(row["study_id"]), normalize_answer(str(row["question"]))))
            if item is None:
                raise MedvlError(f"{where}: no question {row['question']!r} for study {row['study_id']!r} in the "
                                 f"evaluated split")
        else:
            raise MedvlError(f"{where}: needs 'id', or 'study_id' and 'question'")
        if item.id in out:
            raise MedvlError(f"{where}: question {item.id!r} answered twice")
        out[item.id] = str(row["answer"])
    missing = [it.id for it in items if it.id not in out]
    if missing:
        raise MedvlError(f"{path}: {len(missing)} of {len(items)} questions unanswered (e.g. "
                         f"{', '.join(missing[:3])}); answer every question of the split")
    return out


def _unique_images(manifest: Manifest, items: list[VQAItem]) -> tuple[list[Sample], dict[str, int]]:
    first: dict[str, Sample] = {}
    by_row = {s.row: s for s in manifest.samples}
    for it in items:
        key = "|".join(it.image)
        if key not in first:
            s = by_row[it.row]
            first[key] = Sample(row=s.row, image=list(s.image), split="_q", patient_id=s.patient_id)
    samples = list(first.values())
    return samples, {"|".join(s.image): i for i, s in enumerate(samples)}


_STATEMENTS = (  # question pattern -> statement for an answer; {x}: the captured finding, {a}: the answer
    (re.compile(r"^is there (?:an? |any )?(.+?)\??$", re.I), {"yes": "{x}", "no": "no {x}"}),
    (re.compile(r"^on which side is the (.+?)\??$", re.I), "{a} {x}"),
    (re.compile(r"^how large is the (.+?)\??$", re.I), "{a} {x}"),
    (re.compile(r"^compared with the prior study, is the (.+?) new, unchanged or resolved\??$", re.I), "{a} {x}"),
)


def statement_prompt(question: str, answer: str) -> str:
    """The answer as a report-like statement ("Is there a nodule?" + "no" -> "no nodule"), which a model
    trained on reports ranks better than "question answer"; unknown question forms fall back to that."""
    q, a = question.strip(), answer.strip()
    for pattern, form in _STATEMENTS:
        m = pattern.match(q)
        if m is None:
            continue
        if isinstance(form, dict):
            if a.lower() in form:
                return form[a.lower()].format(x=m.group(1))
            continue
        return form.format(x=m.group(1), a=a)
    return f"{q} {a}"


PROMPT_STYLES = ("statement", "qa")


def rank_answers(encoder: Any, manifest: Manifest, items: list[VQAItem], batch_size: int = 64,
                 prompt: str = "qa") -> dict[str, str]:
    """CLIP-style answers: the candidate whose prompt is closest to the image.

    ``prompt="qa"`` (default) uses ``"<question> <candidate>"``; ``"statement"`` turns each (question,
    candidate) into a report-like statement (:func:`statement_prompt`). On phantoms neither is better
    overall (statements help laterality and change, hurt presence: CLIP-style negation), see BENCHMARKS.
    """
    if prompt not in PROMPT_STYLES:
        raise ConfigError(f"prompt style must be one of {', '.join(PROMPT_STYLES)}, got {prompt!r}")

    def text(question: str, candidate: str) -> str:
        return statement_prompt(question, candidate) if prompt == "statement" else f"{question} {candidate}"

    from medvl.evaluate.features import extract_features

    if not getattr(encoder, "has_text", False):
        raise ConfigError(f"{getattr(encoder, 'name', 'this encoder')} has no text tower: it cannot rank answers")
    samples, index = _unique_images(manifest, items)
    sub = Manifest(manifest.path, samples, manifest.classes, manifest.card, manifest.label_format)
    feats = extract_features(encoder, sub, split="_q", batch_size=batch_size, cache_dir=None)
    pos = {int(r): i for i, r in enumerate(feats.rows)}
    image_x = feats.x[[pos[s.row] for s in samples]]
    vocab = answer_vocabulary(items)
    prompts: dict[str, int] = {}
    for it in items:
        for c in candidates_of(it, vocab):
            prompts.setdefault(text(it.question, c), len(prompts))
    text_x = encoder.encode_text(list(prompts), batch_size=256).float().numpy()
    out = {}
    for it in items:
        cands = candidates_of(it, vocab)
        sims = text_x[[prompts[text(it.question, c)] for c in cands]] @ image_x[index["|".join(it.image)]]
        out[it.id] = cands[int(np.argmax(sims))]
    return out


def answer_with_captioner(captioner: Any, manifest: Manifest, items: list[VQAItem], cfg: Any = None,
                          batch_size: int = 16) -> dict[str, str]:
    """Generative answers: the caption decoder continues the question (greedy unless ``cfg`` says otherwise)."""
    import torch

    from medvl.generate.decoding import DecodeConfig, decode
    from medvl.generate.reports import image_batches
    from medvl.models.caption_decoder import image_memory

    cfg = cfg or DecodeConfig(max_new_tokens=8)
    samples, index = _unique_images(manifest, items)
    sub = Manifest(manifest.path, samples, manifest.classes, manifest.card, manifest.label_format)
    memories = []
    with torch.no_grad():
        for _, images in image_batches(sub, samples, captioner.image_size, captioner.in_chans, batch_size):
            mem = image_memory(captioner.model, images.to(captioner.device))
            memories.append(captioner.decoder.project_memory(mem))
    memory = torch.cat(memories)
    dec, tok = captioner.decoder, captioner.model.tokenizer
    by_question: dict[str, list[VQAItem]] = defaultdict(list)
    for it in items:
        by_question[it.question].append(it)
    out: dict[str, str] = {}
    for question, group in by_question.items():
        enc = tok([question])
        ids = enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist()
        prefix = ids[:-1] if ids and ids[-1] == dec.cfg.eos_id else ids  # keep [CLS] question, drop [SEP]
        room = dec.cfg.context_length - len(prefix)
        if room < 1:
            raise ConfigError(f"question {question!r} fills the decoder's context ({dec.cfg.context_length} tokens)")
        step_cfg = DecodeConfig(**{**vars(cfg), "max_new_tokens": min(cfg.max_new_tokens, room)})
        rows = torch.tensor([index["|".join(it.image)] for it in group], device=captioner.device)
        pre = torch.tensor(prefix, device=captioner.device)

        def fn(gen: torch.Tensor, r: torch.Tensor, pre: torch.Tensor = pre, rows: torch.Tensor = rows) -> torch.Tensor:
            full = torch.cat([pre.expand(gen.shape[0], -1), gen[:, 1:]], dim=1)
            with torch.no_grad():
                return dec(full, memory[rows[r]], projected=True)[:, -1]

        for it, g in zip(group, decode(fn, len(group), int(pre[0]), dec.cfg.eos_id, step_cfg, captioner.device),
                         strict=True):
            out[it.id] = captioner.decode_tokens(g.tokens)
    return out


def answer_with_llava(model: Any, manifest: Manifest, items: list[VQAItem], cfg: Any = None,
                      batch_size: int = 16) -> dict[str, str]:
    """Generative answers of a LLaVA-style adapter: the question is the instruction."""
    from medvl.generate.decoding import DecodeConfig
    from medvl.generate.reports import image_batches

    cfg = cfg or DecodeConfig(max_new_tokens=8)
    by_row = {s.row: s for s in manifest.samples}
    out: dict[str, str] = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        samples = [by_row[it.row] for it in chunk]
        for _, images in image_batches(manifest, samples, model.image_size, model.in_chans, len(chunk)):
            gens = model.generate(images, cfg, instructions=[it.question for it in chunk])
            out.update({it.id: model.decode_tokens(g.tokens) for it, g in zip(chunk, gens, strict=True)})
    return out


def run_vqa_eval(data: str | Path, *, model: str | None = None, answers: str | Path | None = None,
                 split: str | None = "test", mode: str = "auto", n_boot: int = 1000, seed: int = 0,
                 device: str = "cpu", answer_type: str | None = None, prompt: str = "qa") -> Any:
    """``medvl eval vqa``: answer with ``model`` (``mode`` rank | generate | auto) or read ``answers``, then score."""
    if (model is None) == (answers is None):
        raise ConfigError("give exactly one of --model (a medvl checkpoint or encoder) or --answers (a JSONL file)")
    manifest, items = load_vqa(data, split)
    if answer_type is not None:
        if answer_type not in ANSWER_TYPES:
            raise ConfigError(f"--answer-type must be closed or open, got {answer_type!r}")
        items = [it for it in items if it.answer_type == answer_type]
        if not items:
            raise ManifestError(f"{manifest.path}: no {answer_type} questions in split {split!r}")
    config: dict[str, Any] = {"mode": mode, "answer_type": answer_type or "all"}
    if answers is not None:
        got, name, config["mode"] = read_answer_file(answers, items), Path(answers).stem, "external"
    else:
        assert model is not None
        name = str(model)
        if mode not in ("auto", "rank", "generate"):
            raise ConfigError(f"--mode must be auto, rank or generate, got {mode!r}")
        from medvl.models.llava import is_llava_dir, load_llava

        if is_llava_dir(model):  # an adapter only answers generatively
            got, config["mode"] = answer_with_llava(load_llava(model, device=device), manifest, items), "generate"
        elif mode == "generate":
            from medvl.generate.captioner import load_captioner

            got = answer_with_captioner(load_captioner(model, device=device), manifest, items)
        else:
            from medvl.generate.captioner import resolve_checkpoint
            from medvl.models.encoder import load_encoder

            spec = str(resolve_checkpoint(model)) if Path(model).is_dir() else model  # run dir: newest checkpoint
            got = rank_answers(load_encoder(spec, device=device), manifest, items, prompt=prompt)
            config["mode"], config["prompt"] = "rank", prompt
    return evaluate_vqa(items, got, model_name=name, dataset=manifest.path.parent.name, split=split or "all",
                        n_boot=n_boot, seed=seed, config=config)
