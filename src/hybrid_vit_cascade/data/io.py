"""Read CT volumes (NIfTI, DICOM series, MHA/NRRD) as HU in RAS+ world coordinates.

Every reader returns a `CTVolume` whose array axes are the closest RAS+ axes (nibabel's
"closest canonical" reorientation: flips and axis permutations only, no resampling) and whose
affine maps voxel indices to RAS+ world millimetres. Anything wrong with a file raises
`CTReadError(path, reason)` so a batch job can report it by name and move on. DICOM series are found
and stacked in dicom_series.py.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..files import atomic_write, make_dirs
from .ct_sanity import _spacing_problem, implausible_ct

# File suffixes (lower case) of the formats read here; inference/xray_io.py uses the same lists.
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# DICOM LPS+ -> RAS+: negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class CTReadError(Exception):
    """A CT could not be read; `path` and `reason` say which file and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).splitlines())  # one line, even when it quotes a library's message
        super().__init__(f"{self.path}: {self.reason}")


@dataclass
class CTVolume:
    """HU array (float32, axes ≈ RAS+) with its voxel→RAS+ world (mm) affine."""

    hu: np.ndarray
    affine: np.ndarray
    source: str
    meta: dict = field(default_factory=dict)  # e.g. patient_id, series_uid from DICOM

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along each array axis, mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def ct_kind(path: str | os.PathLike) -> str | None:
    """'nifti', 'itk', 'dicom' (a folder or .dcm file) or None for a path that is not a CT input."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if name.endswith(DICOM_SUFFIXES) or has_dicom_preamble(p):
        return "dicom"
    return None


def file_stem(path: str | os.PathLike) -> str:
    """The name of a CT file without its format suffix (`ct.nii.gz` → `ct`); other names (folders) whole."""
    name = Path(path).name
    for suf in NIFTI_SUFFIXES[::-1] + ITK_SUFFIXES:  # .nii.gz before .nii
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where a CT file's JSON sidecar (patient_id, generator, ...) lives: `<stem>.json` beside it."""
    return Path(path).with_name(file_stem(path) + ".json")


def read_ct(path: str | os.PathLike, files: list[Path] | None = None) -> CTVolume:
    """Read a CT (NIfTI file, DICOM series folder or file, .mha/.nrrd) as HU in RAS+.

    `files`: for a DICOM folder, the series' slice files when already known (skips the header scan).
    """
    p = Path(path)
    if not p.exists():
        raise CTReadError(p, "no such file or directory")
    kind = ct_kind(p)
    if kind == "nifti":
        vol = _read_nifti(p)
    elif kind == "itk":
        vol = _read_itk(p)
    elif kind == "dicom":
        from .dicom_series import read_dicom_series  # here, not at the top: it imports CTVolume from this module

        vol = read_dicom_series(p if p.is_dir() else p.parent, files=files)
    else:
        raise CTReadError(p, "unknown file type (expected .nii, .nii.gz, .mha, .mhd, .nrrd, .nhdr or a DICOM folder)")
    return _validated_canonical(vol)


# ---------------------------------------------------------------- NIfTI and ITK


def _read_nifti(p: Path) -> CTVolume:
    try:
        img = nib.load(str(p))
        hu = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as err:  # truncated gzip (EOFError), bad header, ... all mean "unreadable"
        raise CTReadError(p, f"unreadable NIfTI ({type(err).__name__}: {err})") from None
    hdr = img.header
    if "qform_code" in hdr and int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0:
        # nibabel then guesses a radiological (LAS) affine from the voxel sizes: left/right and front/back
        # would be a guess, and the reconstruction and X-rays silently mirrored.
        raise CTReadError(p, "NIfTI header has no orientation (qform_code and sform_code are both 0): the "
                             "patient's left/right and front/back are unknown; re-export it with its scanner affine")
    return CTVolume(hu=hu, affine=np.asarray(img.affine, dtype=np.float64), source=str(p))


