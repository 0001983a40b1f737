"""Datasets as in-memory uint8 tensors with fixed train/val/test splits.

Every source (the embedded digits, an ImageFolder, a timm dataset) is decoded once
into ``uint8`` tensors of shape ``[N, 3, S, S]``; batches are normalised on the fly.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from autocompress.config import DataConfig
from autocompress.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Split:
    """One split: uint8 images and int64 labels, plus the normalisation to apply."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: bool = False
    _samples: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B,3,H,W]`` → normalised float32."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std

    def batches(
        self, batch_size: int, *, shuffle: bool = False, seed: int = 0, train: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields ``(inputs, labels)``; with ``train`` and an augmenting split, random crops and flips."""
        n = len(self) if limit is None else min(limit, len(self))
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n] if shuffle else torch.arange(n)
        gen = torch.Generator().manual_seed(seed + 1)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            images = self.images[idx]
            if train and self.augment:
                images = _crop_flip(images, gen)
            yield self.normalise(images), self.labels[idx]

    def sample(self, n: int, seed: int = 0) -> "Split":
        """A fixed, class-stratified random sample of ``n`` images (the whole split when ``n`` covers it).

        Per-epoch accuracy is read on it: the first ``n`` images of a folder listed class by class
        would be one class.
        """
        if n >= len(self):
            return self
        key = (n, seed)
        if key not in self._samples:
            from sklearn.model_selection import train_test_split

            idx = np.arange(len(self))
            try:
                keep, _ = train_test_split(idx, train_size=n, stratify=self.labels.numpy(), random_state=seed)
            except ValueError:  # a class too small to stratify: a plain random sample
                keep = np.random.default_rng(seed).permutation(idx)[:n]
            keep = torch.as_tensor(np.sort(keep))
            self._samples[key] = Split(self.images[keep], self.labels[keep], self.mean, self.std, self.augment)
        return self._samples[key]

    def example(self, batch_size: int = 1) -> torch.Tensor:
        """The first ``batch_size`` images, normalised: the example input for export and tracing."""
        return self.normalise(self.images[:batch_size])


@dataclass
class DataBundle:
    """Train, validation and held-out test splits of one dataset."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    classes: list[str]
    img_size: int
    notes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.train.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.train.std

    def summary(self) -> dict:
        return {
            "train": len(self.train), "val": len(self.val), "test": len(self.test),
            "num_classes": self.num_classes, "classes": self.classes, "img_size": self.img_size,
            "mean": list(self.mean), "std": list(self.std), "notes": self.notes,
        }


def _crop_flip(images: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """A random crop of the reflect-padded image and a random horizontal flip, drawn per image."""
    b, c, h, w = images.shape
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(torch.uint8)
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen)
    rows = (offsets[:, 0, None] + torch.arange(h))[:, None, :, None]
    cols = (offsets[:, 1, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out.contiguous()


def normalisation(model, data: DataConfig) -> tuple[tuple[float, float, float] | None, tuple[float, float, float] | None, str]:
    """The input normalisation a run should use, and where it comes from (said in one line at the start).

    In order: ``data.mean``/``data.std`` when set; the checkpoint's sidecar JSON (``<checkpoint>.json``
    with ``mean`` and ``std``, as the trainer wrote it); timm's pretrained config for pretrained weights;
    else the dataset's own default (``None``).

    Args:
        model: The :class:`~autocompress.config.schema.ModelConfig`.
        data: The data config.

    Returns:
        ``(mean, std, source)``; mean and std are ``None`` for the dataset default.

    Raises:
        UserError: A sidecar JSON that cannot be read, or whose mean/std are not three numbers.
    """
    if data.mean is not None and data.std is not None:
        return data.mean, data.std, "the config (data.mean, data.std)"
    if model.checkpoint is not None:
        sidecar = Path(model.checkpoint).with_suffix(".json")
        if sidecar.is_file():
            try:
                info = json.loads(sidecar.read_text())
                mean, std = info.get("mean"), info.get("std")
                if mean is not None or std is not None:
                    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
                    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
                        raise ValueError("mean and std must be three numbers, std above 0")
                    return mean, std, f"the checkpoint's sidecar {sidecar}"
            except (OSError, ValueError, TypeError) as err:
                raise UserError(f"model.checkpoint: its sidecar {sidecar} has no usable mean/std ({err})") from None
    if model.pretrained:
        import timm

        cfg = timm.get_pretrained_cfg(model.name)
        if cfg is not None and getattr(cfg, "mean", None) and getattr(cfg, "std", None):
            return tuple(cfg.mean), tuple(cfg.std), f"timm's pretrained config of {model.name}"
    default = {"digits": "the training split's own statistics"}.get(data.source, "ImageNet's statistics")
    return data.mean, data.std, f"the dataset default ({default})"


def config_key(config: DataConfig, img_size: int) -> str:
    """A short hash naming one dataset configuration."""
    blob = json.dumps([config.model_dump(mode="json"), img_size], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_data(config: DataConfig, img_size: int) -> DataBundle:
    """Loads (and memoises per process) the dataset a config names.

    Raises:
        UserError: The path does not exist, holds no images, or the timm dataset cannot be made.
    """
    return _load_cached(config.model_dump_json(), img_size)


@functools.lru_cache(maxsize=4)
def _load_cached(config_json: str, img_size: int) -> DataBundle:
    config = DataConfig.model_validate_json(config_json)
    if config.source == "digits":
        return _digits(config, img_size)
    if config.source == "imagefolder":
        return _imagefolder(config, img_size)
    return _timm_dataset(config, img_size)


def _cap(images: torch.Tensor, labels: torch.Tensor, max_samples: int | None, seed: int):
    if max_samples is None or len(labels) <= max_samples:
        return images, labels
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    try:
        keep, _ = train_test_split(idx, train_size=max_samples, stratify=labels.numpy(), random_state=seed)
    except ValueError:
        keep = np.random.default_rng(seed).permutation(idx)[:max_samples]
    keep = torch.as_tensor(np.sort(keep))
    return images[keep], labels[keep]


def _split(images, labels, fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    a, b = train_test_split(idx, test_size=fraction, stratify=labels.numpy(), random_state=seed)
    a, b = torch.as_tensor(np.sort(a)), torch.as_tensor(np.sort(b))
    return (images[a], labels[a]), (images[b], labels[b])


def _digits(config: DataConfig, img_size: int) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    pixels = F.interpolate(pixels, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    images, labels = _cap(images, labels, config.max_samples, config.seed)
    (train_x, train_y), (rest_x, rest_y) = _split(images, labels, 0.4, config.seed)
    (val_x, val_y), (test_x, test_y) = _split(rest_x, rest_y, 0.5, config.seed)
    mean = config.mean or (round(float(train_x.float().mean() / 255), 4),) * 3
    std = config.std or (round(float(train_x.float().std() / 255), 4),) * 3
    make = lambda x, y: Split(x, y, mean, std, augment=False)  # noqa: E731
    return DataBundle(
        make(train_x, train_y), make(val_x, val_y), make(test_x, test_y),
        num_classes=10, classes=[str(i) for i in range(10)], img_size=img_size,
        notes=["scikit-learn digits: 8x8 upsampled to 3x%dx%d; split 60/20/20 stratified "
               "(validation and test are both held out of training, whatever data.val_from)" % (img_size, img_size)],
    )


def _list_images(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                files.append(file)
                labels.append(label)
    return files, labels, classes


def _decode(files: list[Path], img_size: int) -> tuple[torch.Tensor, list[int], list[tuple[Path, str]]]:
    """Decodes images to uint8 ``[N, 3, S, S]``; an unreadable file is skipped.

    Returns:
        The images that could be read, their indices in ``files``, and ``(file, reason)`` of each skipped one.
    """
    from PIL import Image

    out = torch.empty((len(files), 3, img_size, img_size), dtype=torch.uint8)
    kept: list[int] = []
    skipped: list[tuple[Path, str]] = []
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                image = _to_rgb(image)
                if image.size != (img_size, img_size):
                    image = image.resize((img_size, img_size), Image.BILINEAR)
                pixels = np.asarray(image).copy()
        except Exception as err:  # PIL raises many kinds for a truncated, garbage or unsupported file
            reason = (str(err).replace(str(file), file.name).splitlines() or [type(err).__name__])[0]
            skipped.append((file, reason[:120]))
            continue
        out[len(kept)] = torch.from_numpy(pixels).permute(2, 0, 1)
        kept.append(i)
    return out[: len(kept)], kept, skipped


def _to_rgb(image):
    """8-bit RGB of any mode: 16-bit and 32-bit grey and float images are scaled, not clipped to white."""
    from PIL import Image

    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.float64)
        top = float(pixels.max()) if pixels.size else 0.0
        if image.mode == "F" and top <= 1.0:
            scale = 255.0
        elif image.mode.startswith("I;16") or 255 < top <= 65535:
            scale = 255.0 / 65535.0
        elif top > 65535:
            scale = 255.0 / top
        else:
            scale = 1.0
        grey = np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def _imagefolder(config: DataConfig, img_size: int) -> DataBundle:
    root = Path(config.path)
    if not root.is_dir():
        raise UserError(f"data.path: folder not found: {root}")
    if not (root / "train").is_dir():
        raise UserError(f"data.path: {root} has no train/ folder; expected train/ and val/ or test/ (ImageFolder layout)")
    splits, classes = {}, None
    for name in ("train", "val", "test"):
        if (root / name).is_dir():
            files, labels, names = _list_images(root / name)
            if not files:
                raise UserError(f"data.path: {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folders")
            if classes is not None and names != classes:
                raise UserError(f"data.path: {root / name} has classes {names[:5]}... but train has {classes[:5]}...")
            classes = classes or names
            splits[name] = (files, labels)
    notes = [f"ImageFolder {root}"]
    rng = np.random.default_rng(config.seed)

    def take(name: str, cap: int | None):
        files, labels = splits[name]
        idx = np.arange(len(files))
        if cap is not None and len(files) > cap:
            idx = np.sort(rng.permutation(idx)[:cap])
        images, kept, skipped = _decode([files[i] for i in idx], img_size)
        if skipped:
            _check_readable(root / name, classes, [labels[i] for i in idx], kept, skipped)
            shown = ", ".join(str(f.relative_to(root)) for f, _ in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
            notes.append(f"{name}/: {len(skipped)} of {len(idx)} images unreadable and skipped ({shown}; "
                         f"first: {skipped[0][1]})")
        return images, torch.as_tensor([labels[idx[k]] for k in kept], dtype=torch.int64)

    train = take("train", config.max_samples)
    if config.val_from == "test":
        if "test" not in splits:
            raise UserError(f"data.val_from: test needs a test/ folder in {root}")
        val, test = _halves(take("test", config.max_samples), root / "test", config.seed)
        notes.append("val_from test: the test folder split in fixed stratified halves, validation and held-out test"
                     + ("; val/ is not used" if "val" in splits else ""))
        mean, std = config.mean or IMAGENET_MEAN, config.std or IMAGENET_STD
        make = lambda xy: Split(xy[0], xy[1], mean, std, augment=True)  # noqa: E731
        return DataBundle(make(train), make(val), make(test), len(classes), classes, img_size, notes)
    if "val" in splits:
        val = take("val", config.max_samples)
    else:
        try:
            train, val = _split(*train, config.val_fraction, config.seed)
        except ValueError as err:  # scikit-learn: a class with one image, or fewer held-out images than classes
            raise UserError(f"data.path: {root / 'train'} cannot hold out {config.val_fraction:.0%} as validation, "
                            f"{len(train[1])} readable images in {len(classes)} classes ({str(err).splitlines()[0]}); "
                            "add a val/ folder or more images per class") from None
        notes.append(f"no val/: {config.val_fraction:.0%} of train held out as validation")
    if "test" in splits:
        test = take("test", config.max_samples)
    else:
        test = val
        notes.append("no test/: the validation split doubles as the held-out test split")
    mean, std = config.mean or IMAGENET_MEAN, config.std or IMAGENET_STD
    make = lambda xy: Split(xy[0], xy[1], mean, std, augment=True)  # noqa: E731
    return DataBundle(make(train), make(val), make(test), len(classes), classes, img_size, notes)


def _halves(split: tuple[torch.Tensor, torch.Tensor], where: Path | str, seed: int):
    """A split cut into two fixed, stratified halves (validation, test)."""
    try:
        return _split(*split, 0.5, seed)
    except ValueError as err:  # a class with a single image
        raise UserError(f"data.val_from: {where} cannot be halved by class ({str(err).splitlines()[0]}); "
                        "it needs at least two images of every class") from None


def _check_readable(folder: Path, classes: list[str], labels: list[int], kept: list[int],
                    skipped: list[tuple[Path, str]]) -> None:
    """Raises a UserError naming the split folder, or a class folder, none of whose images could be read."""
    first = f"{skipped[0][0].name}: {skipped[0][1]}"
    if not kept:
        raise UserError(f"data.path: none of the {len(labels)} images in {folder} could be read (first: {first})")
    readable = {labels[k] for k in kept}
    for label in sorted(set(labels) - readable):
        bad = [(f, why) for f, why in skipped if f.parent.is_relative_to(folder / classes[label])]
        raise UserError(f"data.path: none of the {labels.count(label)} images in {folder / classes[label]} could be read "
                        f"(first: {bad[0][0].name}: {bad[0][1]})")


def _timm_dataset(config: DataConfig, img_size: int) -> DataBundle:
    from timm.data import create_dataset

    root = str(config.path) if config.path else str(Path.home() / ".cache" / "autocompress" / "datasets")
    loaded = {}
    for split in ("train", "validation"):
        try:
            ds = create_dataset(config.name, root=root, split=split, download=False, is_training=False)
        except Exception as err:  # timm raises many kinds for an unknown or absent dataset
            raise UserError(f"data.name: timm could not open dataset {config.name!r} under {root}: {str(err).splitlines()[0][:200]}") from None
        n = len(ds)
        idx = np.arange(n)
        if config.max_samples and n > config.max_samples:
            idx = np.sort(np.random.default_rng(config.seed).permutation(idx)[: config.max_samples])
        images = torch.empty((len(idx), 3, img_size, img_size), dtype=torch.uint8)
        labels = torch.empty(len(idx), dtype=torch.int64)
        for j, i in enumerate(idx):
            image, label = ds[int(i)]
            image = image.convert("RGB").resize((img_size, img_size))
            images[j] = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
            labels[j] = int(label)
        loaded[split] = (images, labels)
    if config.val_from == "test":
        train = loaded["train"]
        val, test = _halves(loaded["validation"], f"timm dataset {config.name} (validation split)", config.seed)
    else:
        train, val = _split(*loaded["train"], config.val_fraction, config.seed)
        test = loaded["validation"]
    num_classes = int(max(loaded["train"][1].max(), loaded["validation"][1].max())) + 1
    mean, std = config.mean or IMAGENET_MEAN, config.std or IMAGENET_STD
    make = lambda xy: Split(xy[0], xy[1], mean, std, augment=True)  # noqa: E731
    return DataBundle(
        make(train), make(val), make(test), num_classes,
        [str(i) for i in range(num_classes)], img_size,
        [f"timm dataset {config.name}; " + ("its validation split halved: validation and held-out test"
                                            if config.val_from == "test" else
                                            "validation split is the held-out test split")],
    )
