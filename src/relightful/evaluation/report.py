"""What `relightful evaluate` writes, all atomically, metrics.json last (its presence means the report is whole):

    metrics.json       per scenario: pairs, each method's mean metrics, the model's margins over every baseline,
                       its share of the headroom up to oracle_shading, the stage-1 / stage-2 comparison when both
                       were given; the quality bar of DESIGN 4 with each condition, its number and pass/fail; what
                       was not computed and why (LPIPS, oracle, gain_regression, model_panorama)
                       (DVC metrics: `dvc metrics show`)
    per_pair.csv       one row per (scenario, pair, method) with every metric
    plots/<scenario>_fg_psnr.csv   per pair, the foreground PSNR of each method (DVC plots)
    grid.png           every method in report order (methods.py), then the target, on a fixed set of test pairs
    real.jpg           when given, every real portrait on every real background: paste | result (JPEG: photos)
    report.html        the page a person looks at: the quality bar, margins, headroom, the metric tables, the grids
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from relightful.evaluation.methods import method_order
from relightful.evaluation.summary import quality_bar
from relightful.io import atomic_path, atomic_write_bytes, atomic_write_text

TILE = 128  # pixels per image in the grid (nearest-neighbour upscaling keeps the pixels honest)
LABEL_H = 22


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def label_strip(text: str, width: int) -> np.ndarray:
    """A white strip of `width` pixels with `text` on it: the caption row of the grids."""
    strip = np.full((LABEL_H, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, LABEL_H - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def grid_image(visual: list[dict], title: str) -> np.ndarray | None:
    """One row per shown pair, one labelled column per method present, then the target."""
    if not visual:
        return None
    columns = method_order(k for k in visual[0] if k not in ("target", "pair_id")) + ["target"]
    tiles = lambda row: [cv2.resize(row[c], (TILE, TILE), interpolation=cv2.INTER_NEAREST) for c in columns]
    body = np.concatenate([np.concatenate(tiles(row), axis=1) for row in visual], axis=0)
    header = np.concatenate([label_strip(c, TILE) for c in columns], axis=1)
    return np.concatenate([label_strip(title, body.shape[1]), header, body], axis=0)


def quality_statement(block: dict) -> tuple[bool, str]:
    """(passed, sentence) of DESIGN 4's bar on the light-stage block ({"methods", "margins"}; summary.py)."""
    bar = quality_bar(block)
    return bar["passed"], bar["statement"]


def _fmt(v, spec: str = ".4f") -> str:
    return "–" if v is None else format(v, spec)


def _table(summary: dict[str, dict[str, float]]) -> str:
    if not summary:
        return "<p>no pairs in this split</p>"
    metrics = list(next(iter(summary.values())))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{_fmt(v)}</td>" for v in values.values())
                   + "</tr>" for name, values in summary.items())
    return f"<table><tr><th>method</th>{head}</tr>{rows}</table>"


def _margins_table(block: dict) -> str:
    """The model's lead over each baseline (rows) on each margin metric (columns); > 0 is a win."""
    lead = block.get("margins", {})
    if not lead:
        return ""
    metrics = list(dict.fromkeys(k.split("_vs_")[0] for k in lead))
    bases = list(dict.fromkeys(k.split("_vs_")[1] for k in lead))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows = "".join(f"<tr><th>{html.escape(b)}</th>" + "".join(f"<td>{_fmt(lead.get(f'{m}_vs_{b}'), '+.4f')}</td>"
                                                             for m in metrics) + "</tr>" for b in bases)
    share = block.get("headroom_share")
    headroom = ("" if share is None else
                f"<p>share of the headroom up to oracle_shading (fg PSNR, (model − composite) / (oracle_shading − "
                f"composite)): <b>{share:.3f}</b></p>")
    return (f"<p>the model's margins over every baseline (&gt; 0: the model wins; errors are baseline − model):</p>"
            f"<table><tr><th>vs</th>{head}</tr>{rows}</table>{headroom}")


