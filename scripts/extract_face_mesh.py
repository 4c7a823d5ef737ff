"""Extract MediaPipe's canonical face mesh from its npm registry package into the file the synthetic stage ships.

    python scripts/extract_face_mesh.py   # rewrites src/relightful/lightstage/canonical_face_mesh.safetensors

Why a script and a shipped file: the mesh is 468 vertices (Apache-2.0, small enough for git) and the synthetic light
stage must render without a network, so the extraction runs once, by hand, and its output is committed. The mesh is
the `canonical_mesh` (a `Mesh3d`: vertex buffer of x, y, z, u, v per vertex in centimetres, triangle index buffer)
of `geometry_pipeline_metadata_landmarks.binarypb`, stored at a fixed byte range of the package's packed assets.
"""

from __future__ import annotations

import hashlib
import io
import struct
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

URL = "https://registry.npmjs.org/@mediapipe/face_mesh/-/face_mesh-0.4.1657299874.tgz"
SHA256 = "c08a7e0742a326285da666cf81d77c8b6f3a181a2ee948cadaf166008e0d3bc7"
MEMBER = "package/face_mesh_solution_packed_assets.data"
BYTES = (3737848, 3757224)  # geometry_pipeline_metadata_landmarks.binarypb, per the package's loader JS
OUT = Path(__file__).resolve().parents[1] / "src/relightful/lightstage/canonical_face_mesh.safetensors"


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a protobuf message, in order (packed fields left as bytes)."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, wire, value))
    return out


def parse_canonical_mesh(metadata: bytes) -> dict[str, np.ndarray]:
    """vertices (468, 3) cm, uvs (468, 2), triangles (898, 3) from a GeometryPipelineMetadata message."""
    mesh = next(v for n, w, v in _fields(metadata) if n == 1)  # canonical_mesh
    fields = _fields(mesh)
    floats = np.array([struct.unpack("<f", v)[0] for n, w, v in fields if n == 3 and w == 5], np.float32)
    indices = np.array([v for n, w, v in fields if n == 4 and w == 0], np.int32)
    vertex_type = next((v for n, w, v in fields if n == 1), 0)
    if vertex_type != 0 or floats.size % 5 or indices.size % 3:  # 0: VERTEX_PT (position + texture)
        raise ValueError("unexpected canonical mesh layout")
    vertices = floats.reshape(-1, 5)
    return {"vertices": np.ascontiguousarray(vertices[:, :3]), "uvs": np.ascontiguousarray(vertices[:, 3:]),
            "triangles": indices.reshape(-1, 3)}


def main() -> int:
    with urllib.request.urlopen(URL, timeout=120) as response:
        archive = response.read()
    digest = hashlib.sha256(archive).hexdigest()
    if digest != SHA256:
        print(f"{URL}: SHA-256 {digest}, expected {SHA256}", file=sys.stderr)
        return 1
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        packed = tar.extractfile(MEMBER).read()
    mesh = parse_canonical_mesh(packed[BYTES[0]:BYTES[1]])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    save_file(mesh, str(tmp), metadata={"source": f"{URL} {MEMBER} bytes {BYTES[0]}-{BYTES[1]}",
                                        "package_sha256": SHA256, "licence": "Apache-2.0",
                                        "copyright": "Copyright 2020 The MediaPipe Authors"})
    tmp.replace(OUT)
    print(f"{OUT}: {len(mesh['vertices'])} vertices, {len(mesh['triangles'])} triangles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
