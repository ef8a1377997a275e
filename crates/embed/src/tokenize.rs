//! WordPiece tokenization from `tokenizer.json`, truncated to the model's
//! sequence length and never padded.

use tokenizers::{Tokenizer, TruncationParams};

use crate::{EmbedError, ModelFiles};

/// A model's tokenizer.
pub struct Tokens {
    tokenizer: Tokenizer,
}

impl Tokens {
    pub fn load(model: &ModelFiles) -> Result<Tokens, EmbedError> {
        let path = model.tokenizer_path();
        let err = |message: String| EmbedError::Model { path: path.display().to_string(), message };
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| err(e.to_string()))?;
        // tokenizer.json may carry its own truncation and padding (all-MiniLM's
        // pads to 128): sentence-transformers truncates at max_seq_length and
        // pads only to the longest in a batch, which packing makes moot.
        let truncation = TruncationParams { max_length: model.max_seq_length, ..Default::default() };
        tokenizer.with_truncation(Some(truncation)).map_err(|e| err(e.to_string()))?;
        tokenizer.with_padding(None);
        Ok(Tokens { tokenizer })
    }

    /// The token ids of each text, with `[CLS]` and `[SEP]`, on every core.
    /// Only ids are needed, so no offsets are tracked (the `_fast` calls).
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, EmbedError> {
        let encodings =
            self.tokenizer.encode_batch_fast(texts.to_vec(), true).map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }
}
