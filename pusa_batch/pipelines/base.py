"""`Pipeline`: one loaded set of weights that turns an `Item` into frames.

`pusa_batch.pipelines.load_pipeline(spec)` picks the family: `WanPipeline` (`wan.py`; Pusa V1 on
Wan2.1 / Wan2.2) or `MochiPipeline` (`mochi.py`; Pusa V0.5). Load once (text encoder, VAE,
denoiser(s), LoRAs merged once on fresh weights), then for each item: `prepare` (CPU-side work:
media, prompts,
conditioning latents, seeded noise), `sample` (the frame-level Euler loop around the denoiser) and
`decode` (VAE to uint8 frames). The three may run in different threads at once (the worker
overlaps items): the VAE and the text encoder are guarded by locks, the denoiser is only used by
`sample`. Before an item allocates anything, `prepare` refuses one whose estimated memory clearly
exceeds the device (`memory_fit.py`). Items with equal `batch_key`s may instead go through
`sample_batch` together: one Euler loop, one forward per step for all of them, each item as it
would come out alone.
The item-level steps (sizes, conditioning plan, media, noise, schedule, the loop) are shared; each
family supplies prompt encoding, pixel encoding, the model function and decoding.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from pusa_batch import sampler, video
from pusa_batch.errors import PipelineError
from pusa_batch.pipelines.memory_fit import MemoryFit
from pusa_batch.pipelines.spec import PipelineSpec
from pusa_batch.tasks import CondPlan, conditioning_video_layout, plan_conditioning

PixelEncoder = Callable[[np.ndarray], Tensor]  # uint8 (n, H, W, 3) -> latents (1, C, t, h, w)

CUBLAS_WORKSPACE_CONFIG = ":4096:8"  # what torch asks of cuBLAS >= 10.2 for deterministic GEMMs


def apply_determinism(options: Any) -> None:
    """`deterministic = true`: torch's determinism settings, for the whole (worker) process.

    Each family's `build` calls this first, before any weights reach the device: PyTorch reads
    CUBLAS_WORKSPACE_CONFIG once, at its first cuBLAS call, so it must be set before any GPU
    matmul. A value already in the environment is kept. Ops with no deterministic kernel warn
    rather than fail the item (`warn_only=True`). Nothing is undone afterwards: a worker holds
    its pipeline for life. docs/parity.md says what this does and does not give on a GPU.
    """
    if not options.deterministic:
        return
    if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        if torch.cuda.is_initialized():
            warnings.warn(
                "deterministic = true, but CUDA was in use before this pipeline loaded: "
                "CUBLAS_WORKSPACE_CONFIG may come too late; set it to :4096:8 in the "
                "environment of the worker instead",
                RuntimeWarning,
                stacklevel=2,
            )
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@dataclass(frozen=True, eq=False)
class Prepared:
    """Everything `sample` needs for one item, on the CPU."""

    item_id: str
    noise: Tensor  # (1, z_dim, F, H/8, W/8) float32, from the item's seed
    positive: sampler.Context  # Wan: (1, L, text_dim); Mochi: (features, mask)
    negative: sampler.Context | None  # None when guidance_scale == 1
    cond: sampler.ConditioningSpec | None
    sigmas: Tensor  # (steps + 1,)
    guidance_scale: float


class BatchKey(NamedTuple):
    """What items must share to be sampled together: the shapes stacked along the batch, the
    schedule and guidance scale (one model fn), and the conditioning layout (one per-frame
    noise scale: which latents are conditioned and with which multipliers)."""

    latent_shape: tuple[int, ...]
    sigmas: tuple[float, ...]
    guidance_scale: float
    conditioning: tuple[tuple[int, ...], tuple[float, ...]] | None
    clean_shape: tuple[int, ...] | None
    positive_shape: tuple
    negative_shape: tuple | None


class Pipeline:
    """A loaded pipeline of any family. Build it with `pusa_batch.pipelines.load_pipeline(spec)`.

    Subclasses set `text`, `vae`, `z_dim` and implement `encode_prompt`, `_pixel_encoder`,
    `_model_fn` and `decode`.
    """

    z_dim: int
    # What `numerics = "upstream"` rounds to bf16 before sampling (`sampler.initial_latents`):
    # Pusa V1 holds noise, conditioning latents and its initial state in bf16 ("state").
    upstream_rounding: str = "state"

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        device: torch.device,
        dtype: torch.dtype,
        storage_options: dict | None = None,
    ):
        self.spec = spec
        self.storage_options = storage_options
        self.device = device
        self.dtype = dtype
        self._text_lock = threading.Lock()
        self._vae_lock = threading.Lock()
        self.memory = MemoryFit(self)  # each item's estimate against the device's memory

    # ------------------------------------------------------------------------------ family hooks

    def encode_prompt(self, prompt: str) -> sampler.Context:
        raise NotImplementedError

    def decode(self, latents: Tensor) -> np.ndarray:
        """uint8 (frames, H, W, 3) from the sampler's latents."""
        raise NotImplementedError

    def _pixel_encoder(self, item: Any) -> PixelEncoder:
        """How this item's conditioning pixels become latents (may hold per-item RNG state)."""
        raise NotImplementedError

    def _model_fn(
        self,
        positive: sampler.Context,
        negative: sampler.Context | None,
        scale: float,
        multipliers: Tensor | None,
    ) -> sampler.ModelFn:
        """The item's model function. `multipliers` (F,) are the frames' noise multipliers (1
        for free frames), None for an item with no conditioning (some families round their
        timesteps differently then, and from the multipliers themselves)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ shared stages

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        f = (num_frames - 1) // self.spec.temporal_factor + 1
        return (1, self.z_dim, f, height // 8, width // 8)

    def describe(self) -> dict[str, Any]:
        """For run records: what is loaded, where, and how it samples."""
        return {
            "name": self.spec.name,
            "family": self.spec.family,
            "identity": self.spec.identity(),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "schedule": self.spec.schedule,
            "numerics": self.spec.options.numerics,
        }

    def sigmas(self, steps: int, shift: float) -> Tensor:
        """The item's schedule; `shift` only matters to the shifted (Wan) schedule."""
        if self.spec.schedule == "linear_quadratic":
            return sampler.linear_quadratic_sigmas(steps, self.spec.options.threshold_noise)
        return sampler.shifted_sigmas(steps, shift)

    def prepare(self, item: Any) -> Prepared:
        """Media loaded and resized, prompts encoded, conditioning latents and noise made."""
        self._check_size(item)
        self.memory.check(item)
        positive = self.encode_prompt(item.prompt)
        negative = None if item.guidance_scale == 1.0 else self.encode_prompt(item.negative_prompt)
        cond = self._conditioning(item)
        shape = self.latent_shape(item.num_frames, item.height, item.width)
        return Prepared(
            item_id=item.id,
            noise=sampler.make_noise(shape, item.seed),
            positive=positive,
            negative=negative,
            cond=cond,
            sigmas=self.sigmas(item.steps, item.shift),
            guidance_scale=float(item.guidance_scale),
        )

    def sample(self, prepared: Prepared, callback: sampler.Callback | None = None) -> Tensor:
        """Denoised latents (1, z_dim, F, h, w), float32 on the CPU."""
        return self._denoise(
            prepared.noise,
            prepared.positive,
            prepared.negative,
            prepared.cond,
            prepared.sigmas,
            prepared.guidance_scale,
            callback,
        )

    def batch_key(self, prepared: Prepared) -> BatchKey:
        """Items whose keys are equal can share one forward in `sample_batch`."""
        cond = prepared.cond
        layout = None if cond is None else (cond.latent_index, cond.multipliers)
        return BatchKey(
            latent_shape=tuple(prepared.noise.shape),
            sigmas=tuple(prepared.sigmas.tolist()),
            guidance_scale=prepared.guidance_scale,
            conditioning=layout,
            clean_shape=None if cond is None else tuple(cond.clean.shape),
            positive_shape=_context_shape(prepared.positive),
            negative_shape=None if prepared.negative is None else _context_shape(prepared.negative),
        )

    def sample_batch(
        self, prepared: Sequence[Prepared], callback: sampler.Callback | None = None
    ) -> list[Tensor]:
        """One Euler loop for several items with equal `batch_key`s: each item's latents
        (1, z_dim, F, h, w), float32 on the CPU, in the order given.

        Each item keeps its own seeded noise, prompts and conditioning latents; only the forward
        passes are shared. `callback(step, total, x)` sees the whole batch, x (B, z_dim, F, h, w).
        Raises ValueError for an empty list or items whose keys differ (group them by key first).
        """
        if not prepared:
            raise ValueError("sample_batch needs at least one prepared item")
        _check_same_key([self.batch_key(p) for p in prepared], prepared)
        first = prepared[0]
        cond = None
        if first.cond is not None:
            clean = torch.cat([p.cond.clean for p in prepared])
            cond = sampler.ConditioningSpec(first.cond.latent_index, clean, first.cond.multipliers)
        negative = None
        if first.negative is not None:
            negative = _cat_contexts([p.negative for p in prepared])
        x = self._denoise(
            torch.cat([p.noise for p in prepared]),
            _cat_contexts([p.positive for p in prepared]),
            negative,
            cond,
            first.sigmas,
            first.guidance_scale,
            callback,
        )
        return [latents.clone() for latents in x.split(1)]

    def _denoise(
        self,
        noise: Tensor,
        positive: sampler.Context,
        negative: sampler.Context | None,
        cond: sampler.ConditioningSpec | None,
        sigmas: Tensor,
        scale: float,
        callback: sampler.Callback | None,
    ) -> Tensor:
        pos = _to_device(positive, self.device)
        neg = None if negative is None else _to_device(negative, self.device)
        multipliers = None if cond is None else sampler.frame_scale(noise.shape[2], cond)
        model_fn = self._model_fn(pos, neg, scale, multipliers)
        if cond is not None:
            cond = sampler.ConditioningSpec(
                cond.latent_index, cond.clean.to(self.device), cond.multipliers
            )
        rounding = self.upstream_rounding if self.spec.options.numerics == "upstream" else None
        with torch.inference_mode():
            x = sampler.sample(
                model_fn,
                noise.to(self.device),
                sigmas,
                cond,
                callback=callback,
                initial_rounding=rounding,
            )
        return x.float().cpu()

    def generate(self, item: Any, callback: sampler.Callback | None = None) -> np.ndarray:
        return self.decode_item(item, self.sample(self.prepare(item), callback=callback))

    def decode_item(self, item: Any, latents: Tensor) -> np.ndarray:
        """One item's frames. A loop's closing frame is decoded from its closing latent alone, the
        way its opening frame is (the causal VAE decodes the first latent with no history), so a
        loop whose closing latent equals its opening one (multiplier 0) ends on its first frame."""
        frames = self.decode(latents)
        if item.task == "loop":
            frames[-1] = self.decode(latents[:, :, -1:])[0]
        return frames

    def plan(self, item: Any) -> CondPlan:
        """The item's conditioning plan (input videos are probed for their frame counts)."""
        return plan_conditioning(
            item.task,
            num_frames=item.num_frames,
            temporal_factor=self.spec.temporal_factor,
            cond_frames=item.cond_frames,
            noise_multipliers=item.noise_multipliers,
            n_images=len(_images(item)),
            video_frames=self._frame_count(item.video),
            video_b_frames=self._frame_count(item.video_b),
        )

    def conditioning_metadata(self, item: Any) -> dict[str, Any]:
        """For the item JSON: latent indices, output pixel frames and multipliers per slot."""
        return self.plan(item).to_metadata()

    def denoisers(self) -> dict[str, torch.nn.Module]:
        """The loaded denoiser(s) by component name: Wan's `experts`, Mochi's `dit`."""
        experts = getattr(self, "experts", None)
        return dict(experts) if experts is not None else {"dit": self.dit}

    # ------------------------------------------------------------------------------ internals

    def _check_size(self, item: Any) -> None:
        r, m = self.spec.temporal_factor, self.spec.spatial_multiple
        if item.num_frames < 1 or (item.num_frames - 1) % r:
            raise PipelineError(
                f"item {item.id}: num_frames {item.num_frames} must be {r}k+1 "
                f"(e.g. {2 * r + 1}, {4 * r + 1}) for a {self.spec.family} pipeline"
            )
        if item.height % m or item.width % m or min(item.height, item.width) < m:
            raise PipelineError(
                f"item {item.id}: {item.width}x{item.height} must be multiples of {m} pixels"
            )

    def _conditioning(self, item: Any) -> sampler.ConditioningSpec | None:
        plan = self.plan(item)
        if not plan.slots:
            return None
        size = (item.width, item.height)
        encode = self._pixel_encoder(item)
        encoded = (
            self._encode_layout(item, plan, encode)
            if any(not s.encode_alone for s in plan.slots)
            else None
        )
        alone: dict[tuple, Tensor] = {}  # the same picture twice (a loop) is one latent, reused
        latents = []
        for slot in plan.slots:
            if not slot.encode_alone:
                latents.append(encoded[:, :, slot.latent_index])
                continue
            key = (slot.source, slot.image_index, slot.source_frames[:1])
            if key not in alone:
                if slot.source == "image":
                    image = _images(item)[slot.image_index]
                    pixels = self._load_image(image, *size, fit=_fit(item))[None]
                else:  # one frame of a video, encoded alone like an image (loop)
                    path = _source_path(item, slot.source)
                    pixels = self._read_frames(path, slot.source_frames[:1], *size, fit=_fit(item))
                alone[key] = encode(pixels)[:, :, 0]
            latents.append(alone[key])
        clean = torch.stack(latents, dim=2)
        return sampler.ConditioningSpec(plan.latent_indices, clean, plan.multipliers)

    def _encode_layout(self, item: Any, plan: CondPlan, encode: PixelEncoder) -> Tensor:
        """Build the conditioning video (up to the last conditioned frame) and encode it."""
        layout = conditioning_video_layout(plan, item.num_frames)
        last = max(p for p, entry in enumerate(layout) if entry is not None)
        layout = layout[: last + 1]
        frames: dict[tuple[str, int], np.ndarray] = {}
        for source in sorted({src for src, _ in layout}):
            wanted = sorted({i for src, i in layout if src == source})
            path = _source_path(item, source)
            pixels = self._read_frames(path, wanted, item.width, item.height, fit=_fit(item))
            frames.update(((source, i), px) for i, px in zip(wanted, pixels, strict=True))
        return encode(np.stack([frames[entry] for entry in layout]))

    def _load_image(self, path: str, width: int, height: int, fit: str = "cover") -> np.ndarray:
        options = self.storage_options
        return video.load_image(path, width, height, fit=fit, storage_options=options)

    def _read_frames(
        self, path: str, indices, width: int, height: int, fit: str = "cover"
    ) -> np.ndarray:
        options = self.storage_options
        return video.read_frames(path, indices, width, height, fit=fit, storage_options=options)

    def _frame_count(self, path: str | None) -> int | None:
        if not path:
            return None
        info = video.probe_video(path, storage_options=self.storage_options)
        if info.frames_exact:
            return info.frames
        return video.count_frames(path, storage_options=self.storage_options)