def _bar_table(bar: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(c['condition'])}</th><td>{_fmt(c['value'], '.3f')}</td>"
                   f"<td>{html.escape(c['op'])} {c['threshold']:g}</td>"
                   f"<td>{'pass' if c['passed'] else '<b>FAIL</b>'}</td></tr>" for c in bar.get("conditions", []))
    verdict = "PASSED" if bar["passed"] else "NOT MET"
    return (f"<h2>Quality bar (DESIGN 4), light-stage test pairs: {verdict}</h2>"
            + (f"<table><tr><th>condition</th><th>value</th><th>needs</th><th></th></tr>{rows}</table>" if rows else
               f"<p>{html.escape(bar['statement'])}</p>"))


def _not_computed(metrics: dict) -> str:
    labels = {"lpips": "LPIPS", "oracle": "oracle", "gain_regression": "gain_regression",
              "model_panorama": "model_panorama"}
    notes = [f"{label}: not computed: {html.escape(metrics[name]['reason'])}" for name, label in labels.items()
             if name in metrics and not metrics[name]["computed"]]
    fit = metrics.get("gain_regression", {})
    if fit.get("computed"):
        notes.append(f"gain_regression fitted on {fit['n_train']} light-stage train pairs (ridge λ = "
                     f"{fit['lambda_per_pair']:.3g} per pair by leave-one-out, LOO RMSE of the log gain "
                     f"{fit['loo_rmse_log_gain']:.3f})")
    return "".join(f"<p>{n}</p>" for n in notes)


def write_report(out_dir: str | Path, metrics: dict, per_pair: pd.DataFrame, grids: dict[str, np.ndarray | None]) -> None:
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "per_pair.csv") as tmp:
        per_pair.to_csv(tmp, index=False, float_format="%.6g")
    for scenario, frame in per_pair.groupby("scenario", sort=False):
        wide = frame.pivot_table(index="pair_id", columns="method", values="fg_psnr", sort=False)
        wide = wide.reindex(columns=method_order(wide.columns)).reset_index(drop=True)
        wide.index.name = "pair"
        with atomic_path(out_dir / "plots" / f"{scenario}_fg_psnr.csv") as tmp:
            wide.reset_index().to_csv(tmp, index=False, float_format="%.6g")
    real_grid = grids.pop("real", None)
    real_jpg = None
    if real_grid is not None:
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(real_grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        real_jpg = data.tobytes()
        atomic_write_bytes(out_dir / "real.jpg", real_jpg)
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
        comparison = block.get("stage_comparison")
        stages = f"<p><b>{html.escape(comparison['statement'])}</b></p>" if comparison else ""
        sections.append(f"<h2>{scenario} test pairs ({block.get('n_pairs', 0)})</h2>{_margins_table(block)}{stages}"
                        f"{_table(block.get('methods', {}))}{image}")
    real = metrics.get("real")
    if real is not None:
        image = (f'<img alt="real portraits" src="data:image/jpeg;base64,{base64.b64encode(real_jpg).decode()}">'
                 if real_jpg is not None else "<p>no portraits or backgrounds to show</p>")
        sections.append(f"<h2>real portraits on real backgrounds ({real['n_images']} images, no ground truth)</h2>"
                        f"<p>each portrait ({', '.join(html.escape(p) for p in real['portraits'])}) harmonised at its "
                        f"full resolution onto each of {len(real['backgrounds'])} backgrounds: paste | result</p>"
                        f"{image}")
    compared = "".join(f", compared: <code>model_{html.escape(k)}</code> = <code>{html.escape(v)}</code>"
                       for k, v in metrics.get("compare", {}).items())
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>relightful evaluation</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{image-rendering:pixelated}</style>"
            f"</head><body><h1>relightful evaluation</h1><p>model: <code>{html.escape(str(metrics['model']))}</code>"
            f"{compared}, split: {html.escape(metrics['split'])}</p>"
            f"{_bar_table(metrics['quality_bar'])}<p>{html.escape(metrics['quality_bar']['statement'])}</p>"
            f"{_not_computed(metrics)}"
            + "".join(sections) + "</body></html>")
    atomic_write_text(out_dir / "report.html", page)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))
