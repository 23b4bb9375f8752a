use super::*;

/// A seeded stream of u32 (the high halves of `XorShift`'s).
fn rng(seed: u32) -> impl FnMut() -> u32 {
    let mut rng = crate::data::synthetic::XorShift::new(seed.into());
    move || (rng.next() >> 32) as u32
}

fn vals(n: usize, seed: u32, max: i32) -> Vec<i16> {
    let mut next = rng(seed);
    (0..n).map(|_| ((next() % (2 * max as u32 + 1)) as i32 - max) as i16).collect()
}

#[test]
fn simd_and_portable_give_the_same_integers() {
    // Batches of 1-3 rows and their tails after the blocks of 4, rows of `w` past blocks of 2 and 4.
    let shapes =
        [(1, 1, 16), (1, 9, 32), (2, 1024, 16), (3, 6, 64), (5, 3, 32), (32, 7, 256), (9, 66, 1024), (3, 2, 40)];
    for &(rows_x, rows_w, cols) in &shapes {
        let (x, w) = (vals(rows_x * cols, 7, 2047), vals(rows_w * cols, 9, 127));
        let (mut o1, mut o2) = (vec![0; rows_x * rows_w], vec![0; rows_x * rows_w]);
        matmul(&x, cols, &w, &mut o1);
        portable::matmul(&x, cols, &w, &mut o2);
        assert_eq!(o1, o2, "{rows_x} x {rows_w} x {cols}");
        // Where `matmul` took AVX-512 VNNI, the AVX-VNNI and AVX2 versions must agree too.
        #[cfg(target_arch = "x86_64")]
        if has_avx2() && cols.is_multiple_of(16) {
            // SAFETY: AVX2 is present; cols is a multiple of 16.
            unsafe { avx2::matmul(&x, cols, &w, &mut o1) };
            assert_eq!(o1, o2, "AVX2: {rows_x} x {rows_w} x {cols}");
            if has_avx_vnni() {
                o1.fill(0);
                // SAFETY: AVX-VNNI is present too.
                unsafe { avx2::matmul_vnni(&x, cols, &w, &mut o1) };
                assert_eq!(o1, o2, "AVX-VNNI: {rows_x} x {rows_w} x {cols}");
            }
        }
    }
}

/// The packed product against the row-major one (which ties the layout to its meaning),
/// and every vector version against the portable one: batches past the tiles of 4 rows,
/// matrices past the groups of 4 blocks and with a last block of fewer than 16 rows,
/// columns not a multiple of 16.
#[test]
fn packed_products_give_the_same_integers() {
    let shapes = [(1, 1, 2), (1, 16, 32), (4, 64, 256), (5, 1024, 16), (9, 80, 64), (3, 35, 40), (8, 7, 1024)];
    for &(rows_x, rows_w, cols) in &shapes {
        let (x, w) = (vals(rows_x * cols, 7, 2047), vals(rows_w * cols, 9, 127));
        let m = Packed::new(&w.iter().map(|&v| v as i8).collect::<Vec<_>>(), rows_w, cols);
        let mut want = vec![0; rows_x * rows_w];
        portable::matmul(&x, cols, &w, &mut want);
        let mut got = vec![0; rows_x * rows_w];
        portable::matmul_packed(&x, &m, &mut got);
        assert_eq!(got, want, "portable: {rows_x} x {rows_w} x {cols}");
        type Product = unsafe fn(&[i16], &Packed, &mut [i32]);
        let mut versions: Vec<(&str, Product)> = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                versions.push(("AVX2", avx2::matmul_packed));
            }
            if has_avx_vnni() {
                versions.push(("AVX-VNNI", avx2::matmul_packed_vnni));
            }
            if has_vnni() {
                versions.push(("AVX-512 VNNI", vnni::matmul_packed));
            }
        }
        for (name, f) in versions {
            got.fill(-1);
            // SAFETY: the CPU has the instructions (checked above); the shapes fit.
            unsafe { f(&x, &m, &mut got) };
            assert_eq!(got, want, "{name}: {rows_x} x {rows_w} x {cols}");
        }
        got.fill(-1);
        matmul_packed(&x, &m, &mut got);
        assert_eq!(got, want, "dispatched: {rows_x} x {rows_w} x {cols}");
    }
}

