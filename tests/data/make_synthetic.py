"""Tiny synthetic benchmark datasets in each built-in protocol's exact folder layout.

Usage as a script::

    python tests/data/make_synthetic.py --out /tmp/synth [--datasets loveda,udd5]

For every protocol it writes ``<out>/<name>/<layout.images>/...<image_suffix>`` and the
matching labels, reading folder names and suffixes from the protocol YAML. Images are
smooth colour blobs (PNG, JPEG or georeferenced GeoTIFF by suffix); labels are
single-channel uint8 (even images as ``L`` PNG, odd ones as palette ``P`` PNG whose
colours differ from the indices, or one-band GeoTIFF) with raw values in ``[0, K)``, or
``[0, K]`` for reduce_zero_label protocols (0 = ignored there), plus a few 255 pixels.
The output depends only on the arguments (the seed included).
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

from ovearth.data.protocols import DatasetProtocol, list_protocols, load_protocol

#: Protocols whose last synthetic image sits in a subfolder (tests the recursive search).
NESTED = ("openearthmap", "loveda")
SUBFOLDER = "part_b"
CORRUPTIONS = ("missing_label", "size_mismatch", "out_of_range", "multi_channel")


def image_stems(name: str, num_images: int = 3, nested: bool | None = None) -> list[str]:
    """Relative image paths without suffix that :func:`make_dataset` writes, in sorted order."""
    nested = name in NESTED if nested is None else nested
    stems = [f"{name}_{i:03d}" for i in range(num_images)]
    if nested and num_images > 1:
        stems[-1] = f"{SUBFOLDER}/{stems[-1]}"
    return sorted(stems)


def raw_label_range(protocol: DatasetProtocol) -> int:
    """Number of raw label values used: ``K``, or ``K + 1`` with reduce_zero_label."""
    k = len(protocol.vocabulary.classes)
    return k + 1 if protocol.reduce_zero_label else k


def _smooth(rng: np.random.Generator, channels: int, size: tuple[int, int]) -> np.ndarray:
    """``[channels, H, W]`` float32 smooth random fields (bicubic-upsampled noise)."""
    height, width = size
    out = np.empty((channels, height, width), np.float32)
    for c in range(channels):
        coarse = rng.random((max(2, height // 16), max(2, width // 16))).astype(np.float32)
        out[c] = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC))
    return out


def _make_pair(
    rng: np.random.Generator, values: int, size: tuple[int, int], block: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """A ``[H, W, 3]`` uint8 image and its ``[H, W]`` uint8 raw label.

    ``block`` > 1 makes the label constant on ``block x block`` tiles (8 keeps it exact
    through JPEG compression).
    """
    height, width = size
    coarse = (-(-height // block), -(-width // block))
    label = _smooth(rng, values, coarse).argmax(axis=0).astype(np.uint8)
    label.ravel()[:values] = np.arange(values, dtype=np.uint8)  # every value appears
    flat = rng.choice(np.arange(values, label.size), size=min(5, label.size - values), replace=False)
    label.ravel()[flat] = 255  # a few ignore pixels
    label = np.repeat(np.repeat(label, block, axis=0), block, axis=1)[:height, :width]
    colours = rng.integers(30, 226, (256, 3)).astype(np.float32)
    texture = (_smooth(rng, 3, size).transpose(1, 2, 0) - 0.5) * 120
    image = np.clip(colours[label] * 0.7 + texture + 40, 0, 255).astype(np.uint8)
    return image, label


def _write_image(path: Path, image: np.ndarray, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        height, width = image.shape[:2]
        transform = rasterio.Affine(0.5, 0.0, 500000.0 + 1000.0 * index, 0.0, -0.5, 5400000.0)
        with rasterio.open(
            path, "w", driver="GTiff", height=height, width=width, count=3, dtype="uint8",
            crs="EPSG:32633", transform=transform, photometric="RGB",
        ) as out:  # fmt: skip
            out.write(image.transpose(2, 0, 1))
    elif suffix in (".jpg", ".jpeg"):
        Image.fromarray(image, mode="RGB").save(path, format="JPEG", quality=95)
    else:
        Image.fromarray(image, mode="RGB").save(path, format="PNG")


def write_label(path: Path, label: np.ndarray, palette: bool = False, like: Path | None = None) -> None:
    """Write a raw label: one-band uint8 GeoTIFF for ``.tif``, else ``L`` or palette PNG.

    Args:
        path: output file (its suffix picks the format).
        label: ``[H, W]`` uint8 (or ``[H, W, 3]`` to write a deliberately bad RGB label).
        palette: write a ``P`` PNG whose palette colours differ from the indices.
        like: a GeoTIFF image whose CRS and transform the label copies.

    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        bands = label[None] if label.ndim == 2 else label.transpose(2, 0, 1)
        profile = dict(driver="GTiff", height=label.shape[0], width=label.shape[1], count=bands.shape[0])
        if like is not None and like.suffix.lower() in (".tif", ".tiff"):
            with rasterio.open(like) as src:
                profile.update(crs=src.crs, transform=src.transform)
        with rasterio.open(path, "w", dtype="uint8", **profile) as out:
            out.write(bands)
        return
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    if label.ndim == 3:
        Image.fromarray(label, mode="RGB").save(path, format=fmt)
    elif palette and fmt == "PNG":
        picture = Image.fromarray(label, mode="P")
        picture.putpalette([(37 * i + 11) % 256 for i in range(256)] * 3)
        picture.save(path, format="PNG")
    else:
        options = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
        Image.fromarray(label, mode="L").save(path, format=fmt, **options)


