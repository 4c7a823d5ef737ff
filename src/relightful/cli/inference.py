"""`relightful harmonize`, `relightful matte` and `relightful fetch-weights` (DESIGN 3.7): relight a portrait onto
a new background, matte a portrait automatically, fetch the segmenter's weights at setup."""

from __future__ import annotations

import argparse
from pathlib import Path

from relightful.cli.common import add_model_options, check_device, check_output_file, positive_int
from relightful.io.errors import InputError
from relightful.io.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, pixel_limit


def max_pixels_default() -> int:
    """`--max-pixels`' default: RELIGHTFUL_MAX_PIXELS when set (the limit every image decoder applies), else
    40 MP, a 7,700×5,200 photo whose decoded copies take a few GB."""
    try:
        return pixel_limit(hdr=False)[0]
    except InputError:  # a bad value is named when an image is read
        return DEFAULT_MAX_PIXELS


def cmd_harmonize(args: argparse.Namespace) -> None:
    """Check the output path, the device and the input sizes before loading the model (a mistake fails in a
    second, and never overwrites an input), then read, relight, write atomically."""
    from relightful.io import LDR_SUFFIXES, check_pixels, read_ldr, read_matte, to_uint8, write_ldr

    check_output_file(args.out, {"--fg": args.fg, "--bg": args.bg, "--matte": args.matte}, LDR_SUFFIXES,
                      kind="an 8-bit image file")
    check_device(args.device)
    for path in (args.fg, args.matte, args.bg):  # from the headers, before any image is decoded
        if path is not None:
            check_pixels(path, args.max_pixels)
    fg, bg = read_ldr(args.fg, max_pixels=args.max_pixels), read_ldr(args.bg, max_pixels=args.max_pixels)
    matte = (read_matte(args.matte, max_pixels=args.max_pixels) if args.matte is not None
             else auto_matte(args.fg, to_uint8(fg)))
    if fg.shape[:2] != matte.shape:
        raise InputError(args.matte, f"the matte is {matte.shape[1]}x{matte.shape[0]} but the foreground {args.fg} "
                                     f"is {fg.shape[1]}x{fg.shape[0]}: they must have the same size")
    from relightful.models.harmonizer import Harmonizer
    from relightful.tracking.model_uri import resolve_model

    harmonizer = Harmonizer.from_pretrained(resolve_model(args.model), device=args.device)
    out = harmonizer(to_uint8(fg), matte, to_uint8(bg), steps=args.steps, seed=args.seed,
                     image_guidance=args.image_guidance, lighting_guidance=args.lighting_guidance,
                     progress=not args.quiet)
    write_ldr(args.out, out.astype("float32") / 255.0)
    print(f"harmonize: {out.shape[1]}x{out.shape[0]} -> {args.out}")


def auto_matte(path: Path, image, method: str = "segmenter") -> "np.ndarray":
    """The matte of the portrait at `path` by `method` (relightful.augment.matting); its failures (no person, no
    weights) as `InputError` naming the file."""
    from relightful.augment.matting import MattingUnavailable, compute_matte

    try:
        return compute_matte(image, method)
    except MattingUnavailable as err:
        raise InputError(path, f"cannot matte it: {err}") from None
    except ValueError as err:  # nothing found
        raise InputError(path, str(err)) from None


def cmd_matte(args: argparse.Namespace) -> None:
    from relightful.io import check_pixels, read_ldr, to_uint8, write_matte

    check_output_file(args.out, {"--image": args.image}, (".png", ".tif", ".tiff"),
                      kind="a lossless grey image (a matte)")
    check_pixels(args.image, args.max_pixels)
    matte = auto_matte(args.image, to_uint8(read_ldr(args.image, max_pixels=args.max_pixels)), args.method)
    write_matte(args.out, matte)
    print(f"matte: {args.method}, {float((matte > 0.5).mean()):.1%} of {args.image.name} -> {args.out}")


