//! Logistic domain helpers in integer arithmetic: probabilities are 12-bit (1..4095 of
//! 4096), logits ("stretch") are in units of 1/256 and clamped to +-2047. Both tables are
//! built from integers only, so every machine gets the same values.

/// squash(x) = 4096 / (1 + e^(-x/256)), sampled every 128 units and interpolated.
const SQUASH_KNOTS: [i32; 33] = [
    1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047, 2549, 2994, 3348, 3607, 3785, 3901,
    3975, 4024, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094,
];

/// Probability (12-bit) of a logit.
pub fn squash(x: i32) -> i32 {
    let x = x.clamp(-2047, 2047);
    let w = x & 127;
    let i = ((x >> 7) + 16) as usize;
    (SQUASH_KNOTS[i] * (128 - w) + SQUASH_KNOTS[i + 1] * w + 64) >> 7
}

/// Inverse of `squash`: the logit of a 12-bit probability.
pub struct Stretch([i16; 4096]);

impl Stretch {
    pub fn new() -> Self {
        let mut t = [0i16; 4096];
        let mut next = 0usize;
        for x in -2047..=2047 {
            let v = squash(x) as usize;
            for slot in t.iter_mut().take(v + 1).skip(next) {
                *slot = x as i16;
            }
            next = next.max(v + 1);
        }
        t.iter_mut().skip(next).for_each(|s| *s = 2047);
        Stretch(t)
    }

    pub fn get(&self, p: u32) -> i32 {
        i32::from(self.0[p as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretch_inverts_squash() {
        let s = Stretch::new();
        assert_eq!(squash(0), 2047);
        for x in (-2047..=2047).step_by(7) {
            let p = squash(x);
            assert!((1..=4095).contains(&p));
            assert!((squash(s.get(p as u32)) - p).abs() <= 1, "x={x}");
        }
        for p in 1..4095 {
            assert!(s.get(p) <= s.get(p + 1));
        }
    }
}
