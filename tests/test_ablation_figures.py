"""The ablation runner's figures, from hand-made table rows (no training)."""

import numpy as np
import pytest
from PIL import Image

from fuse4seg_jax import ablation_figures


def _row(run, dice, volume=None, seeds=1):
    row = {"run": run, "seeds": seeds, "curve": [(1, 1.0, 0.5), (2, 0.5, 0.25)]}
    for region, value in zip(("wt", "tc", "et"), dice, strict=True):
        row[f"dice_{region}"] = value
        row[f"dice_{region}_sd"] = 0.01 if seeds > 1 else np.nan
        row[f"vol_dice_{region}"] = np.nan if volume is None else volume
    return row


@pytest.mark.parametrize("volume, panels", [(None, 1), (0.7, 2)])
def test_dice_bars_get_a_whole_case_panel_only_when_the_rows_have_volume_scores(
    tmp_path, volume, panels
):
    rows = [
        _row("joint-fusion", (0.9, 0.8, 0.7), volume, seeds=3),
        _row("early_fusion", (0.95, 0.9, 0.8)),
    ]
    path = tmp_path / "dice.png"
    ablation_figures.plot_dice(str(path), rows)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.height == round(panels * 3.2 * 110)
        pixels = np.asarray(image.convert("RGB"), np.int64)
    green = (pixels[..., 1] > 100) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)  # WT bars
    assert green.sum() > 1000


def test_loss_curves_are_drawn_for_every_run_each_in_its_own_style(tmp_path):
    path = tmp_path / "curves.png"
    rows = [_row(f"run{i}", (0.9, 0.8, 0.7)) for i in range(12)]  # the comparison has 11
    fig = ablation_figures.plot_curves(str(path), rows)
    assert path.read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob("*.tmp*"))
    for ax in fig.axes:
        styles = {(line.get_color(), line.get_linestyle()) for line in ax.get_lines()}
        assert len(styles) == len(rows)  # tab10 alone repeats from the eleventh run
    legend = fig.axes[1].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == [row["run"] for row in rows]
