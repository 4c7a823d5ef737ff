"""`relightful serve` (DESIGN 3.7, 3.10): the web page and JSON API around one model, with uvicorn."""

from __future__ import annotations

import argparse

from relightful.cli.common import add_model_options, check_device, positive_int
from relightful.cli.inference import DEFAULT_MAX_PIXELS, max_pixels_default
from relightful.io.images import MAX_PIXELS_ENV


def cmd_serve(args: argparse.Namespace) -> None:
    """Load the model once (a folder, or a `models:/` URI resolved through the registry), then serve until stopped."""
    import os

    import uvicorn

    from relightful.io.errors import redact
    from relightful.models.harmonizer import Harmonizer
    from relightful.serving import ServeConfig, create_app
    from relightful.tracking.model_uri import resolve_model

    check_device(args.device)
    os.environ[MAX_PIXELS_ENV] = str(args.max_pixels)  # the app's decoders apply the limit its header check does
    harmonizer = Harmonizer.from_pretrained(resolve_model(args.model), device=args.device)
    config = ServeConfig(max_upload_bytes=args.max_upload_mb * 2**20, max_pixels=args.max_pixels,
                         matting=args.matting)
    app = create_app(harmonizer, config, model_name=redact(args.model))
    print(f"serve: {redact(args.model)} on http://{args.host}:{args.port}/ (API: POST /api/harmonize, GET /healthz)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", workers=1)


def add_serving_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a model: a web page to try it and a JSON/multipart API",
                              description="GET / is a page to upload a portrait (matte optional) and a background "
                                          "and see paste | result; POST /api/harmonize (multipart fg, bg, optional "
                                          "matte, seed, steps) returns image/png; GET /healthz.")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-upload-mb", type=positive_int, default=32, metavar="MB",
                   help="refuse a request whose files together are larger (413)")
    p.add_argument("--max-pixels", type=positive_int, default=max_pixels_default(), metavar="N",
                   help=f"refuse an image of more pixels than this, from its header (default ${MAX_PIXELS_ENV}, "
                        f"else {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--matting", choices=("segmenter", "isnet", "grabcut"), default="segmenter",
                   help="how a portrait sent without a matte is matted")
    p.set_defaults(func=cmd_serve)


__all__ = ["add_serving_parser", "cmd_serve"]
