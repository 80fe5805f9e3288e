#!/usr/bin/env bash
# mixer's GPU check: the whole path from corpora to a report on one GPU, timed.
#
#   sample corpora -> GPT-2 token stores -> an SPT mix (5% music) and a finetune mix at
#   seq-len 2048 -> pretrain olmo-300m on ~2M tokens (--no-eval, then `mixer eval`) ->
#   finetune it (chosen on the domain validation split) -> report; then each run's
#   tokens/s, MFU and where its time went (run.json's `throughput` and `time`).
#
#   examples/gpu_check.sh [--cpu] [WORK]        (or: make gpu-check [GPU_CHECK_ARGS=--cpu])
#
# --cpu runs the same steps with the `tiny` model, seq-len 128 and small budgets, so the
# script itself is checked without a GPU (tests/training/test_gpu_check.py runs it).
# WORK (default examples/out/gpu-check) is made fresh; the sample corpora come from
# $MIXER_CACHE (default ~/.cache/mixer; fetched when missing, which needs the network);
# $PYTHON runs mixer (default python3). README "Training on GPUs and clusters" says how to
# run it on an offline GPU machine.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

mode=gpu
work=""
for arg in "$@"; do
  case "$arg" in
    --cpu) mode=cpu ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_check: unknown option $arg (see --help)" >&2; exit 2 ;;
    *) if [ -n "$work" ]; then echo "gpu_check: one WORK folder, got $work and $arg" >&2; exit 2; fi
       work="$arg" ;;
  esac
done
PY="${PYTHON:-python3}"
WORK="${work:-examples/out/gpu-check}"
CACHE="${MIXER_CACHE:-$HOME/.cache/mixer}"
export MIXER_CACHE="$CACHE"

if [ "$mode" = gpu ]; then
  # olmo-300m at the issue's settings: 32 x 2048-token samples per step, micro-batch 8, one GPU
  model=olmo-300m seq=2048 tokens=2M batch=(--batch-size 32 --micro-batch-size 8) subset=300K ft_epochs=2
  held_out=0.02
  machine=(--devices 1) train_cap=() eval_cap=()
else
  # the same steps on a CPU in a few minutes: GPT-2's 50,257-id softmax dominates a tiny model's step
  # and a smaller music val/test split: a finetune validates on all of it at every step
  model=tiny seq=128 tokens=16K batch=(--batch-size 16) subset=4K ft_epochs=2 held_out=0.004
  machine=(--threads 1) train_cap=(--eval-samples 16) eval_cap=(--max-samples 16)
fi

mixer() { "$PY" -m mixer "$@"; }
say() { printf '\n[gpu_check %s, %ss] %s\n' "$mode" "$SECONDS" "$*"; }

if [ -e "$WORK" ]; then
  if [ ! -f "$WORK/.gpu_check" ]; then
    echo "gpu_check: $WORK exists and was not made by gpu_check; choose another WORK" >&2
    exit 1
  fi
  rm -rf -- "$WORK"
fi
mkdir -p -- "$WORK"
touch -- "$WORK/.gpu_check"
SECONDS=0

say "sample corpora and GPT-2's tokenizer into $CACHE"
mixer fetch-samples --only gpt2,music,pydocs,perldocs
samples="$CACHE/samples"
tok="$CACHE/tokenizers/gpt2/tokenizer.json"

say "tokenize with GPT-2"
mixer tokenize --source prose --role general --input "$samples/pydocs.jsonl.zst" \
  --input "$samples/perldocs.jsonl.zst" --tokenizer "$tok" --test-fraction 0.03 --stores "$WORK/stores"
mixer tokenize --source music --role domain --input "$samples/music.jsonl.zst" --tokenizer "$tok" \
  --test-fraction "$held_out" --stores "$WORK/stores"

say "build an SPT mix (5% music) and a finetune mix at seq-len $seq"
common=(--stores "$WORK/stores" --domain music --domain-subset "$subset" --seq-len "$seq" --quiet)
mixer build "${common[@]}" --fraction 0.05 --tokens "$tokens" --out "$WORK/mixes/spt"
mixer build "${common[@]}" --epochs "$ft_epochs" --out "$WORK/mixes/ft"

say "pretrain $model on $tokens tokens (--no-eval), then mixer eval"
mixer train pretrain "$WORK/mixes/spt" --model "$model" --out "$WORK/runs/spt" --checkpoints 2 --no-eval \
  "${batch[@]}" "${machine[@]}"
mixer eval "$WORK/runs/spt" "${eval_cap[@]}"

say "finetune it (early stopping and the choice on the domain validation split)"
mixer train finetune "$WORK/mixes/ft" --from "$WORK/runs/spt" --out "$WORK/runs/ft" --lr-ratio 0.25 \
  --patience 2 "${batch[@]}" "${machine[@]}" "${train_cap[@]}"

say "report"
mixer report "$WORK/runs/spt" "$WORK/runs/ft" --out "$WORK/report"

say "done in $SECONDS s; per run: throughput, MFU and where the time went"
"$PY" - "$WORK/runs/spt" "$WORK/runs/ft" <<'EOF'
import json
import sys
from pathlib import Path

from mixer.cli.train import time_lines

for run in map(Path, sys.argv[1:]):
    meta = json.loads((run / "run.json").read_text())
    print(f"{run.name} ({meta['kind']}, {meta['model']}, {meta['tokens']:,} tokens)")
    for line in time_lines(meta) or ["no time recorded"]:
        print(f"  {line}")
EOF
