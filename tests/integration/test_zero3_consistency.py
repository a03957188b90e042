"""ZeRO-3 with clean rows: two DeepSpeed ranks (gloo, CPU), one with a noisy row and one whose batch is
all clean, run the training objective together. ZeRO-3 gathers each layer's parameters from every rank
in every forward pass, so a rank that skips the consistency passes leaves the other waiting (a hang or
a collective error); the test gives the ranks a deadline instead of hanging."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue

import pytest

from tests.helpers.services import free_port

pytestmark = pytest.mark.integration

# Set-up (importing DeepSpeed, building the model, initialising ZeRO-3) takes minutes on a loaded 2-core
# machine; the two training steps after it take seconds. A hang is judged on the steps alone.
SETUP_S = 900
STEPS_S = 240


def _rank(rank: int, port: int, results) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    try:
        import deepspeed
        import torch

        from ambient.config import load_config
        from ambient.models import SDXLComponents, build_tiny_pipeline
        from ambient.models.denoiser import SDXLDenoiser
        from ambient.train.batch import ModelInputs, conditioning
        from ambient.train.config import FinetuneConfig
        from ambient.train.deepspeed_config import build_deepspeed_config, skip_shm_comm_op
        from ambient.train.objective import training_loss

        torch.set_num_threads(1)
        skip_shm_comm_op()
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
        cfg = load_config(
            FinetuneConfig,
            None,
            ["deepspeed.zero_stage=3", "train.batch_size=2", "consistency.every=1", "consistency.fraction=1"],
        )
        comps = SDXLComponents.from_pipeline(build_tiny_pipeline(seed=0, resolution=32))
        engine, *_ = deepspeed.initialize(
            model=comps.unet,
            model_parameters=list(comps.unet.parameters()),
            config=build_deepspeed_config(cfg),
        )
        results.put((rank, "ready", None))
        denoiser = SDXLDenoiser(engine, comps.alphas_cumprod)
        gen = torch.Generator().manual_seed(rank)
        f = comps.vae_scale_factor
        y = torch.randn(2, comps.unet.config.in_channels, 32 // f, 32 // f, generator=gen)
        # Rank 0: one noisy row among clean ones; rank 1: an all-clean batch (a mixed dataset).
        sigma_n = torch.tensor([0.5, 0.0]) if rank == 0 else torch.zeros(2)
        cond = conditioning(comps, ["a", "b"], torch.full((2, 2), 32), torch.zeros(2, 2), (32, 32))
        for step in range(2):
            parts = training_loss(
                denoiser, ModelInputs(y, sigma_n, cond), cfg, step, denoiser.train_sigmas, gen
            )
            engine.backward(parts.total)
            engine.step()
        results.put((rank, "ok", parts.consistency))
    except BaseException as err:  # reported to the parent
        results.put((rank, "error", repr(err)))


@pytest.mark.timeout(SETUP_S + STEPS_S + 120)
def test_zero3_ranks_with_and_without_noisy_rows_run_the_same_passes():
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, results), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    got, ready = {}, set()
    try:
        while len(got) < 2:
            rank, status, detail = results.get(timeout=STEPS_S if len(ready) == 2 else SETUP_S)
            if status == "ready":
                ready.add(rank)
            else:
                got[rank] = (status, detail)
    except queue.Empty:
        pass
    finally:
        for p in procs:  # only the processes this test started, by their own handles
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    assert len(got) == 2, (
        f"ZeRO-3 ranks hung: {len(got)} of 2 finished their steps ({got}); {len(ready)} of 2 had "
        f"initialised DeepSpeed (set-up limit {SETUP_S} s, steps limit {STEPS_S} s)"
    )
    assert all(status == "ok" for status, _ in got.values()), got
    assert got[1][1] == 0.0 and got[0][1] != 0.0  # the clean rank's passes are weighted 0
