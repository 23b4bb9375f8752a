//! The integer transformer: the model of `model::spec` run in integer arithmetic only.
//!
//! Weights are int8 (widened to i16 in registers for the multiply-add), activations are quantized per
//! row (or per head) to 12 bits with a power-of-two scale, products accumulate in i32, and
//! every rescale is an integer multiply and a rounding shift (`fixed.rs`). Rows never mix:
//! a row's result is the same whatever else is in the batch, and on every machine.
//!
//! Reads like llama2.c: `Transformer` holds the prepared weights, `Session` one segment's
//! state (its tokens and the key/value cache), `forward` runs one step for a batch of sessions.

mod backward;
pub use backward::INPUT_ROWS;
pub(crate) mod fixed;
pub mod kernels;

use crate::data::{TOKENS_PER_FRAME, VOCAB};
use crate::network::spec::{BOS, INPUT_VOCAB};
use crate::network::{Linear, ModelSpec, Weights};
use crate::predict::table::TOTAL;
use fixed::{quantize, shift_round, to_fixed, Tables};

// The limits of `model::spec` are what keep this engine's integers in range; check the
// arithmetic behind each at compile time (FORMAT.md section 3.2.1).
const _: () = {
    use crate::network::spec::{MAX_HEAD_DIM, MAX_ROW, MAX_ROW_SCALE, MAX_WIDTH};
    let q = fixed::QMAX as i128;
    // Attention scores: q . k over a head, both 12-bit.
    assert!(MAX_HEAD_DIM as i128 * q * q <= i32::MAX as i128);
    // Matrix products: 12-bit activations by int8 weights (-128..=127) over a row.
    let row_sum = MAX_ROW as i128 * q * 128;
    assert!(row_sum <= i32::MAX as i128 && MAX_WIDTH <= MAX_ROW);
    // Rescale: such a sum times a Q24 scale, plus the rounding term of a shift of at most
    // 24 + 11 (a quantization shift is at least -11).
    assert!(row_sum * ((MAX_ROW_SCALE as i128) << 24) + (1 << 34) <= i64::MAX as i128);
};

/// A linear layer ready for the kernels: int8 weights packed (`kernels::Packed`), scales in Q24.
struct Matrix {
    w: kernels::Packed,
    scale_q24: Vec<i64>,
}

impl Matrix {
    fn new(l: &Linear, rows: usize) -> Matrix {
        Matrix {
            w: kernels::Packed::new(&l.w[..rows * l.cols], rows, l.cols),
            scale_q24: l.scale[..rows].iter().map(|&s| to_fixed(s, 24)).collect(),
        }
    }

    /// Q12 outputs for a batch of quantized rows `x` with their shifts.
    #[inline(always)]
    fn apply(&self, x: &[i16], shifts: &[i32], out: &mut [i32]) {
        kernels::matmul_packed(x, &self.w, out);
        for (row, &shift) in out.chunks_exact_mut(self.w.rows()).zip(shifts) {
            kernels::rescale(row, &self.scale_q24, 24 - shift);
        }
    }
}

/// An embedding table dequantized to Q12 rows.
fn embedding(l: &Linear) -> Vec<i32> {
    l.w.chunks_exact(l.cols)
        .zip(&l.scale)
        .flat_map(|(row, &s)| {
            let s = to_fixed(s, 24);
            row.iter().map(move |&w| shift_round(i64::from(w) * s, 12))
        })
        .collect()
}

fn q12(v: &[f32]) -> Vec<i32> {
    v.iter().map(|&g| to_fixed(g, 12).clamp(i32::MIN as i64, i32::MAX as i64) as i32).collect()
}

struct Layer {
    norm1: Vec<i32>,
    qkv: Matrix,
    /// Attention logit bias per head and frame offset, Q8.
    frame_bias: Vec<i32>,
    out: Matrix,
    norm2: Vec<i32>,
    up: Matrix,
    down: Matrix,
}

