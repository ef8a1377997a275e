//! The device a worker runs predictors on. `BATCHMILL_DEVICE=cpu|cuda|auto`
//! chooses; the CUDA backend (cudarc, a thread owning the context) arrives
//! with the GPU `embed` predictor, and until then `auto` means CPU.

use std::fmt;

/// A compute device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Cpu { threads: usize },
}

impl Device {
    /// The device for `choice` (`cpu`, `cuda`, `auto`).
    pub fn select(choice: &str) -> Result<Device, String> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        match choice {
            "cpu" | "auto" => Ok(Device::Cpu { threads }),
            "cuda" => Err("BATCHMILL_DEVICE=cuda: this build has no CUDA backend yet; use cpu or auto".into()),
            other => Err(format!("BATCHMILL_DEVICE={other:?}: expected cpu, cuda or auto")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu { threads } => write!(f, "cpu ({threads} threads)"),
        }
    }
}
