"""Semantic-segmentation datasets for the readouts: BDD100K, SynthDrive, Cityscapes, ADE20K, WT-Sem and a generic
folder layout, all returning `{"image": uint8 (3, H, W) RGB, "mask": int64 (H, W), "name": str}`.

Masks are decoded through a 256-entry lookup table per layout (identity, reduce_zero_label, Cityscapes labelIds ->
trainIds). A raw value with no entry in the table is an error that names the file and the offending values with
their pixel counts: labels are never clipped, because a silently clipped label corrupts mIoU without a trace.
The exact on-disk layouts are documented in docs/data.md ("Segmentation datasets (evaluation)").

    ds = build_segmentation_dataset("cityscapes", "/datasets/cityscapes", "val", transform=SegEvalTransform())
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from poodle.data.ade20k_classes import ADE20K_CLASSES, ADE20K_PALETTE
from poodle.data.cityscapes_labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, LABEL_ID_TO_TRAIN_ID
from poodle.data.classes import BDD100K_CLASSES, BDD100K_PALETTE, IGNORE_INDEX
from poodle.progress import progress_bar

DATASET_NAMES: tuple[str, ...] = ("bdd100k", "synthdrive", "cityscapes", "ade20k", "wtsem", "folder")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MASK_EXTENSIONS = (".png",)  # lossy formats would invent label values at edges
# Several values per pixel (or fractional ones): not masks of label ids.
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "LA", "PA", "La", "CMYK", "YCbCr", "HSV", "LAB", "F")
_MAX_EXAMPLES = 5

Transform = Callable[..., tuple[Any, Any]]


class SegDatasetError(ValueError):
    """A segmentation dataset's layout, pairing or labels do not match what the chosen layout expects."""


@dataclass(frozen=True)
class SegDatasetInfo:
    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    # WT-Sem only: "zero_based" (0-149) or "one_based" (ADE-style 1-150, 0 = unlabelled), and how it was chosen.
    label_encoding: str | None = None
    encoding_note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def distinct_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """Deterministic, pairwise-distinct colours (PASCAL VOC bit-interleaving, starting at 1 so none is black)."""
    out = []
    for i in range(1, n + 1):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)


# --------------------------------------------------------------------------------------------- label decoding


