"""The segmentation readout: train a linear or UperNet head on a (frozen) backbone, evaluate, write results.

    results = run_readout("runs/sd", "synthdrive", "data/synthdrive", load_readout_config("readout_synthdrive_cpu"),
                          "runs/sd/readout")

Single process, or DDP under `torchrun` (DistributedSampler for training; the val split is sharded by index and
the confusion matrix all-reduced). Per step: poly lr, ImageNet-normalised crops, features of the frozen backbone
under no_grad, head logits upsampled bilinearly to the crop, cross-entropy with ignore_index. At the end:
whole-image or sliding-window inference on the val split, metrics at label resolution, class-group metrics,
`results.json`, `table.md`, `head.pt` and figures in `out_dir`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from poodle.data.augment import normalize
from poodle.engine.checkpoint import atomic_save
from poodle.engine.distributed import DistInfo, all_reduce_mean, barrier, broadcast_buffers, init_distributed
from poodle.evaluation.backbones import FeatureBackbone, load_backbone
from poodle.evaluation.config import ReadoutConfig
from poodle.evaluation.inference import infer
from poodle.evaluation.linear import LinearHead, upsample_logits
from poodle.evaluation.upernet import UperNetHead
from poodle.progress import progress_bar


class ReadoutError(RuntimeError):
    pass


class SegModel(nn.Module):
    """Backbone + head; `forward(x)` -> logits at the head's stride. A frozen backbone runs under no_grad."""

    def __init__(self, backbone: FeatureBackbone, head: nn.Module, features: str | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.features = features  # feature map of the linear head; None = UperNet pyramid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone.frozen):
            feats = self.backbone(x, with_sdm=self.features == "sdm")
        return self.head(feats[self.features] if self.features is not None else feats)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The dense features shown in the PCA figure (the linear head's input, else layer4)."""
        return self.backbone(x, with_sdm=self.features == "sdm")[self.features or "layer4"]


def poly_lr(base: float, min_lr: float, step: int, total: int, power: float) -> float:
    return (base - min_lr) * (1.0 - step / total) ** power + min_lr


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ReadoutError("device=cuda but CUDA is not available")
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def build_model(backbone_spec: str, cfg: ReadoutConfig, num_classes: int, arch: str | None) -> SegModel:
    if cfg.head == "linear":
        # Decoder-carrying PooDLe checkpoints keep their strides (SDM -> stride 8); anything read out at layer4
        # is dilated to stride 8 (FlowE's protocol; exact for the same weights).
        probe = load_backbone(backbone_spec, arch=arch)
        if cfg.features == "layer4" or probe.decoder is None:
            backbone = load_backbone(backbone_spec, arch=arch, dilated=True, keep_decoder=False)
        else:
            backbone = probe
        features = backbone.resolve_features(cfg.features)
        head: nn.Module = LinearHead(backbone.channels[features], num_classes, cfg.kernel, cfg.dilation, cfg.bn)
        return SegModel(backbone, head, features)
    # UperNet reads the stride-32 encoder pyramid; the SDM is discarded (as in the paper).
    backbone = load_backbone(backbone_spec, arch=arch, dilated=False, keep_decoder=False)
    chans = tuple(backbone.channels[k] for k in ("layer1", "layer2", "layer3", "layer4"))
    head = UperNetHead(chans, num_classes, channels=cfg.upernet_channels, dropout=cfg.dropout)
    if cfg.finetune:
        backbone.unfreeze()
    return SegModel(backbone, head, None)


def _first(items: list) -> Any:
    return items[0]


def _to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return normalize(images.to(device, non_blocking=True).float().div_(255.0))


def _check_data(dataset_name: str, data_root, cfg: ReadoutConfig, out_dir: Path, info: DistInfo, progress: bool):
    """Every train and val mask read once before any training (`check_segmentation_data`): a bad mask is one line
    naming the file now, not a DataLoader traceback after all readout training. Also resolves WT-Sem's label
    encoding and computes the class groups (Table 10 for BDD100K, else from the train masks' histograms).

    Rank 0 reads, the other ranks get its verdict by broadcast (so all of them fail, with the same line, or none).
    Returns (data-check dict for results.json, label encoding to build the datasets with, ClassGroups, the
    loss's class weights or None)."""
    import torch.distributed as dist

    from poodle.data.class_stats import class_statistics_from_histograms, median_frequency_weights
    from poodle.data.segmentation import SegDatasetError, check_segmentation_data
    from poodle.evaluation.groups import ClassGroups, groups_for_dataset

    payload: dict[str, Any] = {}
    if info.is_main:
        try:
            check = check_segmentation_data(dataset_name, data_root, ("train", "val"), cfg.label_encoding,
                                            workers=cfg.workers, progress=progress)  # fmt: skip
        except SegDatasetError as e:
            payload = {"error": str(e)}
        else:
            print(check.summary(), flush=True)
            classes = list(check.info.classes)
            if dataset_name == "bdd100k":
                groups = groups_for_dataset(dataset_name, classes)
            else:
                stats = class_statistics_from_histograms(check.histograms["train"], check.sizes["train"], classes,
                                                         check.info.ignore_index)  # fmt: skip
                groups = ClassGroups.from_stats(stats, classes)
                # Write-then-rename: a reader never sees half a file. Recomputed every run from the scan (cheap),
                # so a file written under an older size rule is never reused.
                tmp = out_dir / "class_stats.json.tmp"
                tmp.write_text(json.dumps({**stats.to_dict(), "classes_order": classes,
                                           "groups_by_index": groups.to_dict()}, indent=1))  # fmt: skip
                tmp.replace(out_dir / "class_stats.json")
            payload = {"check": check.to_dict(), "encoding": check.label_encoding or "auto",
                       "groups": groups.to_dict()}  # fmt: skip
            if cfg.class_weight == "median_frequency":
                weights = median_frequency_weights(check.histograms["train"], len(classes))
                payload["class_weight"] = [float(w) for w in weights]
                listed = ", ".join(f"{c} {w:.2f}" for c, w in zip(classes, weights))
                print(f"readout loss: median-frequency class weights: {listed}", flush=True)
    if info.enabled:
        box = [payload]
        dist.broadcast_object_list(box, src=0)
        payload = box[0]
    if "error" in payload:
        raise SegDatasetError(payload["error"])
    return (
        payload["check"],
        payload["encoding"],
        ClassGroups.from_dict(payload["groups"]),
        payload.get("class_weight"),
    )


@torch.no_grad()
def recompute_bn_statistics(
    backbone: FeatureBackbone,
    images: Any,
    with_sdm: bool,
    device: torch.device,
    info: DistInfo | None = None,
) -> dict[str, Any]:
    """Precise BatchNorm statistics: reset every BN layer of `backbone` (encoder, and the SDM when `with_sdm`) to the
    exact per-channel mean and unbiased variance of its input over all pixels of `images` (uint8 (3, H, W) images or
    (B, 3, H, W) batches, this rank's share), then leave the backbone as it was (eval mode when frozen). No gradient,
    no weight changes. Batches matter: each layer's input is computed with the layers above normalised by the
    batch's statistics, and a batch of one normalises every image by itself (see `_recompute_bn`).

    The pass runs the BN layers in train mode, so each layer normalises with the batch's statistics as in
    precise-BN / `torch.optim.swa_utils.update_bn`; but the statistics are pooled sums (float64) of every pixel
    rather than a cumulative average of per-batch means and variances: exact for any batch size and image size
    (batch 1, full frames of differing sizes), the variance includes the spread of the means between images, and
    under DDP the sums are all-reduced, so every rank gets the statistics of all ranks' images together."""
    from torch.nn.modules.batchnorm import _BatchNorm

    layers = [m for m in backbone.modules() if isinstance(m, _BatchNorm)]
    acc = {m: [torch.zeros(m.num_features, dtype=torch.float64, device=device) for _ in range(3)] for m in layers}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double().transpose(0, 1).reshape(module.num_features, -1)
        s = acc[module]
        s[0] += x.shape[1]
        s[1] += x.sum(dim=1)
        s[2] += (x * x).sum(dim=1)

    modes = {m: m.training for m in backbone.modules()}
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    count = 0
    try:
        for m in layers:
            m.train()  # batch statistics in the forward; the running buffers are overwritten below
        for image in images:
            batch = image if image.dim() == 4 else image[None]
            backbone(_to_input(batch, device), with_sdm=with_sdm)
            count += batch.shape[0]
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    if not layers:
        return {"images": count, "layers": 0}
    flat = torch.cat([torch.cat(acc[m]) for m in layers])
    n_images = torch.tensor([float(count)], dtype=torch.float64, device=device)
    if info is not None and info.enabled:
        import torch.distributed as dist

        dist.all_reduce(flat)
        dist.all_reduce(n_images)
    offset = 0
    for m in layers:
        c = m.num_features
        n, s1, s2 = flat[offset : offset + c], flat[offset + c : offset + 2 * c], flat[offset + 2 * c : offset + 3 * c]
        offset += 3 * c
        if float(n[0]) < 2:
            raise ReadoutError("recompute_bn: too few pixels reach a BatchNorm layer; use more images")
        mean = s1 / n
        var = (s2 - n * mean * mean).clamp_min(0) / (n - 1)
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.fill_(int(n_images.item()))
    return {"images": int(n_images.item()), "layers": len(layers)}


def _recompute_bn(model: SegModel, cfg: ReadoutConfig, dataset_name: str, data_root, encoding: str,
                  device: torch.device, info: DistInfo, say) -> dict[str, Any] | None:  # fmt: skip
    """`cfg.recompute_bn` train images (a seeded choice, the same on every rank, split between the ranks) as the
    head's training crops (`SegTrainTransform`, seeded apart from training), in batches of the readout's per-rank
    batch size, as precise-BN does; None when off.

    Why crops in batches and not whole frames one at a time: with one image per batch every layer above normalises
    each image by itself, and the deeper layers' statistics then describe inputs the readout never sees (it scored
    lower on the SynthDrive study's PooDLe; docs/evaluation.md)."""
    if cfg.recompute_bn <= 0:
        return None
    from poodle.data.seg_transforms import SegTrainTransform, collate_segmentation
    from poodle.data.segmentation import build_segmentation_dataset

    tf = SegTrainTransform(cfg.crop_size, cfg.scale_range, base_size=cfg.base_size, hflip=True, seed=cfg.seed + 7919)
    ds = build_segmentation_dataset(dataset_name, data_root, "train", transform=tf, encoding=encoding)
    n = min(cfg.recompute_bn, len(ds))
    chosen = torch.randperm(len(ds), generator=torch.Generator().manual_seed(cfg.seed))[:n].tolist()
    subset = torch.utils.data.Subset(ds, chosen[info.rank :: info.world_size])
    per_rank = max(1, cfg.batch_size // info.world_size)
    loader = DataLoader(subset, batch_size=per_rank, num_workers=min(cfg.workers, 2), collate_fn=collate_segmentation)
    t0 = time.perf_counter()
    done = recompute_bn_statistics(model.backbone, (b["image"] for b in loader), model.features == "sdm", device,
                                   info)  # fmt: skip
    seconds = time.perf_counter() - t0
    say(f"recompute_bn: BatchNorm statistics of {done['layers']} backbone layers recomputed on {done['images']} "
        f"train crops (batches of {per_rank}) in {seconds:.1f} s", flush=True)  # fmt: skip
    return {**done, "batch": per_rank, "seconds": round(seconds, 1)}


def run_readout(
    backbone_spec: str | Path,
    dataset_name: str,
    data_root: str | Path,
    cfg: ReadoutConfig,
    out_dir: str | Path,
    steps: int | None = None,
    arch: str | None = None,
    method: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate a readout; returns the results dict (also written to out_dir/results.json)."""
    from poodle.data.seg_transforms import SegEvalTransform, SegTrainTransform, collate_segmentation
    from poodle.data.segmentation import build_segmentation_dataset
    from poodle.evaluation.metrics import ConfusionMatrix
    from poodle.evaluation.tables import make_results, per_class_table, table1, table3_rows, write_results

    t_start = time.perf_counter()
    total_steps = int(steps if steps is not None else cfg.steps)
    if total_steps < 1:
        raise ReadoutError(f"steps must be >= 1, got {total_steps}")
    out_dir = Path(out_dir)
    info = init_distributed("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                            else "cpu")  # fmt: skip
    device = resolve_device(cfg.device, info)
    if cfg.batch_size % info.world_size:
        raise ReadoutError(f"batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    per_rank = cfg.batch_size // info.world_size
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    say = print if info.is_main else (lambda *a, **k: None)

    # ---- data: every mask checked before anything is trained
    data_check, encoding, groups, class_weight = _check_data(dataset_name, data_root, cfg, out_dir, info, progress)
    train_tf = SegTrainTransform(cfg.crop_size, cfg.scale_range, base_size=cfg.base_size, hflip=True, seed=cfg.seed)
    train_ds = build_segmentation_dataset(dataset_name, data_root, "train", transform=train_tf, encoding=encoding)
    val_ds = build_segmentation_dataset(dataset_name, data_root, "val", transform=SegEvalTransform(cfg.eval_resize),
                                        encoding=encoding)  # fmt: skip
    ds_info = train_ds.info
    classes, ignore = list(ds_info.classes), ds_info.ignore_index
    if len(train_ds) < per_rank * info.world_size:
        raise ReadoutError(f"the train split has {len(train_ds)} images, fewer than one batch of {cfg.batch_size}")

    # ---- model
    torch.manual_seed(cfg.seed)  # the random ("Scratch") backbone and the head init are reproducible
    model = build_model(str(backbone_spec), cfg, len(classes), arch).to(device)
    # Before SyncBatchNorm conversion and DDP: the statistics are set once, then the backbone stays frozen.
    bn_info = _recompute_bn(model, cfg, dataset_name, data_root, encoding, device, info, say)
    if info.enabled and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    groups_opt = [{"params": head_params, "lr_mult": 1.0}]
    if not model.backbone.frozen:
        groups_opt.append({"params": [p for p in model.backbone.parameters()], "lr_mult": cfg.backbone_lr_mult})
    optimizer = torch.optim.SGD(groups_opt, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if info.enabled else model  # fmt: skip
    autocast = cfg.amp and device.type == "cuda"
    loss_weight = None if class_weight is None else torch.tensor(class_weight, dtype=torch.float32, device=device)
    feat_name = model.features or "pyramid"
    say(f"readout: {cfg.head}{' finetune' if cfg.finetune else ' (frozen backbone)'} on {feat_name} of "
        f"{model.backbone.arch}{' dilated' if model.backbone.dilated else ''} [{model.backbone.source}] | "
        f"{dataset_name}: {len(train_ds)} train / {len(val_ds)} val images, {len(classes)} classes | "
        f"{total_steps} steps x batch {cfg.batch_size} on {device} x{info.world_size}", flush=True)  # fmt: skip

    sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)  # fmt: skip
    loader = DataLoader(train_ds, batch_size=per_rank, sampler=sampler, num_workers=cfg.workers, drop_last=True,
                        collate_fn=collate_segmentation, pin_memory=device.type == "cuda",
                        persistent_workers=False)  # set_epoch must reach the workers  # fmt: skip

    def batches():
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            yield from loader
            epoch += 1

    def evaluate(limit: int) -> Any:
        ddp.eval()
        # Each rank evaluates the bare `model` (no DDP forward, so no buffer sync) and its BN running statistics
        # were last updated with its own batch: without this broadcast every rank would score its val shard with a
        # different head, and the all-reduced matrix would match no single model (nor head.pt, saved by rank 0).
        broadcast_buffers(model, info)
        n = len(val_ds) if limit <= 0 else min(limit, len(val_ds))
        # Shard by index without padding (unlike DistributedSampler): each val image is scored exactly once, so the
        # summed confusion matrix equals a single-process evaluation.
        subset = torch.utils.data.Subset(val_ds, list(range(n))[info.rank :: info.world_size])
        val_loader = DataLoader(subset, batch_size=1, num_workers=min(cfg.workers, 2), collate_fn=_first)
        cm = ConfusionMatrix(len(classes), ignore, device=device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            eval_bar = progress_bar(len(val_loader), "eval", "img", enabled=progress and info.is_main, leave=False)
            for item in val_loader:
                x = _to_input(item["image"][None], device)
                logits = infer(model, x, cfg.inference, cfg.window, cfg.stride)
                mask = item["mask"][None].to(device)
                pred = upsample_logits(logits.float(), tuple(mask.shape[-2:])).argmax(1)
                cm.update(pred, mask)
                eval_bar.update(1)
            eval_bar.close()
        cm.all_reduce()
        ddp.train()
        return cm.compute()

    # ---- train
    ddp.train()
    it = batches()
    window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
    last_loss = math.nan
    bar = progress_bar(total_steps, f"{cfg.head} readout", "step", enabled=progress and info.is_main)
    for step in range(total_steps):
        for g in optimizer.param_groups:
            g["lr"] = poly_lr(cfg.lr, cfg.min_lr, step, total_steps, cfg.power) * g["lr_mult"]
        batch = next(it)
        x = _to_input(batch["image"], device)
        target = batch["mask"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = ddp(x)
        logits = upsample_logits(logits.float(), tuple(target.shape[-2:]))
        loss = F.cross_entropy(logits, target, weight=loss_weight, ignore_index=ignore)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window_loss += float(loss.detach())
        window_n += 1
        bar.update(1)
        done = step + 1
        if done % cfg.log_every == 0 or done == total_steps:
            # Mean over ranks, so every rank logs, checks (and raises on) the same value: a non-finite loss on one
            # rank only would otherwise leave the others waiting in the next gradient all-reduce. (On `device`:
            # NCCL reduces CUDA tensors only.)
            mean_loss = torch.tensor(window_loss / window_n, dtype=torch.float64, device=device)
            last_loss = float(all_reduce_mean(mean_loss, info))
            if not math.isfinite(last_loss):
                raise ReadoutError(f"non-finite loss at step {done}; lower lr (now {cfg.lr})")
            rate = window_n * cfg.batch_size / max(time.perf_counter() - t_window, 1e-9)
            bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if not progress and info.is_main:
                print(f"step {done}/{total_steps} loss {last_loss:.4f} lr {optimizer.param_groups[0]['lr']:.3e} "
                      f"{rate:.1f} img/s", flush=True)  # fmt: skip
            window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
        if cfg.eval_every and done % cfg.eval_every == 0 and done < total_steps:
            m = evaluate(cfg.max_val_images)
            bar.write(f"step {done}: val mIoU {100 * m.miou:.1f} aAcc {100 * m.aacc:.1f}") if info.is_main else None
    bar.close()
    train_seconds = time.perf_counter() - t_start

    # ---- evaluate and write
    metrics = evaluate(cfg.max_val_images)
    readout = "finetune" if cfg.finetune else cfg.head
    method = {"weights": str(backbone_spec), "arch": model.backbone.arch, "backbone_source": model.backbone.source,
              "features": feat_name, **(method or {})}  # fmt: skip
    results = make_results(metrics, dataset=dataset_name, split="val", classes=classes, readout=readout,
                           method=method, steps=total_steps, groups=groups, config=cfg.to_dict(),
                           ignore_index=ignore)  # fmt: skip
    results["train_loss"] = last_loss
    results["data_check"] = data_check
    results["recompute_bn"] = bn_info or {"images": 0}
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    results["train_seconds"] = round(train_seconds, 1)
    if info.is_main:
        head_state = {"head": model.head.state_dict(), "config": cfg.to_dict(), "classes": classes,
                      "features": feat_name, "backbone": str(backbone_spec), "step": total_steps}  # fmt: skip
        if not model.backbone.frozen:
            head_state["backbone_state"] = model.backbone.state_dict()
        atomic_save(head_state, out_dir / "head.pt")
        label = [str(method.get("name") or Path(str(backbone_spec)).name)]
        if cfg.figures > 0:
            context = f"{label[0]} ({model.backbone.arch}), {readout} readout, {dataset_name} val"
            results["figures"] = _figures(model, val_ds, cfg, device, out_dir, metrics.per_class_iou, autocast,
                                          context)  # fmt: skip
        write_results(results, out_dir / "results.json")
        (out_dir / "table.md").write_text(
            f"## {dataset_name} {readout} readout ({total_steps} steps)\n\n"
            f"### mIoU and pixel accuracy (Table 1 layout)\n\n{table1(results, label)}\n\n"
            f"### mIoU by class group (Table 3 layout)\n\n{table3_rows(results, label)}\n\n"
            f"### Pixel accuracy by class group (Table 6 layout)\n\n{table3_rows(results, label, 'Acc')}\n\n"
            f"### Per-class IoU (Table 9 layout)\n\n{per_class_table(results, label)}\n"
        )
    barrier(info)
    return results


@torch.no_grad()
def _figures(
    model: SegModel, val_ds, cfg: ReadoutConfig, device, out_dir: Path, per_class_iou, autocast: bool, context: str
):
    from poodle.evaluation.figures import write_figures

    model.eval()
    samples, feats = [], []
    for i in range(min(cfg.figures, len(val_ds))):
        item = val_ds[i]
        x = _to_input(item["image"][None], device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = infer(model, x, cfg.inference, cfg.window, cfg.stride)
            f = model.feature_map(x)[0].float()
        mask = item["mask"]
        pred = upsample_logits(logits.float(), tuple(mask.shape[-2:])).argmax(1)[0]
        image = item["image"].permute(1, 2, 0).numpy()
        if image.shape[:2] != tuple(mask.shape):  # eval_resize: show the image at label size
            image = np.asarray(torch.nn.functional.interpolate(item["image"][None].float(), size=mask.shape,
                               mode="bilinear")[0].permute(1, 2, 0).round().clamp(0, 255).byte())  # fmt: skip
        samples.append((image, mask.numpy(), pred.cpu().numpy()))
        feats.append(f.cpu())
    info = val_ds.info
    return write_figures(
        out_dir, samples, feats, list(info.classes), info.palette, per_class_iou, info.ignore_index, context
    )
