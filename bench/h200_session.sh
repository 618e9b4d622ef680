#!/usr/bin/env bash
# What one session on the lent H200 runs (bench/README.md, "GPU"), after ../shared/tools/gpu-wheels' calls
# installed onnxruntime-gpu into /tmp/site. The paraphrase MiniLM (69 MB, more than one call carries) travels
# as .gpuwhl/minilm.NN parts beside the wheel's (split -b 14000000), and is joined here.
#
#   bash bench/h200_session.sh gpu   # MiniLM through bench/gpu.py, then bench/gpu_r50_probe.py
#   bash bench/h200_session.sh llm   # a TinyLlama-sized random-weight decoder: float32, fp16, int4; decode latency
#   bash bench/h200_session.sh gpu2  # the ResNet-50 and the MiniLM through bench/gpu.py
#   bash bench/h200_session.sh tests # the GPU tests
# Everything it writes goes to $OUT (the device tool brings that folder back).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD
[ -e onnxq/passes ] || ln -s ../passes onnxq/passes  # pyproject maps passes/ to onnxq.passes; here onnxq runs from the tree
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
case "${1:-gpu}" in
install)
  dir=~/.cache/onnxq-models/paraphrase_minilm_l3
  mkdir -p "$dir" /tmp/unpack
  cat /tmp/parts/c.* | tar xf - -C /tmp/unpack && mv /tmp/unpack/minilm.onnx "$dir/model.onnx"
  md5sum "$dir/model.onnx" | tee "$OUT/minilm.md5"
  mkdir -p ../shared/models && cp -r .gpuwhl/shared_models/* ../shared/models/  # sentences, vocab (small)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/unpack/onnxruntime_gpu-*.whl \
    .gpuwhl/small/*.whl && python3 -c 'import onnxruntime as o; o.preload_dlls(); print(o.get_available_providers())'
  exit 0
  ;;
gpu)
  timeout 330 python3 bench/gpu.py --models minilm --duration 2 --json-out "$OUT/gpu_minilm.json" \
    2> "$OUT/gpu_minilm.log"
  echo "gpu.py rc=$?"
  timeout 150 python3 bench/gpu_r50_probe.py > "$OUT/r50_probe.txt" 2> "$OUT/r50_probe.log"
  echo "probe rc=$?"
  ;;
gpu2)
  timeout 540 python3 bench/gpu.py --models resnet50,minilm --duration 2 --json-out "$OUT/gpu_r50_minilm.json" \
    2> "$OUT/gpu_r50_minilm.log"
  echo "gpu.py rc=$?"
  ;;
llm)
  d=/tmp/llm
  mkdir -p $d/int4 $d/fp16
  [ -f $d/float/model.onnx ] || /usr/bin/time -f "TIME %e s %M KB" timeout 150 python3 bench/build_smollm2.py \
    --synthetic-large --no-verify --out $d/float > "$OUT/llm_build.log" 2>&1
  [ -f $d/int4/model.onnx ] || /usr/bin/time -f "TIME %e s %M KB" timeout 100 python3 -m onnxq quantize \
    $d/float/model.onnx -o $d/int4/model.onnx --weight-only int4 --block-size 128 > "$OUT/llm_int4.log" 2>&1
  [ -f $d/fp16/model.onnx ] || /usr/bin/time -f "TIME %e s %M KB" timeout 200 python3 -m onnxq fp16 \
    $d/float/model.onnx -o $d/fp16/model.onnx > "$OUT/llm_fp16.log" 2>&1
  ls -la $d/*/ > "$OUT/llm_files.txt"
  timeout 140 python3 -m onnxq bench $d/float/model.onnx $d/fp16/model.onnx $d/int4/model.onnx --decode --ep cuda \
    --runs 3 --json > "$OUT/llm_decode_cuda.json" 2> "$OUT/llm_decode_cuda.log"
  echo "decode rc=$?"
  ;;
tests)
  timeout 500 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_bench.py \
    tests/test_runtime.py tests/test_decode.py tests/test_static_shapes.py > "$OUT/gpu_tests.txt" 2>&1
  echo "tests rc=$?"
  ;;
esac
tail -n 3 "$OUT"/*.log 2>/dev/null | tail -n 40 || true
