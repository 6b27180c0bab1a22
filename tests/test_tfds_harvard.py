"""harvard_mif built from generated PNGs (always) and from ../shared/data/harvard (when present)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fuse4seg_jax.data import harvard, tfds_harvard
from fuse4seg_jax.data.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "harvard"


def _write_set(root, n=3, size=16):
    rng = np.random.default_rng(0)
    for i in range(n):
        mri = rng.integers(0, 256, (size, size), dtype=np.uint8)
        pet = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for sub, img in (("MRI", np.stack([mri] * 3, -1)), ("PET", pet)):
            (root / "MRI_PET" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "MRI_PET" / sub / f"{i + 1}.png")


def _records(builder):
    return list(tfds_harvard.tfds.as_numpy(builder.as_dataset(split="test", shuffle_files=False)))


def test_build_from_generated_pngs_keeps_values_and_colour(tmp_path):
    _write_set(tmp_path / "src")
    rows = _records(tfds_harvard.build(tmp_path / "src", "MRI_PET", tmp_path / "tfds"))
    assert sorted(r["pair_id"].decode() for r in rows) == ["1", "2", "3"]
    for r in rows:
        pid = r["pair_id"].decode()
        pet = harvard.read_png(tmp_path / "src" / "MRI_PET" / "PET" / f"{pid}.png")
        mri = harvard.read_png(tmp_path / "src" / "MRI_PET" / "MRI" / f"{pid}.png")
        np.testing.assert_allclose(r["modalities"][..., 0], mri[..., 0] / 255.0, atol=1e-6)
        assert r["is_colour"]
        # fused luma == the PET's own luma rebuilds the PET colours
        rgb = harvard.colourise(r["modalities"][..., 1], r["chroma"])
        np.testing.assert_allclose(rgb * 255.0, pet, atol=1.0)


def test_unreadable_png_stops_the_build_naming_the_file(tmp_path):
    _write_set(tmp_path / "src")
    bad = tmp_path / "src" / "MRI_PET" / "PET" / "2.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="2.png"):
        tfds_harvard.build(tmp_path / "src", "MRI_PET", tmp_path / "tfds")
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared Harvard data not found at {SHARED}")
def test_build_from_shared_harvard_data(tmp_path):
    rows = _records(tfds_harvard.build(SHARED, "MRI_SPECT", tmp_path / "tfds"))
    assert len(rows) == 73
    assert all(r["modalities"].shape == (256, 256, 2) and r["is_colour"] for r in rows)
