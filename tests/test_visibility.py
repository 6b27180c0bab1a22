"""Tumour-part contrast: hand cases and the phantom's design (each part needs fusion)."""

import numpy as np

from fuse4seg_jax.data import phantom
from fuse4seg_jax.metrics import visibility


def test_hand_case():
    labels = np.zeros((1, 4, 4), int)
    labels[0, 0, :2], labels[0, 1, :2], labels[0, 2, :2] = 2, 3, 1
    mask = np.ones((1, 4, 4))
    image = np.zeros((1, 4, 4))
    image[0, 3] = [0.0, 1.0, 0.0, 1.0]  # some spread in the normal brain (label 0)
    image[0, 0, :2] = [5.0, 6.0]  # oedema
    image[0, 1, :2] = [5.0, 6.0]  # enhancing equal to oedema: invisible against it
    image[0, 2, :2] = [2.0, 2.0]  # necrosis vs enhancing
    normal = image[labels == 0]
    c = visibility.part_contrast(image, labels, mask)
    assert np.isclose(c["oedema"], (5.5 - normal.mean()) / np.sqrt((0.25 + normal.var()) / 2))
    assert c["enhancing"] == 0.0
    assert np.isclose(c["necrotic_core"], 3.5 / np.sqrt((0.0 + 0.25) / 2))


def test_phantom_parts_need_both_modalities():
    data = phantom.make_dataset(3, num_cases=6, slices_per_case=4, image_size=64)
    table = visibility.contrast_table(
        data["modalities"],
        data["modalities"].max(-1),
        data["label"],
        data["mask"],
        ("t1ce", "flair"),
    )
    assert table["flair"]["oedema"] >= visibility.VISIBLE > table["t1ce"]["oedema"]
    for part in ("enhancing", "necrotic_core"):
        assert table["t1ce"][part] >= visibility.VISIBLE > table["flair"][part]
    text = visibility.format_table(table)
    assert "fused" in text and "seen" in text
