//! The cargo-fuzz targets of `fuzz/`, run on stable: every file of each
//! target's corpus (`fuzz/corpus/<target>/`, seeds plus whatever fuzzing
//! runs added), then pseudo-random mutations of them (bit flips,
//! truncations, splices, dictionary tokens, random bytes), through the same
//! target functions the fuzzer calls. `fuzz/README.md` tells how to fuzz
//! them for real (nightly, `cargo fuzz run`).
//!
//! `FUZZ_CORPUS_MUTATIONS` sets how many mutated inputs each target gets
//! (default: a few thousand, seconds in a debug build).

// The targets name the models `crate::models`, as in the fuzz crate.
use polls::models;

#[path = "../fuzz/src/targets.rs"]
mod targets;

use cached_instances_testkit::rng::Rng;
use std::path::PathBuf;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// The dictionary the fuzzer uses (`fuzz/json.dict`), unescaped.
fn dictionary() -> Vec<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/json.dict");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix('"')?.strip_suffix('"'))
        .map(|token| {
            let mut out = Vec::new();
            let mut bytes = token.bytes();
            while let Some(b) = bytes.next() {
                match (b, bytes.clone().next()) {
                    (b'\\', Some(b'x')) => {
                        bytes.next();
                        let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                        out.push(u8::from_str_radix(&hex, 16).unwrap());
                    }
                    (b'\\', Some(escaped)) => {
                        bytes.next();
                        out.push(escaped);
                    }
                    _ => out.push(b),
                }
            }
            out
        })
        .collect()
}

/// A mutation of a corpus input, in the spirit of libFuzzer's.
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], dict: &[Vec<u8>]) -> Vec<u8> {
    let mut input = corpus[rng.index(corpus.len())].clone();
    for _ in 0..1 + rng.index(4) {
        let at = rng.index(input.len() + 1);
        match rng.index(7) {
            0 if !input.is_empty() => {
                let i = rng.index(input.len());
                input[i] ^= 1 << rng.index(8);
            }
            1 => input.truncate(at),
            2 if !input.is_empty() => {
                let end = (at + rng.index(8)).min(input.len());
                input.drain(at.min(end)..end);
            }
            3 => {
                let token = &dict[rng.index(dict.len())];
                input.splice(at..at, token.iter().copied());
            }
            4 => {
                let other = &corpus[rng.index(corpus.len())];
                let from = rng.index(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            5 => {
                let byte = rng.next_u64() as u8;
                input.insert(at, byte);
            }
            _ => {
                let len = rng.index(32);
                input = (0..len).map(|_| rng.next_u64() as u8).collect();
            }
        }
    }
    input
}

fn mutations() -> usize {
    std::env::var("FUZZ_CORPUS_MUTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5_000)
}

fn run(target: &str, mutated: usize, seed: u64, f: fn(&[u8])) {
    let corpus = corpus(target);
    for input in &corpus {
        f(input);
    }
    let dict = dictionary();
    let mut rng = Rng::new(seed);
    for _ in 0..mutated {
        let input = mutate(&mut rng, &corpus, &dict);
        // Printed only when the target panics (the test then fails with it).
        let guard = PrintOnPanic(&input);
        f(&input);
        std::mem::forget(guard);
    }
    eprintln!(
        "{target}: {} corpus files, {mutated} mutations",
        corpus.len()
    );
}

/// Prints the failing input, so it can be added to the corpus.
struct PrintOnPanic<'a>(&'a [u8]);

impl Drop for PrintOnPanic<'_> {
    fn drop(&mut self) {
        eprintln!("failing input: {:?}", String::from_utf8_lossy(self.0));
    }
}

#[test]
fn decode_corpus_and_mutations() {
    run("decode", mutations() * 4, 1, targets::decode);
}

#[test]
fn keys_corpus_and_mutations() {
    run("keys", mutations() * 4, 2, targets::keys);
}

#[test]
fn cache_read_corpus_and_mutations() {
    run("cache_read", mutations(), 3, targets::cache_read);
}

/// The seeds say what they should: the valid representation is served
/// as it is, and the shaped garbage shows the documented gap of the JSON
/// reads (served without decoding; `get` refuses it).
#[test]
fn the_seeds_exercise_both_sides_of_the_json_check() {
    use cached_instances::CachedInstance;
    let valid = targets::expected_question().to_json().unwrap();
    assert!(models::Question::decode(&valid).is_ok());
    let garbage = br#"{"id":,"question_text":,"pub_date":,"choices":}"#;
    assert!(models::Question::decode(garbage).is_err());
    assert!(corpus("cache_read").iter().any(|c| c == garbage));
}
