"""The body in an X-ray image, and what the training X-rays look like inside it.

A display radiograph's pixels are processed intensities, not line integrals. Inference maps them to
the model's X-ray range by histogram matching inside the body (data/radiograph.py): the film's
in-body distribution is carried onto the training DRRs' in-body distribution by a monotone LUT.
That needs the training distribution, stored at training time in data_info.json (`xray_stats`):
per view, `N_QUANTILES` quantiles of the training split's X-rays inside the body, the mean
fraction of the detector the body covers, the mean X-ray on a coarse grid (where the anatomy
sits on the detector, which a film's crop is registered to), and `level_fits`: how each case's
in-body level follows the body's width in each view (`fit_levels`: the population quantiles
carry every film to the average patient; the width a film still shows moves it to its own). Both sides find the body with the same `body_mask`, so the
two distributions describe the same region.
"""
from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

N_QUANTILES = 101  # 0th, 1st, …, 100th percentile: a LUT knot per percent of the body's pixels
BODY_METHOD = "otsu-largest-filled-v1"  # how `body_mask` finds the body; stored with the statistics
OTSU_BINS = 256
MEAN_SIZE = 32  # the stored mean training X-ray: MEAN_SIZE² cells over the detector
RIM_FRACTION = 0.08  # the body's rim left out of the lung search: 8 % of the body's width
LEVEL_MIN_CASES = 3  # fewer training cases: no body-level fit (the population level alone)


def air_threshold(values: np.ndarray) -> float:
    """The lower cut of a three-class Otsu (air | lungs and thin tissue | dense body).

    Two classes are not enough: on a frontal chest X-ray the two-class cut often falls between the
    lungs and the mediastinum, which would leave the lungs out of the body on some images and not
    on others (a display curve moves it).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        raise ValueError("image is (nearly) constant; no body to find")
    hist, edges = np.histogram(v, bins=OTSU_BINS, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w, m = np.cumsum(hist).astype(np.float64), np.cumsum(hist * centres)
    i, j = np.arange(OTSU_BINS)[:, None], np.arange(OTSU_BINS)[None, :]  # classes [0, i], (i, j], (j, end]
    parts = ((w[i], m[i]), (w[j] - w[i], m[j] - m[i]), (w[-1] - w[j], m[-1] - m[j]))
    with np.errstate(divide="ignore", invalid="ignore"):
        score = sum(np.where(wk > 0, mk ** 2 / wk, 0.0) for wk, mk in parts)  # Σ w·μ² ∝ between-class variance
    score[(j <= i) | (j >= OTSU_BINS - 1)] = -np.inf
    return float(edges[int(np.unravel_index(np.argmax(score), score.shape)[0]) + 1])


def body_mask(img: np.ndarray) -> np.ndarray:
    """(H, W) bool: the body in an X-ray image (bright = attenuating).

    The lower three-class Otsu cut (`air_threshold`) splits direct exposure (air around the body)
    from the body; the largest connected bright region is the body (markers and a table edge are
    smaller), with its holes filled (lungs enclosed by the chest wall belong to the body).
    """
    img = np.asarray(img, dtype=np.float64)
    bright = img > air_threshold(img)
    labels, n = ndimage.label(bright)
    if n == 0:
        return bright
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def body_anchor(img: np.ndarray, body: np.ndarray) -> tuple[float, float, str]:
    """(row, column) of the body's anchor in pixel units (pixel i spans [i, i+1)), and what it is.

    A first guess of where the training cube's centre projects (data/preprocessing.body_center
    centres it on the body across and on the lungs vertically): the body mask's centroid across,
    and vertically the centroid of the darkness inside the body (how far each pixel lies below the
    in-body median), away from the body's rim (thin tissue at the edge is dark too) — the lungs.
    Inference refines it by registration to the training X-rays' mean image (`mean_image`).
    """
    rows, cols = np.nonzero(body)
    col = float(cols.mean()) + 0.5
    width = cols.max() - cols.min() + 1
    core = ndimage.binary_erosion(body, iterations=max(1, int(round(RIM_FRACTION * width))))
    if not core.any():
        core = body
    weight = np.where(core, np.clip(np.median(img[core]) - img, 0.0, None), 0.0)
    if weight.sum() > 0:
        row = float((weight.sum(1) * (np.arange(img.shape[0]) + 0.5)).sum() / weight.sum())
        return row, col, "lungs (vertical), body centroid (across)"
    return float(rows.mean()) + 0.5, col, "body centroid"


def in_body_quantiles(values: np.ndarray) -> np.ndarray:
    """`N_QUANTILES` evenly spaced quantiles (0 … 1) of in-body pixel values."""
    return np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0.0, 1.0, N_QUANTILES))


def body_width(mask: np.ndarray) -> float:
    """Median width (pixels) of the body over the image rows it crosses: the patient's extent across the view."""
    rows = np.asarray(mask, dtype=bool).sum(axis=1)
    rows = rows[rows > 0]
    return float(np.median(rows)) if rows.size else 0.0


