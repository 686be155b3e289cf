"""Report metrics on real text: two trivial baselines scored on the IU X-ray validation reports.

Run (from the repository root)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/report_metrics_baselines.py [--out-dir runs/report-baselines]

Why: a score means little without the floor it has to beat. On the 382 IU X-ray validation studies
(R2Gen split) it writes a manifest and two prediction files in the JSONL format any system can
produce, then runs ``medvl eval reports`` on each and ``medvl eval compare`` on the pair:

* ``constant-normal``: every study gets the training split's most frequent normal report, built from
  its most frequent sentences (what a model that ignores the image converges to);
* ``random-train``: every study gets a random training report (seeded).

The manifest and predictions are written under ``--out-dir`` (outside the repository by default is
the user's choice; they hold the CC BY-NC-ND report text, so do not commit them).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medvl.data.manifest import write_manifest  # noqa: E402
from medvl.evaluate.compare import compare_files  # noqa: E402
from medvl.evaluate.reports import evaluate_reports, read_predictions  # noqa: E402
from medvl.evaluate.results import save_results  # noqa: E402
from medvl.text.sentences import split_sentences  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/real/iu_xray_reports/reports.json")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/medvl-report-baselines"))
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    data = json.loads(args.data.read_text())
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"image": r["image_path"][0], "text": r["report"], "split": "val", "patient_id": r["id"],
             "study_id": r["id"]} for r in data["val"]]
    manifest = write_manifest(rows, out / "iu_val.csv")
    train = [r["report"] for r in data["train"]]
    counts = Counter(s.text for t in train for s in split_sentences(t))
    normal = " ".join(s for s, _ in counts.most_common(6))
    rng = random.Random(0)
    preds = {
        "constant-normal": {r["study_id"]: normal for r in rows},
        "random-train": {r["study_id"]: rng.choice(train) for r in rows},
    }
    print(f"{len(rows)} IU X-ray val studies; constant report: {normal!r}")
    paths = {}
    for name, p in preds.items():
        jl = out / f"{name}.jsonl"
        jl.write_text("".join(json.dumps({"study_id": k, "report": v}) + "\n" for k, v in p.items()))
        t0 = time.process_time()
        (res,) = evaluate_reports(read_predictions(jl), manifest, model_name=name, dataset="iu_xray_val",
                                  n_boot=args.n_boot)
        secs = time.process_time() - t0
        paths[name] = save_results(res, out / f"{name}.json")
        print(f"\n{name} (scored with {args.n_boot} patient bootstrap replicates in {secs:.1f} s CPU)")
        for r in res.records:
            print(f"  {r.metric:20s} {r.value:.4f}  [{r.ci_low:.4f}, {r.ci_high:.4f}]")
    comp = compare_files(paths["constant-normal"], paths["random-train"], n_boot=args.n_boot)
    print("\nconstant-normal - random-train (paired bootstrap over patients)")
    for t in comp.tests:
        print(f"  {t.metric:20s} {t.delta:+.4f}  [{t.ci_low:+.4f}, {t.ci_high:+.4f}]  p={t.p_value:.4f}")


if __name__ == "__main__":
    main()