def _context_shape(context: sampler.Context) -> tuple:
    if isinstance(context, Tensor):
        return tuple(context.shape)
    return tuple(tuple(t.shape) for t in context)


def _cat_contexts(contexts: Sequence[sampler.Context]) -> sampler.Context:
    """Each item's context (batch 1, a tensor or a tuple of tensors) concatenated along batch."""
    if isinstance(contexts[0], Tensor):
        return torch.cat(list(contexts))
    return tuple(torch.cat(list(parts)) for parts in zip(*contexts, strict=True))


def _check_same_key(keys: list[BatchKey], prepared: Sequence[Prepared]) -> None:
    for key, p in zip(keys[1:], prepared[1:], strict=True):
        if key != keys[0]:
            differ = [f for f in BatchKey._fields if getattr(key, f) != getattr(keys[0], f)]
            raise ValueError(
                f"items {prepared[0].item_id} and {p.item_id} cannot share a forward: their "
                f"{', '.join(differ)} differ. Group items by Pipeline.batch_key before "
                "sample_batch."
            )


def _to_device(context: sampler.Context, device: torch.device) -> sampler.Context:
    if isinstance(context, Tensor):
        return context.to(device)
    return tuple(t.to(device) for t in context)


def _fit(item: Any) -> str:
    """How the item's inputs are framed (`video.FITS`); items from before `fit` were "cover"."""
    return getattr(item, "fit", None) or "cover"


def _images(item: Any) -> tuple[str, ...]:
    return tuple(item.images)


def _source_path(item: Any, source: str) -> str:
    return item.video_b if source == "video_b" else item.video