def body_level(img: np.ndarray, mask: np.ndarray) -> float:
    """Mean in-body line integral in units of the model's range (x + 1: air is 0)."""
    return float((np.asarray(img, dtype=np.float64)[mask] + 1.0).mean())


def fit_levels(levels: dict[str, list[float]], widths: dict[str, list[float]]) -> dict[str, dict[str, list[float]]]:
    """Per view, log(in-body level) = a + b·log(body width of view w), least squares over the training cases.

    A ray's line integral grows with the thickness it crosses, which the *other* view shows as the
    body's width (the lateral film's width is the AP thickness): a film's processing hides its level
    but not its geometry. Fits for every view w, so a single film can use its own width. Views or
    fits without spread (fewer than LEVEL_MIN_CASES cases, equal widths) are left out.
    """
    out: dict[str, dict[str, list[float]]] = {}
    for view, lv in levels.items():
        y = np.log(np.asarray(lv, dtype=np.float64))
        fits = {}
        for other, wd in widths.items():
            w = np.asarray(wd, dtype=np.float64)
            ok = np.isfinite(y) & (w > 0)
            if ok.sum() < LEVEL_MIN_CASES or np.ptp(np.log(w[ok])) < 1e-6:
                continue
            b, a = np.polyfit(np.log(w[ok]), y[ok], 1)  # slope, intercept
            fits[other] = [round(float(a), 6), round(float(b), 6)]
        if fits:
            out[view] = fits
    return out


def xray_stats(images_per_view: dict[str, list[np.ndarray]]) -> dict:
    """data_info `xray_stats` of model-range X-rays: per view, in-body quantiles, mean body fraction,
    mean image and the body-level fits (`fit_levels`; the lists of every view hold the same cases in order)."""
    views = {}
    levels: dict[str, list[float]] = {}
    widths: dict[str, list[float]] = {}
    for view, images in images_per_view.items():
        inside, fractions, small = [], [], []
        for img in images:
            img = np.asarray(img, dtype=np.float64)
            m = body_mask(img)
            inside.append(img[m])
            fractions.append(float(m.mean()))
            levels.setdefault(view, []).append(body_level(img, m))
            widths.setdefault(view, []).append(body_width(m))
            H, W = img.shape
            small.append(area_resample(img, 0.0, H / MEAN_SIZE, 0.0, W / MEAN_SIZE, MEAN_SIZE))
        q = in_body_quantiles(np.concatenate(inside))
        views[view] = {"in_body_quantiles": [round(float(x), 6) for x in q],
                       "body_fraction": round(float(np.mean(fractions)), 6),
                       # the mean X-ray on a MEAN_SIZE² grid over the detector: where anatomy sits in training
                       "mean_image": np.round(np.mean(small, axis=0), 4).tolist()}
    for view, fits in fit_levels(levels, widths).items():
        views[view]["level_fits"] = fits  # {width view: [a, b]}: log level = a + b · log width (pixels)
    n = len(next(iter(images_per_view.values()), []))
    return {"method": BODY_METHOD, "quantiles": N_QUANTILES, "images_per_view": n, "views": views}


