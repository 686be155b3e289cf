"""MedMNIST v2/v3 (MedMNIST+) npz files -> a medvl manifest + dataset card.

Why this exists: MedMNIST is the smallest *real* medical benchmark family (12 2D and 6 3D subsets,
official splits, sizes 28/64/128/224), so it is the default way to try a model on real data. CLIP
style training needs image-text pairs, so, the way UniMed-CLIP turns classification datasets into
captions, each class gets descriptions, synonyms and caption templates ("a breast ultrasound image
showing a malignant lesion") and each sample gets one caption chosen deterministically per seed.

Facts in :data:`SUBSETS` (class names in the official label order, official split sizes, MD5
checksums, licences) are copied from MedMNIST's ``INFO`` table (medmnist 3.0.2, Zenodo record
10519652) into the data file ``medmnist_subsets.yaml`` beside this module. The descriptions,
synonyms and templates are ours (the same file says which is which).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

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


SUBSETS_FILE = Path(__file__).with_name("medmnist_subsets.yaml")  # shipped as package data (pyproject)


def _class_text(name: str, entry: dict[str, Any]) -> ClassText:
    return ClassText(name, tuple(entry["synonyms"]), tuple(entry.get("descriptions", ())))


def load_subsets(path: str | Path = SUBSETS_FILE) -> dict[str, Subset]:
    """The subset table from its YAML file (facts from MedMNIST's ``INFO``, caption text ours).

    The facts live in a data file rather than in code so that a new subset or a corrected checksum
    is a data edit that a reviewer can read against MedMNIST's table line by line.
    """
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    organs = {k: _class_text(k, v) for k, v in data.get("organ_classes", {}).items()}
    out: dict[str, Subset] = {}
    for name, e in data["subsets"].items():
        where = f"{path}: subsets.{name}"
        try:
            if "organ_classes" in e:
                classes = tuple(organs[k] for k in e["organ_classes"])
            else:
                classes = tuple(_class_text(c["name"], c) for c in e["classes"])
            out[name] = Subset(
                name, e["python_class"], e["modality"], e["image_phrase"], e["article"], e["task"], classes,
                int(e["n_channels"]), {k: int(v) for k, v in e["n_samples"].items()},
                {int(k): str(v) for k, v in e["md5"].items()}, license=e.get("license", "CC BY 4.0"),
                source=e.get("source", ""), ordinal=bool(e.get("ordinal", False)), is_3d=bool(e.get("is_3d", False)),
                normal_captions=tuple(e.get("normal_captions", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: malformed entry ({type(exc).__name__}: {exc})") from exc
    return out


SUBSETS: dict[str, Subset] = load_subsets()


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