class LabelDecoder:
    """Map raw mask values to class indices (0..C-1) or ignore through a 256-entry table.

    Values absent from the table raise `SegDatasetError` listing each bad value with its pixel count.
    """

    def __init__(self, table: Mapping[int, int], valid: str):
        self.lut = np.full(256, -1, dtype=np.int16)
        for raw, label in table.items():
            if not 0 <= raw <= 255 or not 0 <= label <= 255:
                raise ValueError(f"label table entry {raw} -> {label} is outside 0..255")
            self.lut[raw] = label
        self.valid = valid  # human-readable description of the accepted raw values, for error messages

    @classmethod
    def identity(cls, num_classes: int, ignore_index: int = IGNORE_INDEX) -> LabelDecoder:
        table = {k: k for k in range(num_classes)} | {ignore_index: ignore_index}
        return cls(table, f"0-{num_classes - 1} or {ignore_index} (ignore)")

    @classmethod
    def reduce_zero_label(cls, num_classes: int, ignore_index: int = IGNORE_INDEX) -> LabelDecoder:
        # ADE20K convention (mmseg reduce_zero_label): 0 = "other" -> ignore, k -> k - 1; a raw 255 stays ignore.
        table = {0: ignore_index} | {k: k - 1 for k in range(1, num_classes + 1)} | {255: ignore_index}
        return cls(table, f"0-{num_classes} (0 = other, ignored; k -> class k-1) or 255 (ignore)")

    @classmethod
    def cityscapes_label_ids(cls) -> LabelDecoder:
        return cls(LABEL_ID_TO_TRAIN_ID, "Cityscapes labelIds 0-33 (converted to trainIds 0-18 / 255)")

    def __call__(self, raw: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
        raw = np.asarray(raw)
        if raw.dtype == np.bool_:
            raw = raw.astype(np.uint8)
        if raw.dtype != np.uint8:  # 16/32-bit PNGs: anything above 255 cannot be one of our labels
            if raw.size and (int(raw.min()) < 0 or int(raw.max()) > 255):
                self._raise(raw, (raw < 0) | (raw > 255), path)
            raw = raw.astype(np.uint8)
        out = self.lut[raw]
        bad = out < 0
        if bad.any():
            self._raise(raw, bad, path)
        return out.astype(np.uint8)

    def decode_histogram(self, hist: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
        """Raw-value histogram (256,) -> decoded-label histogram (256,); raises like `__call__` on a raw value
        without a table entry (the mask scan checks and counts a mask from its histogram alone)."""
        hist = np.asarray(hist, dtype=np.int64)
        bad = (hist > 0) & (self.lut < 0)
        if bad.any():
            values = np.flatnonzero(bad)
            self._raise_counts(values, hist[values], int(hist.sum()), path)
        valid = np.flatnonzero((hist > 0) & (self.lut >= 0))
        return np.bincount(self.lut[valid], weights=hist[valid], minlength=256).astype(np.int64)

    def _raise(self, raw: np.ndarray, bad: np.ndarray, path: str | Path) -> None:
        values, counts = np.unique(raw[bad], return_counts=True)
        self._raise_counts(values, counts, raw.size, path)

    def _raise_counts(self, values: np.ndarray, counts: np.ndarray, size: int, path: str | Path) -> None:
        listed = ", ".join(f"{int(v)} ({int(c)} px)" for v, c in list(zip(values, counts))[:10])
        more = f" and {len(values) - 10} more values" if len(values) > 10 else ""
        raise SegDatasetError(
            f"mask {path} has label values outside the valid range [{self.valid}]: {listed}{more} "
            f"({int(np.sum(counts))} of {size} px). Labels are never clipped: check that the dataset name matches "
            "the files (e.g. Cityscapes labelIds vs labelTrainIds, ADE20K's 0-150 encoding, classes.txt length)."
        )


# ------------------------------------------------------------------------------------------------- dataset


def _accepts_index(fn: Callable) -> bool:
    """True if `fn(image, mask, index)` is callable; plain `fn(image, mask)` transforms are supported too."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


def _to_image_tensor(image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)))


def _to_mask_tensor(mask: Any) -> torch.Tensor:
    if isinstance(mask, torch.Tensor):
        return mask.long()
    return torch.from_numpy(np.asarray(mask).astype(np.int64))


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise SegDatasetError(f"cannot read image {path}: {e}") from None


def read_mask(path: str | Path) -> np.ndarray:
    """Raw single-channel mask values (palette PNGs give their indices, which are the labels).

    A colour mask, an unreadable or a truncated file is a `SegDatasetError` naming the file (one line)."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            raw = None if mode in _COLOUR_MODES else np.asarray(im)
    # OSError covers PIL's "image file is truncated" and "broken data stream"; the others are corrupt headers.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SegDatasetError(
            f"mask {path} cannot be decoded ({e}): the file is truncated or not a PNG; extract it again from the "
            "dataset archive"
        ) from None
    if raw is None:
        raise SegDatasetError(
            f"mask {path} is a {mode} image; label masks must be single-channel PNGs of class ids "
            "(colour visualisations such as BDD100K colormaps/ or Cityscapes *_gtFine_color.png cannot be used)"
        )
    return raw


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image from its header only (PIL opens lazily: no pixel is decoded)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SegDatasetError(f"image {path} cannot be read ({e}); extract it again from the dataset archive") from None
    return h, w


class SegmentationDataset(Dataset):
    """(image, mask) pairs plus a label decoder; `transform(image, mask, index)` gets numpy arrays
    ((H, W, 3) uint8 RGB and (H, W) uint8 class ids / ignore) and may return numpy arrays or tensors."""

    def __init__(
        self,
        image_paths: Sequence[str | Path],
        mask_paths: Sequence[str | Path],
        info: SegDatasetInfo,
        decoder: LabelDecoder | Sequence[LabelDecoder],
        transform: Transform | None = None,
        names: Sequence[str] | None = None,
    ):
        self.image_paths = [Path(p) for p in image_paths]
        self.mask_paths = [Path(p) for p in mask_paths]
        if len(self.image_paths) != len(self.mask_paths):
            raise SegDatasetError(f"{len(self.image_paths)} images but {len(self.mask_paths)} masks")
        if not self.image_paths:
            raise SegDatasetError(f"{info.name}: the dataset is empty")
        self.info = info
        # One decoder for all samples, or one per sample (Cityscapes mixes labelTrainIds and labelIds).
        self.decoders = [decoder] * len(self) if isinstance(decoder, LabelDecoder) else list(decoder)
        if len(self.decoders) != len(self):
            raise ValueError(f"{len(self.decoders)} decoders for {len(self)} samples")
        self.names = list(names) if names is not None else [p.stem for p in self.image_paths]
        self.transform = transform
        self._pass_index = transform is not None and _accepts_index(transform)

    def __len__(self) -> int:
        return len(self.image_paths)

    def set_epoch(self, epoch: int) -> None:
        """Forward to the transform (SegTrainTransform mixes the epoch into its per-sample seed)."""
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded (image, mask) as numpy, before the transform."""
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        image = read_image(image_path)
        raw = read_mask(mask_path)
        if raw.shape[:2] != image.shape[:2]:
            raise SegDatasetError(
                f"mask {mask_path} is {raw.shape[0]}x{raw.shape[1]} (HxW) but its image {image_path} is "
                f"{image.shape[0]}x{image.shape[1]}; masks must have the image's resolution"
            )
        return image, self.decoders[index](raw, mask_path)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.load(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask, index) if self._pass_index else self.transform(image, mask)
        return {"image": _to_image_tensor(image), "mask": _to_mask_tensor(mask), "name": self.names[index]}

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.info.name!r}, {len(self)} samples, {self.info.num_classes} classes)"


# -------------------------------------------------------------------------------------------- file scanning


def _scan(folder: Path, extensions: Sequence[str], recursive: bool, suffix: str = "") -> dict[str, Path]:
    """key (relative path without extension and `suffix`, posix) -> file. Hidden entries are skipped."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    found: dict[str, Path] = {}
    for path in sorted(files):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() not in extensions:
            continue
        key = rel.with_suffix("").as_posix()
        if suffix:
            if not key.endswith(suffix):
                continue
            key = key[: -len(suffix)]
        if not path.is_file():
            continue
        if key in found:
            raise SegDatasetError(f"two files share the name {key!r} in {folder}: {found[key].name} and {path.name}")
        found[key] = path
    return found


def _examples(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_EXAMPLES])
    return shown + (", ..." if len(keys) > _MAX_EXAMPLES else "")


