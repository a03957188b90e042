"""The per-worker training loop run by Ray Train: DeepSpeed engine, ambient + consistency objective,
checkpoints, metrics, validation grids and, on rank 0, the final export."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import ray.train
import ray.train.torch
import torch

from ambient.data.holdout import read_rows
from ambient.data.row_stream import RankSlice, StreamPlan, rank_stream
from ambient.data.streaming import iter_training_batches
from ambient.models.denoiser import SDXLDenoiser
from ambient.models.export import export_pipeline
from ambient.models.lora import add_lora, lora_state_dict
from ambient.models.sampling import image_grid, sample_images
from ambient.models.source import load_model_components
from ambient.storage import join, upload_directory, write_bytes_atomic

from . import checkpointing
from .batch import model_inputs
from .config import FinetuneConfig
from .deepspeed_config import build_deepspeed_config
from .ema import EMA
from .metrics import TrainMetrics
from .objective import training_loss
from .outputs import plot_loss_curve
from .plan import RunPlan
from .validation import validation_ambient_loss


def _format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class _Window:
    """Sums over the optimizer steps since the last log line (losses are logged as window means)."""

    steps: int = 0
    wait: float = 0.0
    compute: float = 0.0
    images: int = 0
    loss: float = 0.0
    ambient: float = 0.0
    consistency: float = 0.0
    consistency_steps: int = 0

    def mean_losses(self) -> tuple[float, float, float | None]:
        """(loss, ambient, consistency) averaged over the window and over all ranks."""
        sums = torch.tensor(
            [self.loss, self.ambient, self.consistency, self.consistency_steps, self.steps],
            dtype=torch.float64,
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        loss, ambient, cons, cons_n, n = sums.tolist()
        return loss / n, ambient / n, (cons / cons_n if cons_n else None)


class _Worker:
    def __init__(self, cfg: FinetuneConfig, plan: RunPlan, stream: StreamPlan | None) -> None:
        self.cfg, self.plan, self.stream = cfg, plan, stream
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(cfg.train.threads_per_worker)
        torch.manual_seed(cfg.train.seed + 1000 * self.rank)
        self.device = ray.train.torch.get_device()
        self.storage = cfg.storage.resolved()
        self.out_dir = Path(tempfile.mkdtemp(prefix="ambient-outputs-"))

        self._register()
        self.comps, self.model_dir = load_model_components(plan.model_source, self.storage)
        for frozen in (self.comps.vae, self.comps.text_encoder, self.comps.text_encoder_2):
            frozen.requires_grad_(False).eval().to(self.device)
        unet = self.comps.unet
        if cfg.model.lora_rank:
            add_lora(unet, rank=cfg.model.lora_rank, alpha=cfg.model.lora_alpha)
        else:
            unet.requires_grad_(True)
        if cfg.model.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        params = [p for p in unet.parameters() if p.requires_grad]
        self.engine, _, _, self.lr_scheduler = deepspeed.initialize(
            model=unet, model_parameters=params, config=build_deepspeed_config(cfg)
        )
        self.denoiser = SDXLDenoiser(self.engine, self.comps.alphas_cumprod, plan.prediction_type)
        self.train_sigmas = self.denoiser.train_sigmas
        self.metrics = TrainMetrics(cfg.run.name, self.rank)
        self.holdout = (
            read_rows(cfg.validation.data_uri, self.storage, cfg.validation.rows)
            if cfg.validation.data_uri
            else None
        )

        self.state = checkpointing.LoopState()
        ema_state = None
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                self.state, ema_state = checkpointing.load(self.engine, Path(folder))
            self.state.resumed_from_step = self.state.step
            self.state.resumes.append(self.state.step)
            self._log(f"resumed from checkpoint at step {self.state.step}")
        self.ema = EMA(self.engine.module, cfg.train.ema_decay, ema_state) if cfg.train.ema_decay else None
        # A generator per rank and resume point: the run's randomness is reproducible and never repeats.
        self.gen = torch.Generator().manual_seed(
            cfg.train.seed * 100_003 + self.rank * 7919 + self.state.step
        )

    def _register(self) -> None:
        """Leave ``outputs/workers/rank-N.json`` (pid, host, start time) so an operator can find each
        rank's process; rewritten by a restarted worker group."""
        record = {
            "rank": self.rank,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "started": time.time(),
        }
        uri = join(self.plan.outputs_uri, "workers", f"rank-{self.rank}.json")
        write_bytes_atomic(uri, json.dumps(record).encode(), self.storage)

    # ---- logging -----------------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.rank == 0:
            print(f"[ambient train] {message}", flush=True)

    # ---- the loop ----------------------------------------------------------------------------------

    def _batches(self):
        """This rank's micro-batches from the checkpointed position on.

        exact: the rank streams its own share of the run's row order from ``state.data_position``
        (what every rank consumed before the checkpoint), so nothing is skipped or repeated.
        ray_split: Ray Train's streaming split assigns blocks dynamically; a resume can only skip as
        many batches as this rank had taken, which are not the same rows."""
        cfg = self.cfg
        batch, accum = cfg.train.batch_size, cfg.optim.grad_accum
        if self.stream is None:
            batches = iter_training_batches(ray.train.get_dataset_shard("train"), batch, drop_last=True)
            for _ in range(self.state.step * accum):
                next(batches)
            return batches
        start = self.state.data_position
        stop = start + (cfg.train.max_steps - self.state.step) * accum * self.world * batch
        part = RankSlice(start, stop, rank=self.rank, world=self.world, batch=batch)
        return iter_training_batches(rank_stream(self.stream, part, self.storage), batch, drop_last=True)

    def _record_rows(self, ids: list[str]) -> None:
        """data.record_rows: the ids this rank trained on at this step, under the attempt's resume step."""
        start = self.state.resumed_from_step or 0
        uri = join(
            self.plan.outputs_uri,
            "rows",
            f"from-{start:06d}",
            f"rank-{self.rank}",
            f"step-{self.state.step:06d}.json",
        )
        write_bytes_atomic(uri, json.dumps({"ids": ids, "world": self.world}).encode(), self.storage)

    def run(self) -> None:
        cfg = self.cfg
        accum = cfg.optim.grad_accum
        batches = self._batches()
        window = _Window()
        totals = {"wait": 0.0, "compute": 0.0, "images": 0}
        start, start_step = time.perf_counter(), self.state.step
        while self.state.step < cfg.train.max_steps:
            total_sum, amb_sum, cons_vals, images, wait, compute = 0.0, 0.0, [], 0, 0.0, 0.0
            step_ids: list[str] = []
            for _ in range(accum):
                t0 = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    raise RuntimeError(
                        f"the data stream ended at step {self.state.step} of {cfg.train.max_steps} "
                        "(the planned epochs were too few; this is a bug)"
                    ) from None
                t1 = time.perf_counter()
                step_ids += batch["ids"]
                inputs = model_inputs(
                    batch,
                    self.comps,
                    caption_dropout=cfg.data.caption_dropout,
                    sigma_train=cfg.loss.sigma_train,
                    noise_seed=cfg.loss.noise_seed,
                    vae_scale_factor=self.comps.vae_scale_factor,
                    ignore_data_noise=cfg.loss.data_noise == "ignored",
                    generator=self.gen,
                    device=self.device,
                )
                parts = training_loss(
                    self.denoiser, inputs, cfg, self.state.step, self.train_sigmas, self.gen
                )
                loss_value = parts.total.item()
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"non-finite loss at step {self.state.step}: {parts}")
                self.engine.backward(parts.total)
                self.engine.step()
                wait += t1 - t0
                compute += time.perf_counter() - t1
                total_sum += loss_value
                amb_sum += parts.ambient
                if parts.consistency is not None:
                    cons_vals.append(parts.consistency)
                images += inputs.y.shape[0]
            self.state.step += 1
            self.state.images_seen += images * self.world
            self.state.data_position += accum * self.world * cfg.train.batch_size
            if cfg.data.record_rows:
                self._record_rows(step_ids)
            if cfg.train.debug_step_sleep_s:
                time.sleep(cfg.train.debug_step_sleep_s)
            if self.ema is not None:
                self.ema.update(self.engine.module)
            ambient = amb_sum / accum
            cons = sum(cons_vals) / len(cons_vals) if cons_vals else None
            total = total_sum / accum  # LossParts.total: the one definition of the weighted sum
            lr = self.lr_scheduler.get_last_lr()[0] if self.lr_scheduler is not None else cfg.optim.lr
            window.steps += 1
            window.wait += wait
            window.compute += compute
            window.images += images
            window.loss += total
            window.ambient += ambient
            if cons is not None:
                window.consistency += cons
                window.consistency_steps += 1
            step_s = wait + compute
            self.metrics.record(
                {
                    "loss": total,
                    "ambient_loss": ambient,
                    "lr": lr,
                    "images_per_second": images / step_s if step_s > 0 else 0.0,
                    "step_seconds": step_s,
                    "data_wait_seconds": wait,
                    "step": self.state.step,
                    **({"consistency_loss": cons} if cons is not None else {}),
                },
                images=images,
            )
            due_log = self.state.step % cfg.train.log_every == 0
            due_ckpt = (
                self.state.step % cfg.train.checkpoint_every == 0 or self.state.step == cfg.train.max_steps
            )
            due_val = (
                self.state.step % cfg.validation.every_steps == 0 or self.state.step == cfg.train.max_steps
            )
            if not (due_log or due_ckpt or due_val):
                continue
            elapsed = time.perf_counter() - start
            done = self.state.step - start_step
            eta = elapsed / done * (cfg.train.max_steps - self.state.step) if done else 0.0
            busy = window.wait + window.compute
            loss_mean, ambient_mean, cons_mean = window.mean_losses()
            report = {
                "step": self.state.step,
                "loss": loss_mean,
                "ambient_loss": ambient_mean,
                "consistency_loss": cons_mean,
                "lr": lr,
                "images_per_second": window.images * self.world / busy if busy else 0.0,
                "data_wait_fraction": window.wait / busy if busy else 0.0,
                "step_seconds": busy / max(window.steps, 1),
            }
            totals["wait"] += window.wait
            totals["compute"] += window.compute
            totals["images"] += window.images
            window = _Window()
            if due_val and self.holdout is not None:
                report["val_ambient_loss"] = self._validation_loss()
            self.state.history.append(
                {
                    "step": self.state.step,
                    "loss": loss_mean,
                    "ambient": ambient_mean,
                    "consistency": cons_mean,
                    "lr": lr,
                    **({"val_ambient": report["val_ambient_loss"]} if "val_ambient_loss" in report else {}),
                }
            )
            if due_log or self.state.step == cfg.train.max_steps:  # one line per log step
                self._log(
                    f"step {self.state.step}/{cfg.train.max_steps}  loss {loss_mean:.4f}  "
                    f"ambient {ambient_mean:.4f}  "
                    f"consistency {'-' if cons_mean is None else f'{cons_mean:.4f}'}  lr {lr:.2e}  "
                    f"{report['images_per_second']:.1f} img/s  data wait {report['data_wait_fraction']:.0%}  "
                    f"eta {_format_eta(eta)}"
                )
            if due_val:
                self._sample_grid(f"step_{self.state.step:06d}")
            report["throughput_totals"] = dict(totals)
            if due_ckpt:
                self._checkpoint_and_report(report)
            else:
                ray.train.report(report)
        self._finish(totals)

    def _validation_loss(self) -> float:
        """Every rank computes it on the same rows (ZeRO-3 needs all ranks in each forward)."""
        module = self.engine.module
        module.eval()
        try:
            return validation_ambient_loss(
                self.denoiser,
                self.comps,
                self.holdout,
                self.train_sigmas,
                seed=self.cfg.validation.seed,
                device=self.device,
            )
        finally:
            module.train()

    def _checkpoint_and_report(self, report: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="ambient-ckpt-") as folder:
            t0 = time.perf_counter()
            shadow = self.ema.shadow if self.ema is not None else None
            checkpointing.save(self.engine, Path(folder), self.state, shadow, self.rank)
            seconds = time.perf_counter() - t0
            self.metrics.record({"checkpoint_seconds": seconds})
            report["checkpoint_seconds"] = seconds
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
        self._log(f"checkpoint at step {self.state.step} ({seconds:.1f} s)")

    # ---- samples, export, outputs ------------------------------------------------------------------

    def _sample_grid(self, name: str) -> None:
        """A grid of the validation prompts. Under ZeRO-3 every rank takes part (parameters are
        partitioned); otherwise rank 0 samples alone."""
        if self.rank != 0 and self.cfg.deepspeed.zero_stage != 3:
            return
        v = self.cfg.validation
        module = self.engine.module
        module.eval()
        try:
            comps = dataclasses.replace(self.comps, unet=module)
            images = sample_images(
                comps,
                list(v.prompts),
                mode=self.plan.sampling_mode,
                sigma_n=self.plan.sigma_n,
                num_steps=v.num_steps,
                guidance_scale=v.guidance_scale,
                seed=v.seed,
            )
        finally:
            module.train()
        if self.rank == 0:
            rows = max(1, int(math.sqrt(len(images))))
            path = self.out_dir / "samples" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image_grid(images, rows=rows).save(path)
            upload_directory(self.out_dir, self.plan.outputs_uri, self.storage)

    def _finish(self, totals: dict) -> None:
        module = self.engine.module
        if self.ema is not None:
            self.ema.copy_to(module)
        params = list(module.parameters())
        # Under ZeRO-3 the parameters are partitioned: gather them for the export (a no-op otherwise).
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if self.rank == 0:
                metadata = {
                    "sigma_n": self.plan.sigma_n,
                    "trained_with_consistency": self.cfg.consistency.weight > 0,
                    "default_sampling_mode": self.plan.sampling_mode,
                    "resolution": self.plan.resolution,
                    "dataset": self.plan.data_uri,
                    "base_model": self.plan.model_source,
                    "steps": self.state.step,
                    "lora_rank": self.cfg.model.lora_rank,
                    "ema_decay": self.cfg.train.ema_decay,
                }
                lora = lora_state_dict(module) if self.cfg.model.lora_rank else None
                export_pipeline(self.model_dir, module, self.out_dir / "model", metadata, lora_state=lora)
        if self.ema is not None:  # the last validation grid showed the raw weights
            self._sample_grid("final")
        if self.rank == 0:
            plot_loss_curve(self.state.history, self.out_dir / "loss_curve.png", f"run {self.cfg.run.name}")
            busy = totals["wait"] + totals["compute"]
            summary = {
                "steps": self.state.step,
                "images_seen": self.state.images_seen,
                "resumed_from_step": self.state.resumed_from_step,
                "resumes": self.state.resumes,
                "data_position": self.state.data_position,
                "history": self.state.history,
                "images_per_second": totals["images"] * self.world / busy if busy else None,
                "data_wait_fraction": totals["wait"] / busy if busy else None,
            }
            write_bytes_atomic(
                str(self.out_dir / "worker_summary.json"), json.dumps(summary, indent=2, default=str).encode()
            )
            upload_directory(self.out_dir, self.plan.outputs_uri, self.storage)
            self._log(f"outputs uploaded to {self.plan.outputs_uri}")


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config`` holds the validated job config and the driver's run plan."""
    cfg = FinetuneConfig.model_validate(config["finetune"])
    plan = RunPlan(**config["plan"])
    _Worker(cfg, plan, config.get("stream")).run()
