#!/usr/bin/env bash
# Continuing hpt's small ViT and ConvNeXt bases (configs/studies/run_small_bases.sh) on a target in each train mode:
# all (HPT), norm (every norm layer's affine parameters), lora (rank 8 on qkv, attn.proj, fc1, fc2) and lora with
# the last block trained (ExPLoRA), each STEPS steps (default 100) of MoCo v3 with AdamW at lr 1e-4 and the base's
# own head width, then the linear protocol on the target at 32 px; the Base's own linear score on the target, each
# mode against it (paired), and each mode's layers against the Base's (linear CKA on the target's images).
#   bash configs/studies/run_small_bases_modes.sh [FAMILY [TARGET...]]   (default: vit and convnext, each target)
. "$(dirname "$0")/common.sh"
D=$(realpath ../shared/data)
STEPS=${STEPS:-100}
FAMILIES=${1:-"vit convnext"}
shift || true
TARGETS=${*:-"fashionmnist_28 pneumoniamnist_28"}
MODES="all norm lora lora+1"
for family in $FAMILIES; do
  base=runs/base_cifar10_$family/base/backbone.safetensors
  [ -f "$base" ] || run hpt run configs/examples/base_cifar10_$family.yaml --out runs/base_cifar10_$family
  for target in $TARGETS; do
    results=runs/results/small_bases_modes/$family/$target
    [ -f "$results/base/results.json" ] || \
      run hpt eval linear --backbone "$base" --data "npz:$D/$target.npz" --image-size 32 --out "$results/base"
    for mode in $MODES; do
      train=${mode%+*}
      blocks=0
      [ "$mode" != "$train" ] && blocks=${mode#*+}
      out=$results/$mode
      [ -f "$out/target/backbone.safetensors" ] || \
        run hpt pretrain --base "$base" --data "npz:$D/$target.npz" --steps "$STEPS" --train "$train" \
          --last-blocks "$blocks" --method mocov3 --optimizer adamw --lr 1e-4 --lr-warmup-steps 10 \
          --set weight_decay=0.05 --set mocov3.hidden_dim=1024 --image-size 32 --out "$out"
      [ -f "$out/linear/results.json" ] || \
        run hpt eval linear --backbone "$out/target/backbone.safetensors" --data "npz:$D/$target.npz" \
          --image-size 32 --out "$out/linear"
    done
    # shellcheck disable=SC2046
    run hpt eval compare "$results/base" $(for m in $MODES; do echo "$results/$m/linear"; done) \
        --name Base $(for m in $MODES; do echo "--name $m"; done) | tee "$results/compare.txt"
    # shellcheck disable=SC2046
    run hpt analyze similarity "$base" $(for m in $MODES; do echo "$results/$m/target/backbone.safetensors"; done) \
        --name Base $(for m in $MODES; do echo "--name $m"; done) --data "npz:$D/$target.npz" --image-size 32 \
        --out "$results/similarity"
  done
done
