#!/usr/bin/env bash
# Issue 7 checks on ../shared/data with the demo base at step 1900 (CPU).
cd /work/main && . .venv/bin/activate
export OMP_NUM_THREADS=2
D=/work/shared/data
S=runs/demo_dry/out/stages
HPT=$S/target-770da19aa276/target/backbone.safetensors
TGT=$S/target-04213ad28c29/target/backbone.safetensors
BN=$(ls -d $S/target-bn-*/target-bn | head -1)/backbone.safetensors
echo "HPT=$HPT BN=$BN"
/usr/bin/time -f "wall %e s" hpt analyze similarity runs/demo_dry/base.safetensors $HPT $BN $TGT --data npz:runs/demo_dry/fashion_demo.npz --out runs/issue7/similarity
/usr/bin/time -f "wall %e s" hpt analyze depth runs/demo_dry/base.safetensors --data npz:$D/fashionmnist_28.npz --out runs/issue7/depth_fashion
/usr/bin/time -f "wall %e s" hpt pretrain --base runs/demo_dry/base.safetensors --data npz:runs/demo_dry/fashion_demo.npz --steps 400 --lr 0.06 --image-size 28 --remove-aug gaussian_blur --out runs/issue7/stop --name fashion --stop-when-converged --probe-every 25 --probe-patience 3 --probe-margin 0.002 --checkpoint-every 25
for m in simclr byol; do
  /usr/bin/time -f "wall %e s" hpt pretrain --base runs/demo_dry/base.safetensors --data npz:runs/demo_dry/fashion_demo.npz --steps 30 --lr 0.06 --image-size 28 --method $m --out runs/issue7/$m --name fashion --checkpoint-every 30
  grep -E "^30," runs/issue7/$m/fashion/metrics.csv; head -1 runs/issue7/$m/fashion/metrics.csv; sed -n 2p runs/issue7/$m/fashion/metrics.csv
done
echo ALL DONE