pub struct Transformer {
    pub spec: ModelSpec,
    pub hash: [u8; 32],
    tables: Tables,
    tok_prev: Vec<i32>,
    tok_same: Vec<i32>,
    pos: Vec<i32>,
    layers: Vec<Layer>,
    norm_out: Vec<i32>,
    /// Output matrix: `tok_same`'s first 1024 rows (tied).
    head: Matrix,
    head_bias: Vec<i32>,
}

/// One segment's state: the tokens so far and, per layer, the keys and values of the last
/// `context_frames + 1` frames in a ring of slots `(frame mod (K+1)) * 128 + position`;
/// and, if its inputs learn (`learn_inputs`), what they have learnt.
pub struct Session {
    pub tokens: Vec<u16>,
    keys: Vec<Cache>,
    values: Vec<Cache>,
    /// The segment's change of the three input embeddings, Q24, `[INPUT_ROWS, width]`
    /// (`backward`); empty while they stay.
    inputs: Vec<i32>,
}

/// One layer's keys (or values), head by head, each head's block laid out as the attention
/// kernels read it: keys `[dims / 2, window, 2]` (dims padded to an even count), values
/// `[window / 2, head_dim, 2]` (`kernels::scores`, `kernels::weighted_sum`).
struct Cache {
    /// Quantized vectors, `[heads, block]`.
    q: Vec<i16>,
    /// Power-of-two scale per head and slot, `[heads, window]`.
    shift: Vec<i32>,
}

/// Slots `start..start + len` of the ring, all of one frame, `dt` frames before the element.
#[derive(Clone, Copy)]
struct Run {
    start: usize,
    len: usize,
    dt: usize,
}

impl Transformer {
    pub fn new(w: &Weights) -> Transformer {
        let layers = w
            .layers
            .iter()
            .map(|l| Layer {
                norm1: q12(&l.norm1),
                qkv: Matrix::new(&l.qkv, l.qkv.rows),
                frame_bias: l.frame_bias.iter().map(|&b| to_fixed(b, 8).clamp(-1 << 20, 1 << 20) as i32).collect(),
                out: Matrix::new(&l.out, l.out.rows),
                norm2: q12(&l.norm2),
                up: Matrix::new(&l.up, l.up.rows),
                down: Matrix::new(&l.down, l.down.rows),
            })
            .collect();
        Transformer {
            spec: w.spec,
            hash: w.hash,
            tables: Tables::new(),
            tok_prev: embedding(&w.tok_prev),
            tok_same: embedding(&w.tok_same),
            pos: embedding(&w.pos),
            layers,
            norm_out: q12(&w.norm_out),
            head: Matrix::new(&w.tok_same, VOCAB),
            head_bias: q12(&w.head_bias),
        }
    }

    /// Bytes of the matrices one step reads (as the kernels hold them, int8).
    pub fn matrix_bytes(&self) -> usize {
        let layers = self.layers.iter().flat_map(|l| [&l.qkv, &l.out, &l.up, &l.down]);
        layers.chain([&self.head]).map(|m| m.w.bytes()).sum()
    }

    pub fn session(&self, capacity: usize) -> Session {
        let (win, hd, h) = (self.spec.window(), self.spec.head_dim(), self.spec.kv_heads);
        let cache = |dims| Cache { q: vec![0; h * win * dims], shift: vec![0; h * win] };
        Session {
            tokens: Vec::with_capacity(capacity),
            keys: (0..self.spec.layers).map(|_| cache(hd.next_multiple_of(2))).collect(),
            values: (0..self.spec.layers).map(|_| cache(hd)).collect(),
            inputs: vec![],
        }
    }

    /// Let the session's input embeddings learn while it codes (`backward`): they start
    /// from the weights, with a change of zero.
    pub fn learn_inputs(&self, session: &mut Session) {
        session.inputs = vec![0; backward::INPUT_ROWS * self.spec.width];
    }

