//! Fixed-point building blocks of the integer transformer. Every table is built from integer
//! operations (square roots, products, shifts), never from a float library, so all machines
//! agree on every bit.
//!
//! Conventions: activations are `i32` in Q12 (value = x / 4096); attention logits are Q8
//! (1/256 nats); probabilities and exponentials are Q30.

/// log2(e) in Q24.
pub(super) const LOG2_E_Q24: u64 = 24_204_406;

/// Q30 values of `2^(-f/256)` for f in 0..=256, and the GELU table.
pub struct Tables {
    exp2_frac: [u64; 257],
    /// GELU(x) in Q12 at x = (i - 512) / 64, i in 0..=1024.
    gelu: Vec<i32>,
}

impl Default for Tables {
    fn default() -> Self {
        Self::new()
    }
}

impl Tables {
    pub fn new() -> Self {
        let one = 1u64 << 30;
        // c[k] = 2^(-2^k / 256) in Q30: c[7] = 2^-1/2, then repeated square roots.
        let mut c = [0u64; 8];
        c[7] = (one * one / 2).isqrt();
        for k in (0..7).rev() {
            c[k] = (c[k + 1] << 30).isqrt();
        }
        let mut exp2_frac = [one / 2; 257];
        for (f, v) in exp2_frac.iter_mut().enumerate().take(256) {
            *v = (0..8).filter(|k| f >> k & 1 == 1).fold(one, |acc, k| (acc * c[k] + (1 << 29)) >> 30);
        }
        let mut t = Tables { exp2_frac, gelu: vec![] };
        t.gelu = (0..=1024).map(|i| t.gelu_exact((i as i64 - 512) << 6)).collect();
        t
    }

    /// The Q30 values of `2^(-f/256)`, f in 0..=256, that `exp_neg` interpolates (for the
    /// AVX2 kernel).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn exp2_frac(&self) -> &[u64; 257] {
        &self.exp2_frac
    }

    /// The GELU table `gelu` interpolates, 1025 entries (for the AVX2 kernel).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn gelu_table(&self) -> &[i32] {
        &self.gelu
    }

    /// `e^(-d/256)` in Q30 for a Q8 distance `d >= 0`.
    pub fn exp_neg(&self, d: u32) -> u64 {
        // y = d * log2(e) in Q32: integer part n, then 8 bits for the table, 16 to interpolate.
        let y = u64::from(d) * LOG2_E_Q24;
        let (n, f, r) = (y >> 32, (y >> 24 & 255) as usize, y >> 8 & 0xffff);
        if n >= 31 {
            return 0;
        }
        let (a, b) = (self.exp2_frac[f], self.exp2_frac[f + 1]);
        (a - (((a - b) * r + (1 << 15)) >> 16)) >> n
    }

    /// GELU (tanh form) of a Q12 value, computed from `exp_neg`; used to fill the table.
    fn gelu_exact(&self, x: i64) -> i32 {
        // z = sqrt(2/pi) * (x + 0.044715 x^3), in Q12; constants in Q16.
        let x3 = x * x / 4096 * x / 4096;
        let z = (52_290 * (x + ((2_930 * x3) >> 16))) >> 16;
        // tanh|z| = (1 - e^(-2|z|)) / (1 + e^(-2|z|)); e^-u with u in Q8 = 2|z| >> 4.
        let e = self.exp_neg(((2 * z.abs()) >> 4).min(u32::MAX as i64) as u32) as i64;
        let tanh = ((1i64 << 30) - e) * (1 << 30) / ((1i64 << 30) + e); // Q30
        let tanh = if z < 0 { -tanh } else { tanh };
        ((x * ((1i64 << 30) + tanh)) >> 31) as i32
    }

    /// GELU of a Q12 value: table lookup with linear interpolation over [-8, 8).
    pub fn gelu(&self, x: i32) -> i32 {
        if x >= -GELU_LO {
            return x;
        }
        if x < GELU_LO {
            return 0;
        }
        let u = x - GELU_LO;
        let (i, frac) = ((u >> 6) as usize, u & 63);
        let (a, b) = (self.gelu[i], self.gelu[i + 1]);
        a + (((b - a) * frac + 32) >> 6)
    }
}

/// Where the GELU table starts, Q12: -8. It ends at +8, past which GELU is the identity.
pub(super) const GELU_LO: i32 = -8 << 12;

