//! Element-wise kernels of the CPU backend, written so the compiler
//! vectorizes them: no calls into libm in the hot loops. The public kernels
//! are compiled three times, for the build's baseline, for AVX2+FMA and for
//! AVX-512, and run the copy [`Isa::active`] names ([`fast!`]); the helpers
//! they inline take `FMA`, true in the two copies whose CPUs fuse a multiply
//! and an add ([`madd`]), false in the baseline's, where `mul_add` would be
//! a call into libm.
#![allow(unsafe_code)]

use crate::isa::Isa;

/// Defines a kernel compiled for the baseline, for AVX2+FMA and for
/// AVX-512, calling the copy of the instruction set in use (the helpers it
/// calls are inlined into each copy). Its body sees `FMA`, to pass on to
/// the helpers.
macro_rules! fast {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(non_snake_case)]
            fn generic<const FMA: bool>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    generic::<true>($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    generic::<true>($($arg),*)
                }
                match Isa::active() {
                    // SAFETY: `Isa::active` is never wider than the CPU's
                    // set (`Isa::choose`), which each copy is compiled for.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Portable => {}
                }
            }
            generic::<false>($($arg),*)
        }
    };
}

/// `a·b + c`, fused into one instruction (and one rounding) where `FMA`.
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `x` below `lo` raised to it, as one `max` instruction (`f32::max`'s NaN
/// rule costs two more).
#[inline(always)]
fn at_least(x: f32, lo: f32) -> f32 {
    if x < lo { lo } else { x }
}

/// erf(x) as a rational function of x on [-4, 4] (beyond, ±1 in f32): the
/// approximation XLA and Eigen use, within a few ulp of the true value.
#[inline(always)]
pub fn erf<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    for c in [2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906_3e-4, -2.954_600_1e-3, -1.609_603_3e-2] {
        p = madd::<FMA>(p, x2, c);
    }
    let mut q = -1.456_607_2e-5_f32;
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329_2e-3, -1.426_474e-2] {
        q = madd::<FMA>(q, x2, c);
    }
    x * p / q
}

/// BERT's exact GELU, `x·Φ(x) = x/2·(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu<const FMA: bool>(x: f32) -> f32 {
    0.5 * x * (1.0 + erf::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2))
}

fast! {
    /// `x ← layer_norm(x + y + bias)` over rows of `gamma.len()`: the
    /// residual add, the dense layer's bias and the norm in one pass.
    pub fn residual_norm(x: &mut [f32], y: &[f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let h = gamma.len();
        for (row, add) in x.chunks_exact_mut(h).zip(y.chunks_exact(h)) {
            for ((v, a), b) in row.iter_mut().zip(add).zip(bias) {
                *v += a + b;
            }
            norm_row(row, gamma, beta, eps);
        }
    }
}

fast! {
    /// `x ← layer_norm(word + position + token type)` for one token.
    pub fn embed_row(x: &mut [f32], word: &[f32], position: &[f32], token_type: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
        for (((v, a), b), c) in x.iter_mut().zip(word).zip(position).zip(token_type) {
            *v = a + b + c;
        }
        norm_row(x, gamma, beta, eps);
    }
}

fast! {
    /// Softmax of each `n`-wide row of `x`, after scaling by `scale` (> 0).
    pub fn softmax_rows(x: &mut [f32], n: usize, scale: f32) {
        for row in x.chunks_exact_mut(n) {
            softmax_scaled::<FMA>(row, scale);
        }
    }
}

/// Layer norm of one row, in place.
#[inline(always)]
pub fn norm_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let mut var = 0.0f32;
    let mut lanes = [0.0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            let d = v - mean;
            *l += d * d;
        }
    }
    for v in chunks.remainder() {
        var += (v - mean) * (v - mean);
    }
    var += lanes.iter().sum::<f32>();
    let inv = 1.0 / (var / n + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// Sum with eight partial sums, so it vectorizes.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// The largest value (−∞ for none), with sixteen partial maxima compared
/// by `>`, so it vectorizes (a fold of `f32::max` runs one value at a time,
/// as its NaN rule is not associative); the rows it serves hold no NaN.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let pick = |a: f32, b: f32| if b > a { b } else { a };
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = pick(*l, *v);
        }
    }
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| pick(a, b));
    lanes.into_iter().fold(tail, pick)
}

