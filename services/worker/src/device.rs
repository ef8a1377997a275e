//! The device a worker runs predictors on. `BATCHMILL_DEVICE=cpu|cuda|auto`
//! chooses; `auto` takes the first CUDA device when the build has the `cuda`
//! feature and the machine has a driver and a GPU, and the CPU otherwise. The
//! device is reported when the worker opens its session. On a CUDA device the
//! `embed` predictor runs its encoder there (`batchmill_embed`'s CUDA
//! backend: a thread owning the context, NVRTC kernels, cuBLAS); Python
//! predictors choose their own device.

use std::fmt;

/// Why no device could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("BATCHMILL_DEVICE={0:?}: expected cpu, cuda or auto")]
    Unknown(String),
    #[error("BATCHMILL_DEVICE=cuda: no CUDA device found")]
    NoGpu,
    #[error("CUDA: {0}")]
    Cuda(String),
}

/// A compute device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Cpu { threads: usize },
    Cuda { ordinal: usize, name: String, memory_bytes: u64 },
}

impl Device {
    /// The device for `choice` (`cpu`, `cuda`, `auto`).
    pub fn select(choice: &str) -> Result<Device, DeviceError> {
        let cpu = Device::Cpu { threads: std::thread::available_parallelism().map_or(1, |n| n.get()) };
        match choice {
            "cpu" => Ok(cpu),
            "auto" => Ok(first_gpu()?.unwrap_or(cpu)),
            "cuda" => first_gpu()?.ok_or(DeviceError::NoGpu),
            other => Err(DeviceError::Unknown(other.to_owned())),
        }
    }
}

/// The first CUDA device, if the driver loads and reports one.
#[cfg(feature = "cuda")]
fn first_gpu() -> Result<Option<Device>, DeviceError> {
    // SAFETY: this only tries to load the CUDA driver library (dlopen); on a
    // machine without one, cudarc's later calls would panic instead of failing.
    #[allow(unsafe_code)]
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return Ok(None);
    }
    let count = cudarc::driver::CudaContext::device_count().map_err(|e| DeviceError::Cuda(format!("driver: {e}")))?;
    if count < 1 {
        return Ok(None);
    }
    let context = cudarc::driver::CudaContext::new(0).map_err(|e| DeviceError::Cuda(format!("device 0: {e}")))?;
    let name = context.name().map_err(|e| DeviceError::Cuda(format!("device 0: {e}")))?;
    let memory_bytes = context.total_mem().map_err(|e| DeviceError::Cuda(format!("device 0: {e}")))? as u64;
    Ok(Some(Device::Cuda { ordinal: 0, name, memory_bytes }))
}

/// Built without the `cuda` feature: no GPU is ever found.
#[cfg(not(feature = "cuda"))]
fn first_gpu() -> Result<Option<Device>, DeviceError> {
    Ok(None)
}

impl Device {
    /// What the scheduler matches jobs' GPU needs against: (GPUs, name,
    /// memory of each in bytes); none on the CPU.
    pub fn gpus(&self) -> (u32, String, u64) {
        match self {
            Device::Cpu { .. } => (0, String::new(), 0),
            Device::Cuda { name, memory_bytes, .. } => (1, name.clone(), *memory_bytes),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu { threads } => write!(f, "cpu ({threads} threads)"),
            Device::Cuda { ordinal, name, .. } => write!(f, "cuda:{ordinal} {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_and_refuses_devices() {
        assert!(matches!(Device::select("cpu"), Ok(Device::Cpu { .. })));
        assert!(Device::select("auto").is_ok());
        assert!(Device::select("tpu").unwrap_err().to_string().contains("expected cpu, cuda or auto"));
        // This machine has no GPU (CI builds with the cuda feature, and the
        // driver it looks for is not there).
        if !std::path::Path::new("/dev/nvidiactl").exists() {
            assert!(Device::select("cuda").unwrap_err().to_string().contains("no CUDA device"));
        }
    }
}
