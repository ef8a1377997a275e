//! The CPU backend's trace of a forward pass, and the stage comparison that
//! finds where a device parts from it (`batchmill-embed-bench stages`).

use batchmill_embed::backend::Backend;
use batchmill_embed::cpu::Cpu;
use batchmill_embed::reference::{cosine, default_model_dir};
use batchmill_embed::stages::compare;
use batchmill_embed::tokenize::Tokens;
use batchmill_embed::{ModelFiles, Packed, Weights};

#[test]
fn a_trace_holds_every_stage_and_the_comparison_finds_the_first_that_parts() {
    let files = ModelFiles::open(&default_model_dir()).expect("model (deploy/local/install-deps fetches it)");
    let tokens = Tokens::load(&files).expect("tokenizer");
    let mut batch = Packed::default();
    for ids in tokens.encode(&["a short one", "", "Ünïcödé and a somewhat longer sentence to embed"]).expect("tokens")
    {
        batch.push(&ids);
    }
    let (t, h, layers) = (batch.ids.len(), files.config.hidden_size, files.config.num_hidden_layers);
    let mut cpu = Cpu::new(Weights::load(&files).expect("weights"));
    let (out, trace) = cpu.trace(&batch).expect("trace");
    assert_eq!(out, cpu.embed(&batch).expect("embed"), "tracing changes nothing");

    let names: Vec<&str> = trace.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 1 + 3 * layers);
    assert_eq!(&names[..4], ["embeddings", "layer 0 attention", "layer 0 attention norm", "layer 0 output"]);
    assert_eq!(names.last().copied(), Some(format!("layer {} output", layers - 1).as_str()));
    assert!(trace.iter().all(|(_, v)| v.len() == t * h));

    // The last stage, mean-pooled and normalised per sequence, is the output.
    let last = &trace[trace.len() - 1].1;
    for (s, at) in batch.offsets().windows(2).enumerate() {
        let rows = &last[at[0] * h..at[1] * h];
        let mut mean = vec![0f32; h];
        for row in rows.chunks_exact(h) {
            mean.iter_mut().zip(row).for_each(|(m, x)| *m += x);
        }
        assert!(cosine(&mean, &out[s * h..(s + 1) * h]) > 0.99999, "sequence {s}");
    }

    // Against itself, nothing differs; a fault planted in one stage's row is
    // found there, in that row.
    let same = compare(&trace, &trace, h).expect("same stages");
    assert!(same.iter().all(|d| d.max_abs == 0.0 && d.rel_rms == 0.0));
    let mut faulty = trace.clone();
    faulty[5].1[4 * h + 7] += 0.5;
    let diffs = compare(&trace, &faulty, h).expect("same stages");
    let first = diffs.iter().position(|d| d.max_abs > 0.0);
    assert_eq!(first, Some(5));
    assert_eq!((diffs[5].stage.as_str(), diffs[5].worst_row), (names[5], 4));
    // (x + 0.5) - x is 0.5 only up to x's rounding.
    assert!((diffs[5].max_abs - 0.5).abs() < 1e-5, "{}", diffs[5].max_abs);
    faulty.pop();
    assert!(compare(&trace, &faulty, h).is_err(), "a missing stage is an error");
}