def cmd_fetch_weights(args: argparse.Namespace) -> None:
    from relightful.augment.isnet import ISNET_URL, fetch_isnet
    from relightful.augment.segmenter import SELFIE_SEGMENTER, fetch_weights

    fetches = [(SELFIE_SEGMENTER.url, lambda: fetch_weights(SELFIE_SEGMENTER, args.dir), SELFIE_SEGMENTER.licence)]
    if args.isnet:
        fetches.append((ISNET_URL, lambda: fetch_isnet(args.dir), "MIT weights from an AGPL-3.0 package"))
    for url, fetch, licence in fetches:
        try:
            path = fetch()
        except (OSError, RuntimeError, KeyError) as err:  # network, archive or hash: say which and fail
            raise ValueError(f"cannot fetch {url}: {err}") from None
        print(f"fetch-weights: {path.name} ({licence}, sha256 verified) -> {path}")


def add_inference_parsers(subparsers) -> argparse.ArgumentParser:
    """Add `harmonize`, `matte` and `fetch-weights` to `relightful`'s sub-parsers; returns harmonize's parser."""
    p = subparsers.add_parser("harmonize", help="relight a portrait (foreground + matte) to match a new background",
                              description="Relight the foreground to the background's lighting and composite it. "
                                          "OUT has the foreground's size; background pixels are the input "
                                          "background, resized to cover and centre-cropped.")
    add_model_options(p)
    p.add_argument("--fg", type=Path, required=True, metavar="FG.png", help="foreground portrait (8/16-bit image)")
    p.add_argument("--matte", type=Path, default=None, metavar="MATTE.png",
                   help="alpha matte, same size as --fg (grey or RGBA alpha); without it the person segmenter mattes "
                        "the portrait (weights from `relightful fetch-weights`)")
    p.add_argument("--bg", type=Path, required=True, metavar="BG.jpg", help="background photo, any size")
    p.add_argument("--out", type=Path, required=True, metavar="OUT.png", help="output image (8-bit sRGB; PNG keeps it lossless)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="sampler steps (default: the model's, as trained; else 20)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="noise seed: same seed, same output")
    p.add_argument("--image-guidance", type=float, default=None, metavar="X",
                   help="image guidance scale (default: the model's; else 1.5)")
    p.add_argument("--lighting-guidance", type=float, default=None, metavar="Y",
                   help="lighting guidance scale (default: the model's; else 3.0)")
    p.add_argument("--max-pixels", type=positive_int, default=max_pixels_default(), metavar="N",
                   help=f"refuse an input image of more pixels than this, from its header (default "
                        f"${MAX_PIXELS_ENV}, else {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_harmonize)

    m = subparsers.add_parser("matte", help="compute a portrait's alpha matte (person segmenter; offline weights)",
                              description="Matte the person in a portrait: MediaPipe's selfie segmenter with edges "
                                          "refined to a soft alpha, or GrabCut (needs no weights).")
    m.add_argument("--image", type=Path, required=True, metavar="PORTRAIT.jpg")
    m.add_argument("--out", type=Path, required=True, metavar="MATTE.png", help="8/16-bit grey PNG (or TIFF)")
    m.add_argument("--method", choices=("segmenter", "isnet", "grabcut"), default="segmenter",
                   help="segmenter (MediaPipe's, the default), isnet (finer edges, keeps what the person holds; "
                        "`fetch-weights --isnet`) or grabcut (needs no weights)")
    m.add_argument("--max-pixels", type=positive_int, default=max_pixels_default(), metavar="N",
                   help=f"refuse an image of more pixels than this, from its header (default ${MAX_PIXELS_ENV}, "
                        f"else {DEFAULT_MAX_PIXELS:,})")
    m.set_defaults(func=cmd_matte)

    w = subparsers.add_parser("fetch-weights", help="setup: fetch the person segmenter's weights (npm registry)",
                              description="Download MediaPipe's selfie segmenter (Apache-2.0) from the npm registry "
                                          "package @mediapipe/selfie_segmentation, check its SHA-256 and store it in "
                                          "--dir. Run once at install time; nothing is downloaded at run time.")
    w.add_argument("--isnet", action="store_true",
                   help="also ISNet, the fine matting option (136 MB package @imgly/background-removal-data, "
                        "AGPL-3.0; only its MIT weights are kept)")
    w.add_argument("--dir", type=Path, default=None,
                   help="destination (default $RELIGHTFUL_WEIGHTS, else ~/.cache/relightful)")
    w.set_defaults(func=cmd_fetch_weights)
    return p


__all__ = ["add_inference_parsers", "auto_matte", "cmd_fetch_weights", "cmd_harmonize", "cmd_matte"]
