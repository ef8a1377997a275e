//! The device side: a synchronous [`Backend`] runs the encoder over packed
//! token sequences. One thread owns it (see [`crate::Embedder`]).

use crate::{EmbedError, Invalid, Weights};

/// Texts' token ids laid end to end, with no padding: sequence `i` is the
/// next `lens[i]` ids. Positions restart at 0 for each sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    pub ids: Vec<u32>,
    pub lens: Vec<usize>,
}

impl Packed {
    pub fn push(&mut self, ids: &[u32]) {
        self.ids.extend_from_slice(ids);
        self.lens.push(ids.len());
    }

    /// Each token's position within its sequence.
    pub fn positions(&self) -> Vec<u32> {
        self.lens.iter().flat_map(|&len| 0..len as u32).collect()
    }

    /// Start offset of each sequence, then the total.
    pub fn offsets(&self) -> Vec<usize> {
        let mut offsets = Vec::with_capacity(self.lens.len() + 1);
        let mut at = 0;
        offsets.push(0);
        for len in &self.lens {
            at += len;
            offsets.push(at);
        }
        offsets
    }
}

/// Runs the encoder.
pub trait Backend {
    /// The device, as the worker reports it ("cpu (8 threads)", "cuda:0 NVIDIA H100").
    fn device(&self) -> String;

    /// Most tokens worth packing into one call.
    fn max_tokens(&self) -> usize;

    /// The L2-normalised, mean-pooled embedding of each sequence, laid end
    /// to end (`lens.len() × hidden`).
    fn embed(&mut self, batch: &Packed) -> Result<Vec<f32>, EmbedError>;

    /// As [`embed`](Self::embed), keeping the activations between stages
    /// (see [`Trace`]), to find where two devices part.
    fn trace(&mut self, batch: &Packed) -> Result<(Vec<f32>, Trace), EmbedError>;
}

/// A forward pass's activations, in order, each `[tokens, hidden]` as f32:
/// `embeddings` (after their layer norm), then per layer `i`:
/// `layer i attention` (the heads' context, before the output projection),
/// `layer i attention norm` and `layer i output` (the residual stream after
/// each layer norm).
pub type Trace = Vec<(String, Vec<f32>)>;

/// How a GPU stores GEMM inputs (the weights and the activations that feed
/// GEMMs); products accumulate in fp32 at every precision, and the CPU
/// always computes in fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    Fp32,
    /// IEEE half: tensor cores.
    Fp16,
    /// bfloat16: tensor cores, fp32's range (compute capability 8.0 and newer).
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Precision, Invalid> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Invalid::new(format!("precision {other:?}"), "expected fp32, fp16 or bf16")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    /// The least cosine an embedding should have with its fp32 reference.
    pub fn cosine_bar(self) -> f32 {
        if self == Precision::Fp32 { 0.9999 } else { 0.999 }
    }
}

/// Which device to run on: `BATCHMILL_DEVICE=cpu|cuda|auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    /// CUDA device 0 when there is one, else the CPU.
    Auto,
}

impl DeviceChoice {
    pub fn parse(s: &str) -> Result<DeviceChoice, Invalid> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            "auto" | "" => Ok(DeviceChoice::Auto),
            other => Err(Invalid::new(format!("device {other:?}"), "expected cpu, cuda or auto")),
        }
    }
}

/// Opens the backend `choice` asks for, with `weights` uploaded; a GPU
/// backend stores GEMM inputs at `precision`.
pub fn open(choice: DeviceChoice, weights: Weights, precision: Precision) -> Result<Box<dyn Backend>, EmbedError> {
    #[cfg(not(feature = "cuda"))]
    let _ = precision;
    match choice {
        DeviceChoice::Cpu => Ok(Box::new(crate::cpu::Cpu::new(weights))),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda => crate::cuda::open(0, weights, precision),
        #[cfg(feature = "cuda")]
        DeviceChoice::Auto => {
            if crate::cuda::available() {
                crate::cuda::open(0, weights, precision)
            } else {
                Ok(Box::new(crate::cpu::Cpu::new(weights)))
            }
        }
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda => Err(EmbedError::Device {
            device: "cuda".into(),
            message: "this build has no CUDA backend (build with the cuda feature)".into(),
        }),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Auto => Ok(Box::new(crate::cpu::Cpu::new(weights))),
    }
}