/// Scores and weighted values through the cache layouts, against sums over the plain
/// vectors and every vector version against the portable one: runs of every length from
/// 1 to 70 slots (tails after the groups of 8, 16, 32 and 64; odd lengths, whose last pair
/// of slots is half used) at even starts, heads of 16, 32 and 48 (the vector cases), 40
/// and 15 (odd: keys padded to 16 dims), probabilities up to 2^19 and some negative.
#[test]
fn attention_kernels_give_the_plain_sums() {
    let window = 128;
    for hd in [16, 32, 48, 40, 15] {
        let hk = hd + hd % 2;
        let (plain_keys, plain_values) = (vals(window * hd, 5, 2047), vals(window * hd, 11, 2047));
        let (mut keys, mut values) = (vec![0; window * hk], vec![0; window * hd]);
        for slot in 0..window {
            let mut key = plain_keys[slot * hd..][..hd].to_vec();
            key.resize(hk, 0);
            put_key(&mut keys, slot, &key);
            put_value(&mut values, slot, &plain_values[slot * hd..][..hd]);
        }
        let mut q = vals(hd, 3, 2047);
        q.resize(hk, 0);
        for (start, len) in (1..=70).map(|len| (2 * (len % 3), len)) {
            let want: Vec<i32> =
                (start..start + len).map(|s| portable::dot(&q[..hd], &plain_keys[s * hd..][..hd])).collect();
            let mut got = vec![0; len];
            scores(&q, &keys, start, &mut got);
            assert_eq!(got, want, "scores: head_dim {hd}, slots {start} + {len}");
            portable::scores(&q, &keys, start, &mut got);
            assert_eq!(got, want, "portable scores: head_dim {hd}, slots {start} + {len}");
            let probs: Vec<i32> =
                (0..len as i32).map(|i| i * 99_991 % (1 << 19) - if i % 7 == 3 { 1 << 18 } else { 0 }).collect();
            let mut want = vec![3i32; hd];
            for (s, &p) in (start..).zip(&probs) {
                for (a, &v) in want.iter_mut().zip(&plain_values[s * hd..][..hd]) {
                    *a = a.wrapping_add(p.wrapping_mul(i32::from(v)));
                }
            }
            let mut got = vec![3; hd];
            weighted_sum(&probs, &values, start, &mut got);
            assert_eq!(got, want, "weighted sum: head_dim {hd}, slots {start} + {len}");
            got.fill(3);
            portable::weighted_sum(&probs, &values, start, &mut got);
            assert_eq!(got, want, "portable weighted sum: head_dim {hd}, slots {start} + {len}");
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                // Where the dispatch took AVX-512 VNNI, AVX2 must agree too.
                let mut got = vec![0; len];
                // SAFETY: AVX2 is present; the slots are in the window.
                unsafe { avx2::scores(&q, &keys, start, &mut got) };
                assert_eq!(got, want_scores(&q, &keys, start, len), "AVX2 scores: head_dim {hd}");
                if hd % 16 == 0 {
                    let mut got = vec![3; hd];
                    // SAFETY: as above; head_dim is a multiple of 16, |p| < 2^30.
                    unsafe { avx2::weighted_sum(&probs, &values, start, &mut got) };
                    assert_eq!(got, want, "AVX2 weighted sum: head_dim {hd}, slots {start} + {len}");
                }
            }
        }
    }
}

fn want_scores(q: &[i16], keys: &[i16], start: usize, len: usize) -> Vec<i32> {
    let mut out = vec![0; len];
    portable::scores(q, keys, start, &mut out);
    out
}

/// The attention softmax's vector versions against the portable ones, on windows whose
/// lengths leave tails, with shifts inside and outside the vector case, logits near the
/// i32 bounds (saturating bias), far apart (exponentials of 0) and gaps past 32.
#[test]
fn softmax_kernels_give_the_portable_integers() {
    let tables = Tables::new();
    let mut next = rng(0x2545_f491u32);
    for n in [1usize, 3, 4, 7, 8, 9, 31, 384, 641] {
        for (shift, spread, big) in [(16, 6, false), (20, 30, false), (3, 9, false), (16, 4, true), (40, 3, false)] {
            let scores: Vec<i32> =
                (0..n).map(|_| if big { next() as i32 } else { (next() % (1 << 24)) as i32 - (1 << 23) }).collect();
            let key_shift: Vec<i32> = (0..n).map(|_| (next() % spread) as i32 - 2).collect();
            let bias: Vec<i32> = (0..n)
                .map(|i| match i % 5 {
                    0 => i32::MAX - (next() % 4) as i32,
                    1 => i32::MIN + (next() % 4) as i32,
                    _ => (next() % 4096) as i32 - 2048,
                })
                .collect();
            let (mut s1, mut s2) = (scores.clone(), scores);
            let (mut w1, mut w2) = (vec![0; n], vec![0; n]);
            softmax_weights(&mut s1, shift, &key_shift, &bias, &tables, &mut w1);
            portable::softmax_weights(&mut s2, shift, &key_shift, &bias, &tables, &mut w2);
            assert_eq!((s1, &w1), (s2, &w2), "n {n}, shift {shift}, spread {spread}");
            let sum = w1.iter().sum::<u64>().max(1 << 30);
            let value_shift: Vec<i32> = (0..n).map(|_| (next() % 40) as i32 - 5).collect();
            let vmax = value_shift.iter().zip(&w1).filter(|(_, &w)| w > 0).map(|(&v, _)| v).max();
            assert_eq!(live_max(&w1, &value_shift), vmax.unwrap_or(i32::MIN), "n {n}, shift {shift}");
            // Slots without weight in every position of the vectors and the tail.
            let sparse: Vec<u64> = w1.iter().enumerate().map(|(i, &w)| if i % 3 == 0 { 0 } else { w }).collect();
            assert_eq!(live_max(&sparse, &value_shift), portable::live_max(&sparse, &value_shift));
            assert_eq!(live_max(&vec![0; n], &value_shift), i32::MIN);
            let vmax = vmax.unwrap_or(0);
            let (mut p1, mut p2) = (vec![0; n], vec![0; n]);
            probabilities(&w1, &value_shift, vmax, (1 << 51) / sum, &mut p1);
            portable::probabilities(&w1, &value_shift, vmax, (1 << 51) / sum, &mut p2);
            assert_eq!(p1, p2, "n {n}, shift {shift}");
        }
    }
}