def training_xray_stats(dataset_root: str | os.PathLike) -> dict:
    """`xray_stats` of a prepared dataset's training split (its normalised `xray` arrays)."""
    from .datasets import CTXrayDataset

    ds = CTXrayDataset(dataset_root, "train", [])  # no CT resolutions: only the X-rays are read
    per_view: dict[str, list[np.ndarray]] = {v: [] for v in ds.views}
    for i in range(len(ds)):
        x = ds[i]["xray"].numpy()
        for v, view in enumerate(ds.views):
            per_view[view].append(x[v])
    return xray_stats(per_view)


def area_resample(img: np.ndarray, r0: float, dr: float, c0: float, dc: float, n: int) -> np.ndarray:
    """(n, n) means of `img` over the cells [r0 + i·dr, r0 + (i+1)·dr) × [c0 + j·dc, …), exactly.

    Pixel i covers [i, i+1). The integral image of piecewise-constant pixels is bilinear between its
    corners, so its bilinear interpolation at fractional cell edges gives each cell's exact integral.
    Cells must lie inside the image.
    """
    H, W = img.shape
    S = np.zeros((H + 1, W + 1))
    S[1:, 1:] = np.asarray(img, dtype=np.float64).cumsum(0).cumsum(1)

    def at(table: np.ndarray, x: np.ndarray) -> np.ndarray:  # rows of `table` interpolated at x
        x = np.clip(x, 0, table.shape[0] - 1)
        i = np.minimum(np.floor(x).astype(int), table.shape[0] - 2)
        f = (x - i)[:, None]
        return table[i] * (1 - f) + table[i + 1] * f

    T = at(S, r0 + dr * np.arange(n + 1))  # (n+1, W+1)
    U = at(T.T, c0 + dc * np.arange(n + 1)).T  # (n+1, n+1)
    return (U[1:, 1:] - U[:-1, 1:] - U[1:, :-1] + U[:-1, :-1]) / (dr * dc)


def match_to_quantiles(img: np.ndarray, mask: np.ndarray, target: np.ndarray, floor: float = -1.0) -> np.ndarray:
    """Histogram-match `img` onto `target` quantiles inside `mask`: a monotone piecewise-linear LUT.

    The image's own in-body quantiles are the LUT's knots and `target` its values; pixels brighter
    than the body's maximum take the target maximum. Pixels darker than the body's minimum (direct
    exposure around the body) run linearly from the image's minimum at `floor` (the model's air,
    a line integral of 0) to the target minimum.
    """
    img = np.asarray(img, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    src = np.quantile(img[mask], np.linspace(0.0, 1.0, len(target)))
    # Ties (a saturated or quantised film) would make the LUT a step: merge equal knots, averaging their targets.
    knots, inverse = np.unique(src, return_inverse=True)
    if len(knots) < 2:
        raise ValueError("the body is (nearly) constant in this image; nothing to match")
    values = np.bincount(inverse, weights=target) / np.bincount(inverse)
    out = np.interp(img, knots, values)
    below = img < knots[0]
    if below.any():
        lo = float(img.min())
        frac = (img[below] - lo) / (knots[0] - lo)
        out[below] = floor + frac * (values[0] - floor)
    return out


LOW_PCT, HIGH_PCT = 0.5, 99.5  # robust ends of a display radiograph's intensities (ignore a few outliers)


def percentile_normalize(pixels: np.ndarray) -> np.ndarray:
    """Display intensities (bright = attenuating) -> [-1, 1] by robust percentiles."""
    lo, hi = np.percentile(pixels, [LOW_PCT, HIGH_PCT])
    if not hi > lo:
        raise ValueError("image is (nearly) constant; nothing to reconstruct from")
    x = (pixels - lo) / (hi - lo) * 2.0 - 1.0
    return np.clip(x, -1.0, 1.0)
