"""`brats_sim`: simulated BraTS-like cases (fuse4seg_jax/sim) as a TFDS dataset.

The same examples as `brats_fuse` built from the folders `python -m fuse4seg_jax.simulate`
writes, generated in memory instead (sim/release.py): axial tumour slices of case indices
0 .. num_train_cases - 1 (train), the next num_eval_cases (validation) and the next
num_eval_cases (test), so no case is in two splits. Slices per case: `brats.select_slices`
with the config's slices_per_case and min_tumour_area. Cases are simulated in parallel,
one process per CPU (spawned, so TensorFlow is not in them); a 100-case build takes a few
minutes on 2 cores (benchmarks/RESULTS.md). The builder config's name carries every
generation parameter, so different settings never share a built dataset.
"""

import concurrent.futures
import dataclasses
import multiprocessing
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow_datasets as tfds  # noqa: E402

from fuse4seg_jax.data import tfds_brats_fuse  # noqa: E402
from fuse4seg_jax.sim import release  # noqa: E402


@dataclasses.dataclass
class BratsSimConfig(tfds.core.BuilderConfig):
    modalities: tuple = ("t1ce", "flair")
    seed: int = 0
    spacing_mm: float = 1.0
    num_train_cases: int = 80
    num_eval_cases: int = 10
    slices_per_case: int = 4
    min_tumour_area: int = 100
    workers: int = 0  # 0: one per CPU


class BratsSim(tfds.core.GeneratorBasedBuilder):
    """Tumour slices of simulated BraTS-like cases, split by case."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First simulator (fuse4seg_jax.sim v1)."}
    BUILDER_CONFIGS = [BratsSimConfig(name="default")]

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__.splitlines()[0],
            features=tfds_brats_fuse.features(len(self.builder_config.modalities)),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        n_train, n_eval = c.num_train_cases, c.num_eval_cases
        splits = {
            "train": range(0, n_train),
            "validation": range(n_train, n_train + n_eval),
            "test": range(n_train + n_eval, n_train + 2 * n_eval),
        }
        workers = max(1, min(c.workers or os.cpu_count() or 1, n_train))
        context = multiprocessing.get_context("spawn")
        # one pool for the three splits: each worker reads the templates once
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
        last = list(splits)[-1]
        return {
            name: self._generate_examples(pool, indices, name, close=name == last)
            for name, indices in splits.items()
        }

    def _generate_examples(self, pool, indices, split, close=False):
        c = self.builder_config
        args = (tuple(c.modalities), c.spacing_mm, c.slices_per_case, c.min_tumour_area)
        start, every = time.perf_counter(), max(1, len(indices) // 10)
        try:
            jobs = [pool.submit(release.case_slices, c.seed, i, *args) for i in indices]
            for done, job in enumerate(jobs, 1):  # in case order
                yield from job.result()
                if done % every == 0 or done == len(jobs):
                    seconds = time.perf_counter() - start
                    line = (
                        f"  simulated {done}/{len(jobs)} cases of split {split} ({seconds:.0f} s)"
                    )
                    print(line, file=sys.stderr, flush=True)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        if close:
            pool.shutdown()


def make_builder(data_config) -> BratsSim:
    mods = tuple(data_config.modalities)
    spacing = float(data_config.sim_spacing_mm)
    config = BratsSimConfig(
        name=(
            f"{'_'.join(mods)}_{spacing:g}mm_c{data_config.num_train_cases}"
            f"+{data_config.num_eval_cases}x2_s{data_config.slices_per_case}"
            f"_a{data_config.min_tumour_area}_seed{data_config.sim_seed}"
        ),
        version=BratsSim.VERSION,
        modalities=mods,
        seed=int(data_config.sim_seed),
        spacing_mm=spacing,
        num_train_cases=int(data_config.num_train_cases),
        num_eval_cases=int(data_config.num_eval_cases),
        slices_per_case=int(data_config.slices_per_case),
        min_tumour_area=int(data_config.min_tumour_area),
    )
    return BratsSim(data_dir=os.path.expanduser(data_config.tfds_dir), config=config)