def _read_itk(p: Path) -> CTVolume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(p))
    except Exception as err:
        raise CTReadError(p, f"unreadable image ({str(err).strip().splitlines()[-1]})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CTReadError(p, f"expected a scalar image, got {img.GetNumberOfComponentsPerPixel()} components per voxel")
    if img.GetDimension() != 3:
        raise CTReadError(p, f"expected a 3D volume, got a {img.GetDimension()}D image")
    # SimpleITK arrays are (z, y, x); transpose to index order (i, j, k) = (x, y, z).
    hu = np.ascontiguousarray(sitk.GetArrayFromImage(img).astype(np.float32).transpose(2, 1, 0))
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()  # ITK physical space is LPS+
    return CTVolume(hu=hu, affine=LPS_TO_RAS @ lps, source=str(p))


# ---------------------------------------------------------------- DICOM


def has_dicom_preamble(path: str | os.PathLike) -> bool:
    """True if the file carries the DICOM Part 10 marker ('DICM' after a 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


# ---------------------------------------------------------------- checks and writing


def _validated_canonical(vol: CTVolume) -> CTVolume:
    hu = vol.hu
    if hu.ndim == 4 and hu.shape[3] == 1:
        hu = hu[..., 0]
    if hu.ndim != 3:
        what = "a 2D image" if hu.ndim == 2 else f"a {hu.ndim}D array"
        raise CTReadError(vol.source, f"{what} (shape {hu.shape}), expected a 3D CT volume")
    if min(hu.shape) < 2:
        raise CTReadError(vol.source, f"a 2D image (shape {hu.shape}), not a CT volume")
    if not np.isfinite(vol.affine).all() or abs(np.linalg.det(vol.affine[:3, :3])) < 1e-9:
        raise CTReadError(vol.source, "invalid (singular or non-finite) voxel-to-world affine")
    n_bad = int(np.size(hu) - np.count_nonzero(np.isfinite(hu)))
    if n_bad:
        raise CTReadError(vol.source, f"{n_bad} NaN/Inf voxel(s)")
    # Before nibabel decomposes the affine: a column of 1e-171 mm (an .mha spacing) underflows to a zero
    # norm there and its SVD fails or never returns (found by tests/test_properties.py).
    reason = _spacing_problem(np.linalg.norm(vol.affine[:3, :3], axis=0))
    if reason:
        raise CTReadError(vol.source, reason)
    img = nib.as_closest_canonical(nib.Nifti1Image(hu, vol.affine))
    hu = np.ascontiguousarray(np.asarray(img.dataobj), dtype=np.float32)
    out = CTVolume(hu=hu, affine=np.asarray(img.affine, dtype=np.float64), source=vol.source, meta=vol.meta)
    reason = implausible_ct(out.hu, out.spacing)
    if reason:
        raise CTReadError(vol.source, reason)
    return out



def write_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, dtype=np.float32) -> Path:
    """Write an array as NIfTI (mm units) atomically, so a killed run leaves no half file."""
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    return save_nifti(img, path)


def save_nifti(img: nib.Nifti1Image, path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Save a NIfTI image (.nii, or gzipped .nii.gz) through the atomic writer; `root` confines it."""
    if not str(path).lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"a NIfTI file name ends in .nii or .nii.gz, got {path}")

    def write(f) -> None:
        if str(path).lower().endswith(".gz"):
            # As nib.save writes it: compression level 1, no name or time stamp in the gzip header.
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=1, mtime=0) as gz:
                img.to_stream(gz)
        else:
            img.to_stream(f)

    return atomic_write(path, write, root)


def write_dicom_series(
    folder: str | os.PathLike, hu: np.ndarray, affine: np.ndarray, patient_id: str = "ANON",
    slope: float = 1.0, intercept: float = -1024.0, seed: int = 0, file_names: list[str] | None = None,
) -> list[Path]:
    """Write a RAS+ HU volume as a CT DICOM series (one axial slice per file along array axis 2)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    make_dirs(folder)
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    sp = np.linalg.norm(lps[:3, :3], axis=0)
    row_cos, col_cos = lps[:3, 0] / sp[0], lps[:3, 1] / sp[1]
    stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("HU range does not fit int16 with this slope/intercept")
    rng = np.random.default_rng(seed)
    study, series = generate_uid(entropy_srcs=[patient_id, str(seed), "st"]), generate_uid(entropy_srcs=[patient_id, str(seed), "se"])
    paths = []
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = file_names[k] if file_names else f"{rng.integers(1 << 30):09d}.dcm"
        ds = FileDataset(str(folder / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", patient_id, patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [f"{sp[1]:.6f}", f"{sp[0]:.6f}"]  # (between rows, between columns)
        ds.SliceThickness = f"{sp[2]:.6f}"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T.astype("<i2")).tobytes()  # (rows, cols)
        atomic_write(folder / name, lambda f: pydicom.dcmwrite(f, ds, enforce_file_format=True), root=folder)
        paths.append(folder / name)
    return paths