/// RMSNorm's division against i64 division: every divisor size, quotients at and next to
/// whole numbers, at and past the i32 clamp, both signs, the i32 extremes, tails after
/// the groups of 4.
#[test]
fn divide_products_give_the_quotients_of_integer_division() {
    let mut next = rng(0x9E37_79B9u32);
    let divisors = [2, 3, 16, 17, 4095, 1 << 20, (1 << 20) + 3, (1 << 31) - 1, 1 << 31];
    let random: Vec<u64> = (0..40).map(|i| u64::from(next() >> (i % 31)).clamp(2, 1 << 31)).collect();
    for d in divisors.into_iter().chain(random) {
        let mut xs: Vec<i32> = vec![];
        let mut gs: Vec<i32> = vec![];
        let di = d as i64;
        for k in [0i64, 1, 2, 1000, (1 << 31) - 1, 1 << 31, (1 << 31) + 1] {
            // x = k d + e with gain 1 (when it fits), and x = k with gain d (when that fits).
            for e in [-1, 0, 1, di - 1] {
                for sign in [1, -1] {
                    if let Ok(v) = i32::try_from(sign * (k * di + e)) {
                        xs.push(v);
                        gs.push(if xs.len().is_multiple_of(2) { 1 } else { -1 });
                    }
                }
            }
            if let (Ok(v), Ok(g)) = (i32::try_from(k), i32::try_from(di)) {
                xs.extend([v, -v, v]);
                gs.extend([g, g, -g]);
            }
        }
        for _ in 0..300 {
            let big = |n: u32| {
                if n.is_multiple_of(7) {
                    [i32::MIN, i32::MAX, -1, 0][(n / 7 % 4) as usize]
                } else {
                    (n >> (n % 31)) as i32
                }
            };
            let v = big(next());
            xs.push(if next().is_multiple_of(2) { v } else { v.wrapping_neg() });
            gs.push(big(next()));
        }
        if d == (1 << 31) - 1 {
            // d is prime: with g = -1 / x mod d, x g / d falls 1/d short of a whole number,
            // closer than the f64 guess can tell (the remainder corrects it downward).
            let pow = |mut b: u64, mut e: u64| {
                let mut r = 1;
                while e > 0 {
                    (r, b, e) = (if e & 1 == 1 { r * b % d } else { r }, b * b % d, e >> 1);
                }
                r
            };
            for _ in 0..200 {
                let v = u64::from(next() >> 1).max(2) % d;
                xs.push(v as i32);
                gs.push((d - pow(v, d - 2)) as i32);
            }
        }
        xs.push(7); // a tail
        gs.push(-3);
        let (mut got, mut want) = (vec![0; xs.len()], vec![0; xs.len()]);
        divide_products(&xs, &gs, d, &mut got);
        portable::divide_products(&xs, &gs, d, &mut want);
        for i in 0..xs.len() {
            let exact = (i64::from(xs[i]) * i64::from(gs[i]) / di).clamp(i32::MIN.into(), i32::MAX.into()) as i32;
            assert_eq!((got[i], want[i]), (exact, exact), "{} * {} / {d}", xs[i], gs[i]);
        }
    }
}

