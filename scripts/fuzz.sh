#!/usr/bin/env bash
# Fuzzes the relay's pure core — replication framing, the pgoutput decoder,
# the stream state machine, the outbox router, the NDJSON encoder and the
# delivery machine every destination shares — with
# libFuzzer (swiftc -sanitize=fuzzer,address). The modules PGOutput and
# OutboxCore are built whole, each as its own module (so the target sees only
# their public API, as the relay does); fuzz/DecoderFuzz.swift drives them,
# and fuzz/DeliveryFuzz.swift drives the delivery machine against a simulated
# destination (random acks, losses, refusals, holds) checking its invariants.
# Seeds: the captured fixtures, as runs of consecutive messages. Crashing
# inputs land in fuzz/crashes/; keep them as regression fixtures.
#
#   bash scripts/fuzz.sh [runs=10000000] [extra libFuzzer flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
# A failing invariant traps; Swift's backtracer under ASan can hang instead of exiting.
export SWIFT_BACKTRACE=enable=no
runs=${1:-10000000}; shift || true
out=fuzz/out
mkdir -p "$out/corpus" "$out/modules" fuzz/crashes
flags=(-O -sanitize=fuzzer,address -parse-as-library)
build_module() { # name [dependencies are found in $out/modules]
  swiftc "${flags[@]}" -wmo -module-name "$1" -I "$out/modules" -emit-module-path "$out/modules/$1.swiftmodule" \
    -emit-object -o "$out/modules/$1.o" Sources/"$1"/*.swift
}
{
  build_module PGOutput && build_module OutboxCore &&
    swiftc "${flags[@]}" -I "$out/modules" "$out/modules/PGOutput.o" "$out/modules/OutboxCore.o" \
      fuzz/DecoderFuzz.swift -o "$out/decoder-fuzz" &&
    swiftc "${flags[@]}" -I "$out/modules" "$out/modules/PGOutput.o" "$out/modules/OutboxCore.o" \
      fuzz/DeliveryFuzz.swift -o "$out/delivery-fuzz"
} 2>"$out/build.log" || { cat "$out/build.log" >&2; exit 1; }
python3 - "$out/corpus" <<'PY'
import os, sys, glob
out = sys.argv[1]
for path in glob.glob("Tests/TestFixtures/Fixtures/*.hex"):
    # Flags byte: protocol version, and the outbox's schema (the router fixtures use "loose").
    version = {"v1": 0, "v2": 1, "v3": 2, "v4": 3}[os.path.basename(path)[:2]] | (0x40 if "router" in path else 0)
    msgs = [bytes.fromhex(l) for l in open(path).read().split()]
    msgs = [m for m in msgs if len(m) < 4000]
    for start in range(0, len(msgs), 7):
        chunk = msgs[start:start + 12]
        data = bytes([version]) + b"".join(len(m).to_bytes(2, "big") + m for m in chunk)
        open(os.path.join(out, f"{os.path.basename(path)}-{start}"), "wb").write(data)
PY
"$out/decoder-fuzz" "$out/corpus" -runs="$runs" -max_len=8192 -artifact_prefix=fuzz/crashes/ -print_final_stats=1 "$@" 2>&1 | tail -25
mkdir -p "$out/delivery-corpus"
printf '\x00\x01\x02\x30\x40\x70\x41\x71\xb0\xe5\x30\x42\x72' >"$out/delivery-corpus/seed"
"$out/delivery-fuzz" "$out/delivery-corpus" -runs="$runs" -max_len=512 -artifact_prefix=fuzz/crashes/delivery- -print_final_stats=1 "$@" 2>&1 | tail -25
