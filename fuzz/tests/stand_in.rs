//! The property-based stand-in for the coverage-guided fuzzers (which need AFL++, see
//! `fuzz/run.sh`): every target gets its seeds, every input in the checked-in corpus
//! (`fuzz/corpus/<target>/`, what AFL++ kept), random mutations of the seeds (bytes flipped,
//! cut, inserted) and random bytes. A target must return for each; a panic fails the test.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Cases per target and kind (random mutations, random bytes); `CARTDB_FUZZ_CASES` raises it.
fn cases() -> u32 {
    std::env::var("CARTDB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn every_target_takes_its_seeds_and_the_checked_in_corpus() {
    for (name, target) in cart_fuzz::TARGETS {
        let seeds = cart_fuzz::seeds(name);
        assert!(!seeds.is_empty(), "{name} has seeds");
        for seed in &seeds {
            target(seed);
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(name);
        let mut replayed = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            target(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
        assert!(replayed > 0, "no corpus for {name} in {}", dir.display());
    }
}

/// One mutation of a seed: flip, cut or insert bytes at positions drawn from `edits`.
fn mutate(seed: &[u8], edits: &[(u8, u16, u8)]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for &(kind, at, byte) in edits {
        let at = if out.is_empty() { 0 } else { at as usize % out.len() };
        match kind % 4 {
            0 if !out.is_empty() => out[at] ^= byte.max(1),
            1 => out.insert(at, byte),
            2 if !out.is_empty() => {
                out.remove(at);
            }
            _ => out.truncate(at),
        }
    }
    out
}

#[test]
fn every_target_takes_mutated_seeds_and_random_bytes() {
    for (name, target) in cart_fuzz::TARGETS {
        let seeds = cart_fuzz::seeds(name);
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        });
        let edits = (
            0..seeds.len(),
            prop::collection::vec((any::<u8>(), any::<u16>(), any::<u8>()), 1..8),
        );
        runner
            .run(&edits, |(seed, edits)| {
                target(&mutate(&seeds[seed], &edits));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        runner
            .run(&prop::collection::vec(any::<u8>(), 0..512), |bytes| {
                target(&bytes);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
