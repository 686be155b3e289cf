"""DICOM de-identification: cleaned copies following the common tags of DICOM PS3.15 Annex E.

What is done (the Basic Application Level Confidentiality Profile, restricted to its common
attributes, plus two of its options; this is **not** a certified implementation of the full
profile -- review the output before sharing data outside your institution):

* **Patient identity** (:data:`PSEUDONYM_TAGS`): PatientName and PatientID become a pseudonym
  ``ANON-<10 hex>`` = HMAC-SHA256(salt, PatientID). The same patient gets the same pseudonym in
  every file and every run with the same salt, so patient-level splits still work; without the
  salt the pseudonym cannot be reversed by hashing candidate IDs.
* **Other identifiers** (:data:`HASH_TAGS`: AccessionNumber, StudyID; profile action Z, which
  allows a dummy value) are replaced by a salted hash *of their own value*, keeping study-level
  linkage. OtherPatientIDs (action X) is removed.
* **Dates** (every DA and DT element, PatientBirthDate included, in nested sequences too) are
  shifted by a per-patient offset of -365...-3650 days derived from the salted hash
  ("Retain Longitudinal Temporal Information with Modified Dates" option): intervals between a
  patient's studies are kept, absolute dates are not. Times (TM) are kept.
* **Removed** (:data:`REMOVE_TAGS`): addresses, phone numbers, other names, institution,
  station, devices serial numbers, physicians/operators, comments and patient history.
* **Emptied**: every other Person Name (PN) element anywhere (catches physicians and observers in
  sequences); emptied rather than removed because many are Type 2 (must be present).
* **Descriptors** (:data:`DESCRIPTOR_TAGS`: StudyDescription, SeriesDescription, ProtocolName and
  the procedure-step descriptions; profile action X, or X/D) are removed by default, as the Basic
  Profile asks: free text is where names, dates and history leak. ``keep_descriptors=True``
  (``medvl data deid --keep-descriptors``) keeps them **unchanged** because they are often needed
  to select data (e.g. "CT CHEST W/O CONTRAST"); this is *not* the profile's "Clean Descriptors"
  option (which rewrites them free of identifying text): the report marks each kept descriptor
  "kept (review)" and DeidentificationMethod says so -- review them before sharing.
* **Kept** on purpose: PatientSex, PatientAge, PatientSize, PatientWeight ("Retain Patient
  Characteristics" option, needed for fairness analyses), BodyPartExamined, equipment
  Manufacturer/Model, all acquisition parameters.
* **Private tags**: all removed (vendors hide names and IDs there).
* **UIDs**: every UI value that is not a DICOM-defined UID (``1.2.840.10008.*``) and not a class
  UID is replaced by a deterministic hash-derived UID (pydicom ``generate_uid`` with the salt as
  entropy), so Study/Series/SOP Instance UIDs and every reference to them stay consistent across
  files; the file meta MediaStorageSOPInstanceUID follows the SOPInstanceUID.
* PatientIdentityRemoved = YES, DeidentificationMethod and LongitudinalTemporalInformationModified
  = MODIFIED are set.

Not done (known limits): pixel data is copied unchanged, so text burned into the pixels stays
(files with BurnedInAnnotation = YES are flagged in the report); file and folder names are
mirrored as they are; descriptors are kept verbatim under ``keep_descriptors``; overlays are kept.

The JSON report lists per file which tag got which action -- never an original value, nor the
salt or the date offset, because the report travels with the de-identified data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from medvl.data.io import load_dicom_dataset
from medvl.errors import ConfigError, ImageReadError

#: Replaced by the patient pseudonym.
PSEUDONYM_TAGS = ("PatientName", "PatientID")
#: Replaced by a salted hash of their own value (empty values stay empty).
HASH_TAGS = ("AccessionNumber", "StudyID")
#: Removed outright (Basic Profile action X for these attributes).
REMOVE_TAGS = (
    # patient
    "OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence", "IssuerOfPatientID", "PatientBirthName",
    "PatientMotherBirthName", "PatientBirthTime", "PatientAddress", "PatientTelephoneNumbers",
    "PatientTelecomInformation", "CountryOfResidence", "RegionOfResidence", "MilitaryRank",
    "BranchOfService", "MedicalRecordLocator", "PatientReligiousPreference", "EthnicGroup", "Occupation",
    "AdditionalPatientHistory", "PatientComments", "MedicalAlerts", "Allergies", "ResponsiblePerson",
    "ResponsibleOrganization", "PatientInsurancePlanCodeSequence", "AdmittingDiagnosesDescription",
    # institution, equipment, people
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence",
    "StationName", "DeviceSerialNumber", "PlateID", "DetectorID", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "ReferringPhysicianIdentificationSequence",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "OperatorsName", "OperatorIdentificationSequence",
    "RequestingPhysician", "ScheduledPerformingPhysicianName",
    # orders and free-text comments
    "RequestedProcedureID", "ScheduledProcedureStepID", "PerformedProcedureStepID",
    "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
    "IssuerOfAccessionNumberSequence", "ImageComments", "RequestedProcedureComments",
    "ImagingServiceRequestComments", "DerivationDescription",
    # network identities of the sending site (file meta)
    "SourceApplicationEntityTitle", "SendingApplicationEntityTitle", "ReceivingApplicationEntityTitle",
)
#: Free-text descriptors the Basic Profile removes (X, X/D, X/Z); kept verbatim only with ``keep_descriptors``.
DESCRIPTOR_TAGS = (
    "StudyDescription", "SeriesDescription", "ProtocolName", "RequestedProcedureDescription",
    "PerformedProcedureStepDescription", "ScheduledProcedureStepDescription", "AcquisitionDeviceProcessingDescription",
)
#: Emptied (kept present because they are Type 2 in common IODs).
EMPTY_TAGS = ("ReferringPhysicianName",)
DATE_SHIFT_RANGE = (365, 3650)  # days into the past
_KEEP_UIDS = ("TransferSyntaxUID",)
_DICOM_ROOT = "1.2.840.10008."
METHOD = (
    "medvl deid: PS3.15 Basic Profile (common tags)",
    "Retain Longitudinal Temporal Info, Modified Dates",
    "Retain Patient Characteristics",
    "Private tags removed; UIDs replaced",
)
KEPT_DESCRIPTORS_METHOD = "Descriptors kept unchanged (not cleaned; review)"


@dataclass
class FileResult:
    """Outcome for one input file; ``changes`` holds ``{"tag", "keyword", "action"}`` only."""

    input: str
    output: str = ""
    status: str = "ok"  # "ok" | "failed"
    reason: str = ""
    pseudonym: str = ""
    changes: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class DeidResult:
    """Summary of a de-identification run (what the CLI prints and the JSON report holds)."""

    input: str
    output: str
    report_path: str
    salt_provided: bool
    files: list[FileResult] = field(default_factory=list)
    keep_descriptors: bool = False
    skipped_hidden: list[str] = field(default_factory=list)

    @property
    def n_ok(self) -> int:
        return sum(f.status == "ok" for f in self.files)

    @property
    def n_failed(self) -> int:
        return sum(f.status == "failed" for f in self.files)

    @property
    def n_patients(self) -> int:
        return len({f.pseudonym for f in self.files if f.status == "ok"})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(n_files=len(self.files), n_ok=self.n_ok, n_failed=self.n_failed, n_patients=self.n_patients,
                   method=list(METHOD) + ([KEPT_DESCRIPTORS_METHOD] if self.keep_descriptors else []))
        return out


# ------------------------------------------------------------------------------------- pseudonyms


class Pseudonymizer:
    """Salted, deterministic replacements: pseudonyms, hashes, date offsets and UIDs."""

    def __init__(self, salt: str):
        self._key = salt.encode("utf-8")
        self._salt = salt

    def _digest(self, domain: str, value: str) -> str:
        return hmac.new(self._key, f"{domain}\x00{value}".encode(), hashlib.sha256).hexdigest()

    def pseudonym(self, patient_key: str) -> str:
        """``ANON-`` + 10 hex digits: short enough for PN/LO, 40 bits against collisions."""
        return "ANON-" + self._digest("patient", patient_key)[:10].upper()

    def hashed(self, value: str) -> str:
        """16 hex digits (fits SH, the VR of AccessionNumber and StudyID)."""
        return self._digest("id", value)[:16].upper()

    def date_offset(self, patient_key: str) -> int:
        """Negative number of days, the same for every file of the patient."""
        low, high = DATE_SHIFT_RANGE
        return -(low + int(self._digest("date", patient_key)[:8], 16) % (high - low + 1))

    def uid(self, original: str) -> str:
        from pydicom.uid import generate_uid

        return str(generate_uid(entropy_srcs=[self._salt, "uid", original]))


def patient_key(ds) -> str:
    """What identifies the patient: PatientID, else PatientName, else the study UID."""
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return value
    return ""


# ------------------------------------------------------------------------------------ dates


def _shift_da(value: str, days: int) -> str | None:
    """Shift ``YYYYMMDD`` (or a ``A-B`` range, or legacy ``YYYY.MM.DD``); None if unparseable."""
    text = value.strip()
    if not text:
        return value
    if "-" in text:
        parts = [(_shift_da(p, days) if p else "") for p in text.split("-")]
        return None if any(p is None for p in parts) else "-".join(p for p in parts if p is not None)
    digits = text.replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        day = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None
    return (day + timedelta(days=days)).strftime("%Y%m%d")


def _shift_dt(value: str, days: int) -> str | None:
    """Shift the date part of a DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``), keeping the time; None if partial."""
    text = value.strip()
    if not text:
        return value
    shifted = _shift_da(text[:8], days)
    return None if shifted is None else shifted + text[8:]


# --------------------------------------------------------------------------------- the cleaner


class _Cleaner:
    """Applies the rules to one dataset, recording ``(path, tag, action)`` for the report."""

    def __init__(self, pseudo: Pseudonymizer, key: str, keep_descriptors: bool = False):
        self.pseudo = pseudo
        self.keep_descriptors = keep_descriptors
        self.pseudonym = pseudo.pseudonym(key)
        self.offset = pseudo.date_offset(key)
        self.changes: list[dict[str, str]] = []

    def _log(self, path: str, elem, action: str) -> None:
        self.changes.append({"tag": str(elem.tag), "keyword": path, "action": action})

    def clean(self, ds, prefix: str = "") -> None:
        for elem in list(ds):
            name = prefix + (elem.keyword or str(elem.tag))
            action = self._apply(ds, elem)
            if action:
                self._log(name, elem, action)
            if elem.tag in ds and elem.VR == "SQ":
                for i, item in enumerate(elem.value):
                    self.clean(item, f"{name}[{i}].")

    def _apply(self, ds, elem) -> str:
        """Change ``elem`` in place (or delete it) and say what was done; '' if kept."""
        keyword, vr = elem.keyword, elem.VR
        if keyword in REMOVE_TAGS:
            del ds[elem.tag]
            return "removed"
        if keyword in DESCRIPTOR_TAGS:
            if self.keep_descriptors:
                return "kept (descriptor, --keep-descriptors: review for PHI)"
            del ds[elem.tag]
            return "removed"
        if keyword in PSEUDONYM_TAGS:
            elem.value = self.pseudonym
            return "replaced with patient pseudonym"
        if keyword in HASH_TAGS:
            return self._hash(elem)
        if vr == "PN" or keyword in EMPTY_TAGS:
            if elem.value in (None, "", b""):
                return ""
            elem.value = ""
            return "emptied"
        if vr in ("DA", "DT"):
            return self._shift(elem)
        if vr == "UI":
            return self._uid(elem)
        return ""

    def _hash(self, elem) -> str:
        values = _as_list(elem.value)
        if not any(str(v).strip() for v in values):
            return ""
        new = [self.pseudo.hashed(str(v)) for v in values]
        elem.value = new if len(new) > 1 else new[0]
        return "replaced with salted hash"

    def _shift(self, elem) -> str:
        shift = _shift_da if elem.VR == "DA" else _shift_dt
        values = _as_list(elem.value)
        if not any(str(v).strip() for v in values):
            return ""
        shifted = [shift(str(v), self.offset) for v in values]
        if any(v is None for v in shifted):
            elem.value = ""
            return "emptied (unparseable or partial date)"
        elem.value = shifted if len(shifted) > 1 else shifted[0]
        return "date shifted"

    def _uid(self, elem) -> str:
        keyword = elem.keyword or ""
        if keyword.endswith("ClassUID") or keyword in _KEEP_UIDS:
            return ""
        values = [str(v) for v in _as_list(elem.value)]
        if not values or all(not v or v.startswith(_DICOM_ROOT) for v in values):
            return ""
        new = [v if (not v or v.startswith(_DICOM_ROOT)) else self.pseudo.uid(v) for v in values]
        elem.value = new if len(new) > 1 else new[0]
        return "UID replaced"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def deidentify_dataset(ds, pseudo: Pseudonymizer, keep_descriptors: bool = False) -> FileResult:
    """De-identify a pydicom Dataset in place; return what changed (no original values).

    ``keep_descriptors`` keeps :data:`DESCRIPTOR_TAGS` verbatim instead of removing them (see module doc).
    """
    result = FileResult(input="")
    private = sum(1 for elem in ds.iterall() if elem.tag.is_private)
    ds.remove_private_tags()
    if private:
        result.changes.append({"tag": "(gggg,eeee) odd groups", "keyword": "private tags",
                               "action": f"removed ({private} elements)"})
    cleaner = _Cleaner(pseudo, patient_key(ds), keep_descriptors)
    cleaner.clean(ds)
    if getattr(ds, "file_meta", None) is not None:
        cleaner.clean(ds.file_meta, "FileMeta.")
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        result.warnings.append("BurnedInAnnotation=YES: text in the pixels is not removed")
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = list(METHOD) + ([KEPT_DESCRIPTORS_METHOD] if keep_descriptors else [])
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    result.pseudonym = cleaner.pseudonym
    result.changes.extend(cleaner.changes)
    return result


# ------------------------------------------------------------------------------------ files


def _plan(src: Path, dst: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Input -> output pairs (OUT mirrors IN); refuse layouts that could overwrite or re-read inputs."""
    if not src.exists():
        raise ConfigError(f"input path does not exist: {src}")
    src_r, dst_r = src.resolve(), dst.resolve()
    if src.is_file():
        pairs = [(src, dst / src.name)]
        hidden: list[str] = []
    else:
        if dst_r == src_r or src_r in dst_r.parents:
            raise ConfigError(f"output folder {dst} must not be the input folder or inside it ({src})")
        files = sorted(p for p in src.rglob("*") if p.is_file())
        hidden = [str(p.relative_to(src)) for p in files if any(part.startswith(".")
                                                                 for part in p.relative_to(src).parts)]
        pairs = [(p, dst / p.relative_to(src)) for p in files if str(p.relative_to(src)) not in hidden]
    for source, target in pairs:
        if target.resolve() == source.resolve():
            raise ConfigError(f"output {target} would overwrite the input file")
    return pairs, hidden


