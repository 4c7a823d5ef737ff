"""Inference (`Harmonizer`): a foreground, its matte and any background photo -> the relit composite at the input
resolution.

DESIGN 3.5/3.7. The steps, and why each is the way it is:

1. The background is resized to *cover* the foreground (scale until both sides are covered, centre crop), so the
   output has the foreground's size and undistorted background pixels.
2. The model works on squares of `config.image_size`. A non-square input is letterboxed onto a square canvas of
   side max(H, W) instead of being squashed (the model never saw distorted faces); the canvas margin shows the
   same cover-scaled background, extended by mirroring where the photo ends, so the model sees one coherent scene.
   The composite is formed and downsampled (antialiased) in *linear* light, as training formed `m·x_a + (1−m)·y_b`,
   then sRGB-encoded to [−1, 1].
3. Sampling uses any diffusers scheduler (default DDIM on the training betas) with InstructPix2Pix-style
   classifier-free guidance on two scales; the three ε predictions run as one batch. With the model folder's
   `sampling.ensemble` = k, k noise draws of each input are sampled in the same batch and their outputs averaged
   in linear light (a better estimate of E[x0 | inputs] for a one-step sampler). With `sampling.mirror_ensemble`,
   half of the draws relight the left-right mirrored inputs and are mirrored back before the average: a mirrored
   portrait under mirrored lighting is another valid pair (training sees both, `train.hflip`), so the two halves
   err differently and their mean cancels part of what one orientation gets wrong.
4. Back to the input resolution. When the input is larger than the model's resolution, the generated image is *not*
   upscaled (that would blur the portrait): a smooth per-pixel gain (relit / original foreground, linear, matte-
   weighted Gaussian averages with a small ε) is computed at the model's resolution, upsampled bilinearly and
   multiplied into the full-resolution linear foreground, which keeps every pore and hair of the input. Inputs
   at or below the model's resolution take the generated pixels directly, unless the model folder's sampling
   sets `detail_sigma`: then the gain (of that σ) is used at every size. With `sampling.gain_shape_scale` ≠ 1
   the gain is always used, the shape of its relighting scaled (`scale_gain_shape`: level and colour kept).
5. `out = m·relit + (1−m)·bg` in linear light, encoded to 8-bit sRGB; wherever the matte is 0 the output is the
   cover-resized background byte for byte.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from relightful.io import srgb_decode_8bit, srgb_encode, to_uint8
from relightful.models.codecs import from_model_space, to_model_space
from relightful.models.compositing import (cover_canvas, gain_field, resize_square, sample_window, scale_gain_shape,
                                          uses_gain_field)
from relightful.models.relight_model import RelightModel, read_model_meta
from relightful.models.schedule import default_scheduler, folder_scheduler

# Sampler steps and guidance scales when neither the call nor the model folder's "sampling" block gives them.
SAMPLING_DEFAULTS: dict = {"steps": 20, "image_guidance": 1.5, "lighting_guidance": 3.0}


def combine_guidance(eps_full: torch.Tensor, eps_img: torch.Tensor, eps_uncond: torch.Tensor | None,
                     image_guidance: float, lighting_guidance: float) -> torch.Tensor:
    """InstructPix2Pix guidance, `ε_u + s_img(ε_img − ε_u) + s_light(ε_full − ε_img)`, written around ε_img so that
    s_img = 1, s_light = 0 returns ε_img exactly; a pass whose weight is zero may be None."""
    eps = eps_img
    if image_guidance != 1.0:
        eps = eps + (image_guidance - 1.0) * (eps_img - eps_uncond)
    if lighting_guidance != 0.0:
        eps = eps + lighting_guidance * (eps_full - eps_img)
    return eps


# --- inputs ---------------------------------------------------------------------------------------------------------

def _rgb8(image, name: str) -> np.ndarray:
    """An (H, W, 3) uint8 sRGB image from uint8/uint16/float [0, 1] input (grey and RGBA accepted)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 1:
        raise ValueError(f"{name}: expected an (H, W, 3) image, got shape {a.shape}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: non-finite pixel values")
        return to_uint8(a.astype(np.float32))
    raise ValueError(f"{name}: unsupported pixel type {a.dtype} (uint8, uint16 or float in [0, 1])")


def _matte(matte, name: str = "matte") -> np.ndarray:
    """An (H, W) float32 matte in [0, 1] from float [0, 1], uint8 or uint16 input."""
    a = np.asarray(matte)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected an (H, W) matte, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_:
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: non-finite values")
        return np.clip(a, 0.0, 1.0)
    raise ValueError(f"{name}: unsupported matte type {a.dtype} (float in [0, 1], uint8 or uint16)")