/// Dot product with eight partial sums.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// exp(x) for x ≤ 0 without libm, so softmax vectorizes: x = n·ln2 + r
/// with |r| ≤ ln2/2, e^r by its degree-6 Taylor polynomial (relative error
/// under 2e-7), 2^n built in the exponent bits. Below -87 it is 0.
#[inline(always)]
pub fn exp_neg<const FMA: bool>(x: f32) -> f32 {
    let x = at_least(x, -87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts (Cody and Waite), so n·ln2 subtracts exactly.
    let r = madd::<FMA>(n, 2.121_944_4e-4, madd::<FMA>(n, -0.693_359_4, x));
    let mut p = 1.0f32 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = madd::<FMA>(p, r, c);
    }
    // 2^n from its exponent bits, without a float-to-int conversion (which
    // does not vectorize): adding 2^23 leaves the integer n + 127 (1 to
    // 127 here) in the low mantissa bits, and the shift moves them into
    // the exponent, dropping the rest.
    p * f32::from_bits((n + 127.0 + 8_388_608.0).to_bits() << 23)
}

/// Softmax of one row, in place.
#[inline(always)]
pub fn softmax(row: &mut [f32]) {
    softmax_scaled::<false>(row, 1.0);
}

/// Softmax of one row scaled by `scale` (> 0, so the largest value stays
/// the largest), in place.
#[inline(always)]
pub fn softmax_scaled<const FMA: bool>(row: &mut [f32], scale: f32) {
    let max = max(row);
    for v in row.iter_mut() {
        *v = exp_neg::<FMA>((*v - max) * scale);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt().max(1e-12);
    for x in v.iter_mut() {
        *x /= norm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series in f64, for reference.
    fn erf64(x: f64) -> f64 {
        if x.abs() > 3.0 {
            // Continued-fraction-free bound: erfc is below 2.3e-5 there.
            let t = 1.0 / (1.0 + 0.5 * x.abs());
            let y = 1.0
                - t * (-x * x - 1.265_512_23
                    + t * (1.000_023_68
                        + t * (0.374_091_96
                            + t * (0.096_784_18
                                + t * (-0.186_288_06
                                    + t * (0.278_868_07
                                        + t * (-1.135_203_98
                                            + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
                    .exp();
            return y.copysign(x);
        }
        let mut term = x;
        let mut total = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            total += term / (2 * n + 1) as f64;
        }
        total * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_is_within_two_millionths_everywhere() {
        let mut worst = 0.0f64;
        for i in -6000..=6000 {
            let x = i as f64 / 1000.0;
            worst = worst.max((erf::<false>(x as f32) as f64 - erf64(x)).abs());
        }
        assert!(worst < 2e-6, "worst error {worst}");
    }

    #[test]
    fn exp_neg_is_within_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let exact = f64::from(x).exp();
            worst = worst.max((f64::from(exp_neg::<false>(x)) - exact).abs() / exact);
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(exp_neg::<false>(-1000.0), exp_neg::<false>(-87.0));
    }

    #[test]
    fn max_finds_the_largest_in_lanes_and_tail() {
        for n in [0usize, 1, 15, 16, 17, 40, 147] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 101) as f32 - 60.0).collect();
            let want = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), want, "{n} values");
        }
    }

    #[test]
    fn norm_and_softmax_match_their_definitions() {
        let mut row = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        norm_row(&mut row, &[1.0; 10], &[0.5; 10], 0.0);
        let mean = row.iter().sum::<f32>() / 10.0;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 10.0;
        assert!((mean - 0.5).abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "{mean} {var}");
        let mut p = [1.0f32, 2.0, 3.0];
        softmax(&mut p);
        let e = [1f32.exp(), 2f32.exp(), 3f32.exp()];
        let s: f32 = e.iter().sum();
        for (a, b) in p.iter().zip(e) {
            assert!((a - b / s).abs() < 1e-6);
        }
    }
}
