"""Shared pieces of the property-based tests (test_properties*.py): settings, strategies, writers, checks."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.extra import numpy as hnp
from pydicom.dataelem import RawDataElement
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.tag import Tag

# CI: the same examples every run (no flaky failures, no .hypothesis database); HVC_HYPOTHESIS=explore
# runs many more, freshly random, to hunt for new failures.
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(settings.get_profile(os.environ.get("HVC_HYPOTHESIS", "ci")))
DTYPES = [np.int8, np.int16, np.int32, np.uint8, np.uint16, np.float16, np.float32, np.float64, np.bool_,
          np.complex64]
# Elements: mostly plausible numbers (so the accepting path is exercised too), plus NaN/Inf/huge.
VALUES = st.one_of(st.floats(-1100, 3000), st.floats(0, 25), st.sampled_from(
    [0.0, -0.0, np.nan, np.inf, -np.inf, 1e30, -1e30, 1e308, 5e-324, 65504.0, 70000.0, -1024.0]))
SHAPES = st.one_of(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=12),
                   st.sampled_from([(2, 200, 2), (1, 300), (40, 1), (12, 12, 12, 1), (10, 10, 10, 2), (0, 5, 5)]))
DS_TOKENS = ["0", "1", "-1", "2.5", "1e308", "-1e308", "1e-300", "nan", "NaN", "inf", "-inf", "abc", "", " 1 "]


@contextmanager
def tmp_folder():
    """A fresh temporary folder per example (pytest's tmp_path is one per test)."""
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def array_of(shape, dtype, values: list) -> np.ndarray:
    """A `shape` array of `dtype` filled (cyclically) from `values`, with numpy's own cast of NaN/huge."""
    n = int(np.prod(shape))
    flat = np.resize(np.array(values or [0.0], dtype=np.float64), n)
    with np.errstate(invalid="ignore", over="ignore"):
        return flat.astype(dtype).reshape(shape)


def assert_ours(err: Exception, folder: Path) -> None:
    """The project's own error: one line, naming a file or folder inside the test folder."""
    assert "\n" not in str(err), str(err)
    assert Path(err.path).resolve().is_relative_to(folder.resolve()), str(err)


def raw_element(tag: int, value: bytes) -> RawDataElement:
    """A DICOM element holding exactly `value` (no validation), VR from the dictionary."""
    value += b" " * (len(value) % 2)
    return RawDataElement(Tag(tag), dictionary_VR(tag), len(value), value, 0, False, True)


def mutate_dicom(path: Path, keyword: str, value: bytes | None) -> None:
    """Set DICOM tag `keyword` of the file to exactly `value` (None: delete it)."""
    ds = pydicom.dcmread(path)
    tag = tag_for_keyword(keyword)
    if value is None:
        if tag in ds:
            del ds[tag]
    else:
        ds[tag] = raw_element(tag, value)
    ds.save_as(path, enforce_file_format=True)


DICOM_VALUES = st.one_of(
    st.none(),  # delete the tag
    st.lists(st.sampled_from(DS_TOKENS), max_size=7).map(lambda t: "\\".join(t).encode()),
    st.binary(max_size=9),
)