def _write_atomic(ds, target: Path) -> None:
    """Write to a temporary name in the target folder, then rename: no half-written outputs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".deid-", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        ds.save_as(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _process(source: Path, target: Path, pseudo: Pseudonymizer, label: str, out_label: str,
             keep_descriptors: bool = False) -> FileResult:
    try:
        ds = load_dicom_dataset(source)
    except ImageReadError as exc:
        return FileResult(input=label, status="failed", reason=exc.reason)
    result = deidentify_dataset(ds, pseudo, keep_descriptors)
    result.input, result.output = label, out_label
    try:
        _write_atomic(ds, target)
    except Exception as exc:  # a value pydicom cannot encode, a full disk...
        return FileResult(input=label, status="failed", reason=f"cannot write output: {type(exc).__name__}: {exc}")
    return result


def deidentify(src: str | Path, dst: str | Path, *, salt: str | None = None,
               report_path: str | Path | None = None, keep_descriptors: bool = False) -> DeidResult:
    """Write de-identified copies of the DICOM file(s) under ``src`` into ``dst``; never touch inputs.

    ``src`` is a file or a folder (recursive; ``dst`` mirrors its structure). Files that are not
    DICOM or are corrupt are reported as failed with the reason and the rest is processed.
    ``salt=None`` draws a random salt: pseudonyms are then consistent within this run only
    (pass the same secret salt to get the same pseudonyms in later runs). The report goes to
    ``report_path`` (default ``dst/deid_report.json``). ``keep_descriptors`` keeps StudyDescription,
    SeriesDescription, ProtocolName... verbatim (removed by default, as the Basic Profile asks).
    """
    src, dst = Path(src), Path(dst)
    pairs, hidden = _plan(src, dst)
    report = Path(report_path) if report_path else dst / "deid_report.json"
    if report.resolve() in {source.resolve() for source, _ in pairs}:
        raise ConfigError(f"report path {report} would overwrite an input file")
    pseudo = Pseudonymizer(salt if salt else secrets.token_hex(16))
    result = DeidResult(input=str(src), output=str(dst), report_path=str(report), salt_provided=bool(salt),
                        skipped_hidden=hidden, keep_descriptors=keep_descriptors)
    base = src if src.is_dir() else src.parent
    for source, target in pairs:
        label = str(source.relative_to(base))
        result.files.append(_process(source, target, pseudo, label, str(target.relative_to(dst)), keep_descriptors))
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result
