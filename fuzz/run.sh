#!/usr/bin/env bash
# Coverage-guided fuzzing of cartdb's decoders with AFL++ (via cargo-afl, from crates.io; the
# stable toolchain is enough). Not part of `.ci/run`: building AFL++ and the instrumented targets
# takes ~10 minutes; CI runs the property-based stand-in (fuzz/tests/stand_in.rs) instead.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET…]     (default 60 s; every target)
#   UPDATE_CORPUS=1 fuzz/run.sh 600                (also keep what AFL++ found in fuzz/corpus/)
#
# Targets: public_request peer_message stored_cart layout (fuzz/src/lib.rs). Each run starts from
# the seeds and the checked-in corpus, stops after its time, and the script prints per target
# the executions, paths found, crashes and hangs from AFL++'s fuzzer_stats, then the totals. It
# exits non-zero if any crash or hang was saved (they stay in target/afl/out/TARGET/default/).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=${*:-public_request peer_message stored_cart layout}
OUT=target/afl

if ! command -v cargo-afl >/dev/null 2>&1; then
    cargo install cargo-afl --locked --version 0.18.2
fi
# Builds AFL++'s runtime for this rustc once (an error only says it is built already).
cargo afl config --build >/dev/null 2>&1 || true
cargo run -q -p cart-fuzz --bin cart-fuzz-seeds -- "$OUT/seeds"
(cd fuzz/afl && CARGO_TARGET_DIR=../../$OUT cargo afl build --release)

total_execs=0
total_bad=0
for t in $TARGETS; do
    input="$OUT/in/$t"
    rm -rf "$input" "$OUT/out/$t"
    mkdir -p "$input" "$OUT/out"
    cp "$OUT/seeds/$t"/* "$input"/
    cp fuzz/corpus/"$t"/* "$input"/ 2>/dev/null || true
    echo "fuzzing $t for ${SECONDS_PER_TARGET}s"
    # -m: memory limit (MB) per execution; -t: ms per execution before it counts as a hang.
    AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_QUIET=1 \
        cargo afl fuzz -V "$SECONDS_PER_TARGET" -m 1024 -t 1000 -i "$input" -o "$OUT/out/$t" \
        "$OUT/release/$t" >"$OUT/out/$t.log" 2>&1 || {
        echo "afl-fuzz failed for $t; its log:" >&2
        tail -30 "$OUT/out/$t.log" >&2
        exit 1
    }
    stats="$OUT/out/$t/default/fuzzer_stats"
    stat() { awk -F' *: *' -v k="$1" '$1 == k {print $2}' "$stats"; }
    execs=$(stat execs_done)
    crashes=$(stat saved_crashes)
    hangs=$(stat saved_hangs)
    echo "  $t: $execs executions, $(stat corpus_count) inputs in the queue, $crashes crashes, $hangs hangs, $(stat execs_per_sec) execs/s"
    total_execs=$((total_execs + execs))
    total_bad=$((total_bad + crashes + hangs))
    if [[ ${UPDATE_CORPUS:-0} == 1 ]]; then
        mkdir -p fuzz/corpus/"$t"
        # The inputs that found new coverage (AFL++ marks them +cov): the corpus to keep.
        for f in "$OUT/out/$t/default/queue"/id:*+cov*; do
            cp "$f" "fuzz/corpus/$t/$(sha1sum "$f" | cut -c1-16)"
        done
    fi
done
echo "total: $total_execs executions, $total_bad crashes and hangs"
[[ $total_bad == 0 ]]
