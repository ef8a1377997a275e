//! The CUDA backend, through cudarc: the driver API, kernels compiled by
//! NVRTC at load time (`kernels.cu`, to a cubin for the device's own
//! architecture), cuBLAS GEMMs (`cublasGemmEx`: fp16 or bf16 inputs on
//! tensor cores, or fp32, all accumulating in fp32), one stream of its own.
//! Weights are uploaded once when the backend opens; activation buffers, and
//! the pinned host buffers a chunk's token ids go up through and its
//! embeddings come back through, grow to the largest chunk seen and are
//! reused. Everything here runs on the thread that owns the backend.
#![allow(unsafe_code)]

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, sys as blas_sys};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PinnedHostSlice, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::{Ptx, sys as nvrtc_sys};

use crate::backend::{Backend, Packed, Precision, Trace};
use crate::weights::{Linear, Weights};
use crate::{BertConfig, EmbedError};

mod compile;
mod gemm;

pub use compile::{compile_kernels, compile_kernels_logged};
use gemm::gemm;
pub use gemm::gemm_tflops;

/// Whether the CUDA driver, NVRTC and cuBLAS load and a device is present.
pub fn available() -> bool {
    unavailable().is_none()
}

/// Why the CUDA backend cannot run here, naming what is missing; None if it can.
pub fn unavailable() -> Option<String> {
    // SAFETY: these only try to load the libraries (dlopen).
    let (driver, nvrtc, cublas) = unsafe {
        (cudarc::driver::sys::is_culib_present(), nvrtc_sys::is_culib_present(), blas_sys::is_culib_present())
    };
    if !driver {
        return Some("the CUDA driver (libcuda.so) is not installed".into());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => {}
        Ok(_) => return Some("the CUDA driver reports no device".into()),
        Err(e) => return Some(format!("the CUDA driver: {e}")),
    }
    let missing: Vec<&str> = [(nvrtc, "NVRTC (libnvrtc.so)"), (cublas, "cuBLAS (libcublas.so)")]
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, n)| *n)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not found: install the CUDA toolkit's libraries or put their directory on LD_LIBRARY_PATH (or run on the CPU: BATCHMILL_DEVICE=cpu)",
            missing.join(" and ")
        )
    })
}

/// What a GEMM's inputs are stored as.
trait Input: DeviceRepr + ValidAsZeroBits + Copy + Unpin + Send + 'static {
    const PRECISION: Precision;
    const DATA_TYPE: blas_sys::cudaDataType;
    fn from_f32(v: &[f32]) -> Vec<Self>;
    fn to_f32(v: &[Self]) -> Vec<f32>;
}

impl Input for f32 {
    const PRECISION: Precision = Precision::Fp32;
    const DATA_TYPE: blas_sys::cudaDataType = blas_sys::cudaDataType::CUDA_R_32F;
    fn from_f32(v: &[f32]) -> Vec<f32> {
        v.to_vec()
    }
    fn to_f32(v: &[f32]) -> Vec<f32> {
        v.to_vec()
    }
}

impl Input for half::f16 {
    const PRECISION: Precision = Precision::Fp16;
    const DATA_TYPE: blas_sys::cudaDataType = blas_sys::cudaDataType::CUDA_R_16F;
    fn from_f32(v: &[f32]) -> Vec<half::f16> {
        v.iter().copied().map(half::f16::from_f32).collect()
    }
    fn to_f32(v: &[half::f16]) -> Vec<f32> {
        v.iter().map(|x| x.to_f32()).collect()
    }
}

impl Input for half::bf16 {
    const PRECISION: Precision = Precision::Bf16;
    const DATA_TYPE: blas_sys::cudaDataType = blas_sys::cudaDataType::CUDA_R_16BF;
    fn from_f32(v: &[f32]) -> Vec<half::bf16> {
        v.iter().copied().map(half::bf16::from_f32).collect()
    }
    fn to_f32(v: &[half::bf16]) -> Vec<f32> {
        v.iter().map(|x| x.to_f32()).collect()
    }
}

