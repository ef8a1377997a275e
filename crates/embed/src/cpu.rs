//! The CPU backend: f32 throughout; the dense layers on weights packed for
//! the instruction set in use ([`crate::dense`]), attention per sequence (no
//! padding, so no mask) on the same kernel with each head's keys and values
//! packed as it runs, element-wise work fused per row; all of it spread over
//! every core with rayon.

use rayon::prelude::*;

use crate::EmbedError;
use crate::backend::{Backend, Packed, Trace};
use crate::dense::{Epilogue, PackedWeights, Strided};
use crate::isa::Isa;
use crate::math;
use crate::weights::{Linear, Weights};

/// Rows handed to one rayon task in element-wise passes.
const ROWS_PER_TASK: usize = 16;

pub struct Cpu {
    w: Weights,
    dense: Dense,
    scratch: Scratch,
}

impl Cpu {
    pub fn new(w: Weights) -> Cpu {
        let dense = Dense::pack(&w, Isa::active());
        Cpu { w, dense, scratch: Scratch::default() }
    }

    /// The packed weights, repacked first when the instruction set in use
    /// has changed since (`Isa::choose`: tests and benches switch it).
    fn dense(&mut self) -> &Dense {
        if self.dense.isa != Isa::active() {
            self.dense = Dense::pack(&self.w, Isa::active());
        }
        &self.dense
    }
}

/// Every layer's dense weights, packed for one instruction set.
pub struct Dense {
    isa: Isa,
    layers: Vec<[PackedWeights; 4]>,
}

impl Dense {
    pub fn pack(w: &Weights, isa: Isa) -> Dense {
        let pack = |l: &Linear| PackedWeights::new(&l.w, l.out, l.inp, isa);
        let layers = w.layers.iter().map(|l| [pack(&l.qkv), pack(&l.attn_out), pack(&l.up), pack(&l.down)]).collect();
        Dense { isa, layers }
    }
}

impl Backend for Cpu {
    fn device(&self) -> String {
        format!("cpu ({} threads, {})", rayon::current_num_threads(), crate::isa::Isa::active().name())
    }

    fn max_tokens(&self) -> usize {
        // Each dense layer reads all its weights from memory once per chunk
        // (the model's 85 MB pass through the caches); measured on 2 cores
        // of an AMD EPYC with AVX-512 (`batchmill-embed-bench bench`),
        // 2,048-token chunks beat 1,024 by 8 to 10 % and 512 by 15 %, while
        // 4,096 and 8,192 gained nothing more (their activations leave L2).
        2048
    }

    fn embed(&mut self, batch: &Packed) -> Result<Vec<f32>, EmbedError> {
        self.dense();
        Ok(forward(&self.w, &self.dense, batch, &mut self.scratch, None))
    }

    fn trace(&mut self, batch: &Packed) -> Result<(Vec<f32>, Trace), EmbedError> {
        let mut trace = Trace::new();
        self.dense();
        let out = forward(&self.w, &self.dense, batch, &mut self.scratch, Some(&mut trace));
        Ok((out, trace))
    }
}

/// The activations between stages, kept from one chunk to the next: a
/// chunk's are megabytes, which fresh allocations would map and fault in
/// page by page each time.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    up: Vec<f32>,
}

/// `x·Wᵀ` into `dst` (`[rows, out]`), then `epilogue`.
fn dense(x: &[f32], rows: usize, w: &PackedWeights, dst: &mut Vec<f32>, epilogue: Epilogue<'_>) {
    // Every element is written: no need to clear what a previous layer left.
    dst.resize(rows * w.out(), 0.0);
    w.apply(x, rows, dst, epilogue);
}

