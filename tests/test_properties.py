"""Property-based tests of the CT readers and the config loader: random bytes, shapes, dtypes, affines,
DICOM tags and JSON go in; a sane CT / Config or the project's own one-line error (CTReadError,
ConfigError) naming the file comes out, nothing else. X-ray readers: test_properties_xray.py.
`HVC_HYPOTHESIS=explore pytest tests/test_properties*.py` hunts with many more, fresh examples."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _propkit import (DICOM_VALUES, DS_TOKENS, DTYPES, FEW, SHAPES, VALUES, array_of, assert_ours, mutate_dicom,
                      tmp_folder)
from hypothesis import event, example, given, strategies as st
from hypothesis.extra import numpy as hnp

from hybrid_vit_cascade.config import Config, ConfigError, config_from_dict, load_config
from hybrid_vit_cascade.data.ct_sanity import implausible_ct
from hybrid_vit_cascade.data.io import CTReadError, read_ct, write_dicom_series

CONFIG = Path(__file__).resolve().parents[1] / "config" / "tiny_cpu.json"
SUFFIXES = [".nii", ".nii.gz", ".mha", ".nrrd", ".dcm"]
# Random input makes the libraries warn (invalid VRs, corrupt EXIF, ...): expected here, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore")


def _check_ct(path: Path, folder: Path) -> None:
    try:
        ct = read_ct(path)
    except CTReadError as err:
        assert_ours(err, folder)
        event("refused")  # --hypothesis-show-statistics: how often each outcome was reached
        return
    event("accepted")
    assert ct.hu.dtype == np.float32 and ct.hu.ndim == 3 and np.isfinite(ct.hu).all()
    assert np.isfinite(ct.affine).all() and implausible_ct(ct.hu, ct.spacing) is None


# ------------------------------------------------------------------------------------ CT readers


@FEW
@given(suffix=st.sampled_from(SUFFIXES), head=st.sampled_from([b"", b"\0" * 128 + b"DICM", b"NRRD0004\n",
       b"ObjectType = Image\nNDims = 3\n", b"\x5c\x01\0\0"]), body=st.binary(max_size=600))
def test_ct_readers_on_random_bytes(suffix, head, body):
    with tmp_folder() as d:
        (d / f"ct{suffix}").write_bytes(head + body)
        _check_ct(d / f"ct{suffix}", d)


@FEW
@given(files=st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), min_size=1, max_size=3))
def test_ct_reader_on_a_dicom_folder_of_random_bytes(files):
    with tmp_folder() as d:
        for i, (preamble, body) in enumerate(files):
            (d / f"{i}.dcm").write_bytes((b"\0" * 128 + b"DICM" if preamble else b"") + body)
        _check_ct(d, d)


AFFINES = st.one_of(
    st.tuples(st.sampled_from([1e-9, 1e-3, 0.05, 0.7, 3.0, 6.0, 80.0, 100.0, 1e6, 1e300]),
              st.sampled_from([0.7, 3.0, 6.0, 1e-9])).map(lambda s: np.diag([s[0], s[1], 6.0, 1.0])),
    st.sampled_from([np.zeros((4, 4)), np.full((4, 4), np.nan), np.diag([4.0, 4.0, 0.0, 1.0]),
                     np.diag([np.inf, 4.0, 4.0, 1.0]), np.ones((4, 4))]),
    hnp.arrays(np.float64, (4, 4), elements=st.floats(-50, 50)),
)


def _nifti(arr: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI image of `arr` whose header holds `affine` (as qform and sform, or as the sform only)."""
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if np.all((norms > 1e-30) & (norms < 1e30)):  # nibabel's qform SVD never returns on some others
        try:
            return nib.Nifti1Image(arr, affine)
        except Exception:  # nibabel refuses the dtype, or a NaN / Inf / singular affine as a qform
            pass
    img = nib.Nifti1Image(arr.astype(np.float32), None)
    img.header.set_sform(affine, code=1)
    return img


@FEW
@given(shape=SHAPES, dtype=st.sampled_from(DTYPES), values=st.lists(VALUES, max_size=20), affine=AFFINES,
       gz=st.booleans())
@example(shape=(12, 12, 12), dtype=np.float32, values=[-1000.0, 40.0, 300.0], affine=np.diag([6.0, 6.0, 6.0, 1.0]),
         gz=False).via("a plausible CT is accepted")
