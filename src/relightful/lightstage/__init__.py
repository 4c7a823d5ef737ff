"""Light-stage data: the OLAT-set format, rig generators and a synthetic light stage."""

from relightful.lightstage.default_rig import fibonacci_directions, make_default_rig
from relightful.lightstage.format import load_olat_set, write_olat_set
from relightful.lightstage.raytrace import SyntheticSubject, render_subject
from relightful.lightstage.subjects import SubjectSpec, random_subject, sphere_subject
from relightful.lightstage.synthetic_stage import write_synthetic_stage

__all__ = [
    "SubjectSpec", "SyntheticSubject", "fibonacci_directions", "load_olat_set", "make_default_rig", "random_subject",
    "render_subject", "sphere_subject", "write_olat_set", "write_synthetic_stage",
]
