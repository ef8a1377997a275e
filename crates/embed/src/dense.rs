//! The CPU backend's dense layers, `x·Wᵀ`: the weights are packed once, when
//! the model loads, into panels of `NR` output columns laid out in the order
//! the microkernel reads them, so no GEMM call repacks them; the activations
//! are read in place.
//!
//! The microkernel keeps an `MR × NR` tile of the output in registers and
//! adds one rank-1 product per step of the inner dimension: `NR` weights (one
//! or two vector loads) times `MR` broadcast activations. Its shape is the
//! instruction set's (`Isa`): 6 × 16 with AVX2 (12 of the 16 vector
//! registers hold the tile), 12 × 32 with AVX-512 (24 of 32), 4 × 8 in the
//! portable build. The loops around it follow BLIS: a block of `KC` steps of
//! the inner dimension at a time, so that one weight panel (`KC × NR`) stays
//! in L1 while the microkernel walks down `MC` rows of activations, which
//! stay in L2; blocks of `MC` rows go to rayon's threads.
//!
//! The kernel is plain Rust compiled once per instruction set (as
//! [`crate::math`]'s passes are), so every set computes the same sums in the
//! same order: the sets differ only in speed.
#![allow(unsafe_code)]

use rayon::prelude::*;

use crate::isa::Isa;

/// Rows of activations a thread takes at a time (they stay in L2).
const MC: usize = 96;

/// A linear layer's weight matrix (`[out, in]`, PyTorch's layout) packed for
/// one instruction set's microkernel.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    /// Panel `p` holds, for each input column `k`, the weights of outputs
    /// `p·NR .. p·NR+NR` (zero past `out`): `panels[(p·inp + k)·NR + j]`.
    panels: Vec<f32>,
    out: usize,
    inp: usize,
    isa: Isa,
}

/// A microkernel's shape and blocking.
#[derive(Clone, Copy)]
struct Shape {
    mr: usize,
    nr: usize,
    kc: usize,
}

fn shape(isa: Isa) -> Shape {
    match isa {
        Isa::Portable => Shape { mr: 4, nr: 8, kc: 384 },
        Isa::Avx2 => Shape { mr: 6, nr: 16, kc: 384 },
        Isa::Avx512 => Shape { mr: 12, nr: 32, kc: 192 },
    }
}

