"""MedMNIST v2/v3 (MedMNIST+) npz files -> a medvl manifest + dataset card.

Why this exists: MedMNIST is the smallest *real* medical benchmark family (12 2D and 6 3D subsets,
official splits, sizes 28/64/128/224), so it is the default way to try a model on real data. CLIP
style training needs image-text pairs, so, the way UniMed-CLIP turns classification datasets into
captions, each class gets descriptions, synonyms and caption templates ("a breast ultrasound image
showing a malignant lesion") and each sample gets one caption chosen deterministically per seed.

Facts in :data:`SUBSETS` (class names in the official label order, official split sizes, MD5
checksums, licences) are copied from MedMNIST's ``INFO`` table (medmnist 3.0.2, Zenodo record
10519652). The descriptions, synonyms and templates are ours.

MedMNIST has no patient identifiers, so ``patient_id`` is ``{split}_{i}``: every image is its own
group. Statistics that assume patient-level independence are therefore optimistic on MedMNIST
(several images can come from one patient; the official splits are patient-level for some subsets).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl.data.card import ClassInfo, DatasetCard
from medvl.data.manifest import write_manifest
from medvl.errors import ConfigError, ManifestError

SPLITS = ("train", "val", "test")
ZENODO_RECORD = "10519652"
URL_PATTERN = "https://zenodo.org/records/10519652/files/{name}{size_suffix}.npz"
SIZES_2D = (28, 64, 128, 224)
SIZES_3D = (28, 64)
VOLUME_FORMATS = ("npz", "nii.gz")
PATIENT_ID_NOTE = (
    "MedMNIST ships no patient identifiers; patient_id is '{split}_{i}' so each image is its own group"
)


@dataclass(frozen=True)
class ClassText:
    """Official class name plus the words used to caption it (synonyms read after 'showing')."""

    name: str
    synonyms: tuple[str, ...]
    descriptions: tuple[str, ...] = ()

    @property
    def caption_phrases(self) -> tuple[str, ...]:
        # The official name is sometimes not a phrase ("0", "normal, benign"), so captions use
        # the synonyms and descriptions only; the card still lists the name for zero-shot prompts.
        return self.synonyms + self.descriptions


@dataclass(frozen=True)
class Subset:
    """One MedMNIST subset: what the files contain and how to talk about them."""

    name: str
    python_class: str
    modality: str
    image_phrase: str  # "breast ultrasound image"
    article: str  # "a" / "an" for image_phrase
    task: str  # binary | multiclass | multilabel (card tasks)
    classes: tuple[ClassText, ...]
    n_channels: int
    n_samples: dict[str, int]
    md5: dict[int, str]
    license: str = "CC BY 4.0"
    source: str = ""
    ordinal: bool = False
    is_3d: bool = False
    normal_captions: tuple[str, ...] = ()  # multilabel: captions for a sample with no finding

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def sizes(self) -> tuple[int, ...]:
        return SIZES_3D if self.is_3d else SIZES_2D

    @property
    def templates(self) -> list[str]:
        a_img = f"{self.article} {self.image_phrase}"
        return [
            f"{a_img} showing {{label}}",
            f"{a_img} with {{label}}",
            f"{{label}} seen on {a_img}",
            f"{self.image_phrase}: {{label}}",
        ]

    @property
    def negative_templates(self) -> list[str]:
        a_img = f"{self.article} {self.image_phrase}"
        return [f"{a_img} showing no {{label}}", f"no {{label}} on {a_img}"]


def _c(name: str, synonyms: Sequence[str], descriptions: Sequence[str] = ()) -> ClassText:
    return ClassText(name, tuple(synonyms), tuple(descriptions))


def _n(train: int, val: int, test: int) -> dict[str, int]:
    return {"train": train, "val": val, "test": test}


def _md5(*values: str) -> dict[int, str]:
    return dict(zip((28, 64, 128, 224), values, strict=False))


_ORGAN_TEXT = {
    "bladder": _c("bladder", ["the urinary bladder", "the bladder"], ["a fluid-filled organ in the pelvis"]),
    "femur-left": _c("femur-left", ["the left femur", "the left thigh bone"], ["the proximal left femur"]),
    "femur-right": _c("femur-right", ["the right femur", "the right thigh bone"], ["the proximal right femur"]),
    "heart": _c("heart", ["the heart"], ["the cardiac chambers"]),
    "kidney-left": _c("kidney-left", ["the left kidney"], ["a bean-shaped organ in the left retroperitoneum"]),
    "kidney-right": _c("kidney-right", ["the right kidney"],
                       ["a bean-shaped organ in the right retroperitoneum"]),
    "liver": _c("liver", ["the liver"], ["a large homogeneous organ in the right upper abdomen"]),
    "lung-left": _c("lung-left", ["the left lung"], ["air-filled lung tissue on the left side"]),
    "lung-right": _c("lung-right", ["the right lung"], ["air-filled lung tissue on the right side"]),
    "pancreas": _c("pancreas", ["the pancreas"], ["a lobulated gland behind the stomach"]),
    "spleen": _c("spleen", ["the spleen"], ["a crescent-shaped organ in the left upper abdomen"]),
}
_ORGAN_2D_ORDER = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                   "lung-left", "lung-right", "pancreas", "spleen")
_ORGAN_3D_ORDER = ("liver", "kidney-right", "kidney-left", "femur-right", "femur-left", "bladder", "heart",
                   "lung-right", "lung-left", "spleen", "pancreas")
_ORGAN_SRC = "LiTS abdominal CT (Bilic et al.) with organ boxes from Xu et al."


def _organ_2d(name: str, cls: str, plane: str, article: str, n: dict[str, int], md5: dict[int, str]) -> Subset:
    return Subset(name, cls, "ct", f"{plane} abdominal CT slice", article, "multiclass",
                  tuple(_ORGAN_TEXT[k] for k in _ORGAN_2D_ORDER), 1, n, md5, source=_ORGAN_SRC)


_SUBSET_LIST: list[Subset] = [
    Subset(
        "pathmnist", "PathMNIST", "pathology", "H&E-stained colorectal histology patch", "an", "multiclass",
        (
            _c("adipose", ["adipose tissue", "fat tissue"], ["large empty-looking fat cells with thin membranes"]),
            _c("background", ["slide background", "an empty area of the slide"], ["no tissue on the glass"]),
            _c("debris", ["debris", "necrotic debris"], ["fragmented necrotic material"]),
            _c("lymphocytes", ["lymphocytes", "a lymphocytic infiltrate"],
               ["densely packed small round cells with dark nuclei"]),
            _c("mucus", ["mucus", "extracellular mucin"], ["pale bluish amorphous mucinous material"]),
            _c("smooth muscle", ["smooth muscle", "muscularis propria"],
               ["bundles of elongated pink spindle cells"]),
            _c("normal colon mucosa", ["normal colon mucosa", "normal colonic glands"],
               ["regular crypts lined by goblet cells"]),
            _c("cancer-associated stroma", ["cancer-associated stroma", "tumour stroma"],
               ["desmoplastic fibrous stroma around a tumour"]),
            _c("colorectal adenocarcinoma epithelium", ["colorectal adenocarcinoma epithelium", "tumour epithelium"],
               ["irregular crowded malignant glands with atypical nuclei"]),
        ),
        3, _n(89996, 10004, 7180),
        _md5("a8b06965200029087d5bd730944a56c1", "55aa9c1e0525abe5a6b9d8343a507616",
             "ac42d08fb904d92c244187169d1fd1d9", "2c51a510bcdc9cf8ddb2af93af1eadec"),
        source="NCT-CRC-HE-100K / CRC-VAL-HE-7K (Kather et al.)",
    ),
    Subset(
        "chestmnist", "ChestMNIST", "x-ray", "chest X-ray", "a", "multilabel",
        (
            _c("atelectasis", ["atelectasis", "partial lung collapse"], ["volume loss with increased lung opacity"]),
            _c("cardiomegaly", ["cardiomegaly", "an enlarged heart"], ["a cardiothoracic ratio above one half"]),
            _c("effusion", ["pleural effusion", "fluid in the pleural space"],
               ["blunting of the costophrenic angle"]),
            _c("infiltration", ["infiltration", "pulmonary infiltrates"],
               ["ill-defined opacities in the lung parenchyma"]),
            _c("mass", ["a lung mass", "a pulmonary mass"], ["a focal opacity larger than three centimetres"]),
            _c("nodule", ["a lung nodule", "a pulmonary nodule"], ["a small round opacity under three centimetres"]),
            _c("pneumonia", ["pneumonia", "a lung infection"], ["airspace opacity due to infection"]),
            _c("pneumothorax", ["pneumothorax", "air in the pleural space"],
               ["a visible pleural line without lung markings beyond it"]),
            _c("consolidation", ["consolidation", "airspace consolidation"], ["dense opacity with air bronchograms"]),
            _c("edema", ["pulmonary edema", "fluid overload in the lungs"],
               ["perihilar haziness and interstitial lines"]),
            _c("emphysema", ["emphysema", "hyperinflated lungs"], ["hyperlucent lungs with flattened diaphragms"]),
            _c("fibrosis", ["pulmonary fibrosis", "lung fibrosis"], ["reticular opacities with volume loss"]),
            _c("pleural", ["pleural thickening", "thickened pleura"], ["thickening of the pleural lining"]),
            _c("hernia", ["a hiatal hernia", "a hernia"], ["a retrocardiac air-fluid level"]),
        ),
        1, _n(78468, 11219, 22433),
        _md5("02c8a6516a18b556561a56cbdd36c4a8", "9de6cd0b934ebb5b7426cfba5efbae16",
             "db107e5590b27930b62dbaf558aebee3", "45bd33e6f06c3e8cdb481c74a89152aa"),
        source="NIH ChestX-ray14 (Wang et al.)",
        normal_captions=("a chest X-ray with no finding", "a chest X-ray showing no finding",
                         "no finding on a chest X-ray", "a normal chest X-ray"),
    ),
    Subset(
        "dermamnist", "DermaMNIST", "dermoscopy", "dermoscopy image", "a", "multiclass",
        (
            _c("actinic keratoses and intraepithelial carcinoma",
               ["actinic keratosis", "intraepithelial carcinoma", "Bowen's disease"],
               ["a scaly pink lesion on sun-damaged skin"]),
            _c("basal cell carcinoma", ["basal cell carcinoma", "a basal cell skin cancer"],
               ["a pearly lesion with arborizing vessels"]),
            _c("benign keratosis-like lesions", ["a benign keratosis", "seborrheic keratosis", "solar lentigo"],
               ["a waxy stuck-on lesion with milia-like cysts"]),
            _c("dermatofibroma", ["dermatofibroma", "a benign fibrous skin nodule"],
               ["a central white scar-like patch with a delicate pigment ring"]),
            _c("melanoma", ["melanoma", "malignant melanoma"],
               ["an asymmetric lesion with an irregular pigment network and several colours"]),
            _c("melanocytic nevi", ["a melanocytic nevus", "a benign mole"],
               ["a symmetric lesion with a regular pigment network"]),
            _c("vascular lesions", ["a vascular lesion", "an angioma"], ["red-purple lacunae"]),
        ),
        3, _n(7007, 1003, 2005),
        _md5("0744692d530f8e62ec473284d019b0c7", "b70a2f5635c6199aeaa28c31d7202e1f",
             "2defd784463fa5243564e855ed717de1", "8974907d8e169bef5f5b96bc506ae45d"),
        license="CC BY-NC 4.0", source="HAM10000 (Tschandl et al.)",
    ),
    Subset(
        "octmnist", "OCTMNIST", "oct", "retinal OCT scan", "a", "multiclass",
        (
            _c("choroidal neovascularization", ["choroidal neovascularization", "wet macular degeneration"],
               ["a subretinal neovascular membrane with fluid"]),
            _c("diabetic macular edema", ["diabetic macular edema", "diabetic macular oedema"],
               ["retinal thickening with intraretinal fluid cysts"]),
            _c("drusen", ["drusen", "early age-related macular degeneration"],
               ["deposits beneath the retinal pigment epithelium"]),
            _c("normal", ["a normal retina", "no retinal disease"], ["a preserved foveal contour without fluid"]),
        ),
        1, _n(97477, 10832, 1000),
        _md5("c68d92d5b585d8d81f7112f81e2d0842", "e229e9440236b774d9f0dfef9d07bdaf",
             "0a97e76651ace45c5d943ee3f65b63ae", "abc493b6d529d5de7569faaef2773ba3"),
        source="Kermany et al. retinal OCT",
    ),
    Subset(
        "pneumoniamnist", "PneumoniaMNIST", "x-ray", "pediatric chest X-ray", "a", "binary",
        (
            _c("normal", ["normal lungs", "no pneumonia"], ["clear lungs without consolidation"]),
            _c("pneumonia", ["pneumonia", "a lung infection"], ["airspace opacities consistent with infection"]),
        ),
        1, _n(4708, 524, 624),
        _md5("28209eda62fecd6e6a2d98b1501bb15f", "8f4eceb4ccffa70c672198ea285246c6",
             "05b46931834c231683c68f40c47b2971", "d6a3c71de1b945ea11211b03746c1fe1"),
        source="Kermany et al. pediatric chest X-ray",
    ),
    Subset(
        "retinamnist", "RetinaMNIST", "fundus", "retinal fundus photograph", "a", "multiclass",
        (
            _c("0", ["no diabetic retinopathy", "grade 0 diabetic retinopathy"],
               ["a healthy retina without microaneurysms"]),
            _c("1", ["mild non-proliferative diabetic retinopathy", "grade 1 diabetic retinopathy"],
               ["a few microaneurysms only"]),
            _c("2", ["moderate non-proliferative diabetic retinopathy", "grade 2 diabetic retinopathy"],
               ["retinal haemorrhages and hard exudates"]),
            _c("3", ["severe non-proliferative diabetic retinopathy", "grade 3 diabetic retinopathy"],
               ["extensive haemorrhages with venous beading"]),
            _c("4", ["proliferative diabetic retinopathy", "grade 4 diabetic retinopathy"],
               ["new vessels growing on the retina"]),
        ),
        3, _n(1080, 120, 400),
        _md5("bd4c0672f1bba3e3a89f0e4e876791e4", "afda852cc34dcda56f86ad2b2457dbcc",
             "e48e916a24454daf90583d4e6efb1a18", "eae7e3b6f3fcbda4ae613ebdcbe35348"),
        source="DeepDRiD challenge", ordinal=True,
    ),
    Subset(
        "breastmnist", "BreastMNIST", "ultrasound", "breast ultrasound image", "a", "binary",
        (
            _c("malignant", ["a malignant lesion", "breast cancer", "a malignant breast tumour"],
               ["an irregular hypoechoic mass with spiculated margins"]),
            _c("normal, benign", ["a benign or normal finding", "a benign lesion", "normal breast tissue"],
               ["a well-circumscribed oval mass or normal tissue"]),
        ),
        1, _n(546, 78, 156),
        _md5("750601b1f35ba3300ea97c75c52ff8f6", "742edef2a1fd1524b2efff4bd7ba9364",
             "363e4b3f8d712e9b5de15470a2aaadf1", "b56378a6eefa9fed602bb16d192d4c8b"),
        source="Breast Ultrasound Images (Al-Dhabyani et al., 2020)",
    ),
    Subset(
        "bloodmnist", "BloodMNIST", "microscopy", "blood smear microscopy image", "a", "multiclass",
        (
            _c("basophil", ["a basophil"], ["a white blood cell with dense dark purple granules"]),
            _c("eosinophil", ["an eosinophil"], ["a white blood cell with orange-red granules"]),
            _c("erythroblast", ["an erythroblast", "a nucleated red blood cell"],
               ["an immature red cell with a round dense nucleus"]),
            _c("immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
               ["an immature granulocyte", "a myelocyte, metamyelocyte or promyelocyte"],
               ["an immature myeloid cell with a large nucleus"]),
            _c("lymphocyte", ["a lymphocyte"], ["a small cell with a large round nucleus and scant cytoplasm"]),
            _c("monocyte", ["a monocyte"], ["a large cell with a kidney-shaped nucleus"]),
            _c("neutrophil", ["a neutrophil"], ["a cell with a multilobed nucleus"]),
            _c("platelet", ["platelets", "thrombocytes"], ["small cell fragments without a nucleus"]),
        ),
        3, _n(11959, 1712, 3421),
        _md5("7053d0359d879ad8a5505303e11de1dc", "2b94928a2ae4916078ca51e05b6b800b",
             "adace1e0ed228fccda1f39692059dd4c", "b718ff6835fcbdb22ba9eacccd7b2601"),
        source="Acevedo et al. peripheral blood cells",
    ),
    Subset(
        "tissuemnist", "TissueMNIST", "microscopy", "kidney cortex cell microscopy image", "a", "multiclass",
        (
            _c("Collecting Duct, Connecting Tubule", ["a collecting duct or connecting tubule cell"],
               ["an epithelial cell of the collecting system"]),
            _c("Distal Convoluted Tubule", ["a distal convoluted tubule cell"],
               ["an epithelial cell of the distal nephron"]),
            _c("Glomerular endothelial cells", ["a glomerular endothelial cell"],
               ["an endothelial cell of the glomerular capillaries"]),
            _c("Interstitial endothelial cells", ["an interstitial endothelial cell"],
               ["an endothelial cell between the tubules"]),
            _c("Leukocytes", ["a leukocyte", "an immune cell"], ["a white blood cell in the kidney"]),
            _c("Podocytes", ["a podocyte"], ["a glomerular epithelial cell with foot processes"]),
            _c("Proximal Tubule Segments", ["a proximal tubule cell"],
               ["an epithelial cell of the proximal nephron"]),
            _c("Thick Ascending Limb", ["a thick ascending limb cell", "a loop of Henle cell"],
               ["an epithelial cell of the thick ascending limb"]),
        ),
        1, _n(165466, 23640, 47280),
        _md5("ebe78ee8b05294063de985d821c1c34b", "123ece2eba09d0aa5d698fda57103344",
             "61b955355d7425a89687b06cca3ce0c2", "b077128c4a949f0a4eb01517f9037b9c"),
        source="BBBC051 (Broad Bioimage Benchmark Collection)",
    ),
    _organ_2d("organamnist", "OrganAMNIST", "axial", "an", _n(34561, 6491, 17778),
              _md5("68e3f8846a6bd62f0c9bf841c0d9eacc", "2dcccc29b88e6da5a01161ef20cda288",
                   "eeae80d0a227a8d099027e1b3cfd3b60", "50747347e05c87dd3aaf92c49f9f3170")),
    _organ_2d("organcmnist", "OrganCMNIST", "coronal", "a", _n(12975, 2392, 8216),
              _md5("b9ceb9546e10131b32923c5bbeaea2b1", "3ce34a8724ea6f548e6db4744d03b6a9",
                   "773c1f009daa3fe5d9a2a201b2a7ed94", "050f5e875dc056f6768abf94ec9995d1")),
    _organ_2d("organsmnist", "OrganSMNIST", "sagittal", "a", _n(13932, 2452, 8827),
              _md5("9ab87b696fb54e2a387ebe992d6ed5f1", "53a6d115339d874c25e309a994ff46d3",
                   "ded0c5fa01a95dc4978b956f613e9b8e", "b354719e553fbbb2513d5533f52a4cb1")),
    Subset(
        "organmnist3d", "OrganMNIST3D", "ct", "abdominal CT volume", "an", "multiclass",
        tuple(_ORGAN_TEXT[k] for k in _ORGAN_3D_ORDER), 1, _n(971, 161, 610),
        _md5("a0c5a1ff56af4f155c46d46fbb45a2fe", "58a2205adf14a9d0a189cb06dc78bf10"),
        source=_ORGAN_SRC, is_3d=True,
    ),
    Subset(
        "nodulemnist3d", "NoduleMNIST3D", "ct", "chest CT volume", "a", "binary",
        (
            _c("benign", ["a benign lung nodule", "a low-suspicion lung nodule"],
               ["a smooth nodule rated unlikely to be malignant"]),
            _c("malignant", ["a malignant lung nodule", "a suspicious lung nodule"],
               ["a nodule rated likely to be malignant"]),
        ),
        1, _n(1158, 165, 310),
        _md5("8755a7e9e05a4d9ce80a24c3e7a256f3", "c47c5b7d457bf6332200d2ea6d64ecd8"),
        source="LIDC-IDRI", is_3d=True,
    ),
    Subset(
        "adrenalmnist3d", "AdrenalMNIST3D", "ct", "3D adrenal gland shape from CT", "a", "binary",
        (
            _c("normal", ["a normal adrenal gland"], ["a thin Y-shaped gland"]),
            _c("hyperplasia", ["adrenal hyperplasia", "an adrenal mass"], ["a thickened or nodular adrenal gland"]),
        ),
        1, _n(1188, 98, 298),
        _md5("bbd3c5a5576322bc4cdfea780653b1ce", "17721accfe9fb005146a47d33bc54b2f"),
        source="Zhongshan Hospital, Fudan University (shape masks)", is_3d=True,
    ),
    Subset(
        "fracturemnist3d", "FractureMNIST3D", "ct", "rib CT volume", "a", "multiclass",
        (
            _c("buckle rib fracture", ["a buckle rib fracture", "a torus rib fracture"],
               ["cortical buckling without a complete fracture line"]),
            _c("nondisplaced rib fracture", ["a nondisplaced rib fracture"], ["a fracture line with aligned ends"]),
            _c("displaced rib fracture", ["a displaced rib fracture"], ["a fracture with offset bone ends"]),
        ),
        1, _n(1027, 103, 240),
        _md5("6aa7b0143a6b42da40027a9dda61302f", "f01d7e6316aedf4210da0da5b7437b42"),
        source="RibFrac (Jin et al.)", is_3d=True,
    ),
    Subset(
        "vesselmnist3d", "VesselMNIST3D", "mra", "3D brain vessel segment from MRA", "a", "binary",
        (
            _c("vessel", ["a healthy vessel segment", "a normal intracranial vessel"],
               ["a tubular vessel without focal dilation"]),
            _c("aneurysm", ["an intracranial aneurysm", "an aneurysm"], ["a saccular bulge of the vessel wall"]),
        ),
        1, _n(1335, 191, 382),
        _md5("b41fd4f7e7e2feedddb201585ecafa1b", "6bb274a8846e1097066dcd64e2c4520f"),
        source="IntrA (Yang et al.)", is_3d=True,
    ),
    Subset(
        "synapsemnist3d", "SynapseMNIST3D", "electron microscopy", "electron microscopy volume of a synapse",
        "an", "binary",
        (
            _c("inhibitory synapse", ["an inhibitory synapse", "a symmetric synapse"],
               ["a synapse with a thin postsynaptic density"]),
            _c("excitatory synapse", ["an excitatory synapse", "an asymmetric synapse"],
               ["a synapse with a thick postsynaptic density"]),
        ),
        1, _n(1230, 177, 352),
        _md5("1235b78a3cd6280881dd7850a78eadb6", "43bd14ebf3af9d3dd072446fedc14d5e"),
        source="MitoEM rat cortex volume", is_3d=True,
    ),
]

SUBSETS: dict[str, Subset] = {s.name: s for s in _SUBSET_LIST}


def get_subset(name: str) -> Subset:
    """Look a subset up by name (case-insensitive); the error lists every valid name."""
    key = name.strip().lower()
    if key not in SUBSETS:
        raise ConfigError(f"unknown MedMNIST subset {name!r}; valid: {', '.join(SUBSETS)}")
    return SUBSETS[key]


def _check_size(subset: Subset, size: int) -> None:
    if size not in subset.sizes:
        raise ConfigError(
            f"{subset.name}: size {size} is not released; valid sizes: {', '.join(map(str, subset.sizes))}"
        )


def npz_filename(name: str, size: int = 28) -> str:
    """Official file name: ``breastmnist.npz`` for 28 px, ``breastmnist_64.npz`` otherwise."""
    subset = get_subset(name)
    _check_size(subset, size)
    return f"{subset.name}{'' if size == 28 else f'_{size}'}.npz"


def download_url(name: str, size: int = 28) -> str:
    subset = get_subset(name)
    _check_size(subset, size)
    return URL_PATTERN.format(name=subset.name, size_suffix="" if size == 28 else f"_{size}")


def known_md5(name: str, size: int = 28) -> str | None:
    """The official MD5 when MedMNIST published one for this (subset, size); ``None`` otherwise."""
    return get_subset(name).md5.get(size)


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_npz(name: str, size: int = 28, root: str | Path = ".", url: str | None = None,
                 md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download the official npz into ``root`` (atomic: temp file, verify, rename).

    The MD5 is verified when known (from :data:`SUBSETS` or the ``md5`` argument); when no
    checksum is known the file is kept unverified and only its structure is checked later by
    :func:`load_npz`. An existing file with the right checksum is reused.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / npz_filename(name, size)
    expected = md5 or known_md5(name, size)
    if dest.is_file() and (expected is None or file_md5(dest) == expected):
        return dest
    url = url or download_url(name, size)
    fd, tmp_name = tempfile.mkstemp(dir=root, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with open(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, length=1 << 20)
        if expected is not None:
            got = file_md5(tmp)
            if got != expected:
                raise ManifestError(f"{url}: MD5 mismatch (expected {expected}, got {got}); download corrupt")
        tmp.replace(dest)
    except OSError as exc:
        raise ManifestError(f"cannot download {url}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


@dataclass
class SplitArrays:
    """One split of an npz file: uint8 images and labels normalised to [N] (int) or [N, K] (0/1)."""

    images: np.ndarray
    labels: np.ndarray


def normalize_labels(labels: np.ndarray, subset: Subset, where: str) -> np.ndarray:
    """Accept (N,), (N,1) and (N,K) labels; return int64 [N] class ids or uint8 [N,K] (multilabel).

    MedMNIST's own files use (N,1) for single-label tasks and (N,K) for ChestMNIST; re-packaged
    copies (like the shared BreastMNIST) use (N,), so all are accepted; anything else is an error
    that names the file and key.
    """
    k = len(subset.classes)
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biuf":
        raise ManifestError(f"{where}: labels must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise ManifestError(f"{where}: labels must be whole numbers")
    arr = arr.astype(np.int64)
    if subset.task == "multilabel":
        if arr.ndim != 2 or arr.shape[1] != k:
            raise ManifestError(f"{where}: multilabel labels must have shape (N, {k}), got {arr.shape}")
        if not np.isin(arr, (0, 1)).all():
            raise ManifestError(f"{where}: multilabel labels must be 0/1")
        return arr.astype(np.uint8)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 2 and arr.shape[1] == k and k > 1 and np.isin(arr, (0, 1)).all() \
            and (arr.sum(1) == 1).all():
        arr = arr.argmax(1)  # one-hot rows
    if arr.ndim != 1:
        raise ManifestError(f"{where}: labels must have shape (N,), (N, 1) or one-hot (N, {k}), got {arr.shape}")
    bad = (arr < 0) | (arr >= k)
    if bad.any():
        raise ManifestError(
            f"{where}: label {int(arr[bad][0])} at index {int(np.flatnonzero(bad)[0])} is outside 0..{k - 1}"
        )
    return arr


def _check_image_shape(shape: tuple[int, ...], subset: Subset, where: str) -> None:
    ndim = len(shape)
    ok = ndim == 4 if subset.is_3d else (ndim == 3 or (ndim == 4 and shape[-1] == 3))
    if not ok:
        want = "(N, D, H, W)" if subset.is_3d else "(N, H, W) or (N, H, W, 3)"
        raise ManifestError(f"{where}: images must have shape {want}, got {shape}")


def _to_uint8(images: np.ndarray, where: str) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind not in "biuf" or images.size and (images.min() < 0 or images.max() > 255):
        raise ManifestError(f"{where}: images must be uint8 (or numbers within 0..255), got {images.dtype}")
    return np.rint(images).astype(np.uint8)


class MedMNISTFile:
    """A validated MedMNIST npz whose image arrays are read one split at a time.

    Opening checks every key, every array header (shape, length) and every label array without
    decompressing the images, so a bad file fails before anything is written, and converting a
    large subset (TissueMNIST at 224 px is ~12 GB of pixels) only ever holds one split in memory.
    Every problem raises :class:`ManifestError` naming the file and the key.
    """

    def __init__(self, path: str | Path, name: str):
        self.path = Path(path)
        self.subset = get_subset(name)
        if not self.path.is_file():
            raise ManifestError(f"MedMNIST file not found: {self.path}")
        try:
            data = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ManifestError(f"{self.path}: not a readable .npz file ({exc})") from exc
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ManifestError(f"{self.path}: expected an .npz archive with {{split}}_images/labels keys, "
                                f"got a single array")
        self._data = data
        try:
            self._validate()
        except BaseException:
            data.close()
            raise

    def _where(self, key: str) -> str:
        return f"{self.path}, key '{key}'"

    def _read(self, key: str) -> np.ndarray:
        try:
            return self._data[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ManifestError(f"{self._where(key)}: unreadable array ({exc})") from exc

    def _header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype from the .npy header only (no decompression of the pixels)."""
        try:
            with self._data.zip.open(f"{key}.npy") as fp:
                version = np.lib.format.read_magic(fp)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                    else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fp)
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise ManifestError(f"{self._where(key)}: unreadable array header ({exc})") from exc
        return tuple(shape), dtype

    def _validate(self) -> None:
        files = set(self._data.files)
        missing = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels") if f"{s}_{kind}" not in files]
        if missing:
            raise ManifestError(
                f"{self.path}: missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}; "
                f"keys present: {', '.join(sorted(files)) or '(none)'}"
            )
        self.labels: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for split in SPLITS:
            shape, _ = self._header(f"{split}_images")
            _check_image_shape(shape, self.subset, self._where(f"{split}_images"))
            raw = self._read(f"{split}_labels")
            if len(raw) != shape[0]:
                raise ManifestError(
                    f"{self.path}: key '{split}_labels' has {len(raw)} rows but '{split}_images' has {shape[0]}"
                )
            self.labels[split] = normalize_labels(raw, self.subset, self._where(f"{split}_labels"))
            self.shapes[split] = shape
        spatial = {sp: sh[1:4] if self.subset.is_3d else sh[1:3] for sp, sh in self.shapes.items()}
        if len(set(spatial.values())) > 1:
            raise ManifestError(f"{self.path}: splits have different image sizes {spatial}")
        self.spatial: tuple[int, ...] = spatial["train"]

    @property
    def split_sizes(self) -> dict[str, int]:
        return {sp: int(sh[0]) for sp, sh in self.shapes.items()}

    def images(self, split: str) -> np.ndarray:
        """Decompress one split's images (uint8, checked)."""
        key = f"{split}_images"
        return _to_uint8(self._read(key), self._where(key))

    def close(self) -> None:
        self._data.close()

    def __enter__(self) -> MedMNISTFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_npz(path: str | Path, name: str) -> dict[str, SplitArrays]:
    """Read and validate a whole MedMNIST npz (all splits in memory; see :class:`MedMNISTFile`)."""
    with MedMNISTFile(path, name) as f:
        return {split: SplitArrays(f.images(split), f.labels[split]) for split in SPLITS}


