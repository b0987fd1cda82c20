"""Property-based tests of the X-ray readers (read_xray, load_xrays, to_model_input): random bytes,
arrays of any shape and dtype, PNG/TIFF, hvc PNG text chunks and DICOM films with random tags go in; a
finite, non-constant model input in range or the project's own error (XrayReadError, or load_xrays'
ValueError about the views) naming the file comes out, nothing else."""
from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _dicomkit import radiograph_dataset
from _propkit import (DICOM_VALUES, DS_TOKENS, DTYPES, FEW, SHAPES, VALUES, array_of, assert_ours, mutate_dicom,
                      raw_element, tmp_folder)
from hypothesis import event, example, given, strategies as st
from pydicom.datadict import tag_for_keyword

from hybrid_vit_cascade.inference import xray_io as X

P, LI_MAX = 8, 5.0  # detector pixels and line-integral scale of the "model" the X-rays are read for
# Random input makes the libraries warn (invalid VRs, corrupt EXIF, ...): expected here, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore")


# ------------------------------------------------------------------------------------ X-ray readers


def _check_xrays(paths: list[Path], folder: Path, views: list[str]) -> None:
    """load_xrays gives a finite (V, P, P) model input in range, or one of our errors."""
    try:
        x, raws = X.load_xrays(paths, views, LI_MAX, P)
    except X.XrayReadError as err:
        assert_ours(err, folder)
        event("refused")
        return
    except ValueError as err:  # load_xrays' own checks of the number and names of views, nothing else
        assert type(err) is ValueError and re.search(r"view|X-ray image", str(err)), repr(err)
        event("refused: views")
        return
    event("accepted")
    assert tuple(x.shape) == (len(views), P, P) and bool(x.isfinite().all())
    for r in raws:  # no degenerate (constant) view is passed on to the model
        assert float(x[views.index(r.view)].max() - x[views.index(r.view)].min()) > 1e-6, r.path
    # Line integrals ≤ LI_RANGE_FACTOR × li_max map to ≤ 2·factor − 1; display images to [-1, 1].
    assert float(x.min()) >= -1.01 and float(x.max()) <= 2 * X.LI_RANGE_FACTOR - 1 + 1e-6


@FEW
@given(suffix=st.sampled_from([".png", ".jpg", ".tif", ".dcm", ".npy", ".nii"]), body=st.binary(max_size=400),
       head=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"II*\0", b"\xff\xd8\xff", b"\x93NUMPY\x01\0",
                             b"\0" * 128 + b"DICM"]))
def test_xray_reader_on_random_bytes(suffix, body, head):
    with tmp_folder() as d:
        (d / f"x{suffix}").write_bytes(head + body)
        _check_xrays([d / f"x{suffix}"], d, ["ap"])


@FEW
@given(shape=SHAPES, dtype=st.sampled_from(DTYPES + [np.dtype("U3"), np.dtype([("a", "<f4"), ("b", "<i2")]),
                                                    np.dtype("M8[s]")]),
       values=st.lists(st.floats(0, 20) | VALUES, max_size=20), views=st.sampled_from([["ap"], ["ap", "lateral"]]),
       nifti=st.booleans())
@example(shape=(0, 5), dtype=np.float32, values=[], views=["ap"], nifti=False).via("zero-size .npy")
@example(shape=(0, 0, 0), dtype=np.int8, values=[], views=["ap"], nifti=True).via("zero-size NIfTI")
@example(shape=(6, 6), dtype=np.float64, values=[0.0, 1e300, -1e300], views=["ap"], nifti=False).via("huge")
@example(shape=(3, 3), dtype=np.dtype("U3"), values=[], views=["ap"], nifti=False).via("strings")
@example(shape=(3, 3), dtype=np.dtype([("a", "<f4"), ("b", "<i2")]), values=[], views=["ap"], nifti=False).via("records")
def test_xray_reader_on_random_arrays(shape, dtype, values, views, nifti):
    arr = array_of(shape, dtype, values) if np.dtype(dtype).kind in "biufc" else np.zeros(shape, dtype)
    with tmp_folder() as d:
        if nifti and np.dtype(dtype).kind in "iuf" and arr.dtype != np.float16:
            path = d / "x.nii"
            nib.Nifti1Image(arr, np.eye(4)).to_filename(path)
        else:
            path = d / "x.npy"
            np.save(path, arr)
        _check_xrays([path], d, views)


@FEW
@given(shape=st.tuples(st.integers(1, 20), st.integers(1, 20)), bits=st.sampled_from([8, 16]),
       values=st.lists(st.integers(0, 65535), max_size=30), rgb=st.booleans(), suffix=st.sampled_from([".png", ".tif"]))
def test_xray_reader_on_random_png_and_tiff(shape, bits, values, rgb, suffix):
    from PIL import Image

    arr = array_of(shape, np.uint16, values)
    img = Image.fromarray((arr >> 8).astype(np.uint8) if bits == 8 else arr)
    with tmp_folder() as d:
        (img.convert("RGB") if rgb and bits == 8 else img).save(d / f"x{suffix}")
        _check_xrays([d / f"x{suffix}"], d, ["ap"])