def _pair(
    images: dict[str, Path], masks: dict[str, Path], image_dir: Path, mask_dir: Path, what: str, pattern: str = ""
) -> list[str]:
    """Sorted keys present on both sides; any unpaired file is an error (a readout on a silent subset is wrong)."""
    if not images:
        pattern = pattern or "/".join(IMAGE_EXTENSIONS)
        raise SegDatasetError(f"{what}: the split is empty: no images ({pattern}) in {image_dir}")
    no_mask = sorted(images.keys() - masks.keys())
    no_image = sorted(masks.keys() - images.keys())
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} images have no mask (e.g. {_examples(no_mask)})")
        if no_image:
            parts.append(f"{len(no_image)} masks have no image (e.g. {_examples(no_image)})")
        raise SegDatasetError(
            f"{what}: images and masks do not pair up: {len(images)} images in {image_dir}, {len(masks)} masks in "
            f"{mask_dir}; " + "; ".join(parts)
        )
    return sorted(images)


def _listing(folder: Path) -> str:
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return "(unreadable)"
    if not entries:
        return "nothing (the folder is empty)"
    return ", ".join(entries[:10]) + (f" and {len(entries) - 10} more" if len(entries) > 10 else "")


def _guess(root: Path) -> str:
    """A hint naming the layout a wrong root probably is, or the sub-folder the user meant."""
    checks = [
        (("leftImg8bit",), "this looks like Cityscapes: use dataset 'cityscapes'"),
        (("gtFine",), "this looks like Cityscapes: use dataset 'cityscapes'"),
        (("images", "10k"), "this looks like BDD100K / SynthDrive: use dataset 'bdd100k' or 'synthdrive'"),
        (("images", "training"), "this looks like ADE20K: use dataset 'ade20k'"),
        (("ADEChallengeData2016",), "this looks like ADE20K: use dataset 'ade20k'"),
        (("images", "train"), "images/train/ exists: dataset 'wtsem' (annotations/) or 'folder' (masks/) may fit"),
        (("bdd100k",), f"did you mean the root {root / 'bdd100k'}?"),
        (("cityscapes",), f"did you mean the root {root / 'cityscapes'}?"),
    ]
    for parts, hint in checks:
        if root.joinpath(*parts).is_dir():
            return f" Hint: {hint}."
    return ""


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() + "/"


def _check_layout(root: Path, name: str, image_base: Path, mask_base: Path, extra: str = "") -> None:
    """Both top folders must exist; say which one is missing and what is there instead."""
    if not root.is_dir():
        raise SegDatasetError(f"{name}: dataset root {root} does not exist or is not a folder")
    has_images, has_masks = image_base.is_dir(), mask_base.is_dir()
    if has_images and has_masks:
        return
    want = f"expected {_rel(image_base, root)} and {_rel(mask_base, root)} under {root}"
    if has_images:
        msg = f"found {_rel(image_base, root)} but no {_rel(mask_base, root)}"
    elif has_masks:
        msg = f"found {_rel(mask_base, root)} but no {_rel(image_base, root)}"
    else:
        msg = f"found only: {_listing(root)}"
    raise SegDatasetError(f"{name}: wrong root or layout: {want}; {msg}.{extra}{_guess(root)}")


def _split_dir(base: Path, split: str, name: str, aliases: Mapping[str, str] | None = None) -> Path:
    candidates = [split] + ([aliases[split]] if aliases and split in aliases else [])
    for cand in candidates:
        if (base / cand).is_dir():
            return base / cand
    available = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    raise SegDatasetError(
        f"{name}: no split {split!r}: expected the folder {base / candidates[-1]}; "
        f"available splits in {base}: {', '.join(available) or 'none'}"
    )


_SPLIT_ALIASES = {"train": "training", "val": "validation", "training": "train", "validation": "val"}


# ----------------------------------------------------------------------------------------------- layouts


