"""Harvard Whole Brain Atlas reader: colour conversion, generated layouts, real data, bad input.

The real images are never copied into the repository; tests write their own PNGs
to tmp_path and only read the shared copy when it is present.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fuse4seg_jax.data.errors import DataError
from fuse4seg_jax.data.harvard import (
    SETS,
    colourise,
    find_pairs,
    load_set,
    read_pair,
    read_png,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)

HARVARD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "harvard"
REAL_COUNTS = {"MRI_CT": 21, "MRI_PET": 42, "MRI_SPECT": 73}


# ---------------------------------------------------------------- colour conversion


def test_round_trip_random_rgb():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    ycc = rgb_to_ycbcr(rgb)
    assert ycc.dtype == np.float32 and ycc.shape == rgb.shape
    assert ycc.min() >= 0.0 and ycc.max() <= 1.0
    back = ycbcr_to_rgb(ycc)
    assert back.dtype == np.float32 and back.shape == rgb.shape
    assert np.abs(back - rgb / 255.0).max() < 1.0 / 255.0
    np.testing.assert_array_equal(np.rint(back * 255.0).astype(np.uint8), rgb)
    # float input in [0, 255] gives the same result as uint8
    np.testing.assert_allclose(rgb_to_ycbcr(rgb.astype(np.float64)), ycc, atol=1e-7)


def test_known_values():
    white, black, red, blue = rgb_to_ycbcr(
        np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=np.uint8)
    )
    np.testing.assert_allclose(white, [1.0, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(black, [0.0, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(red[0], 0.299, atol=1e-6)
    np.testing.assert_allclose(red[2], 1.0, atol=1e-6)  # Cr of pure red is the maximum
    np.testing.assert_allclose(blue, [0.114, 1.0, 0.5 - 0.081312], atol=1e-6)
    greys = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    ycc = rgb_to_ycbcr(greys)
    np.testing.assert_allclose(ycc[:, 0], np.arange(256) / 255.0, atol=1e-6)
    np.testing.assert_allclose(ycc[:, 1:], 0.5, atol=1e-6)
    # luma = cv2 BGR2GRAY formula before rounding
    rgb = np.array([10, 200, 77], dtype=np.uint8)
    assert rgb_to_ycbcr(rgb)[0] == pytest.approx((0.299 * 10 + 0.587 * 200 + 0.114 * 77) / 255)
    np.testing.assert_allclose(ycbcr_to_rgb(red), [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(ycbcr_to_rgb(np.array([0.5, 0.5, 0.5])), [0.5] * 3, atol=1e-6)


def test_ycbcr_to_rgb_clips_and_colourise_shapes():
    out = ycbcr_to_rgb(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert out.min() >= 0.0 and out.max() <= 1.0
    with pytest.raises(ValueError, match="shape"):
        rgb_to_ycbcr(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="does not match"):
        colourise(np.zeros((4, 4)), np.zeros((4, 5, 2)))
    # batch axes and a trailing size-1 channel are accepted
    assert colourise(np.zeros((2, 4, 4, 1)), np.full((2, 4, 4, 2), 0.5)).shape == (2, 4, 4, 3)


# ---------------------------------------------------------------- generated layout


def _grey(rng, size=(16, 16)):
    v = rng.integers(0, 256, size=size, dtype=np.uint8)
    return np.repeat(v[..., None], 3, axis=-1)


def _colour(rng, size=(16, 16)):
    return rng.integers(0, 256, size=size + (3,), dtype=np.uint8)


def _write(path: Path, rgb: np.ndarray, mode: str = "RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(rgb)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path)


@pytest.fixture()
def fake_root(tmp_path):
    """MRI_PET with ids 2, 10, 11 (string order would be 10, 11, 2) and MRI_CT with id 1."""
    rng = np.random.default_rng(1)
    images = {}
    for i in ("10", "2", "11"):
        mri, pet = _grey(rng), _colour(rng)
        _write(tmp_path / "MRI_PET" / "MRI" / f"{i}.png", mri)
        _write(tmp_path / "MRI_PET" / "PET" / f"{i}.png", pet)
        images[i] = (mri, pet)
    ct = _grey(rng)
    _write(tmp_path / "MRI_CT" / "MRI" / "1.png", _grey(rng))
    _write(tmp_path / "MRI_CT" / "CT" / "1.png", ct)
    images["ct"] = ct
    return tmp_path, images


def test_find_pairs_numeric_order(fake_root):
    root, _ = fake_root
    pairs = find_pairs(root, "MRI_PET")
    assert [p[0] for p in pairs] == ["2", "10", "11"]
    for pair_id, mri, pet in pairs:
        assert mri == root / "MRI_PET" / "MRI" / f"{pair_id}.png"
        assert pet == root / "MRI_PET" / "PET" / f"{pair_id}.png"
    assert [p[0] for p in find_pairs(str(root), "MRI_CT")] == ["1"]
    assert set(SETS) == {"MRI_CT", "MRI_PET", "MRI_SPECT"}


def test_read_pair_values(fake_root):
    root, images = fake_root
    mri, pet = images["2"]
    item = read_pair(root / "MRI_PET" / "MRI" / "2.png", root / "MRI_PET" / "PET" / "2.png")
    assert set(item) == {"modalities", "chroma", "is_colour"}
    assert item["modalities"].shape == (16, 16, 2) and item["modalities"].dtype == np.float32
    assert item["chroma"].shape == (16, 16, 2) and item["chroma"].dtype == np.float32
    assert item["is_colour"] is True
    np.testing.assert_array_equal(item["modalities"][..., 0], mri[..., 0] / np.float32(255))
    ycc = rgb_to_ycbcr(pet)
    np.testing.assert_array_equal(item["modalities"][..., 1], ycc[..., 0])
    np.testing.assert_array_equal(item["chroma"], ycc[..., 1:])
    # colourising the source's own luma gives back the source colour image
    rgb = colourise(item["modalities"][..., 1], item["chroma"])
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.float32
    assert np.abs(rgb - pet / 255.0).max() < 1.0 / 255.0

    ct = read_pair(root / "MRI_CT" / "MRI" / "1.png", root / "MRI_CT" / "CT" / "1.png")
    assert ct["is_colour"] is False
    assert np.all(ct["chroma"] == 0.5)
    np.testing.assert_array_equal(ct["modalities"][..., 1], images["ct"][..., 0] / np.float32(255))


def test_load_set_shapes(fake_root):
    root, images = fake_root
    data = load_set(root, "MRI_PET")
    assert data["modalities"].shape == (3, 16, 16, 2)
    assert data["chroma"].shape == (3, 16, 16, 2)
    assert data["is_colour"].shape == (3,) and data["is_colour"].dtype == bool
    assert data["is_colour"].all()
    assert list(data["pair_id"]) == ["2", "10", "11"]
    assert data["pair_id"].dtype.kind == "U"
    for k, i in enumerate(["2", "10", "11"]):
        np.testing.assert_array_equal(
            data["modalities"][k, ..., 0], images[i][0][..., 0] / np.float32(255)
        )
    ct = load_set(root, "MRI_CT")
    assert ct["modalities"].shape == (1, 16, 16, 2) and not ct["is_colour"].any()


def test_read_png_converts_modes(tmp_path):
    rng = np.random.default_rng(2)
    rgb = _colour(rng, (8, 8))
    grey = _grey(rng, (8, 8))
    _write(tmp_path / "l.png", grey, "L")
    _write(tmp_path / "rgba.png", rgb, "RGBA")
    np.testing.assert_array_equal(read_png(tmp_path / "l.png"), grey)
    np.testing.assert_array_equal(read_png(tmp_path / "rgba.png"), rgb)
    Image.fromarray(grey[..., 0].astype(np.uint16) * 257).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(read_png(tmp_path / "g16.png"), grey)
    out = read_png(tmp_path / "rgba.png")
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert out.flags.writeable


def test_12_bit_data_in_a_16_bit_png_keeps_its_brightness(tmp_path):
    """Values up to 4095 in a 16-bit grey PNG: scaled by 4095, not 65535 (nearly black)."""
    from PIL.PngImagePlugin import PngInfo

    values = np.linspace(0, 4095, 64).round().astype(np.uint16).reshape(8, 8)
    expected = np.rint(values / 4095.0 * 255.0).astype(np.uint8)
    Image.fromarray(values).save(tmp_path / "g12.png")
    out = read_png(tmp_path / "g12.png")
    assert out[..., 0].max() == 255  # max near 1.0 after /255, not 0.06
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, -1))
    info = PngInfo()
    info.add(b"sBIT", b"\x0c")  # 12 significant bits, values stored unshifted
    Image.fromarray(values // 2).save(tmp_path / "sbit12.png", pnginfo=info)
    half = read_png(tmp_path / "sbit12.png")[..., 0]
    np.testing.assert_array_equal(half, np.rint((values // 2) / 4095.0 * 255.0))
    # sBIT 12 but the values scaled to 16 bits as the PNG spec intends: / 65535
    scaled = (values << 4) | (values >> 8)
    Image.fromarray(scaled).save(tmp_path / "spec.png", pnginfo=info)
    np.testing.assert_array_equal(read_png(tmp_path / "spec.png")[..., 0], expected)


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_root():
    if not HARVARD.is_dir():
        pytest.skip(f"shared Harvard data not found at {HARVARD}")
    return HARVARD


@pytest.mark.parametrize("set_name", list(REAL_COUNTS))
def test_real_data(real_root, set_name):
    pairs = find_pairs(real_root, set_name)
    assert len(pairs) == REAL_COUNTS[set_name]
    ids = [int(p[0]) for p in pairs]
    assert ids == list(range(11, 11 + REAL_COUNTS[set_name]))
    for _, mri, _ in pairs:
        rgb = read_png(mri)
        assert rgb.shape == (256, 256, 3)
        assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    data = load_set(real_root, set_name)
    n = REAL_COUNTS[set_name]
    assert data["modalities"].shape == (n, 256, 256, 2)
    assert data["chroma"].shape == (n, 256, 256, 2)
    for key in ("modalities", "chroma"):
        assert data[key].dtype == np.float32
        assert data[key].min() >= 0.0 and data[key].max() <= 1.0
    if set_name == "MRI_CT":
        assert not data["is_colour"].any() and np.all(data["chroma"] == 0.5)
    else:
        assert data["is_colour"].all()
    assert list(data["pair_id"]) == [p[0] for p in pairs]


# ---------------------------------------------------------------- bad input


def _error(fn, *args) -> str:
    with pytest.raises(DataError) as info:
        fn(*args)
    return str(info.value)


def test_unreadable_png(tmp_path):
    bad = tmp_path / "MRI_PET" / "PET" / "3.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8).tobytes())
    msg = _error(read_png, bad)
    assert str(bad) in msg and "unreadable or corrupt PNG" in msg
    missing = tmp_path / "nope.png"
    msg = _error(read_png, missing)
    assert msg == f"{missing}: file not found"
    jpeg = tmp_path / "fake.png"
    Image.fromarray(_colour(np.random.default_rng(4))).save(jpeg, format="JPEG")
    msg = _error(read_png, jpeg)
    assert str(jpeg) in msg and "not a PNG" in msg


def test_truncated_png(tmp_path):
    good = tmp_path / "good.png"
    _write(good, _colour(np.random.default_rng(5), (64, 64)))
    data = good.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    msg = _error(read_png, cut)
    assert msg.startswith(f"{cut}: ") and "corrupt" in msg
    # and through read_pair, naming the broken file
    msg = _error(read_pair, good, cut)
    assert msg.startswith(f"{cut}: ")


def test_missing_partner(fake_root):
    root, _ = fake_root
    orphan = root / "MRI_PET" / "PET" / "7.png"
    _write(orphan, _colour(np.random.default_rng(6)))
    msg = _error(find_pairs, root, "MRI_PET")
    assert msg.startswith(f"{orphan}: ") and "no partner" in msg
    assert str(root / "MRI_PET" / "MRI" / "7.png") in msg
    orphan.unlink()
    (root / "MRI_PET" / "PET" / "11.png").unlink()
    msg = _error(find_pairs, root, "MRI_PET")
    assert msg.startswith(f"{root / 'MRI_PET' / 'MRI' / '11.png'}: ") and "no partner" in msg


def test_size_mismatch(tmp_path):
    rng = np.random.default_rng(7)
    a, b = tmp_path / "MRI" / "1.png", tmp_path / "PET" / "1.png"
    _write(a, _grey(rng, (16, 16)))
    _write(b, _colour(rng, (16, 12)))
    msg = _error(read_pair, a, b)
    assert str(a) in msg and str(b) in msg
    assert "16x16" in msg and "12x16" in msg and "does not match" in msg


def test_size_differs_within_set(fake_root):
    root, _ = fake_root
    rng = np.random.default_rng(8)
    _write(root / "MRI_PET" / "MRI" / "12.png", _grey(rng, (8, 8)))
    _write(root / "MRI_PET" / "PET" / "12.png", _colour(rng, (8, 8)))
    msg = _error(load_set, root, "MRI_PET")
    assert str(root / "MRI_PET" / "MRI" / "12.png") in msg and "differs" in msg


def test_empty_or_wrong_folder(tmp_path, fake_root):
    msg = _error(find_pairs, tmp_path / "absent", "MRI_CT")
    assert msg == f"{tmp_path / 'absent'}: Harvard data folder not found"
    msg = _error(find_pairs, tmp_path, "MRI_SPECT")
    assert msg.startswith(f"{tmp_path / 'MRI_SPECT'}: ") and "set folder not found" in msg
    root, _ = fake_root
    # pointing at a set folder instead of the data root
    msg = _error(find_pairs, root / "MRI_PET", "MRI_PET")
    assert "set folder not found" in msg and "root should be" in msg
    # set folder with a missing modality folder, then with empty modality folders
    (tmp_path / "MRI_SPECT" / "MRI").mkdir(parents=True)
    msg = _error(find_pairs, tmp_path, "MRI_SPECT")
    assert msg.startswith(f"{tmp_path / 'MRI_SPECT' / 'SPECT'}: ") and "modality folder" in msg
    (tmp_path / "MRI_SPECT" / "SPECT").mkdir()
    msg = _error(load_set, tmp_path, "MRI_SPECT")
    assert msg.startswith(f"{tmp_path / 'MRI_SPECT'}: ") and "no PNG pairs" in msg


def test_unknown_set(fake_root):
    root, _ = fake_root
    msg = _error(find_pairs, root, "MRI_XRAY")
    assert msg.startswith(f"{root}: ") and "'MRI_XRAY'" in msg
    for name in SETS:
        assert name in msg
    msg = _error(load_set, root, "mri_ct")
    assert "unknown Harvard set" in msg
