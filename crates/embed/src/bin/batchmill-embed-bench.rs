//! Runs the embed model outside the cluster, for the reference check and the
//! benchmark on any machine (the GPU machine has no Rust: carry this binary).
//!
//!   batchmill-embed-bench check [--device cpu|cuda|auto] [--precision fp32|fp16|bf16] [--model DIR] [--fixture FILE]
//!   batchmill-embed-bench bench --corpus FILE [--device ...] [--precision ...] [--model DIR] [--runs N] [--batch N]
//!   batchmill-embed-bench stages [--device ...] [--precision ...] [--model DIR] [--fixture FILE]
//!   batchmill-embed-bench compile [--model DIR]             (cuda builds: NVRTC only, no GPU needed)
//!   batchmill-embed-bench gemm [--precision ...] [--model DIR] (cuda builds: the GEMMs' TFLOP/s)
//!
//! `--precision` is what a GPU stores GEMM inputs as (default fp32; the CPU
//! always computes in fp32). `check` prints the worst cosine against
//! sentence-transformers' embeddings and fails below the bar (0.9999 in fp32,
//! 0.999 in fp16 or bf16). `bench` embeds every line of the corpus (in calls
//! of `--batch` lines, as a job's batches reach the worker; default all in
//! one) and prints one JSON line of throughput. `stages` runs 16 of the
//! fixture's texts (the longest among them) through the device and through
//! the CPU in fp32, and prints how far each stage's activations are apart:
//! where a kernel goes wrong, and how rounding grows through the layers.

use std::path::PathBuf;
use std::time::Instant;

use batchmill_embed::reference::{Fixture, check, default_model_dir, fixture_path};
use batchmill_embed::{DeviceChoice, Embedder, Precision};

struct Args {
    command: String,
    device: DeviceChoice,
    precision: Precision,
    model: PathBuf,
    fixture: PathBuf,
    corpus: Option<PathBuf>,
    runs: usize,
    batch: usize,
}

/// Why a command failed, as it is printed.
type Failure = Box<dyn std::error::Error>;

