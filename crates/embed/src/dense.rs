//! The CPU backend's dense layers, `x·Wᵀ`: the weights are packed once, when
//! the model loads, into panels of `NR` output columns laid out in the order
//! the microkernel reads them, so no GEMM call repacks them; the activations
//! are read in place.
//!
//! The microkernel keeps an `MR × NR` tile of the output in registers and
//! adds one rank-1 product per step of the inner dimension: `NR` weights (one
//! or two vector loads) times `MR` broadcast activations. Its shape is the
//! instruction set's ([`Isa`]): 6 × 16 with AVX2 (12 of the 16 vector
//! registers hold the tile), 12 × 32 with AVX-512 (24 of 32), 4 × 8 in the
//! portable build. The loops around it follow BLIS: a block of `KC` steps of
//! the inner dimension at a time, so that one weight panel (`KC × NR`) stays
//! in L1 while the microkernel walks down at most `MC` rows of activations,
//! which stay in L2; such blocks of rows go to rayon's threads.
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

/// A strided view of a matrix to multiply by: element `(r, c)` is
/// `data[r·rs + c·cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl PackedWeights {
    /// Packs `w` (`[out, inp]`, row-major) for `isa`'s microkernel.
    ///
    /// # Panics
    /// When `w` does not hold `out × inp` values.
    pub fn new(w: &[f32], out: usize, inp: usize, isa: Isa) -> PackedWeights {
        assert_eq!(w.len(), out * inp, "weights are [out, in]");
        let mut packed = PackedWeights { panels: Vec::new(), out: 0, inp: 0, isa };
        packed.repack(Strided { data: w, rows: out, cols: inp, rs: inp, cs: 1 }, isa);
        packed
    }

    /// Packs `w` (`[out, inp]` as a strided view) in place of what this held,
    /// reusing its memory: for operands packed at every call (attention's
    /// keys and values).
    ///
    /// # Panics
    /// When the view reaches past its slice.
    pub fn repack(&mut self, w: Strided<'_>, isa: Isa) {
        let (out, inp) = (w.rows, w.cols);
        assert!(out == 0 || inp == 0 || (out - 1) * w.rs + (inp - 1) * w.cs < w.data.len(), "the view fits its slice");
        let nr = shape(isa).nr;
        // Only the last panel's columns past `out` are not written below:
        // zero them (and any new memory), not the whole buffer.
        self.panels.resize(out.div_ceil(nr) * inp * nr, 0.0);
        (self.out, self.inp, self.isa) = (out, inp, isa);
        if inp == 0 {
            return;
        }
        for (p, panel) in self.panels.chunks_exact_mut(inp * nr).enumerate() {
            let width = (out - p * nr).min(nr);
            let first = p * nr * w.rs;
            if width < nr {
                panel.fill(0.0);
            }
            if w.rs == 1 {
                // Each step's outputs lie side by side: copy runs (attention's
                // values).
                for (k, step) in panel.chunks_exact_mut(nr).enumerate() {
                    let src = &w.data[first + k * w.cs..][..width];
                    for (d, s) in step.iter_mut().zip(src) {
                        *d = *s;
                    }
                }
            } else if w.cs == 1 {
                // Each output's inputs lie side by side: a transpose
                // (attention's keys, and weights as they load).
                for j in 0..width {
                    let src = &w.data[first + j * w.rs..][..inp];
                    for (step, v) in panel.chunks_exact_mut(nr).zip(src) {
                        step[j] = *v;
                    }
                }
            } else {
                // Each output's inputs lie `cs` apart: scatter each into its
                // column of the panel.
                for j in 0..width {
                    let start = first + j * w.rs;
                    let src = w.data[start..].iter().step_by(w.cs).take(inp);
                    for (step, v) in panel.chunks_exact_mut(nr).zip(src) {
                        step[j] = *v;
                    }
                }
            }
        }
    }

    pub fn out(&self) -> usize {
        self.out
    }

    /// `dst ← x·Wᵀ`: `x` is `[rows, in]`, `dst` `[rows, out]`, both
    /// row-major; blocks of rows run on rayon's threads.
    ///
    /// # Panics
    /// When `x` or `dst` is not of its shape.
    pub fn apply(&self, x: &[f32], rows: usize, dst: &mut [f32], epilogue: Epilogue<'_>) {
        assert_eq!(x.len(), rows * self.inp, "activations are [rows, in]");
        assert_eq!(dst.len(), rows * self.out, "output is [rows, out]");
        if rows == 0 || self.out == 0 {
            return;
        }
        // Tasks of at most MC rows (each reads every weight panel once), as
        // many as a multiple of the threads and of equal size (a multiple of
        // the tile's height): no thread waits on another's extra block at the
        // end, and one slowed by another process leaves its later tasks to
        // the others.
        let (mr, threads) = (shape(self.isa).mr, rayon::current_num_threads().max(1));
        let tasks = threads * rows.div_ceil(threads * MC);
        let share = rows.div_ceil(tasks).div_ceil(mr) * mr;
        dst.par_chunks_mut(share * self.out).zip(x.par_chunks(share * self.inp)).for_each(|(d, a)| {
            self.apply_here(a, self.inp, d.len() / self.out, d, self.out, epilogue);
        });
    }

    /// `d ← a·Wᵀ` for `rows` rows on this thread: row `r`'s `inp` values
    /// start at `a[r·lda]`, its `out` results at `d[r·ldc]`.
    ///
    /// # Panics
    /// When `a` or `d` is too short for the rows.
    pub fn apply_here(&self, a: &[f32], lda: usize, rows: usize, d: &mut [f32], ldc: usize, epilogue: Epilogue<'_>) {
        if rows == 0 || self.out == 0 {
            return;
        }
        assert!((rows - 1) * lda + self.inp <= a.len(), "activations fit their slice");
        assert!((rows - 1) * ldc + self.out <= d.len(), "output fits its slice");
        let at = Operands { a, lda, rows, ldc, epilogue };
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: weights are packed for a set no wider than the CPU's
            // (`Isa::choose` never picks a wider one).
            Isa::Avx512 => unsafe { block_avx512(self, at, d) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { block_avx2(self, at, d) },
            _ => blocks::<4, 8, false>(self, at, d),
        }
    }
}

