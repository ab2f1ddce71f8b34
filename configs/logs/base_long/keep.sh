#!/usr/bin/env bash
# base_long (configs/base_cifar10_long.yaml) takes about 16.5 hours of this 2-core CPU, more than one working
# session, and a session's runs/ folder does not outlive it. This keeps what `--resume` needs in git between
# sessions: the resume state (11 MB: backbone, head, key encoder, queue, SGD momentum, random generators), the
# per-step metrics, the stage's config, the training log, and the backbones (kept and, once finished, final with
# summary.json).
#   bash configs/logs/base_long/keep.sh save      # at the end of a session (after pausing or stopping the run)
#   bash configs/logs/base_long/keep.sh restore   # at the start of the next one, then resume:
#   hpt run configs/base_cifar10_long.yaml --out runs/base_cifar10_long --resume >> runs/base_long.out 2>&1
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUN=runs/base_cifar10_long/base_long; KEEP=configs/logs/base_long
case "${1:-}" in
  save)
    cp "$RUN/state/last.pt" "$KEEP/last.pt"
    cp "$RUN/metrics.csv" "$KEEP/metrics.csv"
    cp "$RUN/config.yaml" "$KEEP/config.yaml"
    cp runs/base_long.out "$KEEP/base_long.log"
    for f in "$RUN"/backbone*.safetensors "$RUN"/summary.json; do [[ -f $f ]] && cp "$f" "$KEEP/"; done
    echo "saved to $KEEP: metrics to step $(tail -n 1 "$KEEP/metrics.csv" | cut -d, -f1), resume state at the checkpoint before (every 100 steps)" ;;
  restore)
    if [[ -e $RUN/state/last.pt ]]; then echo "$RUN already holds a resume state; nothing restored" >&2; exit 1; fi
    mkdir -p "$RUN/state"
    cp "$KEEP/last.pt" "$RUN/state/last.pt"
    cp "$KEEP/metrics.csv" "$KEEP/config.yaml" "$RUN/"
    cp "$KEEP/base_long.log" runs/base_long.out
    for f in "$KEEP"/backbone*.safetensors "$KEEP"/summary.json; do [[ -f $f ]] && cp "$f" "$RUN/"; done
    echo "restored $RUN at step $(tail -n 1 "$RUN/metrics.csv" | cut -d, -f1)" ;;
  *) echo "usage: $0 save|restore" >&2; exit 2 ;;
esac
