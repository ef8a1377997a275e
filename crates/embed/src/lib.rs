//! Sentence embeddings with a BERT-family encoder, as sentence-transformers
//! computes them: WordPiece tokens → embeddings → N encoder layers → mean
//! pooling → L2 normalisation.
//!
//! [`Embedder`] is the entry point: it tokenizes, sorts texts by length and
//! packs them into chunks with no padding, and runs the chunks on a
//! [`Backend`] owned by one dedicated thread (the CUDA context lives there).
//! The CPU backend ([`cpu`]) and the CUDA backend (`cuda`, behind the feature
//! of that name) compute the same math.

pub mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dense;
mod embedder;
pub mod isa;
pub mod math;
pub mod model;
pub mod reference;
pub mod stages;
pub mod tokenize;
pub mod weights;

pub use backend::{Backend, DeviceChoice, Packed, Precision, Trace};
pub use embedder::Embedder;
pub use model::{BertConfig, ModelFiles};
pub use weights::Weights;

/// A value, file or tensor that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct Invalid {
    pub what: String,
    pub why: String,
}

impl Invalid {
    pub fn new(what: impl Into<String>, why: impl ToString) -> Invalid {
        Invalid { what: what.into(), why: why.to_string() }
    }
}

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model directory is missing a file or has one that cannot be used.
    #[error("model {path}: {message}")]
    Model { path: String, message: String },
    /// The tokenizer failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The device failed (CUDA errors, allocation).
    #[error("{device}: {message}")]
    Device { device: String, message: String },
    /// The backend thread is gone.
    #[error("the embedding thread stopped")]
    Stopped,
    /// A setting (an environment variable) that cannot be used.
    #[error("{0}")]
    Setting(Invalid),
}
