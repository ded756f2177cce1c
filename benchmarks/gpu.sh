#!/usr/bin/env bash
# Every full-size benchmark on one GPU within 8 minutes, on this version's paths (the
# generation engine, joint inversion in fp16 mixed precision, faithful ESD, the classifier
# at each classifier.precision, one UNet forward eager/channels-last/compiled): each stage's
# per-unit cost and its fraction of the bf16 peak, and a costs file the estimate reads:
#
#   benchmarks/gpu.sh OUT           # GPU: SD v1.4's architecture, random weights, 512 px
#   benchmarks/gpu.sh --tiny OUT    # CPU smoke run of the same commands at toy sizes
#   benchmarks/gpu.sh --sdxl OUT    # GPU: SDXL base's architecture at 1024 px, on its own
#                                   # (another 8 minutes): the engine against batched
#                                   # diffusers, images/s and peak memory, the UNet and VAE
#                                   # alone at batch 1, 4, 8 (benchmarks/sdxl.py)
#   benchmarks/gpu.sh --tiny --sdxl OUT   # CPU smoke run of that one
#   python -m dafusion.workflow.estimate config/paper.yaml --costs OUT/costs.json
#
# OUT gets costs.json, one log per benchmark and estimate.md; the random model they share is
# written once to $MODEL_DIR (default /tmp/dafusion-sd, or -tiny). DAFUSION_PEAK_TFLOPS is the peak the
# fractions are of (default 989, an H200's dense bf16); each benchmark also prints the
# fraction of the matmul peak it measures on the spot. Where diffusers is missing (a bare
# GPU machine), the wheels in $WHEELS (default .whl: diffusers, as docs/benchmarks.md says)
# are installed into /tmp/site first. Run from the repository's root.
set -euo pipefail

tiny=false sdxl=false
while [[ "${1:-}" == --* ]]; do
    case "$1" in
        --tiny) tiny=true ;;
        --sdxl) sdxl=true ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
out="${1:?usage: benchmarks/gpu.sh [--tiny] [--sdxl] OUT}"
python="${PYTHON:-python3}"
mkdir -p "$out"
costs="$out/costs.json"
rm -f "$costs"

if ! "$python" -c "import diffusers" 2>/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${WHEELS:-.whl}"/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if $tiny; then
    size=() model=(--model-dir "${MODEL_DIR:-/tmp/dafusion-tiny}")
    generation=(--images 2 --num-synthetic 2 --steps 4 --batch-size 4)
    inversion=(--classes 2 --steps 2) erasure=(--iterations 1 --classes 2)
    classifier=(--classes 3 --steps 4 --eval-interval 2) unet=(--batch-sizes 2 --repeats 1 --skip-compile)
else
    size=(--full-size) model=(--model-dir "${MODEL_DIR:-/tmp/dafusion-sd}")
    generation=(--images 8 --num-synthetic 4 --batch-size 32 --dtype bfloat16)
    inversion=(--classes 20 --steps 20) erasure=(--iterations 4)
    classifier=(--steps 1000) unet=(--batch-sizes 64)
fi

# name, seconds it may take at most (its share of the 8 minutes), command; a benchmark that
# fails or runs out of time is reported, and the others still run.
run() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "== $name: $*"
    if timeout "$limit" "$python" "$@" 2>&1 | tee "$out/$name.log"; then
        echo "== $name: $((SECONDS - start)) s"
    else
        echo "== $name: FAILED or over its $limit s after $((SECONDS - start)) s"
    fi
}

if $sdxl; then
    # The random SDXL (7 GB in float16) is written once to $SDXL_DIR; its first run spends
    # a minute or two writing it, within the limit.
    if $tiny; then
        sdxl_args=(--model-dir "${SDXL_DIR:-/tmp/dafusion-tiny-sdxl}" --images 2 --steps 4
            --batch-size 4 --alone-batches 1,2)
    else
        sdxl_args=(--full-size --model-dir "${SDXL_DIR:-/tmp/dafusion-sdxl}" --dtype float16
            --images 4 --num-synthetic 2 --steps 30 --batch-size 8 --alone-batches 1,4,8)
    fi
    run sdxl 420 benchmarks/sdxl.py "${sdxl_args[@]}" --costs "$costs"
    echo "== $SECONDS s in all"
    exit 0
fi

run generation 150 benchmarks/generation.py "${size[@]}" "${model[@]}" "${generation[@]}" \
    --skip-compiled --skip-per-image --costs "$costs"
run inversion 70 benchmarks/inversion.py "${size[@]}" "${model[@]}" "${inversion[@]}" \
    --skip-reference --costs "$costs"
run erasure 60 benchmarks/erasure.py "${size[@]}" "${model[@]}" "${erasure[@]}" --costs "$costs"
run classifier 100 benchmarks/classifier.py "${size[@]}" "${classifier[@]}" \
    --compare-precision --costs "$costs"
run unet 80 benchmarks/unet.py "${size[@]}" "${unet[@]}"
echo "== the paper's grid at these costs (python -m dafusion.workflow.estimate config/paper.yaml --costs $costs)"
"$python" -m dafusion.workflow.estimate config/paper.yaml --costs "$costs" | tee "$out/estimate.md"
echo "== $SECONDS s in all"