@dataclass
class _Found:
    image_paths: list[Path]
    mask_paths: list[Path]
    names: list[str]
    info: SegDatasetInfo
    decoder: LabelDecoder | list[LabelDecoder]


def _bdd_like(root: Path, split: str, name: str, info: SegDatasetInfo) -> _Found:
    image_base, mask_base = root / "images" / "10k", root / "labels" / "sem_seg" / "masks"
    extra = ""
    if not mask_base.is_dir() and (root / "labels" / "sem_seg" / "colormaps").is_dir():
        extra = " labels/sem_seg/colormaps/ holds RGB visualisations; the class-id masks are labels/sem_seg/masks/."
    if not image_base.is_dir() and (root / "images" / "100k").is_dir():
        extra += " images/100k/ (video frames) has no segmentation labels; the labelled set is images/10k/."
    _check_layout(root, name, image_base, mask_base, extra)
    image_dir = _split_dir(image_base, split, name)
    if not (mask_base / split).is_dir():
        note = " (BDD100K's test labels are not public: evaluate on val)" if split == "test" else ""
        raise SegDatasetError(f"{name}: found {image_dir} but no masks folder {mask_base / split}{note}")
    mask_dir = mask_base / split
    images = _scan(image_dir, IMAGE_EXTENSIONS, recursive=False)
    masks = _scan(mask_dir, MASK_EXTENSIONS, recursive=False)
    keys = _pair(images, masks, image_dir, mask_dir, f"{name} {split}")
    decoder = LabelDecoder.identity(info.num_classes, info.ignore_index)
    return _Found([images[k] for k in keys], [masks[k] for k in keys], keys, info, decoder)


def _bdd100k(root: Path, split: str) -> _Found:
    return _bdd_like(root, split, "bdd100k", SegDatasetInfo("bdd100k", BDD100K_CLASSES, BDD100K_PALETTE))


def _synthdrive(root: Path, split: str) -> _Found:
    classes, ignore = BDD100K_CLASSES, IGNORE_INDEX
    meta_path = root / "meta.json"
    if meta_path.is_file():  # the generator records its class list; prefer it over assuming BDD's 19
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise SegDatasetError(f"synthdrive: cannot read {meta_path}: {e}") from None
        if "classes" in meta:
            classes = tuple(str(c) for c in meta["classes"])
            ignore = int(meta.get("ignore_index", IGNORE_INDEX))
        if not classes or len(classes) >= 255 or ignore != IGNORE_INDEX:
            raise SegDatasetError(f"synthdrive: unsupported classes/ignore_index in {meta_path}")
    palette = BDD100K_PALETTE if classes == BDD100K_CLASSES else distinct_palette(len(classes))
    return _bdd_like(root, split, "synthdrive", SegDatasetInfo("synthdrive", classes, palette, ignore))


_CS_IMAGE, _CS_TRAIN_IDS, _CS_LABEL_IDS = "_leftImg8bit", "_gtFine_labelTrainIds", "_gtFine_labelIds"


def _cityscapes(root: Path, split: str) -> _Found:
    name = "cityscapes"
    image_base, mask_base = root / "leftImg8bit", root / "gtFine"
    extra = ""
    if not mask_base.is_dir() and (root / "gtCoarse").is_dir():
        extra = " Only gtCoarse/ is present; the readout uses the fine annotations (gtFine_trainvaltest.zip)."
    _check_layout(root, name, image_base, mask_base, extra)
    image_dir = _split_dir(image_base, split, name)
    mask_dir = _split_dir(mask_base, split, name)
    images = _scan(image_dir, (".png",), recursive=True, suffix=_CS_IMAGE)
    train_ids = _scan(mask_dir, MASK_EXTENSIONS, recursive=True, suffix=_CS_TRAIN_IDS)
    label_ids = _scan(mask_dir, MASK_EXTENSIONS, recursive=True, suffix=_CS_LABEL_IDS)
    if images and not train_ids and not label_ids:
        found = sorted(p.name for p in mask_dir.rglob("*.png"))[:_MAX_EXAMPLES]
        raise SegDatasetError(
            f"{name} {split}: no *{_CS_TRAIN_IDS}.png or *{_CS_LABEL_IDS}.png under {mask_dir} "
            f"(found {', '.join(found) or 'no PNGs'})"
        )
    # labelTrainIds (csCreateTrainIdLabelImgs output) is used as is; otherwise labelIds are converted on the fly.
    masks = label_ids | train_ids
    keys = _pair(images, masks, image_dir, mask_dir, f"{name} {split}", f"**/*{_CS_IMAGE}.png")
    identity, convert = LabelDecoder.identity(19), LabelDecoder.cityscapes_label_ids()
    decoders = [identity if k in train_ids else convert for k in keys]
    info = SegDatasetInfo(name, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE)
    return _Found([images[k] for k in keys], [masks[k] for k in keys], keys, info, decoders)


