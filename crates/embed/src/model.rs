//! The files of a sentence-transformers model directory and the encoder's
//! configuration.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::EmbedError;

/// The encoder's shape, from `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_position")]
    pub position_embedding_type: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_position() -> String {
    "absolute".into()
}

impl BertConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// A model directory: `config.json`, `tokenizer.json`, `model.safetensors`,
/// and, as sentence-transformers writes them, `sentence_bert_config.json`
/// (the sequence length) and `1_Pooling/config.json` (mean pooling).
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: BertConfig,
    /// Tokens per text, counting `[CLS]` and `[SEP]`; longer texts are
    /// truncated, as sentence-transformers does.
    pub max_seq_length: usize,
}

impl ModelFiles {
    pub fn open(dir: &Path) -> Result<ModelFiles, EmbedError> {
        let err = |message: String| EmbedError::Model { path: dir.display().to_string(), message };
        let config: BertConfig = read_json(&dir.join("config.json")).map_err(|e| err(e.to_string()))?;
        if config.hidden_act != "gelu" {
            return Err(err(format!("config.json: hidden_act {:?} is not supported (gelu is)", config.hidden_act)));
        }
        if config.position_embedding_type != "absolute" {
            return Err(err(format!(
                "config.json: position_embedding_type {:?} is not supported (absolute is)",
                config.position_embedding_type
            )));
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(err("config.json: hidden_size must be a multiple of num_attention_heads".into()));
        }
        let pooling = dir.join("1_Pooling/config.json");
        if pooling.exists() {
            let p: PoolingConfig = read_json(&pooling).map_err(|e| err(e.to_string()))?;
            if !p.pooling_mode_mean_tokens
                || p.pooling_mode_cls_token
                || p.pooling_mode_max_tokens
                || p.pooling_mode_mean_sqrt_len_tokens
            {
                return Err(err("1_Pooling/config.json: only mean pooling is supported".into()));
            }
        }
        let st = dir.join("sentence_bert_config.json");
        let max_seq_length = if st.exists() {
            let c: SentenceBertConfig = read_json(&st).map_err(|e| err(e.to_string()))?;
            c.max_seq_length.unwrap_or(config.max_position_embeddings)
        } else {
            config.max_position_embeddings
        }
        .min(config.max_position_embeddings);
        for file in ["tokenizer.json", "model.safetensors"] {
            if !dir.join(file).is_file() {
                return Err(err(format!("{file} is missing")));
            }
        }
        Ok(ModelFiles { dir: dir.to_owned(), config, max_seq_length })
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    pub fn weights_path(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, crate::Invalid> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let bytes = std::fs::read(path).map_err(|e| crate::Invalid::new(&name, e))?;
    serde_json::from_slice(&bytes).map_err(|e| crate::Invalid::new(name, e))
}
