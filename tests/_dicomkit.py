"""A radiograph DICOM dataset skeleton for tests: file meta, UIDs, modality, size and polarity set."""
from __future__ import annotations

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage (for presentation)
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


def radiograph_dataset(modality: str, photometric: str, rows: int, columns: int):
    """A pydicom Dataset with everything but the pixel module's bit layout and the pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE if modality == "CR" else DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation = modality, photometric
    ds.Rows, ds.Columns = rows, columns
    return ds
