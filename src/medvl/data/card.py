"""The dataset card (``card.yaml`` beside a manifest): what the labels mean in words.

Zero-shot prompts and label-to-caption conversion both read from here, so a dataset's
vocabulary lives in one file the user can edit, not in code.

Example::

    name: breastmnist
    modality: ultrasound
    task: binary            # binary | multiclass | multilabel
    templates: ["a breast ultrasound showing {label}", "{label}"]
    negative_templates: ["no {label}"]   # multilabel: the "absent" prompt of each class
    classes:
      - name: malignant
        descriptions: ["an irregular hypoechoic mass with spiculated margins"]
        synonyms: ["breast cancer", "carcinoma"]
        negatives: []       # optional explicit "absent" prompts (default: negative_templates)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medvl.errors import ManifestError

TASKS = ("binary", "multiclass", "multilabel")
DEFAULT_TEMPLATES = ["{label}", "an image showing {label}", "findings consistent with {label}"]
DEFAULT_NEGATIVE_TEMPLATES = ["no {label}", "no evidence of {label}"]


@dataclass
class ClassInfo:
    """One class: its canonical name plus the words people use for it."""

    name: str
    descriptions: list[str] = field(default_factory=list)
    synonyms: list[str] = field(default_factory=list)
    # Explicit "absent" phrases used verbatim as negative prompts (multilabel zero-shot). Needed
    # where "no {label}" reads wrong, e.g. "no finding" -> ["abnormal chest radiograph"].
    negatives: list[str] = field(default_factory=list)

    @property
    def phrases(self) -> list[str]:
        """Name, synonyms and descriptions, de-duplicated in order."""
        seen: dict[str, None] = {}
        for p in [self.name, *self.synonyms, *self.descriptions]:
            seen.setdefault(p, None)
        return list(seen)


@dataclass
class DatasetCard:
    name: str
    task: str
    classes: list[ClassInfo]
    modality: str = "unknown"
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    negative_templates: list[str] = field(default_factory=lambda: list(DEFAULT_NEGATIVE_TEMPLATES))
    description: str = ""
    license: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ManifestError(f"card {self.name!r}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not self.classes:
            raise ManifestError(f"card {self.name!r}: no classes")
        names = [c.name for c in self.classes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ManifestError(f"card {self.name!r}: duplicate class names {dup}")
        for t in [*self.templates, *self.negative_templates]:
            if "{label}" not in t:
                raise ManifestError(f"card {self.name!r}: template {t!r} lacks the '{{label}}' placeholder")

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def class_info(self, name: str) -> ClassInfo:
        for c in self.classes:
            if c.name == name:
                return c
        raise ManifestError(f"card {self.name!r}: unknown class {name!r}; classes: {', '.join(self.class_names)}")

    def prompts(self, class_name: str, negative: bool = False) -> list[str]:
        """Every template × every phrase of a class (the zero-shot prompt ensemble).

        ``negative=True`` gives the class's explicit ``negatives`` when the card lists any, else the
        negative templates applied to every phrase.
        """
        info = self.class_info(class_name)
        if negative and info.negatives:
            return list(info.negatives)
        templates = self.negative_templates if negative else self.templates
        return [t.format(label=p) for t in templates for p in info.phrases]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "modality": self.modality,
            "task": self.task,
            "description": self.description,
            "license": self.license,
            "templates": list(self.templates),
            "negative_templates": list(self.negative_templates),
            "classes": [
                {"name": c.name, "descriptions": list(c.descriptions), "synonyms": list(c.synonyms),
                 **({"negatives": list(c.negatives)} if c.negatives else {})}
                for c in self.classes
            ],
        }
        d.update(self.extra)
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))


def uses_prompt_pairs(task: str, n_classes: int) -> bool:
    """Multilabel, and binary cards naming only the positive class, score present-vs-absent prompt pairs.

    A rule of the card's task, read by zero-shot evaluation, the server and the ``describe``
    training objective alike (so it lives here, below all of them).
    """
    return task == "multilabel" or (task == "binary" and n_classes == 1)


def card_from_dict(data: dict[str, Any], source: str = "<dict>") -> DatasetCard:
    known = {"name", "modality", "task", "description", "license", "templates", "negative_templates", "classes"}
    try:
        classes = []
        for i, c in enumerate(data.get("classes") or []):
            if isinstance(c, str):
                classes.append(ClassInfo(name=c))
            elif isinstance(c, dict) and "name" in c:
                classes.append(
                    ClassInfo(
                        name=str(c["name"]),
                        descriptions=[str(x) for x in c.get("descriptions") or []],
                        synonyms=[str(x) for x in c.get("synonyms") or []],
                        negatives=[str(x) for x in c.get("negatives") or []],
                    )
                )
            else:
                raise ManifestError(f"{source}: class #{i} must be a name or a mapping with 'name'")
        return DatasetCard(
            name=str(data.get("name", Path(source).parent.name)),
            task=str(data.get("task", "")),
            classes=classes,
            modality=str(data.get("modality", "unknown")),
            templates=list(data.get("templates") or DEFAULT_TEMPLATES),
            negative_templates=list(data.get("negative_templates") or DEFAULT_NEGATIVE_TEMPLATES),
            description=str(data.get("description", "")),
            license=str(data.get("license", "")),
            extra={k: v for k, v in data.items() if k not in known},
        )
    except ManifestError as exc:
        if source not in str(exc):
            raise ManifestError(f"{source}: {exc}") from exc
        raise


def load_card(path: str | Path) -> DatasetCard:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"dataset card not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ManifestError(f"invalid YAML in dataset card {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"dataset card {path} must be a mapping")
    return card_from_dict(data, str(path))


def find_card(manifest_path: str | Path) -> Path | None:
    """The card that belongs to a manifest: ``card.yaml`` in the same folder, if present."""
    p = Path(manifest_path).parent / "card.yaml"
    return p if p.is_file() else None
