"""What sits on a real chest film besides the patient: the lead side marker and burned-in text.

A radiographer puts a lead letter (L or R, 1–3 cm) on the detector inside the exposed field, usually
in an upper outer corner, on almost every film; it stops the beam, so it shows as the densest thing on
the film (with the scatter of its surroundings on it). Many systems also burn annotations (ward,
"PORTABLE", date, operator) into the pixels of a film "for presentation", white, in a corner, often
over the collimation band. Both are in the simulated clinical chain (data/clinical.py) so the reader
is tested and trained against them. The letters are 5 × 7 bitmaps (no font dependency); text is
drawn as glyph-sized random blocks, which is all the reader sees of it.
"""
from __future__ import annotations

import numpy as np

MARKER_LI = 8.0  # line integral added under the lead letter: transmission e⁻⁸ ≈ 3·10⁻⁴ (1–2 mm of lead)
TEXT_LINE_MM = 5.0  # height of a burned-in text line on the film (about 14 pt on a 43 cm film)
_GLYPHS = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
}


def _scaled(bits: np.ndarray, h: int, w: int) -> np.ndarray:
    """A 7 × 5 bitmap nearest-neighbour scaled to (h, w)."""
    return bits[(np.arange(h) * 7) // h][:, (np.arange(w) * 5) // w]


def glyph(letter: str, height_px: int) -> np.ndarray:
    """(height_px, ≈5/7·height_px) bool bitmap of a marker letter, nearest-neighbour scaled."""
    if letter not in _GLYPHS:
        raise ValueError(f"marker letter must be one of {sorted(_GLYPHS)}, got {letter!r}")
    bits = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]])
    h = max(7, int(height_px))
    return _scaled(bits, h, max(5, int(round(h * 5 / 7))))


def _place(mask: np.ndarray, at: tuple[float, float], shape: tuple[int, int]) -> tuple[slice, slice, np.ndarray]:
    """Slices of a (rows, cols) image where `mask` goes with its top-left at fractions `at`, clipped to the image."""
    H, W = shape
    r0, c0 = int(round(at[0] * H)), int(round(at[1] * W))
    h, w = min(mask.shape[0], H - r0), min(mask.shape[1], W - c0)
    return slice(r0, r0 + h), slice(c0, c0 + w), mask[:h, :w]


def add_lead_marker(li: np.ndarray, letter: str, height_mm: float, at: tuple[float, float],
                    pitch_mm: float) -> np.ndarray:
    """Line integrals with the lead letter in the beam (no-op for letter '')."""
    if not letter:
        return li
    rows, cols, m = _place(glyph(letter, round(height_mm / pitch_mm)), at, li.shape)
    out = li.copy()
    out[rows, cols] += MARKER_LI * m
    return out


def burn_in_text(d: np.ndarray, lines: int, at: tuple[float, float], pitch_mm: float, seed: int) -> np.ndarray:
    """Display values [0, 1] with `lines` lines of white text from fractions `at` (top-left of the block)."""
    if lines <= 0:
        return d
    rng = np.random.default_rng(seed)
    h = max(7, int(round(TEXT_LINE_MM / pitch_mm)))
    gw = max(5, int(round(h * 5 / 7)))  # glyph width; one glyph-width gap between words
    rows_px = []
    for _ in range(lines):
        chars = int(rng.integers(8, 25))
        row = np.zeros((h, chars * (gw + gw // 3)), bool)
        for k in range(chars):
            if rng.random() < 0.15:  # a space
                continue
            x0 = k * (gw + gw // 3)
            row[:, x0:x0 + gw] = _scaled(rng.random((7, 5)) < 0.45, h, gw)
        rows_px.append(np.pad(row, ((0, h // 2), (0, 0))))
    width = max(r.shape[1] for r in rows_px)
    block = np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows_px])
    rs, cs, m = _place(block, at, d.shape)
    out = d.copy()
    out[rs, cs] = np.where(m, 1.0, out[rs, cs])
    return out
