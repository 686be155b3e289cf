"""`medvl data label` / `medvl data reports` on manifests: label columns + card, bad rows kept with a
reason, path rebasing; and the promised pipeline: label -> train (multipositive) -> eval zeroshot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from medvl.cli import main
from medvl.data.card import load_card
from medvl.data.manifest import load_manifest, write_manifest
from medvl.errors import ManifestError
from medvl.text.annotate import check_report, label_manifest, normalise_markup, report_stats
from medvl.text.labeler import CHEXPERT_CLASSES


def run(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)


GOOD = ["FINDINGS: The heart is normal in size. No pleural effusion.\nIMPRESSION: Possible left pneumonia.",
        "Mild cardiomegaly with a small right effusion. Sternotomy wires &amp; a pacemaker.<br>XXXX stable."]


def _bad_manifest(path: Path) -> None:
    """A CSV whose rows hold the bad inputs of the issue, one of them with invalid UTF-8 bytes."""
    texts = [GOOD[0], "", "No hay derrame pleural ni neumotórax. Corazón de tamaño normal.",
             "<html><body><p>No effusion</p></body></html>", "No effusion. " * 8000, "BAD_BYTES", GOOD[1]]
    lines = ["image,text,labels,split,patient_id"]
    for i, t in enumerate(texts):
        lines.append(f'img/{i}.png,"{t}",old,train,p{i}')
    data = "\n".join(lines).encode("utf-8").replace(b"BAD_BYTES", b"Effusion \xe9\xff seen")
    path.write_bytes(data + b"\n")


def test_bad_rows_are_kept_blank_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in" / "m.csv"
    src.parent.mkdir()
    _bad_manifest(src)
    out = tmp_path / "out" / "labelled.csv"
    run(["data", "label", str(src), "--out", str(out), "--section", "impression"])
    printed = capsys.readouterr().out
    assert "5 of 7 rows not labelled" in printed and "1 rows had no impression section" in printed
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 7
    status = [r["label_status"] for r in rows]
    assert status[0] == "ok" and status[6] == "ok"
    assert status[1] == "empty report" and status[2].startswith("not English")
    assert "HTML" in status[3] and "characters (limit 20000)" in status[4] and "not valid UTF-8 (byte 0xe9" in status[5]
    for r in rows[1:6]:
        assert all(r[c] == "" for c in CHEXPERT_CLASSES)
    assert rows[0]["Pneumonia"] == "-1" and rows[0]["Pleural Effusion"] == ""  # impression only
    assert rows[6]["Cardiomegaly"] == "1" and rows[6]["Support Devices"] == "1" and rows[6]["No Finding"] == "0"
    assert rows[0]["labels_source"] == "old" and "labels" not in rows[0]
    assert rows[0]["image"] == "../in/img/0.png"  # paths still point at the images
    # the labelled manifest reads back in the column format with the card written beside it
    m = load_manifest(out)
    assert m.label_format == "columns" and m.classes == CHEXPERT_CLASSES
    assert m.samples[0].labels == {"Pneumonia": -1.0}
    assert load_card(out.parent / "card.yaml").task == "multilabel"


def test_explain_card_classes_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_manifest([{"image": "a.png", "text": t, "split": "train"} for t in GOOD], tmp_path / "m.csv")
    run(["data", "label", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o" / "l.jsonl"), "--explain"])
    out = capsys.readouterr().out
    assert "Pneumonia = -1" in out and "'Possible'" in out and "No Finding = 1" not in out.split("row 2")[0] + "x"
    rows = [json.loads(x) for x in (tmp_path / "o" / "l.jsonl").read_text().splitlines()]
    assert rows[1]["Cardiomegaly"] == 1
    with pytest.raises(ManifestError, match="input manifest"):
        label_manifest(tmp_path / "m.csv", tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="needs a dataset card"):
        label_manifest(tmp_path / "m.csv", tmp_path / "x.csv", classes="card")
    with pytest.raises(ManifestError, match="exists with classes"):  # a different card is already there
        (tmp_path / "o2").mkdir()
        (tmp_path / "o2" / "card.yaml").write_text("name: x\ntask: multilabel\nclasses: [a]\n")
        label_manifest(tmp_path / "m.csv", tmp_path / "o2" / "l.csv")


def test_check_report_and_markup_normalisation_keep_offsets() -> None:
    assert check_report("No effusion.") is None
    assert check_report("The heart is normal. <XXXX> stable <BR> &lt;1 cm") is None  # real IU quirks
    text, n = normalise_markup("size &lt;1 cm<br>next")
    assert n == 2 and text == "size <   1 cm\n   next" and len(text) == len("size &lt;1 cm<br>next")
    assert check_report("心脏大小正常，无胸腔积液。").startswith("not English")


def test_report_stats(tmp_path: Path) -> None:
    texts = ["FINDINGS: Clear lungs. IMPRESSION: No acute disease.", "Clear lungs. XXXX XXXX normal.",
             "Clear lungs. Heart ___ size.", ""]
    write_manifest([{"image": "a.png", "text": t} for t in texts], tmp_path / "m.csv")
    st = report_stats(tmp_path / "m.csv", top=2)
    assert st.n_rows == 4 and st.n_reports == 3 and st.headerless == 2 and st.problems == [(4, "empty report")]
    assert st.section_coverage["impression"] == pytest.approx(1 / 3) and st.section_coverage["findings"] == 1.0
    assert st.top_sentences[0] == ("clear lungs.", 3)
    assert st.deid == {"XXXX": 2, "___": 1} and st.reports_with_deid == 2
    assert st.lengths["sentences"]["max"] == 2


def test_reports_cli_on_real_iu_reports(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads((shared_data / "real" / "iu_xray_reports" / "reports.json").read_text())
    rows = [{"image": r["image_path"][0], "text": r["report"], "split": "val", "study_id": r["id"],
             "patient_id": r["id"]} for r in data["val"]]
    write_manifest(rows, tmp_path / "iu.csv")
    run(["data", "reports", str(tmp_path / "iu.csv"), "--top", "3"])
    out = capsys.readouterr().out
    assert "382 rows" in out and "XXXX" in out and "most frequent sentences" in out


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_labelled_phantoms_train_multipositive_and_evaluate_zeroshot(tmp_path: Path) -> None:
    """The issue's pipeline with no other step: phantom reports re-labelled by the labeler (card classes),
    then `medvl train` with the multipositive objective, then `medvl eval zeroshot` on the labelled file."""
    from medvl.data.synthetic import generate_phantoms

    src = generate_phantoms(tmp_path / "phantoms", n=40, size=32)
    out = tmp_path / "labelled" / "manifest.csv"
    summary = label_manifest(src, out)
    assert summary.classes == load_card(src.parent / "card.yaml").class_names and not summary.problems
    # the labels agree with the generator's ground truth: positives are 1 or -1 (hedged subtle findings)
    for r in csv.DictReader(out.open()):
        truth = set(r["labels_source"].split("|"))
        for c in summary.classes:
            assert (r[c] in ("1", "-1")) == (c in truth), (c, r["text"])
    run(["train", "-c", "configs/clip-tiny-synth.yaml", "--out", str(tmp_path / "run"), f"data.manifest={out}",
         "data.image_size=32", "train.max_steps=2", "train.batch_size=8", "train.ckpt_every=2", "train.log_every=1",
         "objectives=[{name: multipositive, weight: 1.0}]"])
    res = tmp_path / "zs.json"
    run(["eval", "zeroshot", "-m", str(tmp_path / "run" / "last"), "-d", str(out), "--split", "test", "--n-boot",
         "10", "--no-cache", "--out", str(res)])
    records = json.loads(res.read_text())
    auroc = next(r for r in records if r["metric"] == "auroc")
    assert auroc["label_task"] == "multilabel" and auroc["classes"] == summary.classes
    assert auroc["per_class"]["no finding"] is not None  # No Finding has negatives (0 when a finding is positive)
