"""A simulator of BraTS-like multi-contrast brain-tumour MRI on real anatomy (docs/simulator.md).

anatomy.py reads the ICBM152 2009a tissue templates shipped in the nilearn wheel;
geometry.py places a brain in the BraTS grid (per-case affine and smooth deformation);
lesions.py draws and renders tumours (shape, nested labels, oedema, mass effect);
contrast.py is the MR signal model; scanner.py the bias field, gain and Rician noise;
case.py puts them together (`simulate_case`).
"""
