//! The CPU backend against sentence-transformers' embeddings of the same
//! texts (tests/fixtures/minilm.json): short and long (truncated past 256
//! tokens), non-ASCII, empty.

use batchmill_embed::reference::{Fixture, check, default_model_dir, fixture_path};
use batchmill_embed::{DeviceChoice, Embedder, Precision};

#[test]
fn cpu_embeddings_match_sentence_transformers() {
    let model = default_model_dir();
    assert!(
        model.join("model.safetensors").is_file(),
        "no model at {} (deploy/local/install-deps fetches it; BATCHMILL_EMBED_MODEL names another)",
        model.display()
    );
    let fixture = Fixture::read(&fixture_path()).expect("fixture");
    assert!(fixture.items.len() >= 200);
    assert!(fixture.items.iter().any(|i| i.text.is_empty()) && fixture.items.iter().any(|i| i.tokens > 256));
    let embedder = Embedder::load(&model, DeviceChoice::Cpu, Precision::Fp32).expect("model loads");
    assert_eq!(embedder.dim(), 384);
    let report = check(&embedder, &fixture).expect("embeds");
    let below = report.below(Precision::Fp32.cosine_bar());
    assert!(below.is_empty(), "{} of {} below cosine 0.9999: {below:?}", below.len(), fixture.items.len());
    println!("worst cosine {} over {} texts", report.worst(), fixture.items.len());
}

/// The same check on the GPU at each precision: fp32 (bar 0.9999), fp16 and
/// bf16 (bar 0.999). Only in builds with the cuda feature, and only where a
/// GPU is: elsewhere it says why it did not run. (On a GPU machine without
/// Rust, `batchmill-embed-bench check --device cuda --precision P` is the
/// same check.)
#[cfg(feature = "cuda")]
#[test]
fn cuda_embeddings_match_sentence_transformers() {
    if let Some(why) = batchmill_embed::cuda::unavailable() {
        println!("not run: {why}");
        return;
    }
    let fixture = Fixture::read(&fixture_path()).expect("fixture");
    for precision in [Precision::Fp32, Precision::Fp16, Precision::Bf16] {
        let embedder = Embedder::load(&default_model_dir(), DeviceChoice::Cuda, precision).expect("model loads");
        let report = check(&embedder, &fixture).expect("embeds");
        let bar = precision.cosine_bar();
        let below = report.below(bar);
        assert!(below.is_empty(), "{}: {} below {bar}: {below:?}", embedder.device(), below.len());
        println!("{}: worst cosine {}", embedder.device(), report.worst());
    }
}
