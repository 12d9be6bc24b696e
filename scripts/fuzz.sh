#!/usr/bin/env bash
# Fuzzes the pgoutput decoder and the outbox router's row mapping (plus the
# NDJSON encoder) with libFuzzer (swiftc -sanitize=fuzzer,address).
# Seeds: the captured fixtures, as runs of consecutive messages. Crashing
# inputs land in fuzz/crashes/; keep them as regression fixtures.
#
#   bash scripts/fuzz.sh [runs=10000000] [extra libFuzzer flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10000000}; shift || true
out=fuzz/out
mkdir -p "$out/corpus" fuzz/crashes
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name PGOutput \
  Sources/PGOutput/*.swift Sources/OutboxRelay/{OutboxRouter,OutboxEvent,JSONText,UTF8Text}.swift \
  fuzz/DecoderFuzz.swift -o "$out/decoder-fuzz" 2>"$out/build.log" || { cat "$out/build.log" >&2; exit 1; }
python3 - "$out/corpus" <<'PY'
import os, sys, glob
out = sys.argv[1]
for path in glob.glob("Tests/TestFixtures/Fixtures/*.hex"):
    version = {"v1": 0, "v2": 1, "v3": 2}[os.path.basename(path)[:2]]
    msgs = [bytes.fromhex(l) for l in open(path).read().split()]
    msgs = [m for m in msgs if len(m) < 4000]
    for start in range(0, len(msgs), 7):
        chunk = msgs[start:start + 12]
        data = bytes([version]) + b"".join(len(m).to_bytes(2, "big") + m for m in chunk)
        open(os.path.join(out, f"{os.path.basename(path)}-{start}"), "wb").write(data)
PY
"$out/decoder-fuzz" "$out/corpus" -runs="$runs" -max_len=8192 -artifact_prefix=fuzz/crashes/ -print_final_stats=1 "$@" 2>&1 | tail -25
