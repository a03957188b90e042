"""The per-worker training loop run by Ray Train: DeepSpeed engine, ambient + consistency objective,
checkpoints, metrics and, on rank 0, the final export. Everything else a run does at some step
(sample grids, row recording, worker registration) is a callback (ambient.train.callbacks)."""

from __future__ import annotations

import dataclasses
import json
import math
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
from ambient.models.export import export_adapter, export_pipeline, publish_export
from ambient.models.lora import add_lora
from ambient.models.ref import ModelRef
from ambient.models.sampling import sample_images
from ambient.models.vae import vae_dtype
from ambient.storage import upload_directory, write_bytes_atomic

from . import checkpointing, resume
from .batch import model_inputs
from .callbacks import Callback
from .config import FinetuneConfig
from .deepspeed_config import build_deepspeed_config, frozen_dtype, skip_shm_comm_op
from .due import Due
from .ema import EMA
from .layout import RunLayout
from .metrics import TrainMetrics
from .objective import LossParts, training_loss
from .outputs import plot_loss_curve
from .plan import RunPlan, StoredText
from .records import StepRecord, WorkerSummary
from .validation import validation_ambient_loss


def _format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class _Sums:
    """Sums over optimizer steps: a logging window (its losses are logged as means) or an attempt's totals."""

    steps: int = 0
    wait: float = 0.0
    compute: float = 0.0
    images: int = 0
    loss: float = 0.0
    ambient: float = 0.0
    consistency: float = 0.0
    consistency_steps: int = 0

    def add(self, step: StepRecord) -> None:
        """One optimizer step, from this worker's record of it."""
        self.steps += 1
        self.wait += step.data_wait_seconds
        self.compute += step.step_seconds - step.data_wait_seconds
        self.images += step.images
        self.loss += step.loss
        self.ambient += step.ambient_loss
        if step.consistency_loss is not None:
            self.consistency += step.consistency_loss
            self.consistency_steps += 1

    @property
    def busy(self) -> float:
        return self.wait + self.compute

    def record(self, step: int, lr: float, world: int) -> StepRecord:
        """The window as one record: losses averaged over its steps and over all ranks (a collective:
        every rank calls it at the same step); speed of all ranks, from this rank's timings."""
        sums = torch.tensor(
            [self.loss, self.ambient, self.consistency, self.consistency_steps, self.steps],
            dtype=torch.float64,
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        loss, ambient, cons, cons_n, n = sums.tolist()
        busy, steps = self.busy, max(self.steps, 1)
        return StepRecord(
            step=step,
            loss=loss / n,
            ambient_loss=ambient / n,
            consistency_loss=cons / cons_n if cons_n else None,
            lr=lr,
            images_per_second=self.images * world / busy if busy else 0.0,
            step_seconds=busy / steps,
            data_wait_seconds=self.wait / steps,
            images=self.images * world,
        )


class TrainingWorker:
    """One Ray Train worker's fine-tuning: the DeepSpeed engine and the loop over optimizer steps."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        plan: RunPlan,
        stream: StreamPlan | None,
        out_dir: Path,
        text: StoredText | None = None,
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.cfg, self.plan, self.stream = cfg, plan, stream
        self.text = text  # stored text embeddings: no text encoders are loaded
        # Local staging for rank 0's outputs, uploaded to plan.layout.outputs (where they live).
        self.staged = RunLayout.staging(out_dir)
        self.callbacks = list(callbacks or [])
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(cfg.train.threads_per_worker)
        torch.manual_seed(cfg.train.seed + 1000 * self.rank)
        self.device = ray.train.torch.get_device()
        self.storage = cfg.storage.resolved()

        self._emit("on_worker_start", self)
        # The driver checked the reference; here it is made local (an s3:// model: the node's cache).
        self.comps, self.model_dir = ModelRef(plan.model_source).components(
            self.storage, text_encoders=text is None
        )
        self.engine, self.lr_scheduler = self._build_engine()
        self.denoiser = SDXLDenoiser(self.engine, self.comps.alphas_cumprod, plan.prediction_type)
        self.train_sigmas = self.denoiser.train_sigmas
        self.metrics = TrainMetrics(cfg.run.name, self.rank)
        self.holdout = (
            read_rows(cfg.validation.data_uri, self.storage, cfg.validation.rows)
            if cfg.validation.data_uri
            else None
        )
        self.state, ema_state, rng_state = self._restore()
        self.ema = EMA(self.engine.module, cfg.train.ema_decay, ema_state) if cfg.train.ema_decay else None
        # The last held-out loss (a resumed run's from its history): every later report carries it.
        last = next((r for r in reversed(self.state.history) if r.val_step is not None), None)
        self.last_val = (last.val_ambient_loss, last.val_step) if last is not None else None
        self.window, self.totals = _Sums(), _Sums()  # since the last report; this attempt's steps
        # A generator per rank: the run's randomness is reproducible. A resume continues the draws its
        # checkpoint saved (bit-identical to an uninterrupted run); without them (another world size)
        # the generator is seeded at the resume step, so that no draw repeats.
        self.gen = torch.Generator().manual_seed(
            cfg.train.seed * 100_003 + self.rank * 7919 + self.state.step
        )
        if rng_state is not None:
            resume.apply_rng(rng_state, self.gen)

    def _build_engine(self):
        """Frozen VAE and text encoders (when loaded); the UNet (or its LoRA) trainable, wrapped by DeepSpeed."""
        cfg = self.cfg
        dtype = frozen_dtype(cfg)
        for encoder in (self.comps.text_encoder, self.comps.text_encoder_2):
            if encoder is not None:
                encoder.requires_grad_(False).eval().to(self.device, dtype)
        vae = self.comps.vae
        vae.requires_grad_(False).eval().to(self.device, vae_dtype(vae, dtype))
        unet = self.comps.unet
        if cfg.model.lora_rank:
            add_lora(unet, rank=cfg.model.lora_rank, alpha=cfg.model.lora_alpha)
        else:
            unet.requires_grad_(True)
        if cfg.model.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        params = [p for p in unet.parameters() if p.requires_grad]
        skip_shm_comm_op()
        engine, _, _, lr_scheduler = deepspeed.initialize(
            model=unet, model_parameters=params, config=build_deepspeed_config(cfg)
        )
        return engine, lr_scheduler

    def _restore(self) -> tuple[checkpointing.LoopState, dict | None, dict | None]:
        """The loop state, EMA weights and this rank's random state of Ray Train's latest checkpoint
        (its weights loaded into the engine), or a fresh state. A checkpoint made over other data than
        the run's is refused; the rank fetches only its own ZeRO partition and the shared files."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return checkpointing.LoopState(), None, None
        saved = resume.saved_state(checkpoint)
        if self.plan.data_identity is not None:
            current = resume.DataIdentity(**self.plan.data_identity)
            resume.check_identity(saved.get("data_identity"), current, checkpoint.path)
        with resume.rank_checkpoint_dir(checkpoint, self.rank, self.world, saved.get("world")) as folder:
            state, ema_state = checkpointing.load(self.engine, folder)
            rng_state = resume.read_rng(folder, self.rank)
        state.resumed_from_step = state.step
        state.resumes.append(state.step)
        self._log(f"resumed from checkpoint at step {state.step}")
        return state, ema_state, rng_state

    def _emit(self, event: str, *args) -> None:
        """Call ``event`` on every callback, in the order given."""
        for callback in self.callbacks:
            getattr(callback, event)(*args)

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

    def run(self) -> None:
        """The loop: an optimizer step, the step's callbacks, a report when one is due; then the export."""
        batches = self._batches()
        self.started, self.start_step = time.perf_counter(), self.state.step  # for the ETA
        while self.state.step < self.cfg.train.max_steps:
            mine, ids = self._optimizer_step(batches)
            self._emit("on_step_end", self, ids)
            self.window.add(mine)
            self.totals.add(mine)
            due = Due.at(
                self.state.step,
                self.cfg.train,
                self.cfg.validation,
                has_holdout=self.holdout is not None,
                validated=self.last_val is not None,
            )
            checkpoint_seconds = self._report(due) if due.report else None
            # After the step's actions, so that a checkpoint's time reaches its gauge with the step.
            self.metrics.record(dataclasses.replace(mine, checkpoint_seconds=checkpoint_seconds))
        self._finish()

    def _optimizer_step(self, batches) -> tuple[StepRecord, list[str]]:
        """grad_accum micro-batches and one optimizer step; returns this worker's record of the step and
        the ids of the rows it trained on."""
        accum = self.cfg.optim.grad_accum
        total_sum, amb_sum, cons_vals, images, wait, compute = 0.0, 0.0, [], 0, 0.0, 0.0
        step_ids: list[str] = []
        for _ in range(accum):
            t0 = time.perf_counter()
            batch = self._next_batch(batches)
            t1 = time.perf_counter()
            step_ids += batch["ids"]
            total, parts, rows = self._micro_batch(batch)
            wait += t1 - t0
            compute += time.perf_counter() - t1
            total_sum += total
            amb_sum += parts.ambient
            if parts.consistency is not None:
                cons_vals.append(parts.consistency)
            images += rows
        self._advance(images)
        step_s = wait + compute
        record = StepRecord(
            step=self.state.step,
            loss=total_sum / accum,  # LossParts.total: the one definition of the weighted sum
            ambient_loss=amb_sum / accum,
            consistency_loss=sum(cons_vals) / len(cons_vals) if cons_vals else None,
            lr=self._lr(),
            images_per_second=images / step_s if step_s > 0 else 0.0,
            step_seconds=step_s,
            data_wait_seconds=wait,
            images=images,
        )
        return record, step_ids

    def _micro_batch(self, batch: dict) -> tuple[float, LossParts, int]:
        """Forward and backward of one micro-batch, then DeepSpeed's step (which applies the optimizer
        once per grad_accum micro-batches); returns (total loss, its parts, rows)."""
        cfg = self.cfg
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
            empty_caption=self.text.empty_caption if self.text is not None else None,
        )
        parts = training_loss(self.denoiser, inputs, cfg, self.state.step, self.train_sigmas, self.gen)
        total = parts.total.item()
        if not math.isfinite(total):
            raise FloatingPointError(f"non-finite loss at step {self.state.step}: {parts}")
        self.engine.backward(parts.total)
        self.engine.step()
        return total, parts, inputs.y.shape[0]

    def _advance(self, images: int) -> None:
        """The loop state after an optimizer step (what a checkpoint keeps), and the EMA."""
        cfg = self.cfg
        self.state.step += 1
        self.state.images_seen += images * self.world
        self.state.data_position += cfg.optim.grad_accum * self.world * cfg.train.batch_size
        if self.ema is not None:
            self.ema.update(self.engine.module)

    def _next_batch(self, batches) -> dict:
        try:
            return next(batches)
        except StopIteration:
            raise RuntimeError(
                f"the data stream ended at step {self.state.step} of {self.cfg.train.max_steps} "
                "(the planned epochs were too few; this is a bug)"
            ) from None

    def _report(self, due: Due) -> float | None:
        """Close the logging window: its record (with the held-out loss) goes into the history and to
        Ray Train, after the log line and sample grid when due, with a checkpoint when due. Returns the
        checkpoint's save time, if one was saved."""
        record = self.window.record(self.state.step, self._lr(), self.world)
        self.window = _Sums()
        if due.validate:
            self.last_val = (self._validation_loss(), self.state.step)
        record = record.with_validation(self.last_val)
        self.state.history.append(record)
        if due.log:
            self._log_progress(record)
        self._emit("on_report", self, due)
        if due.checkpoint:
            return self._checkpoint_and_report(record)
        ray.train.report(record.report())
        return None

    def _lr(self) -> float:
        return self.lr_scheduler.get_last_lr()[0] if self.lr_scheduler is not None else self.cfg.optim.lr

    def _log_progress(self, r: StepRecord) -> None:
        """One line per logged step."""
        done = self.state.step - self.start_step
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (self.cfg.train.max_steps - self.state.step) if done else 0.0
        wait = r.data_wait_seconds / r.step_seconds if r.step_seconds else 0.0
        consistency = "-" if r.consistency_loss is None else f"{r.consistency_loss:.4f}"
        self._log(
            f"step {r.step}/{self.cfg.train.max_steps}  loss {r.loss:.4f}  ambient {r.ambient_loss:.4f}  "
            f"consistency {consistency}  lr {r.lr:.2e}  {r.images_per_second:.3g} img/s  "
            f"data wait {wait:.0%}  eta {_format_eta(eta)}"
        )

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
                micro_batch=self.cfg.validation.micro_batch,
            )
        finally:
            module.train()

    def _checkpoint_and_report(self, record: StepRecord) -> float:
        with tempfile.TemporaryDirectory(prefix="ambient-ckpt-") as folder:
            t0 = time.perf_counter()
            shadow = self.ema.shadow if self.ema is not None else None
            self.state.data_identity, self.state.world = self.plan.data_identity, self.world
            checkpointing.save(self.engine, Path(folder), self.state, shadow, self.rank, self.gen)
            seconds = time.perf_counter() - t0
            report = dataclasses.replace(record, checkpoint_seconds=seconds).report()
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
        self._log(f"checkpoint at step {self.state.step} ({seconds:.1f} s)")
        return seconds

    # ---- samples, export, outputs ------------------------------------------------------------------

    def sample_validation_prompts(self) -> list:
        """Images of validation.prompts from the current weights (a collective under ZeRO-3)."""
        v = self.cfg.validation
        module = self.engine.module
        module.eval()
        try:
            comps = dataclasses.replace(self.comps, unet=module)
            stored = self.text
            return sample_images(
                comps,
                list(v.prompts) if stored is None else None,
                embeddings=stored.prompts if stored is not None else None,
                negative_embeddings=stored.empty_caption if stored is not None else None,
                mode=self.plan.sampling_mode,
                sigma_n=self.plan.sigma_n,
                num_steps=v.num_steps,
                guidance_scale=v.guidance_scale,
                seed=v.seed,
                micro_batch=v.sample_micro_batch,
                # the size the run trains at (the UNet's configured size may be another: SDXL's is 1024)
                height=self.plan.resolution,
                width=self.plan.resolution,
            )
        finally:
            module.train()

    def _finish(self) -> None:
        if self.ema is not None:
            self.ema.copy_to(self.engine.module)
        self._export()
        self._emit("on_train_end", self)
        if self.rank == 0:
            self._write_outputs()

    def _export(self) -> None:
        """Rank 0 writes the diffusers folder (every rank takes part in gathering ZeRO-3's partitions)."""
        module = self.engine.module
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            if self.rank != 0:
                return
            metadata = {
                "sigma_n": self.plan.sigma_n,
                "trained_with_consistency": self.cfg.consistency.weight > 0,
                "default_sampling_mode": self.plan.sampling_mode,
                "resolution": self.plan.resolution,
                "dataset": self.plan.data_uri,
                "base_model": self.plan.model_source,
                "steps": self.state.step,
                "lora_rank": self.cfg.model.lora_rank,
                "lora_alpha": self.cfg.model.lora_alpha or self.cfg.model.lora_rank or None,
                "ema_decay": self.cfg.train.ema_decay,
            }
            # Staged outside self.staged (which upload_directory copies file by file), then published:
            # the files go to a fresh version under outputs/model, its CURRENT.json pointer last.
            with tempfile.TemporaryDirectory(prefix="ambient-export-") as staging:
                out = Path(staging) / "model"
                if self.cfg.model.lora_rank and self.cfg.model.lora_export == "adapter":
                    export_adapter(self.plan.model_source, module, out, metadata)
                else:  # export_pipeline saves a LoRA UNet merged, with its adapter beside it
                    export_pipeline(self.model_dir, module, out, metadata)
                publish_export(out, self.plan.layout.model, self.storage)

    def _write_outputs(self) -> None:
        """Rank 0: the loss curve and the worker summary, uploaded with the export and the grids."""
        plot_loss_curve(self.state.history, Path(self.staged.loss_curve), f"run {self.cfg.run.name}")
        busy = self.totals.busy
        summary = WorkerSummary(
            steps=self.state.step,
            images_seen=self.state.images_seen,
            resumed_from_step=self.state.resumed_from_step,
            resumes=self.state.resumes,
            data_position=self.state.data_position,
            history=self.state.history,
            images_per_second=self.totals.images * self.world / busy if busy else None,
            data_wait_fraction=self.totals.wait / busy if busy else None,
        )
        summary_json = json.dumps(summary.to_dict(), indent=2, default=str).encode()
        write_bytes_atomic(self.staged.worker_summary, summary_json)
        upload_directory(self.staged.outputs, self.plan.layout.outputs, self.storage)
        self._log(f"outputs uploaded to {self.plan.layout.outputs}")


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config`` holds the validated job config and the driver's run plan."""
    cfg = FinetuneConfig.model_validate(config["finetune"])
    plan = RunPlan(**config["plan"])
    # The staging folder goes with the worker: every output is uploaded to the run's storage, and a
    # node's disk would otherwise keep a model export per run.
    with tempfile.TemporaryDirectory(prefix="ambient-outputs-") as staging:
        worker = TrainingWorker(
            cfg, plan, config.get("stream"), Path(staging), config.get("text"), config.get("callbacks")
        )
        worker.run()