def make_dataset(
    name: str,
    root: Path,
    num_images: int = 3,
    size: tuple[int, int] = (64, 80),
    seed: int = 0,
    nested: bool | None = None,
) -> Path:
    """Write a tiny dataset in protocol ``name``'s layout under ``root / name``.

    Args:
        name: built-in protocol name.
        root: parent folder; the dataset root is ``root / name`` (files are overwritten).
        num_images: number of image/label pairs.
        size: ``(height, width)`` of every image.
        seed: random seed (with the name, it fixes every pixel).
        nested: put the last image in a subfolder; default: for the ``NESTED`` protocols.

    Returns:
        The dataset root, to pass to ``SegmentationDataset``.

    """
    protocol = load_protocol(name)
    layout = protocol.layout
    data_root = Path(root) / name
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    block = 8 if layout.label_suffix.lower().endswith((".jpg", ".jpeg")) else 1
    for index, stem in enumerate(image_stems(name, num_images, nested)):
        image, label = _make_pair(rng, raw_label_range(protocol), size, block=block)
        image_path = data_root / layout.images / (stem + layout.image_suffix)
        _write_image(image_path, image, index)
        label_path = data_root / layout.labels / (stem + layout.label_suffix)
        write_label(label_path, label, palette=index % 2 == 1, like=image_path)
    if layout.split:  # the protocol evaluates a listed subset in file order: list them reversed
        names = image_stems(name, num_images, nested)[::-1]
        (data_root / layout.split).write_text("\n".join(names) + "\n")
    return data_root


def make_all(root: Path, datasets: list[str] | None = None, **kwargs) -> dict[str, Path]:
    """:func:`make_dataset` for every built-in protocol (or the ``datasets`` given)."""
    return {name: make_dataset(name, Path(root), **kwargs) for name in (datasets or list_protocols())}


def label_path(data_root: Path, name: str, stem: str) -> Path:
    """The label file of image ``stem`` (relative path without suffix) in protocol ``name``."""
    layout = load_protocol(name).layout
    return Path(data_root) / layout.labels / (stem + layout.label_suffix)


def corrupt(data_root: Path, name: str, stem: str, kind: str) -> Path:
    """Break the label of one image to produce a bad case; returns the label path.

    Args:
        data_root: a dataset root written by :func:`make_dataset`.
        name: its protocol name.
        stem: the image's relative path without suffix (see :func:`image_stems`).
        kind: ``missing_label`` (delete it), ``size_mismatch`` (drop a row and a column),
            ``out_of_range`` (a raw value that maps to class ``K``), or
            ``multi_channel`` (rewrite it as RGB).

    """
    protocol = load_protocol(name)
    path = label_path(data_root, name, stem)
    if kind == "missing_label":
        path.unlink()
        return path
    from ovearth.data.datasets import read_label

    label = read_label(path)
    if kind == "size_mismatch":
        label = np.ascontiguousarray(label[:-1, :-1])
    elif kind == "out_of_range":
        label[3:5, 3:5] = raw_label_range(protocol)  # K (+1 when reduced): class index K
    elif kind == "multi_channel":
        label = np.repeat(label[..., None], 3, axis=2)
    else:
        raise ValueError(f"unknown corruption '{kind}'; use one of {', '.join(CORRUPTIONS)}")
    write_label(path, label, like=path)
    return path


def main(argv: list[str] | None = None) -> None:
    """Command line: write synthetic datasets under ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--datasets", default=None, help="comma-separated protocol names (default: all)")
    parser.add_argument("--num-images", type=int, default=3)
    parser.add_argument("--size", default="64,80", help="HEIGHT,WIDTH")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()] if args.datasets else None
    height, width = (int(v) for v in args.size.split(","))
    made = make_all(args.out, names, num_images=args.num_images, size=(height, width), seed=args.seed)
    for name, path in made.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
