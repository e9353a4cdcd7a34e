#!/usr/bin/env bash
# The GPU check before a release, on one CUDA device, in under 8 minutes:
#   1. benchmarks/imagenet_step.py --device cuda (input pipelines, ResNet-50 step eager and
#      compiled, sigmoid and MILe training, host synchronisations per step);
#   2. 50 real training steps of an ImageNet recipe (experiment=imagenet/swav_100pct, its
#      ResNet-50 from random weights: checkpoint=scratch) in bf16 on the synthetic tree the
#      benchmark wrote, with mile.kt = mile.ks = 25 so that both MILe phases run;
#   3. `mile-ssl eval` and `mile-ssl predict` of that run on the GPU (the tree's
#      validation images), which read the run back as a user does.
# Prints one JSON summary on stdout (logs go to stderr); exits non-zero if a part fails
# and, at once, if torch sees no CUDA device.
#
#   bash benchmarks/gpu_check.sh            (from a checkout where `make install` was run)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=python
if [ -x .venv/bin/python ]; then
    PYTHON=.venv/bin/python
fi
export HF_HUB_OFFLINE=1

cuda_status=0
"$PYTHON" -c 'import importlib.util, sys
if importlib.util.find_spec("torch") is None:
    sys.exit(3)
import torch
sys.exit(0 if torch.cuda.is_available() else 4)' || cuda_status=$?
if [ "$cuda_status" = 4 ]; then
    echo "gpu_check.sh: no CUDA device visible to torch ($PYTHON); this check needs a GPU" >&2
    exit 1
elif [ "$cuda_status" != 0 ]; then
    echo "gpu_check.sh: $PYTHON cannot import torch; run make install first" >&2
    exit 1
fi

RECIPE=imagenet/swav_100pct
RECIPE_OVERRIDES=(checkpoint=scratch trainer.accelerator=gpu trainer.devices=1
    trainer.precision=bf16-mixed trainer.max_steps=50 mile.kt=25 mile.ks=25
    trainer.progress_bar=false)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)

echo "gpu_check.sh: benchmarks/imagenet_step.py --device cuda" >&2
"$PYTHON" benchmarks/imagenet_step.py --device cuda > "$WORK/step.json"
ROOT=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["tree"]["root"])' \
    "$WORK/step.json")

echo "gpu_check.sh: experiment=$RECIPE ${RECIPE_OVERRIDES[*]} on $ROOT" >&2
recipe_started=$(date +%s)
recipe_status=0
"$PYTHON" -m mile_ssl train "experiment=$RECIPE" "${RECIPE_OVERRIDES[@]}" "data.root=$ROOT" \
    "hydra.run.dir=$WORK/recipe" >&2 || recipe_status=$?
recipe_seconds=$(($(date +%s) - recipe_started))

# Reading the run back, each step on its own status: eval on the run's validation set,
# predict on one validation class folder.
eval_status=0
eval_started=$(date +%s)
"$PYTHON" -m mile_ssl eval "checkpoint=$WORK/recipe" --json > "$WORK/eval.json" \
    || eval_status=$?
eval_seconds=$(($(date +%s) - eval_started))
PREDICT_FOLDER=$(find "$ROOT/val" -mindepth 1 -maxdepth 1 -type d | sort | head -n 1)
predict_status=0
predict_started=$(date +%s)
"$PYTHON" -m mile_ssl predict "$PREDICT_FOLDER" "checkpoint=$WORK/recipe" --json \
    > "$WORK/predict.json" || predict_status=$?
predict_seconds=$(($(date +%s) - predict_started))
GPU_NAME=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    2>/dev/null | head -n 1 || true)

"$PYTHON" - "$WORK" "$RECIPE" "${RECIPE_OVERRIDES[*]}" "$recipe_status" "$recipe_seconds" \
    "$(($(date +%s) - started))" "$GPU_NAME" "$eval_status" "$eval_seconds" \
    "$predict_status" "$predict_seconds" <<'EOF'
import json
import sys
from pathlib import Path

import torch

work, recipe, overrides, status, recipe_seconds, seconds, smi = sys.argv[1:8]
eval_status, eval_seconds, predict_status, predict_seconds = sys.argv[8:]
metrics_file = Path(work) / "recipe" / "metrics.json"
metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None


def read_json(name: str) -> object:
    """A command's JSON output, or None where it failed before writing one."""
    try:
        return json.loads((Path(work) / name).read_text())
    except (OSError, ValueError):
        return None


evaluated = read_json("eval.json")
predicted = read_json("predict.json")
print(
    json.dumps(
        {
            "gpu": torch.cuda.get_device_name(0),
            "nvidia_smi": smi or None,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "imagenet_step": json.loads((Path(work) / "step.json").read_text()),
            "recipe": {
                "experiment": recipe,
                "overrides": overrides,
                "exit_status": int(status),
                "seconds": int(recipe_seconds),
                "completed_steps": metrics["steps"] if metrics else None,
                "backbone": metrics["backbone"] if metrics else None,
                "metrics": metrics["metrics"] if metrics else None,
            },
            "eval": {
                "exit_status": int(eval_status),
                "seconds": int(eval_seconds),
                "metrics": evaluated.get("metrics") if isinstance(evaluated, dict) else None,
            },
            "predict": {
                "exit_status": int(predict_status),
                "seconds": int(predict_seconds),
                "images": len(predicted) if isinstance(predicted, list) else None,
                "unreadable": (
                    sum(1 for item in predicted if item.get("error"))
                    if isinstance(predicted, list)
                    else None
                ),
            },
            "seconds": int(seconds),
            "under_8_minutes": int(seconds) < 480,
        },
        indent=2,
    )
)
EOF
for status in "$recipe_status" "$eval_status" "$predict_status"; do
    if [ "$status" != 0 ]; then
        exit "$status"
    fi
done
