"""Serving: the web page and JSON API of `relightful serve` (DESIGN 3.10)."""

from relightful.serving.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
