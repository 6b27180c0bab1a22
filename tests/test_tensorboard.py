"""What TensorBoard shows of a run: scalars, the config as text and the run's figure."""

import glob
import os

import numpy as np
from PIL import Image

from fuse4seg_jax import metric_writer


def _events(folder):
    import tensorflow as tf

    tags = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append((event.step, value))
    return tags


def test_config_text_scalars_and_figure_reach_tensorboard(tmp_path):
    writer = metric_writer.MetricWriter(str(tmp_path))
    writer.write_config('{"seed": 7}')
    writer.write(3, {"train/loss_seg": 0.5})
    writer.close()
    png = tmp_path / "figure.png"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(png)
    metric_writer.write_figure(str(tmp_path), "figure", str(png), 3)
    tags = _events(str(tmp_path / "tensorboard"))
    assert tags["train/loss_seg"][0][0] == 3
    assert any(k.startswith("config") for k in tags)
    text = next(v for k, vs in tags.items() if k.startswith("config") for _, v in vs)
    assert b'"seed": 7' in text.tensor.string_val[0]
    step, image = tags["figure"][0]
    assert step == 3 and (image.image.width, image.image.height) == (30, 20)


def test_the_config_and_final_scores_reach_the_hparams_dashboard(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    writer = metric_writer.MetricWriter(str(tmp_path))
    config = '{"seed": 7, "bilevel": {"method": "unrolled", "mu": 1.0}, "data": {"mods": [1, 2]}}'
    writer.write_hparams(config, {"eval/dice_wt": 0.75})
    writer.close()
    tags = _events(str(tmp_path / "tensorboard" / "hparams"))
    session = plugin_data_pb2.HParamsPluginData.FromString(
        tags["_hparams_/session_start_info"][0][1].metadata.plugin_data.content
    ).session_start_info
    assert session.hparams["bilevel.method"].string_value == "unrolled"
    assert session.hparams["bilevel.mu"].number_value == 1.0
    assert session.hparams["seed"].number_value == 7
    assert session.hparams["data.mods"].string_value == "[1, 2]"
    assert tags["eval/dice_wt"][0][1].simple_value == 0.75
