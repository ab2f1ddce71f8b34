#!/usr/bin/env bash
# Continuing hpt's small ViT and ConvNeXt bases (configs/studies/run_small_bases.sh) on a target in each train mode:
# all (HPT), norm (every norm layer's affine parameters), lora (rank 8 on qkv, attn.proj, fc1, fc2) and lora with
# the last block trained (ExPLoRA), each STEPS steps (default 100) of MoCo v3 with AdamW at lr 1e-4 and the base's
# own head width, then the linear protocol on the target at 32 px.
#   bash configs/studies/run_small_bases_modes.sh [FAMILY [TARGET...]]   (default: vit and convnext, each target)
. "$(dirname "$0")/common.sh"
D=$(realpath ../shared/data)
STEPS=${STEPS:-100}
FAMILIES=${1:-"vit convnext"}
shift || true
TARGETS=${*:-"fashionmnist_28 pneumoniamnist_28"}
for family in $FAMILIES; do
  base=runs/base_cifar10_$family/base/backbone.safetensors
  for target in $TARGETS; do
    for mode in all norm lora lora+1; do
      train=${mode%+*}
      blocks=0
      [ "$mode" != "$train" ] && blocks=${mode#*+}
      out=runs/results/small_bases_modes/$family/$target/$mode
      run hpt pretrain --base "$base" --data "npz:$D/$target.npz" --steps "$STEPS" --train "$train" \
          --last-blocks "$blocks" --method mocov3 --optimizer adamw --lr 1e-4 --lr-warmup-steps 10 \
          --set weight_decay=0.05 --set mocov3.hidden_dim=1024 --image-size 32 --out "$out"
      run hpt eval linear --backbone "$out/target/backbone.safetensors" --data "npz:$D/$target.npz" \
          --image-size 32 --out "$out/linear"
    done
  done
done