    /// Logits (Q12, `[batch, 1024]`) for the next token of each session, computing and caching
    /// the keys and values of that token's element.
    pub fn forward(&self, sessions: &mut [&mut Session]) -> Output {
        #[cfg(target_arch = "x86_64")]
        if kernels::has_x86_64_v3() {
            // SAFETY: the CPU has every feature `forward_v3` is compiled for.
            return unsafe { self.forward_v3(sessions) };
        }
        self.forward_any(sessions)
    }

    /// `forward` compiled for x86-64-v3 CPUs (AVX2, BMI2, LZCNT): the work between the kernels
    /// (norms, quantizing, rescaling, copies) vectorizes four times wider than the SSE2
    /// baseline. Integer code only, so the results are the same integers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,popcnt,fma")]
    unsafe fn forward_v3(&self, sessions: &mut [&mut Session]) -> Output {
        self.forward_any(sessions)
    }

    #[inline(always)]
    fn forward_any(&self, sessions: &mut [&mut Session]) -> Output {
        let (b, d) = (sessions.len(), self.spec.width);
        let mut x = vec![0i32; b * d];
        for (s, xr) in sessions.iter().zip(x.chunks_exact_mut(d)) {
            let [prev, same, pos] = inputs(&s.tokens);
            let rows = [&self.tok_prev[prev * d..][..d], &self.tok_same[same * d..][..d], &self.pos[pos * d..][..d]];
            for (i, v) in xr.iter_mut().enumerate() {
                *v = rows.iter().fold(0i32, |acc, r| acc.saturating_add(r[i]));
            }
            if !s.inputs.is_empty() {
                backward::add_input_changes(&s.inputs, [prev, same, pos], xr);
            }
        }
        let windows: Vec<_> = sessions.iter().map(|s| self.window(s.tokens.len())).collect();
        let mut scratch = Scratch::new(b, d);
        for (l, layer) in self.layers.iter().enumerate() {
            scratch.norm_quantize(&x, &layer.norm1, d);
            let rows = self.spec.qkv_rows();
            let mut qkv = vec![0i32; b * rows];
            layer.qkv.apply(&scratch.q, &scratch.shifts, &mut qkv);
            let mut attn = vec![0i32; b * d];
            let rows = qkv.chunks_exact(rows).zip(attn.chunks_exact_mut(d)).zip(&windows);
            for (s, ((row, out), window)) in sessions.iter_mut().zip(rows) {
                self.attend(layer, l, s, row, window, out);
            }
            scratch.quantize_rows(&attn, d);
            self.residual(&layer.out, &scratch, &mut x);
            scratch.norm_quantize(&x, &layer.norm2, d);
            let m = self.spec.mlp_width;
            let mut hidden = vec![0i32; b * m];
            layer.up.apply(&scratch.q, &scratch.shifts, &mut hidden);
            kernels::gelu(&mut hidden, &self.tables);
            scratch.quantize_rows(&hidden, m);
            self.residual(&layer.down, &scratch, &mut x);
        }
        scratch.norm_quantize(&x, &self.norm_out, d);
        let mut logits = vec![0i32; b * VOCAB];
        self.head.apply(&scratch.q, &scratch.shifts, &mut logits);
        for row in logits.chunks_exact_mut(VOCAB) {
            row.iter_mut().zip(&self.head_bias).for_each(|(v, &bias)| *v = v.saturating_add(bias));
        }
        Output { logits, hidden: scratch.q, shifts: scratch.shifts, residual: x }
    }

    #[inline(always)]
    fn residual(&self, m: &Matrix, scratch: &Scratch, x: &mut [i32]) {
        let mut y = vec![0i32; x.len()];
        m.apply(&scratch.q, &scratch.shifts, &mut y);
        x.iter_mut().zip(&y).for_each(|(a, &b)| *a = a.saturating_add(b));
    }