/// Opens device `ordinal` with `weights` uploaded, GEMM inputs (weights and
/// the activations that feed GEMMs) stored at `precision`.
pub fn open(ordinal: usize, weights: Weights, precision: Precision) -> Result<Box<dyn Backend>, EmbedError> {
    if let Some(why) = unavailable() {
        return Err(EmbedError::Device { device: "cuda".into(), message: why });
    }
    Ok(match precision {
        Precision::Fp32 => Box::new(Cuda::<f32>::new(ordinal, &weights)?),
        Precision::Fp16 => Box::new(Cuda::<half::f16>::new(ordinal, &weights)?),
        Precision::Bf16 => Box::new(Cuda::<half::bf16>::new(ordinal, &weights)?),
    })
}

struct DeviceLinear<T> {
    w: CudaSlice<T>,
    b: CudaSlice<f32>,
    out: usize,
    inp: usize,
}

struct DeviceLayer<T> {
    qkv: DeviceLinear<T>,
    attn_out: DeviceLinear<T>,
    attn_gamma: CudaSlice<f32>,
    attn_beta: CudaSlice<f32>,
    up: DeviceLinear<T>,
    down: DeviceLinear<T>,
    out_gamma: CudaSlice<f32>,
    out_beta: CudaSlice<f32>,
}

struct Kernels {
    embed: CudaFunction,
    residual_norm: CudaFunction,
    bias_gelu: CudaFunction,
    attention: CudaFunction,
    pool: CudaFunction,
}

/// Activations for up to `tokens` tokens and `seqs` sequences.
struct Buffers<T> {
    tokens: usize,
    seqs: usize,
    x: CudaSlice<f32>,
    xin: CudaSlice<T>,
    qkv: CudaSlice<f32>,
    ctx: CudaSlice<T>,
    tmp: CudaSlice<f32>,
    up: CudaSlice<f32>,
    upin: CudaSlice<T>,
    out: CudaSlice<f32>,
    /// Page-locked host memory a chunk's token ids, positions and sequence
    /// offsets are laid end to end in (see [`Buffers::stage`]), and where
    /// they go on the device.
    staged: PinnedHostSlice<u32>,
    staged_dev: CudaSlice<u32>,
    /// Page-locked host memory the embeddings are copied back into.
    host: PinnedHostSlice<f32>,
}

impl<T> Buffers<T> {
    /// Writes `batch`'s ids, positions and offsets into the pinned staging
    /// buffer and starts their copy to the device; returns their length.
    fn stage(&mut self, batch: &Packed, stream: &CudaStream) -> Result<usize, cudarc::driver::DriverError> {
        let (t, seqs) = (batch.ids.len(), batch.lens.len());
        let n = 2 * t + seqs + 1;
        let host = self.staged.as_mut_slice()?;
        let (ids, rest) = host.split_at_mut(t);
        let (pos, offs) = rest.split_at_mut(t);
        ids.copy_from_slice(&batch.ids);
        pos.copy_from_slice(&batch.positions());
        for (o, at) in offs.iter_mut().zip(batch.offsets()) {
            *o = at as u32;
        }
        let (dst, _guard) = self.staged_dev.device_ptr_mut(stream);
        // SAFETY: both buffers hold at least n elements (2·tokens + seqs + 1
        // was allocated); the pinned source stays untouched until the stream
        // synchronizes at the end of the chunk.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, &host[..n], stream.cu_stream())? };
        Ok(n)
    }

    /// Copies the first `n` embedding floats back and waits for the stream.
    fn fetch(&mut self, n: usize, stream: &CudaStream) -> Result<Vec<f32>, cudarc::driver::DriverError> {
        let host = self.host.as_mut_slice()?;
        let (src, _guard) = self.out.device_ptr(stream);
        // SAFETY: `out` and `host` both hold seqs·hidden ≥ n floats.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut host[..n], src, stream.cu_stream())? };
        stream.synchronize()?;
        Ok(host[..n].to_vec())
    }
}

struct Cuda<T: Input> {
    name: String,
    config: BertConfig,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    word: CudaSlice<f32>,
    position: CudaSlice<f32>,
    token_type: CudaSlice<f32>,
    embed_gamma: CudaSlice<f32>,
    embed_beta: CudaSlice<f32>,
    layers: Vec<DeviceLayer<T>>,
    buffers: Option<Buffers<T>>,
}

