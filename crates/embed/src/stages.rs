//! Where two forward passes part: the activations of a device's
//! [`Trace`] against a reference's (the CPU's fp32), stage by stage. A bug in
//! a kernel shows as the first stage whose error jumps; rounding at fp16 or
//! bf16 shows as a small error that grows slowly through the layers.

use crate::backend::Trace;

/// How far one stage is from the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct StageDiff {
    pub stage: String,
    /// Largest absolute difference of any value.
    pub max_abs: f32,
    /// Root-mean-square difference over the reference's root-mean-square.
    pub rel_rms: f32,
    /// The token (row) holding the largest difference.
    pub worst_row: usize,
}

/// Compares `other` with `reference`, stage by stage; both must have the
/// same stages of the same length, rows of `width` values.
pub fn compare(reference: &Trace, other: &Trace, width: usize) -> Result<Vec<StageDiff>, String> {
    if reference.len() != other.len() {
        return Err(format!("{} stages against {} in the reference", other.len(), reference.len()));
    }
    reference
        .iter()
        .zip(other)
        .map(|((stage, a), (name, b))| {
            if stage != name || a.len() != b.len() {
                return Err(format!("stage {name:?} ({} values) against {stage:?} ({})", b.len(), a.len()));
            }
            let (mut max_abs, mut at, mut diff2, mut ref2) = (0f32, 0, 0f64, 0f64);
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let d = (x - y).abs();
                // A NaN counts as the largest difference.
                if d > max_abs || (d.is_nan() && !max_abs.is_nan()) {
                    (max_abs, at) = (d, i);
                }
                diff2 += f64::from(d) * f64::from(d);
                ref2 += f64::from(*x) * f64::from(*x);
            }
            let rel_rms = (diff2 / ref2.max(f64::MIN_POSITIVE)).sqrt() as f32;
            Ok(StageDiff { stage: stage.clone(), max_abs, rel_rms, worst_row: at / width.max(1) })
        })
        .collect()
}
