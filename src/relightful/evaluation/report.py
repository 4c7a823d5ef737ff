"""What `relightful evaluate` writes, all atomically, metrics.json last (its presence means the report is whole):

    metrics.json       per scenario: pairs, each method's mean metrics, the model's margins over the baselines;
                       the quality bar (model beats composite and Reinhard on light-stage fg PSNR and SSIM) and
                       whether LPIPS was computed, and if not why (DVC metrics: `dvc metrics show`)
    per_pair.csv       one row per (scenario, pair, method) with every metric
    plots/<scenario>_fg_psnr.csv   per pair, the foreground PSNR of each method (DVC plots)
    grid.png           composite | model | each baseline | oracle | target, on a fixed set of test pairs
    report.html        the page a person looks at: the quality bar, the metric tables and the grids
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from relightful.evaluation.evaluate import METHODS
from relightful.io import atomic_path, atomic_write_bytes, atomic_write_text

TILE = 128  # pixels per image in the grid (nearest-neighbour upscaling keeps the pixels honest)
LABEL_H = 22


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def _label(text: str, width: int) -> np.ndarray:
    strip = np.full((LABEL_H, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, LABEL_H - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def grid_image(visual: list[dict], title: str) -> np.ndarray | None:
    """One row per shown pair, one labelled column per method present, then the target."""
    if not visual:
        return None
    columns = [m for m in METHODS if m in visual[0]] + ["target"]
    tiles = lambda row: [cv2.resize(row[c], (TILE, TILE), interpolation=cv2.INTER_NEAREST) for c in columns]
    body = np.concatenate([np.concatenate(tiles(row), axis=1) for row in visual], axis=0)
    header = np.concatenate([_label(c, TILE) for c in columns], axis=1)
    return np.concatenate([_label(title, body.shape[1]), header, body], axis=0)


def quality_statement(margins: dict[str, float]) -> tuple[bool, str]:
    needed = [f"{m}_vs_{b}" for m in ("fg_psnr", "fg_ssim") for b in ("composite", "reinhard")]
    if not all(k in margins for k in needed):
        return False, "not measured: the light-stage scenario has no model results"
    passed = all(margins[k] > 0 for k in needed)
    parts = ", ".join(f"{k} {margins[k]:+.4f}" for k in needed)
    verdict = "beats" if passed else "does NOT beat"
    return passed, (f"On the light-stage test pairs the model {verdict} paste-unchanged (composite) and Reinhard "
                    f"colour transfer in foreground PSNR and SSIM: {parts}.")


def _table(summary: dict[str, dict[str, float]]) -> str:
    if not summary:
        return "<p>no pairs in this split</p>"
    metrics = list(next(iter(summary.values())))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join("<td>–</td>" if v is None else f"<td>{v:.4f}</td>"
                                                                 for v in values.values())
                   + "</tr>" for name, values in summary.items())
    return f"<table><tr><th>method</th>{head}</tr>{rows}</table>"


def write_report(out_dir: str | Path, metrics: dict, per_pair: pd.DataFrame, grids: dict[str, np.ndarray | None]) -> None:
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "per_pair.csv") as tmp:
        per_pair.to_csv(tmp, index=False, float_format="%.6g")
    for scenario, frame in per_pair.groupby("scenario", sort=False):
        wide = frame.pivot_table(index="pair_id", columns="method", values="fg_psnr", sort=False)
        wide = wide.reindex(columns=[m for m in METHODS if m in wide.columns]).reset_index(drop=True)
        wide.index.name = "pair"
        with atomic_path(out_dir / "plots" / f"{scenario}_fg_psnr.csv") as tmp:
            wide.reset_index().to_csv(tmp, index=False, float_format="%.6g")
    pngs = {k: _png(v) for k, v in grids.items() if v is not None}
    if pngs:
        stacked = [grids[k] for k in grids if grids[k] is not None]
        width = max(g.shape[1] for g in stacked)
        pad = lambda g: np.pad(g, ((0, 0), (0, width - g.shape[1]), (0, 0)), constant_values=255)
        atomic_write_bytes(out_dir / "grid.png", _png(np.concatenate([pad(g) for g in stacked], axis=0)))
    sections = []
    for scenario in ("lightstage", "natural"):
        block = metrics.get(scenario, {})
        image = (f'<img alt="{scenario} grid" src="data:image/png;base64,{base64.b64encode(pngs[scenario]).decode()}">'
                 if scenario in pngs else "")
        sections.append(f"<h2>{scenario} test pairs ({block.get('n_pairs', 0)})</h2>{_table(block.get('methods', {}))}"
                        f"{image}")
    lpips = metrics["lpips"]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>relightful evaluation</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{image-rendering:pixelated}</style>"
            f"</head><body><h1>relightful evaluation</h1><p>model: <code>{html.escape(str(metrics['model']))}</code>, "
            f"split: {html.escape(metrics['split'])}</p>"
            f"<p><b>{html.escape(metrics['quality_bar']['statement'])}</b></p>"
            f"<p>LPIPS: {'computed' if lpips['computed'] else 'not computed: ' + html.escape(lpips['reason'])}</p>"
            + "".join(sections) + "</body></html>")
    atomic_write_text(out_dir / "report.html", page)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))