/// The encoder over a packed batch: one pooled, normalised vector per
/// sequence; the activations between stages go to `trace` if given.
pub fn forward(
    w: &Weights,
    packed: &Dense,
    batch: &Packed,
    scratch: &mut Scratch,
    mut trace: Option<&mut Trace>,
) -> Vec<f32> {
    let c = &w.config;
    let (h, heads, d) = (c.hidden_size, c.num_attention_heads, c.head_dim());
    let eps = c.layer_norm_eps as f32;
    let t = batch.ids.len();
    let offsets = batch.offsets();

    // Embeddings: word + position + token type 0, then layer norm.
    let positions = batch.positions();
    let Scratch { x, qkv, ctx, tmp, up } = scratch;
    // Every element of x and ctx is written before it is read (the dense
    // layers' outputs too): no need to clear what a previous chunk left.
    x.resize(t * h, 0.0);
    ctx.resize(t * h, 0.0);
    x.par_chunks_mut(h).with_min_len(ROWS_PER_TASK).enumerate().for_each(|(i, row)| {
        let word = &w.word[batch.ids[i] as usize * h..][..h];
        let pos = &w.position[positions[i] as usize * h..][..h];
        math::embed_row(row, word, pos, &w.token_type, &w.embed_norm.gamma, &w.embed_norm.beta, eps);
    });
    if let Some(trace) = trace.as_deref_mut() {
        trace.push(("embeddings".to_owned(), x.clone()));
    }

    for (n, (layer, [qkv_w, attn_out_w, up_w, down_w])) in w.layers.iter().zip(&packed.layers).enumerate() {
        dense(x, t, qkv_w, qkv, Epilogue::Bias(&layer.qkv.b));
        // Attention, one sequence per task; each writes its own rows of ctx.
        let mut rest: &mut [f32] = ctx;
        let mut parts = Vec::with_capacity(batch.lens.len());
        for (s, &len) in batch.lens.iter().enumerate() {
            let (mine, tail) = rest.split_at_mut(len * h);
            parts.push((offsets[s], len, mine));
            rest = tail;
        }
        parts.into_par_iter().for_each(|(start, len, out)| {
            attention(&qkv[start * 3 * h..(start + len) * 3 * h], len, heads, d, out);
        });
        if let Some(trace) = trace.as_deref_mut() {
            trace.push((format!("layer {n} attention"), ctx.clone()));
        }
        dense(ctx, t, attn_out_w, tmp, Epilogue::None);
        residual_norm(x, tmp, &layer.attn_out.b, &layer.attn_norm, eps, h);
        if let Some(trace) = trace.as_deref_mut() {
            trace.push((format!("layer {n} attention norm"), x.clone()));
        }
        dense(x, t, up_w, up, Epilogue::BiasGelu(&layer.up.b));
        dense(up, t, down_w, tmp, Epilogue::None);
        residual_norm(x, tmp, &layer.down.b, &layer.out_norm, eps, h);
        if let Some(trace) = trace.as_deref_mut() {
            trace.push((format!("layer {n} output"), x.clone()));
        }
    }

    // Mean pooling over each sequence's tokens, then L2 normalisation.
    let mut out = vec![0.0f32; batch.lens.len() * h];
    out.par_chunks_mut(h).enumerate().for_each(|(s, v)| {
        let (start, end) = (offsets[s], offsets[s + 1]);
        for row in x[start * h..end * h].chunks_exact(h) {
            for (a, b) in v.iter_mut().zip(row) {
                *a += b;
            }
        }
        let n = (end - start).max(1) as f32;
        for a in v.iter_mut() {
            *a /= n;
        }
        math::normalize(v);
    });
    out
}

fn residual_norm(x: &mut [f32], y: &[f32], bias: &[f32], norm: &crate::weights::Norm, eps: f32, h: usize) {
    x.par_chunks_mut(h * ROWS_PER_TASK).zip(y.par_chunks(h * ROWS_PER_TASK)).for_each(|(xs, ys)| {
        math::residual_norm(xs, ys, bias, &norm.gamma, &norm.beta, eps);
    });
}

/// Self-attention of one sequence of `len` tokens: `qkv` holds its
/// `[len, 3·hidden]` rows (Q, K, V side by side, `heads` heads of `d`
/// columns each); `out` gets its `[len, hidden]` context rows. Per head, on
/// this thread: the keys packed as the weights of `Q·Kᵀ`, a row softmax,
/// the values packed as the weights of `P·V`, whose product goes straight
/// into the head's columns; no mask, since sequences are packed, never
/// padded.
fn attention(qkv: &[f32], len: usize, heads: usize, d: usize, out: &mut [f32]) {
    let h = heads * d;
    let isa = Isa::active();
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores = vec![0.0f32; len * len];
    let (mut keys, mut values) = (PackedWeights::new(&[], 0, 0, isa), PackedWeights::new(&[], 0, 0, isa));
    for head in 0..heads {
        let (q0, k0, v0) = (head * d, h + head * d, 2 * h + head * d);
        // Kᵀ as weights: output j, input c is K[j][c].
        keys.repack(Strided { data: &qkv[k0..], rows: len, cols: d, rs: 3 * h, cs: 1 }, isa);
        keys.apply_here(&qkv[q0..], 3 * h, len, &mut scores, len, Epilogue::None);
        math::softmax_rows(&mut scores, len, scale);
        // V as weights: output c, input j is V[j][c].
        values.repack(Strided { data: &qkv[v0..], rows: d, cols: len, rs: 1, cs: 3 * h }, isa);
        values.apply_here(&scores, len, len, &mut out[head * d..], h, Epilogue::None);
    }
}

/// The dense layers' shapes at `tokens` rows, in GFLOP/s on the packed
/// weights ([`crate::dense`]) and the instruction set in use, best of
/// `runs`: `(out, in, GFLOP/s)`.
pub fn dense_gflops(config: &crate::BertConfig, tokens: usize, runs: usize) -> Vec<(usize, usize, f64)> {
    let (h, i) = (config.hidden_size, config.intermediate_size);
    [(3 * h, h), (h, h), (i, h), (h, i)]
        .into_iter()
        .map(|(out, inp)| {
            let x: Vec<f32> = (0..tokens * inp).map(|v| (v % 17) as f32 * 0.01).collect();
            let w: Vec<f32> = (0..out * inp).map(|v| (v % 13) as f32 * 0.01).collect();
            let packed = PackedWeights::new(&w, out, inp, Isa::active());
            let mut dst = vec![0.0; tokens * out];
            let best = (0..runs.max(1))
                .map(|_| {
                    let t = std::time::Instant::now();
                    packed.apply(&x, tokens, &mut dst, Epilogue::None);
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min);
            (out, inp, 2.0 * (tokens * out * inp) as f64 / best / 1e9)
        })
        .collect()
}
