"""Draw BraTS-layout case folders in three planes: T1, T1ce, T2, FLAIR and labels.

    python benchmarks/plot_cases.py --out docs/sim_cases.png sim_cases/SimBraTS2021_0000{0,1,2}
    python benchmarks/plot_cases.py --out brats.png /data/BraTS2021/BraTS2021_0000{0,2,3}

Any folder the BraTS reader takes (either naming; real BraTS or the simulator's output),
normalised as for training; slices through each tumour's centre of mass, axial and coronal
in radiological convention, sagittal with anterior on the left. Drawing real BraTS cases
with the same command gives the figure to set beside the simulated one.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fuse4seg_jax import figures  # noqa: E402
from fuse4seg_jax.data import brats  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", help="BraTS case folders")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    drawn = []
    for folder in args.cases:
        case = brats.read_case(folder, brats.MODALITIES)
        drawn.append((case.case_id, case.modalities, case.label, case.affine))
    figures.save_png(figures.case_views(drawn, brats.MODALITIES), args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
