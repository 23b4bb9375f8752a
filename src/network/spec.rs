//! The model spec: one definition of the network that the trainer trains and the integer
//! engine runs.
//!
//! A decoder-only transformer over tokens in raster order. The element that predicts token
//! `(t, k)` (frame t, position k = 16*row + col) has as input the sum of three embeddings:
//! the token just before it in raster order (`tok_prev`; BOS before the first token), the
//! token at the same position in the previous frame (`tok_same`; BOS in frame 0) and the
//! position `k` (`pos`). It attends to the elements of the `context_frames` previous frames
//! and to the current frame's elements up to itself. Attention logits are `q . k` (the
//! trainer folds 1/sqrt(head_dim) into the query weights) plus a learned bias per head and
//! frame offset (0..=context_frames). No absolute frame index enters the network, so cached
//! keys and values stay valid as the window slides from frame to frame.
//!
//! Two options read less of the key/value cache (FORMAT.md section 3.2.4): `kv_heads` key/value
//! heads shared by the query heads in groups (grouped-query attention; one is multi-query),
//! and a reach: in an earlier frame a query reads only the places within `reach_rows` rows and
//! `reach_cols` columns of its own (motion between frames is mostly local); its own frame stays
//! causal over every earlier place. A model using neither is of the first weights format.
//!
//! Each layer: `x += out(attn(rmsnorm1(x)))`, `x += down(gelu(up(rmsnorm2(x))))`, with
//! bias-free linear layers and the tanh approximation of GELU. Output:
//! `logits = tok_same[0..1024] . rmsnorm_out(x) + head_bias` (the output matrix is tied to
//! the same-position embedding). RMSNorm: `x / sqrt(mean(x^2) + 2^-16) * gain`.

use anyhow::{ensure, Context, Result};
use std::collections::HashMap;
use std::ops::RangeInclusive;

use crate::data::{TOKENS_PER_FRAME, VOCAB};

/// Token id standing for "no token" (before the segment, or no previous frame).
pub const BOS: usize = VOCAB;
/// Input vocabulary: the 1024 token values and BOS.
pub const INPUT_VOCAB: usize = VOCAB + 1;
/// The weights formats, as the metadata's "format" names them; also the model id's first
/// field. The second adds `kv_heads`, `reach_rows` and `reach_cols`; a model is of the first
/// exactly when it uses neither option, so every earlier file and id stays as it was.
pub const FORMAT: &str = "cvq-gpt-int8-1";
pub const FORMAT_2: &str = "cvq-gpt-int8-2";
/// The reach that covers a whole frame (8 rows of 16 places): full attention; also the last
/// row and column.
pub const FULL_REACH: (usize, usize) = (7, 15);
/// The integer engine's limits (FORMAT.md section 3.2.1 derives them; the engine asserts the
/// arithmetic ones at compile time). Largest attention head: a score sums `head_dim` products
/// of two 12-bit activations, 512 x 2047^2 < 2^31.
pub const MAX_HEAD_DIM: usize = 512;
/// Longest row of any matrix (its input width: `width` or `mlp_width`): a sum of `cols`
/// products of a 12-bit activation and an int8 weight, 8192 x 2047 x 128 < 2^31.
pub const MAX_ROW: usize = 8192;
/// Largest residual width.
pub const MAX_WIDTH: usize = 2048;
/// Largest row scale of an int8 matrix: the rescale multiplies a sum (< 2^31) by the scale in
/// Q24 (<= 2^32) in i64, with a rounding term below 2^35.
pub const MAX_ROW_SCALE: f32 = 256.0;
/// Deepest model and longest context: no arithmetic limit, but they bound the key/value cache
/// (`kv_cache_bytes`), which the memory plan counts.
pub const MAX_LAYERS: usize = 64;
pub const MAX_CONTEXT_FRAMES: usize = 32;
/// RMSNorm's epsilon, 2^-16.
pub const NORM_EPS_LOG2: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub layers: usize,
    /// Residual width.
    pub width: usize,
    pub heads: usize,
    /// Previous frames attended to (K).
    pub context_frames: usize,
    /// Hidden width of the MLP.
    pub mlp_width: usize,
    /// Key/value heads, dividing `heads`: query head `h` reads key/value head
    /// `h / (heads / kv_heads)`.
    pub kv_heads: usize,
    /// In an earlier frame, a query at row r, column c reads the places within `reach_rows`
    /// rows and `reach_cols` columns of (r, c) (`FULL_REACH`: all of them).
    pub reach_rows: usize,
    pub reach_cols: usize,
}

