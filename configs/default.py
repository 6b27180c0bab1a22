"""Default configuration: every key the trainer reads, with documented defaults.

Other configs import this one and override what differs. Run:

    python -m fuse4seg_jax.train --config configs/default.py --workdir runs/default

Hardware: one GPU or TPU host (it also runs on CPU, slowly). The phantom at
128x128 with the small networks; about 10k bi-level steps.
"""

import os

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "phantom"  # built-in synthetic data (fuse4seg_jax/data/phantom.py)
    config.data.image_size = 128
    config.data.modalities = ("t1ce", "flair")  # any subset of t1, t1ce, t2, flair (M >= 2)
    config.data.num_train_cases = 200
    config.data.num_eval_cases = 40
    config.data.slices_per_case = 8
    config.data.augment = True  # flips, 90-degree rotations, random crops to image_size
    # Per-modality intensity jitter inside the brain: x * (1 + U(-s, s)) + U(-t, t).
    config.data.intensity_scale = 0.0
    config.data.intensity_shift = 0.0
    config.data.shuffle_buffer = 4096
    # Real data (data.name = "brats_fuse"): the BraTS folder of case folders (manual dir),
    # where the built TFDS dataset goes, and the BraTS-Fuse protocol (data/tfds_brats_fuse.py).
    config.data.manual_dir = ""
    config.data.tfds_dir = os.environ.get("FUSE4SEG_TFDS_DIR", "~/.cache/fuse4seg_jax/tfds")
    config.data.min_tumour_area = 100
    config.data.max_pairs = 2040
    config.data.split_seed = 0
    config.data.skip_bad_cases = False
    config.data.eval_split = "validation"
    # Simulated BraTS-like data (data.name = "brats_sim", docs/simulator.md): generated from
    # the ICBM152 anatomy; num_train_cases / num_eval_cases cases (test: num_eval_cases more)
    config.data.sim_seed = 0
    config.data.sim_spacing_mm = 1.0  # 1 (240 x 240 slices) or 2 (120 x 120)
    config.data.harvard_set = "MRI_PET"  # harvard_mif: MRI_CT | MRI_PET | MRI_SPECT

    config.model = ml_collections.ConfigDict()
    # What is trained (fuse4seg_jax/baselines.py): fuse4seg (bi-level, the method below) |
    # two_stage | classical | single | early_fusion | dual_encoder.
    config.model.kind = "fuse4seg"
    config.model.classical = "laplacian"  # kind=classical: mean | max | pca | laplacian
    config.model.single_modality = "flair"  # kind=single: one of data.modalities
    config.model.fusion = "fusion_small"  # see fuse4seg_jax/models/__init__.py
    # How the fusion net merges modalities: symmetric ([mean, max], any order or count) |
    # ordered (per-modality weights, signed combinations; models/fusion.py).
    config.model.fusion_merge = "symmetric"
    config.model.segmentation = "unet_small"  # "none" switches the segmentation side off
    config.model.compute_dtype = "float32"  # "bfloat16" on GPU/TPU: mixed precision
    config.model.seg_mode = "softmax"  # "softmax" (4 classes) or "regions" (WT/TC/ET sigmoids)

    config.loss = ml_collections.ConfigDict()
    config.loss.sigma = 2.0  # Gaussian low-pass of the frequency decomposition (pixels)
    config.loss.w_freq = 1.0
    config.loss.w_grad = 1.0
    config.loss.w_ssim = 0.0
    config.loss.w_ce = 1.0
    config.loss.w_dice = 1.0

    config.bilevel = ml_collections.ConfigDict()
    config.bilevel.inner = "fusion"  # which network is the inner (follower) variable
    # first_order | unrolled | joint | implicit_cg | implicit_neumann | darts | bdl
    config.bilevel.method = "unrolled"
    # The follower's steps per outer step, its optimiser, rate and schedule: chosen so that
    # the implicit term acts (docs/ablations.md, "Does the bi-level coupling act?"). Plain SGD is
    # stateless and linear in the gradient, so the unrolled step carries the leader's
    # influence (through a fresh Adam state the first step is lr * sign(g), whose derivative
    # is zero). One step: the derivative through K > 1 steps multiplies (I - lr H) factors,
    # and with K = 3 at rate 1 the implicit term outgrew the whole update by step 450 and
    # destabilised the demo. The earlier defaults (adam, 1e-3, mu 0.1, constant) remain
    # reachable by setting these keys.
    config.bilevel.inner_steps = 1
    config.bilevel.inner_optimizer = "sgd"  # differentiable: sgd | adam (eps inside the sqrt)
    config.bilevel.inner_lr = 1.0
    # outer: the outer optimiser's warm-up, schedule and clipping (config.optim) with peak
    # inner_lr, counted in inner steps; constant: inner_lr throughout, no clipping.
    config.bilevel.inner_schedule = "outer"
    config.bilevel.inner_momentum = 0.0  # sgd only
    config.bilevel.second_order = (
        "fwd_rev"  # fwd_rev (fast) | grad (reference jax.grad composition)
    )
    config.bilevel.remat = False
    # unrolled only: T total inner steps, of which the last inner_steps are differentiated
    # (the first T - inner_steps run in a separate undifferentiated scan); 0 = no truncation.
    config.bilevel.truncate_steps = 0
    # implicit_cg: plain CG iterations (HVPs) on (H + cg_damping I) v = F_y; damping > 0
    # for non-convex followers (watch train aux cg_residual / cg_nonpositive).
    config.bilevel.cg_steps = 10
    config.bilevel.cg_damping = 0.0
    # implicit_neumann: v = alpha sum_{k<steps} (I - alpha H)^k F_y; needs alpha < 2/lambda_max(H).
    config.bilevel.neumann_steps = 10
    config.bilevel.neumann_alpha = 0.01
    # darts: virtual step size xi; darts_fd: finite-difference mixed product (eps = 0.01/|v|).
    config.bilevel.darts_xi = 0.01
    config.bilevel.darts_fd = False
    # bdl (heuristic surrogate, c = <F_y, f_y> / (|f_y|^2 + bdl_damping)): bdl_damping 0 is
    # BDLFusion's form, unbounded near the follower's optimum (the correction is dropped where
    # |f_y|^2 + bdl_damping <= bdl_eps); bdl_damping > 0 bounds it (bilevel/onestep.py).
    config.bilevel.bdl_eps = 1e-12
    config.bilevel.bdl_damping = 0.0
    # Diagnostics: every N steps (0 = off), the configured hypergradient on the current batch
    # against a reference (implicit_cg, many steps): train/diag_hypergrad_cosine, _norm_ratio,
    # _implicit_cosine, _implicit_fraction, _reference_cg_residual, _reference_reliable
    # (steps.diagnose_step). A reference whose relative CG residual exceeds
    # diagnose_max_residual (or that met non-positive curvature) is flagged unreliable and
    # left out of the ablation's medians.
    config.bilevel.diagnose_every = 0
    config.bilevel.diagnose_cg_steps = 16  # <= 16 stays in the fast unrolled loop on CPU
    # Chosen from the measured curvature: on the demo networks the fusion follower's Hessian
    # is indefinite (CG met curvature -0.18 at step 60), so a light damping (1e-3, 1e-2,
    # 0.1) leaves CG unconverged (relative residual 1.5-5.7); damping 1 makes the system
    # positive definite and CG converges in 16 steps (docs/ablations.md).
    config.bilevel.diagnose_damping = 1.0
    config.bilevel.diagnose_max_residual = 0.1
    # inner = "fusion": inner objective L_fuse + mu * L_seg (segmentation shapes the fusion).
    config.bilevel.mu = 1.0
    # inner = "segmentation": outer objective L_fuse + beta * L_seg (semantic gradients).
    config.bilevel.beta = 1.0
    # How the global batch feeds the two levels: "halves" (even rows feed the inner level,
    # odd rows the outer one; interleaved, so both halves spread evenly over the devices)
    # or "same" (both levels see the whole batch).
    config.bilevel.batch_split = "halves"

    config.optim = ml_collections.ConfigDict()  # optax optimiser of the outer network
    config.optim.name = "adam"  # adam | adamw | sgd
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 100
    config.optim.schedule = "cosine"  # cosine | constant
    config.optim.weight_decay = 0.0
    config.optim.grad_clip = 1.0  # global-norm clip of the outer gradient; 0 disables

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 10_000
    config.train.fusion_steps = 0  # model.kind=two_stage: stage-1 steps (0 = num_steps // 2)
    config.train.batch_size = 16  # global batch, split across devices on the `data` axis
    config.train.log_every = 50
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    config.train.keep_checkpoints = 2
    # A workdir belongs to one config: a rerun whose config differs in anything but the
    # keys of fuse4seg_jax/workdir.py RESUMABLE_KEYS is refused unless this is True.
    config.train.allow_config_change = False
    config.train.eval_batch_size = 32
    # Every N steps (0 = never) compare the parameter copies on all devices and processes
    # (multi-host sanity check; stops with an error if they differ).
    config.train.check_replicas_every = 0

    config.mesh = ml_collections.ConfigDict()
    # Devices on the `data` axis; 0 means all visible devices.
    config.mesh.num_devices = 0

    config.report = ml_collections.ConfigDict()
    config.report.num_figure_cases = 4
    return config
