#!/usr/bin/env bash
# The stages of configs/base_cifar10_long.yaml (base_long, base_longer, base_longest, then base_96k) take many hours of this 2-core CPU,
# more than one working session, and a session's runs/ folder does not outlive it. This keeps what `--resume`
# needs in git between sessions, for each stage begun: the resume state (11 MB: backbone, head, key encoder,
# queue, SGD momentum, random generators; a finished stage's is the final state that base_longer continues), the
# per-step metrics, the stage's config, and the backbones (kept and, once finished, final with summary.json);
# and the training log of the whole run. Stage <s> is kept in configs/logs/<s>/.
#   bash configs/logs/base_long/keep.sh save      # at the end of a session (after pausing or stopping the run)
#   bash configs/logs/base_long/keep.sh restore   # at the start of the next one, then resume:
#   hpt run configs/base_cifar10_long.yaml --out runs/base_cifar10_long --resume >> runs/base_long.out 2>&1
set -euo pipefail
cd "$(dirname "$0")/../../.."
CONFIG=configs/base_cifar10_long.yaml; mapfile -t STAGES < <(sed -n 's/^  - name: *//p' "$CONFIG"); OUT=runs/base_cifar10_long; LOG=configs/logs/base_long/base_long.log
case "${1:-}" in
  save)
    for s in "${STAGES[@]}"; do [[ -f $OUT/$s/state/last.pt ]] && bash configs/logs/keep_stage.sh save "$OUT/$s" "configs/logs/$s"; done
    cp runs/base_long.out "$LOG" ;;
  restore)
    for s in "${STAGES[@]}"; do [[ -f configs/logs/$s/last.pt ]] && bash configs/logs/keep_stage.sh restore "$OUT/$s" "configs/logs/$s"; done
    mkdir -p runs; [[ -e runs/base_long.out ]] || cp "$LOG" runs/base_long.out ;;
  *) echo "usage: $0 save|restore" >&2; exit 2 ;;
esac
