"""The phantom as a TFDS dataset: the records are exactly the generator's, split by case."""

import numpy as np

from configs import tiny
from fuse4seg_jax.data import phantom, sources


def test_phantom_through_tfds_equals_the_generator(tmp_path):
    config = tiny.get_config().data
    config.tfds_dir = str(tmp_path)
    train, held_out = sources.load(config, seed=5)
    direct = phantom.make_dataset(
        5,
        num_cases=config.num_train_cases + config.num_eval_cases,
        slices_per_case=config.slices_per_case,
        image_size=config.image_size,
        modalities=tuple(config.modalities),
    )
    is_train = direct["case_id"] < config.num_train_cases
    for part, rows in ((train, is_train), (held_out, ~is_train)):
        np.testing.assert_array_equal(part["modalities"], direct["modalities"][rows])
        np.testing.assert_array_equal(part["label"], direct["label"][rows])
        np.testing.assert_array_equal(part["mask"], direct["mask"][rows])
        np.testing.assert_array_equal(part["case_id"], direct["case_id"][rows])
        np.testing.assert_array_equal(part["slice_index"], direct["slice_index"][rows])
    assert not set(train["case_id"]) & set(held_out["case_id"])
    # a second load reuses the built dataset and gives the same arrays
    again, _ = sources.load(config, seed=5)
    np.testing.assert_array_equal(again["modalities"], train["modalities"])
    assert len(list(tmp_path.rglob("dataset_info.json"))) == 1


def test_a_test_split_is_refused_not_served_from_validation(tmp_path):
    """The phantom has no test split: data.eval_split="test" is refused naming its splits."""
    import pytest

    config = tiny.get_config().data
    config.tfds_dir = str(tmp_path)
    config.eval_split = "test"
    with pytest.raises(ValueError, match="its splits are train, validation$"):
        sources.load(config, seed=5)
    assert not list(tmp_path.rglob("dataset_info.json"))  # refused before any build


def test_a_build_says_what_it_builds_and_nothing_of_tfds(tmp_path, capfd):
    from fuse4seg_jax.data import sources

    config = tiny.get_config()
    config.data.tfds_dir = str(tmp_path)
    sources.prepared_builder(config.data, 0)
    out, err = capfd.readouterr()
    assert "Downloading and preparing" not in out + err and "Generating" not in out + err
    assert "building the phantom dataset" in err and "built the phantom dataset" in err
    sources.prepared_builder(config.data, 0)  # built: reused without a word
    out, err = capfd.readouterr()
    assert "building" not in err
