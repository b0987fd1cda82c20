"""Find the CTs below input paths (files, DICOM series) and identify each case and its patient.

A NIfTI/MHA/NRRD file is a case; its patient id comes from a JSON sidecar (`<stem>.json` with
`patient_id`) or the file stem. A DICOM series is a case; its patient id is the DICOM PatientID, or
the top folder below the input root (LIDC-IDRI layout: patient/study/series/*.dcm).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..files import safe_component
from .dicom_series import find_dicom_series
from .io import ct_kind, file_stem, sidecar_path


@dataclass
class CaseInput:
    source: Path  # a CT file or a DICOM series folder
    kind: str  # nifti | itk | dicom
    patient_id: str
    base_id: str  # case id before de-duplication
    series_uid: str | None = None
    files: list[Path] | None = None  # DICOM: the series' slice files (found once, reused to hash and read)


_MAX_ID = 96  # leaves room for the "_unreadable" and "_<hash>" suffixes below files.safe_component's 128


def _sanitize(name: str) -> str:
    """A case id from a file stem / DICOM PatientID that files.safe_component accepts (no leading '-' or '.')."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip("._-").rstrip("._") or "case"
    if len(s) > _MAX_ID:  # keep it unique: a hash of the full name replaces the tail
        s = f"{s[:_MAX_ID - 9].rstrip('._')}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return s


def _sidecar_patient(path: Path) -> str | None:
    """Patient id from a JSON sidecar next to the file (`<stem>.json` with patient_id/PatientID)."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    pid = meta.get("patient_id") or meta.get("PatientID") if isinstance(meta, dict) else None
    return str(pid) if pid else None


def _dicom_patient(files: list[Path]) -> str:
    import pydicom

    try:
        return str(pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", "")).strip()
    except Exception:
        return ""


def discover_inputs(paths: list[str | os.PathLike]) -> tuple[list[CaseInput], list[dict]]:
    """CT files and DICOM series below the given files/folders, plus inputs skipped with a reason."""
    found: list[CaseInput] = []
    skipped: list[dict] = []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            skipped.append({"source": str(root), "reason": "no such file or directory"})
            continue
        if root.is_file():
            kind = ct_kind(root)
            if kind is None:
                skipped.append({"source": str(root), "reason": "not a CT file (.nii, .nii.gz, .mha, .nrrd or DICOM)"})
            elif kind == "dicom":
                pid = _dicom_patient([root]) or root.parent.name
                found.append(CaseInput(root.parent, "dicom", pid, _sanitize(pid)))
            else:
                pid = _sidecar_patient(root) or file_stem(root)
                found.append(CaseInput(root, kind, pid, _sanitize(file_stem(root))))
            continue
        before = (len(found), len(skipped))
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                f = Path(dirpath) / name
                kind = ct_kind(f)
                if kind in ("nifti", "itk") and not name.startswith("."):
                    pid = _sidecar_patient(f) or file_stem(f)
                    found.append(CaseInput(f, kind, pid, _sanitize(file_stem(f))))
        for folder, uid, files in find_dicom_series(root, skipped=skipped):
            rel = folder.relative_to(root).parts
            top = rel[0] if rel else root.name  # LIDC layout: patient/study/series
            pid = _dicom_patient(files) or top
            if uid.startswith("?"):  # unreadable files form their own group: reading it reports them by name
                found.append(CaseInput(folder, "dicom", pid, _sanitize(pid) + "_unreadable", None, files))
            else:
                found.append(CaseInput(folder, "dicom", pid, _sanitize(pid), uid, files))
        if (len(found), len(skipped)) == before:  # say so rather than silently contribute nothing
            skipped.append({"source": str(root), "reason": "no CT in this folder (no NIfTI/MHA/NRRD file or DICOM series)"})
    # the same input reached twice (a folder and a file inside it) is one case
    unique: dict[tuple[str, str | None], CaseInput] = {}
    for c in found:
        unique.setdefault((str(c.source.resolve()), c.series_uid), c)
    found = list(unique.values())
    # unique case ids: a patient with several series (or equal file stems) gets a short source hash
    counts: dict[str, int] = {}
    for c in found:
        counts[c.base_id] = counts.get(c.base_id, 0) + 1
    for c in found:
        if counts[c.base_id] > 1:
            tag = hashlib.sha1(f"{c.source}|{c.series_uid}".encode()).hexdigest()[:6]
            c.base_id = f"{c.base_id}_{tag}"
    for c in found:  # case ids become file names (cases/<id>.npz, caches, montages)
        safe_component(c.base_id, f"case id of {c.source}")
    return found, skipped


def source_sha256(case: CaseInput) -> str:
    """sha256 of the input bytes (for a DICOM series: of every file's name and bytes, in name order)."""
    if case.kind == "dicom":
        h = hashlib.sha256()
        files = case.files or next((fs for folder, uid, fs in find_dicom_series(case.source)
                                    if folder == case.source and (case.series_uid is None or uid == case.series_uid)), [])
        for f in sorted(files):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        return h.hexdigest()
    return file_sha256(case.source)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes, read in blocks (a single-file case's `source_sha256`)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
