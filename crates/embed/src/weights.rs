//! The encoder's weights, read from `model.safetensors` into host memory as
//! f32 (f16 and bf16 files are widened). Linear weights keep PyTorch's
//! `[out, in]` row-major layout; Q, K and V are concatenated into one
//! `[3·hidden, hidden]` matrix so one GEMM computes all three.

use safetensors::{Dtype, SafeTensors};

use crate::{BertConfig, EmbedError, ModelFiles};

/// A linear layer: `y = x·Wᵀ + b`, `w` is `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub out: usize,
    pub inp: usize,
}

/// Layer norm scale and shift.
#[derive(Debug, Clone)]
pub struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

/// One encoder layer.
#[derive(Debug, Clone)]
pub struct Layer {
    pub qkv: Linear,
    pub attn_out: Linear,
    pub attn_norm: Norm,
    pub up: Linear,
    pub down: Linear,
    pub out_norm: Norm,
}

/// All the weights of the encoder.
#[derive(Debug, Clone)]
pub struct Weights {
    pub config: BertConfig,
    /// `[vocab, hidden]`.
    pub word: Vec<f32>,
    /// `[max_position, hidden]`.
    pub position: Vec<f32>,
    /// Row 0 of the token type embeddings (single-sentence inputs).
    pub token_type: Vec<f32>,
    pub embed_norm: Norm,
    pub layers: Vec<Layer>,
}

impl Weights {
    pub fn load(model: &ModelFiles) -> Result<Weights, EmbedError> {
        let path = model.weights_path();
        let err = |message: String| EmbedError::Model { path: path.display().to_string(), message };
        let bytes = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
        Weights::from_safetensors(&model.config, &tensors).map_err(|e| err(e.to_string()))
    }

    pub fn from_safetensors(config: &BertConfig, st: &SafeTensors<'_>) -> Result<Weights, crate::Invalid> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let get = |name: &str, shape: &[usize]| tensor(st, name, shape);
        let linear = |prefix: &str, out: usize, inp: usize| -> Result<Linear, crate::Invalid> {
            Ok(Linear {
                w: get(&format!("{prefix}.weight"), &[out, inp])?,
                b: get(&format!("{prefix}.bias"), &[out])?,
                out,
                inp,
            })
        };
        let norm = |prefix: &str| -> Result<Norm, crate::Invalid> {
            Ok(Norm { gamma: get(&format!("{prefix}.weight"), &[h])?, beta: get(&format!("{prefix}.bias"), &[h])? })
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let (q, k, v) = (
                linear(&format!("{p}.attention.self.query"), h, h)?,
                linear(&format!("{p}.attention.self.key"), h, h)?,
                linear(&format!("{p}.attention.self.value"), h, h)?,
            );
            let qkv = Linear { w: [q.w, k.w, v.w].concat(), b: [q.b, k.b, v.b].concat(), out: 3 * h, inp: h };
            layers.push(Layer {
                qkv,
                attn_out: linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                up: linear(&format!("{p}.intermediate.dense"), i, h)?,
                down: linear(&format!("{p}.output.dense"), h, i)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let token_types = get("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?;
        Ok(Weights {
            config: config.clone(),
            word: get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position: get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
            token_type: token_types[..h].to_vec(),
            embed_norm: norm("embeddings.LayerNorm")?,
            layers,
        })
    }
}

/// The tensor `name` (or `bert.<name>`, as BertModel checkpoints saved from
/// a task head name it) as f32, checked against `shape`.
fn tensor(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>, crate::Invalid> {
    let bad = |why: String| crate::Invalid::new(format!("tensor {name}"), why);
    let view = st.tensor(name).or_else(|_| st.tensor(&format!("bert.{name}"))).map_err(|_| bad("is missing".into()))?;
    if view.shape() != shape {
        return Err(bad(format!("has shape {:?}, config.json implies {shape:?}", view.shape())));
    }
    let data = view.data();
    let words = |n: usize| data.chunks_exact(n);
    Ok(match view.dtype() {
        Dtype::F32 => words(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => words(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        Dtype::BF16 => words(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)).collect(),
        other => return Err(bad(format!("has dtype {other:?}; f32, f16 or bf16 expected"))),
    })
}

/// IEEE half to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalise.
            let shift = f.leading_zeros() - 21;
            sign | ((127 - 15 - shift + 1) << 23) | ((f << (shift + 13)) & 0x7f_ffff)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_widen_exactly() {
        for (h, f) in
            [(0x3c00u16, 1.0f32), (0xc000, -2.0), (0x3555, 0.333_251_95), (0x0001, 5.960_464_5e-8), (0x0000, 0.0)]
        {
            assert_eq!(f16_to_f32(h), f, "{h:#x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
