#!/usr/bin/env bash
# The GPU session's measurements (docs/results.md, "Whole-network ResNet20" and "Full MNIST on a
# GPU"): real pipeline runs, each in its own copy of the project so that concurrent runs share no
# catalog. Expects the files of ../shared/data in $DATA (default: .devdata): cifar10_partial.npz and
# mnist/*.gz, and a Python with the project's packages. Writes one log and one
# tarball of every run's data/08_reporting (plus each run's log and wall time) to $OUT (default
# ./device_out).
#
#   OUT=/tmp/out bash benchmarks/device_runs.sh
#
# Order: a short smoke run of every code path (stops everything on failure), the INR step
# benchmark alone on the device, then the runs. Runs that do not depend on each other share the
# GPU concurrently, so their wall times are upper bounds of what each costs alone.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/device_out}
WORK=${WORK:-/tmp/neumeta_runs}
DATA=${DATA:-$ROOT/.devdata}
PY=${PY:-python3}
export KEDRO_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$OUT" "$WORK/collect"
exec > >(tee -a "$OUT/log.txt") 2>&1

collect() {  # re-pack everything finished so far (atomic, so a timeout still leaves a valid file)
    tar -czf "$OUT/.results.$BASHPID" -C "$WORK/collect" . && mv "$OUT/.results.$BASHPID" "$OUT/results.tgz"
}

copy_tree() {  # copy_tree SRC NAME: a private copy of a project tree (code, conf and data)
    rm -rf "$WORK/$2" && cp -r "$1" "$WORK/$2"
}

run() {  # run NAME KEDRO_ARGS...: kedro run in $WORK/NAME, then collect its reports
    local name=$1; shift
    local start=$(date +%s%N)
    (cd "$WORK/$name" && $PY -m kedro run "$@" > "$WORK/$name.log" 2>&1)
    local rc=$? end=$(date +%s%N)
    mkdir -p "$WORK/collect/$name"
    cp -r "$WORK/$name/data/08_reporting" "$WORK/collect/$name/" 2>/dev/null
    tail -c 20000 "$WORK/$name.log" | tr '\r' '\n' > "$WORK/collect/$name/kedro.log"
    printf '%s rc=%s wall_s=%.1f args=%s\n' "$name" "$rc" "$(( (end - start) / 1000000 ))e-3" "$*" | tee -a "$WORK/collect/times.txt"
    collect
    return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, kedro; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'kedro', kedro.__version__)"

# Template tree: the checkout without build outputs (runs write into their own copies).
copy_tree "$ROOT" base && rm -rf "$WORK/base/.git" "$WORK/base/.whl" "$WORK/base/.venv" "$WORK/base/.devdata" "$WORK/base/device_out"
mkdir -p "$WORK/base/data/01_raw/MNIST/raw" && cp "$DATA/cifar10_partial.npz" "$WORK/base/data/01_raw/" \
    && for f in "$DATA"/mnist/*.gz; do gunzip -c "$f" > "$WORK/base/data/01_raw/MNIST/raw/$(basename "$f" .gz)"; done \
    || { echo "data missing in $DATA"; exit 1; }

# 1. Smoke: every stage and every whole-network option, a few steps each.
copy_tree "$WORK/base" smoke
T=cifar10_subset_full
run smoke --pipelines=$T --params="$T.pretrain.epochs=1,$T.train_inr.reconstruction_steps=5,$T.train_inr.epochs=1,$T.sample.samples=2,$T.inr.layout=per_tensor,$T.inr.shared=all,$T.inr.branch_scale=layer*.conv2,$T.train_inr.block_epochs=1,$T.train_inr.block_init=predecessor" \
    || { echo "SMOKE FAILED"; tail -n 60 "$WORK/smoke.log"; exit 1; }

# 2. INR step cost, alone on the device.
(cd "$ROOT" && PYTHONPATH="$ROOT/src:${PYTHONPATH:-}" $PY benchmarks/bench_inr.py --device cuda --steps 40 --sample-repeats 3) \
    > "$WORK/collect/bench_inr.txt" 2>&1; tail -n 30 "$WORK/collect/bench_inr.txt"; collect

# 3. The runs. Independent chains start together.
for name in r20 r20_individual mnist mnist_individual; do copy_tree "$WORK/base" $name; done
run r20_individual --pipelines=${T}_individual &
run mnist_individual --pipelines=mnist_individual &
(
    run mnist --pipelines=mnist || exit 1
    copy_tree "$WORK/mnist" mnist_new
    run mnist_new --pipelines=mnist --from-nodes=mnist.train_inr \
        --params="mnist.inr.centred=true,mnist.inr.noise_scaling=width,mnist.train_inr.width_sampling=uniform,mnist.train_inr.lambda_kd=1.0,mnist.train_inr.kd_temperature=2.0"
) &
(
    run r20 --pipelines=$T || exit 1
    F="--from-nodes=$T.train_inr"
    declare -A variants=(
        [r20_per_tensor]="$T.inr.layout=per_tensor"
        [r20_wide_mlp]="$T.inr.hidden=256,$T.inr.depth=5"
        [r20_shared]="$T.inr.shared=all"
        [r20_htty_compact]="$T.inr.shared=all,$T.inr.branch_scale=layer*.conv2,$T.train_inr.block_epochs=1,$T.train_inr.block_init=keep"
        [r20_htty_per_tensor]="$T.inr.layout=per_tensor,$T.inr.shared=all,$T.inr.branch_scale=layer*.conv2,$T.train_inr.block_epochs=1,$T.train_inr.block_init=predecessor"
    )
    for name in "${!variants[@]}"; do
        copy_tree "$WORK/r20" $name
        run $name --pipelines=$T $F --params="${variants[$name]}" &
    done
    wait
) &
wait
cat "$WORK/collect/times.txt"
