#!/usr/bin/env bash
# Train the three bundled shapes models exactly as the committed ones were trained, in the order they
# depend on each other (see train/README.md for the measured times):
#   1. models/shapes-clip in three stages (train_clip.py; the recorded run was split when the shared
#      CPU got busy: each stage starts from the previous one's saved weights with a fresh warm-up +
#      cosine schedule and a new batch-sampling seed; every stage is deterministic);
#   2. models/shapes-llava and models/shapes-blip2, in parallel, 1 thread each, on shapes-clip's
#      trained vision tower.
# Logs go to train/logs/. Run it in the background:
#   nohup train/train_all.sh > train/logs/all.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p train/logs
PY=.venv/bin/python
STAGES=${TMPDIR:-/tmp}/shapes-clip-stages
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
$PY train/train_clip.py --steps 4800 --stop-after 500 --out "$STAGES/1" \
    > train/logs/shapes-clip-stage1.log 2>&1
$PY train/train_clip.py --init "$STAGES/1" --steps 1500 --threads 1 --seed 1 --eval-every 250 \
    --stop-after 500 --out "$STAGES/2" > train/logs/shapes-clip-stage2.log 2>&1
$PY train/train_clip.py --init "$STAGES/2" --steps 1900 --threads 2 --seed 2 --eval-every 250 \
    > train/logs/shapes-clip-stage3.log 2>&1
$PY train/train_llava.py > train/logs/shapes-llava.log 2>&1 &
llava=$!
$PY train/train_blip2.py > train/logs/shapes-blip2.log 2>&1 &
blip2=$!
wait "$llava"
wait "$blip2"
echo "done: models/shapes-clip, models/shapes-llava, models/shapes-blip2"
