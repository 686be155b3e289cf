"""Tests of medvl.data.deid and ``medvl data deid`` on DICOM files written here and real samples."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from typer.testing import CliRunner

from medvl.cli.app import app
from medvl.data.deid import (
    DESCRIPTOR_TAGS,
    EMPTY_TAGS,
    HASH_TAGS,
    PSEUDONYM_TAGS,
    REMOVE_TAGS,
    Pseudonymizer,
    _shift_da,
    _shift_dt,
    deidentify,
)
from medvl.errors import ConfigError

#: DICOM PS3.15 Annex E, Table E.1-1: the Basic Application Level Confidentiality Profile action for a
#: representative set of attributes, written here from the standard (not taken from the module under
#: test). X remove; Z empty or a dummy value; D a dummy value; X/D, X/Z, X/Z/D any of those; U a new UID.
BASIC_PROFILE = {
    "PatientName": ("0010,0010", "Z"),
    "PatientID": ("0010,0020", "Z"),
    "PatientBirthDate": ("0010,0030", "Z"),
    "PatientSex": ("0010,0040", "Z"),
    "PatientAge": ("0010,1010", "X"),
    "OtherPatientIDs": ("0010,1000", "X"),
    "PatientAddress": ("0010,1040", "X"),
    "PatientTelephoneNumbers": ("0010,2154", "X"),
    "AdditionalPatientHistory": ("0010,21B0", "X"),
    "AccessionNumber": ("0008,0050", "Z"),
    "StudyID": ("0020,0010", "Z"),
    "StudyDate": ("0008,0020", "Z"),
    "SeriesDate": ("0008,0021", "X/D"),
    "AcquisitionDateTime": ("0008,002A", "X/D"),
    "InstitutionName": ("0008,0080", "X/Z/D"),
    "ReferringPhysicianName": ("0008,0090", "Z"),
    "StationName": ("0008,1010", "X/Z/D"),
    "StudyDescription": ("0008,1030", "X"),
    "SeriesDescription": ("0008,103E", "X"),
    "PerformingPhysicianName": ("0008,1050", "X"),
    "OperatorsName": ("0008,1070", "X/Z/D"),
    "ProtocolName": ("0018,1030", "X/D"),
    "ImageComments": ("0020,4000", "X"),
    "StudyInstanceUID": ("0020,000D", "U"),
    "SeriesInstanceUID": ("0020,000E", "U"),
    "SOPInstanceUID": ("0008,0018", "U"),
    "FrameOfReferenceUID": ("0020,0052", "U"),
}
#: The profile options medvl declares (PS3.15 E.3): what each changes for the attributes above.
RETAIN_PATIENT_CHARACTERISTICS = {"PatientSex", "PatientAge"}  # K: kept
MODIFIED_DATES = {"PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDateTime"}  # C: shifted, kept present
#: Descriptors the Basic Profile removes and ``--keep-descriptors`` keeps verbatim.
PROFILE_DESCRIPTORS = {"StudyDescription", "SeriesDescription", "ProtocolName"}


def assert_follows_basic_profile(original, cleaned, keep_descriptors: bool = False) -> None:
    """Every attribute of :data:`BASIC_PROFILE` present in ``original`` got an action the profile (with the
    declared options) allows in ``cleaned``."""
    for keyword, (tag, action) in BASIC_PROFILE.items():
        if keyword not in original:
            continue
        before = original[keyword].value
        after = cleaned[keyword].value if keyword in cleaned else None
        where = f"{keyword} ({tag}, profile {action})"
        if keyword in RETAIN_PATIENT_CHARACTERISTICS or (keep_descriptors and keyword in PROFILE_DESCRIPTORS):
            assert after == before, where
        elif keyword in MODIFIED_DATES:
            assert after and str(after) != str(before), where
        elif action == "X":
            assert keyword not in cleaned, where
        elif action == "U":
            assert after and str(after) != str(before) and len(str(after)) <= 64, where
        elif action == "D":
            assert after and str(after) != str(before), where
        else:  # Z, X/D, X/Z, X/Z/D: removed, emptied or a dummy value -- never the original
            assert after is None or str(after) != str(before), where

SALT = "test-salt-1"
PHI = {  # PHI written into every synthetic file (plus the per-patient name/ID)
    "PatientAddress": "1 Main Street, Springfield",
    "InstitutionName": "Springfield General Hospital",
    "ReferringPhysicianName": "Hibbert^Julius",
    "OperatorsName": "Smithers^Waylon",
    "PerformingPhysicianName": "Riviera^Nick",
    "ImageComments": "patient anxious, called wife Marge",
    "AdditionalPatientHistory": "fell from the roof of Moe's",
    "StationName": "CT-SPRINGFIELD",
    "PatientTelephoneNumbers": "555-0100",
}
PATIENTS = {"A": ("Simpson^Homer", "PID-0001", "19560512"), "B": ("Flanders^Ned", "PID-0002", "19600101")}


def _uid(n: str) -> str:
    return f"1.2.999.{n}"


def write_case(path: Path, patient: str, *, study: str, sop: str, study_date: str, ref_sop: str | None = None,
               pixels: np.ndarray | None = None) -> Path:
    """A CT file full of PHI: identity, dates, free text, private tags, a nested PN and reference."""
    name, pid, birth = PATIENTS[patient]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, _uid(sop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = "SPRINGFIELD_PACS"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, _uid(sop)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(study), _uid(study + ".1")
    ds.FrameOfReferenceUID = _uid(study + ".9")
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, pid, birth
    ds.OtherPatientIDs = pid + "-OLD"
    ds.AccessionNumber, ds.StudyID = f"ACC{sop}", f"S{sop}"
    ds.PatientSex, ds.PatientAge = "M", "064Y"
    ds.StudyDate, ds.SeriesDate, ds.StudyTime = study_date, study_date, "101500"
    ds.AcquisitionDateTime = study_date + "101733.123456"
    ds.StudyDescription, ds.Modality = "CT CHEST W/O CONTRAST", "CT"
    ds.SeriesDescription = "AX 5MM - follow-up for Simpson"  # free text that names the patient
    ds.ProtocolName = "CHEST ROUTINE (Dr Hibbert)"
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    observer = Dataset()
    observer.PersonName = "Hibbert^Julius"
    ds.ContentSequence = Sequence([observer])  # a PN inside a sequence
    if ref_sop:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, _uid(ref_sop)
        ds.ReferencedImageSequence = Sequence([ref])
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x10, "LO", name)  # vendors hide names in private tags
    pixels = pixels if pixels is not None else np.arange(16, dtype=np.uint16).reshape(4, 4)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def case_folder(tmp_path) -> Path:
    src = tmp_path / "in"
    write_case(src / "homer" / "a1.dcm", "A", study="10", sop="100", study_date="20200110")
    write_case(src / "homer" / "a2.dcm", "A", study="10", sop="101", study_date="20200301", ref_sop="100",
               pixels=np.full((4, 4), 7, np.uint16))
    write_case(src / "ned" / "b1.dcm", "B", study="20", sop="200", study_date="20200110")
    (src / "notes.txt").write_text("Homer Simpson follow-up list")
    good = (src / "homer" / "a1.dcm").read_bytes()
    (src / "broken.dcm").write_bytes(good[: len(good) - 7])  # truncated inside the pixel data
    return src


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _days(a: str, b: str) -> int:
    parse = lambda s: date(int(s[:4]), int(s[4:6]), int(s[6:8]))  # noqa: E731
    return (parse(b) - parse(a)).days


def test_deid_folder_end_to_end(case_folder, tmp_path):
    before = _hashes(case_folder)
    out = tmp_path / "out"
    result = deidentify(case_folder, out, salt=SALT)
    assert _hashes(case_folder) == before  # inputs untouched
    assert (result.n_ok, result.n_failed, result.n_patients) == (3, 2, 2)
    reasons = {f.input: f.reason for f in result.files if f.status == "failed"}
    assert "not a DICOM" in reasons["notes.txt"] and "truncated" in reasons["broken.dcm"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.dcm")) == [
        "homer/a1.dcm", "homer/a2.dcm", "ned/b1.dcm"]
    assert not (out / "notes.txt").exists()

    a1, a2, b1 = (pydicom.dcmread(out / p) for p in ("homer/a1.dcm", "homer/a2.dcm", "ned/b1.dcm"))
    o1, o2 = (pydicom.dcmread(case_folder / p) for p in ("homer/a1.dcm", "homer/a2.dcm"))
    originals = {"homer/a1.dcm": o1, "homer/a2.dcm": o2, "ned/b1.dcm": pydicom.dcmread(case_folder / "ned/b1.dcm")}
    for (name, original), ds in zip(originals.items(), (a1, a2, b1), strict=True):
        assert_follows_basic_profile(original, ds)
        for keyword in PHI:
            assert keyword not in ds or ds[keyword].value != original[keyword].value, (name, keyword)
        assert "SourceApplicationEntityTitle" not in ds.file_meta
        assert ds.ReferringPhysicianName == "" and ds.ContentSequence[0].PersonName == ""
        assert not any(elem.tag.is_private for elem in ds.iterall())
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
        assert ds.PatientName == ds.PatientID and str(ds.PatientID).startswith("ANON-")
        assert "OtherPatientIDs" not in ds and ds.AccessionNumber not in ("", o1.AccessionNumber)
        assert ds.SOPClassUID == CTImageStorage  # class UIDs kept
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert "StudyDescription" not in ds and "SeriesDescription" not in ds and ds.PatientSex == "M"
        assert ds.StudyTime == "101500"  # times kept
    # same patient: same pseudonym, same date shift, intervals kept; other patient differs
    assert a1.PatientID == a2.PatientID != b1.PatientID
    shift = _days(o1.StudyDate, a1.StudyDate)
    assert shift < 0 and _days(o2.StudyDate, a2.StudyDate) == shift
    assert _days(o1.PatientBirthDate, a1.PatientBirthDate) == shift
    assert _days(a1.StudyDate, a2.StudyDate) == _days(o1.StudyDate, o2.StudyDate)
    assert a1.AcquisitionDateTime[8:] == o1.AcquisitionDateTime[8:]
    assert _days(a1.AcquisitionDateTime[:8], o1.AcquisitionDateTime[:8]) == -shift
    assert _days("20200110", b1.StudyDate) != shift  # (deterministic for this salt)
    # UIDs replaced, consistent across files, references follow
    assert a1.StudyInstanceUID == a2.StudyInstanceUID != o1.StudyInstanceUID
    assert a1.SOPInstanceUID != o1.SOPInstanceUID
    assert a2.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a1.SOPInstanceUID
    assert a2.ReferencedImageSequence[0].ReferencedSOPClassUID == CTImageStorage
    # pixels identical
    assert a1.PixelData == o1.PixelData
    np.testing.assert_array_equal(a2.pixel_array, o2.pixel_array)


def test_report_lists_actions_but_never_phi(case_folder, tmp_path):
    out = tmp_path / "out"
    deidentify(case_folder, out, salt=SALT)
    text = (out / "deid_report.json").read_text()
    report = json.loads(text)
    assert report["n_files"] == 5 and report["n_failed"] == 2 and report["salt_provided"] is True
    a1 = next(f for f in report["files"] if f["input"] == "homer/a1.dcm")
    actions = {c["keyword"]: c["action"] for c in a1["changes"]}
    assert actions["PatientName"] == "replaced with patient pseudonym"
    assert actions["InstitutionName"] == "removed" and actions["StudyDate"] == "date shifted"
    assert actions["ContentSequence[0].PersonName"] == "emptied"
    assert actions["SOPInstanceUID"] == "UID replaced" and "private tags" in actions
    forbidden = [SALT, "19560512", "20200110", "Simpson", "PID-0001", "ACC100", _uid("100"), _uid("10")]
    forbidden += list(PHI.values())
    for value in forbidden:
        assert value not in text, value


def test_pseudonyms_stable_with_salt_and_change_without(case_folder, tmp_path):
    first = deidentify(case_folder / "homer", tmp_path / "o1", salt=SALT)
    again = deidentify(case_folder / "homer", tmp_path / "o2", salt=SALT)
    other = deidentify(case_folder / "homer", tmp_path / "o3", salt="another salt")
    random_salt = deidentify(case_folder / "homer", tmp_path / "o4")
    ids = [pydicom.dcmread(d / "a1.dcm").PatientID for d in (tmp_path / n for n in ("o1", "o2", "o3", "o4"))]
    assert ids[0] == ids[1] and len({ids[0], ids[2], ids[3]}) == 3
    assert first.files[0].pseudonym == again.files[0].pseudonym != other.files[0].pseudonym
    assert random_salt.salt_provided is False
    p = Pseudonymizer(SALT)
    assert p.uid("1.2.3") == p.uid("1.2.3") != Pseudonymizer("x").uid("1.2.3")
    assert len(p.uid("1.2.3" * 10)) <= 64


def test_single_file_input_and_real_compressed_dicom(shared_data, tmp_path):
    src = shared_data / "samples/cxr/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    result = deidentify(src, tmp_path / "out", salt=SALT)
    assert result.n_ok == 1 and hashlib.sha256(src.read_bytes()).hexdigest() == before
    cleaned = pydicom.dcmread(tmp_path / "out" / src.name)
    original = pydicom.dcmread(src)
    assert cleaned.PixelData == original.PixelData  # JPEG stream copied, not re-encoded
    assert cleaned.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert cleaned.PatientID != original.PatientID and cleaned.StudyDate != original.StudyDate
    np.testing.assert_array_equal(cleaned.pixel_array, original.pixel_array)


def test_real_ct_with_many_private_tags(tmp_path):
    """pydicom's bundled CT_small.dcm: a real GE file with 179 private elements."""
    from pydicom.data import get_testdata_file

    src = tmp_path / "in" / "ct.dcm"
    src.parent.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src)
    result = deidentify(src.parent, tmp_path / "out", salt=SALT)
    ds = pydicom.dcmread(tmp_path / "out" / "ct.dcm")
    assert result.n_ok == 1 and not any(e.tag.is_private for e in ds.iterall())
    assert "InstitutionName" not in ds and "StationName" not in ds
    assert str(ds.PatientName) != "CompressedSamples^CT1" and ds.StudyID != "1CT1"
    np.testing.assert_array_equal(ds.pixel_array, pydicom.dcmread(src).pixel_array)


