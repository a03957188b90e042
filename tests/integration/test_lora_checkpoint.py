"""A LoRA run's checkpoint holds its trainable weights only (the frozen base UNet comes from the base
model on resume) and restores them exactly; a full fine-tune's checkpoint still holds every weight. One
DeepSpeed rank (gloo, CPU) in a spawned process, so DeepSpeed's process group stays out of pytest's."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest

from tests.helpers.services import free_port

pytestmark = pytest.mark.integration


def _sizes_and_restore(port: int, folder: str, results) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
    )
    try:
        import deepspeed
        import torch

        from ambient.config import load_config
        from ambient.models import SDXLComponents, add_lora, build_tiny_pipeline
        from ambient.train import checkpointing
        from ambient.train.config import FinetuneConfig
        from ambient.train.deepspeed_config import build_deepspeed_config, skip_shm_comm_op

        torch.set_num_threads(1)
        skip_shm_comm_op()
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
        cfg = load_config(FinetuneConfig, None, ["deepspeed.zero_stage=2"])

        def engine(lora: bool):
            unet = SDXLComponents.from_pipeline(build_tiny_pipeline(seed=0, resolution=32)).unet
            if lora:
                add_lora(unet, rank=4)
            else:
                unet.requires_grad_(True)
            params = [p for p in unet.parameters() if p.requires_grad]
            return deepspeed.initialize(
                model=unet, model_parameters=params, config=build_deepspeed_config(cfg)
            )[0]

        out = {}
        for lora in (True, False):
            first = engine(lora)
            with torch.no_grad():  # stands in for training: every trainable weight moves
                for p in first.module.parameters():
                    if p.requires_grad:
                        p.add_(0.01)
            where = Path(folder) / ("lora" if lora else "full")
            checkpointing.save(
                first, where, checkpointing.LoopState(step=3), None, rank=0, gen=torch.Generator()
            )
            saved = sum(f.stat().st_size for f in where.rglob("*") if f.is_file())
            second = engine(lora)
            state, _ = checkpointing.load(second, where)
            a, b = first.module.state_dict(), second.module.state_dict()
            out["lora" if lora else "full"] = {
                "bytes": saved,
                "unet_bytes": sum(v.numel() * v.element_size() for v in a.values()),
                "equal": all(torch.equal(a[k], b[k]) for k in a),
                "step": state.step,
            }
        results.put(("ok", out))
    except BaseException as err:  # reported to the parent
        results.put(("error", repr(err)))


@pytest.mark.timeout(900)
def test_lora_checkpoint_leaves_out_the_frozen_base_and_restores_exactly(tmp_path):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_sizes_and_restore, args=(free_port(), str(tmp_path), results), daemon=True)
    proc.start()
    try:
        status, detail = results.get(timeout=840)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    assert status == "ok", detail
    lora, full = detail["lora"], detail["full"]
    assert lora["equal"] and full["equal"] and lora["step"] == full["step"] == 3
    # The full run's checkpoint holds the weights and Adam's two moments; the LoRA one a small fraction.
    assert full["bytes"] > full["unet_bytes"]
    assert lora["bytes"] < 0.2 * lora["unet_bytes"], (lora, full)
