//! The host's share of an `embed` batch, without the encoder: parsing the
//! items, tokenizing them and writing the result lines. On a GPU this is
//! time the device would wait between batches if a worker ran one batch at
//! a time (it runs two lanes there). Result lines are timed two ways: as
//! `embed` writes them, straight from the vectors, and through `Value`s, the
//! way the default `Predictor::predict_ndjson` writes any predictor's output
//! (numbers made the shortest f32 text first, as `embed` did before).
//!
//!   cargo bench -p batchmill-worker --bench embed_host -- --corpus FILE [--batch N] [--model DIR]
//!
//! Prints one JSON line of milliseconds per batch (the best of 5 passes).

use std::path::PathBuf;
use std::time::Instant;

use batchmill_embed::{DeviceChoice, Embedder, Precision};
use batchmill_worker::embed::{Embed, result_lines};
use batchmill_worker::predictor::{BatchInput, ndjson};
use serde_json::{Value, json};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut corpus, mut batch, mut model) = (None, 256, batchmill_embed::reference::default_model_dir());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--corpus" => corpus = Some(PathBuf::from(value()?)),
            "--batch" => batch = value()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--model" => model = value()?.into(),
            "--bench" => {}
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let corpus = corpus.ok_or("--corpus FILE is needed")?;
    let text = std::fs::read_to_string(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
    // Items as a job's batches carry them: JSON text of {"id", "text"}.
    let raw: Vec<String> =
        text.lines().enumerate().map(|(i, t)| json!({"id": format!("s{i}"), "text": t}).to_string()).collect();
    let embedder = Embedder::load(&model, DeviceChoice::Cpu, Precision::Fp32).map_err(|e| e.to_string())?;
    let dim = embedder.dim();
    let mut best = [f64::MAX; 4];
    let mut batches = 0;
    for _ in 0..5 {
        let mut took = [0.0; 4];
        batches = 0;
        for chunk in raw.chunks(batch.max(1)) {
            let t = Instant::now();
            let items: Vec<Value> =
                chunk.iter().map(|s| serde_json::from_str(s)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
            took[0] += t.elapsed().as_secs_f64();
            let input = BatchInput { batch_id: "j-0", seq: 0, first_item: 0, items: &items };
            let (ids, texts) = Embed::items(&input).map_err(|e| e.to_string())?;
            let t = Instant::now();
            embedder.count_tokens(&texts).map_err(|e| e.to_string())?;
            took[1] += t.elapsed().as_secs_f64();
            let vectors: Vec<Vec<f32>> =
                (0..ids.len()).map(|i| (0..dim).map(|j| ((i * dim + j) as f32 * 0.37).sin() * 0.1).collect()).collect();
            let t = Instant::now();
            std::hint::black_box(result_lines(&ids, &vectors));
            took[2] += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let values: Vec<Value> =
                ids.iter().zip(&vectors).map(|(id, v)| json!({"id": id, "embedding": shortest(v)})).collect();
            std::hint::black_box(ndjson(&values));
            took[3] += t.elapsed().as_secs_f64();
            batches += 1;
        }
        for (b, t) in best.iter_mut().zip(took) {
            *b = b.min(t);
        }
    }
    let ms = |s: f64| (s * 1e3 / f64::from(batches) * 1000.0).round() / 1000.0;
    println!(
        "{}",
        json!({
            "batch": batch,
            "batches": batches,
            "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "ms_per_batch": {
                "parse": ms(best[0]),
                "tokenize": ms(best[1]),
                "lines_direct": ms(best[2]),
                "lines_via_values": ms(best[3]),
            },
        })
    );
    Ok(())
}

/// Each number as the shortest text that reads back as the same f32, as a
/// `Value`.
fn shortest(v: &[f32]) -> Value {
    Value::Array(
        v.iter()
            .map(|x| {
                x.to_string()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            })
            .collect(),
    )
}
