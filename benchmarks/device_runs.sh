#!/usr/bin/env bash
# One GPU session's measurements (docs/results.md, "Whole-network ResNet20"): real pipeline runs,
# each in its own copy of the project so that concurrent runs share no catalog. Expects the files
# of ../shared/data in $DATA (default: .devdata): cifar10_partial.npz. Writes a log and one tarball
# of every run's data/08_reporting (histories included) (plus each run's log and wall time) to $OUT
# (default ./device_out). Earlier sessions' lists of runs are this file at commits fdf71c2 and
# 3228922.
#
#   OUT=/tmp/out bash benchmarks/device_runs.sh
#
# The question (2026-11-30): the CIFAR-10 subset's whole-network goal (within 2 points of the
# individually trained networks at 25, 50 and 75%) on seeds 0-4 of the committed defaults, both
# methods on one machine, and what each costs on a GPU. Every seed runs the whole NeuMeta
# pipeline (pretraining included) concurrently; one chain trains the individual networks of the
# five seeds one after the other beside them. Runs share the GPU and the cores, so wall times are
# upper bounds of what each costs alone. EXTRA appends parameters to every run (a smoke run on a
# CPU: EXTRA=",$T.pretrain.epochs=1,..." with SEEDS="0").
#
# What the device image lacks travels as wheels for Python 3.12 in .whl (the device tool's README
# says how): kedro==1.7.0 kedro-datasets==9.6.0 cachetools==7.3.3 dynaconf==3.3.5
# more-itertools==11.2.1 omegaconf==2.4.0 parse==1.22.4 plotly==7.1.0 pydantic==2.14.3
# pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 python-tsp==0.5.0
# tomli-w==1.2.0 typing-extensions==4.16.0 torch-pruning==1.6.1 (the last is imported only when a
# table counts parameters and MACs, after training: the 2026-11-30 session lacked it).
# Budget: on one H200, five concurrent NeuMeta runs kept the GPU 97-99% busy and each needed about
# ten minutes, more than one call; they finished from their resume files in a second call (RESUME=1).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/device_out}
WORK=${WORK:-/tmp/neumeta_runs}
DATA=${DATA:-$ROOT/.devdata}
PY=${PY:-python3}
SEEDS=${SEEDS:-0 1 2 3 4}
EXTRA=${EXTRA:-}
LIMIT=${LIMIT:-540}             # seconds any one run may take, so that every run's reports come back
export KEDRO_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$OUT" "$WORK/collect"
exec > >(tee -a "$OUT/log.txt") 2>&1
T=cifar10_subset_full

collect() {  # re-pack everything finished so far (atomic, so a timeout still leaves a valid file)
    tar -czf "$OUT/.results.$BASHPID" -C "$WORK/collect" . && mv "$OUT/.results.$BASHPID" "$OUT/results.tgz"
}

run() {  # run NAME FROM KEDRO_ARGS...: copy project tree FROM to NAME (unless FROM is NAME), kedro run there, collect its reports
    local name=$1 from=$2; shift 2
    [ "$from" = "$name" ] || { rm -rf "$WORK/$name" && cp -r "$WORK/$from" "$WORK/$name"; }
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
# Every package a run imports, before any run starts (a missing wheel fails here, in seconds).
$PY -c "import kedro_datasets.json, kedro_datasets.pandas, kedro_datasets.plotly, kedro_datasets.matplotlib, omegaconf, dynaconf, pydantic, python_tsp.heuristics, torch_pruning" || exit 1

# RESUME=1, in a second call on the same warm machine, finishes runs in their own folders: NeuMeta
# from train_inr (its resume file continues the INR at its last finished epoch), the individual
# networks from their evaluation. Pretraining is not rerun: on a GPU it is not bit-reproducible, and
# the resume file is keyed to its inputs' content.
RESUME=${RESUME:-}
NEU=${RESUME:+--from-nodes=$T.train_inr}
IND=${RESUME:+--from-nodes=$T.evaluate_individual}

# Template tree: the checkout without build outputs or data (runs write into their own copies).
if [ -z "$RESUME" ]; then
    rm -rf "$WORK/base" && mkdir -p "$WORK/base" && tar -C "$ROOT" --exclude=./.git --exclude=./.whl --exclude=./.venv \
            --exclude=./.devdata --exclude=./device_out --exclude=./mlruns --exclude=./mlflow.db --exclude='./data/0*/*' -cf - . \
        | tar -C "$WORK/base" -xf - && cp "$DATA/cifar10_partial.npz" "$WORK/base/data/01_raw/" \
        || { echo "template tree failed, or data missing in $DATA"; exit 1; }
fi
tree_of() { if [ -n "$RESUME" ]; then echo "$1"; else echo base; fi; }   # the tree a run starts from

nvidia-smi dmon -s u -d 15 > "$OUT/dmon.txt" 2>&1 &   # GPU load through the runs
DMON=$!
PIDS=()
for S in $SEEDS; do
    run neumeta_s$S "$(tree_of neumeta_s$S)" --pipelines=$T $NEU --params="tracking=false,$T.seed=$S$EXTRA" &
    PIDS+=($!)
done
(
    for S in $SEEDS; do
        run individual_s$S "$(tree_of individual_s$S)" --pipelines=${T}_individual $IND --params="tracking=false,$T.seed=$S$EXTRA"
    done
) &
PIDS+=($!)
wait "${PIDS[@]}"
kill $DMON 2>/dev/null
cat "$WORK/collect/times.txt"
