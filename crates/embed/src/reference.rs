//! The reference check: embeddings against sentence-transformers' own, from
//! a fixture `bench/embed/make_fixture.py` wrote.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{EmbedError, Embedder};

#[derive(Deserialize)]
pub struct Fixture {
    pub model: String,
    pub made_with: String,
    pub items: Vec<FixtureItem>,
}

#[derive(Deserialize)]
pub struct FixtureItem {
    pub text: String,
    /// Tokens sentence-transformers' tokenizer gives it, before truncation.
    pub tokens: usize,
    pub embedding: Vec<f32>,
}

impl Fixture {
    pub fn read(path: &Path) -> Result<Fixture, crate::Invalid> {
        let bytes = std::fs::read(path).map_err(|e| crate::Invalid::new(path.display().to_string(), e))?;
        serde_json::from_slice(&bytes).map_err(|e| crate::Invalid::new(path.display().to_string(), e))
    }
}

/// How close each embedding came to its reference.
pub struct Report {
    /// (cosine, text), worst first.
    pub cosines: Vec<(f32, String)>,
}

impl Report {
    pub fn worst(&self) -> f32 {
        self.cosines.first().map_or(1.0, |c| c.0)
    }

    /// The texts below `bar`, with their cosines.
    pub fn below(&self, bar: f32) -> Vec<&(f32, String)> {
        self.cosines.iter().filter(|(c, _)| *c < bar).collect()
    }
}

/// Embeds every fixture text and compares it with its reference.
pub fn check(embedder: &Embedder, fixture: &Fixture) -> Result<Report, EmbedError> {
    let texts: Vec<&str> = fixture.items.iter().map(|i| i.text.as_str()).collect();
    let vectors = embedder.embed(&texts)?;
    let mut cosines: Vec<(f32, String)> =
        fixture.items.iter().zip(&vectors).map(|(item, v)| (cosine(&item.embedding, v), item.text.clone())).collect();
    cosines.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Report { cosines })
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::NAN;
    }
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    (ab / (aa.sqrt() * bb.sqrt()).max(1e-30)) as f32
}

/// Where the reference model is: `BATCHMILL_EMBED_MODEL`, else
/// `deploy/local/install-deps`' copy under the tools directory.
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BATCHMILL_EMBED_MODEL") {
        return dir.into();
    }
    let tools = std::env::var_os("BATCHMILL_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.batchmill/tools"));
    tools.join("models/all-MiniLM-L6-v2")
}

/// The committed fixture.
pub fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm.json")
}
