//! Every fuzz target over its checked-in corpus (`fuzz/corpus/<target>/`),
//! then over inputs mutated from it, for `BATCHMILL_FUZZ_SECONDS` per target
//! (3 by default) from seed `BATCHMILL_FUZZ_SEED` (printed): on stable, in
//! CI, what `cargo +nightly fuzz run` does coverage-guided. No input may
//! panic or take 10 s; one that does is written to
//! `target/fuzz-failures/` and named in the failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use batchmill_fuzzing::{TARGETS, Target};

/// Longest an input may take before it counts as a hang: libFuzzer's
/// `-timeout` in `fuzz/run`. This is a debug build on a machine shared with
/// the rest of the suite, where a 1.2 MB NDJSON input once took 1.1 s:
/// a hang is an input that never ends or grows quadratically, not a slow one.
const HANG: Duration = Duration::from_secs(10);

/// Bytes that mean something to one parser or another.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\n",
    b"\r\n",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"**",
    b"*",
    b"?",
    b"[!",
    b"\\",
    b"/",
    b"s3://",
    b"%",
    b"%ff",
    b"&",
    b"=",
    b"?",
    b"\xff\xfe",
    b"\x00",
    b"\x7f\xff\xff\xff",
    b"\xff\xff\xff\xff",
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    entries.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// One input mutated from the corpus: a few random edits.
fn mutate(rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = corpus[rng.usize(..corpus.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        let at = rng.usize(..=data.len());
        match rng.u8(..6) {
            0 if !data.is_empty() => {
                let i = rng.usize(..data.len());
                data[i] ^= 1 << rng.u8(..8);
            }
            1 => data.splice(at..at, TOKENS[rng.usize(..TOKENS.len())].iter().copied()).for_each(drop),
            2 if at < data.len() => {
                let end = rng.usize(at..=data.len().min(at + 16));
                data.drain(at..end);
            }
            3 if at < data.len() => {
                let end = rng.usize(at..=data.len());
                let copy = data[at..end].to_vec();
                let to = rng.usize(..=data.len());
                data.splice(to..to, copy.into_iter().cycle().take((end - at) * rng.usize(1..=64)));
            }
            4 => {
                let other = &corpus[rng.usize(..corpus.len())];
                let from = rng.usize(..=other.len());
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            _ => data.insert(at, rng.u8(..)),
        }
    }
    data
}

/// Runs `target` on `data`; a panic or a hang fails the test, naming the
/// file the input was saved to.
fn run(target: Target, data: &[u8]) -> bool {
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| (target.run)(data));
    let took = started.elapsed();
    let fault = match &outcome {
        Err(_) => Some("panicked".to_owned()),
        Ok(_) if took > HANG => Some(format!("took {took:?}")),
        Ok(_) => None,
    };
    if let Some(fault) = fault {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}-{:016x}", target.name, fastrand::u64(..)));
        std::fs::write(&path, data).unwrap();
        panic!("fuzz target {} {fault} on {} ({} bytes)", target.name, path.display(), data.len());
    }
    outcome.unwrap_or(false)
}

#[test]
fn every_target_takes_its_corpus_and_mutations_of_it_without_a_fault() {
    let seconds: u64 = std::env::var("BATCHMILL_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let seed: u64 = std::env::var("BATCHMILL_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    });
    println!("seed {seed} (BATCHMILL_FUZZ_SEED), {seconds} s per target (BATCHMILL_FUZZ_SECONDS)");
    for &target in TARGETS {
        let corpus = corpus(target.name);
        assert!(!corpus.is_empty(), "{} has a corpus", target.name);
        let accepted = corpus.iter().filter(|data| run(target, data)).count();
        // Each corpus has inputs the parser takes, or it explores nothing.
        assert!(accepted > 0, "{}: no corpus input is accepted", target.name);
        let mut rng = fastrand::Rng::with_seed(seed);
        let (mut runs, mut taken) = (0u64, 0u64);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline {
            for _ in 0..64 {
                taken += u64::from(run(target, &mutate(&mut rng, &corpus)));
                runs += 1;
            }
        }
        println!(
            "{:<13} corpus {:>3} ({accepted} accepted), {runs:>8} mutated inputs ({taken} accepted), no fault",
            target.name,
            corpus.len()
        );
    }
}