def _ade20k(root: Path, split: str) -> _Found:
    name = "ade20k"
    if (root / "ADEChallengeData2016").is_dir():  # accept the folder that contains the unzipped archive
        root = root / "ADEChallengeData2016"
    _check_layout(root, name, root / "images", root / "annotations")
    split_name = {"train": "training", "val": "validation"}.get(split, split)
    image_dir = _split_dir(root / "images", split_name, name)
    mask_dir = _split_dir(root / "annotations", split_name, name)
    images = _scan(image_dir, IMAGE_EXTENSIONS, recursive=False)
    masks = _scan(mask_dir, MASK_EXTENSIONS, recursive=False)
    keys = _pair(images, masks, image_dir, mask_dir, f"{name} {split}")
    info = SegDatasetInfo(name, ADE20K_CLASSES, ADE20K_PALETTE)
    return _Found([images[k] for k in keys], [masks[k] for k in keys], keys, info, LabelDecoder.reduce_zero_label(150))


LABEL_ENCODINGS: tuple[str, ...] = ("auto", "zero_based", "one_based")
_ENCODINGS_TEXT = ", ".join(LABEL_ENCODINGS)
_WTSEM_CLASSES = len(ADE20K_CLASSES)


def _wtsem(root: Path, split: str, encoding: str = "auto") -> _Found:
    # Assumed layout (the public release, agentic-learning-ai-lab/Walking-Tours-Semantic on the Hugging Face hub,
    # documents none that we could read): ROOT/images/<split>/**/<frame>.{jpg,png} and
    # ROOT/annotations/<split>/**/<frame>.png, same relative path. The label encoding is not documented either:
    # 0-149 (zero_based) or ADE-style 1-150 with 0 = unlabelled (one_based); "auto" reads it off the train masks.
    name = "wtsem"
    if encoding not in LABEL_ENCODINGS:
        raise SegDatasetError(f"wtsem: unknown label encoding {encoding!r}; choose one of {_ENCODINGS_TEXT}")
    _check_layout(root, name, root / "images", root / "annotations")
    image_dir = _split_dir(root / "images", split, name, _SPLIT_ALIASES)
    mask_dir = _split_dir(root / "annotations", split, name, _SPLIT_ALIASES)
    images = _scan(image_dir, (".jpg", ".jpeg", ".png"), recursive=True)
    masks = _scan(mask_dir, MASK_EXTENSIONS, recursive=True)
    keys = _pair(images, masks, image_dir, mask_dir, f"{name} {split}")
    note = "set explicitly"
    if encoding == "auto":
        # From the train masks (the same encoding for every split); a copy without them (val only) uses its own.
        has_train = any((root / "annotations" / d).is_dir() for d in ("train", "training"))
        probe_split = "train" if has_train else split
        found = _wtsem(root, probe_split, "one_based")  # any decoder: the scan reads raw values
        probe = SegmentationDataset(found.image_paths, found.mask_paths, found.info, found.decoder)
        scan = scan_masks(probe, progress=True, desc=f"wtsem: reading the {probe_split} masks for the label encoding")
        encoding, note = resolve_wtsem_encoding(scan, "auto", probe_split)
    decoder = LabelDecoder.identity(_WTSEM_CLASSES) if encoding == "zero_based" else \
        LabelDecoder.reduce_zero_label(_WTSEM_CLASSES)  # fmt: skip
    info = SegDatasetInfo(name, ADE20K_CLASSES, ADE20K_PALETTE, label_encoding=encoding, encoding_note=note)
    return _Found([images[k] for k in keys], [masks[k] for k in keys], keys, info, decoder)


def read_classes_txt(path: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...], bool]:
    """Parse a folder dataset's classes.txt: `name` or `name,r,g,b` per line; `# reduce_zero_label` switches on the
    ADE-style encoding; other `#` lines and blank lines are ignored. Returns (classes, palette, reduce_zero_label)."""
    classes: list[str] = []
    colors: list[tuple[int, int, int] | None] = []
    reduce_zero = False
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            reduce_zero |= line.lstrip("#").strip().lower() == "reduce_zero_label"
            continue
        fields = [f.strip() for f in line.rsplit(",", 3)]
        if len(fields) == 4 and all(f.lstrip("-").isdigit() for f in fields[1:]):
            rgb = tuple(int(f) for f in fields[1:])
            if not all(0 <= v <= 255 for v in rgb):
                raise SegDatasetError(f"{path}:{lineno}: colour {rgb} is outside 0..255")
            classes.append(fields[0])
            colors.append(rgb)  # type: ignore[arg-type]
        else:
            classes.append(line)
            colors.append(None)
    if not classes:
        raise SegDatasetError(f"{path} lists no classes (one class name per line, optionally 'name,r,g,b')")
    limit = 254 if reduce_zero else 255  # raw 255 is always ignore
    if len(classes) > limit:
        raise SegDatasetError(f"{path} lists {len(classes)} classes; 8-bit masks hold at most {limit}")
    if len(set(classes)) != len(classes):
        dupes = sorted({c for c in classes if classes.count(c) > 1})
        raise SegDatasetError(f"{path}: duplicate class names {dupes}")
    fallback = distinct_palette(len(classes))
    palette = tuple(c if c is not None else fallback[i] for i, c in enumerate(colors))
    return tuple(classes), palette, reduce_zero


