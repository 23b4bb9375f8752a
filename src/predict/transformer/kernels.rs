//! The integer inner loops. Each has one scalar definition; on x86-64 with AVX2 the same
//! code is compiled a second time with AVX2 enabled and chosen at run time. Integer sums do
//! not depend on their order, so both give the same integers (a test checks it).

/// Dot product of 12-bit activations with 8-bit weights (both widened to i16).
/// With |a| <= 2047, |b| <= 127 and len <= 8192 the i32 sum cannot overflow.
#[inline(always)]
fn dot_generic(a: &[i16], b: &[i16]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .fold(0, |s, v| s.wrapping_add(v))
}

/// `out[r * rows + j] = dot(x[r], w[j])` for every input row r and weight row j: each
/// weight row is loaded once and used for the whole batch.
#[inline(always)]
fn matmul_generic(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
    let rows = w.len() / cols;
    for (j, wj) in w.chunks_exact(cols).enumerate() {
        for (r, xr) in x.chunks_exact(cols).enumerate() {
            out[r * rows + j] = dot_generic(xr, wj);
        }
    }
}

/// `o += p * v`, the attention's weighted sum of values.
#[inline(always)]
fn axpy_generic(p: i32, v: &[i16], o: &mut [i32]) {
    for (oi, &vi) in o.iter_mut().zip(v) {
        *oi = oi.wrapping_add(p.wrapping_mul(i32::from(vi)));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot(a: &[i16], b: &[i16]) -> i32 {
        super::dot_generic(a, b)
    }
    #[target_feature(enable = "avx2")]
    pub unsafe fn matmul(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
        super::matmul_generic(x, cols, w, out)
    }
    #[target_feature(enable = "avx2")]
    pub unsafe fn axpy(p: i32, v: &[i16], o: &mut [i32]) {
        super::axpy_generic(p, v, o)
    }
}

#[inline]
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

pub fn dot(a: &[i16], b: &[i16]) -> i32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is present.
        return unsafe { avx2::dot(a, b) };
    }
    dot_generic(a, b)
}

/// `x` holds `x.len() / cols` rows of `cols`; `w` holds `out.len() / rows_of_x` rows of `cols`.
pub fn matmul(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
    debug_assert_eq!(out.len(), x.len() / cols * (w.len() / cols));
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is present.
        return unsafe { avx2::matmul(x, cols, w, out) };
    }
    matmul_generic(x, cols, w, out)
}

pub fn axpy(p: i32, v: &[i16], o: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is present.
        return unsafe { avx2::axpy(p, v, o) };
    }
    axpy_generic(p, v, o)
}

/// The scalar definitions, for tests and the benchmark.
pub mod scalar {
    pub fn dot(a: &[i16], b: &[i16]) -> i32 {
        super::dot_generic(a, b)
    }
    pub fn matmul(x: &[i16], cols: usize, w: &[i16], out: &mut [i32]) {
        super::matmul_generic(x, cols, w, out)
    }
    pub fn axpy(p: i32, v: &[i16], o: &mut [i32]) {
        super::axpy_generic(p, v, o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(n: usize, seed: u32, max: i32) -> Vec<i16> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                ((x % (2 * max as u32 + 1)) as i32 - max) as i16
            })
            .collect()
    }

    #[test]
    fn simd_and_scalar_give_the_same_integers() {
        for &n in &[16usize, 33, 128, 257, 1024] {
            let (a, b) = (vals(n * 3, 7, 2047), vals(n * 5, 9, 127));
            assert_eq!(dot(&a[..n], &b[..n]), scalar::dot(&a[..n], &b[..n]));
            let (mut o1, mut o2) = (vec![0; 15], vec![0; 15]);
            matmul(&a, n, &b, &mut o1);
            scalar::matmul(&a, n, &b, &mut o2);
            assert_eq!(o1, o2);
            let (mut o1, mut o2) = (vec![5i32; n], vec![5i32; n]);
            axpy(12345, &a[..n], &mut o1);
            scalar::axpy(12345, &a[..n], &mut o2);
            assert_eq!(o1, o2);
        }
    }
}
