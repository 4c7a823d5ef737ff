"""Pair-rendering throughput against the bound a bare matrix product of the same shapes allows on this machine.

Prints, as its last line, one JSON object: pairs/s of
(a) the bare batched matrix product of full frames (2 lightings per pair, every LED, every pixel, float32 out);
(b) relighting as the renderer does it: LED-weight lookup of the rotated maps, one product over the pixels inside
    the matte (`matte_pixel_fraction` of the frame; the composite never reads the others), the subject's maximum,
    the scaled float16 images;
(c) the whole `render_pairs` job: subject loading, weights, crops, scaling, float16 conversion, shard and manifest
    writing;
and the ratios (b)/(a) and (c)/(a); and (d) the pairs/s at which this disk takes the shards alone (the same
number of shards of the same size, written as the job writes them: new files, fsynced, dropped from the page
cache; nothing computed), the other bound of (c).

    python benchmarks/render_pairs.py --size 256 --subjects 2 --pairs-per-subject 512
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from relightful.data.ingest_hdr import IngestConfig, ingest_hdr
from relightful.data.pair_plan import PlanConfig, plan_pairs
from relightful.data.pair_relighting import RollTables, lookup_weights, prepare_subject, relight_pairs
from relightful.data.render_pairs import RenderConfig, empty_shard, load_envmaps, render_pairs
from relightful.io import save_tensors, write_hdr
from relightful.lighting import OlatStack
from relightful.lightstage import load_olat_set, make_default_rig, write_olat_set


def make_inputs(root: Path, args) -> tuple:
    rng = np.random.default_rng(0)
    rig = make_default_rig(n_leds=args.leds)
    c = (np.arange(args.size) + 0.5) / args.size * 2 - 1
    matte = ((c[None, :] ** 2 + c[:, None] ** 2) < 0.6).astype(np.float32)
    for i in range(args.subjects):
        olat = rng.uniform(0, 1, size=(rig.n_leds, args.size, args.size, 3)).astype(np.float32) * matte[..., None]
        write_olat_set(root / "subjects" / f"s{i:02d}", olat, matte, rig)
    for i in range(args.maps):
        env = np.exp(rng.normal(0, 1.5, size=(args.map_height, 2 * args.map_height, 3))).astype(np.float32)
        write_hdr(root / "hdri" / f"m{i:02d}.exr", env)
    ingest_hdr(root / "hdri", root / "envmaps", rig, IngestConfig(height=args.map_height), progress=False)
    config = RenderConfig(size=args.size, weights_height=64, panorama_height=32,
                          plan=PlanConfig(pairs_per_subject=args.pairs_per_subject, pairs_per_shard=args.pairs_per_shard,
                                          split_fractions={"train": 1.0}))
    return rig, config


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--leds", type=int, default=156)
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--pairs-per-subject", type=int, default=512,
                    help="subjects are loaded once and relit many times (the gpu profile: 4000 pairs each)")
    ap.add_argument("--pairs-per-shard", type=int, default=64)
    ap.add_argument("--maps", type=int, default=8)
    ap.add_argument("--map-height", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rig, config = make_inputs(root, args)
        envmaps = load_envmaps(root / "envmaps")
        plan = plan_pairs(sorted(p.name for p in (root / "subjects").iterdir()), list(envmaps), config.plan)
        tables = RollTables.build(envmaps, rig, config.weights_height)
        subjects = {s: prepare_subject(root / "subjects" / s, rig, args.size) for s in plan.subject_id.unique()}
        n_pairs = len(plan)

        weights = {}
        for s, rows in plan.groupby("subject_id"):
            w_a = lookup_weights(tables, rows.env_a, rows.rotation_a_deg.values)
            w_b = lookup_weights(tables, rows.env_b, rows.rotation_b_deg.values)
            weights[s] = torch.cat([w_a, w_b]).permute(2, 0, 1).contiguous()

        # the bound: every pixel of the frame, as relighting the whole OLAT image would need
        full = {s: OlatStack(torch.from_numpy(load_olat_set(root / "subjects" / s, rig)[0])) for s in subjects}
        matte_fraction = float(np.mean([subjects[s].fg_index.numel() / subjects[s].inside.numel() for s in subjects]))

        def bare():
            for s, w in weights.items():
                torch.bmm(w, full[s].planar)

        out = empty_shard(args.pairs_per_shard, args.size, rig.n_leds)

        def relight():  # as the renderer does it: weight lookup, the subject's maximum, scaled float16 images
            for s, rows in plan.groupby("subject_id"):
                for c in range(0, len(rows), args.pairs_per_shard):
                    chunk = rows.iloc[c:c + args.pairs_per_shard]
                    w_a = lookup_weights(tables, chunk.env_a, chunk.rotation_a_deg.values)
                    w_b = lookup_weights(tables, chunk.env_b, chunk.rotation_b_deg.values)
                    relight_pairs(subjects[s], w_a, w_b, out["x_a"][:len(chunk)], out["x_b"][:len(chunk)])

        runs = iter(range(1_000_000))

        def whole():  # into a new folder each time, as `dvc repro` does (it removes a stage's outputs first)
            render_pairs(root / "subjects", rig, root / "envmaps", root / f"pairs-{next(runs)}", config, progress=False)

        shard = {k: torch.rand(v.shape).to(v.dtype) for k, v in out.items()}

        def write():  # the disk's own bound: the shards' bytes written as the job writes them, nothing computed
            folder = root / f"write-{next(runs)}"
            folder.mkdir()
            for i in range(-(-n_pairs // args.pairs_per_shard)):
                save_tensors(folder / f"shard-{i:05d}.safetensors", shard, drop_from_cache=True)

        t_write = best_of(write, args.repeats)
        t_bare = best_of(bare, args.repeats)
        t_relight = best_of(relight, args.repeats)
        t_whole = best_of(whole, max(1, args.repeats - 1))

    result = {
        "size": args.size, "n_leds": rig.n_leds, "pairs": n_pairs, "threads": torch.get_num_threads(),
        "bound_pairs_per_s": round(n_pairs / t_bare, 1),
        "relight_pairs_per_s": round(n_pairs / t_relight, 1),
        "render_pairs_per_s": round(n_pairs / t_whole, 1),
        "relight_ratio": round(t_bare / t_relight, 3),
        "render_ratio": round(t_bare / t_whole, 3),
        "disk_write_pairs_per_s": round(n_pairs / t_write, 1),
        "matte_pixel_fraction": round(matte_fraction, 3),
        "render_to_disk_write_ratio": round(t_write / t_whole, 3),
    }
    print(f"bound {result['bound_pairs_per_s']} pairs/s | relight {result['relight_pairs_per_s']} pairs/s "
          f"(x{result['relight_ratio']}) | whole render {result['render_pairs_per_s']} pairs/s (x{result['render_ratio']}) | "
          f"disk write alone {result['disk_write_pairs_per_s']} pairs/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
