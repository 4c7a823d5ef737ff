"""The light-stage LED rig: one direction, colour gain and id per LED, plus the lobe width (DESIGN 3.2)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from relightful.io.atomic import atomic_write_text
from relightful.io.errors import InputError
from relightful.io.json_files import read_json


@dataclass(frozen=True, eq=False)
class LedRig:
    """A light stage's LEDs in camera space (+x right, +y up, camera looking along −z)."""

    name: str
    ids: tuple[int, ...]
    directions: np.ndarray  # (N, 3) float64 unit vectors, subject -> LED
    rgb_gain: np.ndarray = field(default=None)  # (N, 3) float64 per-LED colour calibration
    sigma_deg: float = 8.0

    def __post_init__(self):
        d = np.asarray(self.directions, dtype=np.float64)
        if d.ndim != 2 or d.shape[1] != 3:
            raise ValueError(f"rig {self.name!r}: directions must be (N, 3), got {d.shape}")
        norms = np.linalg.norm(d, axis=1)
        if (norms < 1e-9).any() or not np.isfinite(d).all():
            bad = [self.ids[i] for i in np.flatnonzero((norms < 1e-9) | ~np.isfinite(norms))]
            raise ValueError(f"rig {self.name!r}: LED(s) {bad} have a zero or non-finite direction")
        gain = np.ones_like(d) if self.rgb_gain is None else np.asarray(self.rgb_gain, dtype=np.float64)
        if gain.shape != d.shape or not np.isfinite(gain).all() or (gain <= 0).any():
            raise ValueError(f"rig {self.name!r}: rgb_gain must be (N, 3), finite and positive")
        if len(self.ids) != len(d) or len(set(self.ids)) != len(self.ids):
            raise ValueError(f"rig {self.name!r}: need one unique id per LED")
        if not 0.0 < float(self.sigma_deg) < 180.0:
            raise ValueError(f"rig {self.name!r}: sigma_deg must be in (0, 180), got {self.sigma_deg}")
        d = d / norms[:, None]
        d.setflags(write=False)
        gain.setflags(write=False)
        object.__setattr__(self, "directions", d)
        object.__setattr__(self, "rgb_gain", gain)
        object.__setattr__(self, "ids", tuple(int(i) for i in self.ids))
        object.__setattr__(self, "sigma_deg", float(self.sigma_deg))

    @property
    def n_leds(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        """A short hash of the geometry and lobe width; caches and datasets are keyed by it."""
        h = hashlib.sha256(self.directions.tobytes() + np.float64(self.sigma_deg).tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def from_json(cls, path: str | Path) -> "LedRig":
        path = Path(path)
        spec = read_json(path, missing="rig file not found")
        try:
            leds = spec["leds"]
            if not leds:
                raise ValueError("the rig has no LEDs")
            ids = [int(led["id"]) for led in leds]
            directions = np.array([led["direction"] for led in leds], dtype=np.float64)
            gains = np.array([led.get("rgb_gain", [1.0, 1.0, 1.0]) for led in leds], dtype=np.float64)
            return cls(name=str(spec.get("name", path.stem)), ids=tuple(ids), directions=directions,
                       rgb_gain=gains, sigma_deg=float(spec.get("sigma_deg", 8.0)))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(path, f"invalid rig: {err}") from None

    def to_json(self, path: str | Path) -> None:
        spec = {
            "name": self.name,
            "sigma_deg": self.sigma_deg,
            "leds": [
                {"id": i, "direction": [round(float(v), 9) for v in d], "rgb_gain": [round(float(v), 9) for v in g]}
                for i, d, g in zip(self.ids, self.directions, self.rgb_gain)
            ],
        }
        atomic_write_text(path, json.dumps(spec, indent=1) + "\n")