def test_ct_reader_on_random_nifti_arrays_and_affines(shape, dtype, values, affine, gz):
    arr = array_of(shape, dtype, values)
    with tmp_folder() as d:
        path = d / ("ct.nii.gz" if gz else "ct.nii")
        _nifti(arr.astype(np.uint8) if dtype == np.bool_ else arr, affine).to_filename(path)
        _check_ct(path, d)


@FEW
@given(shape=st.tuples(*[st.integers(8, 14)] * 3), hu=st.tuples(st.floats(-1100, -500), st.floats(-100, 2000)),
       dtype=st.sampled_from([np.int16, np.int32, np.uint16, np.float32, np.float64]),
       spacing=st.tuples(*[st.just(6.0) | st.sampled_from([0.01, 0.05, 0.5, 3.0, 80.0, 100.0])] * 3),
       special=st.none() | st.sampled_from([np.nan, np.inf, -np.inf, 1e30, 5000.0]), where=st.integers(0, 10**6),
       gz=st.booleans())
def test_ct_reader_on_perturbed_plausible_cts(shape, hu, dtype, spacing, special, where, gz):
    x, y = np.mgrid[0:shape[0], 0:shape[1]]
    body = np.hypot(x - shape[0] / 2, y - shape[1] / 2) < 0.35 * min(shape[:2])
    arr = np.where(body, hu[1], hu[0])[:, :, None] * np.ones(shape[2])  # a cylinder of tissue in air
    if special is not None:
        arr.flat[where % arr.size] = special
    with tmp_folder() as d:
        path = d / ("ct.nii.gz" if gz else "ct.nii")
        _nifti(array_of(shape, dtype, list(arr.ravel())), np.diag([*spacing, 1.0])).to_filename(path)
        _check_ct(path, d)


@FEW
@given(ndims=st.integers(1, 4), sizes=st.lists(st.integers(0, 12), min_size=4, max_size=4),
       spacing=st.lists(st.sampled_from(DS_TOKENS[:10] + ["6", "-6", "1e-171", "1e85"]), min_size=0, max_size=4),
       matrix=st.lists(st.sampled_from(["0", "1", "-1", "nan", "0.5"]), min_size=0, max_size=9),
       etype=st.sampled_from(["MET_FLOAT", "MET_SHORT", "MET_UCHAR", "MET_DOUBLE", "MET_FOO"]),
       values=st.lists(VALUES, max_size=20), extra=st.integers(-50, 50))
@example(ndims=3, sizes=[8, 8, 8, 0], spacing=["1e-171", "1e85", "1e85"], matrix="1 0 0 0 1 0 0 0 1".split(),
         etype="MET_FLOAT", values=[0.0], extra=0).via("nibabel's HeaderDataError: the affine's SVD failed")
def test_ct_reader_on_random_mha_headers(ndims, sizes, spacing, matrix, etype, values, extra):
    dims = sizes[:ndims]
    header = (f"ObjectType = Image\nNDims = {ndims}\nDimSize = {' '.join(map(str, dims))}\n"
              f"ElementSpacing = {' '.join(spacing)}\nTransformMatrix = {' '.join(matrix)}\n"
              f"ElementType = {etype}\nElementDataFile = LOCAL\n")
    dtype = {"MET_SHORT": np.int16, "MET_UCHAR": np.uint8, "MET_DOUBLE": np.float64}.get(etype, np.float32)
    data = array_of(dims, dtype, values).tobytes()
    with tmp_folder() as d:
        (d / "ct.mha").write_bytes(header.encode() + data[:max(len(data) + extra, 0)])
        _check_ct(d / "ct.mha", d)


CT_TAGS = ["ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept",
           "Rows", "Columns", "BitsAllocated", "PixelRepresentation", "SamplesPerPixel", "PixelData", "Modality",
           "SeriesInstanceUID", "ImageType", "PhotometricInterpretation", "NumberOfFrames"]


@FEW
@given(keyword=st.sampled_from(CT_TAGS), value=DICOM_VALUES, which=st.integers(0, 7), every=st.booleans())
@example(keyword="ImageOrientationPatient", value=b"", which=0, every=False).via("IndexError on an empty tag")
@example(keyword="PixelSpacing", value=b"\0", which=3, every=False).via("unpacking ValueError")
@example(keyword="ImagePositionPatient", value=b"1\\2", which=3, every=False).via("ragged positions")
@example(keyword="RescaleSlope", value=b"abc", which=0, every=True).via("float('abc')")
@example(keyword="PhotometricInterpretation", value=b"\n", which=0, every=False).via("a newline in the error")
def test_ct_reader_on_a_dicom_series_with_a_mutated_tag(keyword, value, which, every):
    x, y = np.mgrid[0:8, 0:8]
    hu = np.where(np.hypot(x - 3.5, y - 3.5) < 3, 40.0, -1000.0)[:, :, None] * np.ones(8)
    with tmp_folder() as d:
        files = sorted(write_dicom_series(d, hu, np.diag([6.0, 6.0, 6.0, 1.0])))
        for f in files if every else [files[which]]:
            mutate_dicom(f, keyword, value)
        _check_ct(d, d)