def _folder(root: Path, split: str) -> _Found:
    name = "folder"
    _check_layout(root, name, root / "images", root / "masks")
    classes_txt = root / "classes.txt"
    if not classes_txt.is_file():
        raise SegDatasetError(
            f"{name}: missing {classes_txt}: list one class name per line (optionally 'name,r,g,b'); "
            "mask value k is the k-th line (0-based), 255 = ignore"
        )
    classes, palette, reduce_zero = read_classes_txt(classes_txt)
    image_dir = _split_dir(root / "images", split, name, _SPLIT_ALIASES)
    mask_dir = _split_dir(root / "masks", split, name, _SPLIT_ALIASES)
    images = _scan(image_dir, IMAGE_EXTENSIONS, recursive=True)
    masks = _scan(mask_dir, MASK_EXTENSIONS, recursive=True)
    keys = _pair(images, masks, image_dir, mask_dir, f"{name} {split}")
    n = len(classes)
    decoder = LabelDecoder.reduce_zero_label(n) if reduce_zero else LabelDecoder.identity(n)
    info = SegDatasetInfo(name, classes, palette)
    return _Found([images[k] for k in keys], [masks[k] for k in keys], keys, info, decoder)


_LAYOUTS: dict[str, Callable[[Path, str], _Found]] = {
    "bdd100k": _bdd100k,
    "synthdrive": _synthdrive,
    "cityscapes": _cityscapes,
    "ade20k": _ade20k,
    "wtsem": _wtsem,
    "folder": _folder,
}


