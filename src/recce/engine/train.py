"""`recce train`: the paper's recipe on one CPU/GPU or many (torchrun), resumable, selecting on validation only.

Full training state (model, optimiser, scheduler, grad scaler, step, sampler position, RNG states) is written
atomically to `<out>/last.pt` every `checkpoint_every` steps; `--resume` continues from it and reproduces the
losses of an uninterrupted run. The best model on the validation split is exported as `<out>/best.safetensors`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import yaml
from timm.layers import convert_sync_batchnorm
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from recce import checkpoints
from recce.data import manifest, rows
from recce.data.dataset import ManifestDataset
from recce.detectors import Detector
from recce.engine.config import SELECT_METRICS, ConfigError, TrainConfig
from recce.engine.inference import score_frames
from recce.engine.runtime import autocast, init_distributed, resolve_amp
from recce.engine.sampler import EpochSampler
from recce.locks import OutputLock
from recce.metrics import aggregate_videos, binary_metrics, json_safe
from recce.weights import CheckpointError, load_torch_file, read_state_dict

log = logging.getLogger("recce")


@dataclass
class TrainResult:
    out: Path
    step: int
    finished: bool
    best: dict[str, Any] | None  # known on the main process only
    main_process: bool = True


def build_model(config: TrainConfig) -> Detector:
    """The detector of the config, from ImageNet weights (`model.pretrained`) and/or a run of ours (`init_from`)."""
    try:
        detector = config.build_detector()
    except CheckpointError as error:
        source = config.detector_class().pretrained_source
        hint = f"; get {source}" if source else ""
        raise ConfigError(
            f"model.pretrained: {error}{hint}; or set model.pretrained=null to train from random initialisation"
        ) from None
    if config.model.init_from:
        source = config.model.init_from
        try:
            given = read_state_dict(source)
        except CheckpointError as error:
            raise ConfigError(f"model.init_from: {error}") from None
        own = detector.state_dict()
        matching = {k: v.to(own[k].dtype) for k, v in given.items() if k in own and own[k].shape == v.shape}
        if not matching:
            raise ConfigError(f"model.init_from: {source}: no weight fits a {config.model.name} detector")
        detector.load_state_dict(matching, strict=False)
        log.info("initialised %d of %d tensors from %s", len(matching), len(own), source)
    return detector


def load_datasets(config: TrainConfig) -> tuple[ManifestDataset, ManifestDataset | None]:
    """Training and validation datasets; every data problem is a ConfigError raised before training.

    Only the columns a dataset keeps are read, with the selection pushed into the Parquet read; with
    `data.shared_rows` the rows come memory-mapped from `<train.out>/rows/` (written by the first process that finds
    them missing or built from another manifest), so the processes of a node share one copy.
    """
    d = config.data
    if not d.manifest:
        raise ConfigError("data.manifest is not set (the manifest written by `recce extract` or `recce synth`)")
    filters = {"datasets": d.datasets, "methods": d.methods, "compressions": d.compressions}
    preprocess = config.preprocess()
    sets = []
    for role, split, train in (("train", d.train_split, True), ("val", d.val_split, False)):
        if split is None:
            sets.append(None)
            continue
        selection = rows.Selection.of(splits=[split], **filters)
        try:
            if d.shared_rows:
                cache = Path(config.train.out) / "rows" / f"{role}.arrow"
                source = rows.shared_rows(d.manifest, cache, selection, landmarks=preprocess.face_mask)
            else:
                source = rows.read_rows(d.manifest, selection, landmarks=preprocess.face_mask)
            if source.num_rows == 0:
                raise ValueError(f"{d.manifest}: no rows match ({selection.describe()})")
            dataset = ManifestDataset(
                source, preprocess=preprocess, train=train, flip_p=d.flip_p, return_meta=not train
            )
        except manifest.ManifestError as error:  # unreadable, or no landmarks for a face-mask detector
            raise ConfigError(str(error)) from None
        except ValueError as error:
            raise ConfigError(f"{d.manifest}: split {split!r} is empty ({error})") from None
        counts = np.bincount(dataset.labels, minlength=2)
        if min(counts) == 0:
            raise ConfigError(
                f"{d.manifest}: split {split!r} has only one class ({counts[0]} real, {counts[1]} fake frames)"
            )
        sets.append(dataset)
    train_set, val_set = sets
    if val_set is not None and d.val_limit and len(val_set) > d.val_limit:
        # a fixed subset with the split's class proportions and at least one frame of each class
        rng = np.random.default_rng(0)
        labels = val_set.labels
        keep = np.concatenate(
            [
                rng.choice(
                    np.flatnonzero(labels == c), max(1, round(d.val_limit * np.mean(labels == c))), replace=False
                )
                for c in (0, 1)
            ]
        )
        val_set = ManifestDataset(val_set.frame.iloc[np.sort(keep)], preprocess=preprocess, return_meta=True)
    return train_set, val_set


def shard_groups(dataset: ManifestDataset, config: TrainConfig) -> np.ndarray | None:
    """Each row's tar shard for `data.order: shards` (crops outside shards form one group), else None."""
    if config.data.order != "shards":
        return None
    if dataset.shard_codes is None:
        raise ConfigError(
            f"{config.data.manifest}: data.order=shards needs packed crops (`recce extract --pack`, or "
            "`recce manifest pack` on this manifest); use data.order=shuffle for crops stored as files"
        )
    return dataset.shard_codes