/// The activations of one call and where its output goes.
#[derive(Clone, Copy)]
struct Operands<'a> {
    a: &'a [f32],
    lda: usize,
    rows: usize,
    ldc: usize,
    epilogue: Epilogue<'a>,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn block_avx2(w: &PackedWeights, at: Operands<'_>, d: &mut [f32]) {
    blocks::<6, 16, true>(w, at, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn block_avx512(w: &PackedWeights, at: Operands<'_>, d: &mut [f32]) {
    blocks::<12, 32, true>(w, at, d)
}

/// `d ← a·Wᵀ` for one block of rows, then the epilogue: for each `KC` block
/// of the inner dimension, each weight panel, each `MR` rows.
#[inline(always)]
fn blocks<const MR: usize, const NR: usize, const FMA: bool>(w: &PackedWeights, at: Operands<'_>, d: &mut [f32]) {
    let (inp, out) = (w.inp, w.out);
    let kc = shape(w.isa).kc;
    debug_assert_eq!((shape(w.isa).mr, shape(w.isa).nr), (MR, NR));
    let mut k0 = 0;
    while k0 < inp {
        let k1 = (k0 + kc).min(inp);
        let last = k1 == inp;
        for (p, panel) in w.panels.chunks_exact(inp * NR).enumerate() {
            let panel = &panel[k0 * NR..k1 * NR];
            let (c0, cols) = (p * NR, (out - p * NR).min(NR));
            let mut r = 0;
            while r < at.rows {
                let take = (at.rows - r).min(MR);
                let tile = Tile { r, take, c0, cols, accumulate: k0 > 0 };
                tile.run::<MR, NR, FMA>(at, k0, k1, panel, d);
                if last {
                    tile.finish::<FMA>(d, at.ldc, at.epilogue);
                }
                r += MR;
            }
        }
        k0 = k1;
    }
}

/// What the dense layer does to its output before it is read: its bias, and
/// the activation that follows it, applied to each tile while it is in L1.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// `x·Wᵀ` alone (the bias is left to a later pass).
    None,
    /// `x·Wᵀ + b`.
    Bias(&'a [f32]),
    /// `gelu(x·Wᵀ + b)`, BERT's exact GELU.
    BiasGelu(&'a [f32]),
}

/// Rows `r .. r+take` and columns `c0 .. c0+cols` of the output; the first
/// `KC` block writes them, later ones add to them (`accumulate`).
#[derive(Clone, Copy)]
struct Tile {
    r: usize,
    take: usize,
    c0: usize,
    cols: usize,
    accumulate: bool,
}

impl Tile {
    /// Inner steps `k0 .. k1` of the tile against `panel`, into `d`. A full
    /// tile is stored by the microkernel; an edge one goes through a buffer,
    /// its rows past `take` repeating the last row (so the kernel has no edge
    /// case) and not stored.
    #[inline(always)]
    fn run<const MR: usize, const NR: usize, const FMA: bool>(
        self,
        at: Operands<'_>,
        k0: usize,
        k1: usize,
        panel: &[f32],
        d: &mut [f32],
    ) {
        let (a, lda, ldc) = (at.a, at.lda, at.ldc);
        let n = k1 - k0;
        assert!(panel.len() >= n * NR, "the panel holds the block");
        let rows: [&[f32]; MR] = std::array::from_fn(|i| {
            let row = self.r + i.min(self.take - 1);
            &a[row * lda + k0..row * lda + k1]
        });
        if self.take == MR && self.cols == NR {
            let c = &mut d[self.r * ldc + self.c0..(self.r + MR - 1) * ldc + self.c0 + NR];
            micro::<MR, NR, FMA>(n, rows, panel, c, ldc, self.accumulate);
            return;
        }
        let mut sums = [[0.0f32; NR]; MR];
        micro::<MR, NR, FMA>(n, rows, panel, sums.as_flattened_mut(), NR, false);
        for (i, sums) in sums.iter().enumerate().take(self.take) {
            let row = &mut d[(self.r + i) * ldc + self.c0..][..self.cols];
            if self.accumulate {
                for (v, s) in row.iter_mut().zip(sums) {
                    *v += s;
                }
            } else {
                row.copy_from_slice(&sums[..self.cols]);
            }
        }
    }

    /// The epilogue over the finished tile.
    #[inline(always)]
    fn finish<const FMA: bool>(self, d: &mut [f32], out: usize, epilogue: Epilogue<'_>) {
        let (bias, gelu) = match epilogue {
            Epilogue::None => return,
            Epilogue::Bias(b) => (b, false),
            Epilogue::BiasGelu(b) => (b, true),
        };
        let bias = &bias[self.c0..self.c0 + self.cols];
        for i in 0..self.take {
            let row = &mut d[(self.r + i) * out + self.c0..][..self.cols];
            for (v, b) in row.iter_mut().zip(bias) {
                *v = if gelu { crate::math::gelu::<FMA>(*v + b) } else { *v + b };
            }
        }
    }
}

/// The microkernel: `c[i·ldc + j] (+)= Σₖ rows[i][k] · panel[k·NR + j]`
/// for the tile (`+=` when `accumulate`).
#[inline(always)]
fn micro<const MR: usize, const NR: usize, const FMA: bool>(
    n: usize,
    rows: [&[f32]; MR],
    panel: &[f32],
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(c.len() >= (MR - 1) * ldc + NR, "the tile fits its output");
    #[cfg(target_arch = "x86_64")]
    if FMA {
        let ptrs: [*const f32; MR] = std::array::from_fn(|i| rows[i].as_ptr());
        // SAFETY: callers pass FMA only inside functions compiled for
        // AVX2+FMA (6 × 16) or AVX-512 (12 × 32); every row holds `n`
        // values, the panel `n·NR` (checked by `Tile::run`) and `c` the
        // tile (checked above).
        unsafe {
            match (MR, NR) {
                (6, 16) => avx2_6x16(n, ptrs.as_ptr(), panel.as_ptr(), c.as_mut_ptr(), ldc, accumulate),
                (12, 32) => avx512_12x32(n, ptrs.as_ptr(), panel.as_ptr(), c.as_mut_ptr(), ldc, accumulate),
                _ => unreachable!("no {MR}×{NR} FMA microkernel"),
            }
        }
        return;
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
    for (i, sums) in acc.iter().enumerate() {
        let row = &mut c[i * ldc..i * ldc + NR];
        for (v, s) in row.iter_mut().zip(sums) {
            *v = if accumulate { *v + s } else { *s };
        }
    }
}

/// Defines a microkernel of `$mr` rows and two vectors of `$lanes` lanes:
/// per step two loads of the panel, `$mr` broadcasts and `2·$mr` FMAs into
/// accumulators held in registers; then each row is stored (added to what
/// `c` holds when `accumulate`). The AVX2 and AVX-512 kernels differ only in
/// their intrinsics.
macro_rules! microkernel {
    ($(#[$m:meta])* $name:ident, $features:literal, $mr:literal, $lanes:literal, $vec:ident,
     $zero:ident, $load:ident, $splat:ident, $fma:ident, $add:ident, $store:ident) => {
        $(#[$m])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(n: usize, rows: *const *const f32, panel: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
            use std::arch::x86_64::*;
            const NR: usize = 2 * $lanes;
            // SAFETY: the caller's bounds.
            let rows: [*const f32; $mr] = unsafe { std::array::from_fn(|i| *rows.add(i)) };
            let mut acc: [[$vec; 2]; $mr] = [[$zero(); 2]; $mr];
            for k in 0..n {
                // SAFETY: k < n (the caller's bounds).
                unsafe {
                    let b0 = $load(panel.add(k * NR));
                    let b1 = $load(panel.add(k * NR + $lanes));
                    for i in 0..$mr {
                        let x = $splat(*rows[i].add(k));
                        acc[i][0] = $fma(x, b0, acc[i][0]);
                        acc[i][1] = $fma(x, b1, acc[i][1]);
                    }
                }
            }
            for (i, [s0, s1]) in acc.into_iter().enumerate() {
                // SAFETY: c holds the tile.
                unsafe {
                    let (p0, p1) = (c.add(i * ldc), c.add(i * ldc + $lanes));
                    let (s0, s1) = if accumulate { ($add(s0, $load(p0)), $add(s1, $load(p1))) } else { (s0, s1) };
                    $store(p0, s0);
                    $store(p1, s1);
                }
            }
        }
    };
}

microkernel! {
    /// The AVX2 microkernel: twelve accumulators of eight lanes.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `rows` holds 6 pointers to `n` values each,
    /// `panel` `16·n` values, `c` a 6 × 16 tile of row stride `ldc`.
    avx2_6x16, "avx2,fma", 6, 8, __m256,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_storeu_ps
}

microkernel! {
    /// The AVX-512 microkernel: 24 accumulators of sixteen lanes (BLIS's
    /// shape for this set).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `rows` holds 12 pointers to `n` values each,
    /// `panel` `32·n` values, `c` a 12 × 32 tile of row stride `ldc`.
    avx512_12x32, "avx512f,avx2,fma", 12, 16, __m512,
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps
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
            for isa in isas() {
                let packed = PackedWeights::new(&w, out, inp, isa);
                let mut got = vec![f32::NAN; rows * out];
                packed.apply(&x, rows, &mut got, Epilogue::None);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (inp as f64).sqrt();
                    assert!((f64::from(*g) - e).abs() < tol, "{isa:?} {rows}×{out}×{inp} at {i}: {g} against {e}");
                }
            }
        }
    }

    fn isas() -> impl Iterator<Item = Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|&isa| isa <= Isa::detected())
    }

    #[test]
    fn the_epilogues_add_the_bias_and_apply_gelu() {
        let (rows, out, inp) = (9, 21, 40);
        let (x, w, bias) = (values(rows * inp, 3), values(out * inp, 4), values(out, 5));
        let want = reference(&x, &w, rows, out, inp);
        for isa in isas() {
            let packed = PackedWeights::new(&w, out, inp, isa);
            let (mut biased, mut activated) = (vec![0.0; rows * out], vec![0.0; rows * out]);
            packed.apply(&x, rows, &mut biased, Epilogue::Bias(&bias));
            packed.apply(&x, rows, &mut activated, Epilogue::BiasGelu(&bias));
            for (i, e) in want.iter().enumerate() {
                let y = *e as f32 + bias[i % out];
                assert!((biased[i] - y).abs() < 1e-5, "{isa:?} bias at {i}: {} against {y}", biased[i]);
                let g = crate::math::gelu::<false>(y);
                assert!((activated[i] - g).abs() < 1e-5, "{isa:?} gelu at {i}: {} against {g}", activated[i]);
            }
        }
    }

    #[test]
    fn strided_operands_multiply_as_attention_uses_them() {
        // Rows of three heads side by side (Q, K, V of one head each, 8
        // columns, rows 24 apart), as attention reads one head: scores =
        // Q·Kᵀ, then context = scores·V written into columns 8..16 of rows
        // 24 apart, leaving the rest of those rows alone.
        let (len, d, stride) = (11, 8, 24);
        let qkv = values(len * stride, 6);
        let at = |r: usize, c: usize| f64::from(qkv[r * stride + c]);
        for isa in isas() {
            let mut keys = PackedWeights::new(&[], 0, 0, isa);
            keys.repack(Strided { data: &qkv[d..], rows: len, cols: d, rs: stride, cs: 1 }, isa);
            let mut scores = vec![0.0; len * len];
            keys.apply_here(&qkv, stride, len, &mut scores, len, Epilogue::None);
            for (i, j) in (0..len).flat_map(|i| (0..len).map(move |j| (i, j))) {
                let e: f64 = (0..d).map(|c| at(i, c) * at(j, d + c)).sum();
                assert!((f64::from(scores[i * len + j]) - e).abs() < 1e-5, "{isa:?} score {i},{j}");
            }
            let mut values_ = PackedWeights::new(&[], 0, 0, isa);
            values_.repack(Strided { data: &qkv[2 * d..], rows: d, cols: len, rs: 1, cs: stride }, isa);
            let mut out = vec![7.0f32; len * stride];
            values_.apply_here(&scores, len, len, &mut out[d..], stride, Epilogue::None);
            for (i, c) in (0..len).flat_map(|i| (0..stride).map(move |c| (i, c))) {
                let got = f64::from(out[i * stride + c]);
                if (d..2 * d).contains(&c) {
                    let e: f64 = (0..len).map(|j| f64::from(scores[i * len + j]) * at(j, 2 * d + c - d)).sum();
                    assert!((got - e).abs() < 1e-4, "{isa:?} context {i},{c}: {got} against {e}");
                } else {
                    assert_eq!(got, 7.0, "{isa:?} wrote outside the head at {i},{c}");
                }
            }
        }
    }

    #[test]
    fn no_rows_is_no_work() {
        let packed = PackedWeights::new(&[1.0; 6], 2, 3, Isa::Portable);
        let mut dst: Vec<f32> = Vec::new();
        packed.apply(&[], 0, &mut dst, Epilogue::None);
        assert!(dst.is_empty());
    }
}
