#!/usr/bin/env bash
# One GPU session's measurements (docs/results.md, "Whole-network ResNet20"): real pipeline runs,
# each in its own copy of the project so that concurrent runs share no catalog. Expects the files
# of ../shared/data in $DATA (default: .devdata): cifar10_partial.npz. Writes a log and one tarball
# of every run's data/08_reporting (histories included) (plus each run's log and wall time) to $OUT
# (default ./device_out). The previous session's list of runs is this file at commit fdf71c2.
#
#   OUT=/tmp/out bash benchmarks/device_runs.sh
#
# The question: does whole-network ResNet20 leave chance level once the warm start can reproduce
# the pretrained network (a larger INR), and what does the compact layout give at twice its width?
# One pretrained network serves every NeuMeta run (--from-nodes=train_inr); the individually
# trained networks get the pretraining budget and, second, the budget of pretraining plus the INR's
# epochs. Runs share the GPU concurrently, so wall times are upper bounds of what each costs alone.
# Budgets can be shrunk through the environment for a smoke run on a CPU (see the variables).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/device_out}
WORK=${WORK:-/tmp/neumeta_runs}
DATA=${DATA:-$ROOT/.devdata}
PY=${PY:-python3}
PRE_EPOCHS=${PRE_EPOCHS:-15}    # pretraining (the committed recipe)
REC_STEPS=${REC_STEPS:-3000}    # INR warm start
INR_EPOCHS=${INR_EPOCHS:-20}    # INR task training
SAMPLES=${SAMPLES:-50}          # K at evaluation
LIMIT=${LIMIT:-470}             # seconds any one run may take, so that every run's reports come back
export KEDRO_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$OUT" "$WORK/collect"
exec > >(tee -a "$OUT/log.txt") 2>&1
T=cifar10_subset_full

collect() {  # re-pack everything finished so far (atomic, so a timeout still leaves a valid file)
    tar -czf "$OUT/.results.$BASHPID" -C "$WORK/collect" . && mv "$OUT/.results.$BASHPID" "$OUT/results.tgz"
}

run() {  # run NAME FROM KEDRO_ARGS...: copy project tree FROM to NAME, kedro run there, collect its reports
    local name=$1 from=$2; shift 2
    rm -rf "$WORK/$name" && cp -r "$WORK/$from" "$WORK/$name"
    local start=$(date +%s%N)
    (cd "$WORK/$name" && timeout "$LIMIT" $PY -m kedro run "$@" > "$WORK/$name.log" 2>&1)
    local rc=$? end=$(date +%s%N)
    mkdir -p "$WORK/collect/$name"
    cp -r "$WORK/$name/data/08_reporting" "$WORK/collect/$name/" 2>/dev/null
    tr "\r" "\n" < "$WORK/$name.log" | grep -a -E "warm start|INR stage|best mean|Error" | tail -n 40 > "$WORK/collect/$name/summary.txt"
    tail -c 20000 "$WORK/$name.log" | tr '\r' '\n' > "$WORK/collect/$name/kedro.log"
    printf '%s rc=%s wall_s=%.1f args=%s\n' "$name" "$rc" "$(( (end - start) / 1000000 ))e-3" "$*" | tee -a "$WORK/collect/times.txt"
    collect
    return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import torch, kedro; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'kedro', kedro.__version__)"

# Template tree: the checkout without build outputs (runs write into their own copies).
rm -rf "$WORK/base" && cp -r "$ROOT" "$WORK/base" \
    && rm -rf "$WORK/base/.git" "$WORK/base/.whl" "$WORK/base/.venv" "$WORK/base/.devdata" "$WORK/base/device_out" "$WORK/base/data"/0*/* \
    && cp "$DATA/cifar10_partial.npz" "$WORK/base/data/01_raw/" || { echo "data missing in $DATA"; exit 1; }

COMMON="tracking=false,$T.pretrain.epochs=$PRE_EPOCHS,$T.sample.samples=$SAMPLES"
INR="$T.train_inr.reconstruction_steps=$REC_STEPS,$T.train_inr.epochs=$INR_EPOCHS"

# The shared pretrained, permuted, fused network.
run pretrained base --pipelines=$T --to-nodes=$T.fuse_batchnorm --params="$COMMON" || { echo "PRETRAIN FAILED"; tail -n 60 "$WORK/pretrained.log"; exit 1; }

F="--from-nodes=$T.train_inr"
run per_tensor pretrained --pipelines=$T $F --params="$COMMON,$INR,$T.inr.layout=per_tensor" &
run per_kind_256 pretrained --pipelines=$T $F --params="$COMMON,$INR,$T.inr.hidden=256" &
run per_kind pretrained --pipelines=$T $F --params="$COMMON,$INR" &
(
    run individual base --pipelines=${T}_individual --params="$COMMON"
    run individual_long base --pipelines=${T}_individual --params="tracking=false,$T.pretrain.epochs=$((PRE_EPOCHS + INR_EPOCHS))"
) &
wait
cat "$WORK/collect/times.txt"
