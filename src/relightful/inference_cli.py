"""`relightful harmonize`: relight a portrait onto a new background (DESIGN 3.7). Kept apart from cli.py so the
inference command and its checks live next to each other; cli.py registers it with `add_harmonize_parser`."""

from __future__ import annotations

import argparse
from pathlib import Path

from relightful.io.errors import InputError

DEFAULT_MAX_PIXELS = 40_000_000  # a 7,700×5,200 photo; its decoded copies take a few GB


def cmd_harmonize(args: argparse.Namespace) -> None:
    """Read, check sizes before loading the model (a mistake fails in a second), relight, write atomically."""
    from relightful.io import LDR_SUFFIXES, check_pixels, read_ldr, read_matte, to_uint8, write_ldr

    if args.out.suffix.lower() not in LDR_SUFFIXES:
        raise InputError(args.out, f"output must be an 8-bit image file, one of {', '.join(LDR_SUFFIXES)}")
    for path in (args.fg, args.matte, args.bg):  # from the headers, before any image is decoded
        check_pixels(path, args.max_pixels)
    fg, matte, bg = read_ldr(args.fg), read_matte(args.matte), read_ldr(args.bg)
    if fg.shape[:2] != matte.shape:
        raise InputError(args.matte, f"the matte is {matte.shape[1]}x{matte.shape[0]} but the foreground {args.fg} "
                                     f"is {fg.shape[1]}x{fg.shape[0]}: they must have the same size")
    from relightful.models.pipeline import Harmonizer

    harmonizer = Harmonizer.from_pretrained(args.model, device=args.device)
    out = harmonizer(to_uint8(fg), matte, to_uint8(bg), steps=args.steps, seed=args.seed,
                     image_guidance=args.image_guidance, lighting_guidance=args.lighting_guidance,
                     progress=not args.quiet)
    write_ldr(args.out, out.astype("float32") / 255.0)
    print(f"harmonize: {out.shape[1]}x{out.shape[0]} -> {args.out}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def add_harmonize_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `harmonize` sub-command to `relightful`'s sub-parsers."""
    p = subparsers.add_parser("harmonize", help="relight a portrait (foreground + matte) to match a new background",
                              description="Relight the foreground to the background's lighting and composite it. "
                                          "OUT has the foreground's size; background pixels are the input "
                                          "background, resized to cover and centre-cropped.")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="model folder, or an MLflow URI such as models:/relightful-stage3@champion")
    p.add_argument("--fg", type=Path, required=True, metavar="FG.png", help="foreground portrait (8/16-bit image)")
    p.add_argument("--matte", type=Path, required=True, metavar="MATTE.png", help="alpha matte, same size as --fg (grey or RGBA alpha)")
    p.add_argument("--bg", type=Path, required=True, metavar="BG.jpg", help="background photo, any size")
    p.add_argument("--out", type=Path, required=True, metavar="OUT.png", help="output image (8-bit sRGB; PNG keeps it lossless)")
    p.add_argument("--steps", type=_positive, default=None, metavar="N",
                   help="sampler steps (default: the model's, as trained; else 20)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="noise seed: same seed, same output")
    p.add_argument("--image-guidance", type=float, default=None, metavar="X",
                   help="image guidance scale (default: the model's; else 1.5)")
    p.add_argument("--lighting-guidance", type=float, default=None, metavar="Y",
                   help="lighting guidance scale (default: the model's; else 3.0)")
    p.add_argument("--max-pixels", type=_positive, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse an input image of more pixels than this (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_harmonize)
    return p


__all__ = ["add_harmonize_parser", "cmd_harmonize"]
