"""Procedural thorax anatomy for the synthetic phantoms (`data/phantoms.py` is the entry point).

`patient` draws one patient from a seed (habitus, pose, organ sizes, pathologies: size-independent),
`grid` holds the voxel-geometry helpers (boxes, ellipsoids, tubes), `body`, `skeleton`, `chest`,
`vessels` and `pathology` paint a label map (`tissues.Tissue`) in the patient frame, and `scanner`
turns labels into HU, poses the patient in the field, adds the table and the acquisition blur/noise.
Every number's literature source is cited where it is drawn; docs/PHANTOMS.md collects them.
"""
