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


def test_a_changed_source_folder_builds_a_new_dataset(tmp_path):
    """Same tfds_dir, another folder (or an edited PNG): the records come from the new
    source, never from the dataset built from the old one; an empty folder is an error."""
    tfds_dir = tmp_path / "tfds"
    _write_set(tmp_path / "a", n=3)
    assert len(_records(tfds_harvard.build(tmp_path / "a", "MRI_PET", tfds_dir))) == 3
    _write_set(tmp_path / "b", n=2)
    rows = _records(tfds_harvard.build(tmp_path / "b", "MRI_PET", tfds_dir))
    assert sorted(r["pair_id"].decode() for r in rows) == ["1", "2"]
    # an edited PNG in the same folder
    edited = tmp_path / "b" / "MRI_PET" / "MRI" / "1.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(edited)
    rows = _records(tfds_harvard.build(tmp_path / "b", "MRI_PET", tfds_dir))
    first = next(r for r in rows if r["pair_id"] == b"1")
    np.testing.assert_allclose(first["modalities"][..., 0], 200 / 255.0, atol=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="set folder not found"):
        tfds_harvard.build(tmp_path / "empty", "MRI_PET", tfds_dir)


def test_a_pair_of_different_sizes_stops_the_build_naming_both_files(tmp_path):
    _write_set(tmp_path / "src")
    small = tmp_path / "src" / "MRI_PET" / "PET" / "2.png"
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(small)
    with pytest.raises(DataError) as e:
        tfds_harvard.build(tmp_path / "src", "MRI_PET", tmp_path / "tfds")
    message = str(e.value)
    assert str(tmp_path / "src" / "MRI_PET" / "MRI" / "2.png") in message
    assert str(small) in message and "16x16" in message and "12x8" in message
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))


def test_pairs_of_different_sizes_in_one_set_are_refused_naming_the_files(tmp_path):
    """Each pair matches, but the set cannot be stacked: a DataError naming both files."""
    from configs import harvard as harvard_config
    from fuse4seg_jax.data import sources

    _write_set(tmp_path / "src")
    for sub in ("MRI", "PET"):
        Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(
            tmp_path / "src" / "MRI_PET" / sub / "3.png"
        )
    data = harvard_config.get_config().data
    data.manual_dir, data.tfds_dir, data.image_size = str(tmp_path / "src"), str(tmp_path), 8
    with pytest.raises(DataError, match=r"MRI/3\.png: size 12x8 .* of .*MRI/1\.png"):
        sources.load(data, 0)
