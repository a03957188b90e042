#!/bin/bash
set -euo pipefail
cd /work/wt-vbase
export AMBIENT_CACHE_DIR=/work/vbase-cache PYTHONPATH=/work/wt-vbase/platform
PY=/work/main/.venv/bin/python
untrained=$($PY -m ambient.models.base_model untrained)
echo "untrained=$untrained"
$PY jobs/prepare_shards.py --config jobs/configs/base_prepare.yaml --set encode.model=$untrained
$PY jobs/finetune.py --config jobs/configs/base_pretrain.yaml --set model.path=$untrained
$PY jobs/finetune.py --config jobs/configs/base_pretrain.yaml --set model.path=$untrained --set train.max_steps=5300 --set loss.sigma_sampling=timesteps
$PY jobs/package_base.py
echo DONE