def build_segmentation_dataset(
    name: str, root: str | Path, split: str = "train", transform: Transform | None = None, encoding: str = "auto"
) -> SegmentationDataset:
    """Scan `root` in the layout `name` (one of DATASET_NAMES) and return the split's dataset.

    `encoding` (WT-Sem only; the others have one documented encoding): "zero_based", "one_based" or "auto" (read off
    the train masks, see `resolve_wtsem_encoding`). Raises SegDatasetError for a wrong root/layout, unpaired files
    or an empty split; masks with the wrong size or out-of-range values raise when the sample is loaded, or all at
    once, before any training, with `check_segmentation_data`.
    """
    if name not in _LAYOUTS:
        raise SegDatasetError(f"unknown segmentation dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if name == "wtsem":
        found = _wtsem(Path(root).expanduser(), split, encoding)
    elif encoding != "auto":
        raise SegDatasetError(f"{name}: label encoding {encoding!r} applies to wtsem only; leave it at 'auto'")
    else:
        found = _LAYOUTS[name](Path(root).expanduser(), split)
    return SegmentationDataset(
        found.image_paths, found.mask_paths, found.info, found.decoder, transform=transform, names=found.names
    )


# ------------------------------------------------------------------------------------------ checking masks
#
# A bad mask used to surface only when the DataLoader reached it: for a val mask, after all readout training, as a
# multi-line worker traceback. `check_segmentation_data` reads every mask of the given splits once, up front: label
# files decoded (no image decode: the image size comes from its header), each reduced to a 256-bin histogram of its
# raw values, which is all the value check, the WT-Sem encoding and the class statistics need.


@dataclass
class MaskScan:
    """What `scan_masks` read: one raw-value histogram per mask."""

    mask_paths: list[Path]
    histograms: np.ndarray  # (N, 256) int64: pixels per raw value
    sizes: np.ndarray  # (N,) int64: pixels per mask
    seconds: float

    def first_with(self, values: Sequence[int]) -> Path:
        """The first mask holding any of `values` (callers know one does)."""
        rows = np.flatnonzero((self.histograms[:, list(values)] > 0).any(axis=1))
        return self.mask_paths[int(rows[0])]


def _scan_one(image_path: Path, mask_path: Path) -> tuple[np.ndarray, int]:
    h, w = image_size(image_path)
    try:
        with Image.open(mask_path) as im:
            mw, mh = im.size
            # 8-bit masks (the usual case): PIL's C histogram (0.6 ms for 720x1280; numpy's bincount 1.4 ms).
            hist = np.asarray(im.histogram(), dtype=np.int64) if im.mode in ("L", "P") and (mh, mw) == (h, w) else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        hist = None  # read_mask below reports it in its words
    if hist is not None:
        return hist, h * w
    raw = read_mask(mask_path)
    if raw.shape[:2] != (h, w):
        raise SegDatasetError(
            f"mask {mask_path} is {raw.shape[0]}x{raw.shape[1]} (HxW) but its image {image_path} is {h}x{w}; "
            "masks must have the image's resolution"
        )
    if raw.dtype == np.bool_:
        raw = raw.astype(np.uint8)
    if raw.dtype != np.uint8:  # 16/32-bit PNGs: anything outside 0..255 cannot be one of our labels
        bad = (raw < 0) | (raw > 255)
        if bad.any():
            LabelDecoder({}, "0-255")._raise(raw, bad, mask_path)
        raw = raw.astype(np.uint8)
    return np.bincount(raw.ravel(), minlength=256).astype(np.int64), int(raw.size)


class _ScanItems(Dataset):
    """Mask i -> (i, histogram, size, error message); errors travel as text, so a worker never prints a traceback."""

    def __init__(self, image_paths: Sequence[Path], mask_paths: Sequence[Path]):
        self.image_paths, self.mask_paths = image_paths, mask_paths

    def __len__(self) -> int:
        return len(self.mask_paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, int, str]:
        try:
            hist, size = _scan_one(self.image_paths[i], self.mask_paths[i])
        except SegDatasetError as e:
            return i, None, 0, str(e)
        return i, hist, size, ""


def _as_list(items: list) -> list:
    return items


_PROGRESS_MIN = 200  # masks: a progress bar below that would only flicker
_PARALLEL_MIN = 64  # masks: below that, starting worker processes costs more than it saves


def scan_masks(
    ds: SegmentationDataset,
    limit: int | None = None,
    workers: int = 0,
    progress: bool | Callable[[int, int], None] = False,
    desc: str = "checking masks",
) -> MaskScan:
    """Read the first `limit` masks of `ds` (all by default) once: decode each label file, check it is single-channel
    and has its image's size (image header only), and count its raw values. Raises `SegDatasetError` naming the
    first bad file (in file order). `workers` > 0 reads in DataLoader worker processes; `progress` is a tqdm bar
    (True, shown for 200+ masks) or a `progress(done, total)` callback."""
    n = len(ds) if limit is None else min(limit, len(ds))
    t0 = time.perf_counter()
    items = _ScanItems(ds.image_paths[:n], ds.mask_paths[:n])
    hists = np.zeros((n, 256), dtype=np.int64)
    sizes = np.zeros(n, dtype=np.int64)
    if workers > 0 and n >= _PARALLEL_MIN:
        chunks: Any = DataLoader(items, batch_size=16, num_workers=min(workers, n), collate_fn=_as_list)
    else:
        chunks = ([items[i]] for i in range(n))
    bar = progress_bar(n, desc, "mask", enabled=not callable(progress) and bool(progress) and n >= _PROGRESS_MIN,
                       leave=False)  # fmt: skip
    done = 0
    try:
        for chunk in chunks:
            for i, hist, size, error in chunk:
                if error:
                    raise SegDatasetError(error)
                hists[i], sizes[i] = hist, size
            done += len(chunk)
            bar.update(len(chunk))
            if callable(progress):
                progress(done, n)
    finally:
        bar.close()
    return MaskScan(list(ds.mask_paths[:n]), hists, sizes, time.perf_counter() - t0)


def decode_histograms(ds: SegmentationDataset, scan: MaskScan) -> np.ndarray:
    """Raw-value histograms -> decoded-label histograms (N, 256) through each sample's own decoder; a raw value the
    decoder has no entry for raises `SegDatasetError` naming the first such file and its values."""
    out = np.zeros_like(scan.histograms)
    groups: dict[int, list[int]] = {}
    for i in range(len(scan.mask_paths)):
        groups.setdefault(id(ds.decoders[i]), []).append(i)
    for rows in groups.values():
        decoder, h = ds.decoders[rows[0]], scan.histograms[rows]
        bad = ((h > 0) & (decoder.lut < 0)).any(axis=1)
        if bad.any():
            r = rows[int(np.flatnonzero(bad)[0])]
            decoder.decode_histogram(scan.histograms[r], scan.mask_paths[r])  # raises, naming the file
        decoded = np.zeros_like(h)
        for raw in np.flatnonzero(decoder.lut >= 0):
            decoded[:, decoder.lut[raw]] += h[:, raw]
        out[rows] = decoded
    return out


def resolve_wtsem_encoding(train: MaskScan, requested: str = "auto", split: str = "train") -> tuple[str, str]:
    """(encoding, how it was chosen) for WT-Sem from its train masks' raw values (255 = ignore in both):

    - a value above 150 fits neither encoding: refused, naming the first file;
    - 150 present: one_based (only the ADE-style encoding has it; its 0 = unlabelled);
    - no 0 at all: one_based (0-based masks would label "wall" 0 somewhere; OpenSeeD labels every pixel);
    - 0 present and every value <= 149: zero_based.
    An explicit `requested` encoding that the masks contradict (value 150 with zero_based) is refused by name."""
    if requested not in LABEL_ENCODINGS:
        raise SegDatasetError(
            f"wtsem: unknown label encoding {requested!r}; choose one of {', '.join(LABEL_ENCODINGS)}"
        )
    total = train.histograms.sum(axis=0)
    n, k = _WTSEM_CLASSES, len(train.mask_paths)
    above = [v for v in range(n + 1, 255) if total[v]]
    if above:
        path = train.first_with(above)
        raise SegDatasetError(
            f"mask {path}: values {', '.join(map(str, above[:5]))} fit neither WT-Sem encoding (0-149, or 1-150 with "
            "0 = unlabelled) nor 255 (ignore); is this the right --dataset?"
        )
    if total[n]:
        detected, why = "one_based", f"value {n} occurs ({int(total[n])} px), a class only in the 1-150 encoding"
    elif not total[0]:
        detected, why = "one_based", "no pixel is 0 (0-based masks would label 'wall' 0 somewhere)"
    else:
        hi = max(v for v in range(255) if total[v])
        detected, why = "zero_based", f"0 occurs ({int(total[0])} px) and the largest value is {hi} <= {n - 1}"
    why += f" in {k} {split} masks"
    if requested == "auto":
        return detected, f"detected: {why}"
    if requested == "zero_based" and total[n]:
        raise SegDatasetError(
            f"mask {train.first_with([n])}: value {n} is not a class id with label_encoding=zero_based (0-{n - 1}, "
            f"255 = ignore); these masks are 1-based (ADE-style, 0 = unlabelled): use label_encoding=one_based or auto"
        )
    if requested == detected:
        return requested, f"set explicitly; the masks agree ({why})"
    return requested, f"set explicitly; auto-detection would choose {detected} ({why})"


@dataclass
class DataCheck:
    """Result of `check_segmentation_data`: what was checked, and what later steps reuse."""

    dataset: str
    info: SegDatasetInfo
    masks: dict[str, int]  # split -> masks checked
    seconds: float
    histograms: dict[str, np.ndarray] = field(default_factory=dict)  # split -> decoded-label histograms (N, 256)
    sizes: dict[str, np.ndarray] = field(default_factory=dict)  # split -> pixels per mask

    @property
    def label_encoding(self) -> str | None:
        return self.info.label_encoding

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"masks_checked": dict(self.masks), "seconds": round(self.seconds, 1)}
        if self.info.label_encoding is not None:
            d["label_encoding"] = {"encoding": self.info.label_encoding, "how": self.info.encoding_note}
        return d

    def summary(self) -> str:
        counts = " + ".join(f"{n} {split}" for split, n in self.masks.items())
        line = f"checked {counts} masks (decode, size, values) in {self.seconds:.1f} s"
        if self.info.label_encoding is not None:
            line += f"; label encoding {self.info.label_encoding} ({self.info.encoding_note})"
        return line


