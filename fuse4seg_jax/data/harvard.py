"""Harvard Whole Brain Atlas (AANLIB) fusion test pairs: reading and colour handling.

Owns: finding and reading the registered MRI-CT / MRI-PET / MRI-SPECT PNG pairs
behind the CDDFuse medical-fusion benchmark, and the BT.601 YCbCr conversion used
to fuse colour functional images (numpy + PIL only).

Layout (see shared/data/SOURCES.md)::

    <root>/<set>/<modality>/<id>.png      set in SETS, e.g. MRI_PET/MRI/11.png
                                          and MRI_PET/PET/11.png are one pair

Same file name in the two modality folders = registered pair. Files are
256x256 RGB uint8; MRI and CT are grey stored as three equal channels, PET and
SPECT are pseudo-colour. Research use only: never copy these images into the
repository (tests generate their own PNGs).

Colour handling (docs/method.md section 2): a colour PET/SPECT image is converted to
YCbCr (BT.601 full range, as in JPEG/OpenCV); its Y channel is fused with the
MRI, and a colour fused image is rebuilt from the fused Y and the source Cb/Cr
(`colourise`). Fusion metrics are computed on luma. So a pair is returned as
two luma channels (`modalities`, MRI first) plus the other image's chroma.

Convention, in [0, 1] units (R, G, B = 8-bit values / 255)::

    Y  = 0.299 R + 0.587 G + 0.114 B                  (= cv2 BGR2GRAY before rounding)
    Cb = 0.5 + (B - Y) / 1.772 = 0.5 - 0.168736 R - 0.331264 G + 0.5 B
    Cr = 0.5 + (R - Y) / 1.402 = 0.5 + 0.5 R - 0.418688 G - 0.081312 B

The chroma offset 0.5 is OpenCV's for float images (8-bit JPEG uses 128/255,
0.002 higher); with it grey has Cb = Cr = 0.5 exactly and Cb, Cr span exactly
[0, 1]. Grey images get Y = value / 255 and Cb = Cr = 0.5 exactly. Note that
cv2's uint8 BGR2GRAY uses 14-bit fixed-point coefficients, so `round(255 * Y)`
can differ from it by one grey level for a few colour pixels (never for grey).

16-bit grey PNGs (`read_png`) are scaled to 8 bits by the bit depth of the data,
not always by 65535: medical exports often store 10-, 12- or 14-bit values
unshifted in a 16-bit PNG (12-bit data: at most 4095), which /257 would make
nearly black. The depth is the PNG's significant-bits (sBIT) chunk when present
and the values fit in it (values above 2**sBIT - 1 mean the writer scaled them
to the full 16-bit range as the PNG spec intends, so 16 bits are used);
otherwise the smallest of 8, 10, 12, 14, 16 bits that holds the image's maximum.
Values are then scaled by 255 / (2**depth - 1). The cost: a true 16-bit image
whose maximum happens to be small is brightened; for a fusion benchmark, where
every image is min-max comparable, that is preferred to a black one. (16-bit
RGB PNGs are reduced to 8 bits by PIL itself.)

All bad input raises `DataError` ("<file>: <problem>").
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from fuse4seg_jax.data.errors import DataError

__all__ = [
    "SETS",
    "colourise",
    "find_pairs",
    "load_set",
    "read_pair",
    "read_png",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
]

SETS = {"MRI_CT": ("MRI", "CT"), "MRI_PET": ("MRI", "PET"), "MRI_SPECT": ("MRI", "SPECT")}

# BT.601 full-range (JFIF) RGB -> YCbCr matrix, rows Y, Cb, Cr; applied to RGB in [0, 1].
_RGB_TO_YCBCR = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ],
    dtype=np.float64,
)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)
_OFFSET = np.array([0.0, 0.5, 0.5], dtype=np.float64)


def _last_axis(x, n: int, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim < 1 or arr.shape[-1] != n:
        raise ValueError(f"{name}: expected shape (..., {n}), got {arr.shape}")
    return arr


def rgb_to_ycbcr(rgb) -> np.ndarray:
    """(..., 3) RGB, uint8 or float in [0, 255] -> (..., 3) float32 Y, Cb, Cr in [0, 1]."""
    arr = _last_axis(rgb, 3, "rgb_to_ycbcr").astype(np.float64) / 255.0
    out = arr @ _RGB_TO_YCBCR.T + _OFFSET
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def ycbcr_to_rgb(ycbcr) -> np.ndarray:
    """(..., 3) Y, Cb, Cr in [0, 1] -> (..., 3) float32 RGB in [0, 1] (clipped)."""
    arr = _last_axis(ycbcr, 3, "ycbcr_to_rgb").astype(np.float64)
    out = (arr - _OFFSET) @ _YCBCR_TO_RGB.T
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def colourise(fused_y, cbcr) -> np.ndarray:
    """Fused luma (H, W) in [0, 1] + source chroma (H, W, 2) in [0, 1] -> RGB (H, W, 3) float32.

    Leading batch axes are allowed: fused_y (..., H, W) with cbcr (..., H, W, 2).
    A trailing channel axis of size 1 on fused_y is accepted and dropped.
    """
    y = np.asarray(fused_y, dtype=np.float64)
    c = _last_axis(cbcr, 2, "colourise cbcr").astype(np.float64)
    if y.ndim == c.ndim and y.shape[-1] == 1:
        y = y[..., 0]
    if y.shape != c.shape[:-1]:
        raise ValueError(
            f"colourise: fused_y shape {y.shape} does not match cbcr shape {c.shape[:-1]} + (2,)"
        )
    return ycbcr_to_rgb(np.concatenate([np.clip(y, 0.0, 1.0)[..., None], c], axis=-1))


_DEPTHS = (8, 10, 12, 14, 16)


def _significant_bits(path) -> int | None:
    """The grey sample's significant bits from the PNG's sBIT chunk (None if absent)."""
    with open(path, "rb") as f:
        f.read(8)  # signature (checked by PIL already)
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
                return None
            data = f.read(length)
            f.read(4)  # CRC
            if kind == b"sBIT" and data:
                return int(data[0])


def _grey16_depth(path, values: np.ndarray) -> int:
    """The bit depth the values of a 16-bit grey PNG were written with (module docstring)."""
    top = int(values.max()) if values.size else 0
    sbit = _significant_bits(path)
    if sbit is not None and 1 <= sbit <= 16:
        return sbit if top <= 2**sbit - 1 else 16
    return next(d for d in _DEPTHS if top <= 2**d - 1)


def read_png(path) -> np.ndarray:
    """One PNG -> (H, W, 3) uint8 RGB. Grey, palette, grey+alpha and RGBA are converted
    (alpha dropped); 16-bit grey is scaled to 8 bits by the bit depth of its data (sBIT
    chunk, else the smallest of 8/10/12/14/16 bits holding its maximum; see the module
    docstring), so 12-bit values in a 16-bit PNG keep their brightness. DataError names
    the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_file():
        raise DataError(path, "not a file")
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise DataError(path, f"not a PNG file (PIL reads it as {im.format})")
            im.load()  # decodes all pixel data: truncated/corrupt streams fail here
            mode = im.mode
            if mode in ("I", "I;16", "I;16B", "I;16L"):
                values = np.asarray(im)
                scale = 255.0 / (2 ** _grey16_depth(path, values) - 1)
                grey = values.astype(np.float64) * scale
                arr = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
                arr = np.repeat(arr[..., None], 3, axis=-1)
            else:
                arr = np.asarray(im if mode == "RGB" else im.convert("RGB"))
    except DataError:
        raise
    except Image.UnidentifiedImageError as e:
        raise DataError(path, "unreadable or corrupt PNG (not a recognised image format)") from e
    except Image.DecompressionBombError as e:
        raise DataError(path, f"image too large to decode ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # UnidentifiedImageError (not an image), "image file is truncated", bad CRC, zlib errors.
        raise DataError(path, f"unreadable or corrupt PNG ({type(e).__name__}: {e})") from e
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise DataError(path, f"unsupported PNG (mode {mode}, array {arr.shape} {arr.dtype})")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(path, f"empty image ({arr.shape[1]}x{arr.shape[0]})")
    return np.array(arr, dtype=np.uint8, order="C")  # own, writable copy


def _id_key(pair_id: str):
    # Numeric ids in numeric order first, any others after them by name.
    return (0, int(pair_id), pair_id) if pair_id.isdigit() else (1, 0, pair_id)


def _pngs(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() == ".png" and not p.name.startswith(".")
    }


def find_pairs(root, set_name) -> list[tuple[str, Path, Path]]:
    """Registered pairs of one set: sorted [(id, mri_path, other_path)] by numeric id."""
    root = Path(root)
    if set_name not in SETS:
        raise DataError(root, f"unknown Harvard set {set_name!r}; valid sets: {', '.join(SETS)}")
    if not root.is_dir():
        raise DataError(root, "Harvard data folder not found")
    set_dir = root / set_name
    if not set_dir.is_dir():
        hint = ""
        if root.name in SETS or any((root / m).is_dir() for m in ("MRI", "CT", "PET", "SPECT")):
            hint = " (root should be the folder holding MRI_CT/, MRI_PET/, MRI_SPECT/)"
        raise DataError(set_dir, f"set folder not found{hint}")
    mri_name, other_name = SETS[set_name]
    dirs = (set_dir / mri_name, set_dir / other_name)
    for d in dirs:
        if not d.is_dir():
            raise DataError(d, f"modality folder not found (expected {set_name}/{d.name}/<id>.png)")
    mri, other = _pngs(dirs[0]), _pngs(dirs[1])
    for have, have_name, lack, lack_dir in (
        (mri, mri_name, other, dirs[1]),
        (other, other_name, mri, dirs[0]),
    ):
        missing = sorted(set(have) - set(lack), key=_id_key)
        if missing:
            more = (
                f" ({len(missing)} unpaired {have_name} files in all)" if len(missing) > 1 else ""
            )
            raise DataError(
                have[missing[0]],
                f"no partner: {lack_dir / (missing[0] + '.png')} does not exist{more}",
            )
    if not mri:
        raise DataError(set_dir, f"no PNG pairs found in {mri_name}/ and {other_name}/")
    return [(i, mri[i], other[i]) for i in sorted(mri, key=_id_key)]


def _luma_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(H, W, 3) uint8 -> luma (H, W), chroma (H, W, 2) float32 in [0, 1], is_colour."""
    is_colour = bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 0] != rgb[..., 2]))
    if is_colour:
        ycc = rgb_to_ycbcr(rgb)
        return ycc[..., 0], ycc[..., 1:], True
    luma = rgb[..., 0].astype(np.float32) / np.float32(255.0)
    return luma, np.full(rgb.shape[:2] + (2,), 0.5, dtype=np.float32), False


def read_pair(mri_path, other_path) -> dict:
    """One registered pair -> {"modalities" (H, W, 2), "chroma" (H, W, 2), "is_colour"}.

    modalities[..., 0] is the MRI luma, modalities[..., 1] the other image's luma
    (Y); chroma is the other image's Cb, Cr (0.5 for grey images); all float32 in
    [0, 1]. is_colour: the other image's channels are not all equal.
    """
    mri_rgb = read_png(mri_path)
    other_rgb = read_png(other_path)
    if mri_rgb.shape != other_rgb.shape:
        (h1, w1), (h2, w2) = mri_rgb.shape[:2], other_rgb.shape[:2]
        raise DataError(
            mri_path,
            f"size {w1}x{h1} (WxH) does not match its partner {other_path} of size {w2}x{h2}",
        )
    mri_y, _, _ = _luma_chroma(mri_rgb)
    other_y, chroma, is_colour = _luma_chroma(other_rgb)
    return {
        "modalities": np.stack([mri_y, other_y], axis=-1),
        "chroma": chroma,
        "is_colour": is_colour,
    }


def load_set(root, set_name) -> dict:
    """All pairs of a set stacked: "modalities" (N, H, W, 2), "chroma" (N, H, W, 2),
    "is_colour" (N,) bool, "pair_id" (N,) str; in numeric id order."""
    pairs = find_pairs(root, set_name)
    items = []
    for _, mri_path, other_path in pairs:
        item = read_pair(mri_path, other_path)
        if items and item["modalities"].shape != items[0]["modalities"].shape:
            h0, w0 = items[0]["modalities"].shape[:2]
            h, w = item["modalities"].shape[:2]
            raise DataError(
                mri_path,
                f"size {w}x{h} (WxH) differs from {w0}x{h0} of the first pair "
                f"({pairs[0][1].name}); a set must have one image size to be stacked",
            )
        items.append(item)
    return {
        "modalities": np.stack([it["modalities"] for it in items]),
        "chroma": np.stack([it["chroma"] for it in items]),
        "is_colour": np.array([it["is_colour"] for it in items], dtype=bool),
        "pair_id": np.array([p[0] for p in pairs], dtype=str),
    }