fn args() -> Result<Args, Failure> {
    let mut it = std::env::args().skip(1);
    let command = it.next().ok_or("usage: batchmill-embed-bench check|bench [options]")?;
    let mut a = Args {
        command,
        device: DeviceChoice::Auto,
        precision: Precision::Fp32,
        model: default_model_dir(),
        fixture: fixture_path(),
        corpus: None,
        runs: 3,
        batch: usize::MAX,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--device" => a.device = DeviceChoice::parse(&value()?)?,
            "--precision" => a.precision = Precision::parse(&value()?)?,
            "--model" => a.model = value()?.into(),
            "--fixture" => a.fixture = value()?.into(),
            "--corpus" => a.corpus = Some(value()?.into()),
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--batch" => a.batch = value()?.parse().map_err(|e| format!("--batch: {e}"))?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Failure> {
    let a = args()?;
    if a.command == "compile" {
        return compile(&a);
    }
    if a.command == "gemm" {
        return gemm(&a);
    }
    if a.command == "stages" {
        return stages(&a);
    }
    let started = Instant::now();
    let embedder = Embedder::load(&a.model, a.device, a.precision).map_err(|e| e.to_string())?;
    let load_s = started.elapsed().as_secs_f64();
    match a.command.as_str() {
        "check" => {
            let fixture = Fixture::read(&a.fixture)?;
            let report = check(&embedder, &fixture).map_err(|e| e.to_string())?;
            let bar = a.precision.cosine_bar();
            println!(
                "{}: worst cosine {:.7} over {} texts ({}), bar {bar}",
                embedder.device(),
                report.worst(),
                report.cosines.len(),
                fixture.made_with
            );
            let below = report.below(bar);
            if !below.is_empty() {
                return Err(format!("{} below {bar}: {below:?}", below.len()).into());
            }
            Ok(())
        }
        "bench" => {
            let corpus = a.corpus.ok_or("bench needs --corpus FILE")?;
            let text = std::fs::read_to_string(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
            let lines: Vec<&str> = text.lines().collect();
            // One warm-up pass, then the best of `runs`.
            embedder.embed(&lines[..lines.len().min(256)]).map_err(|e| e.to_string())?;
            let mut best = f64::MAX;
            for _ in 0..a.runs.max(1) {
                let t = Instant::now();
                let mut embedded = 0;
                for batch in lines.chunks(a.batch.max(1)) {
                    embedded += embedder.embed(batch).map_err(|e| e.to_string())?.len();
                }
                best = best.min(t.elapsed().as_secs_f64());
                assert_eq!(embedded, lines.len());
            }
            let tokens = embedder.count_tokens(&lines).map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::json!({
                    "tool": "batchmill",
                    "device": embedder.device(),
                    "precision": a.precision.as_str(),
                    "sentences": lines.len(),
                    "batch": a.batch.min(lines.len()),
                    "tokens": tokens,
                    "seconds": best,
                    "sentences_per_s": lines.len() as f64 / best,
                    "tokens_per_s": tokens as f64 / best,
                    "load_s": load_s,
                })
            );
            Ok(())
        }
        other => Err(format!("unknown command {other}; check, bench, stages, compile or gemm").into()),
    }
}

/// Traces 16 fixture texts on the chosen device and on the CPU (fp32) and
/// prints each stage's distance, then each text's cosine.
fn stages(a: &Args) -> Result<(), Failure> {
    use batchmill_embed::backend;
    use batchmill_embed::reference::cosine;
    let files = batchmill_embed::ModelFiles::open(&a.model).map_err(|e| e.to_string())?;
    let tokens = batchmill_embed::tokenize::Tokens::load(&files).map_err(|e| e.to_string())?;
    let fixture = Fixture::read(&a.fixture)?;
    // Every 16th text by length, so short, long and truncated ones are in.
    let mut items: Vec<_> = fixture.items.iter().collect();
    items.sort_by_key(|i| std::cmp::Reverse(i.tokens));
    let texts: Vec<&str> = items.iter().step_by(items.len().div_ceil(16).max(1)).map(|i| i.text.as_str()).collect();
    let mut batch = batchmill_embed::Packed::default();
    for ids in tokens.encode(&texts).map_err(|e| e.to_string())? {
        batch.push(&ids);
    }
    let weights = batchmill_embed::Weights::load(&files).map_err(|e| e.to_string())?;
    let mut cpu = backend::open(DeviceChoice::Cpu, weights.clone(), Precision::Fp32).map_err(|e| e.to_string())?;
    let mut device = backend::open(a.device, weights, a.precision).map_err(|e| e.to_string())?;
    let (want, reference) = cpu.trace(&batch).map_err(|e| e.to_string())?;
    let (got, trace) = device.trace(&batch).map_err(|e| e.to_string())?;
    let h = files.config.hidden_size;
    println!(
        "{} against {}: {} texts, {} tokens ({} longest)",
        device.device(),
        cpu.device(),
        texts.len(),
        batch.ids.len(),
        batch.lens.iter().max().unwrap_or(&0)
    );
    println!("{:<26} {:>12} {:>12} {:>6}", "stage", "max |diff|", "rel rms", "row");
    for d in batchmill_embed::stages::compare(&reference, &trace, h)? {
        println!("{:<26} {:>12.3e} {:>12.3e} {:>6}", d.stage, d.max_abs, d.rel_rms, d.worst_row);
    }
    let cosines: Vec<String> =
        want.chunks_exact(h).zip(got.chunks_exact(h)).map(|(w, g)| format!("{:.6}", cosine(w, g))).collect();
    println!("pooled output, cosine per text: {}", cosines.join(" "));
    Ok(())
}

/// Compiles the CUDA kernels for the model's shape at every precision, for
/// Ampere and Hopper: catches kernel errors where NVRTC is installed but no
/// GPU is.
#[cfg(feature = "cuda")]
fn compile(a: &Args) -> Result<(), Failure> {
    let files = batchmill_embed::ModelFiles::open(&a.model).map_err(|e| e.to_string())?;
    for (major, minor) in [(8, 0), (9, 0)] {
        for precision in [Precision::Fp32, Precision::Fp16, Precision::Bf16] {
            let (cubin, log) =
                batchmill_embed::cuda::compile_kernels_logged(&files.config, precision, major, minor, true)?;
            println!("sm_{major}{minor} {}: {} bytes of cubin", precision.as_str(), cubin.len());
            for line in
                log.lines().filter(|l| l.contains("registers") || l.contains("spill") || l.contains("Compiling"))
            {
                println!("  {}", line.trim());
            }
        }
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn compile(_: &Args) -> Result<(), Failure> {
    Err("built without the cuda feature".into())
}

/// The model's GEMM shapes at 16,384 tokens (the CUDA backend's chunk), in
/// TFLOP/s, one JSON line each.
#[cfg(feature = "cuda")]
fn gemm(a: &Args) -> Result<(), Failure> {
    if a.device == DeviceChoice::Cpu {
        return cpu_gemm(a);
    }
    let files = batchmill_embed::ModelFiles::open(&a.model).map_err(|e| e.to_string())?;
    let t = 16_384;
    for (out, inp, tflops) in
        batchmill_embed::cuda::gemm_tflops(0, &files.config, a.precision, t).map_err(|e| e.to_string())?
    {
        println!(
            "{}",
            serde_json::json!({"m": t, "n": out, "k": inp, "precision": a.precision.as_str(), "tflops": tflops})
        );
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn gemm(a: &Args) -> Result<(), Failure> {
    cpu_gemm(a)
}

/// The dense layers' shapes on the CPU at 1,024 tokens (the CPU backend's
/// chunk), in GFLOP/s.
fn cpu_gemm(a: &Args) -> Result<(), Failure> {
    let files = batchmill_embed::ModelFiles::open(&a.model).map_err(|e| e.to_string())?;
    batchmill_embed::isa::Isa::choose_from_env()?;
    let t = 1024;
    for (out, inp, gflops) in batchmill_embed::cpu::dense_gflops(&files.config, t, a.runs * 5) {
        let isa = batchmill_embed::isa::Isa::active().name();
        println!("{}", serde_json::json!({"m": t, "n": out, "k": inp, "isa": isa, "gflops": gflops}));
    }
    Ok(())
}
