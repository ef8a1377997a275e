//! A safe face on the `gemm` crate for the CPU backend: views with strides,
//! checked against their slices before the unchecked call.
#![allow(unsafe_code)]

/// A strided view of a row-major matrix: element (r, c) is
/// `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A dense `rows × cols` matrix.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose, with no copy.
    pub fn t(self) -> View<'a> {
        View { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    fn fits(&self, len: usize) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
    }
}

/// `dst ← a·b` (`dst` row-major, row stride `dst_rs`), using every core
/// when `parallel`.
///
/// # Panics
/// When shapes disagree or a view reaches past its slice.
pub fn matmul(a: View<'_>, b: View<'_>, dst: &mut [f32], dst_rs: usize, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions");
    assert!(a.fits(a.data.len()) && b.fits(b.data.len()), "operand views fit their slices");
    let out = View { data: dst, rows: m, cols: n, rs: dst_rs, cs: 1 };
    assert!(out.fits(dst.len()), "destination view fits its slice");
    if m == 0 || n == 0 {
        return;
    }
    let parallelism = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: every view was checked to lie inside its slice; `dst` is
    // borrowed mutably and cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplies_strided_views() {
        // a: 2×3, w: 4×3 (as a linear layer's [out, in]); a·wᵀ is 2×4.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut dst = vec![0.0; 8];
        matmul(View::dense(&a, 2, 3), View::dense(&w, 4, 3).t(), &mut dst, 4, false);
        let expect: Vec<f32> = (0..2)
            .flat_map(|r| (0..4).map(move |c| (0..3).map(|k| a[r * 3 + k] * (c * 3 + k) as f32).sum::<f32>()))
            .collect();
        assert_eq!(dst, expect);
    }

    #[test]
    #[should_panic(expected = "fit")]
    fn refuses_a_view_past_its_slice() {
        let a = [1.0; 5];
        let mut dst = vec![0.0; 4];
        matmul(View::dense(&a, 2, 3), View::dense(&a, 3, 2), &mut dst, 2, false);
    }
}
