//! Replays every file of the fuzz seed corpus (tests/fuzz/corpus/TARGET/*, crashes found by the
//! fuzzer included once fixed) through the fuzz entry points, so the normal suite catches a
//! regression without libFuzzer or an instrumented build.

#[path = "fuzz/targets.rs"]
mod targets;

use std::path::Path;

fn replay(target: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    let mut replayed = 0;
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("{target}: {}", path.display());
        assert!(targets::run(target, &data), "unknown fuzz target {target}");
        replayed += 1;
    }
    assert!(replayed > 0, "corpus {} is empty", dir.display());
    println!("{target}: replayed {replayed} corpus files");
}

#[test]
fn corpus_network_config() {
    replay("network_config");
}

#[test]
fn corpus_lease() {
    replay("lease");
}

#[test]
fn corpus_subnet_env() {
    replay("subnet_env");
}

#[test]
fn corpus_validation() {
    replay("validation");
}

#[test]
fn every_target_has_a_corpus_and_a_test() {
    for target in targets::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/corpus")
            .join(target);
        assert!(dir.is_dir(), "no corpus for fuzz target {target}");
    }
}