@FEW
@given(li_max=st.sampled_from(["1.5", "0", "-2", "nan", "inf", "1e400", "abc", ""]),
       render=st.sampled_from([None, "{}", "[1, 2]", "{\"views\": [\"ap\"]}", "not json", "NaN"]),
       values=st.lists(st.integers(0, 65535), min_size=1, max_size=30))
def test_xray_reader_on_hvc_pngs_with_random_text_chunks(li_max, render, values):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(X.PNG_ENCODING_KEY, X.PNG_ENCODING)
    info.add_text(X.PNG_LI_MAX_KEY, li_max)
    if render is not None:
        info.add_text(X.PNG_RENDER_KEY, render)
    with tmp_folder() as d:
        Image.fromarray(array_of((10, 10), np.uint16, values)).save(d / "x.png", pnginfo=info)
        _check_xrays([d / "x.png"], d, ["ap"])


XRAY_TAGS = ["RescaleSlope", "RescaleIntercept", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
             "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation", "PixelData", "NumberOfFrames",
             "Modality", "WindowCenter", "WindowWidth", "PlanarConfiguration", "PixelSpacing", "ImagerPixelSpacing",
             "ViewPosition", "PatientOrientation", "PixelIntensityRelationshipSign", "DistanceSourceToDetector",
             "ShutterShape", "ShutterLeftVerticalEdge"]


@FEW
# Each field: a working value half of the time (so that files get through to the model input), else anything.
@given(shape=st.tuples(st.integers(1, 20), st.integers(1, 20)), values=st.lists(st.integers(-2**31, 2**31), max_size=30),
       modality=st.sampled_from(["DX", "CR"]) | st.sampled_from(["CT", "MR", "", "OT", "XA"]),
       bits=st.sampled_from([8, 16, 32]), signed=st.booleans(), rgb=st.booleans(),
       photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2"]) | st.sampled_from(["RGB", "PALETTE COLOR", "FOO"]),
       slope=st.just("1") | st.sampled_from(DS_TOKENS), intercept=st.just("0") | st.sampled_from(DS_TOKENS),
       keyword=st.sampled_from(XRAY_TAGS), value=DICOM_VALUES, mutate=st.booleans())
@example(shape=(8, 8), values=[1, 2], modality="DX", bits=16, signed=False, rgb=False, photometric="MONOCHROME1",
         slope="abc", intercept="0", keyword="Rows", value=None, mutate=False).via("float('abc') in the modality LUT")
@example(shape=(8, 8), values=[1, 2], modality="CR", bits=16, signed=False, rgb=False, photometric="MONOCHROME2",
         slope="1", intercept="0", keyword="RescaleSlope", value=b"0\\0", mutate=True).via("a 2-valued slope")
@example(shape=(8, 8), values=[9] * 10 + [0] + [9] * 5, modality="DX", bits=16, signed=False, rgb=False,
         photometric="MONOCHROME2", slope="1", intercept="0", keyword="Rows", value=None, mutate=False
         ).via("IndexError: collimation trimmed a film with flat borders to nothing")
@example(shape=(1, 4), values=[0, 5, 9, 3], modality="DX", bits=16, signed=False, rgb=False,
         photometric="MONOCHROME2", slope="1", intercept="0", keyword="Rows", value=None, mutate=False
         ).via("a 1-pixel-high film became a constant model input")
def test_xray_reader_on_random_dicom(shape, values, modality, bits, signed, rgb, photometric, slope, intercept,
                                     keyword, value, mutate):
    arr = array_of(shape + ((3,) if rgb else ()), np.dtype(f"{'i' if signed else 'u'}{bits // 8}"), values)
    with tmp_folder() as d:
        _xray_dicom(d / "x.dcm", arr, modality, photometric, slope, intercept)
        if mutate:
            mutate_dicom(d / "x.dcm", keyword, value)
        _check_xrays([d / "x.dcm"], d, ["ap"])


def _xray_dicom(path: Path, arr: np.ndarray, modality: str, photometric: str, slope: str, intercept: str) -> None:
    """A DICOM radiograph of `arr` ((H, W) or (H, W, 3); bits and sign from its dtype), tags as given."""
    ds = radiograph_dataset(modality, photometric, *arr.shape[:2])
    ds.SamplesPerPixel, ds.PlanarConfiguration = (3, 0) if arr.ndim == 3 else (1, 0)
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, int(arr.dtype.kind == "i")
    ds[tag_for_keyword("RescaleSlope")] = raw_element(tag_for_keyword("RescaleSlope"), slope.encode())
    ds[tag_for_keyword("RescaleIntercept")] = raw_element(tag_for_keyword("RescaleIntercept"), intercept.encode())
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
