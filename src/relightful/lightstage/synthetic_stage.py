"""The `synthetic-stage` job: a default rig and procedural busts rendered once per LED, written as OLAT sets.

Why: the whole workflow (pairs, training, evaluation) must run without a real light stage, and the physics checks
(white furnace, energy, shadows) need subjects whose ground truth (albedo, normals, visibility) is known exactly.
The subjects are drawn by `subjects.random_subject` and rendered by `raytrace.render_subject`; the folder has the
format of DESIGN 3.2, so real captures drop in for it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from relightful.io.atomic import atomic_write_text
from relightful.lighting.rig import LedRig
from relightful.lightstage.format import write_olat_set
from relightful.lightstage.raytrace import render_subject
from relightful.lightstage.default_rig import make_default_rig
from relightful.lightstage.subjects import random_subject


def subject_seed(seed: int, index: int) -> int:
    """The seed of subject `index` of a stage generated with `seed` (independent streams per subject)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def synthetic_subject_ids(n_subjects: int) -> list[str]:
    """The subject ids `write_synthetic_stage` gives `n_subjects` subjects (known without rendering them)."""
    return [f"synth-{index:03d}" for index in range(n_subjects)]


@dataclass(frozen=True)
class SyntheticStageConfig:
    """The `synthetic_stage` block of params.yaml: the rig and the procedural subjects."""

    n_subjects: int = 10
    size: int = 128
    n_leds: int = 156
    min_elevation_deg: float = -70.0
    sigma_deg: float = 8.0
    gain_jitter: float = 0.0
    seed: int = 0
    layout: str = "safetensors"


def build_synthetic_stage(out_dir: str | Path, config: SyntheticStageConfig, progress: bool = True) -> list[str]:
    """The default rig of `config` plus its synthetic subjects, written in the light-stage folder format."""
    rig = make_default_rig(config.n_leds, config.min_elevation_deg, config.sigma_deg,
                           gain_jitter=config.gain_jitter, seed=config.seed)
    return write_synthetic_stage(out_dir, rig, config.n_subjects, (config.size, config.size), config.seed,
                                 config.layout, progress)


def write_synthetic_stage(out_dir: str | Path, rig: LedRig, n_subjects: int, size: tuple[int, int] = (256, 256),
                          seed: int = 0, layout: str = "safetensors", progress: bool = True) -> list[str]:
    """Render `n_subjects` random busts and write `out_dir/rig.json` plus `out_dir/subjects/synth-XXX/` OLAT sets
    (with a `subject.json` holding the spec). Same arguments, byte-identical files. Returns the subject ids.

    Synthetic subjects of an earlier, larger run are removed so the folder holds exactly this stage.
    """
    out_dir = Path(out_dir)
    rig.to_json(out_dir / "rig.json")
    ids = []
    for index, subject_id in enumerate(tqdm(synthetic_subject_ids(n_subjects), desc="synthetic subjects",
                                            unit="subject", disable=not progress)):
        spec = random_subject(subject_seed(seed, index))
        subject = render_subject(spec, rig, size=size)
        subject_dir = out_dir / "subjects" / subject_id
        write_olat_set(subject_dir, subject.olat, subject.matte, rig, layout=layout)
        info = {"subject_id": subject_id, "seed": seed, "index": index, "size": list(size),
                "rig": rig.fingerprint, "spec": spec.to_dict()}
        atomic_write_text(subject_dir / "subject.json", json.dumps(info, indent=1) + "\n")
        ids.append(subject_id)
    for stale in (out_dir / "subjects").glob("synth-*"):
        if stale.name not in ids:
            shutil.rmtree(stale)
    return ids
