"""The simulator's MR signal model: per-tissue relaxation and four clinical sequences.

Signal of a tissue with proton density PD, relaxation times T1, T2 (ms) and gadolinium
concentration C (mM, shortening T1: 1/T1' = 1/T1 + r1 C with r1 = 3.7 per mM per s, the
relaxivity of gadopentetate in plasma at 3 T, Rohrer et al., Invest. Radiol. 40 (2005) 715):
- spin echo (T1, T1ce, T2):  S = PD (1 - exp(-TR / T1')) exp(-TE / T2)
- inversion recovery (FLAIR): S = PD |1 - 2 exp(-TI / T1) + exp(-TR / T1)| exp(-TE / T2),
  with TI chosen to null free water (CSF): TI = T1_csf ln(2 / (1 + exp(-TR / T1_csf))).
Gadolinium acts in T1ce only (the other contrasts are modelled as pre-contrast).

Relaxation values (3 T): white and grey matter from Stanisz et al., Magn. Reson. Med. 54
(2005) 507 (WM 1084 / 69 ms, GM 1820 / 99 ms); CSF as free water (about 4.3 s / 2 s);
proton densities from typical water contents (WM 0.69, GM 0.80, CSF 1). Lesion values are
our choices, in the direction radiology describes: vasogenic oedema and necrosis have
longer T1 and T2 than white matter and necrosis approaches fluid; the enhancing rim takes
up gadolinium; the non-enhancing core is solid tumour without uptake; vessels (in sulci
and ventricles) take up more gadolinium than tumour. Each case multiplies every lesion
T1 and T2 by its own factor in [0.9, 1.1] (tumour variability).

The resulting contrast rules (tests/test_simulator.py checks them on simulated cases):
T1: WM > GM > CSF, tumour dark; T1ce: enhancing rim bright, necrosis dark, oedema close
to the tissue around it; T2: CSF, necrosis and oedema bright; FLAIR: CSF dark, oedema
bright, necrosis close to normal tissue. No single contrast separates all three tumour
parts from each other and from normal tissue.
"""

import numpy as np

R1_GD = 3.7e-3  # per mM per ms
# name: (PD, T1 ms, T2 ms, gadolinium mM)
TISSUE = {
    "gm": (0.80, 1820.0, 99.0, 0.0),
    "wm": (0.69, 1084.0, 69.0, 0.0),
    "csf": (1.00, 4300.0, 2000.0, 0.0),
    "necrosis": (0.95, 3000.0, 400.0, 0.0),
    "nonenhancing": (0.82, 1900.0, 130.0, 0.0),
    "oedema": (0.86, 1750.0, 190.0, 0.0),
    "enhancing": (0.82, 1700.0, 100.0, 0.35),
    "vessel": (0.90, 1650.0, 60.0, 1.0),
}
SEQUENCES = {  # name: (kind, TR, TE) in ms; FLAIR's TI follows from CSF
    "t1": ("se", 600.0, 10.0),
    "t1ce": ("se_gd", 600.0, 10.0),
    "t2": ("se", 5000.0, 100.0),
    "flair": ("ir", 9000.0, 120.0),
}
MODALITIES = tuple(SEQUENCES)
LESION_TISSUES = ("necrosis", "nonenhancing", "oedema", "enhancing")


def flair_ti(tr: float) -> float:
    t1 = TISSUE["csf"][1]
    return float(t1 * np.log(2.0 / (1.0 + np.exp(-tr / t1))))


def signal(pd, t1, t2, gd, modality: str) -> float:
    kind, tr, te = SEQUENCES[modality]
    if kind == "se_gd":
        t1 = 1.0 / (1.0 / t1 + R1_GD * gd)
    if kind in ("se", "se_gd"):
        return float(pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2))
    ti = flair_ti(tr)
    return float(pd * abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2))


def signal_table(tissues, modalities=MODALITIES, lesion_factor=(1.0, 1.0)) -> np.ndarray:
    """(len(tissues), len(modalities)) float32 signals; lesion tissues' T1 and T2 are scaled
    by lesion_factor = (f_T1, f_T2)."""
    out = np.zeros((len(tissues), len(modalities)), np.float32)
    for i, name in enumerate(tissues):
        pd, t1, t2, gd = TISSUE[name]
        if name in LESION_TISSUES:
            t1, t2 = t1 * lesion_factor[0], t2 * lesion_factor[1]
        for j, m in enumerate(modalities):
            out[i, j] = signal(pd, t1, t2, gd, m)
    return out