# --- the pipeline --------------------------------------------------------------------------------------------------

class Harmonizer:
    """Relight a portrait to a new background with a `RelightModel` (see the module docstring).

    `batch_guidance=False` runs the guidance passes one by one (same result up to float rounding): the reference
    the inference benchmark compares against.
    """

    def __init__(self, model: RelightModel, scheduler=None, *, batch_guidance: bool = True, gain_sigma: float = 1.0,
                 gain_eps: float = 2e-3, defaults: dict | None = None):
        self.model = model.eval()
        # sampler steps and guidance scales used when a call leaves them out: the model folder's "sampling"
        self.defaults = {**SAMPLING_DEFAULTS, **(defaults or {})}
        self.detail_sigma = self.defaults.get("detail_sigma")  # see training.config.SamplingConfig
        ensemble = self.defaults.get("ensemble")
        self.ensemble = 1 if ensemble is None else int(ensemble)     # noise draws averaged per output (ditto)
        if self.ensemble < 1:
            raise ValueError(f"sampling ensemble must be ≥ 1, got {self.ensemble}")
        self.mirror_ensemble = bool(self.defaults.get("mirror_ensemble", False))  # ditto
        if self.mirror_ensemble and self.ensemble % 2:
            raise ValueError(f"sampling mirror_ensemble needs an even ensemble (half mirrored), got {self.ensemble}")
        self.gain_shape_scale = float(self.defaults.get("gain_shape_scale", 1.0))  # ditto
        if self.gain_shape_scale <= 0:
            raise ValueError(f"sampling gain_shape_scale must be > 0, got {self.gain_shape_scale}")
        self.scheduler = scheduler if scheduler is not None else default_scheduler(model)
        self.batch_guidance = batch_guidance
        self.gain_sigma = gain_sigma
        self.gain_eps = gain_eps

    @classmethod
    def from_pretrained(cls, folder: str | Path, scheduler=None, device: str | torch.device | None = None,
                        **kwargs) -> "Harmonizer":
        """Load a model folder (an MLflow URI is resolved to one by the caller: `relightful.tracking.resolve_model`);
        bad input raises `InputError`. The folder's `scheduler/` config (diffusers format, any scheduler class) is the
        sampler, else DDIM on the training betas. `device` "auto" is CUDA when available, else the CPU."""
        folder = Path(folder)
        net = RelightModel.from_pretrained(folder)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device is not None:
            net = net.to(device)
        meta = read_model_meta(folder)
        if scheduler is None:
            scheduler = folder_scheduler(folder, net, int(meta.get("version", 1)))
        kwargs.setdefault("defaults", meta.get("sampling"))
        return cls(net, scheduler, **kwargs)

    def settings(self, steps: int | None, image_guidance: float | None,
                 lighting_guidance: float | None) -> tuple[int, float, float]:
        """The call's sampler steps and guidance scales, with those left out taken from `self.defaults`."""
        given = {"steps": steps, "image_guidance": image_guidance, "lighting_guidance": lighting_guidance}
        return tuple(self.defaults[k] if v is None else v for k, v in given.items())

    @property
    def relight_sigma(self) -> float:
        """σ (model pixels) of the gain field that carries the relighting over to the input's pixels."""
        return self.gain_sigma if self.detail_sigma is None else float(self.detail_sigma)

    @property
    def uses_gain(self) -> bool:
        """Whether the output is the input times the relighting gain at every size (else only above the model's)."""
        return self.detail_sigma is not None or self.gain_shape_scale != 1.0

    def relighting_gain(self, generated: torch.Tensor, composite: torch.Tensor, matte: torch.Tensor) -> torch.Tensor:
        """The smooth gain field (B, 3, s, s) from the composite to the generated image at the model's size, its
        shape scaled by `sampling.gain_shape_scale`."""
        gain = gain_field(generated, composite, matte, self.relight_sigma, self.gain_eps)
        return scale_gain_shape(gain, matte, self.gain_shape_scale)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def __call__(self, fg, matte, bg, steps: int | None = None, seed: int = 0, image_guidance: float | None = None,
                 lighting_guidance: float | None = None, progress: bool = False) -> np.ndarray:
        """fg (H, W, 3) sRGB, matte (H, W) in [0, 1] (or uint8), bg any size -> (H, W, 3) uint8 sRGB composite.
        Steps and guidance scales left out come from the model folder's "sampling" (else 20, 1.5, 3.0)."""
        steps, image_guidance, lighting_guidance = self.settings(steps, image_guidance, lighting_guidance)
        fg8, m, bg8 = _rgb8(fg, "foreground"), _matte(matte), _rgb8(bg, "background")
        if m.shape != fg8.shape[:2]:
            raise ValueError(f"the matte is {m.shape[1]}x{m.shape[0]} but the foreground is "
                             f"{fg8.shape[1]}x{fg8.shape[0]}: they must have the same size")
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        height, width = m.shape
        side, size = max(height, width), self.model.config.image_size
        top, left = (side - height) // 2, (side - width) // 2
        bg_full8, canvas8 = cover_canvas(bg8, (height, width), side)

        dev = self.device
        as_linear = lambda a: srgb_decode_8bit(a).to(dev).permute(2, 0, 1)[None]
        fg_lin, canvas_lin = as_linear(fg8), as_linear(canvas8)
        m_t = torch.from_numpy(m).to(dev)[None, None]
        pad = (left, side - width - left, top, side - height - top)
        m_canvas = F.pad(m_t, pad)
        composite = m_canvas * F.pad(fg_lin, pad) + (1 - m_canvas) * canvas_lin
        comp_s, m_s, bg_s = resize_square(composite, size), resize_square(m_canvas, size).clamp(0, 1), resize_square(canvas_lin, size)
        del composite, m_canvas, canvas_lin  # full-size buffers: free them before sampling
        generated = self.generate(comp_s, m_s, bg_s, steps, seed, image_guidance, lighting_guidance, progress)

        # Only the matte's bounding box changes: elsewhere the output is the cover-resized background, byte for byte.
        rows, cols = np.nonzero(m)
        out8 = bg_full8.copy()
        if rows.size == 0:
            return out8
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        fg_box, m_box = fg_lin[..., r0:r1, c0:c1], m_t[..., r0:r1, c0:c1]
        if uses_gain_field((height, width), size) or self.uses_gain:
            gain = self.relighting_gain(generated, comp_s, m_s)
            relit = fg_box * sample_window(gain, side, top + r0, left + c0, r1 - r0, c1 - c0)
        else:
            relit = resize_square(generated, side)[..., top + r0:top + r1, left + c0:left + c1]
        bg_box = bg_full8[r0:r1, c0:c1]
        out = m_box * relit + (1 - m_box) * as_linear(np.ascontiguousarray(bg_box))
        box8 = to_uint8(srgb_encode(out[0].permute(1, 2, 0)).cpu())
        out8[r0:r1, c0:c1] = np.where((m[r0:r1, c0:c1] == 0)[..., None], bg_box, box8)
        return out8

    @torch.inference_mode()
    def relight_batch(self, fg: torch.Tensor, matte: torch.Tensor, bg: torch.Tensor, seed: int,
                      steps: int | None = None, image_guidance: float | None = None,
                      lighting_guidance: float | None = None, panorama: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor counterpart of `__call__` for batches of squares: fg, bg (B, 3, S, S) linear, matte
        (B, 1, S, S) -> the relit foreground layer (B, 3, S, S), linear float32 on the CPU (to be composited
        `m·relit + (1−m)·bg`). Above the model's size the relighting is carried over as a gain field, as in
        `__call__`; otherwise the generated pixels are resized to S. `panorama` (B, 3, h, 2h), linear HDR maps:
        condition on F_env of them instead of F_bg of `bg` (the evaluation's upper bound of the background path)."""
        steps, image_guidance, lighting_guidance = self.settings(steps, image_guidance, lighting_guidance)
        dev, side, size = self.device, self.model.config.image_size, fg.shape[-1]
        fg, matte, bg = fg.to(dev).float(), matte.to(dev).float(), bg.to(dev).float()
        composite = matte * fg + (1 - matte) * bg
        comp_s, m_s, bg_s = resize_square(composite, side), resize_square(matte, side).clamp(0, 1), resize_square(bg, side)
        generated = self.generate(comp_s, m_s, bg_s, steps, seed, image_guidance, lighting_guidance,
                                  panorama=panorama)
        if size > side or self.uses_gain:
            gain = self.relighting_gain(generated, comp_s, m_s)
            relit = fg * F.interpolate(gain, size=(size, size), mode="bilinear", align_corners=False)
        else:
            relit = resize_square(generated, size)
        return relit.float().cpu()

    def generate(self, composite: torch.Tensor, matte: torch.Tensor, background: torch.Tensor, steps: int,
                 seed: int, s_img: float, s_light: float, progress: bool = False,
                 panorama: torch.Tensor | None = None) -> torch.Tensor:
        """Sample relit composites (B, 3, s, s), linear, from linear composites, mattes and backgrounds at the
        model's size; with `panorama` (B, 3, h, 2h) linear, the lighting is F_env(panorama) instead of F_bg."""
        k, mirrored = self.ensemble, self.mirror_ensemble
        if mirrored:  # half of the members relight the mirrored input: the inputs, then their mirrors
            composite, matte, background = (torch.cat([x, x.flip(-1)]) for x in (composite, matte, background))
            if panorama is not None:  # the centre column is the view direction: reversed columns mirror the light
                panorama = torch.cat([panorama, panorama.flip(-1)])
            k //= 2
        model = self.model
        dtype = next(model.unet.parameters()).dtype
        comp_lat = model.codec.encode(to_model_space(composite).to(dtype)).float()
        m_lat = model.matte_latent(matte)
        background = to_model_space(background)
        if panorama is None:
            features = model.background_features(background.to(dtype))
        else:
            features = model.panorama_features(panorama.to(composite.device, dtype))
        prior = model.prior_log_gain(comp_lat, m_lat, background)  # from the background in either case
        if k > 1:  # k noise draws per input, one batch: member i of input b is row i·B + b
            comp_lat, m_lat = comp_lat.repeat(k, 1, 1, 1), m_lat.repeat(k, 1, 1, 1)
            features = [f.repeat(k, *[1] * (f.ndim - 1)) for f in features]
            prior = prior.repeat(k, 1, 1, 1) if prior is not None else None
        latents = self.sample(comp_lat, m_lat, features, steps, seed, s_img, s_light, progress, prior)
        images = from_model_space(model.codec.decode(latents.to(dtype)))
        if mirrored:  # (k, 2, B, ...): the mirrored members mirrored back, then all 2k averaged
            images = images.view(k, 2, -1, *images.shape[1:])
            return torch.cat([images[:, 0], images[:, 1].flip(-1)]).mean(dim=0)
        return images.view(k, -1, *images.shape[1:]).mean(dim=0) if k > 1 else images

    def sample(self, composite: torch.Tensor, matte: torch.Tensor, features: list[torch.Tensor], steps: int,
               seed: int, s_img: float, s_light: float, progress: bool = False,
               prior: torch.Tensor | None = None) -> torch.Tensor:
        """The guided reverse process in latent space; deterministic for a seed (CPU generator, any device).
        `prior` (`RelightModel.prior_log_gain`) joins every guidance pass: the passes differ only in what they
        drop, so guidance neither scales nor removes it."""
        from tqdm.auto import tqdm

        model, dev = self.model, composite.device
        dtype = next(model.unet.parameters()).dtype
        scheduler = type(self.scheduler).from_config(self.scheduler.config)  # fresh state per call
        scheduler.set_timesteps(steps, device=dev)
        generator = torch.Generator().manual_seed(int(seed))
        latents = torch.randn(composite.shape, generator=generator, dtype=torch.float32).to(dev)
        latents = latents * scheduler.init_noise_sigma
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}

        # Which passes the two scales need: ε_img always, ε_u unless s_img = 1, ε_full unless s_light = 0.
        kinds = ["img"] + (["uncond"] if s_img != 1.0 else []) + (["full"] if s_light != 0.0 else [])
        conds = {"full": (composite, features), "img": (composite, None), "uncond": (torch.zeros_like(composite), None)}
        if self.batch_guidance:
            n = len(kinds)
            batch_comp = torch.cat([conds[k][0] for k in kinds]).to(dtype)
            batch_feat = None
            if "full" in kinds:  # zero residuals are exactly "no residuals": one batch carries all three passes
                batch_feat = [torch.cat([f if k == "full" else torch.zeros_like(f) for k in kinds]) for f in features]
            batch_matte = matte.repeat(n, 1, 1, 1).to(dtype)  # kinds are stacked along the batch: (n·B, ...)
            batch_prior = prior.repeat(n, 1, 1, 1) if prior is not None else None

        for t in tqdm(scheduler.timesteps, desc="harmonize", disable=not progress, leave=False):
            x = scheduler.scale_model_input(latents, t).to(dtype)
            if self.batch_guidance:
                ts = t.reshape(1).expand(n * x.shape[0]).to(dev)
                out = model.denoise(x.repeat(n, 1, 1, 1), ts, batch_comp, batch_matte, batch_feat,
                                    prior=batch_prior).float()
                eps = dict(zip(kinds, out.chunk(n)))
            else:
                ts = t.reshape(1).expand(x.shape[0]).to(dev)
                eps = {k: model.denoise(x, ts, conds[k][0].to(dtype), matte.to(dtype), conds[k][1],
                                        prior=prior).float() for k in kinds}
            guided = combine_guidance(eps.get("full"), eps["img"], eps.get("uncond"), s_img, s_light)
            latents = scheduler.step(guided, t, latents, **step_kwargs).prev_sample
        return latents


__all__ = ["SAMPLING_DEFAULTS", "Harmonizer", "combine_guidance"]