impl<T: Input> Cuda<T> {
    fn new(ordinal: usize, w: &Weights) -> Result<Cuda<T>, EmbedError> {
        let ctx = CudaContext::new(ordinal).map_err(|e| dev_err("cuda", e))?;
        let name = format!("cuda:{ordinal} {}", ctx.name().map_err(|e| dev_err("cuda", e))?);
        let err = |e: &dyn std::fmt::Display| EmbedError::Device { device: name.clone(), message: e.to_string() };
        // One stream, so the per-slice event tracking only costs time.
        // SAFETY: every launch and copy below is on this one stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| err(&e))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| err(&e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| err(&e))?;
        let c = &w.config;
        if T::PRECISION == Precision::Bf16 && major < 8 {
            return Err(err(&format!(
                "bf16 needs compute capability 8.0 or newer; this device has {major}.{minor} (use fp16)"
            )));
        }
        let cubin = compile_kernels(c, T::PRECISION, major, minor).map_err(|e| err(&e))?;
        let module = ctx.load_module(Ptx::from_binary(cubin)).map_err(|e| err(&e))?;
        let function = |n: &str| module.load_function(n).map_err(|e| err(&e));
        let kernels = Kernels {
            embed: function("embed")?,
            residual_norm: function("residual_norm")?,
            bias_gelu: function("bias_gelu")?,
            attention: function("attention")?,
            pool: function("pool")?,
        };
        let up32 = |v: &[f32]| stream.clone_htod(v).map_err(|e| err(&e));
        let linear = |l: &Linear| -> Result<DeviceLinear<T>, EmbedError> {
            Ok(DeviceLinear {
                w: stream.clone_htod(&T::from_f32(&l.w)).map_err(|e| err(&e))?,
                b: stream.clone_htod(&l.b).map_err(|e| err(&e))?,
                out: l.out,
                inp: l.inp,
            })
        };
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(DeviceLayer {
                qkv: linear(&l.qkv)?,
                attn_out: linear(&l.attn_out)?,
                attn_gamma: up32(&l.attn_norm.gamma)?,
                attn_beta: up32(&l.attn_norm.beta)?,
                up: linear(&l.up)?,
                down: linear(&l.down)?,
                out_gamma: up32(&l.out_norm.gamma)?,
                out_beta: up32(&l.out_norm.beta)?,
            });
        }
        Ok(Cuda {
            config: c.clone(),
            word: up32(&w.word)?,
            position: up32(&w.position)?,
            token_type: up32(&w.token_type)?,
            embed_gamma: up32(&w.embed_norm.gamma)?,
            embed_beta: up32(&w.embed_norm.beta)?,
            layers,
            kernels,
            blas,
            stream,
            ctx,
            buffers: None,
            name,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> EmbedError {
        EmbedError::Device { device: self.name.clone(), message: e.to_string() }
    }

    /// Buffers for at least `tokens` tokens and `seqs` sequences. They only
    /// grow, each dimension to the largest asked so far: chunks come longest
    /// sequences first, so the token count peaks early and the sequence
    /// count late.
    fn buffers(&mut self, tokens: usize, seqs: usize) -> Result<Buffers<T>, EmbedError> {
        let (mut tokens, mut seqs) = (tokens, seqs);
        if let Some(b) = self.buffers.take() {
            if b.tokens >= tokens && b.seqs >= seqs {
                return Ok(b);
            }
            (tokens, seqs) = (tokens.max(b.tokens), seqs.max(b.seqs));
        }
        let (h, i) = (self.config.hidden_size, self.config.intermediate_size);
        let s = &self.stream;
        let e =
            |e: cudarc::driver::DriverError| EmbedError::Device { device: self.name.clone(), message: e.to_string() };
        Ok(Buffers {
            tokens,
            seqs,
            x: s.alloc_zeros(tokens * h).map_err(e)?,
            xin: s.alloc_zeros(tokens * h).map_err(e)?,
            qkv: s.alloc_zeros(tokens * 3 * h).map_err(e)?,
            ctx: s.alloc_zeros(tokens * h).map_err(e)?,
            tmp: s.alloc_zeros(tokens * h).map_err(e)?,
            up: s.alloc_zeros(tokens * i).map_err(e)?,
            upin: s.alloc_zeros(tokens * i).map_err(e)?,
            out: s.alloc_zeros(seqs * h).map_err(e)?,
            // SAFETY (both): written before they are read.
            staged: unsafe { self.ctx.alloc_pinned_with_flags(2 * tokens + seqs + 1, 0) }.map_err(e)?,
            staged_dev: s.alloc_zeros(2 * tokens + seqs + 1).map_err(e)?,
            host: unsafe { self.ctx.alloc_pinned_with_flags(seqs * h, 0) }.map_err(e)?,
        })
    }

    /// `x = layer_norm(x + y + bias)` over the first `t` rows, also written
    /// to `xin` as the next GEMM's input.
    fn residual_norm(
        &self,
        (x, y, xin): (&mut CudaSlice<f32>, &CudaSlice<f32>, &mut CudaSlice<T>),
        bias: &CudaSlice<f32>,
        (gamma, beta): (&CudaSlice<f32>, &CudaSlice<f32>),
        t: usize,
    ) -> Result<(), EmbedError> {
        let (eps, rows) = (self.config.layer_norm_eps as f32, t as i32);
        // SAFETY: arguments match residual_norm in kernels.cu; x, y and xin
        // hold at least t rows of the hidden width.
        unsafe {
            self.stream
                .launch_builder(&self.kernels.residual_norm)
                .arg(x)
                .arg(y)
                .arg(bias)
                .arg(gamma)
                .arg(beta)
                .arg(&eps)
                .arg(&rows)
                .arg(xin)
                .launch(rows_config(t))
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// One forward pass over `batch` in the kept buffers (grown if needed).
    fn pass(&mut self, batch: &Packed, trace: Option<&mut Trace>) -> Result<Vec<f32>, EmbedError> {
        if batch.lens.is_empty() {
            return Ok(Vec::new());
        }
        let mut b = self.buffers(batch.ids.len().max(1024), batch.lens.len().max(64))?;
        let out = self.run(batch, &mut b, trace);
        self.buffers = Some(b);
        out
    }

    /// The first `n` values of `src` on the host, as f32 (for a trace).
    fn download<U: Input>(&self, src: &CudaSlice<U>, n: usize) -> Result<Vec<f32>, EmbedError> {
        Ok(U::to_f32(&self.stream.clone_dtoh(&src.slice(..n)).map_err(|e| self.err(e))?))
    }

    fn run(
        &mut self,
        batch: &Packed,
        b: &mut Buffers<T>,
        mut trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>, EmbedError> {
        let c = self.config.clone();
        let (h, t, seqs) = (c.hidden_size, batch.ids.len(), batch.lens.len());
        let eps = c.layer_norm_eps as f32;
        let s = self.stream.clone();
        let staged = b.stage(batch, &s).map_err(|e| self.err(e))?;
        let (ids, pos) = (b.staged_dev.slice(..t), b.staged_dev.slice(t..2 * t));
        let rows = t as i32;
        let k = &self.kernels;
        // SAFETY (every launch): arguments match the kernel's signature in
        // kernels.cu, and buffers hold at least `t` rows of their width.
        unsafe {
            s.launch_builder(&k.embed)
                .arg(&ids)
                .arg(&pos)
                .arg(&rows)
                .arg(&self.word)
                .arg(&self.position)
                .arg(&self.token_type)
                .arg(&self.embed_gamma)
                .arg(&self.embed_beta)
                .arg(&eps)
                .arg(&mut b.x)
                .arg(&mut b.xin)
                .launch(rows_config(t))
                .map_err(|e| self.err(e))?;
        }
        if let Some(trace) = trace.as_deref_mut() {
            trace.push(("embeddings".to_owned(), self.download(&b.x, t * h)?));
        }
        for (n, l) in self.layers.iter().enumerate() {
            self.layer(n, l, b, 2 * t..staged, (t, seqs), trace.as_deref_mut())?;
        }
        let pool_cfg = LaunchConfig {
            grid_dim: (seqs as u32, 1, 1),
            block_dim: (h.next_multiple_of(32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe {
            let offs = b.staged_dev.slice(2 * t..staged);
            s.launch_builder(&k.pool).arg(&b.x).arg(&offs).arg(&mut b.out).launch(pool_cfg).map_err(|e| self.err(e))?;
        }
        b.fetch(seqs * h, &s).map_err(|e| self.err(e))
    }

    /// Encoder layer `n` over the `t` tokens of `seqs` sequences in `b`
    /// (`offsets`: where in the staged values each sequence's start is), in
    /// place in `b.x` and `b.xin`.
    fn layer(
        &self,
        n: usize,
        l: &DeviceLayer<T>,
        b: &mut Buffers<T>,
        offsets: std::ops::Range<usize>,
        (t, seqs): (usize, usize),
        mut trace: Option<&mut Trace>,
    ) -> Result<(), EmbedError> {
        let (c, s, k) = (&self.config, &self.stream, &self.kernels);
        let h = c.hidden_size;
        let offs = b.staged_dev.slice(offsets);
        gemm(&self.blas, s, &b.xin, &l.qkv, &mut b.qkv, t).map_err(|e| self.err(e))?;
        let attn_cfg = LaunchConfig {
            grid_dim: (seqs as u32, c.num_attention_heads as u32, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe {
            s.launch_builder(&k.attention)
                .arg(&b.qkv)
                .arg(&l.qkv.b)
                .arg(&offs)
                .arg(&mut b.ctx)
                .launch(attn_cfg)
                .map_err(|e| self.err(e))?;
        }
        if let Some(trace) = trace.as_deref_mut() {
            trace.push((format!("layer {n} attention"), self.download(&b.ctx, t * h)?));
        }
        gemm(&self.blas, s, &b.ctx, &l.attn_out, &mut b.tmp, t).map_err(|e| self.err(e))?;
        self.residual_norm((&mut b.x, &b.tmp, &mut b.xin), &l.attn_out.b, (&l.attn_gamma, &l.attn_beta), t)?;
        if let Some(trace) = trace.as_deref_mut() {
            trace.push((format!("layer {n} attention norm"), self.download(&b.x, t * h)?));
        }
        gemm(&self.blas, s, &b.xin, &l.up, &mut b.up, t).map_err(|e| self.err(e))?;
        let values = t * l.up.out;
        let cols = l.up.out as i32;
        let gelu_cfg = LaunchConfig {
            grid_dim: (values.div_ceil(256).min(65_535) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe {
            s.launch_builder(&k.bias_gelu)
                .arg(&b.up)
                .arg(&l.up.b)
                .arg(&cols)
                .arg(&values)
                .arg(&mut b.upin)
                .launch(gelu_cfg)
                .map_err(|e| self.err(e))?;
        }
        gemm(&self.blas, s, &b.upin, &l.down, &mut b.tmp, t).map_err(|e| self.err(e))?;
        self.residual_norm((&mut b.x, &b.tmp, &mut b.xin), &l.down.b, (&l.out_gamma, &l.out_beta), t)?;
        if let Some(trace) = trace {
            trace.push((format!("layer {n} output"), self.download(&b.x, t * h)?));
        }
        Ok(())
    }
}

impl<T: Input> Backend for Cuda<T> {
    fn device(&self) -> String {
        format!("{} {}", self.name, T::PRECISION.as_str())
    }

    fn max_tokens(&self) -> usize {
        16_384
    }

    fn embed(&mut self, batch: &Packed) -> Result<Vec<f32>, EmbedError> {
        self.pass(batch, None)
    }

    fn trace(&mut self, batch: &Packed) -> Result<(Vec<f32>, Trace), EmbedError> {
        let mut trace = Trace::new();
        let out = self.pass(batch, Some(&mut trace))?;
        Ok((out, trace))
    }
}

/// A warp per row of `t` rows, 8 rows a block.
fn rows_config(t: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (t.div_ceil(8) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn dev_err(device: &str, e: impl std::fmt::Display) -> EmbedError {
    EmbedError::Device { device: device.into(), message: e.to_string() }
}
