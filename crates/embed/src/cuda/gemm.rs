//! The backend's GEMM through cuBLAS, and a measure of its throughput on
//! the model's shapes, to set against the device's tensor-core peak.

use cudarc::cublas::{CudaBlas, result as blas, sys as blas_sys};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::{DeviceLinear, Input, dev_err, unavailable};
use crate::backend::Precision;
use crate::{BertConfig, EmbedError};

/// Throughput of the backend's GEMM (`cublasGemmEx`, as [`Cuda`] calls it)
/// for `t` tokens through each linear layer shape of `c`, in TFLOP/s: what
/// the model's GEMMs reach on this device, to set against its tensor-core
/// peak. Returns (out, inp, TFLOP/s) per shape.
pub fn gemm_tflops(
    ordinal: usize,
    c: &BertConfig,
    precision: Precision,
    t: usize,
) -> Result<Vec<(usize, usize, f64)>, EmbedError> {
    match precision {
        Precision::Fp32 => gemm_tflops_of::<f32>(ordinal, c, t),
        Precision::Fp16 => gemm_tflops_of::<half::f16>(ordinal, c, t),
        Precision::Bf16 => gemm_tflops_of::<half::bf16>(ordinal, c, t),
    }
}

fn gemm_tflops_of<T: Input>(ordinal: usize, c: &BertConfig, t: usize) -> Result<Vec<(usize, usize, f64)>, EmbedError> {
    let err = |e: &dyn std::fmt::Display| dev_err(&format!("cuda:{ordinal}"), e);
    if let Some(why) = unavailable() {
        return Err(dev_err("cuda", why));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| err(&e))?;
    let stream = ctx.default_stream();
    let blas = CudaBlas::new(stream.clone()).map_err(|e| err(&e))?;
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut out = Vec::new();
    for (o, inp) in [(3 * h, h), (h, h), (i, h), (h, i)] {
        let l = DeviceLinear::<T> {
            w: stream.alloc_zeros(o * inp).map_err(|e| err(&e))?,
            b: stream.alloc_zeros(o).map_err(|e| err(&e))?,
            out: o,
            inp,
        };
        let x: CudaSlice<T> = stream.alloc_zeros(t * inp).map_err(|e| err(&e))?;
        let mut dst: CudaSlice<f32> = stream.alloc_zeros(t * o).map_err(|e| err(&e))?;
        gemm(&blas, &stream, &x, &l, &mut dst, t).map_err(|e| err(&e))?;
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (start, end) = (ctx.new_event(timing).map_err(|e| err(&e))?, ctx.new_event(timing).map_err(|e| err(&e))?);
        const REPS: usize = 50;
        start.record(&stream).map_err(|e| err(&e))?;
        for _ in 0..REPS {
            gemm(&blas, &stream, &x, &l, &mut dst, t).map_err(|e| err(&e))?;
        }
        end.record(&stream).map_err(|e| err(&e))?;
        let ms = f64::from(start.elapsed_ms(&end).map_err(|e| err(&e))?);
        let flops = 2.0 * (t * o * inp * REPS) as f64;
        out.push((o, inp, flops / (ms / 1e3) / 1e12));
    }
    Ok(out)
}

/// `dst[t, out] = x[t, inp] · Wᵀ` with cuBLAS (column-major): dstᵀ = W · xᵀ,
/// where row-major W `[out, inp]` is column-major `[inp, out]`, transposed.
pub(super) fn gemm<T: Input>(
    blas: &CudaBlas,
    stream: &CudaStream,
    x: &CudaSlice<T>,
    l: &DeviceLinear<T>,
    dst: &mut CudaSlice<f32>,
    t: usize,
) -> Result<(), blas::CublasError> {
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (w_ptr, _w) = l.w.device_ptr(stream);
    let (x_ptr, _x) = x.device_ptr(stream);
    let (d_ptr, _d) = dst.device_ptr_mut(stream);
    // SAFETY: W holds out·inp elements, x at least t·inp, dst at least t·out.
    unsafe {
        blas::gemm_ex(
            *blas.handle(),
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            l.out as i32,
            t as i32,
            l.inp as i32,
            (&alpha as *const f32).cast(),
            w_ptr as *const _,
            T::DATA_TYPE,
            l.inp as i32,
            x_ptr as *const _,
            T::DATA_TYPE,
            l.inp as i32,
            (&beta as *const f32).cast(),
            d_ptr as *mut _,
            blas_sys::cudaDataType::CUDA_R_32F,
            l.out as i32,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
}