/// How a tensor's values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// int8 weights `[out, in]` with an f32 scale per output row, named `NAME.scale`.
    Int8Rows,
    /// f32 values (norm gains, biases).
    F32,
}

impl ModelSpec {
    /// A spec of the first format: every head its own keys and values, full reach.
    pub const fn new(layers: usize, width: usize, heads: usize, context_frames: usize, mlp_width: usize) -> ModelSpec {
        let (reach_rows, reach_cols) = FULL_REACH;
        ModelSpec { layers, width, heads, context_frames, mlp_width, kv_heads: heads, reach_rows, reach_cols }
    }

    /// The weights format this spec needs: the first unless it uses an option of the second.
    pub fn format(&self) -> &'static str {
        match self.kv_heads == self.heads && (self.reach_rows, self.reach_cols) == FULL_REACH {
            true => FORMAT,
            false => FORMAT_2,
        }
    }

    /// The rows and the columns of an earlier frame that a query at frame position `pos`
    /// (row `pos / 16`, column `pos % 16`) reads: the one definition of the reach.
    pub fn reach_of(&self, pos: usize) -> (RangeInclusive<usize>, RangeInclusive<usize>) {
        let (row, col) = (pos / 16, pos % 16);
        let (last_row, last_col) = FULL_REACH;
        let rows = row.saturating_sub(self.reach_rows)..=(row + self.reach_rows).min(last_row);
        (rows, col.saturating_sub(self.reach_cols)..=(col + self.reach_cols).min(last_col))
    }

    /// Whether a query at frame position `query` reads position `key` of an earlier frame.
    pub fn reaches(&self, query: usize, key: usize) -> bool {
        let (rows, cols) = self.reach_of(query);
        rows.contains(&(key / 16)) && cols.contains(&(key % 16))
    }

    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    /// Keys/values kept per layer: the previous frames and the current one.
    pub fn window(&self) -> usize {
        (self.context_frames + 1) * TOKENS_PER_FRAME
    }

    /// Enforce the limits of FORMAT.md section 3.2.1, each named in its error.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (1..=MAX_LAYERS).contains(&self.layers),
            "layers must be 1..={MAX_LAYERS} (the limit that bounds the key/value cache), not {}",
            self.layers
        );
        ensure!(
            self.heads >= 1 && self.width.is_multiple_of(self.heads),
            "width {} is not a multiple of heads {}",
            self.width,
            self.heads
        );
        ensure!(
            self.kv_heads >= 1 && self.heads.is_multiple_of(self.kv_heads),
            "kv_heads {} does not divide heads {}",
            self.kv_heads,
            self.heads
        );
        ensure!(
            self.reach_rows <= FULL_REACH.0 && self.reach_cols <= FULL_REACH.1,
            "reach must be at most {} rows and {} columns (a whole frame), not {} and {}",
            FULL_REACH.0,
            FULL_REACH.1,
            self.reach_rows,
            self.reach_cols
        );
        ensure!(
            self.width.is_multiple_of(16) && (16..=MAX_WIDTH).contains(&self.width),
            "width must be a multiple of 16 in 16..={MAX_WIDTH}, not {}",
            self.width
        );
        ensure!(
            self.head_dim() <= MAX_HEAD_DIM,
            "head_dim {} (width {} / heads {}) exceeds the limit of {MAX_HEAD_DIM} (attention scores would overflow i32)",
            self.head_dim(),
            self.width,
            self.heads
        );
        ensure!(
            self.mlp_width.is_multiple_of(16) && (16..=MAX_ROW).contains(&self.mlp_width),
            "mlp_width must be a multiple of 16 in 16..={MAX_ROW} (longer rows would overflow i32 sums), not {}",
            self.mlp_width
        );
        ensure!(
            (1..=MAX_CONTEXT_FRAMES).contains(&self.context_frames),
            "context_frames must be 1..={MAX_CONTEXT_FRAMES} (the limit that bounds the key/value cache), not {}",
            self.context_frames
        );
        Ok(())
    }

    /// Bytes of one segment's key/value cache: per layer, keys and values of `window()` slots,
    /// each `kv_heads x head_dim` i16 values and one i32 shift per key/value head.
    pub fn kv_cache_bytes(&self) -> usize {
        // Values and keys (i16, keys padded to an even count of dims per head), and a shift
        // (i32) per head for each.
        let dims = self.kv_heads * (self.head_dim() + self.head_dim().next_multiple_of(2));
        self.layers * self.window() * (dims * 2 + 2 * self.kv_heads * 4)
    }

    /// Rows of `attn.qkv`: the queries (`width`), then the keys and the values of the
    /// key/value heads.
    pub fn qkv_rows(&self) -> usize {
        self.width + 2 * self.kv_heads * self.head_dim()
    }

    /// Every tensor of the model: name, shape and kind. The trainer exports exactly these.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Kind)> {
        let (d, m) = (self.width, self.mlp_width);
        let mut t = vec![
            ("tok_prev".to_string(), vec![INPUT_VOCAB, d], Kind::Int8Rows),
            ("tok_same".to_string(), vec![INPUT_VOCAB, d], Kind::Int8Rows),
            ("pos".to_string(), vec![TOKENS_PER_FRAME, d], Kind::Int8Rows),
        ];
        for l in 0..self.layers {
            let p = |s: &str| format!("layers.{l}.{s}");
            t.push((p("norm1.gain"), vec![d], Kind::F32));
            t.push((p("attn.qkv"), vec![self.qkv_rows(), d], Kind::Int8Rows));
            t.push((p("attn.frame_bias"), vec![self.heads, self.context_frames + 1], Kind::F32));
            t.push((p("attn.out"), vec![d, d], Kind::Int8Rows));
            t.push((p("norm2.gain"), vec![d], Kind::F32));
            t.push((p("mlp.up"), vec![m, d], Kind::Int8Rows));
            t.push((p("mlp.down"), vec![d, m], Kind::Int8Rows));
        }
        t.push(("norm_out.gain".to_string(), vec![d], Kind::F32));
        t.push(("head_bias".to_string(), vec![VOCAB], Kind::F32));
        t
    }

    /// The spec's numbers as the model id and the metadata name them, in id order: the
    /// first format's five, then the second's three where the spec is of it.
    pub fn fields(&self) -> Vec<(&'static str, usize)> {
        let mut f = vec![
            ("layers", self.layers),
            ("width", self.width),
            ("heads", self.heads),
            ("context_frames", self.context_frames),
            ("mlp_width", self.mlp_width),
        ];
        if self.format() == FORMAT_2 {
            f.extend([("kv_heads", self.kv_heads), ("reach_rows", self.reach_rows), ("reach_cols", self.reach_cols)]);
        }
        f
    }

    /// The spec as safetensors metadata.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let fields = self.fields().into_iter().map(|(k, v)| (k.to_string(), v.to_string()));
        fields.chain([("format".to_string(), self.format().to_string())]).collect()
    }

    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<Self> {
        let get = |k: &str| -> Result<usize> {
            meta.get(k)
                .with_context(|| format!("metadata lacks {k:?}"))?
                .parse()
                .with_context(|| format!("metadata {k:?} is not a number"))
        };
        let format = meta.get("format").map(String::as_str);
        ensure!(
            format == Some(FORMAT) || format == Some(FORMAT_2),
            "metadata format is {format:?}, expected {FORMAT:?} or {FORMAT_2:?}"
        );
        let mut spec =
            ModelSpec::new(get("layers")?, get("width")?, get("heads")?, get("context_frames")?, get("mlp_width")?);
        if format == Some(FORMAT_2) {
            (spec.kv_heads, spec.reach_rows, spec.reach_cols) =
                (get("kv_heads")?, get("reach_rows")?, get("reach_cols")?);
        }
        spec.validate()?;
        // One format per spec, so that a model has one id.
        ensure!(
            format == Some(spec.format()),
            "metadata format is {format:?}, but the spec is of {:?} (the second is for kv_heads below heads or a reach below a whole frame)",
            spec.format()
        );
        Ok(spec)
    }

    /// Multiply-accumulates of the linear layers per token (attention excluded).
    pub fn linear_macs(&self) -> usize {
        let (d, m) = (self.width, self.mlp_width);
        self.layers * (d * d + d * self.qkv_rows() + 2 * d * m) + VOCAB * d
    }
}
