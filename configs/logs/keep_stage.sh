#!/usr/bin/env bash
# Keeps what `--resume` needs of one stage folder in git between working sessions (a session's runs/ folder may not
# outlive it), and puts it back: the resume state (state/last.pt; a finished stage's is its final state, which a
# continuing stage reads), per-step metrics, the stage's config, the backbones saved so far and, once finished, summary.json.
#   bash configs/logs/keep_stage.sh save    RUN_DIR KEEP_DIR   # after stopping the run at a checkpoint
#   bash configs/logs/keep_stage.sh restore RUN_DIR KEEP_DIR   # in a new work tree, before resuming
# restore leaves a RUN_DIR that already holds a resume state alone. configs/logs/base_long/keep.sh uses it per stage.
set -euo pipefail
[[ $# -eq 3 && ( $1 == save || $1 == restore ) ]] || { echo "usage: $0 save|restore RUN_DIR KEEP_DIR" >&2; exit 2; }
ACTION=$1; RUN=$2; KEEP=$3
last_step() { tail -n 1 "$1/metrics.csv" | cut -d, -f1; }
if [[ $ACTION == save ]]; then
  [[ -f $RUN/state/last.pt ]] || { echo "$RUN has no resume state (state/last.pt); nothing saved" >&2; exit 0; }
  mkdir -p "$KEEP"
  cp "$RUN/state/last.pt" "$RUN/metrics.csv" "$RUN/config.yaml" "$KEEP/"
  for f in "$RUN"/backbone*.safetensors "$RUN"/summary.json; do [[ -f $f ]] && cp "$f" "$KEEP/"; done
  echo "saved $RUN to $KEEP: metrics to step $(last_step "$KEEP")$([[ -f $KEEP/summary.json ]] && echo ", finished" || echo ", resume state at the last checkpoint")"
else
  [[ -f $KEEP/last.pt ]] || { echo "$KEEP holds no resume state; nothing restored" >&2; exit 0; }
  if [[ -e $RUN/state/last.pt ]]; then echo "$RUN already holds a resume state; not restored" >&2; exit 0; fi
  mkdir -p "$RUN/state"
  cp "$KEEP/last.pt" "$RUN/state/last.pt"
  cp "$KEEP/metrics.csv" "$KEEP/config.yaml" "$RUN/"
  for f in "$KEEP"/backbone*.safetensors "$KEEP"/summary.json; do [[ -f $f ]] && cp "$f" "$RUN/"; done
  echo "restored $RUN at step $(last_step "$RUN")"
fi