/// Round `v / 2^s` (s > 0) or compute `v * 2^-s` (s <= 0), saturating to i32.
#[inline]
pub fn shift_round(v: i64, s: i32) -> i32 {
    let r = if (1..63).contains(&s) {
        (v + (1i64 << (s - 1))) >> s
    } else if s >= 63 {
        0
    } else {
        shift_left_saturating(v, (-s) as u32)
    };
    r.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

#[cold]
fn shift_left_saturating(v: i64, s: u32) -> i64 {
    v.checked_shl(s).filter(|r| r >> s == v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// Exact `n / d` (rounded down) for many `n` by one divisor, with a multiply instead of a
/// division: `n * floor(2^64 / d) / 2^64` falls short of the quotient by less than `n /
/// 2^64 < 1`, so it is the quotient or one below it, and one comparison tells which.
pub struct Divider {
    d: u64,
    inv: u64,
}

impl Divider {
    /// `d >= 2`, so that `2^64 / d` fits a u64.
    pub fn new(d: u64) -> Divider {
        assert!(d >= 2, "Divider: a divisor of at least 2");
        Divider { d, inv: ((1u128 << 64) / u128::from(d)) as u64 }
    }

    #[inline(always)]
    pub fn floor(&self, n: u64) -> u64 {
        let q = ((u128::from(n) * u128::from(self.inv)) >> 64) as u64;
        // q * d <= n, so the difference cannot wrap.
        if n - q * self.d >= self.d {
            q + 1
        } else {
            q
        }
    }
}

/// Largest magnitude of a quantized activation.
pub const QMAX: i32 = 2047;

/// Quantize Q12 values to 12-bit integers with a shared power-of-two scale:
/// `x ~= q * 2^shift`. Returns `shift`. The largest |x| maps into 1024..=2047.
#[inline(always)]
pub fn quantize(x: &[i32], q: &mut [i16]) -> i32 {
    let m = x.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
    let shift = (32 - m.leading_zeros()) as i32 - 11;
    if shift > 0 {
        // shift_round in i32 (so that it vectorizes): rounding half up, v / 2^s is
        // (v >> s) + (v >> (s - 1) & 1). shift <= 21.
        for (qi, &xi) in q.iter_mut().zip(x) {
            *qi = ((xi >> shift) + (xi >> (shift - 1) & 1)).clamp(-QMAX, QMAX) as i16;
        }
    } else {
        // |x| < 2^(11 + shift) here, so the left shift stays below 2048.
        for (qi, &xi) in q.iter_mut().zip(x) {
            *qi = (xi << -shift) as i16;
        }
    }
    shift
}

/// An f32 scale or gain as a fixed-point integer with `frac_bits` (0..=62) fractional bits.
/// Exact IEEE operations only: the power of two is built from its integer (`powi` may be
/// approximate), the multiply by it is exact in f64, and `round` is exact, so every machine
/// gets the same value.
pub fn to_fixed(v: f32, frac_bits: u32) -> i64 {
    (f64::from(v) * (1u64 << frac_bits) as f64).round() as i64
}

/// For tests: a seeded sequence of integers in `0..n` for each call with `n` (a 64-bit LCG's
/// top bits), the same on every machine.
#[cfg(test)]
pub(crate) fn test_values(seed: u64) -> impl FnMut(i64) -> i64 {
    let mut x = seed;
    move |n| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) as i64 % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_gelu_track_their_float_definitions() {
        let t = Tables::new();
        for d in (0..4096).step_by(13) {
            let want = (-(d as f64) / 256.0).exp() * (1u64 << 30) as f64;
            assert!((t.exp_neg(d) as f64 - want).abs() <= want * 1e-5 + 2.0, "d={d}: {} vs {want}", t.exp_neg(d));
        }
        for i in (-40_000..40_000).step_by(97) {
            let x = i as f64 / 4096.0;
            let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
            let got = t.gelu(i) as f64 / 4096.0;
            assert!((got - want).abs() < 2e-3, "x={x}: {got} vs {want}");
        }
    }

    #[test]
    fn quantize_keeps_eleven_bits() {
        let x = [4096 * 3, -4096 * 5, 17, 0];
        let mut q = [0i16; 4];
        let s = quantize(&x, &mut q);
        assert!(q.iter().map(|v| v.abs()).max().unwrap() >= 1024);
        for (&xi, &qi) in x.iter().zip(&q) {
            assert!((i64::from(qi) << s) - i64::from(xi) <= 1 << s);
        }
        let mut q = [0i16; 2];
        assert_eq!(quantize(&[3, -1], &mut q), -9);
        assert_eq!(q, [1536, -512]);
    }

    #[test]
    fn divider_gives_the_quotient_of_integer_division() {
        let mut rng = crate::data::synthetic::XorShift::new(1);
        let mut next = move || rng.next();
        let divisors = [2, 3, 7, 1 << 30, (1 << 30) + 1, (1 << 40) - 1, u64::MAX - 1, u64::MAX];
        let random: Vec<u64> = (0..2000).map(|i| (next() >> (i % 62)).max(2)).collect();
        for d in divisors.into_iter().chain(random) {
            let div = Divider::new(d);
            // Multiples and their neighbours (where a one-off error would show), the extremes,
            // and random numerators of every size.
            let k = next() % (u64::MAX / d);
            let edges =
                [0, 1, d - 1, d, d.saturating_add(1), k * d, k * d + d - 1, (k * d).saturating_sub(1), u64::MAX];
            let random: Vec<u64> = (0..200).map(|i| next() >> (i % 64)).collect();
            for n in edges.into_iter().chain(random) {
                assert_eq!(div.floor(n), n / d, "{n} / {d}");
            }
        }
    }
}