    /// The window seen by a session's next element, as runs of ring slots, oldest frame first:
    /// in each of the previous `context_frames` frames the places the element reaches (whole
    /// frames at full reach; else a run per row), and the current frame up to and including
    /// the element itself (the last slot of the last run).
    fn window(&self, p: usize) -> Vec<Run> {
        let spec = &self.spec;
        let k_frames = spec.context_frames;
        let (t, pos) = (p / TOKENS_PER_FRAME, p % TOKENS_PER_FRAME);
        let (rows, cols) = spec.reach_of(pos);
        let mut runs: Vec<Run> = vec![];
        for f in t.saturating_sub(k_frames)..t {
            let base = (f % (k_frames + 1)) * TOKENS_PER_FRAME;
            for r in rows.clone() {
                let (start, len) = (base + r * 16 + cols.start(), cols.end() - cols.start() + 1);
                match runs.last_mut() {
                    // Whole rows follow each other in the ring: one run.
                    Some(last) if last.start + last.len == start && last.dt == t - f => last.len += len,
                    _ => runs.push(Run { start, len, dt: t - f }),
                }
            }
        }
        runs.push(Run { start: (t % (k_frames + 1)) * TOKENS_PER_FRAME, len: pos + 1, dt: 0 });
        runs
    }

    /// Multi-head attention of one session's new element (its `q, k, v` in `qkv`, Q12) over
    /// its window; writes the Q12 result to `out`. Every step below is a sum, a maximum or
    /// per slot, so the order the runs come in does not change a single integer. The query
    /// heads of a group read their key/value head's cache one after another.
    #[inline(always)]
    fn attend(&self, layer: &Layer, l: usize, s: &mut Session, qkv: &[i32], window: &[Run], out: &mut [i32]) {
        let spec = &self.spec;
        let (d, hd, win, kvh) = (spec.width, spec.head_dim(), spec.window(), spec.kv_heads);
        let group = spec.heads / kvh;
        let last = window.last().expect("the window holds the element itself");
        let here = last.start + last.len - 1;
        let (keys, values) = (&mut s.keys[l], &mut s.values[l]);
        let n: usize = window.iter().map(|r| r.len).sum();
        // Keys and the query padded to an even count of dims (the padding stays 0).
        let hk = hd.next_multiple_of(2);
        let (mut q, mut key, mut value) = (vec![0i16; hk], vec![0i16; hk], vec![0i16; hd]);
        let (mut logits, mut probs, mut bias) = (vec![0i32; n], vec![0i32; n], vec![0i32; n]);
        let (mut key_shift, mut value_shift) = (vec![0i32; n], vec![0i32; n]);
        let mut weights = vec![0u64; n];
        let (mut acc, mut padded) = (vec![0i32; hd], vec![]);
        for g in 0..kvh {
            let (kq, vq) = (&mut keys.q[g * win * hk..][..win * hk], &mut values.q[g * win * hd..][..win * hd]);
            let (ks, vs) = (&mut keys.shift[g * win..][..win], &mut values.shift[g * win..][..win]);
            ks[here] = quantize(&qkv[d + g * hd..][..hd], &mut key[..hd]);
            vs[here] = quantize(&qkv[d + (kvh + g) * hd..][..hd], &mut value);
            let mut at = 0;
            for r in window {
                let (slots, dst) = (r.start..r.start + r.len, at..at + r.len);
                key_shift[dst.clone()].copy_from_slice(&ks[slots.clone()]);
                value_shift[dst].copy_from_slice(&vs[slots]);
                at += r.len;
            }
            for h in g * group..(g + 1) * group {
                let span = h * hd..(h + 1) * hd;
                let sq = quantize(&qkv[span.clone()], &mut q[..hd]);
                let frame_bias = &layer.frame_bias[h * (spec.context_frames + 1)..];
                let mut at = 0;
                for r in window {
                    let dst = at..at + r.len;
                    kernels::scores(&q, kq, r.start, &mut logits[dst.clone()]);
                    bias[dst].fill(frame_bias[r.dt]);
                    at += r.len;
                }
                // The element's own slot (the last) is scored from its key directly; its key
                // is stored only after the group's heads: the kernel above has just read the
                // block into the cache, so the scattered stores no longer each wait for a
                // line from memory.
                logits[n - 1] = q.iter().zip(&key).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
                kernels::softmax_weights(&mut logits, 16 - sq, &key_shift, &bias, &self.tables, &mut weights);
                // Probabilities in Q19 by multiplying with 2^51 / sum (sum >= 2^30, so this
                // fits), scaled down to the largest value shift among the slots with weight.
                let inv = (1u64 << 51) / weights.iter().sum::<u64>();
                let vmax = kernels::live_max(&weights, &value_shift);
                kernels::probabilities(&weights, &value_shift, vmax, inv, &mut probs);
                // Likewise the element's own value: weighted directly, stored later.
                let own = std::mem::take(&mut probs[n - 1]);
                acc.iter_mut().zip(&value).for_each(|(a, &v)| *a = own.wrapping_mul(i32::from(v)));
                let mut at = 0;
                for r in window {
                    let p = &probs[at..at + r.len];
                    if r.start.is_multiple_of(2) {
                        kernels::weighted_sum(p, vq, r.start, &mut acc);
                    } else {
                        // Values are stored by pairs of slots: start a slot early, at weight 0.
                        padded.clear();
                        padded.push(0);
                        padded.extend_from_slice(p);
                        kernels::weighted_sum(&padded, vq, r.start - 1, &mut acc);
                    }
                    at += r.len;
                }
                for (o, &a) in out[span].iter_mut().zip(&acc) {
                    *o = shift_round(i64::from(a), 19 - vmax);
                }
            }
            kernels::put_key(kq, here, &key);
            kernels::put_value(vq, here, &value);
        }
    }

