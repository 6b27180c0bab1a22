"""Plot the implicit term's share of the update and the fusion loss over training runs.

    .venv/bin/python benchmarks/plot_coupling.py OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]

Reads each run's metrics.jsonl (train/implicit_fraction, logged by every second-order
method, and train/loss_fuse) and draws both against the step, one line per run. The
README's coupling figure is this plot of the demo under two inner settings.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    if len(sys.argv) < 3 or any("=" not in a for a in sys.argv[2:]):
        sys.exit(__doc__.strip().splitlines()[2].strip())
    from matplotlib.figure import Figure

    from fuse4seg_jax.metric_writer import read_jsonl

    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    for spec in sys.argv[2:]:
        label, _, run_dir = spec.rpartition("=")  # labels may contain "="
        rows = [r for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
                if "train/implicit_fraction" in r]  # fmt: skip
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["train/implicit_fraction"] for r in rows], label=label)
        axes[1].plot(steps, [r["train/loss_fuse"] for r in rows], label=label)
    axes[0].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0].set_title("implicit fraction |hypergrad - F_x| / |hypergrad|")
    axes[1].set_title("train/loss_fuse")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[1], dpi=110)
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
