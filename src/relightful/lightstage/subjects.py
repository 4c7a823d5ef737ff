"""Procedural subjects of the synthetic light stage: the specs of a bust and a random generator of varied ones.

A subject is a union of analytic solids in camera space (+x right, +y up, camera looking along −z): an ellipsoid
head whose front carries a face (MediaPipe's canonical face mesh fitted onto it and varied per subject: width, depth,
nose, jaw; see `face_mesh.py`), ears, an optional hair cap (a larger ellipsoid cut by a plane, covering the top and
back of the head), a cylindrical neck, and clothing (a chest ellipsoid, a flat shoulder girdle and two upper arms).
The specs are plain frozen dataclasses that round-trip through JSON (`subject.json` of each OLAT set).
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass

import numpy as np

Vec3 = tuple[float, float, float]

#: Labels of `SyntheticSubject.parts`.
PART_NAMES = ("background", "head", "neck", "hair", "clothing")


@dataclass(frozen=True)
class Material:
    """Linear RGB albedo plus a white Blinn-Phong highlight of strength `specular` and `roughness` in (0, 1]."""

    albedo: Vec3
    specular: float = 0.0
    roughness: float = 0.5

    @property
    def shininess(self) -> float:
        """Blinn-Phong exponent matching a Beckmann-like roughness α: s = 2/α² − 2."""
        return max(2.0 / self.roughness**2 - 2.0, 1.0)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid: centre, semi-axes along its local x/y/z, and rotation (pitch about x, yaw about y, roll about z,
    degrees, applied in that order) taking local axes to camera space."""

    center: Vec3
    radii: Vec3
    rotation_deg: Vec3 = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Neck:
    """A solid elliptic cylinder from `bottom` to `top` (its ends hide inside the torso and the head)."""

    bottom: Vec3
    top: Vec3
    radius: float
    depth_scale: float = 0.9  # front-to-back radius / side-to-side radius


@dataclass(frozen=True)
class Hair:
    """A hair cap over the top and back of the head: the part of `shell` where cut_normal · (p − c) ≥ cut_offset."""

    shell: Ellipsoid
    cut_normal: Vec3
    cut_offset: float


@dataclass(frozen=True)
class Face:
    """The canonical face mesh on the front of the head, varied per subject. Factors of 1 give the mesh as MediaPipe
    ships it, scaled to the head: `width` stretches it sideways, `depth` scales its relief over the head's ellipsoid,
    `nose` scales the relief around the nose tip, `jaw` narrows or widens the lower face. Lips are the skin times
    `lip_tint`; brows take the hair colour; eyes have a white sclera and an iris of albedo `iris`."""

    width: float = 1.0
    depth: float = 1.0
    nose: float = 1.0
    jaw: float = 1.0
    lip_tint: Vec3 = (0.85, 0.6, 0.6)
    iris: Vec3 = (0.06, 0.035, 0.02)


@dataclass(frozen=True)
class SubjectSpec:
    """Procedural parameters of a bust, all in camera space. Only the head is required (a sphere is a valid subject)."""

    head: Ellipsoid
    skin: Material
    features: tuple[Ellipsoid, ...] = ()  # skin-coloured extras fixed to the head: ears
    face: Face | None = None
    neck: Neck | None = None
    torso: Ellipsoid | None = None
    shoulders: tuple[Ellipsoid, ...] = ()
    hair: Hair | None = None
    hair_material: Material = Material((0.05, 0.03, 0.02), 0.1, 0.35)
    clothing: Material = Material((0.3, 0.3, 0.3), 0.01, 0.8)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SubjectSpec":
        def ell(e):
            return None if e is None else Ellipsoid(tuple(e["center"]), tuple(e["radii"]), tuple(e["rotation_deg"]))

        def mat(m):
            return Material(tuple(m["albedo"]), float(m["specular"]), float(m["roughness"]))

        neck = d.get("neck")
        hair = d.get("hair")
        face = d.get("face")
        return cls(
            head=ell(d["head"]), skin=mat(d["skin"]), features=tuple(ell(f) for f in d.get("features", ())),
            face=None if face is None else Face(**{k: tuple(v) if isinstance(v, list) else float(v)
                                                   for k, v in face.items()}),
            neck=None if neck is None else Neck(tuple(neck["bottom"]), tuple(neck["top"]), float(neck["radius"]),
                                                float(neck["depth_scale"])),
            torso=ell(d.get("torso")), shoulders=tuple(ell(s) for s in d.get("shoulders", ())),
            hair=None if hair is None else Hair(ell(hair["shell"]), tuple(hair["cut_normal"]),
                                                float(hair["cut_offset"])),
            hair_material=mat(d["hair_material"]), clothing=mat(d["clothing"]),
        )


