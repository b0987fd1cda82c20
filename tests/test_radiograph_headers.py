"""Clinical DICOM films as real exports write them: LUT sequences, padding, coded views, no preamble, odd spacings."""
from __future__ import annotations

import re

import numpy as np
import pytest
from _propkit import mutate_dicom
from pydicom import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_radiograph import _chest, _texture, write_film

from hybrid_vit_cascade.data.radiograph import read_radiograph
from hybrid_vit_cascade.inference import xray_io as X


def _lut_item(table: np.ndarray, bits: int) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(table), 0, bits]
    item["LUTData"] = DataElement(0x00283006, "OW", table.astype("<u2").tobytes())
    return item


def test_lut_sequences_index_every_entry(tmp_path):
    """A 12-bit film's VOI LUT to 8-bit display (4096 entries of 8 bits) and a 12-bit Modality LUT
    (pydicom 3.0 wrapped the first's indices modulo 256 and refused the second)."""
    s = _texture()
    voi = np.round(np.sqrt(np.arange(4096) / 4095) * 255)
    rad = read_radiograph(write_film(tmp_path / "v.dcm", s, VOILUTSequence=Sequence([_lut_item(voi, 8)])))
    np.testing.assert_array_equal(rad.pixels, voi[s])
    assert rad.info["voi"] == "VOI LUT sequence"
    modality = np.arange(4096)[::-1] // 2  # decreasing: the LUT, not the stored value, says what is bright
    rad = read_radiograph(write_film(tmp_path / "m.dcm", s, ModalityLUTSequence=Sequence([_lut_item(modality, 12)])))
    np.testing.assert_array_equal(rad.pixels, modality[s])


def test_window_centre_and_width_counts_may_differ(tmp_path):
    s = _texture()
    rad = read_radiograph(write_film(tmp_path / "w.dcm", s, WindowCenter=[2000, 1000], WindowWidth=1001))
    assert rad.info["voi"]["window_center"] == 2000.0 and rad.info["voi"]["window_width"] == 1001.0
    assert rad.pixels.min() == 0 and rad.pixels.max() == 4095  # the first centre's window: both ends clipped


def test_a_window_after_a_negative_rescale_slope_keeps_its_polarity(tmp_path):
    """Stored 4095 − v, slope −1, intercept 4095: the modality values are v, windowed as v itself is."""
    s = _texture()
    window = dict(WindowCenter=2000, WindowWidth=2001)
    flipped = read_radiograph(write_film(tmp_path / "n.dcm", 4095 - s, RescaleSlope=-1, RescaleIntercept=4095, **window))
    np.testing.assert_allclose(flipped.pixels, read_radiograph(write_film(tmp_path / "p.dcm", s, **window)).pixels)


def test_an_inverse_presentation_lut_on_monochrome2_is_doubted(tmp_path):
    rad = read_radiograph(write_film(tmp_path / "i.dcm", _texture(), PresentationLUTShape="INVERSE"))
    assert any("PresentationLUTShape INVERSE with MONOCHROME2" in w for w in rad.info["warnings"])
    m1 = read_radiograph(write_film(tmp_path / "m.dcm", _texture(), photometric="MONOCHROME1", PresentationLUTShape="INVERSE"))
    assert m1.info["inverted"] and not m1.info["warnings"]  # DX's own pairing: one inversion


def test_pixel_padding_reads_as_air_and_padded_borders_are_outside(tmp_path):
    """A rotated film's corners and a padded border strip at PixelPaddingValue (here the brightest value)."""
    s = _chest()
    s[:10] = 4095  # a padded border strip
    s[10:20, :20] = 4095  # a padded corner
    rad = read_radiograph(write_film(tmp_path / "p.dcm", s, PixelPaddingValue=4095, ViewPosition="PA"))
    assert rad.usable[0] == 10 and rad.info["collimation_source"] == ["PixelPaddingValue"]
    assert rad.pixels[10:20, :20].max() == s[s < 4095].min()  # the corner: the film's air, not bright body
    assert rad.info["padding_px"] == 10 * 120 + 10 * 20


@pytest.mark.parametrize("code,meaning,view,ops", [
    ("272479007", "Postero-anterior", "pa", []),
    ("R-10206", "antero-posterior", "ap", []),
    ("399198007", "right lateral projection (qualifier value)", "lateral", ["columns mirrored"]),
    ("x", "left lateral", "lateral", []),
])
def test_view_from_the_view_code_sequence(tmp_path, code, meaning, view, ops):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
    rad = read_radiograph(write_film(tmp_path / "c.dcm", _texture(), ViewCodeSequence=Sequence([item])))
    assert rad.view == view and rad.info["view_source"] == "ViewCodeSequence" and rad.info["orientation_ops"] == ops


def test_an_oblique_view_code_is_refused(tmp_path):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "399356000", "SCT", "right anterior oblique"
    with pytest.raises(X.XrayReadError, match=r"ViewCodeSequence RIGHT ANTERIOR OBLIQUE \(a decubitus or oblique"):
        read_radiograph(write_film(tmp_path / "o.dcm", _texture(), ViewCodeSequence=Sequence([item])))


