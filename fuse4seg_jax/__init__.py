"""fuse4seg_jax: Fuse4Seg (arXiv 2409.10328) in JAX.

Image-level fusion for multi-modal medical image segmentation: a fusion network
turns co-registered scans into one fused image, a segmentation network segments
it, and the two are trained as a bi-level problem.
"""

__version__ = "0.1.0"