def build_card(name: str, size: int | None = None, extra: dict[str, Any] | None = None) -> DatasetCard:
    """The dataset card of a subset: official class names, our descriptions/synonyms/templates."""
    s = get_subset(name)
    meta: dict[str, Any] = {
        "medmnist": {
            "subset": s.name,
            "python_class": s.python_class,
            "size": size,
            "is_3d": s.is_3d,
            "n_channels": s.n_channels,
            "official_n_samples": dict(s.n_samples),
            "source": s.source,
            "zenodo_record": ZENODO_RECORD,
            "url_pattern": URL_PATTERN,
            "patient_id": PATIENT_ID_NOTE,
        }
    }
    if s.ordinal:
        meta["ordinal"] = True
    if s.normal_captions:
        meta["normal_captions"] = list(s.normal_captions)
    meta["medmnist"].update(extra or {})
    return DatasetCard(
        name=s.name,
        task=s.task,
        classes=[ClassInfo(c.name, list(c.descriptions), list(c.synonyms)) for c in s.classes],
        modality=s.modality,
        templates=s.templates,
        negative_templates=s.negative_templates,
        description=f"MedMNIST {s.python_class} ({s.source}); captions generated from class templates.",
        license=s.license,
        extra=meta,
    )


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def make_captions(subset: Subset, labels: np.ndarray, rng: np.random.Generator) -> list[str]:
    """One caption per sample: a template filled with one phrase per positive class.

    The choice is drawn from ``rng`` in sample order, so a seed fixes every caption. Multilabel
    samples list their findings ("... showing pleural effusion and a lung nodule") or, with none,
    use one of the subset's no-finding captions.
    """
    templates = subset.templates
    out: list[str] = []
    for lab in labels:
        t = templates[int(rng.integers(len(templates)))]
        if subset.task == "multilabel":
            pos = np.flatnonzero(lab)
            if len(pos) == 0:
                out.append(subset.normal_captions[int(rng.integers(len(subset.normal_captions)))])
                continue
            phrases = [subset.classes[j].caption_phrases[int(rng.integers(len(subset.classes[j].caption_phrases)))]
                       for j in pos]
            out.append(t.format(label=_join(phrases)))
        else:
            cls = subset.classes[int(lab)]
            out.append(t.format(label=cls.caption_phrases[int(rng.integers(len(cls.caption_phrases)))]))
    return out


