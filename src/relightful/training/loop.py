"""The resumable training loop shared by the three stages.

Everything random in a step (noise, timesteps, condition dropout) is drawn from a generator seeded by
(seed, step, micro-step, rank), and `PairStream` orders the data by (seed, step): so a run restarted from its
last checkpoint repeats exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from relightful.data.shards import ENVMAPS, MANIFEST, read_pair_manifest
from relightful.io import atomic_write_text
from relightful.models import ModelConfig, RelightModel
from relightful.training import checkpoint as ckpt
from relightful.training.augment import mirror_mask, mirror_samples
from relightful.training.config import TrainConfig
from relightful.training.data import PairStream, ReplayStream, build_cache
from relightful.training.ema import WeightEma
from relightful.training.engine import (barrier, build_engine, full_fp32_parameters, init_distributed,
                                        load_optimizer_state)
from relightful.training.objectives import StageObjective, param_groups, set_trainable
from relightful.training.prior_fit import PRIOR_FILE, prepare_shading_prior
from relightful.training.runtime import batch_to_device, prepare_model, to_device
from relightful.training.validation import sample_grid, validation_batch, write_grid

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    model_dir: Path | None          # None when the run stopped early (stop_after) or on ranks > 0
    steps: int
    history: list[dict] = field(default_factory=list)   # one row per logged step
    samples_per_s: float = 0.0
    model: RelightModel | None = None   # the trained model in memory (every rank)
    prior_fit: dict[str, float] = field(default_factory=dict)  # the shading prior's fit (stage 1; prior_fit.py)


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + micro) * 8191 + rank)


def draw_step(batch: dict[str, torch.Tensor], gen: torch.Generator, timesteps: int, dropout: float,
              timestep_weights: torch.Tensor | None = None):
    """Noise, timesteps (uniform, or drawn with `timestep_weights`) and the InstructPix2Pix condition dropout:
    lighting dropped with p = 2·dropout, the image with p = 2·dropout, both together with p = dropout."""
    target = batch["target"]
    b = target.shape[0]
    noise = torch.randn(target.shape, generator=gen)
    if timestep_weights is None:
        t = torch.randint(0, timesteps, (b,), generator=gen)
    else:
        t = torch.multinomial(timestep_weights, b, replacement=True, generator=gen)
    u = torch.rand(b, generator=gen)
    keep_light = (u >= 2 * dropout).float()
    keep_image = ((u < dropout) | (u >= 3 * dropout)).float()
    return noise, t, keep_image, keep_light


def align_scale(step: int, start: int, warmup: int) -> float:
    """Stage 2's alignment weight factor at `step`: 0 before `start`, then a linear ramp to 1 over `warmup` steps.
    F_env starts untrained (zero features); aligning F_bg to it at once would erase what stage 1 taught F_bg."""
    if step < start:
        return 0.0
    return min(1.0, (step - start + 1) / warmup) if warmup else 1.0


def build_model(stage: int, model_config: ModelConfig | None, init_from: Path | None) -> RelightModel:
    if stage == 1:
        if init_from is not None:
            return RelightModel.from_pretrained(init_from)
        return RelightModel(model_config or ModelConfig())
    if init_from is None:
        raise ValueError(f"stage {stage} starts from the previous stage's model folder: give init_from")
    return RelightModel.from_pretrained(init_from)


def train_stage(stage: int, pairs_dir: str | Path, out_dir: str | Path, run_dir: str | Path, config: TrainConfig,
                model_config: ModelConfig | None = None, init_from: str | Path | None = None,
                cache_dir: str | Path | None = None, progress: bool = True, stop_after: int | None = None,
                on_log: Callable[[dict], None] | None = None, samples_dir: str | Path | None = None,
                replay_dir: str | Path | None = None) -> StageResult:
    """Train one stage on the `train` split of `pairs_dir`; write the model folder `out_dir` (rank 0).

    Resumes from `run_dir/checkpoints/latest` when there is one. `stop_after` ends the run after that step's
    checkpoint, as a kill would (for tests of resumption). With `samples_dir`, every `validate_every` steps and at
    the end a grid of validation pairs (composite | model | target) is written there as `step-XXXXXXXX.png`.
    With `config.replay_fraction` > 0, that share of every batch comes from the `train` split of `replay_dir`
    (stage 3: light-stage pairs beside the natural ones; their latents cached in `cache_dir`, else beside them).
    In stages 1-2, `config.target_sources` gives the pairs whose target map comes from those sources a fixed share
    of every batch (`target_source_fraction`); stage 3 leaves it out (natural pairs have no maps).
    """
    pairs_dir, out_dir, run_dir = Path(pairs_dir), Path(out_dir), Path(run_dir)
    if config.replay_fraction and replay_dir is None:
        raise ValueError(f"replay_fraction {config.replay_fraction} needs the pairs to replay (replay_dir, "
                         "`relightful train --replay`)")
    if not 0.0 <= config.hflip <= 1.0:
        raise ValueError(f"hflip is the probability of mirroring a sample: it must be in [0, 1], got {config.hflip}")
    replay_dir = Path(replay_dir) if config.replay_fraction else None
    replay_cache = Path(cache_dir) if cache_dir else (replay_dir.parent / "cache" / "latents" if replay_dir else None)
    cache_dir = Path(cache_dir) if cache_dir else pairs_dir.parent / "cache" / "latents"
    rank, world = init_distributed()
    torch.manual_seed(config.seed)
    model = build_model(stage, model_config, Path(init_from) if init_from else None)
    if model.config.residual and config.prediction_type != "sample":
        raise ValueError("a residual model (model.residual) predicts x̂₀: train it with prediction_type 'sample'")
    set_trainable(model, stage)
    prepare_model(model, config.runtime)
    objective = StageObjective.from_config(model, stage, config)

    device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    model.to(device)  # the cache is encoded where the model will train
    sources = [(pairs_dir, cache_dir)] + ([(replay_dir, replay_cache)] if replay_dir else [])
    if rank == 0:
        for folder, cache in sources:
            build_cache(folder, cache, model, progress=progress)
    barrier()
    files = build_cache(pairs_dir, cache_dir, model, progress=False)  # every rank: the names (all cached now)
    ds = config.deepspeed
    if replay_dir:
        replay_files = build_cache(replay_dir, replay_cache, model, progress=False)
        stream = ReplayStream.split(read_pair_manifest(pairs_dir), files, read_pair_manifest(replay_dir),
                                    replay_files, "train", ds.micro_batch, config.replay_fraction, ds.grad_accum,
                                    world, rank, config.seed, config.shuffle_window)
    elif config.target_sources and stage != 3:  # stage 3's natural pairs have no maps
        stream = ReplayStream.by_target_source(read_pair_manifest(pairs_dir), files, config.target_sources, "train",
                                               ds.micro_batch, config.target_source_fraction, ds.grad_accum, world,
                                               rank, config.seed, config.shuffle_window)
    else:
        stream = PairStream(read_pair_manifest(pairs_dir), files, "train", ds.micro_batch, ds.grad_accum, world,
                            rank, config.seed, config.shuffle_window)
    if stage == 2 and not (pairs_dir / ENVMAPS).is_file():
        raise ValueError(f"{pairs_dir}: stage 2 needs light-stage pairs with their HDR maps (envmaps.safetensors)")
    if rank == 0:
        discard_stale_checkpoints(run_dir, run_fingerprint(stage, config, model, pairs_dir, init_from, world,
                                                           replay_dir))
    barrier()
    prior_fit: dict[str, float] = {}
    if stage == 1 and init_from is None and model.shading_prior is not None:  # fitted once, before the UNet trains
        prior_fit = prepare_shading_prior(model, run_dir, read_pair_manifest(pairs_dir), files, config, rank,
                                          progress)

    groups = param_groups(model, stage, config.env_warmup_steps, config.pretrained_lr_scale)
    if objective.light_probe is not None:  # new each stage, so never held back with the stage-1 parts
        groups[-1]["params"] = list(groups[-1]["params"]) + list(objective.light_probe.parameters())
    engine, optimizer, scheduler = build_engine(objective, groups, config, world)
    ema = WeightEma(objective, config.ema_decay) if config.ema_decay else None
    start = 0
    history: list[dict] = []
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None:
        start, weights, opt_state, extra = ckpt.load_checkpoint(latest, rank, world, optimizer.state_dict())
        missing = [n for n, p in objective.named_parameters() if p.requires_grad and n not in weights]
        if missing:
            raise ValueError(f"{latest}: checkpoint lacks {len(missing)} trained tensors (e.g. {missing[0]}): "
                             "not a checkpoint of this stage")
        with torch.no_grad():
            for name, p in objective.named_parameters():
                if name in weights:
                    p.copy_(weights[name].to(p.dtype))
        if ema is not None:
            try:
                ema.load(weights)
            except ValueError as err:
                raise ValueError(f"{latest}: {err}") from None
        load_optimizer_state(optimizer, opt_state, ds.zero_stage)
        scheduler.load_state_dict(extra["scheduler"])
        history = extra.get("history", [])

    bar = tqdm(range(start, config.steps), desc=f"stage {stage}", unit="step", disable=not progress or rank != 0,
               initial=start, total=config.steps)
    samples, t0 = 0, time.perf_counter()
    validation: dict[str, torch.Tensor] = {}

    def write_validation_grid(path: Path) -> None:
        if not validation:
            batch = validation_batch(pairs_dir, files, config.validation_pairs)
            validation.update({k: v.to(device) for k, v in batch.items()})
        write_grid(path, sample_grid(model, validation, config.sampling.steps, config.seed,
                                     config.sampling.image_guidance, config.sampling.lighting_guidance,
                                     scheduler=validation_scheduler(objective.scheduler, model)))

    timestep_weights = (None if config.timestep_bias.strategy == "none"
                        else config.timestep_bias.weights(config.num_train_timesteps))
    logs_sum: dict[str, float] = {}  # summed over the steps since the last log row
    logged_steps, interval_samples, interval_t0 = 0, 0, t0
    for step in bar:
        objective.align_scale = align_scale(step, config.align_start_step, config.align_warmup_steps)
        for micro in range(ds.grad_accum):
            batch = stream.batch(step, micro)
            gen = step_generator(config.seed, step, micro, rank)
            drawn = draw_step(batch, gen, config.num_train_timesteps, config.cond_dropout, timestep_weights)
            if config.hflip:  # drawn after the step's noise, so hflip 0 leaves every other draw as it was
                batch = mirror_samples(batch, model.codec, mirror_mask(gen, drawn[0].shape[0], config.hflip))
            batch = batch_to_device(batch, device, config.runtime)
            noise, t, keep_image, keep_light = (to_device(x, device, config.runtime) for x in drawn)
            loss, logs = engine(batch, noise, t, keep_image, keep_light)
            engine.backward(loss)
            engine.step()
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / ds.grad_accum
            samples += noise.shape[0] * world
        if ema is not None:
            ema.update()
        done = step + 1
        logged_steps += 1
        if done % config.log_every == 0 or done == config.steps:
            mean = {k: v / logged_steps for k, v in logs_sum.items()}
            now = time.perf_counter()
            row = {"step": done, "lr": scheduler.get_last_lr()[0], **_mean_over_ranks(mean),
                   "samples_per_s": (samples - interval_samples) / max(now - interval_t0, 1e-9)}
            logs_sum, logged_steps, interval_samples, interval_t0 = {}, 0, samples, now
            history.append(row)
            if on_log and rank == 0:
                on_log(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", sps=f"{row['samples_per_s']:.1f}")
        if samples_dir is not None and rank == 0 and config.validate_every and done % config.validate_every == 0:
            write_validation_grid(Path(samples_dir) / f"step-{done:08d}.png")
        if done % config.checkpoint_every == 0 or done == config.steps or done == stop_after:
            trained = {n: p for n, p in objective.named_parameters() if p.requires_grad}
            if ema is not None:
                trained.update(ema.state())
            ckpt.save_checkpoint(run_dir, done, trained, optimizer.state_dict(),
                                 {"scheduler": scheduler.state_dict(), "history": history}, rank, world, barrier)
            if rank == 0:
                ckpt.prune_checkpoints(run_dir, config.keep_checkpoints)
        if done == stop_after:
            return StageResult(None, done, history, model=model, prior_fit=prior_fit)
    final_grid = Path(samples_dir) / f"step-{config.steps:08d}.png" if samples_dir is not None else None
    if final_grid is not None and rank == 0 and not final_grid.is_file():  # also when resumed at the last step
        write_validation_grid(final_grid)
    elapsed = time.perf_counter() - t0
    result = StageResult(None, config.steps, history, samples / elapsed if elapsed > 0 else 0.0, model, prior_fit)
    if rank == 0:
        fp32 = full_fp32_parameters(objective) if ema is None else ema.weights()
        model.float()
        with torch.no_grad():
            for name, p in objective.named_parameters():
                if name in fp32:
                    p.copy_(fp32[name])
        model.save_pretrained(out_dir, extra={"stage": stage, "steps": config.steps,
                                              "train_config": dataclasses.asdict(config),
                                              "sampling": dataclasses.asdict(config.sampling),
                                              **({"shading_prior_fit": prior_fit} if prior_fit else {})},
                              scheduler=validation_scheduler(objective.scheduler, model))
        result.model_dir = out_dir
    barrier()
    return result


def validation_scheduler(training_scheduler, model: RelightModel):
    """The inference sampler on the noise schedule being trained."""
    from relightful.models.schedule import TRAINING_NOISE, default_scheduler

    return default_scheduler(model, {k: training_scheduler.config[k] for k in TRAINING_NOISE})


def run_fingerprint(stage: int, config: TrainConfig, model: RelightModel, pairs_dir: Path,
                    init_from: str | Path | None, world: int, replay_dir: Path | None = None) -> str:
    """What a checkpoint must have been trained with to be resumed: stage, configs, data, starting weights."""
    h = hashlib.sha256()
    h.update(json.dumps({"stage": stage, "world": world, "train": dataclasses.asdict(config),
                         "model": dataclasses.asdict(model.config)}, sort_keys=True, default=str).encode())
    for folder in (pairs_dir, replay_dir):
        if folder is not None:
            h.update((folder / MANIFEST).read_bytes())
    if init_from is not None:
        for f in sorted(Path(init_from).rglob("*")):
            if f.is_file():
                h.update(f"{f.relative_to(init_from)}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    return h.hexdigest()


def discard_stale_checkpoints(run_dir: Path, fingerprint: str) -> None:
    """Checkpoints of a run with other settings or data must not be resumed: remove them."""
    path = run_dir / "fingerprint.txt"
    if path.is_file() and path.read_text().strip() != fingerprint:
        log.warning("%s: settings or data changed since its checkpoints were written; starting afresh", run_dir)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / PRIOR_FILE).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, fingerprint)


def _mean_over_ranks(logs: dict[str, float]) -> dict[str, float]:
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return logs
    keys = sorted(logs)
    t = torch.tensor([logs[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return {k: float(v) / torch.distributed.get_world_size() for k, v in zip(keys, t)}


def write_history(path: str | Path, history: list[dict]) -> None:
    atomic_write_text(path, json.dumps(history, indent=1))