def test_date_shift_helpers():
    assert _shift_da("20200301", -1) == "20200229"  # leap year
    assert _shift_da("2020.03.01", -1) == "20200229"  # legacy ACR-NEMA form
    assert _shift_da("20200101-20200131", -10) == "20191222-20200121"
    assert _shift_da("", -5) == ""
    assert _shift_da("2020", -5) is None and _shift_da("20201340", -5) is None
    assert _shift_dt("20200301123000.5+0100", -1) == "20200229123000.5+0100"
    assert _shift_dt("2020", -1) is None
    low, high = -3650, -365
    offsets = {Pseudonymizer(SALT).date_offset(f"patient-{i}") for i in range(50)}
    assert all(low <= o <= high for o in offsets) and len(offsets) > 40


def test_tag_tables_are_real_keywords():
    from pydicom.datadict import tag_for_keyword

    for keyword in REMOVE_TAGS + HASH_TAGS + PSEUDONYM_TAGS + EMPTY_TAGS + DESCRIPTOR_TAGS:
        assert tag_for_keyword(keyword) is not None, keyword
    for keyword, (tag, _) in BASIC_PROFILE.items():  # the table in this test names real attributes
        group, element = (int(x, 16) for x in tag.split(","))
        assert tag_for_keyword(keyword) == (group << 16) | element, keyword