def check_segmentation_data(
    name: str,
    root: str | Path,
    splits: Sequence[str] = ("train", "val"),
    encoding: str = "auto",
    workers: int = 0,
    progress: bool | Callable[[int, int], None] = False,
    limit: int | None = None,
) -> DataCheck:
    """Read every mask of `splits` (the first `limit` of each) once and fail on the first bad one with a one-line
    `SegDatasetError` naming the file, what is wrong and what to do: undecodable/truncated file, colour mask, size
    different from its image's, a value that is neither a class id nor the ignore index after the dataset's own
    decoding. For WT-Sem the label encoding is resolved from ALL train masks (`resolve_wtsem_encoding`). Returns the
    decoded-label histograms (for class statistics) and what was checked; `info.label_encoding` is what to pass
    to `build_segmentation_dataset` for the same decoding."""
    t0 = time.perf_counter()
    scans: dict[str, MaskScan] = {}
    note = ""
    if name == "wtsem":
        train = build_segmentation_dataset(name, root, "train", encoding="one_based")  # raw values only here
        scans["train"] = scan_masks(train, None, workers, progress, "checking train masks")
        encoding, note = resolve_wtsem_encoding(scans["train"], encoding)
    info = None
    check_masks: dict[str, int] = {}
    hists: dict[str, np.ndarray] = {}
    sizes: dict[str, np.ndarray] = {}
    for split in splits:
        ds = build_segmentation_dataset(name, root, split, encoding=encoding)
        scan = scans.get(split)
        if scan is None:
            scan = scan_masks(ds, limit, workers, progress, f"checking {split} masks")
        elif limit is not None:  # WT-Sem's train split, read in full for the encoding
            scan = MaskScan(scan.mask_paths[:limit], scan.histograms[:limit], scan.sizes[:limit], scan.seconds)
        hists[split] = decode_histograms(ds, scan)
        sizes[split] = scan.sizes
        check_masks[split] = len(scan.mask_paths)
        info = info or ds.info
    if info is None:
        raise ValueError("check_segmentation_data: no splits given")
    if note:
        info = dataclasses.replace(info, encoding_note=note)
    return DataCheck(name, info, check_masks, time.perf_counter() - t0, hists, sizes)