    /// The coder's frequency table for logits (Q12): softmax by the exp table, each token at
    /// least 1, total exactly 2^24 (the remainder goes to the most likely token).
    pub fn frequencies(&self, logits: &[i32], freqs: &mut [u32]) {
        let l8: Vec<i32> = logits.iter().map(|&l| shift_round(i64::from(l), 4)).collect();
        let max = *l8.iter().max().unwrap();
        // Both are i32, so the distance fits a u32.
        let e: Vec<u64> = l8.iter().map(|&l| self.tables.exp_neg((i64::from(max) - i64::from(l)) as u32)).collect();
        let sum: u64 = e.iter().sum();
        let budget = u64::from(TOTAL) - VOCAB as u64;
        let divide = fixed::Divider::new(sum);
        for (f, &ev) in freqs.iter_mut().zip(&e) {
            *f = 1 + divide.floor(ev * budget) as u32;
        }
        let used: u32 = freqs.iter().sum();
        let top = l8.iter().position(|&l| l == max).unwrap();
        freqs[top] += TOTAL - used;
    }
}

/// The embedding rows that the element after `tokens` reads: the token before it (`tok_prev`),
/// the token at its place in the frame before (`tok_same`), both BOS where there is none, and
/// its place (`pos`).
fn inputs(tokens: &[u16]) -> [usize; 3] {
    let p = tokens.len();
    let prev = if p > 0 { usize::from(tokens[p - 1]) } else { BOS };
    let same = if p >= TOKENS_PER_FRAME { usize::from(tokens[p - TOKENS_PER_FRAME]) } else { BOS };
    debug_assert!(prev < INPUT_VOCAB && same < INPUT_VOCAB);
    [prev, same, p % TOKENS_PER_FRAME]
}