/// The rescale's vector version against `shift_round`: every shift it takes and the
/// ones it leaves to the scalar code, products at the i64 and i32 limits, tails.
#[test]
fn rescale_gives_the_rounded_shifts() {
    let mut next = rng(0x1234_5679u32);
    for s in [-3, 0, 1, 2, 3, 13, 24, 35, 40, 62, 63] {
        for n in [1, 8, 13, 256] {
            // Scales up to 2^31 in magnitude, so that product and rounding term fit i64
            // (the engine's reach 2^32, MAX_ROW_SCALE in Q24, with smaller sums); values
            // of every size.
            let scale: Vec<i64> = (0..n)
                .map(|i| match i % 4 {
                    0 => 1 << 31,
                    1 => -(1 << 31),
                    _ => (i64::from(next()) >> (next() % 32)) * if next().is_multiple_of(2) { 1 } else { -1 },
                })
                .collect();
            let vals: Vec<i32> =
                (0..n)
                    .map(|i| {
                        if i % 5 == 0 {
                            [i32::MIN, i32::MAX, 0, -1][i / 5 % 4]
                        } else {
                            (next() as i32) >> (next() % 31)
                        }
                    })
                    .collect();
            let (mut got, mut want) = (vals.clone(), vals);
            rescale(&mut got, &scale, s);
            portable::rescale(&mut want, &scale, s);
            assert_eq!(got, want, "s {s}, n {n}");
        }
    }
}

/// GELU's vector version against the scalar one: every value the table covers, the
/// values around the table's bounds, the i32 extremes, and a tail after the groups of 8.
#[test]
fn gelu_kernel_gives_the_table_values() {
    let tables = Tables::new();
    let lo = super::super::fixed::GELU_LO;
    let edges = [i32::MIN, i32::MIN + 1, lo - 1, lo, lo + 1, -1, 0, 1, -lo - 1, -lo, -lo + 1, i32::MAX - 1, i32::MAX];
    let mut x: Vec<i32> = (lo - 200..-lo + 200).chain(edges).collect();
    x.push(12_345);
    let want: Vec<i32> = x.iter().map(|&v| tables.gelu(v)).collect();
    let mut got = x.clone();
    gelu(&mut got, &tables);
    assert_eq!(got, want);
    portable::gelu(&mut x, &tables);
    assert_eq!(x, want);
}

/// Slots outside the window, or layouts that do not fit, are a panic, never a read outside
/// the cache: release builds run the SIMD loads unchecked.
#[test]
fn attention_kernels_check_their_slots_in_release_builds() {
    let (q, cache) = (vals(16, 3, 2047), vals(16 * 64, 5, 2047));
    let panics = |f: &dyn Fn()| {
        *std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err().downcast::<&str>().unwrap()
    };
    let bad_scores: [(&[i16], &[i16], usize, usize); 4] =
        [(&q, &cache, 60, 5), (&q, &cache[1..], 0, 8), (&q[1..], &cache, 0, 8), (&q, &cache, usize::MAX, 2)];
    for (q, keys, start, n) in bad_scores {
        let msg = panics(&|| scores(q, keys, start, &mut vec![0; n]));
        assert_eq!(msg, "attention scores: the slots are not in the keys' window", "{start} + {n}");
    }
    let bad_values: [(&[i16], usize, usize); 4] =
        [(&cache, 60, 5), (&cache[16..], 0, 8), (&cache, 1, 8), (&cache, 64, 1)];
    for (values, start, n) in bad_values {
        let msg = panics(&|| weighted_sum(&vec![1; n], values, start, &mut [0; 16]));
        assert_eq!(msg, "attention values: the slots are not in the values' window", "{start} + {n}");
    }
    // The last slots of the window are accepted.
    scores(&q, &cache, 56, &mut [0; 8]);
    weighted_sum(&[1; 8], &cache, 56, &mut [0; 16]);
}

#[test]
fn sums_at_the_engine_limits_do_not_overflow() {
    use crate::network::spec::{MAX_HEAD_DIM, MAX_ROW};
    let top = 2047i16;
    let (q, keys) = (vec![top; MAX_HEAD_DIM], vec![top; MAX_HEAD_DIM * 9]);
    let mut s = vec![0; 9];
    scores(&q, &keys, 0, &mut s);
    assert!(s.iter().all(|&v| i64::from(v) == MAX_HEAD_DIM as i64 * 2047 * 2047), "{s:?}");
    let (x, w) = (vec![-top; MAX_ROW * 5], vec![-128i16; MAX_ROW * 3]);
    let mut o = vec![0; 15];
    matmul(&x, MAX_ROW, &w, &mut o);
    assert!(o.iter().all(|&v| i64::from(v) == MAX_ROW as i64 * 2047 * 128), "{o:?}");
    let m = Packed::new(&vec![-128i8; MAX_ROW * 3], 3, MAX_ROW);
    matmul_packed(&x, &m, &mut o);
    assert!(o.iter().all(|&v| i64::from(v) == MAX_ROW as i64 * 2047 * 128), "{o:?}");
}
