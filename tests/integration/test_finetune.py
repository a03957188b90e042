"""The fine-tuning job on a real local Ray cluster with DeepSpeed ZeRO-2 on CPU (2 workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tensorboard.backend.event_processing import event_accumulator as ea

from ambient.eval.showcase import TILE
from ambient.models.folders import resolve_export
from ambient.train import run_finetune
from ambient.train.layout import RunLayout
from ambient.train.resume import ResumeMismatchError
from tests.helpers.finetune import make_config, read_summary, unet_weights

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def tensorboard_events(outputs: str) -> ea.EventAccumulator:
    """The run's TensorBoard files, read back with TensorBoard's own reader (every event kept)."""
    keep_all = {ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0}  # the reader samples 4 images a tag by default
    return ea.EventAccumulator(str(Path(outputs, "tensorboard")), size_guidance=keep_all).Reload()


def text_of(events: ea.EventAccumulator, tag: str) -> str:
    return events.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-storage")


@pytest.fixture(scope="module")
def trained(storage, tiny_model, demo_shards) -> dict:
    showcase = {"showcase.enabled": True, "showcase.examples": 2, "showcase.adherence_prompts": 4}
    showcase["tracking.tensorboard"] = True  # read back below
    cfg = make_config(storage, tiny_model, demo_shards, "main", **showcase, **{"showcase.num_steps": 4})
    staging_before = set(Path(tempfile.gettempdir()).glob("ambient-outputs-*"))
    summary_uri = run_finetune(cfg)
    staging_left = set(Path(tempfile.gettempdir()).glob("ambient-outputs-*")) - staging_before
    return {
        "cfg": cfg,
        "summary_uri": summary_uri,
        "summary": read_summary(summary_uri),
        "staging_left": staging_left,
    }


def test_two_worker_zero2_run_trains_checkpoints_and_exports(trained):
    from diffusers import StableDiffusionXLPipeline

    s = trained["summary"]
    assert s["steps"] == 24 and s["resumed_from_step"] is None
    losses = [h["loss"] for h in s["history"]]
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    # The default model is a pre-trained base, whose loss on 64 shapes is already at its noise floor:
    # that training happened is shown by the weights moving (BASE.json records the pre-training's final
    # loss).
    base, tuned = unet_weights(s["model_source"]), unet_weights(resolve_export(s["exported_model"]))
    moved = max((tuned[k].float() - base[k].float()).abs().max().item() for k in base)
    assert moved > 1e-4, "the exported UNet equals the base"
    # Outputs live in run.storage_path; the workers' local staging (an export per run) is gone.
    assert not trained["staging_left"], f"worker staging folders left behind: {trained['staging_left']}"
    assert s["final_consistency_loss"] is not None
    assert len(s["checkpoints"]) == 2 and all(Path(c, "train_state.json").is_file() for c in s["checkpoints"])
    assert Path(s["loss_curve"]).is_file() and Path(s["sample_grids"], "step_000024.png").is_file()
    assert s["config"]["storage"]["secret_access_key"] in ("", None, "***")

    # The before/after picture: 2 rows of (noisy example | base | fine-tuned) beside the loss curve,
    # with adherence measured for both models on the training captions and on the base world.
    picture = Image.open(s["showcase"]["picture"])
    assert picture.height > 2 * TILE and picture.width > 3 * TILE
    for name in ("new_concept", "retained"):
        entry = s["showcase"]["adherence"][name]
        assert entry["prompts"] == 4
        assert 0 <= entry["base"]["adherence"] <= 1 and 0 <= entry["finetuned"]["adherence"] <= 1

    meta = json.loads(Path(resolve_export(s["exported_model"]), "ambient_metadata.json").read_text())
    assert meta["sigma_n"] == pytest.approx(0.5) and meta["trained_with_consistency"] is True
    pipe = StableDiffusionXLPipeline.from_pretrained(
        resolve_export(s["exported_model"]), use_safetensors=True
    )
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="pil").images[0]
    assert image.size == (64, 64)

    # TensorBoard (tracking.tensorboard, on by default): the logged steps, the grid, the showcase, the
    # config and the export, as TensorBoard reads them.
    tb = tensorboard_events(s["outputs"])
    steps = [h["step"] for h in s["history"]]
    assert [e.step for e in tb.Scalars("train/loss")] == steps == list(range(2, 25, 2))
    assert [e.value for e in tb.Scalars("train/loss")] == pytest.approx(losses, rel=1e-5)
    assert {"train/lr", "train/images_per_second", "train/data_wait_seconds"} <= set(tb.Tags()["scalars"])
    assert [e.step for e in tb.Images("samples/grid")] == [24]
    assert [e.step for e in tb.Scalars("summary/final_loss")] == [24]
    assert [e.step for e in tb.Images("showcase/comparison")] == [24]
    assert '"name": "main"' in text_of(tb, "config/resolved")
    assert s["exported_model"] in text_of(tb, "run/export")


def test_rerun_with_the_same_name_resumes_from_the_latest_checkpoint(trained):
    first = trained["summary"]
    before = unet_weights(resolve_export(first["exported_model"]))
    # Same name, same step budget: resumes at step 24 with nothing left to do; the export must equal the
    # checkpoint's parameters exactly.
    again = read_summary(run_finetune(trained["cfg"]))
    assert again["resumed_from_step"] == 24 and again["steps"] == 24
    after = unet_weights(resolve_export(again["exported_model"]))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # A larger budget continuing the step count from the checkpoint: test_exact_resume.py (4 -> 8 steps).


def test_a_killed_worker_is_replaced_and_the_run_resumes_from_its_checkpoint(
    storage, tiny_model, demo_shards
):
    """Also the exact resume after a failure (every row of the two epochs exactly twice in what the final
    model trained on) and EMA across it (the EMA state is checkpointed, restored and exported)."""
    from tests.helpers.finetune import EPOCH_ROWS, coverage, recorded_rows

    cfg = make_config(
        storage,
        tiny_model,
        demo_shards,
        "fault",
        **{"train.max_steps": 16, "train.checkpoint_every": 4, "run.max_failures": 2},
        **{"data.record_rows": True, "train.ema_decay": 0.5, "consistency.weight": 0},
        **{"tracking.tensorboard": True},
    )
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("uri", run_finetune(cfg)), daemon=True)
    thread.start()
    layout = RunLayout.of(str(storage), "fault")
    deadline = time.time() + 300
    # Wait until the controller has *registered* a checkpoint (its snapshot lists one), not merely until
    # the files exist: a failure before registration restarts from scratch, correctly.
    snapshot = Path(layout.checkpoint_snapshot)
    while time.time() < deadline and not (
        snapshot.exists() and "checkpoint_dir_name" in snapshot.read_text()
    ):
        assert thread.is_alive(), "the run ended before its first checkpoint"
        time.sleep(0.5)
    # Each worker registers its pid under outputs/workers/; kill rank 1's process outright.
    record = json.loads(Path(layout.worker_record(1)).read_text())
    os.kill(record["pid"], 9)
    thread.join(timeout=600)
    assert "uri" in result, "the run did not complete after a worker was killed"
    s = read_summary(result["uri"])
    assert s["steps"] == 16
    assert s["resumed_from_step"] is not None and 4 <= s["resumed_from_step"] < 16
    assert s["data_split"] == "exact" and s["restarts"] >= 1
    # 2 workers x batch 4 = 8 rows a step: 16 steps are two epochs of the 64 rows.
    counts = coverage(recorded_rows(layout), s["resumed_from_step"])
    assert len(counts) == EPOCH_ROWS and set(counts.values()) == {2}, counts.most_common(3)

    # The export is the EMA average of the last checkpoint (not the raw weights), and training moved it.
    ema = load_file(str(Path(s["checkpoints"][-1], "ema.safetensors")))
    exported, initial = unet_weights(resolve_export(s["exported_model"])), unet_weights(tiny_model)
    trainable = [k for k in ema if k in exported]
    assert len(trainable) == len(initial), "the EMA shadows every UNet parameter"
    assert all(torch.equal(exported[k], ema[k].to(exported[k].dtype)) for k in trainable)
    assert any(not torch.equal(exported[k], initial[k]) for k in trainable)
    assert (
        json.loads(Path(resolve_export(s["exported_model"]), "ambient_metadata.json").read_text())[
            "ema_decay"
        ]
        == 0.5
    )
    # TensorBoard shows each step once, though the failed attempt logged steps after its checkpoint.
    tb = tensorboard_events(s["outputs"])
    assert [e.step for e in tb.Scalars("train/loss")] == [h["step"] for h in s["history"]]
    assert [e.value for e in tb.Scalars("train/loss")] == pytest.approx([h["loss"] for h in s["history"]])

    # Bit-identical: the same run trained without interruption ends with exactly these weights (the same
    # rows, and each rank's noise, timesteps and caption dropouts continued from the checkpoint).
    whole = read_summary(
        run_finetune(cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": "whole"})}))
    )
    assert whole["restarts"] == 0
    uninterrupted = unet_weights(resolve_export(whole["exported_model"]))
    differ = [k for k in exported if not torch.equal(exported[k], uninterrupted[k])]
    assert not differ, (
        f"{len(differ)} of {len(exported)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"
    )

    # Its checkpoints record its data: resuming it over another row order is refused before any training.
    more = make_config(
        storage, tiny_model, demo_shards, "fault", **{"train.max_steps": 20, "data.shuffle_seed": 7}
    )
    with pytest.raises(
        ResumeMismatchError, match=r"row plan: row_plan_sha256 \w{64} in the checkpoint, \w{64} now"
    ):
        run_finetune(more)


def _run_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "finetune.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_bad_config_values_and_a_missing_model_fail_fast_with_clear_messages(tmp_path):
    bad = _run_job("--set", "train.batch_size=0", "--set", "consistency.fraction=2", "--set", "optim.lrr=1")
    assert bad.returncode == 2
    assert (
        "train.batch_size" in bad.stderr
        and "consistency.fraction" in bad.stderr
        and "optim.lrr" in bad.stderr
    )
    missing = _run_job(
        "--set", f"model.path={tmp_path}/no-such-model", "--set", f"run.storage_path={tmp_path}"
    )
    assert missing.returncode == 2
    assert f"{tmp_path}/no-such-model" in missing.stderr and "does not exist" in missing.stderr
    assert (
        "Started a local Ray instance" not in missing.stderr + missing.stdout
    )  # failed before any cluster work
    dry = _run_job("--dry-run", "--set", "train.max_steps=5")
    assert dry.returncode == 0 and '"max_steps": 5' in dry.stdout


def test_zero3_run_partitions_the_weights_and_exports_a_loadable_model(storage, tiny_model, demo_shards):
    from diffusers import StableDiffusionXLPipeline

    cfg = make_config(
        storage,
        tiny_model,
        demo_shards,
        "zero3",
        **{"deepspeed.zero_stage": 3, "train.max_steps": 8, "train.checkpoint_every": 8},
        **{"validation.every_steps": 8, "consistency.weight": 0},
    )
    s = read_summary(run_finetune(cfg))
    assert s["steps"] == 8 and all(torch.isfinite(torch.tensor([h["loss"] for h in s["history"]])))
    # ZeRO-3 gathers the partitioned parameters for the export: full shapes, trained values.
    exported = unet_weights(resolve_export(s["exported_model"]))
    initial = unet_weights(tiny_model)
    assert exported.keys() == initial.keys()
    assert all(exported[k].shape == initial[k].shape for k in initial)
    assert any(not torch.equal(exported[k], initial[k]) for k in initial)
    pipe = StableDiffusionXLPipeline.from_pretrained(
        resolve_export(s["exported_model"]), use_safetensors=True
    )
    assert pipe("a red circle", num_inference_steps=2, height=64, width=64).images[0].size == (64, 64)
