"""Light transport core: environment maps, the LED rig and basis, relighting, background crops (DESIGN 3.1-3.3)."""

from relightful.lighting.basis import envmap_to_led_weights, led_projection_matrix, led_weights_to_envmap
from relightful.lighting.camera import camera_rays, perspective_crop, project_to_pixel
from relightful.lighting.envmap import (
    check_envmap,
    direction_to_pixel,
    latlong_directions,
    latlong_solid_angles,
    resize_envmap,
    rotate_envmap,
    sample_envmap,
)
from relightful.lighting.relight import OlatStack, relight
from relightful.lighting.rig import LedRig

__all__ = [
    "LedRig", "OlatStack", "camera_rays", "check_envmap", "direction_to_pixel", "envmap_to_led_weights",
    "latlong_directions", "latlong_solid_angles", "led_projection_matrix", "led_weights_to_envmap",
    "perspective_crop", "project_to_pixel", "relight", "resize_envmap", "rotate_envmap", "sample_envmap",
]
