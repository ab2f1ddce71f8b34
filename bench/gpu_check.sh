#!/usr/bin/env bash
# hpt on one NVIDIA GPU, offline, in about 8 minutes; every figure goes to one file.
#
#   bash bench/gpu_check.sh [--tiny] [--out FILE]
#
# Parts, each reported in the file (a failed one with the end of its log; the others still run):
#   tests               the tests marked gpu (tests/gpu/): MoCo-v2 steps of a tiny ResNet in fp32 and bf16,
#                       channels_last off and on, the saved backbone reloaded on the CPU; the linear protocol on the GPU
#   timings             ResNet-50 at 224 px, MoCo-v2 steps in fp32 and bf16, channels_last off and on, against the
#                       compute limit (bench/throughput_grid.py, with bench/throughput.py's measurements)
#   lightly comparison  bench/peers/ in the side environment with lightly ($PEERS_ENV), when both are present
#   torchrun run        torchrun --nproc_per_node=1 -m hpt run on a tiny hierarchy with a linear evaluation
#
# --tiny runs every part on the CPU at tiny size (ResNet-18 of width 8, 32 px, batch 8, a few steps), to know that
# the script works before a GPU is at hand; without a visible CUDA GPU the script does the same and says so.
# --out FILE: the figures file (default: $OUT/gpu_check.txt when $OUT is set, else runs/gpu_check/gpu_check.txt).
# Environment: PYTHON (default: .venv/bin/python, else python3); PEERS_ENV (default: .venv-peers) and PEER_ARGS,
# the options of bench/peers/lightly_moco.py (default: --tiny in tiny mode, else --rounds 1, on 1,024 synthetic
# 32 px images); BATCH, STEPS, WARMUP, IMAGES of the timings (256, 20, 5, 2048); the most seconds a part may take:
# TIMINGS_TIMEOUT_S (210) for the timings, PART_TIMEOUT_S (100) for each other part. Needs nothing beyond
# `pip install -e '.[dev,dicom,tiff]'` and no network. Exit status: 0 when every part that ran passed, else 1.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
tiny=0
out_file="${OUT:+$OUT/gpu_check.txt}"
out_file="${out_file:-runs/gpu_check/gpu_check.txt}"
while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) tiny=1 ;;
        --out) out_file="${2:?--out needs a file name}"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