def _lr_lambda(optim, step_size: int) -> Any:
    """Linear warm-up, then x gamma every `step_size` iterations counted after the warm-up (as the official trainer)."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps else 1.0
        return warm * optim.gamma ** (max(0, step - optim.warmup_steps) // step_size)

    return factor


def is_better(value: float, best: float | None, metric: str) -> bool:
    """The official trainer's rule: a validation as good as the best so far (>=) replaces it; NaN never wins."""
    if value != value:
        return False
    if best is None:
        return True
    return value >= best if SELECT_METRICS[metric] else value <= best


class Trainer:
    """One training run; construct, then `run()`."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, progress: bool = True):
        self.config = config
        self.progress = progress
        self.context, self.device = init_distributed(config.train.device)
        self.out = Path(config.train.out)
        self.lock = OutputLock(self.out, "recce train").acquire() if self.context.is_main else None
        if self.context.enabled and not self.context.is_main:
            dist.barrier()  # rank 0 writes the shared rows first; the others map them (or build their own)
        self.train_set, self.val_set = load_datasets(config)
        if self.context.enabled and self.context.is_main:
            dist.barrier()
        state_path = self.out / "last.pt"
        if resume and not state_path.is_file():
            raise ConfigError(f"{state_path}: nothing to resume (no training state in {self.out})")
        if not resume and state_path.is_file():
            raise ConfigError(f"{self.out}: already holds a run; pass --resume to continue it or choose another out")
        t = config.train
        self.amp = resolve_amp(t.amp, self.device)
        torch.manual_seed(t.seed + self.context.rank)
        model = build_model(config).to(self.device)
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.context.enabled and t.sync_bn and self.device.type == "cuda":  # SyncBatchNorm is GPU-only
            model = convert_sync_batchnorm(model)  # timm's keeps the activation of BatchNormAct2d (EfficientNet)
        self.model = model
        self.detector = checkpoints.unwrap(model)
        self.loss_config = config.loss_config()
        self.loss_names: list[str] = []  # the detector's loss terms, in the order it returns them
        fused = self.device.type in ("cuda", "cpu")
        o = config.optim
        optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[o.name]
        self.optimizer = optimizer_class(
            model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, fused=fused
        )
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0**10, enabled=self.amp == "fp16")
        wrapped: nn.Module = model
        if self.context.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids)
        self.step_model = torch.compile(wrapped) if t.compile else wrapped
        self.sampler = EpochSampler(
            self.train_set.labels,
            t.batch_size,
            balance=config.data.balance,
            seed=t.seed,
            rank=self.context.rank,
            world_size=self.context.world_size,
            groups=shard_groups(self.train_set, config),
            window=config.data.shard_window,
        )
        self.step_size = o.step_size
        if o.step_epochs is not None:  # resolved from this run's data, so the schedule follows the extracted size
            self.step_size = max(1, round(o.step_epochs * self.sampler.batches_per_epoch()))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(o, self.step_size))
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: dict[str, Any] | None = None
        self.writer = None
        # the losses summed since the last log line: part of the state, so a resumed run logs what an
        # uninterrupted one does whatever checkpoint_every and log_every are
        self.loss_sums: torch.Tensor | None = None  # the running window of the loss terms, created at the first step
        self.loss_count = 0
        if resume:
            self._restore(state_path)
        if self.context.is_main:
            self._open_outputs(resume)

    # ------------------------------------------------------------------ outputs
    def _open_outputs(self, resume: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self._trim_metrics(self.step if resume else 0)
        (self.out / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        handler = logging.FileHandler(self.out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._log_handler = handler
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step + 1 if resume else None)
        log.info(
            "training %s on %d %s process(es), amp=%s, %d training / %s validation frames, from step %d, "
            "lr x%g every %d iterations",
            self.config.model.name,
            self.context.world_size,
            self.device.type,
            self.amp,
            len(self.train_set),
            len(self.val_set) if self.val_set is not None else "no",
            self.step,
            self.config.optim.gamma,
            self.step_size,
        )
        if not (self.config.model.pretrained or self.config.model.init_from or resume):
            log.warning("training %s from random initialisation (model.pretrained is null)", self.config.model.name)

    def _trim_metrics(self, step: int) -> None:
        """Keep the metrics.jsonl rows up to `step`: a resumed run rewrites what came after its checkpoint."""
        path = self.out / "metrics.jsonl"
        lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)

    def _record(self, values: dict[str, float]) -> None:
        line = json.dumps({"step": self.step, **json_safe(values)})
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(line + "\n")
        for name, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(name, value, self.step)

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        rng = [torch.get_rng_state()] + (torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [])
        all_rng = [rng]
        window = (self.loss_names, None if self.loss_sums is None else self.loss_sums.cpu(), self.loss_count)
        loss_window = [window]
        if self.context.enabled:
            all_rng = [None] * self.context.world_size
            dist.all_gather_object(all_rng, [r.cpu() for r in rng])
            loss_window = [None] * self.context.world_size
            dist.all_gather_object(loss_window, window)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": all_rng,
            "loss_window": loss_window,
            "best": json.dumps(json_safe(self.best)),
            "world_size": self.context.world_size,
        }

    def _save_state(self) -> None:
        state = self._state()
        if self.context.is_main:
            path = self.out / "last.pt"
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)

    def _restore(self, path: Path) -> None:
        """Load `last.pt`; a file that is not a training state of this run is one CheckpointError line."""
        state = load_torch_file(path, mmap=False)
        try:
            self._load_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = f"{error.__class__.__name__}: {lines[0] if lines else 'no message'}"
            raise CheckpointError(f"{path}: not a training state this run can resume ({reason[:300]})") from None

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best = json.loads(state["best"])
        if state["world_size"] != self.context.world_size:  # same samples consumed, counted in the new batches
            self.batch_in_epoch = self.batch_in_epoch * state["world_size"] // self.context.world_size
        if state["world_size"] == self.context.world_size:
            if "loss_window" in state:  # absent from states written before it was kept
                names, sums, count = state["loss_window"][self.context.rank]
                if sums is not None:
                    self.loss_names, self.loss_sums = list(names), sums.to(self.device)
                    self.loss_count = int(count)
            rng = state["rng"][self.context.rank]
            torch.set_rng_state(rng[0])
            if self.device.type == "cuda" and len(rng) > 1:
                torch.cuda.set_rng_state_all(rng[1:])
        else:
            log.warning(
                "resuming with %d processes instead of %d: RNG streams are reseeded",
                self.context.world_size,
                state["world_size"],
            )

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Frame- and video-level metrics of the validation split, scored by all processes together."""
        frame = self.val_set.frame
        mine = ManifestDataset(
            frame.iloc[self.context.rank :: self.context.world_size],
            preprocess=self.detector.preprocess,
            return_meta=True,
        )
        scores = score_frames(
            self.model,
            mine,
            batch_size=self.config.train.val_batch_size,
            device=self.device,
            amp=self.amp,
            workers=self.config.data.workers,
            channels_last=self.config.train.channels_last,  # the training model's layout stays as the optimiser has it
            progress=False,
        )
        if self.context.enabled:
            parts = [None] * self.context.world_size
            dist.all_gather_object(parts, scores)
            scores = pd.concat(parts, ignore_index=True)
        self.model.train()
        labels, values = scores["label"].to_numpy(), scores["score"].to_numpy()
        metrics = {f"val/{k}": v for k, v in binary_metrics(labels, values).items()}
        videos = aggregate_videos(scores)
        metrics["val/video_auc"] = binary_metrics(videos["label"].to_numpy(), videos["score"].to_numpy())["auc"]
        return metrics

    def _select(self, metrics: dict[str, float]) -> None:
        name = self.config.train.select_metric
        value = metrics[f"val/{name}"]
        if is_better(value, None if self.best is None else self.best["value"], name):
            self.best = {"metric": name, "value": value, "step": self.step, "metrics": metrics}
            self._export("best.safetensors", metrics)
            log.info("step %d: new best validation %s = %.4f", self.step, name, value)

    def _export(self, name: str, metrics: dict[str, float] | None) -> None:
        d = self.config.data
        provenance = {
            "step": self.step,
            "manifest": str(d.manifest),
            "trained_on": self.train_set.distinct("dataset"),
            "methods": self.train_set.distinct("method"),
            "train_split": d.train_split,
            "val_split": d.val_split,
            "validation": json_safe(metrics or {}),
            "source": self.detector.source,
            "choices": self.detector.chosen(self.loss_config),
            "train_config": self.config.to_dict(),
        }
        checkpoints.save(self.model, self.out / name, provenance=provenance)

    def _log_images(self) -> None:
        """A grid of validation inputs with the detector's maps (images as they are, heatmaps scaled per image)."""
        import torchvision

        images = torch.stack([self.val_set[i][0] for i in range(min(4, len(self.val_set)))]).to(self.device)
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.amp):
            output = self.detector.explain(images)
        self.model.train()
        preprocess = self.detector.preprocess
        rows = [preprocess.denormalise(images)]
        for name, kind in self.detector.map_kinds.items():
            value = output.maps[name].detach().float()
            if kind == "image":
                rows.append(preprocess.denormalise(value))
                continue
            value = torch.nn.functional.interpolate(value, size=images.shape[-2:], mode="bilinear")
            low = value.amin(dim=(1, 2, 3), keepdim=True)
            high = value.amax(dim=(1, 2, 3), keepdim=True)
            rows.append(((value - low) / (high - low).clamp_min(1e-12)).expand(-1, 3, -1, -1))
        grid = torchvision.utils.make_grid(torch.cat(rows), nrow=len(images))
        self.writer.add_image("val/input_and_" + "_".join(self.detector.map_kinds or ["nothing"]), grid, self.step)

    # ------------------------------------------------------------------ loop
    def train_loader(self) -> DataLoader:
        """The DataLoader of the current epoch, from the sampler's position on."""
        workers = self.config.data.workers
        return DataLoader(
            self.train_set,
            batch_size=self.config.train.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
            generator=torch.Generator().manual_seed(self.config.train.seed),
        )

    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train to `train.steps`, or for at most `stop_after` more steps (then save and return)."""
        t = self.config.train
        last_step = t.steps if stop_after is None else min(t.steps, self.step + stop_after)
        self.model.train()
        timed, tick = 0, time.perf_counter()
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (self.progress and self.context.is_main),
        )
        try:
            while self.step < last_step:
                self.sampler.set_position(self.epoch, self.batch_in_epoch)
                for images, labels in self.train_loader():
                    losses = self.train_step(images, labels)
                    if self.loss_sums is None:
                        self.loss_names = list(losses)
                        self.loss_sums = torch.zeros(len(self.loss_names), device=self.device)
                    self.loss_sums += torch.stack([losses[n].detach().float() for n in self.loss_names])
                    self.loss_count += 1
                    timed += 1
                    self.step += 1
                    self.batch_in_epoch += 1
                    bar.update(1)
                    if self.step % t.log_every == 0 or self.step == t.steps:  # a stop keeps its window open
                        averages = self.loss_sums.tolist()  # waits for the queued GPU work, so the rate is true
                        rate = timed * t.batch_size * self.context.world_size / (time.perf_counter() - tick)
                        self._log_losses(self.loss_sums, averages, self.loss_count, rate, bar)
                        self.loss_sums.zero_()
                        self.loss_count = 0
                        timed, tick = 0, time.perf_counter()
                    if self.val_set is not None and (self.step % t.val_every == 0 or self.step == t.steps):
                        self._validate_and_select()
                    if self.step % t.checkpoint_every == 0 or self.step == last_step:
                        self._save_state()
                    if self.step >= last_step:
                        break
                else:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    self.detector.epoch_end(self.epoch)
            finished = self.step >= t.steps
            if finished and self.context.is_main:
                self._export("final.safetensors", self.best["metrics"] if self.best else None)
                if self.val_set is None:
                    self._export("best.safetensors", None)
                (self.out / "summary.json").write_text(
                    json.dumps(json_safe({"steps": self.step, "best": self.best}), indent=2)
                )
                log.info("finished %d steps; best: %s", self.step, self.best and self.best["value"])
        finally:  # a failed run must not leave its train.log handler on the process-wide logger
            bar.close()
            self.close()
        return TrainResult(self.out, self.step, finished, self.best, self.context.is_main)

    def close(self) -> None:
        """Release the TensorBoard writer, the train.log handler and the run folder."""
        if self.context.is_main:
            self.writer.close()
            log.removeHandler(self._log_handler)
            self._log_handler.close()
            self.lock.release()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            losses = self.detector.training_step(images, labels, self.step_model, self.loss_config)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return losses

    def _log_losses(self, sums: torch.Tensor, totals: list[float], count: int, rate: float, bar: tqdm) -> None:
        if self.context.enabled:
            dist.all_reduce(sums)
            totals = (sums / self.context.world_size).tolist()
        values = {f"loss/{n}": total / count for n, total in zip(self.loss_names, totals, strict=True)}
        if not self.context.is_main:
            return
        values["lr"] = self.scheduler.get_last_lr()[0]
        values["images_per_s"] = rate
        bar.set_postfix(loss=f"{values['loss/total']:.4f}", img_s=f"{rate:.0f}")
        self._record(values)
        log.info("step %d: %s", self.step, " ".join(f"{k}={v:.5g}" for k, v in values.items()))

    def _validate_and_select(self) -> None:
        metrics = self.validate()
        if self.context.is_main:
            self._record(metrics)
            log.info("step %d: %s", self.step, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            self._select(metrics)
            self._log_images()


def train(
    config: TrainConfig, *, resume: bool = False, stop_after: int | None = None, progress: bool = True
) -> TrainResult:
    """Run (or resume) a training run described by `config`."""
    return Trainer(config, resume=resume, progress=progress).run(stop_after=stop_after)
