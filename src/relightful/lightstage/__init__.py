"""Light-stage data: the OLAT-set format, rig generators and a synthetic light stage."""

from relightful.lightstage.format import load_olat_set, write_olat_set
from relightful.lightstage.rigs import fibonacci_directions, make_default_rig

__all__ = ["fibonacci_directions", "load_olat_set", "make_default_rig", "write_olat_set"]
