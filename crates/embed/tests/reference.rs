//! The CPU backend against sentence-transformers' embeddings of the same
//! texts (tests/fixtures/minilm.json): short and long (truncated past 256
//! tokens), non-ASCII, empty; on each instruction set the CPU has.

use batchmill_embed::isa::Isa;
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
    // Each instruction set the fused passes are compiled for, as
    // BATCHMILL_EMBED_ISA would force it; one the CPU lacks is not run.
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
        if Isa::choose(isa) != isa {
            println!("{}: not run, this CPU has only {}", isa.name(), Isa::detected().name());
            continue;
        }
        let report = check(&embedder, &fixture).expect("embeds");
        let below = report.below(Precision::Fp32.cosine_bar());
        let n = fixture.items.len();
        assert!(below.is_empty(), "{}: {} of {n} below cosine 0.9999: {below:?}", isa.name(), below.len());
        println!("{}: worst cosine {} over {n} texts", isa.name(), report.worst());
    }
    Isa::choose_from_env().expect("BATCHMILL_EMBED_ISA");
}

/// The same check on the CUDA backend at each precision: fp32 (bar 0.9999),
/// fp16 and bf16 (bar 0.999). Only in builds with the cuda feature, and only
/// where CUDA is: on a GPU, or on the CPU emulation of CUDA that
/// `scripts/test` runs it on (crates/embed/cuda-emu), which sets
/// BATCHMILL_EXPECT_CUDA so that a missing CUDA fails rather than skips.
/// (On a GPU machine without Rust, `batchmill-embed-bench check --device
/// cuda --precision P` is the same check.)
#[cfg(feature = "cuda")]
fn cuda_embeddings_match_sentence_transformers(precision: Precision) {
    if let Some(why) = batchmill_embed::cuda::unavailable() {
        assert!(std::env::var_os("BATCHMILL_EXPECT_CUDA").is_none(), "BATCHMILL_EXPECT_CUDA is set, but {why}");
        println!("not run: {why}");
        return;
    }
    let fixture = Fixture::read(&fixture_path()).expect("fixture");
    let embedder = Embedder::load(&default_model_dir(), DeviceChoice::Cuda, precision).expect("model loads");
    assert!(embedder.device().starts_with("cuda:"), "{}", embedder.device());
    let report = check(&embedder, &fixture).expect("embeds");
    let bar = precision.cosine_bar();
    let below = report.below(bar);
    assert!(below.is_empty(), "{}: {} below {bar}: {below:?}", embedder.device(), below.len());
    println!("{}: worst cosine {} over {} texts", embedder.device(), report.worst(), fixture.items.len());
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_fp32_embeddings_match_sentence_transformers() {
    cuda_embeddings_match_sentence_transformers(Precision::Fp32);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_fp16_embeddings_match_sentence_transformers() {
    cuda_embeddings_match_sentence_transformers(Precision::Fp16);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_bf16_embeddings_match_sentence_transformers() {
    cuda_embeddings_match_sentence_transformers(Precision::Bf16);
}
