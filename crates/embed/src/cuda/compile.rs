//! The backend's kernels (`kernels.cu`), compiled by NVRTC for one model's
//! shape and precision to a cubin for the device's own architecture.

use std::ffi::CString;

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use crate::BertConfig;
use crate::backend::Precision;

const KERNELS: &str = include_str!("../kernels.cu");

/// The kernels for a model of shape `c`, compiled for compute capability
/// major.minor. Needs only NVRTC, no device: `batchmill-embed-bench compile`
/// checks them on a machine without a GPU.
pub fn compile_kernels(
    c: &BertConfig,
    precision: Precision,
    major: i32,
    minor: i32,
) -> Result<Vec<u8>, crate::Invalid> {
    compile_kernels_logged(c, precision, major, minor, false).map(|(cubin, _)| cubin)
}

/// As [`compile_kernels`], with NVRTC's log (ptxas' report of registers and
/// spills when `verbose`).
pub fn compile_kernels_logged(
    c: &BertConfig,
    precision: Precision,
    major: i32,
    minor: i32,
    verbose: bool,
) -> Result<(Vec<u8>, String), crate::Invalid> {
    let defines = format!(
        "#define HIDDEN {}\n#define HEADS {}\n#define HEAD_DIM {}\n{}",
        c.hidden_size,
        c.num_attention_heads,
        c.head_dim(),
        match precision {
            Precision::Fp32 => "",
            Precision::Fp16 => "#define IN_FP16 1\n",
            Precision::Bf16 => "#define IN_BF16 1\n",
        }
    );
    compile(&(defines + KERNELS), major, minor, verbose)
}

/// Compiles `src` with NVRTC to a cubin for compute capability major.minor
/// (a cubin, not PTX, so a toolkit newer than the driver still loads), with
/// NVRTC's log (ptxas' register and spill report when `verbose`).
fn compile(src: &str, major: i32, minor: i32, verbose: bool) -> Result<(Vec<u8>, String), crate::Invalid> {
    let nvrtc_err = |e: String| crate::Invalid::new("nvrtc", e);
    let c_src = CString::new(src).map_err(|e| nvrtc_err(e.to_string()))?;
    let name = CString::new("batchmill_kernels.cu").map_err(|e| nvrtc_err(e.to_string()))?;
    let prog = nvrtc::create_program(&c_src, Some(&name)).map_err(|e| nvrtc_err(format!("{e:?}")))?;
    let mut options = vec![format!("--gpu-architecture=sm_{major}{minor}"), "--std=c++17".to_owned()];
    if verbose {
        options.push("--ptxas-options=-v".to_owned());
    }
    // SAFETY: `prog` is a live program until destroyed below; the log is a
    // NUL-terminated C string.
    let result = unsafe {
        let compiled = nvrtc::compile_program(prog, &options);
        let raw = nvrtc::get_program_log(prog).unwrap_or_default();
        let log = String::from_utf8_lossy(&raw.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect::<Vec<u8>>())
            .into_owned();
        match compiled {
            Err(e) => Err(nvrtc_err(format!("{e:?}: {log}"))),
            Ok(()) => {
                let mut size = 0usize;
                match nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                    Err(e) => Err(nvrtc_err(format!("{e:?}"))),
                    Ok(()) => {
                        let mut cubin = vec![0u8; size];
                        nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast())
                            .result()
                            .map(|()| (cubin, log))
                            .map_err(|e| nvrtc_err(format!("{e:?}")))
                    }
                }
            }
        }
    };
    // SAFETY: destroyed once, after its last use.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    result
}
