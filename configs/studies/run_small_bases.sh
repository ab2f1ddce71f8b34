#!/usr/bin/env bash
# hpt's own small ViT and ConvNeXt bases: trained in one sitting each on CIFAR-10 (MoCo v3, AdamW), then scored
# with the linear protocol on CIFAR-10 and on FashionMNIST (at 32 px: the ConvNeXt's 2x2 stem needs 32), beside the
# ResNet-18 base that ships with hpt (src/hpt/assets, 96,000 MoCo-v2 steps); and the ViT's layers against the
# ResNet's (linear CKA on CIFAR-10 images).
# The two trainings may run at once (1 thread each); the step counts fit about 100 minutes of a 2-core CPU.
. "$(dirname "$0")/common.sh"
D=$(realpath ../shared/data)
for family in vit convnext; do
  [ -f runs/base_cifar10_$family/base/summary.json ] || \
    run hpt run configs/examples/base_cifar10_$family.yaml --out runs/base_cifar10_$family
done
RESNET=src/hpt/assets/base_cifar10_w16.safetensors
# each base, and random weights of the same architecture (what pretraining added)
for name in vit convnext resnet random_vit random_convnext; do
  backbone="--backbone runs/base_cifar10_$name/base/backbone.safetensors"
  case $name in
    resnet) backbone="--backbone $RESNET" ;;
    random_vit) backbone="--backbone random --arch vit_tiny_patch8_32" ;;
    random_convnext) backbone="--backbone random --arch convnext_atto_patch2" ;;
  esac
  # shellcheck disable=SC2086
  run hpt eval linear $backbone --data npz:$D/cifar10_32.npz --out runs/results/small_bases/$name/cifar10
  # shellcheck disable=SC2086
  run hpt eval linear $backbone --data npz:$D/fashionmnist_28.npz --image-size 32 \
      --out runs/results/small_bases/$name/fashionmnist
done
run hpt analyze similarity runs/base_cifar10_vit/base/backbone.safetensors $RESNET --name vit --name resnet \
    --data npz:$D/cifar10_32.npz --out runs/results/small_bases/vit_vs_resnet
