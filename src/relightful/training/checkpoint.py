"""Resumable checkpoints in safetensors + JSON: nothing is pickled, nothing unpickled.

    <run>/checkpoints/step-00000100/
        trainable.safetensors          the trained parameters (rank 0; ZeRO ≤ 2 keeps them whole on every rank)
        optimizer-rank00000.safetensors + .json   each rank's optimizer state (ZeRO partitions are per rank)
        state.json                     step, LR scheduler, world size, stage
    <run>/checkpoints/latest          the name of the last complete checkpoint (written last)

A checkpoint is written into `.step-N.tmp` and renamed into place before `latest` names it, so a kill at any moment
leaves either the previous checkpoint or the new one complete; a kill between replacing an older folder of the same
name and writing `latest` is covered by `latest_checkpoint`, which then takes the newest complete checkpoint. Temp
folders of killed writes are removed by the next save.

An optimizer state dict is a tree of tensors, numbers and a few DeepSpeed objects (loss scaler, enums, fragment
addresses). Tensors go to safetensors, the tree to JSON; the objects are not stored but taken from the freshly
built optimizer's own state dict at load time (the same configuration rebuilds the same objects).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from relightful.io import InputError, atomic_write_text, load_tensors, read_json, save_tensors

LATEST = "latest"
log = logging.getLogger(__name__)


def encode_tree(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able skeleton, tensors) of a nested state dict."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(x):
        if isinstance(x, torch.Tensor):
            key = f"t{len(tensors):06d}"
            tensors[key] = x.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
            return x
        if isinstance(x, float):
            return x if math.isfinite(x) else {"__float__": repr(x)}
        if isinstance(x, dict) and all(isinstance(k, (int, str)) for k in x):
            return {"__dict__": [[k, enc(v)] for k, v in x.items()]}
        if isinstance(x, tuple) and not hasattr(x, "_fields"):
            return {"__tuple__": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        return {"__template__": type(x).__name__}

    return enc(obj), tensors


def decode_tree(node: Any, tensors: dict[str, torch.Tensor], template: Any = None) -> Any:
    """Inverse of `encode_tree`; `__template__` leaves come from `template` at the same place."""
    if isinstance(node, list):
        return [decode_tree(v, tensors, _child(template, i)) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__float__" in node:
        return float(node["__float__"])
    if "__tuple__" in node:
        return tuple(decode_tree(v, tensors, _child(template, i)) for i, v in enumerate(node["__tuple__"]))
    if "__dict__" in node:
        return {k: decode_tree(v, tensors, _child(template, k)) for k, v in node["__dict__"]}
    if "__template__" in node:
        if template is None:
            raise ValueError(f"checkpoint holds a {node['__template__']} that the optimizer cannot rebuild")
        return template
    raise ValueError(f"unknown checkpoint node {sorted(node)}")


def _child(template: Any, key: Any) -> Any:
    try:
        return template[key]
    except (KeyError, IndexError, TypeError):
        return None


def save_checkpoint(run_dir: Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                    state: dict, rank: int, world: int, barrier) -> Path:
    """Every rank writes its optimizer part; rank 0 the rest, then `latest` once all parts are there."""
    root = run_dir / "checkpoints"
    name = f"step-{step:08d}"
    tmp = root / f".{name}.tmp"
    if rank == 0:
        for stale in root.glob(".step-*.tmp"):  # this one, or one a killed run left
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    skeleton, tensors = encode_tree(optimizer_state)
    save_tensors(tmp / f"optimizer-rank{rank:05d}.safetensors", tensors)
    atomic_write_text(tmp / f"optimizer-rank{rank:05d}.json", json.dumps(skeleton))
    if rank == 0:
        save_tensors(tmp / "trainable.safetensors", {k: v.detach().cpu().contiguous() for k, v in trainable.items()})
        skeleton, sched_tensors = encode_tree(state)
        if sched_tensors:
            save_tensors(tmp / "state.safetensors", sched_tensors)
        atomic_write_text(tmp / "state.json", json.dumps({"world": world, "step": step, "tree": skeleton}))
    barrier()
    if rank == 0:
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(root / LATEST, name)
    barrier()
    return root / name


def _complete(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "trainable.safetensors").is_file()


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names; when that one is not complete (a kill while it was replaced), the newest
    complete one, with a warning; None when there is none."""
    root = run_dir / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if _complete(path):
        return path
    complete = sorted(p for p in root.glob("step-*") if p.is_dir() and _complete(p))
    if not complete:
        raise InputError(pointer, f"points to {path.name}, which is not a complete checkpoint, and there is no other")
    log.warning("%s points to %s, which is not complete (a write was interrupted): resuming from %s", pointer,
                path.name, complete[-1].name)
    return complete[-1]


def load_checkpoint(path: Path, rank: int, world: int, optimizer_template: dict) -> tuple[int, dict, dict, dict]:
    """(step, trainable tensors, this rank's optimizer state, extra state) of a checkpoint folder."""
    meta = read_json(path / "state.json")
    if meta.get("world") != world:
        raise InputError(path, f"written by {meta.get('world')} processes, resumed with {world}: resume with the "
                               "same number of processes")
    trainable = load_tensors(path / "trainable.safetensors")
    skeleton = read_json(path / f"optimizer-rank{rank:05d}.json")
    optimizer = decode_tree(skeleton, load_tensors(path / f"optimizer-rank{rank:05d}.safetensors"), optimizer_template)
    extra_tensors = load_tensors(path / "state.safetensors") if (path / "state.safetensors").is_file() else {}
    return meta["step"], trainable, optimizer, decode_tree(meta["tree"], extra_tensors)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    done = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
