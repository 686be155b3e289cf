"""Patient-level splits: every sample of a patient lands in the same split.

Random image-level splits leak patients (and their near-identical follow-up images) into test
sets; this helper assigns whole patients, stratified by each patient's most frequent positive
label so that rare classes still reach every split.
"""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from pathlib import Path

from medvl.data.manifest import Manifest, load_manifest, sample_to_row, write_manifest
from medvl.errors import ManifestError


def parse_fractions(text: str, names: tuple[str, ...] = ("train", "val", "test")) -> dict[str, float]:
    """``"0.7,0.1,0.2"`` -> {"train": .7, "val": .1, "test": .2}; must be non-negative and sum to 1."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError as exc:
        raise ManifestError(f"fractions {text!r} must be comma-separated numbers") from exc
    if len(values) != len(names):
        raise ManifestError(f"fractions {text!r}: need {len(names)} values for {', '.join(names)}")
    if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ManifestError(f"fractions {text!r} must be non-negative and sum to 1")
    return dict(zip(names, values, strict=True))


def assign_patient_splits(m: Manifest, fractions: dict[str, float], seed: int = 0) -> dict[str, str]:
    """Map each group (patient id, else the row itself) to a split name."""
    groups: dict[str, list[str]] = defaultdict(list)
    for s in m.samples:
        groups[s.group_id].extend(s.positive_labels or ["<none>"])
    strata: dict[str, list[str]] = defaultdict(list)
    for gid, labels in sorted(groups.items()):
        strata[Counter(labels).most_common(1)[0][0]].append(gid)
    rng = random.Random(seed)
    names = list(fractions)
    assignment: dict[str, str] = {}
    for key in sorted(strata):
        members = strata[key]
        rng.shuffle(members)
        n = len(members)
        # Largest-remainder allocation so the counts per stratum sum to n exactly.
        raw = [fractions[k] * n for k in names]
        counts = [int(r) for r in raw]
        for i in sorted(range(len(names)), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
            counts[i] += 1
        start = 0
        for name, c in zip(names, counts, strict=True):
            for gid in members[start:start + c]:
                assignment[gid] = name
            start += c
    return assignment


def _rebase(path: Path, new_root: Path) -> str:
    return os.path.relpath(path.resolve(), new_root)


def split_manifest(path: str | Path, out: str | Path, fractions: dict[str, float], seed: int = 0) -> dict[str, int]:
    """Write a copy of a manifest with a patient-level ``split`` column; returns rows per split."""
    m = load_manifest(path)
    out = Path(out)
    if out.resolve() == Path(path).resolve():
        raise ManifestError(f"refusing to overwrite the input manifest {path}; choose another --out")
    assignment = assign_patient_splits(m, fractions, seed)
    new_root = out.resolve().parent
    moved = new_root != m.root.resolve()
    rows = []
    for s in m.samples:
        s.split = assignment[s.group_id]
        if moved:  # keep relative paths valid from the new manifest's folder
            s.image = [_rebase(m.resolve(p), new_root) for p in s.image]
            s.mask = "|".join(_rebase(m.resolve(p), new_root) for p in s.mask.split("|") if p)
        rows.append(sample_to_row(s, m.label_format, m.classes))
    write_manifest(rows, out)
    if moved and m.card is not None and not (new_root / "card.yaml").exists():
        m.card.save(new_root / "card.yaml")
    return dict(sorted(Counter(s.split for s in m.samples).items()))
