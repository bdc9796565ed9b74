"""Optical flow estimators behind one interface: RAFT (torchvision), OpenCV DIS, and SynthDrive ground truth.

Conventions are those of :mod:`poodle.data.flow`: a flow is float32 (B, 2, H, W) in pixels, channel 0 = dx (right),
channel 1 = dy (down), and F_{a->b}(p) says that the content at p in frame a is at p + F(p) in frame b.

Every estimator takes batched frames (B, 3, H, W), RGB, either uint8 in [0, 255] or float in [0, 1], on any device,
and returns flows on the frames' device:

* ``estimator(frames_a, frames_b) -> flow_ab``
* ``estimator.bidirectional(frames_a, frames_b) -> (flow_ab, flow_ba)`` - the occlusion mask needs both.

Backends:

* :class:`RaftFlow` - torchvision ``raft_large`` / ``raft_small``. Frozen and **always in eval mode**, even after a
  parent module calls ``.train()`` (the authors' release let RAFT's BatchNorm run on batch statistics and drift).
  Weights come from a local file or the torch hub cache; this module never downloads.
* :class:`DISFlow` - OpenCV's DIS on the CPU, no weights. The default when there is no GPU or no RAFT weights.
* :class:`GroundTruthFlow` - SynthDrive pairs carry exact flow; the data loader supplies it, nothing is estimated.

:func:`build_flow_estimator` turns a :class:`poodle.config.FlowConfig` into one of these. :class:`EPEMeter`
accumulates end-point-error statistics against ground truth (``poodle flow --benchmark-synthdrive``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poodle.data.flow import resize_flow

__all__ = [
    "DISFlow",
    "EPEMeter",
    "FlowEstimator",
    "FlowWeightsError",
    "GroundTruthFlow",
    "RaftFlow",
    "build_flow_estimator",
    "endpoint_error",
    "raft_flow_sequence",
    "raft_size_of",
    "raft_weights_path",
]

RAFT_SIZES = ("large", "small")
# torchvision weight enum member used by default for each size. raft_large: C_T_V1 is torchvision's port of
# princeton-vl's raft-things.pth (Chairs + Things), the checkpoint the release uses; C_T_SKHT_V2 (also
# trained on Sintel, KITTI, HD1K) stays one `flow.weights=C_T_SKHT_V2` away.
DEFAULT_RAFT_WEIGHTS = {"large": "C_T_V1", "small": "C_T_V2"}
DIS_PRESETS = ("ultrafast", "fast", "medium")
RAFT_MIN_SIDE = 128  # 8x downsampling, then a 4-level correlation pyramid that needs >= 16 cells
# What `poodle flow train` writes into its run folder: a plain torchvision RAFT state dict (flow.weights=DIR/...).
TRAINED_FLOW_FILE = "flow_model.pt"


class FlowWeightsError(FileNotFoundError):
    """RAFT weights are not available locally (this code base never downloads them)."""


# --------------------------------------------------------------------------------------------------------------
# Base interface


def _check_pair(frames_a: Tensor, frames_b: Tensor) -> None:
    if frames_a.dim() != 4 or frames_a.shape[1] != 3:
        raise ValueError(f"frames must have shape (B, 3, H, W), got {tuple(frames_a.shape)}")
    if frames_a.shape != frames_b.shape:
        raise ValueError(f"frame batches differ in shape: {tuple(frames_a.shape)} vs {tuple(frames_b.shape)}")


def _to_unit_float(frames: Tensor) -> Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    if frames.dtype == torch.uint8:
        return frames.float() / 255.0
    return frames.float()


class FlowEstimator(nn.Module):
    """Interface: ``forward(frames_a, frames_b) -> flow_ab`` and ``bidirectional(...) -> (flow_ab, flow_ba)``.

    Subclasses implement ``forward``. The default ``bidirectional`` stacks both orderings along the batch and makes
    one call, so batched backends see a single batch of 2B pairs.
    """

    name: str = "flow"

    def forward(self, frames_a: Tensor, frames_b: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def bidirectional(self, frames_a: Tensor, frames_b: Tensor) -> tuple[Tensor, Tensor]:
        _check_pair(frames_a, frames_b)
        flows = self(torch.cat((frames_a, frames_b)), torch.cat((frames_b, frames_a)))
        flow_ab, flow_ba = flows.chunk(2)
        return flow_ab, flow_ba


# --------------------------------------------------------------------------------------------------------------
# RAFT


def _raft_weights_enum(size: str):
    from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights

    return Raft_Large_Weights if size == "large" else Raft_Small_Weights


def raft_weights_path(size: str = "large", member: str = "") -> Path:
    """Where torchvision's hub cache keeps a RAFT weight file: ``$TORCH_HOME/hub/checkpoints/<url file name>``.

    ``member`` is a ``Raft_Large_Weights`` / ``Raft_Small_Weights`` member name (default: C_T_V1 / C_T_V2).
    The file name (with its hash prefix) is read from the enum's URL; nothing is downloaded.
    """
    if size not in RAFT_SIZES:
        raise ValueError(f"RAFT size must be one of {RAFT_SIZES}, got {size!r}")
    enum = _raft_weights_enum(size)
    member = member or DEFAULT_RAFT_WEIGHTS[size]
    try:
        url = enum[member].url
    except KeyError:
        names = ", ".join(m.name for m in enum)
        raise ValueError(f"unknown raft_{size} weights {member!r}; torchvision has: {names}") from None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _resolve_raft_weights(size: str, weights: str) -> Path:
    """``weights`` = "" (hub cache, default member), an enum member name (hub cache), or a file path."""
    enum = _raft_weights_enum(size)
    if weights and weights not in enum.__members__:
        path = Path(weights).expanduser()
        if path.is_dir() and (path / TRAINED_FLOW_FILE).is_file():  # a `poodle flow train` run folder
            return path / TRAINED_FLOW_FILE
        if not path.is_file():
            raise FlowWeightsError(
                f"RAFT weights file not found: {path} (a model trained by `poodle flow train --out DIR` is "
                f"DIR/{TRAINED_FLOW_FILE}; train it first, or pass DIR itself)"
            )
        return path
    path = raft_weights_path(size, weights)
    if not path.is_file():
        member = weights or DEFAULT_RAFT_WEIGHTS[size]
        raise FlowWeightsError(
            f"raft_{size} weights not found at {path} (torchvision Raft_{size.capitalize()}_Weights.{member}). "
            f"This code never downloads: copy that file there (the hub cache; set TORCH_HOME to move it), or pass "
            f"a local torchvision RAFT state dict with flow.weights=FILE / --weights FILE, or use flow.source=dis."
        )
    return path


def _load_raft_state_dict(model: nn.Module, path: Path) -> None:
    from poodle.engine.checkpoint import CheckpointError, safe_load

    try:
        state = safe_load(path, what="RAFT weights")
    except CheckpointError as e:
        raise FlowWeightsError(str(e)) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FlowWeightsError(f"{path} does not hold a state dict (found a {type(state).__name__})")
    # Checkpoints saved from DataParallel/DDP wrap every key in "module.".
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise FlowWeightsError(
            f"{path} is not a torchvision RAFT state dict for this model size ({str(e).splitlines()[0]}). "
            "princeton-vl's raft-things.pth uses a different layout; use torchvision's weight files."
        ) from e


def raft_size_of(path: str | Path) -> str:
    """Which torchvision RAFT ("large" or "small") a state-dict file (or `poodle flow train` run folder) holds.

    Only raft_large has a convex-upsampling mask predictor, so its keys tell the two apart."""
    from poodle.engine.checkpoint import CheckpointError, safe_load

    path = Path(path)
    if path.is_dir():
        path = path / TRAINED_FLOW_FILE
    try:
        state = safe_load(path, what="RAFT weights")
    except CheckpointError as e:
        raise FlowWeightsError(str(e)) from e
    if not isinstance(state, dict) or not any(k.removeprefix("module.").startswith("feature_encoder.") for k in state):
        raise FlowWeightsError(f"{path} is not a torchvision RAFT state dict")
    return "large" if any(k.removeprefix("module.").startswith("mask_predictor.") for k in state) else "small"


class RaftFlow(FlowEstimator):
    """Frozen torchvision RAFT, always in eval mode, fp32, returning only the final (convex-upsampled) flow.

    Args:
        size: "large" (the paper's model) or "small".
        weights: "" = the hub-cache file of the default torchvision member; a member name such as "C_T_SKHT_V2"
            = that member's hub-cache file; a path = a local torchvision state dict; ``None`` = random
            initialisation (tests only: random RAFT output is meaningless).
        iters: refinement iterations (the paper: 24).
        resolution: optional (H, W) to run RAFT at (e.g. half resolution to save memory/time); the flow is resized
            back to the input size and its vectors rescaled.
    """

    def __init__(
        self,
        size: str = "large",
        weights: str | None = "",
        iters: int = 24,
        resolution: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        from torchvision.models.optical_flow import raft_large, raft_small

        if size not in RAFT_SIZES:
            raise ValueError(f"RAFT size must be one of {RAFT_SIZES}, got {size!r}")
        if iters < 1:
            raise ValueError(f"RAFT iters must be >= 1, got {iters}")
        self.name = f"raft_{size}"
        self.size = size
        self.iters = int(iters)
        self.resolution = None if resolution is None else (int(resolution[0]), int(resolution[1]))
        # Resolve the file before building the network so a missing file fails fast.
        self.weights_path = None if weights is None else _resolve_raft_weights(size, weights)
        self.raft = (raft_large if size == "large" else raft_small)(weights=None, progress=False)
        if self.weights_path is not None:
            _load_raft_state_dict(self.raft, self.weights_path)
        self.raft.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> RaftFlow:
        # Frozen estimator: stay in eval mode whatever a parent asks (the release left it in train mode, a defect).
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.raft.parameters()).device

    def forward(self, frames_a: Tensor, frames_b: Tensor) -> Tensor:
        _check_pair(frames_a, frames_b)
        return self._run(frames_a, frames_b, shared=False)

    def bidirectional(self, frames_a: Tensor, frames_b: Tensor) -> tuple[Tensor, Tensor]:
        """Both directions in one batched RAFT call; each frame is encoded once (not once per direction)."""
        _check_pair(frames_a, frames_b)
        return self._run(frames_a, frames_b, shared=True).chunk(2)

    @torch.no_grad()  # not inference_mode: the flow is later saved for backward by grid_sample in the dense loss
    def _run(self, frames_a: Tensor, frames_b: Tensor, shared: bool) -> Tensor:
        out_device = frames_a.device
        h, w = frames_a.shape[-2:]
        dev = self.device
        x = torch.cat((frames_a, frames_b)).to(dev, non_blocking=True)
        x = _to_unit_float(x) * 2.0 - 1.0  # RAFT expects [-1, 1]
        if self.resolution is not None and self.resolution != (h, w):
            x = F.interpolate(x, size=self.resolution, mode="bilinear", align_corners=False, antialias=True)
        rh, rw = x.shape[-2:]
        # RAFT needs multiples of 8 and at least 128 px (its 4-level correlation pyramid): replicate-pad
        # bottom/right so pixel coordinates are unchanged, and crop the flow back afterwards.
        ph, pw = max(RAFT_MIN_SIDE, rh + (-rh) % 8) - rh, max(RAFT_MIN_SIDE, rw + (-rw) % 8) - rw
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        with torch.autocast(
            device_type=dev.type, enabled=False
        ):  # FP32, even inside a bf16 step (RAFT's correlation is precision-sensitive)
            flow = _raft_final_flow(self.raft, x, self.iters, shared)
        flow = flow[:, :, :rh, :rw]
        if (rh, rw) != (h, w):
            flow = resize_flow(flow, (h, w))
        return flow.float().to(out_device)


def _raft_final_flow(raft: nn.Module, x: Tensor, iters: int, shared: bool) -> Tensor:
    """torchvision RAFT's forward, but convex-upsampling only the last iteration (the only one used).

    ``x`` is (2B, 3, H, W) = cat(frames_a, frames_b), in [-1, 1]. ``shared=False``: B pairs a->b. ``shared=True``:
    2B pairs (a->b then b->a), reusing the per-frame features (instance/eval-batch norm is per sample, so encoding
    each frame once gives the same result as encoding the concatenation of both orderings).
    Mirrors ``torchvision.models.optical_flow.raft.RAFT.forward``; the equivalence is tested.
    """
    from torchvision.models.optical_flow.raft import upsample_flow

    hidden, context, coords0, coords1 = _raft_encode(raft, x, shared)
    for _ in range(iters):
        corr = raft.corr_block.index_pyramid(centroids_coords=coords1)
        hidden, delta = raft.update_block(hidden, context, corr, coords1 - coords0)
        coords1 = coords1 + delta
    up_mask = None if raft.mask_predictor is None else raft.mask_predictor(hidden)
    return upsample_flow(coords1 - coords0, up_mask=up_mask)


def raft_flow_sequence(raft: nn.Module, x: Tensor, iters: int) -> list[Tensor]:
    """Every update's upsampled flow for 2B pairs (a->b then b->a) of ``x`` = cat(frames_a, frames_b) in [-1, 1].

    For training (the sequence loss supervises every update). As torchvision's ``RAFT.forward``, the coordinates
    are detached before each update (RAFT's paper: gradients flow only through the current update), but each frame
    is encoded once for both directions.
    """
    from torchvision.models.optical_flow.raft import upsample_flow

    hidden, context, coords0, coords1 = _raft_encode(raft, x, shared=True)
    flows = []
    for _ in range(iters):
        coords1 = coords1.detach()
        corr = raft.corr_block.index_pyramid(centroids_coords=coords1)
        hidden, delta = raft.update_block(hidden, context, corr, coords1 - coords0)
        coords1 = coords1 + delta
        up_mask = None if raft.mask_predictor is None else raft.mask_predictor(hidden)
        flows.append(upsample_flow(coords1 - coords0, up_mask=up_mask))
    return flows


def _raft_encode(raft: nn.Module, x: Tensor, shared: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RAFT's encoders and correlation pyramid: (hidden state, context, coords0, coords1) before the first update."""
    from torchvision.models.optical_flow._utils import make_coords_grid

    n2, _, h, w = x.shape
    fa, fb = raft.feature_encoder(x).chunk(2)
    img1 = x
    if shared:
        fmap1, fmap2 = torch.cat((fa, fb)), torch.cat((fb, fa))
    else:
        fmap1, fmap2 = fa, fb
        img1 = x[: n2 // 2]
    raft.corr_block.build_pyramid(fmap1, fmap2)
    context_out = raft.context_encoder(img1)
    hidden_size = raft.update_block.hidden_state_size
    hidden, context = torch.split(context_out, [hidden_size, context_out.shape[1] - hidden_size], dim=1)
    hidden, context = torch.tanh(hidden), F.relu(context)

    b = fmap1.shape[0]
    coords0 = make_coords_grid(b, h // 8, w // 8).to(x.device)
    return hidden, context, coords0, coords0.clone()


# --------------------------------------------------------------------------------------------------------------
# DIS (OpenCV, CPU)


class DISFlow(FlowEstimator):
    """OpenCV Dense Inverse Search on the CPU (grayscale uint8), no weights.

    A CPU backend: pairs are processed one by one in a Python loop and frames on a GPU are copied to the host and
    back. Fast enough for tests, the SynthDrive demo and offline precomputation at modest resolution; use RAFT on a
    GPU for full-resolution online flow.
    """

    def __init__(self, preset: str = "medium") -> None:
        super().__init__()
        import cv2

        if preset not in DIS_PRESETS:
            raise ValueError(f"DIS preset must be one of {DIS_PRESETS}, got {preset!r}")
        self.name = "dis" if preset == "medium" else f"dis_{preset}"
        self.preset = preset
        self._cv2 = cv2
        self._preset_id = {
            "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
            "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
        }[preset]

    @staticmethod
    def _gray(frames: Tensor) -> np.ndarray:
        """(B, 3, H, W) -> (B, H, W) uint8 luma (ITU-R 601 weights, as cv2.COLOR_RGB2GRAY)."""
        x = frames.detach()
        if x.dtype != torch.uint8:
            x = (x.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
        rgb = x.cpu().permute(0, 2, 3, 1).numpy().astype(np.float32)
        gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.ascontiguousarray(gray.round().clip(0, 255).astype(np.uint8))

    @torch.no_grad()
    def forward(self, frames_a: Tensor, frames_b: Tensor) -> Tensor:
        _check_pair(frames_a, frames_b)
        ga, gb = self._gray(frames_a), self._gray(frames_b)
        dis = self._cv2.DISOpticalFlow_create(self._preset_id)  # per call: the OpenCV object is not thread-safe
        # cv2 flow is (H, W, 2) with (dx, dy) and prev(y, x) ~ next(y + dy, x + dx): our F_{a->b} convention.
        flows = [dis.calc(a, b, None) for a, b in zip(ga, gb)]
        out = torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).contiguous()
        return out.to(frames_a.device)


# --------------------------------------------------------------------------------------------------------------
# Ground truth (SynthDrive)


class GroundTruthFlow(FlowEstimator):
    """Placeholder for ``flow.source=gt``: SynthDrive pairs carry exact flow, so nothing is estimated.

    The data loader puts the ground-truth forward and backward flow into the batch; the training step uses them
    directly. Calling this module on images is a programming error and raises.
    """

    name = "gt"

    def forward(self, frames_a: Tensor, frames_b: Tensor) -> Tensor:
        raise RuntimeError(
            "flow.source=gt: ground-truth flow comes with SynthDrive pairs from the data loader; it cannot be "
            "estimated from images (use flow.source=dis or raft_large for real videos)"
        )

    def bidirectional(self, frames_a: Tensor, frames_b: Tensor) -> tuple[Tensor, Tensor]:
        self(frames_a, frames_b)  # raises
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------------------------
# Factory


def build_flow_estimator(
    cfg,
    device: torch.device | str = "cpu",
    *,
    fallback: bool = False,
    resolution: tuple[int, int] | None = None,
) -> FlowEstimator:
    """Build the estimator named by ``cfg`` (a :class:`poodle.config.FlowConfig`) on ``device``.

    ``raft_*`` with missing weights raises :class:`FlowWeightsError` - a run must not silently switch to a worse
    flow - unless ``fallback=True``, which warns and returns :class:`DISFlow`. ``resolution`` applies to RAFT.
    """
    source = cfg.source
    if source == "gt":
        return GroundTruthFlow()
    if source == "dis":
        return DISFlow()
    if source in ("raft_large", "raft_small"):
        try:
            est = RaftFlow(source.removeprefix("raft_"), weights=cfg.weights, iters=cfg.iters, resolution=resolution)
        except FlowWeightsError as e:
            if not fallback:
                raise
            warnings.warn(f"{e} -- falling back to DIS optical flow (CPU).", stacklevel=2)
            return DISFlow()
        return est.to(device)
    raise ValueError(f"unknown flow source {source!r}; expected raft_large, raft_small, dis or gt")


# --------------------------------------------------------------------------------------------------------------
# Evaluation against ground truth


def endpoint_error(pred: Tensor, gt: Tensor) -> Tensor:
    """(B, H, W) per-pixel end-point error |pred - gt|_2 of two (B, 2, H, W) flows."""
    if pred.shape != gt.shape or pred.dim() != 4 or pred.shape[1] != 2:
        raise ValueError(f"flows must both be (B, 2, H, W), got {tuple(pred.shape)} and {tuple(gt.shape)}")
    return (pred.float() - gt.float()).square().sum(1).sqrt()


class EPEMeter:
    """Accumulates EPE over all pixels of all pairs (pixel-weighted, not a mean of per-pair means).

    ``update(pred, gt, occluded, valid)``: ``valid`` (optional) drops pixels from every statistic - the SynthDrive
    benchmark drops pixels whose true target leaves the frame, whose ground truth grows without bound near the
    camera plane. ``summary()`` -> dict with ``epe`` (all valid pixels), ``epe_noc`` (valid, non-occluded), ``px3``
    (% of valid pixels with EPE > 3 px), ``fl_all`` (KITTI's Fl-all: % of valid pixels with EPE > 3 px and > 5 % of
    the true flow's length), ``excluded`` (% of pixels not valid), ``pixels`` and ``pairs``.
    """

    def __init__(self) -> None:
        self.sum_all = 0.0
        self.sum_noc = 0.0
        self.n_total = 0
        self.n_all = 0
        self.n_noc = 0
        self.n_bad = 0
        self.n_fl = 0
        self.pairs = 0

    def update(self, pred: Tensor, gt: Tensor, occluded: Tensor | None = None, valid: Tensor | None = None) -> None:
        """``occluded`` / ``valid``: (B, H, W) or (B, 1, H, W) bool; occluded pixels count in ``epe`` only."""
        epe = endpoint_error(pred, gt).double()
        self.n_total += epe.numel()
        self.pairs += epe.shape[0]
        keep = torch.ones_like(epe, dtype=torch.bool)
        if valid is not None:
            keep = valid.reshape(epe.shape).to(epe.device, torch.bool)
        visible = keep
        if occluded is not None:
            visible = keep & ~occluded.reshape(epe.shape).to(epe.device, torch.bool)
        kept = epe[keep]
        self.sum_all += float(kept.sum())
        self.n_all += kept.numel()
        self.n_bad += int((kept > 3.0).sum())
        # KITTI's Fl: wrong by more than 3 px and by more than 5 % of the true motion.
        gt_mag = gt.float().norm(dim=1).double().to(epe.device)
        self.n_fl += int(((epe > 3.0) & (epe > 0.05 * gt_mag))[keep].sum())
        self.sum_noc += float(epe[visible].sum())
        self.n_noc += int(visible.sum())

    def summary(self) -> dict[str, float]:
        nan = float("nan")
        return {
            "epe": self.sum_all / self.n_all if self.n_all else nan,
            "epe_noc": self.sum_noc / self.n_noc if self.n_noc else nan,
            "px3": 100.0 * self.n_bad / self.n_all if self.n_all else nan,
            "fl_all": 100.0 * self.n_fl / self.n_all if self.n_all else nan,
            "excluded": 100.0 * (1.0 - self.n_all / self.n_total) if self.n_total else nan,
            "pixels": float(self.n_all),
            "pairs": float(self.pairs),
        }