mkdir -p "$(dirname "$out_file")"
out_file="$(cd "$(dirname "$out_file")" && pwd)/$(basename "$out_file")"
work=$(mktemp -d "${TMPDIR:-/tmp}/hpt-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
export HPT_CACHE="$work/cache"
part_timeout=${PART_TIMEOUT_S:-100}
timings_timeout=${TIMINGS_TIMEOUT_S:-210}
if ! command -v timeout >/dev/null; then
    timeout() { shift; "$@"; }  # no coreutils timeout (macOS): parts run unbounded
fi
started=$SECONDS
failed=()

: >"$out_file"
say() { echo "$*" >>"$out_file"; }

# The machine, and whether a CUDA GPU is visible (--tiny does not ask: it saves importing torch once more).
if "$PYTHON" - "$tiny" >"$work/machine" 2>"$work/machine.log" <<'PY'
import importlib.metadata
import platform
import sys

if sys.argv[1] == "1":
    cuda, torch_build = False, importlib.metadata.version("torch")
else:
    import torch

    cuda, torch_build = torch.cuda.is_available(), f"{torch.__version__} (CUDA {torch.version.cuda})"
print("cuda" if cuda else "cpu")
name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
print(f"torch {torch_build} | python {platform.python_version()} | {name}")
PY
then
    device=$(sed -n 1p "$work/machine")
    machine=$(sed -n 2p "$work/machine")
else
    device=cpu
    machine="torch was not found: $(tail -n 1 "$work/machine.log" | grep . || echo "$PYTHON failed")"
fi
if commit=$(git rev-parse --short HEAD 2>/dev/null); then
    git diff --quiet HEAD 2>/dev/null || commit="$commit (with local changes)"
else
    commit="unknown (not a git checkout)"
fi
say "hpt GPU check | $(date -u '+%Y-%m-%d %H:%M UTC') | $(uname -n) | commit $commit"
say "$machine"
if [ "$tiny" = 1 ]; then
    device=cpu
    say "mode: tiny (--tiny): every part on the CPU at tiny size"
elif [ "$device" = cpu ]; then
    tiny=1
    say "mode: no CUDA GPU is visible: every part runs on the CPU at tiny size instead"
else
    say "mode: GPU"
fi
echo "hpt GPU check on $device (tiny: $tiny); figures go to $out_file"

# run_part NAME FUNCTION: the part's figures (FUNCTION's stdout to $fig) under a header, then its status.
run_part() {
    local name=$1 fn=$2 begin=$SECONDS rc
    fig="$work/$fn.fig"
    log="$work/$fn.log"
    : >"$fig"
    : >"$log"
    echo "== $name ..."
    set +e
    (set -e; "$fn") >>"$fig" 2>>"$log"
    rc=$?
    set -e
    say ""
    say "== $name =="
    cat "$fig" >>"$out_file"
    if [ "$rc" = 0 ]; then
        say "status: passed ($((SECONDS - begin)) s)"
    elif [ "$rc" = 3 ]; then
        say "status: not run ($((SECONDS - begin)) s)"
    else
        [ "$rc" = 124 ] && say "timed out: raise PART_TIMEOUT_S (TIMINGS_TIMEOUT_S for the timings)"
        say "status: FAILED (exit $rc, $((SECONDS - begin)) s); the end of its log:"
        tail -n 40 "$log" | sed 's/^/    /' >>"$out_file"
        failed+=("$name")
    fi
}

gpu_tests() {
    local rc=0
    HPT_GPU_TEST_DEVICE=$device timeout "$part_timeout" "$PYTHON" -m pytest -v -m gpu tests/gpu -p no:cacheprovider \
        >"$work/pytest.out" 2>&1 || rc=$?
    grep -E ' (PASSED|FAILED|ERROR|SKIPPED)' "$work/pytest.out" | sed 's/ *\[ *[0-9]*%\]$//' || true
    tail -n 1 "$work/pytest.out"
    if [ "$rc" != 0 ]; then
        cat "$work/pytest.out" >&2
        return "$rc"
    fi
    if grep -q ' SKIPPED' "$work/pytest.out"; then
        echo "tests were skipped on device $device"
        return 1
    fi
}

timings() {
    local size
    if [ "$tiny" = 1 ]; then
        size=(--arch resnet18 --small-stem --width 8 --res 32 --batch 8 --steps 2 --warmup 1 --images 64 --workers 0)
    else
        size=(--arch resnet50 --no-small-stem --width 64 --res 224 --batch "${BATCH:-256}" --steps "${STEPS:-20}"
              --warmup "${WARMUP:-5}" --images "${IMAGES:-2048}")
    fi
    timeout "$timings_timeout" "$PYTHON" bench/throughput_grid.py "${size[@]}" --precisions fp32,bf16 \
        --layouts contiguous,channels_last --device "$device" --json "$work/timings.json"
}

lightly_comparison() {
    local env=${PEERS_ENV:-${PEER_ENV:-.venv-peers}} args
    if [ ! -x "$env/bin/python" ]; then
        echo "the lightly comparison was not run: the peer environment is absent (no $env/bin/python; create it with"
        echo "bash bench/peers/setup_env.sh, or set PEERS_ENV)"
        return 3
    fi
    if ! "$env/bin/python" -c "import lightly" 2>/dev/null; then
        echo "the lightly comparison was not run: lightly does not import in $env"
        return 3
    fi
    if [ -n "${PEER_ARGS+set}" ]; then
        read -r -a args <<<"$PEER_ARGS"
    else  # a quick run on 1,024 synthetic 32 px images
        "$PYTHON" -c 'import sys, numpy as np
np.savez(sys.argv[1], train_images=np.random.default_rng(0).integers(0, 256, (1024, 32, 32, 3), dtype=np.uint8))' \
            "$work/peers.npz"
        if [ "$tiny" = 1 ]; then args=(--tiny); else args=(--rounds 1); fi
        args+=(--data "$work/peers.npz")
    fi
    if [ -f bench/peers/run.sh ]; then
        PEERS_ENV=$env timeout "$part_timeout" bash bench/peers/run.sh "${args[@]}"
    elif [ -f bench/peers/lightly_moco.py ]; then
        echo "$env/bin/python bench/peers/lightly_moco.py ${args[*]}"
        timeout "$part_timeout" "$env/bin/python" bench/peers/lightly_moco.py "${args[@]}"
    else
        echo "the lightly comparison was not run: bench/peers/ holds neither run.sh nor lightly_moco.py"
        return 3
    fi
}

torchrun_run() {
    local port
    port=$("$PYTHON" - "$work/torchrun" "$tiny" <<'PY'
import socket
import sys
from pathlib import Path

import numpy as np
import yaml

folder, tiny = Path(sys.argv[1]), sys.argv[2] == "1"
folder.mkdir(parents=True)
rng = np.random.default_rng(0)
arrays = {}
for split, n in (("train", 256), ("val", 64), ("test", 64)):
    labels = np.arange(n) % 4
    rng.shuffle(labels)  # classes differ in brightness, so that the linear protocol has something to find
    images = rng.integers(0, 120, (n, 32, 32, 3)) + labels[:, None, None, None] * 40
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = np.clip(images, 0, 255).astype(np.uint8), labels
np.savez(folder / "tiny.npz", **arrays)
defaults = {"batch_size": 8 if tiny else 64, "precision": "fp32" if tiny else "bf16", "channels_last": not tiny,
            "device": "cpu" if tiny else "cuda", "workers": 0, "log_every": 1, "checkpoint_every": 5,
            "moco": {"dim": 16, "bn_splits": 2}, "augment": {"image_size": 32}}
config = {"base": {"checkpoint": "random", "arch": "resnet18", "small_stem": True, "width": 8},
          "defaults": defaults, "stages": [{"name": "target", "data": "npz:tiny.npz", "steps": 4 if tiny else 20}],
          "eval": {"protocols": ["linear"], "linear": {"steps": 20 if tiny else 200, "eval_every": 10}, "start": False}}
(folder / "hierarchy.yaml").write_text(yaml.safe_dump(config))
with socket.socket() as probe:  # a free port for torchrun's rendezvous
    probe.bind(("127.0.0.1", 0))
    print(probe.getsockname()[1])
PY
)
    echo "torchrun --nproc_per_node=1 -m hpt run hierarchy.yaml --out OUT (on $device)"
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} timeout "$part_timeout" "$PYTHON" -m torch.distributed.run \
        --nproc_per_node=1 --master_addr=127.0.0.1 --master_port="$port" \
        -m hpt run "$work/torchrun/hierarchy.yaml" --out "$work/torchrun/out" >&2
    "$PYTHON" - "$work/torchrun/out" "$device" <<'PY'
import json
import sys
from pathlib import Path

out, device = Path(sys.argv[1]), sys.argv[2]
summary = json.loads((out / "target" / "summary.json").read_text())
started = next(line for line in (out / "hpt.log").read_text().splitlines() if "global batch" in line)
print("stage:", started.split("stage ", 1)[-1])
print(f"world size {summary['world_size']}, global batch {summary['global_batch']}, {summary['steps_done']} steps, "
      f"final loss {summary['final_loss']:.4f}, {summary['images_per_s']} img/s, stage wall time "
      f"{summary['wall_time_s']} s")
rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
for row in rows:
    if row.get("kind") == "eval":
        low, high = row["interval"]
        print(f"linear evaluation of {row.get('stage', '?')}: test top-1 {row['test']:.3f} [{low:.3f}, {high:.3f}]")
checks = {"one process": summary["world_size"] == 1,
          "rank checksum is the saved backbone's": summary["rank_checksums"] == [summary["backbone_sha256"]],
          f"trained on {device}": f" on {device}" in started,
          "a linear evaluation": any(row.get("kind") == "eval" for row in rows)}
print("checks: " + ", ".join(f"{name} {'ok' if ok else 'WRONG'}" for name, ok in checks.items()))
sys.exit(0 if all(checks.values()) else 1)
PY
}

run_part "tests" gpu_tests
run_part "timings" timings
run_part "lightly comparison" lightly_comparison
run_part "torchrun run" torchrun_run

say ""
if [ ${#failed[@]} = 0 ]; then
    say "result: every part that ran passed ($((SECONDS - started)) s in all)"
else
    say "result: FAILED: $(IFS=,; echo "${failed[*]}") ($((SECONDS - started)) s in all)"
fi
cat "$out_file"
echo "figures written to $out_file"
[ ${#failed[@]} = 0 ]
