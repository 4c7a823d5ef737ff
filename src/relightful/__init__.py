"""relightful: lighting-aware portrait background replacement (Relightful Harmonization, CVPR 2024)."""

import os as _os

# OpenCV reads and writes OpenEXR only when this is set before cv2 is first imported.
_os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")

__version__ = "0.1.0"