def test_an_empty_patient_orientation_is_absent(tmp_path):
    rad = read_radiograph(write_film(tmp_path / "e.dcm", _texture(), ViewPosition="RL", PatientOrientation=["", ""]))
    assert rad.info["patient_orientation"] is None and rad.info["orientation_ops"] == ["columns mirrored"]


def test_a_data_set_without_the_preamble_is_read(tmp_path):
    """Older exports: no 128-byte preamble and 'DICM' (with or without the file meta group, any file name)."""
    import pydicom
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    full = write_film(tmp_path / "full.dcm", _texture(), ViewPosition="PA", ImagerPixelSpacing=[0.2, 0.2])
    (tmp_path / "nopreamble.dcm").write_bytes((tmp_path / "full.dcm").read_bytes()[132:])
    bare = Dataset()
    bare.update(pydicom.dcmread(full))  # the data set alone, implicit VR little endian, no file meta
    with open(tmp_path / "IM0001", "wb") as fh:
        out = DicomFileLike(fh)
        out.is_little_endian, out.is_implicit_VR = True, True
        write_dataset(out, bare)
    want = read_radiograph(full).pixels
    for name in ("nopreamble.dcm", "IM0001"):
        raw = X.read_xray(tmp_path / name)
        assert raw.view == "pa"
        np.testing.assert_array_equal(raw.pixels, want)
    (tmp_path / "text.dcm").write_text("not a film")
    with pytest.raises(X.XrayReadError, match=r"text\.dcm: not a readable DICOM file \(no DICOM preamble"):
        X.read_xray(tmp_path / "text.dcm")


def test_one_spacing_value_reads_as_square_pixels(tmp_path):
    f = write_film(tmp_path / "s.dcm", _texture(), ViewPosition="PA", EstimatedRadiographicMagnificationFactor=1.25)
    mutate_dicom(f, "ImagerPixelSpacing", b"0.2")  # DICOM wants row\column
    rad = read_radiograph(f)
    assert rad.info["detector_spacing_mm"] == [0.2, 0.2] and rad.spacing_mm == pytest.approx((0.16, 0.16))
    assert any("ImagerPixelSpacing has one value (0.2 mm)" in w for w in rad.info["warnings"])


@pytest.mark.parametrize("key,value", [("ImagerPixelSpacing", b"abc"), ("PixelSpacing", b"-0.2"),
                                       ("PixelSpacing", b"0.2\\0"), ("ImagerPixelSpacing", b"0.1\\0.1\\0.1")])
def test_a_spacing_that_is_not_one_or_two_positive_numbers_is_named(tmp_path, key, value):
    f = write_film(tmp_path / "b.dcm", _texture(), ViewPosition="PA")
    mutate_dicom(f, key, value)
    with pytest.raises(X.XrayReadError, match=rf"b\.dcm: {key} '{re.escape(value.decode())}' is not a pixel spacing"):
        X.read_xray(f)


def test_a_pixel_spacing_larger_than_the_detector_pitch_is_doubted(tmp_path):
    """A downsampled export that kept ImagerPixelSpacing: the documented rule still takes the detector pitch."""
    tags = dict(ViewPosition="PA", ImagerPixelSpacing=[0.1, 0.1], EstimatedRadiographicMagnificationFactor=1.25)
    rad = read_radiograph(write_film(tmp_path / "d.dcm", _texture(), PixelSpacing=[0.2, 0.2], **tags))
    assert rad.info["spacing_source"] == "ImagerPixelSpacing" and rad.spacing_mm == pytest.approx((0.08, 0.08))
    assert any("PixelSpacing 0.2\\0.2 mm is larger than ImagerPixelSpacing 0.1\\0.1 mm" in w for w in rad.info["warnings"])
    same = read_radiograph(write_film(tmp_path / "e.dcm", _texture(), PixelSpacing=[0.1, 0.1], **tags))
    assert same.info["spacing_source"] == "ImagerPixelSpacing" and not same.info["warnings"]


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (7, 200)])
def test_a_film_of_a_few_pixels_is_refused(tmp_path, shape):
    f = write_film(tmp_path / "t.dcm", _texture(*shape), ViewPosition="PA")
    with pytest.raises(X.XrayReadError, match=rf"t\.dcm: a film of {shape[0]}×{shape[1]} pixels is too small for a "
                                              r"radiograph \(at least 8×8\)"):
        X.read_xray(f)


def test_small_and_flat_films_are_read_to_a_usable_area(tmp_path):
    """The minimum size reads; a flat film of few lines keeps a line (it was trimmed to nothing: an IndexError)."""
    assert read_radiograph(write_film(tmp_path / "m.dcm", _texture(8, 8), ViewPosition="PA")).pixels.shape == (8, 8)
    t, b, l, r = read_radiograph(write_film(tmp_path / "f.dcm", np.full((16, 18), 1000, np.uint16), ViewPosition="PA")).usable
    assert b > t and r > l