def _write_volume(volume: np.ndarray, path: Path, fmt: str) -> None:
    if fmt == "npz":
        np.savez_compressed(path, image=volume)
    else:
        import nibabel as nib

        # Identity affine (already RAS), so medvl.data.io.read_nifti returns the array unchanged,
        # exactly as the npz copy. MedMNIST does not publish the anatomical axis order of its volumes.
        nib.save(nib.Nifti1Image(np.ascontiguousarray(volume), np.eye(4)), str(path))


def _write_splits(f: MedMNISTFile, subset: Subset, out: Path, seed: int,
                  volume_format: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Write every sample of every split (one split in memory at a time); return manifest rows and counts."""
    from PIL import Image

    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    suffix = ".png" if not subset.is_3d else f".{volume_format}"
    for split_no, split in enumerate(SPLITS):
        labels = f.labels[split]
        captions = make_captions(subset, labels, np.random.default_rng([seed, split_no]))
        if subset.task == "multilabel":
            counts[split] = {c: int(labels[:, j].sum()) for j, c in enumerate(subset.class_names)}
        else:
            counts[split] = {c: int((labels == j).sum()) for j, c in enumerate(subset.class_names)}
        images = f.images(split)
        for i, (image, lab, text) in enumerate(zip(images, labels, captions, strict=True)):
            rel = f"images/{split}_{i}{suffix}"
            if subset.is_3d:
                _write_volume(image, out / rel, volume_format)
            else:
                Image.fromarray(image).save(out / rel)
            names = ([subset.class_names[j] for j in np.flatnonzero(lab)] if subset.task == "multilabel"
                     else [subset.class_names[int(lab)]])
            rows.append({"image": rel, "text": text, "labels": "|".join(names), "split": split,
                         "patient_id": f"{split}_{i}", "modality": subset.modality})
        del images
    return rows, counts


@dataclass
class ConvertResult:
    """What :func:`convert_medmnist` wrote and what it found."""

    out_dir: Path
    manifest: Path
    card: Path
    split_sizes: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    official_sizes_match: bool
    md5: str
    md5_matches_official: bool | None
    extra: dict[str, Any] = field(default_factory=dict)


def convert_medmnist(name: str, out_dir: str | Path, size: int | None = None, npz: str | Path | None = None,
                     seed: int = 0, volume_format: str = "npz", download_root: str | Path | None = None,
                     check_official_sizes: bool = True) -> ConvertResult:
    """Turn one MedMNIST subset into ``out_dir/images/*``, ``out_dir/manifest.csv`` and ``out_dir/card.yaml``.

    ``npz`` is a local file; without it the official file is downloaded (needs network) into
    ``download_root`` (default ``out_dir/raw``). With ``check_official_sizes`` (the default) split
    sizes must equal MedMNIST's, which catches truncated or wrong files; turn it off for
    deliberately cut-down copies.
    """
    subset = get_subset(name)
    if volume_format not in VOLUME_FORMATS:
        raise ConfigError(f"volume_format must be one of {', '.join(VOLUME_FORMATS)}, got {volume_format!r}")
    if size is not None:
        _check_size(subset, size)
    out = Path(out_dir)
    if npz is None:
        npz = download_npz(subset.name, size or 28, download_root or out / "raw")
    npz = Path(npz)
    with MedMNISTFile(npz, subset.name) as f:
        found = f.split_sizes
        sizes_match = found == subset.n_samples
        if check_official_sizes and not sizes_match:
            bad = next(sp for sp in SPLITS if found[sp] != subset.n_samples[sp])
            raise ManifestError(
                f"{npz}: split '{bad}' has {found[bad]} samples but official {subset.name} has "
                f"{subset.n_samples[bad]} (found {found}); pass check_official_sizes=False for a subset copy"
            )
        if size is not None and any(d != size for d in f.spatial):
            raise ManifestError(f"{npz}: images are {'x'.join(map(str, f.spatial))} but size {size} was requested")
        size = int(f.spatial[-1])
        rows, counts = _write_splits(f, subset, out, seed, volume_format)
    md5 = file_md5(npz)
    official_md5 = subset.md5.get(size)
    md5_ok = None if official_md5 is None else md5 == official_md5

    manifest_path = write_manifest(rows, out / "manifest.csv")
    card = build_card(subset.name, size, {"npz": npz.name, "md5": md5, "md5_matches_official": md5_ok,
                                           "split_sizes": found, "official_sizes_match": sizes_match,
                                           "caption_seed": seed})
    card_path = out / "card.yaml"
    tmp = card_path.with_name("card.yaml.tmp")
    card.save(tmp)
    tmp.replace(card_path)
    return ConvertResult(out, manifest_path, card_path, found, counts, sizes_match, md5, md5_ok)