# ------------------------------------------------------------------------------------ config loader


KEYS = ["stages", "training", "data", "diffusion", "name", "volume_size", "voxel_dim", "num_heads", "patch_size",
        "geometry", "det_pixels", "sid", "sdd", "split", "views", "hu_window", "learning_rate", "phantoms", "n"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70), st.floats(),
                    st.text(max_size=6), st.sampled_from(["s1", "ap", "lateral", "cone", "\ud800", "../x"]),
                    st.sampled_from([16, 24, 32, 1e308, -0.0, 2**63, 10**400]))
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), kids, max_size=4), max_leaves=24)
BASE = json.loads(re.sub(r"^\s*//.*$", "", CONFIG.read_text(), flags=re.M))


def _check_config(text: bytes | str) -> None:
    with tmp_folder() as d:
        path = d / "cfg.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            cfg = load_config(path)
        except ConfigError as err:
            assert type(err) is ConfigError and str(path) in str(err).splitlines()[0], str(err)
            event("refused")
            return
    event("accepted")
    assert isinstance(cfg, Config) and config_from_dict(cfg.to_dict()) == cfg  # what a checkpoint saves reloads


def _dumps(node, dup: int, counter: list) -> str:
    """JSON text of `node`; the `dup`-th object (in text order) repeats its first key (a duplicate key)."""
    if isinstance(node, dict):
        counter[0] += 1
        items = [(k, v) for k, v in node.items()]
        if counter[0] == dup and items:
            items.insert(1, items[0])
        return "{" + ", ".join(f"{json.dumps(k)}: {_dumps(v, dup, counter)}" for k, v in items) + "}"
    if isinstance(node, list):
        return "[" + ", ".join(_dumps(v, dup, counter) for v in node) + "]"
    return json.dumps(node)


@FEW
@given(value=JSON)
def test_config_loader_on_random_json(value):
    _check_config(_dumps(value, 0, [0]))
    try:
        config_from_dict(value, "random")
    except ConfigError as err:
        assert type(err) is ConfigError and "random" in str(err)


@FEW
@given(data=st.data(), n_ops=st.integers(0, 4), dup=st.integers(0, 12))
def test_config_loader_on_mutations_of_the_shipped_config(data, n_ops, dup):
    cfg = json.loads(json.dumps(BASE))
    for _ in range(n_ops):
        node = cfg
        while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):  # descend at random
            key = data.draw(st.sampled_from(list(node.keys()) if isinstance(node, dict) else list(range(len(node)))))
            if not isinstance(node[key], (dict, list)):
                break
            node = node[key]
        op = data.draw(st.sampled_from(["drop", "replace", "insert"]))
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        if op == "insert" or not keys:
            if isinstance(node, dict):
                node[data.draw(st.sampled_from(KEYS) | st.text(max_size=5))] = data.draw(JSON)
            else:
                node.append(data.draw(JSON))
        elif op == "drop":
            del node[data.draw(st.sampled_from(keys))]
        else:
            node[data.draw(st.sampled_from(keys))] = data.draw(JSON)
    _check_config(_dumps(cfg, dup, [0]))


@FEW
@given(body=st.binary(max_size=200), head=st.sampled_from([b"", b"{", b'{"stages": ', b"\xef\xbb\xbf{}", b"\xff\xfe"]))
@example(body=b"\x80\x81 invalid utf-8", head=b"{").via("invalid UTF-8")
@example(body=b"1" + b"0" * 5000, head=b'{"stages": ').via("an integer beyond Python's 4300-digit limit")
@example(body=b"[" * 100000, head=b"").via("nested too deeply")
def test_config_loader_on_random_bytes(body, head):
    _check_config(head + body)


def test_a_huge_encoder_downsample_is_refused_without_computing_two_to_its_power():
    stage = dict(name="s1", volume_size=[16, 16, 16], voxel_dim=32, num_heads=2, patch_size=4,
                 encoder_downsample=10**12)  # 2**(10**12) never finishes: the check must not compute it
    with pytest.raises(ConfigError, match=r"stages\.0\.encoder_downsample 1000000000000 halves"):
        config_from_dict({"stages": [stage]}, "cfg.json")
