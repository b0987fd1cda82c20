"""The patient's body plan in millimetres: landmark heights and the rib cage / spine profile along z.

Patient frame: RAS+ mm, z = 0 at the middle of the scan, x = 0 on the midline, y = 0 at the centre
of the rib cage at the level of the right diaphragm dome. `Layout.section(z)` gives, for any
heights, the rib cage's inner half-width A and half-depth B about its centre yc (an ellipse), the
sternum's inner surface y_ant, the vertebral body's centre (x_s, y_vb), width and depth.
"""
from __future__ import annotations

import numpy as np

from .patient import BODY_DEPTH_MM, BODY_FRACTION, BODY_WIDTH_MM, LEVELS, T1, Patient


class Layout:
    """Landmarks (z, mm) and cross-section profiles of one patient."""

    def __init__(self, p: Patient):
        self.p = p
        lv, b = p.levels, p.body
        self.half_z = p.extent[2] / 2.0
        self.z = {k: self.half_z - v for k, v in lv.items() if not isinstance(v, list)}
        self.tops = self.half_z - np.array(lv["tops"])  # z of each vertebra's top (LEVELS order)
        self.pitch = np.array(lv["pitch"])
        self.z_t12_bottom = self.tops[LEVELS.index("T12")] - self.pitch[LEVELS.index("T12")]
        self.z_t6 = self.tops[T1 + 5]
        self.A_max = b["cage_width"] / 2.0
        self.z_wide = self.z["dome_right"] + b["widest_above_dome"]
        self.sv_mid = b["cage_width"] / b["haller"]  # sternum to vertebral body [HAL]
        self.y0 = 0.0
        self.y0 = -float(self.section(np.array([self.z["dome_right"]]))["yc"][0])

    def level_z(self, pos: float) -> float:
        """z of a fractional vertebral level position (index into LEVELS, e.g. T1 + 3.5)."""
        return float(np.interp(pos, np.arange(len(LEVELS)), self.tops))

    def vertebra(self, z: np.ndarray):
        """(level index, fraction 0..1 from the vertebra's top down) of heights z."""
        # tops decrease with index; position = index + (top - z) / pitch
        pos = np.interp(-z, -self.tops, np.arange(len(LEVELS)), left=0.0, right=len(LEVELS) - 1.0)
        k = np.clip(np.floor(pos).astype(int), 0, len(LEVELS) - 1)
        frac = (self.tops[k] - z) / self.pitch[k]
        return k, frac

    def section(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """Rib cage ellipse and spine position at heights z (1-D arrays, mm)."""
        b = self.p.body
        z = np.asarray(z, dtype=np.float64)
        z_t1, z_apex = self.z["T1"], self.z["apex"]
        a_in = self.A_max * b["inlet_ratio"]
        s = np.clip((z_t1 - z) / max(z_t1 - self.z_wide, 1.0), 0.0, 1.0)
        A = a_in + (self.A_max - a_in) * np.sin(0.5 * np.pi * s) ** 0.5
        below = np.clip((self.z_wide - z) / 150.0, 0.0, 1.0)
        A = np.where(z < self.z_wide, self.A_max * (1.0 - 0.12 * below), A)
        cup = np.clip((z - z_t1) / max(z_apex - z_t1, 1.0), 0.0, 1.0)  # lung apices above T1
        A = np.where(z > z_t1, a_in * np.sqrt(np.clip(1.0 - cup**2, 0.0, 1.0)), A)
        s2 = np.clip((z_t1 - z) / max(z_t1 - self.z_t6, 1.0), 0.0, 1.0)
        sv = b["inlet_depth"] + (self.sv_mid - b["inlet_depth"]) * np.sin(0.5 * np.pi * s2)
        k, _ = self.vertebra(z)
        pos = np.interp(-z, -self.tops, np.arange(len(LEVELS)))
        dv = np.interp(pos, np.arange(len(LEVELS)), BODY_DEPTH_MM) * self.p.levels["pitch"][T1] / 20.0
        wv = np.interp(pos, np.arange(len(LEVELS)), BODY_WIDTH_MM) * self.p.levels["pitch"][T1] / 20.0
        mid = 0.5 * (z_t1 + self.z_t12_bottom)
        half = 0.5 * (z_t1 - self.z_t12_bottom)
        y_vb = self.y0 + b["kyphosis"] * ((z - mid) / half) ** 2  # kyphosis: mid-thoracic spine lowest
        x_s = b["scoliosis"] * np.sin(np.pi * (z_t1 - z) / (2 * half) + b["scoliosis_phase"])
        y_ant = y_vb + dv / 2.0 + sv
        y_post = y_vb - dv / 2.0 - b["gutter"]
        return {"A": A, "B": (y_ant - y_post) / 2.0, "yc": (y_ant + y_post) / 2.0, "y_ant": y_ant,
                "y_post": y_post, "y_vb": y_vb, "x_s": x_s, "dv": dv, "wv": wv, "level": k}

    def at(self, z: float) -> dict[str, float]:
        """`section` at one height, as floats."""
        return {k: float(v[0]) for k, v in self.section(np.array([z])).items()}

    def body_fraction(self, k: np.ndarray) -> np.ndarray:
        """Vertebral body height / pitch of levels k (the rest is the disc below it)."""
        return BODY_FRACTION[k]