/// One forward step of a batch: the logits and the output layer's input, the normalized
/// last hidden rows (12-bit, `x ~= hidden * 2^shift` in Q12), and the last residual rows
/// before that norm, which online adaptation needs.
pub struct Output {
    /// Q12, `[batch, 1024]`.
    pub logits: Vec<i32>,
    /// `[batch, width]`.
    pub hidden: Vec<i16>,
    pub shifts: Vec<i32>,
    /// Q12, `[batch, width]`.
    pub residual: Vec<i32>,
}

/// Per-step buffers of a batch: normalized rows quantized for the next matrix.
struct Scratch {
    h: Vec<i32>,
    q: Vec<i16>,
    shifts: Vec<i32>,
}

impl Scratch {
    fn new(b: usize, d: usize) -> Scratch {
        Scratch { h: vec![0; b * d], q: vec![], shifts: vec![0; b] }
    }

    #[inline(always)]
    fn norm_quantize(&mut self, x: &[i32], gain: &[i32], d: usize) {
        self.h.resize(x.len(), 0);
        for (xr, hr) in x.chunks_exact(d).zip(self.h.chunks_exact_mut(d)) {
            kernels::rms_norm(xr, gain, hr);
        }
        let h = std::mem::take(&mut self.h);
        self.quantize_rows(&h, d);
        self.h = h;
    }

    #[inline(always)]
    fn quantize_rows(&mut self, x: &[i32], width: usize) {
        self.q.resize(x.len(), 0);
        for ((xr, qr), s) in x.chunks_exact(width).zip(self.q.chunks_exact_mut(width)).zip(&mut self.shifts) {
            *s = quantize(xr, qr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::spec::{MAX_ROW, MAX_ROW_SCALE};

    #[test]
    fn a_row_at_the_limits_rescales_exactly() {
        // The largest sum a row can reach, by the largest scale, after the smallest shift.
        let (cols, scale, shift) = (MAX_ROW, MAX_ROW_SCALE, -11);
        let l = Linear { rows: 1, cols, w: vec![-128; cols], scale: vec![scale] };
        let mut out = [0];
        Matrix::new(&l, 1).apply(&vec![-fixed::QMAX as i16; cols], &[shift], &mut out);
        let sum = cols as i128 * i128::from(fixed::QMAX) * 128;
        let exact = (sum * ((scale as i128) << 24)) >> (24 - shift);
        assert_eq!(i128::from(out[0]), exact);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_x86_64_v3_build_of_forward_gives_the_same_integers() {
        if !kernels::has_x86_64_v3() {
            return eprintln!("skipped: this CPU lacks x86-64-v3 (scripts/cross-check.sh runs the portable path)");
        }
        // Odd head dims, a window that wraps, two sessions at different positions.
        let spec = ModelSpec { kv_heads: 4, reach_rows: 1, reach_cols: 2, ..ModelSpec::new(2, 80, 16, 1, 160) };
        let t = Transformer::new(&Weights::random(spec, 7).unwrap());
        let (mut a, mut b) = ([t.session(0), t.session(0)], [t.session(0), t.session(0)]);
        a[1].tokens.push(5);
        b[1].tokens.push(5);
        for step in 0..3 * TOKENS_PER_FRAME {
            let plain = t.forward_any(&mut a.iter_mut().collect::<Vec<_>>());
            // SAFETY: checked above.
            let v3 = unsafe { t.forward_v3(&mut b.iter_mut().collect::<Vec<_>>()) };
            assert!(plain.logits == v3.logits && plain.hidden == v3.hidden && plain.shifts == v3.shifts, "step {step}");
            let next = plain.logits.chunks_exact(VOCAB).map(|r| (0..VOCAB).max_by_key(|&i| r[i]).unwrap() as u16);
            for ((sa, sb), token) in a.iter_mut().zip(b.iter_mut()).zip(next.collect::<Vec<_>>()) {
                sa.tokens.push(token);
                sb.tokens.push(token);
            }
        }
    }
}
