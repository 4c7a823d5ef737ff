"""Rig generators: an evenly spread LED sphere like a light stage's, with an optional gap at the floor."""

from __future__ import annotations

import numpy as np

from relightful.lighting.rig import LedRig


def fibonacci_directions(n: int, min_elevation_deg: float = -90.0) -> np.ndarray:
    """(n, 3) unit vectors spread evenly (golden-angle spiral) over the sphere above `min_elevation_deg`."""
    if n < 1:
        raise ValueError(f"need at least one LED, got {n}")
    y_min = np.sin(np.radians(min_elevation_deg))
    y = 1.0 - (1.0 - y_min) * (np.arange(n) + 0.5) / n
    radius = np.sqrt(np.clip(1.0 - y * y, 0.0, 1.0))
    angle = np.arange(n) * np.pi * (3.0 - np.sqrt(5.0))
    return np.stack([radius * np.sin(angle), y, -radius * np.cos(angle)], axis=1)


def make_default_rig(n_leds: int = 156, min_elevation_deg: float = -70.0, sigma_deg: float = 8.0,
                     name: str = "default-stage", gain_jitter: float = 0.0, seed: int = 0) -> LedRig:
    """A light-stage-like rig: `n_leds` LEDs over the sphere, none below `min_elevation_deg` (the floor).

    `gain_jitter` > 0 gives each LED a random colour calibration gain (as a real stage has), which loading divides
    out again.
    """
    directions = fibonacci_directions(n_leds, min_elevation_deg)
    gains = np.ones((n_leds, 3))
    if gain_jitter > 0:
        gains = 1.0 + np.random.default_rng(seed).uniform(-gain_jitter, gain_jitter, size=(n_leds, 3))
    return LedRig(name=name, ids=tuple(range(n_leds)), directions=directions, rgb_gain=gains, sigma_deg=sigma_deg)