def test_keep_descriptors_is_an_explicit_option(case_folder, tmp_path):
    """Descriptors are removed by default; --keep-descriptors keeps them verbatim and says so."""
    out = tmp_path / "kept"
    result = deidentify(case_folder / "homer", out, salt=SALT, keep_descriptors=True)
    original = pydicom.dcmread(case_folder / "homer" / "a1.dcm")
    kept = pydicom.dcmread(out / "a1.dcm")
    assert_follows_basic_profile(original, kept, keep_descriptors=True)
    assert kept.StudyDescription == "CT CHEST W/O CONTRAST" and kept.ProtocolName == original.ProtocolName
    assert any("kept unchanged" in m for m in kept.DeidentificationMethod)
    actions = {c["keyword"]: c["action"] for c in result.files[0].changes}
    assert actions["SeriesDescription"].startswith("kept") and result.to_dict()["keep_descriptors"] is True
    res = CliRunner().invoke(app, ["data", "deid", str(case_folder / "homer"), str(tmp_path / "cli"), "--salt", SALT,
                                   "--keep-descriptors"])
    assert res.exit_code == 0 and "review" in res.output, res.output
    assert pydicom.dcmread(tmp_path / "cli" / "a1.dcm").SeriesDescription == original.SeriesDescription


def test_refuses_unsafe_layouts_and_missing_input(case_folder, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        deidentify(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ConfigError, match="inside"):
        deidentify(case_folder, case_folder / "clean")
    with pytest.raises(ConfigError, match="input folder"):
        deidentify(case_folder, case_folder)
    with pytest.raises(ConfigError, match="overwrite the input"):
        deidentify(case_folder / "homer" / "a1.dcm", case_folder / "homer")
    with pytest.raises(ConfigError, match="report path"):
        deidentify(case_folder / "homer", tmp_path / "o", report_path=case_folder / "homer" / "a1.dcm")


def test_cli_deid_summary_exit_codes_and_report(case_folder, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["data", "deid", str(case_folder), str(tmp_path / "o1"), "--salt", SALT])
    assert bad.exit_code == 1, bad.output
    assert "notes.txt" in bad.output and "broken.dcm" in bad.output and "report written" in bad.output
    report = tmp_path / "r.json"
    good = runner.invoke(app, ["data", "deid", str(case_folder / "homer"), str(tmp_path / "o2"),
                               "--report", str(report)], env={"MEDVL_DEID_SALT": SALT})
    assert good.exit_code == 0, good.output
    data = json.loads(report.read_text())
    assert data["n_ok"] == 2 and data["salt_provided"] is True and "random salt" not in good.output