# ----------------------------------------------------------------------------------------------------------------
# Random subjects

# Linear-RGB skin albedos from very light to very dark; a subject's skin is a point on this path plus a little jitter.
_SKIN_TONES = np.array([
    [0.68, 0.50, 0.41], [0.58, 0.40, 0.30], [0.44, 0.28, 0.19], [0.30, 0.18, 0.11], [0.17, 0.10, 0.06],
    [0.09, 0.055, 0.035],
])
_HAIR_COLOURS = np.array([
    [0.020, 0.016, 0.014], [0.05, 0.030, 0.018], [0.13, 0.075, 0.040], [0.40, 0.29, 0.15], [0.28, 0.09, 0.035],
    [0.36, 0.35, 0.34],
])

_IRIS_COLOURS = np.array([[0.05, 0.028, 0.015], [0.12, 0.07, 0.03], [0.08, 0.10, 0.05], [0.07, 0.11, 0.16]])


def _rng_vec(rng: np.random.Generator, lo, hi) -> np.ndarray:
    return rng.uniform(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))


def _tuple(v) -> tuple[float, ...]:
    return tuple(round(float(x), 6) for x in v)


def rotation_matrix(rotation_deg) -> np.ndarray:
    """3x3 matrix whose columns are the local axes in camera space: Rz(roll) · Ry(yaw) · Rx(pitch)."""
    px, py, pz = np.radians(np.asarray(rotation_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(px), -np.sin(px)], [0, np.sin(px), np.cos(px)]])
    ry = np.array([[np.cos(py), 0, np.sin(py)], [0, 1, 0], [-np.sin(py), 0, np.cos(py)]])
    rz = np.array([[np.cos(pz), -np.sin(pz), 0], [np.sin(pz), np.cos(pz), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_subject(seed: int) -> SubjectSpec:
    """A plausible, varied bust, deterministic for `seed`: head and hair shape, pose, skin tone, hair and clothes."""
    rng = np.random.default_rng(seed)
    # Head: a slightly tall ellipsoid above the frame centre, nodding/turning/tilting a little.
    head_radii = np.array([0.34, 0.45, 0.39]) * rng.uniform(0.9, 1.08) * _rng_vec(rng, [0.94] * 3, [1.06] * 3)
    head_center = _rng_vec(rng, [-0.06, 0.10, -0.02], [0.06, 0.22, 0.04])
    head_rot = _rng_vec(rng, [-8.0, -20.0, -7.0], [8.0, 20.0, 7.0])
    rot = rotation_matrix(head_rot)
    head = Ellipsoid(_tuple(head_center), _tuple(head_radii), _tuple(head_rot))

    # Ears: small skin-coloured ellipsoids fixed to the head (the face, nose included, is the mesh drawn below).
    rx, ry, rz = head_radii
    rng.uniform(0.85, 1.2)  # was the size of a stick nose; drawn still, so every later draw stays as it was
    features = []
    for side in (-1.0, 1.0):
        features.append(Ellipsoid(_tuple(head_center + rot @ np.array([side * 0.97 * rx, -0.05 * ry, -0.05 * rz])),
                                  _tuple([0.035, 0.09, 0.06]), _tuple(head_rot + [0.0, side * 20.0, 0.0])))

    # Neck: from inside the torso up into the head, slightly behind the head centre.
    neck_radius = rx * rng.uniform(0.45, 0.58)
    neck_top = head_center + np.array([0.0, -0.1, -0.06])
    neck_bottom = np.array([head_center[0] * 0.5, -0.85, -0.1])
    neck = Neck(_tuple(neck_bottom), _tuple(neck_top), round(float(neck_radius), 6),
                round(float(rng.uniform(0.85, 1.0)), 6))

    # Torso: a chest ellipsoid cut by the bottom edge, a wide flat shoulder girdle, and upper arms going down out of
    # the frame at its ends.
    width = rng.uniform(0.82, 0.98)
    shoulder_y = head_center[1] - ry - rng.uniform(0.17, 0.3)  # top of the shoulder line, below the chin
    lean = rng.uniform(-3, 3)
    torso = Ellipsoid(_tuple([0.0, shoulder_y - 0.62, -0.12]), _tuple([width * 0.85, 0.66, 0.32]),
                      _tuple([0.0, rng.uniform(-8, 8), lean]))
    girdle_ry = rng.uniform(0.15, 0.2)
    shoulders = [Ellipsoid(_tuple([0.0, shoulder_y - girdle_ry, -0.1]), _tuple([width - 0.06, girdle_ry, 0.24]),
                           _tuple([0.0, 0.0, lean]))]
    arm = rng.uniform(0.16, 0.2)
    for side in (-1.0, 1.0):
        shoulders.append(Ellipsoid(_tuple([side * (width - arm), shoulder_y - 0.6 * girdle_ry - 0.62, -0.1]),
                                   _tuple([arm, 0.62, arm]),
                                   _tuple([0.0, 0.0, side * rng.uniform(2, 6)])))

    # Hair: a shell a little larger than the head, cut by a plane tilted towards the back; the plane crosses the
    # front of the shell at the hairline, above the brows (the face's forehead ends at about 0.75 of the height).
    hair = None
    if rng.uniform() > 0.12:
        scale = _rng_vec(rng, [1.04, 1.03, 1.04], [1.14, 1.12, 1.12])
        shift_local = np.array([0.0, rng.uniform(0.0, 0.04), -rng.uniform(0.0, 0.04)])
        tilt = np.radians(rng.uniform(25, 50))
        cut_local = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
        shell = head_radii * scale
        hairline = rng.uniform(0.55, 0.8) * shell[1]
        front = shell[2] * np.sqrt(1.0 - (hairline / shell[1]) ** 2)
        hair = Hair(Ellipsoid(_tuple(head_center + rot @ shift_local), _tuple(shell), _tuple(head_rot)),
                    _tuple(rot @ cut_local), round(float(hairline * np.cos(tilt) - front * np.sin(tilt)), 6))

    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    i = min(int(tone), len(_SKIN_TONES) - 2)
    skin_rgb = (_SKIN_TONES[i] + (tone - i) * (_SKIN_TONES[i + 1] - _SKIN_TONES[i])) * _rng_vec(rng, [0.94] * 3,
                                                                                                [1.06] * 3)
    skin = Material(_tuple(skin_rgb), round(float(rng.uniform(0.02, 0.07)), 6), round(float(rng.uniform(0.3, 0.5)), 6))
    hair_rgb = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * _rng_vec(rng, [0.8] * 3, [1.2] * 3)
    hair_material = Material(_tuple(hair_rgb), round(float(rng.uniform(0.04, 0.15)), 6),
                             round(float(rng.uniform(0.25, 0.45)), 6))
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.8), rng.uniform(0.15, 0.9))
    cloth_rgb = np.array([r, g, b]) ** 2.2 * 0.85 + 0.02  # display-like colour to linear, kept in [0.02, 0.87]
    clothing = Material(_tuple(cloth_rgb), round(float(rng.uniform(0.0, 0.03)), 6),
                        round(float(rng.uniform(0.6, 0.9)), 6))
    iris = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * _rng_vec(rng, [0.8] * 3, [1.2] * 3)
    face = Face(width=round(float(rng.uniform(0.9, 1.1)), 6), depth=round(float(rng.uniform(0.8, 1.2)), 6),
                nose=round(float(rng.uniform(0.75, 1.35)), 6), jaw=round(float(rng.uniform(0.85, 1.12)), 6),
                lip_tint=_tuple(_rng_vec(rng, [0.75, 0.5, 0.5], [0.95, 0.7, 0.7])), iris=_tuple(iris))
    return SubjectSpec(head=head, skin=skin, features=tuple(features), face=face, neck=neck, torso=torso,
                       shoulders=tuple(shoulders), hair=hair, hair_material=hair_material, clothing=clothing)


def sphere_subject(radius: float = 0.7, albedo: Vec3 = (0.6, 0.6, 0.6), specular: float = 0.0,
                   roughness: float = 0.4) -> SubjectSpec:
    """A single sphere at the frame centre: the simplest subject for physics checks."""
    return SubjectSpec(head=Ellipsoid((0.0, 0.0, 0.0), (radius, radius, radius)),
                       skin=Material(tuple(albedo), specular, roughness))