impl PackedWeights {
    /// Packs `w` (`[out, inp]`, row-major) for `isa`'s microkernel.
    ///
    /// # Panics
    /// When `w` does not hold `out × inp` values.
    pub fn new(w: &[f32], out: usize, inp: usize, isa: Isa) -> PackedWeights {
        assert_eq!(w.len(), out * inp, "weights are [out, in]");
        let nr = shape(isa).nr;
        let count = out.div_ceil(nr);
        let mut panels = vec![0.0f32; count * inp * nr];
        for (p, panel) in panels.chunks_exact_mut(inp * nr).enumerate() {
            for (k, step) in panel.chunks_exact_mut(nr).enumerate() {
                for (j, v) in step.iter_mut().enumerate() {
                    let o = p * nr + j;
                    if o < out {
                        *v = w[o * inp + k];
                    }
                }
            }
        }
        PackedWeights { panels, out, inp, isa }
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn inp(&self) -> usize {
        self.inp
    }

    /// The instruction set the weights were packed for, and which
    /// [`apply`](Self::apply) uses.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `dst ← x·Wᵀ`: `x` is `[rows, in]`, `dst` `[rows, out]`, both
    /// row-major; blocks of rows run on rayon's threads.
    ///
    /// # Panics
    /// When `x` or `dst` is not of its shape.
    pub fn apply(&self, x: &[f32], rows: usize, dst: &mut [f32]) {
        assert_eq!(x.len(), rows * self.inp, "activations are [rows, in]");
        assert_eq!(dst.len(), rows * self.out, "output is [rows, out]");
        if rows == 0 || self.out == 0 {
            return;
        }
        dst.par_chunks_mut(MC * self.out).zip(x.par_chunks(MC * self.inp)).for_each(|(d, a)| self.block(a, d));
    }

    /// One block of rows on this thread.
    fn block(&self, a: &[f32], d: &mut [f32]) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: weights are packed for a set no wider than the CPU's
            // (`Isa::choose` never picks a wider one).
            Isa::Avx512 => unsafe { block_avx512(self, a, d) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { block_avx2(self, a, d) },
            _ => blocks::<4, 8, false>(self, a, d),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn block_avx2(w: &PackedWeights, a: &[f32], d: &mut [f32]) {
    blocks::<6, 16, true>(w, a, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn block_avx512(w: &PackedWeights, a: &[f32], d: &mut [f32]) {
    blocks::<12, 32, true>(w, a, d)
}

/// `d ← a·Wᵀ` for one block of rows: for each `KC` block of the inner
/// dimension, each weight panel, each `MR` rows.
#[inline(always)]
fn blocks<const MR: usize, const NR: usize, const FMA: bool>(w: &PackedWeights, a: &[f32], d: &mut [f32]) {
    let (inp, out) = (w.inp, w.out);
    let rows = a.len() / inp;
    let kc = shape(w.isa).kc;
    debug_assert_eq!((shape(w.isa).mr, shape(w.isa).nr), (MR, NR));
    let mut k0 = 0;
    while k0 < inp {
        let k1 = (k0 + kc).min(inp);
        for (p, panel) in w.panels.chunks_exact(inp * NR).enumerate() {
            let panel = &panel[k0 * NR..k1 * NR];
            let cols = (out - p * NR).min(NR);
            let mut r = 0;
            while r < rows {
                let take = (rows - r).min(MR);
                tile::<MR, NR, FMA>(a, inp, r, take, k0, k1, panel, d, out, p * NR, cols, k0 > 0);
                r += MR;
            }
        }
        k0 = k1;
    }
}

/// One `MR × NR` tile: rows `r .. r+take` of `a`, inner steps `k0 .. k1`
/// against `panel`, into `d`'s columns `c0 .. c0+cols` (added to what is
/// there when `accumulate`). Rows past `take` repeat the last row, so the
/// loop has no edge case; their sums are not stored.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<const MR: usize, const NR: usize, const FMA: bool>(
    a: &[f32],
    inp: usize,
    r: usize,
    take: usize,
    k0: usize,
    k1: usize,
    panel: &[f32],
    d: &mut [f32],
    out: usize,
    c0: usize,
    cols: usize,
    accumulate: bool,
) {
    let n = k1 - k0;
    assert!(panel.len() >= n * NR, "the panel holds the block");
    let rows: [&[f32]; MR] = std::array::from_fn(|i| {
        let row = r + i.min(take - 1);
        &a[row * inp + k0..row * inp + k1]
    });
    let acc = micro::<MR, NR, FMA>(n, rows, panel);
    for (i, sums) in acc.iter().enumerate().take(take) {
        let row = &mut d[(r + i) * out + c0..][..cols];
        if accumulate {
            for (v, s) in row.iter_mut().zip(sums) {
                *v += s;
            }
        } else {
            row.copy_from_slice(&sums[..cols]);
        }
    }
}

/// The microkernel: `Σₖ rows[i][k] · panel[k·NR + j]` for the tile.
#[inline(always)]
fn micro<const MR: usize, const NR: usize, const FMA: bool>(
    n: usize,
    rows: [&[f32]; MR],
    panel: &[f32],
) -> [[f32; NR]; MR] {
    #[cfg(target_arch = "x86_64")]
    if FMA && MR == 6 && NR == 16 {
        let mut out = [[0.0f32; NR]; MR];
        // SAFETY: callers pass FMA only inside a function compiled for
        // AVX2+FMA; every row holds `n` values and the panel `n·NR`
        // (checked by `tile`).
        unsafe { avx2_6x16(n, std::array::from_fn(|i| rows[i].as_ptr()), panel.as_ptr(), out.as_mut_ptr().cast()) };
        return out;
    }
    let mut acc = [[0.0f32; NR]; MR];
    for (k, b) in panel.chunks_exact(NR).take(n).enumerate() {
        for i in 0..MR {
            let x = rows[i][k];
            for j in 0..NR {
                acc[i][j] = if FMA { x.mul_add(b[j], acc[i][j]) } else { acc[i][j] + x * b[j] };
            }
        }
    }
    acc
}

/// The AVX2 microkernel: twelve accumulators of eight lanes, per step two
/// loads of the panel and six broadcasts.
///
/// # Safety
/// The CPU has AVX2 and FMA; each row holds `n` values, `panel` `16·n`,
/// `out` 96.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_6x16(n: usize, rows: [*const f32; 6], panel: *const f32, out: *mut f32) {
    use std::arch::x86_64::*;
    let mut c: [[__m256; 2]; 6] = [[_mm256_setzero_ps(); 2]; 6];
    for k in 0..n {
        // SAFETY: k < n (the caller's bounds).
        unsafe {
            let b0 = _mm256_loadu_ps(panel.add(k * 16));
            let b1 = _mm256_loadu_ps(panel.add(k * 16 + 8));
            for i in 0..6 {
                let x = _mm256_broadcast_ss(&*rows[i].add(k));
                c[i][0] = _mm256_fmadd_ps(x, b0, c[i][0]);
                c[i][1] = _mm256_fmadd_ps(x, b1, c[i][1]);
            }
        }
    }
    for i in 0..6 {
        // SAFETY: out holds 6 × 16.
        unsafe {
            _mm256_storeu_ps(out.add(i * 16), c[i][0]);
            _mm256_storeu_ps(out.add(i * 16 + 8), c[i][1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x·Wᵀ` by the definition, in f64.
    fn reference(x: &[f32], w: &[f32], rows: usize, out: usize, inp: usize) -> Vec<f64> {
        (0..rows)
            .flat_map(|r| {
                (0..out).map(move |o| (0..inp).map(|k| f64::from(x[r * inp + k]) * f64::from(w[o * inp + k])).sum())
            })
            .collect()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn every_instruction_set_multiplies_odd_shapes_exactly_as_the_definition() {
        // Rows, outputs and inputs that are not multiples of any tile or
        // block, and one inner dimension spanning several KC blocks.
        for (rows, out, inp) in [(1, 1, 1), (7, 19, 5), (13, 33, 385), (200, 50, 800), (97, 64, 17)] {
            let x = values(rows * inp, 1);
            let w = values(out * inp, 2);
            let want = reference(&x, &w, rows, out, inp);
            for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
                if isa > Isa::detected() {
                    continue;
                }
                let packed = PackedWeights::new(&w, out, inp, isa);
                let mut got = vec![f32::NAN; rows * out];
                packed.apply(&x, rows, &mut got);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (inp as f64).sqrt();
                    assert!((f64::from(*g) - e).abs() < tol, "{isa:?} {rows}×{out}×{inp} at {i}: {g} against {e}");
                }
            }
        }
    }

    #[test]
    fn no_rows_is_no_work() {
        let packed = PackedWeights::new(&[1.0; 6], 2, 3, Isa::Portable);
        let mut dst: Vec<f32> = Vec::new();
        packed.apply(&[], 0, &mut dst);
        assert!(dst.is_empty());
    }
}
