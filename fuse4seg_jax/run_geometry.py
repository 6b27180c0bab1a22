"""The voxel geometry a run's networks were trained on: `<workdir>/geometry.json`.

    {"orientation": "RAS", "spacing_mm": [6.25, 6.25, 6.25]}

orientation: the 3-letter codes of the training images' stored axes (orientation.py;
the networks see axial slices `volume[:, :, k]` in that orientation); spacing_mm: the
voxel size of each of those axes. predict.py brings every input to this orientation
before the networks run (and back after), and checks its in-plane spacing against it.

- `training_geometry(config)`: computed from the config, reading no voxels. phantom:
  the phantom's affine is diagonal and positive ("RAS"), its voxels FOV_MM /
  data.image_size wide on every axis (data/phantom.py make_slices). brats_fuse: the
  header of the first modality file of the first case of data.manual_dir (None when
  that folder cannot be read any more). brats_sim: the BraTS grid's orientation (LPS)
  at data.sim_spacing_mm. harvard_mif (2D pairs): None.
- `write(workdir, geometry)`: the trainer writes it at the start of training (atomic).
- `read(workdir)`: geometry.json, else training_geometry of the run's saved config.json
  (runs trained before geometry.json existed), else None: predict then neither
  reorients nor checks the spacing, and says so.
"""

import json
import os

import numpy as np

from fuse4seg_jax import atomic_files, orientation, storage

FILE_NAME = "geometry.json"


def training_geometry(config):
    """{"orientation": codes, "spacing_mm": [x, y, z]} of the training images, or None
    when unknown (module docstring)."""
    name = config.data.name
    if name == "phantom":
        from fuse4seg_jax.data.phantom import FOV_MM

        size = float(FOV_MM) / int(config.data.image_size)
        return {"orientation": "RAS", "spacing_mm": [size, size, size]}
    if name == "brats_fuse":
        return _brats_geometry(config.data.manual_dir, tuple(config.data.modalities))
    if name == "brats_sim":
        from fuse4seg_jax.sim import geometry

        size = float(config.data.sim_spacing_mm)
        return {"orientation": orientation.axcodes(geometry.AFFINE), "spacing_mm": [size] * 3}
    return None


def _brats_geometry(manual_dir, modalities):
    import nibabel as nib

    from fuse4seg_jax.data import brats

    try:
        case_dir = brats.find_cases(os.path.expanduser(str(manual_dir)))[0]
        convention = brats.detect_convention(case_dir)
        names = [brats.file_name(case_dir.name, convention, modalities[0], ext)
                 for ext in brats.EXTENSIONS]  # fmt: skip
        path = next((case_dir / n for n in names if (case_dir / n).is_file()), case_dir / names[0])
        image = nib.load(str(path))  # the header only: no voxel is read
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        codes = orientation.axcodes(image.affine)
    except Exception:  # any unreadable folder or header: the geometry is unknown
        return None
    return {"orientation": codes, "spacing_mm": zooms}


def _checked(geometry, where):
    """`geometry` with its types checked; ValueError naming `where` when malformed."""
    try:
        codes = orientation.check_codes(geometry["orientation"])
        spacing = [float(s) for s in geometry["spacing_mm"]]
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError("spacing_mm must be 3 positive numbers")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: not a run geometry ({type(e).__name__}: {e})") from e
    return {"orientation": codes, "spacing_mm": spacing}


def write(workdir: str, geometry):
    """Writes `geometry` (training_geometry) to `<workdir>/geometry.json` atomically;
    nothing when it is None. Returns the path written, or None."""
    if geometry is None:
        return None
    path = storage.join(workdir, FILE_NAME)
    atomic_files.write_json(path, _checked(geometry, "geometry"))
    return path


def read(workdir: str, log=print):
    """The run's training geometry (module docstring), or None (with a note to `log`).
    ValueError (one line naming the file) when geometry.json exists but is malformed."""
    path = storage.join(storage.absolute(workdir), FILE_NAME)
    if storage.isfile(path):
        try:
            geometry = json.loads(storage.read_text(path))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path}: cannot be read as JSON: {type(e).__name__}") from e
        return _checked(geometry, path)
    from fuse4seg_jax import workdir as workdirs

    try:
        geometry = training_geometry(workdirs.saved_config(workdir))
    except (ValueError, AttributeError, KeyError):  # no or an unusable config.json
        geometry = None
    if geometry is None:
        log(f"note: {path} missing and the training geometry cannot be derived from the run's "
            "config: inputs are used as stored (no reorientation, no spacing check)")  # fmt: skip
    return geometry
