#!/usr/bin/env python3
"""Reference decoder for cvq archives, written from FORMAT.md alone.

    python3 scripts/reference_decode.py ARCHIVE -o DIR [--frames N] [--weights W.safetensors]

Reads a cvq archive (FORMAT.md, format version 2) and writes every segment into DIR under its
stored name, byte for byte what `cvq decompress` writes: the stored npy header followed by the
tokens in the header's dtype. `--frames N` stops each segment after N frames and writes those,
under a header for N frames (FORMAT.md section 1, "A header for fewer frames").

Python 3 and numpy only, no code shared with the Rust crate. Slow (a few seconds for ten
frames through the network), because every step is written the way the text states it.
Section numbers (§) are FORMAT.md's. Exits with a message naming the problem on a damaged
archive, an unknown model id or weights that break the format's rules.
"""

import argparse
import ast
import bisect
import hashlib
import json
import math
import os
import sys
import time
import zlib
from array import array
from fractions import Fraction

import numpy as np

MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1
TOKENS_PER_FRAME = 128
VOCAB = 1024
TOTAL = 1 << 24  # §2: T, the total every token's interval lies within


class FormatError(Exception):
    """The archive breaks a rule of FORMAT.md."""


def sha256(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


# ---------------------------------------------------------------------------------------------
# §1 Container
# ---------------------------------------------------------------------------------------------


class Reader:
    """Bytes of the index, read front to back; every read checks that the bytes are there."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n, what):
        if n > len(self.data) - self.pos:
            raise FormatError(f"{what}: needs {n} bytes, only {len(self.data) - self.pos} left")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def varint(self, what):
        """§1: LEB128, at most 10 bytes, value below 2^64."""
        value = 0
        for i in range(10):
            b = self.take(1, what)[0]
            if i == 9 and b > 1:
                raise FormatError(f"{what}: varint past 2^64 - 1")
            value |= (b & 0x7F) << (7 * i)
            if b < 0x80:
                return value
        raise FormatError(f"{what}: varint longer than 10 bytes")

    def u32le(self, what):
        return int.from_bytes(self.take(4, what), "little")


# §1 "The npy header and the restored file": the dtypes a header may name.
DTYPES = ("<i2", ">i2", "<u2", ">u2", "<i4", ">i4", "<i8", ">i8")


def parse_npy_header(header):
    """§1 "The npy header": check a stored npy header; return (descr, shape, frames N)."""
    h = bytes(header)
    if len(h) < 10 or h[:6] != b"\x93NUMPY":
        raise FormatError("npy header: bad magic")
    version = (h[6], h[7])
    if version == (1, 0):
        start, length = 10, int.from_bytes(h[8:10], "little")
    elif version in ((2, 0), (3, 0)) and len(h) >= 12:
        start, length = 12, int.from_bytes(h[8:12], "little")
    else:
        raise FormatError(f"npy header: unsupported version {version}")
    if start + length != len(h):
        raise FormatError("npy header: its declared length is not the stored header's length")
    text = h[start:]
    if text.endswith(b"\n"):
        text = text[:-1]
    try:
        d = ast.literal_eval(text.decode("utf-8").strip())
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as e:
        raise FormatError(f"npy header: not a Python dictionary literal ({e})")
    if not isinstance(d, dict) or not {"descr", "fortran_order", "shape"} <= set(d):
        raise FormatError("npy header: a dictionary with the keys descr, fortran_order and shape expected")
    if d["fortran_order"] is not False:
        raise FormatError("npy header: only C order (fortran_order False) is supported")
    if not isinstance(d["descr"], str) or d["descr"] not in DTYPES:
        raise FormatError(f"npy header: unsupported dtype {d['descr']!r}")
    shape = d["shape"]
    if not isinstance(shape, (tuple, list)) or not all(type(x) is int and x >= 0 for x in shape):
        raise FormatError(f"npy header: bad shape {shape!r}")
    shape = tuple(shape)
    if not (len(shape) == 3 and shape[1:] == (8, 16)) and not (len(shape) == 2 and shape[1] == 128):
        raise FormatError(f"npy header: unsupported shape {shape}, expected (N, 8, 16) or (N, 128)")
    return d["descr"], shape, shape[0]


def npy_header_for(descr, shape):
    """§1 "A header for fewer frames": the version 1.0 header numpy's `save` writes."""
    dims = ", ".join(str(d) for d in shape)
    text = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, dims)
    pad = (-(10 + len(text) + 1)) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin-1")


def read_archive(data):
    """§1: parse and check the index; return (model id, entries with their payloads)."""
    r = Reader(data)
    if r.take(4, "magic") != b"CVQA":
        raise FormatError("not a cvq archive (bad magic)")
    version = r.take(1, "version")[0]
    if version != 2:
        raise FormatError(f"archive format version {version} is not supported (only version 2)")
    model_id = r.take(32, "model id")
    h_count = r.varint("header count")
    if h_count > len(data) - r.pos:
        raise FormatError("header count larger than the bytes left")
    headers = []
    for i in range(h_count):
        length = r.varint(f"header {i} length")
        if length > 65536:
            raise FormatError(f"header {i}: length {length} over 65,536")
        headers.append(r.take(length, f"header {i}"))
    s_count = r.varint("segment count")
    if s_count > len(data) - r.pos:
        raise FormatError("segment count larger than the bytes left")
    entries, names = [], set()
    for i in range(s_count):
        n_len = r.varint(f"entry {i} name length")
        if not 1 <= n_len <= 255:
            raise FormatError(f"entry {i}: name length {n_len} not in 1..255")
        raw = r.take(n_len, f"entry {i} name")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"entry {i}: name is not UTF-8")
        if name in (".", "..") or any(c in name for c in "/\\\0"):
            raise FormatError(f"entry {i}: bad name {name!r}")
        if name in names:
            raise FormatError(f"entry {i}: name {name!r} used twice")
        names.add(name)
        ref = r.varint(f"entry {i} header ref")
        if ref >= h_count:
            raise FormatError(f"entry {i}: header ref {ref} out of range")
        frames = r.varint(f"entry {i} frames")
        if frames > 65536:
            raise FormatError(f"entry {i}: {frames} frames, more than 65,536")
        p_len = r.varint(f"entry {i} payload length")
        if p_len > len(data):
            raise FormatError(f"entry {i}: payload length past the archive's size")
        p_crc = r.u32le(f"entry {i} payload checksum")
        t_crc = r.u32le(f"entry {i} checksum")
        try:
            descr, shape, n = parse_npy_header(headers[ref])
        except FormatError as err:
            raise FormatError(f"entry {i} ({name!r}), header {ref}: {err}")
        if n != frames:
            raise FormatError(f"entry {i}: header says {n} frames, entry says {frames}")
        entries.append(dict(name=name, header=headers[ref], descr=descr, shape=shape,
                            frames=frames, payload_len=p_len, payload_crc=p_crc, token_crc=t_crc))
    index_end = r.pos
    if r.u32le("index checksum") != zlib.crc32(data[:index_end]):
        raise FormatError("index checksum mismatch")
    offset = r.pos
    for i, e in enumerate(entries):
        if e["payload_len"] > len(data) - offset:
            raise FormatError(f"entry {i}: payload runs past the end of the archive")
        e["payload"] = data[offset : offset + e["payload_len"]]
        offset += e["payload_len"]
    if offset != len(data):
        raise FormatError(f"payloads add up to {offset - r.pos} bytes, the archive holds {len(data) - r.pos}")
    for i, e in enumerate(entries):
        if zlib.crc32(e["payload"]) != e["payload_crc"]:
            raise FormatError(f"segment {e['name']!r}: payload checksum mismatch (damaged archive)")
    return model_id, entries


def restored_file(entry, tokens):
    """§1: the header, then the tokens in raster order in the header's dtype."""
    header = entry["header"]
    if len(tokens) != entry["frames"] * TOKENS_PER_FRAME:  # --frames: a header for fewer frames
        header = npy_header_for(entry["descr"], (len(tokens) // TOKENS_PER_FRAME,) + entry["shape"][1:])
    return bytes(header) + np.asarray(tokens, dtype=np.int64).astype(entry["descr"]).tobytes()


# ---------------------------------------------------------------------------------------------
# §2 Payload: range coding
# ---------------------------------------------------------------------------------------------


class RangeDecoder:
    def __init__(self, payload):
        if len(payload) < 8:
            raise FormatError("payload shorter than 8 bytes")
        self.data = payload
        self.code = int.from_bytes(payload[:8], "big")
        self.range = MASK64
        self.pos = 8

    def target(self):
        self.step = self.range >> 24
        return min(self.code // self.step, TOTAL - 1)

    def consume(self, start, freq):
        self.code -= self.step * start
        self.range = self.step * freq
        while self.range < (1 << 56):
            if self.pos >= len(self.data):
                raise FormatError("corrupt payload: needs a byte past its end")
            self.code = ((self.code << 8) | self.data[self.pos]) & MASK64
            self.range = (self.range << 8) & MASK64
            self.pos += 1

    def finish(self):
        if self.pos != len(self.data):
            raise FormatError(f"corrupt payload: {len(self.data) - self.pos} bytes left unread")


def token_crc(tokens):
    """§1: CRC-32 of the decoded tokens, each as a little-endian u16."""
    return zlib.crc32(np.asarray(tokens, dtype="<u2").tobytes())


# ---------------------------------------------------------------------------------------------
# §3 The binary tree of node probabilities
# ---------------------------------------------------------------------------------------------


def decode_tree_token(rc, node_p, learn):
    """§3: ten binary decisions, MSB first; node_p(d, n) gives the 12-bit p of node n at
    depth d (called in order d = 0..9, with the decisions so far already known)."""
    target = rc.target()
    start, total, n = 0, TOTAL, 1
    bits = []
    for d in range(10):
        p = node_p(d, n)
        keep = 512 >> d
        ones = min(max((total * p) >> 12, keep), total - keep)
        zeros = total - ones
        if target >= start + zeros:
            start, total, bit = start + zeros, ones, 1
        else:
            total, bit = zeros, 0
        bits.append(bit)
        n = 2 * n + bit
    rc.consume(start, total)
    token = n - 1024
    learn(token, bits)
    return token


# ---------------------------------------------------------------------------------------------
# §3.1 ContextMix
# ---------------------------------------------------------------------------------------------

SQUASH_KNOTS = [1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047,
                2549, 2994, 3348, 3607, 3785, 3901, 3975, 4024, 4050, 4068, 4079, 4085, 4089,
                4092, 4093, 4094]


def squash(x):
    """§3.1: 12-bit probability of a logit in 1/256 units, interpolated between the knots."""
    x = min(max(x, -2047), 2047)
    w = x & 127
    i = (x >> 7) + 16
    return (SQUASH_KNOTS[i] * (128 - w) + SQUASH_KNOTS[i + 1] * w + 64) >> 7


def build_stretch():
    """§3.1: stretch(p) = the smallest x in -2047..2047 with squash(x) >= p, 2047 if none."""
    table = [2047] * 4096
    x = -2047
    for p in range(4096):
        while x <= 2047 and squash(x) < p:
            x += 1
        table[p] = x if x <= 2047 else 2047
    return table


STRETCH = build_stretch()


def mix64(x):
    """§3.1: the splitmix64 finaliser."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def bitlen(x):
    return x.bit_length()


def div_trunc(a, b):
    """Integer division truncating toward zero (b > 0)."""
    q = abs(a) // b
    return q if a >= 0 else -q


N_MODELS = 14
N_INPUTS = N_MODELS + 2  # the 14 stretches, the constant 256, the prior's input
FRESH = (1 << 21) << 10  # q = 2^21, c = 0


class ContextMix:
    """§3.1 (and §3.3's mixer, when a prior is given). `max_bits` is the largest table size
    (22 for ContextMix, 18 for Mixed, §4.1 for earlier ids); `two_slots` False is cvq 0.1's
    one slot per bucket (§4.1)."""

    def __init__(self, n_tokens, max_bits=22, two_slots=True):
        self.B = min(max(bitlen(n_tokens) + 4, 12), max_bits)
        self.two_slots = two_slots
        self.table = array("I", [0]) * (N_MODELS << self.B)  # every table starts all zero
        assert self.table.itemsize == 4
        self.weights = [[8192] * (N_INPUTS - 1) + [49152] for _ in range(10)]
        self.tokens = []

    # Contexts: taken before the token.
    def begin(self, i, tokens):
        """§3.1 Contexts: the 14 keys of token i, from the tokens before it."""
        t, k = divmod(i, TOKENS_PER_FRAME)
        r, c = divmod(k, 16)

        def P(dr, dc, back=1):
            rr, cc = r + dr, c + dc
            if t - back < 0 or not (0 <= rr < 8 and 0 <= cc < 16):
                return 1024
            return tokens[(t - back) * TOKENS_PER_FRAME + 16 * rr + cc]

        def cur(dr, dc):
            rr, cc = r + dr, c + dc
            if not (0 <= rr < 8 and 0 <= cc < 16):
                return 1024
            return tokens[t * TOKENS_PER_FRAME + 16 * rr + cc]

        p00, P2 = P(0, 0), P(0, 0, back=2)
        L, U, UL, UR = cur(0, -1), cur(-1, 0), cur(-1, -1), cur(-1, 1)
        contexts = [
            (k,), (p00,), (p00, k), (P(0, -1), p00, P(0, 1)), (P(-1, 0), p00, P(1, 0)),
            (p00, P(-1, 0), P(1, 0), P(0, -1), P(0, 1)), (L, U), (p00, L), (p00, U),
            (p00, L, U), (p00, P2), (L, U, UL, UR), (L,), (U,),
        ]
        self.keys = []
        for m, values in enumerate(contexts):
            key = m
            for v in values:
                key = ((key << 11) | v) & MASK64
            self.keys.append(key)
        self.slots = [None, None]  # per level (depth 0, depth 5): [(base, check)] per model
        self.inputs = [None] * 10  # the mixer's inputs at each depth of the walk
        self.path = []  # (d, n, p) along the decoded token

    def select_slots(self, level, n):
        """§3.1 Tables: the slot of each model at depth 0 or 5 for tree node n."""
        B = self.B
        out = []
        for m in range(N_MODELS):
            h = mix64(self.keys[m] ^ mix64((n + (m << 16)) & MASK64))
            check = (h & MASK32) | 1
            top = h >> (64 - (B - 5))
            model_base = m << B
            if not self.two_slots:  # §4.1 one slot per bucket
                out.append((model_base + 32 * top, check))
                continue
            b = top & ~1
            s0, s1 = model_base + 32 * b, model_base + 32 * (b + 1)
            if self.table[s0] == check:
                base = s0
            elif self.table[s1] == check:
                base = s1
            else:
                c0 = self.table[s0 + 1] & 1023
                c1 = self.table[s1 + 1] & 1023
                base = s1 if c1 < c0 else s0
            out.append((base, check))
        self.slots[level] = out

    def counter_index(self, d, n):
        j = d % 5
        return (n % (1 << j)) | (1 << j)

    def node_p(self, d, n, prior_input=0):
        if d == 0 or d == 5:
            self.select_slots(d // 5, n)
        ci = self.counter_index(d, n)
        x = []
        for base, check in self.slots[d // 5]:
            if self.table[base] == check:
                q = self.table[base + ci] >> 10
            else:
                q = FRESH >> 10
            x.append(STRETCH[q >> 10])
        x.append(256)
        x.append(prior_input)
        w = self.weights[d]
        dot = sum(wi * xi for wi, xi in zip(w, x))
        p = squash(dot >> 16)
        self.inputs[d] = x
        self.path.append((d, n, p))
        return p

    def learn(self, token, bits):
        """§3.1: after the token: first every slot the token selected is claimed (level 0's
        for models 0..13, then level 1's), then depth by depth from the root the counters on
        the path move and the depth's weights learn."""
        for level in (0, 1):
            for base, check in self.slots[level]:
                if self.table[base] != check:
                    self.table[base] = check
                    for j in range(1, 32):
                        self.table[base + j] = FRESH
        for (d, n, p), bit in zip(self.path, bits):
            ci = self.counter_index(d, n)
            target = (1 << 22) - 1 if bit else 0
            for base, check in self.slots[d // 5]:
                v = self.table[base + ci]
                q, c = v >> 10, v & 1023
                q += div_trunc((target - q) * 2, 2 * c + 3)
                c = min(c + 1, 16)
                self.table[base + ci] = (q << 10) | c
            err = ((bit << 12) - p) * 8
            w, x = self.weights[d], self.inputs[d]
            for i in range(N_INPUTS):
                w[i] = min(max(w[i] + ((x[i] * err + (1 << 15)) >> 16), -(1 << 24)), 1 << 24)


# ---------------------------------------------------------------------------------------------
# §3.2.3 Integer helpers (numpy int64 arrays; the limits of §3.2.1 keep every value in range)
# ---------------------------------------------------------------------------------------------

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


def sat32(x):
    return np.minimum(np.maximum(x, I32_MIN), I32_MAX)


def shift_round(x, s):
    """§3.2.3: round(x / 2^s), halves up, for 1 <= s <= 62; 0 for s >= 63; x * 2^-s for
    s <= 0; saturated to i32. `s` is an integer or an array like `x`."""
    x = np.asarray(x, dtype=np.int64)
    if np.ndim(s) == 0:
        s = int(s)
        if 1 <= s <= 62:
            return sat32((x + (1 << (s - 1))) >> s)
        if s >= 63:
            return np.zeros_like(x)
        if -s > 31:  # any nonzero x saturates
            return sat32(np.sign(x) << 62)
        return sat32(np.minimum(np.maximum(x, -(1 << 32)), 1 << 32) << -s)
    s = np.broadcast_to(np.asarray(s, dtype=np.int64), x.shape)
    sp = np.minimum(np.maximum(s, 1), 62)
    right = (x + (np.int64(1) << (sp - 1))) >> sp
    left = np.minimum(np.maximum(x, -(1 << 32)), 1 << 32) << np.minimum(np.maximum(-s, 0), 31)
    left = np.where((-s > 31) & (x != 0), np.sign(x) << 62, left)
    return sat32(np.where(s >= 63, 0, np.where(s >= 1, right, left)))


def quantize(x):
    """§3.2.3: 12-bit integers q and the shift sigma with x ~= q * 2^sigma."""
    x = np.asarray(x, dtype=np.int64)
    sigma = int(np.abs(x).max()).bit_length() - 11
    if sigma > 0:
        q = np.minimum(np.maximum((x + (1 << (sigma - 1))) >> sigma, -2047), 2047)
    else:
        q = x << -sigma
    return q, sigma


def trunc_div(n, d):
    """trunc(n / d) for an int64 array n and d > 0."""
    return np.sign(n) * (np.abs(n) // d)


def rms(x):
    """§3.2.3: rms_norm's divisor, isqrt(floor(sum x^2 / n) + 256) (exact: Python integers)."""
    return math.isqrt(sum(v * v for v in x.tolist()) // len(x) + 256)


def rms_norm(x, gain):
    """§3.2.3: sat32(trunc(x_i * g_i / rms(x)))."""
    return sat32(trunc_div(x * gain, rms(x)))


def linear(matrix, q, sigma):
    """§3.2.3: y_r = shift_round((sum_c q_c M[r][c]) * S_r, 24 - sigma), Q12."""
    w, scale_q24 = matrix
    return shift_round((w @ q) * scale_q24, 24 - sigma)


def build_exp_table():
    """§3.2.3 exp_neg: E[f] = 2^(-f/256) in Q30, f = 0..256, from integer square roots."""
    one = 1 << 30
    c = [0] * 8
    c[7] = math.isqrt(1 << 59)
    for k in range(6, -1, -1):
        c[k] = math.isqrt(c[k + 1] << 30)
    table = []
    for f in range(256):
        a = one
        for k in range(8):
            if f >> k & 1:
                a = (a * c[k] + (1 << 29)) >> 30
        table.append(a)
    table.append(1 << 29)
    return np.array(table, dtype=np.int64)


EXP_TABLE = build_exp_table()


def exp_neg(t):
    """§3.2.3: e^(-t/256) in Q30 for integers t in 0..2^32-1 (an array)."""
    y = np.asarray(t, dtype=np.int64) * 24204406
    n, f, r = y >> 32, (y >> 24) & 255, (y >> 8) & 65535
    a, b = EXP_TABLE[f], EXP_TABLE[f + 1]
    v = (a - (((a - b) * r + (1 << 15)) >> 16)) >> np.minimum(n, 62)
    return np.where(n >= 31, 0, v)


def exp_neg_int(t):
    return int(exp_neg(np.array([t]))[0])


def gelu_exact(x):
    """§3.2.3: GELU (tanh form) of a Q12 integer, the table's points."""
    x3 = (x * x // 4096) * x
    x3 = -((-x3) // 4096) if x3 < 0 else x3 // 4096  # trunc
    z = (52290 * (x + ((2930 * x3) >> 16))) >> 16
    e = exp_neg_int(min((2 * abs(z)) >> 4, (1 << 32) - 1))
    th = ((1 << 30) - e) * (1 << 30) // ((1 << 30) + e)
    if z < 0:
        th = -th
    return (x * ((1 << 30) + th)) >> 31


GELU_TABLE = np.array([gelu_exact((i - 512) * 64) for i in range(1025)], dtype=np.int64)


def gelu(x):
    """§3.2.3: the table, interpolated; identity from 8, 0 below -8."""
    u = np.minimum(np.maximum(x + 32768, 0), 65535)
    i, f = u >> 6, u & 63
    a, b = GELU_TABLE[i], GELU_TABLE[i + 1]
    mid = a + (((b - a) * f + 32) >> 6)
    return np.where(x >= 32768, x, np.where(x < -32768, 0, mid))


# ---------------------------------------------------------------------------------------------
# §3.2.2 Weights and their integers, §3.2.1 limits, §4 canonical encoding (model id)
# ---------------------------------------------------------------------------------------------

WEIGHTS_FORMAT = "cvq-gpt-int8-1"
WEIGHTS_FORMAT_2 = "cvq-gpt-int8-2"
SPEC_FIELDS = ("layers", "width", "heads", "context_frames", "mlp_width")
# The second format's fields: key/value heads and the reach into earlier frames (§3.2.2).
SPEC_FIELDS_2 = ("kv_heads", "reach_rows", "reach_cols")
FULL_REACH = (7, 15)


def spec_format(spec):
    """The one format a spec is of: the second exactly when it uses one of its options."""
    plain = spec["kv_heads"] == spec["heads"] and (spec["reach_rows"], spec["reach_cols"]) == FULL_REACH
    return WEIGHTS_FORMAT if plain else WEIGHTS_FORMAT_2


def tensor_list(spec):
    """§4: the tensors in id order, with dtype and shape (8 + 11 x layers of them)."""
    d, m, h, k = spec["width"], spec["mlp_width"], spec["heads"], spec["context_frames"]
    qkv_rows = d + 2 * spec["kv_heads"] * (d // h)
    out = []

    def matrix(name, rows, cols):
        out.append((name, "I8", [rows, cols]))
        out.append((name + ".scale", "F32", [rows]))

    matrix("tok_prev", 1025, d)
    matrix("tok_same", 1025, d)
    matrix("pos", 128, d)
    for l in range(spec["layers"]):
        p = f"layers.{l}."
        out.append((p + "norm1.gain", "F32", [d]))
        matrix(p + "attn.qkv", qkv_rows, d)
        out.append((p + "attn.frame_bias", "F32", [h, k + 1]))
        matrix(p + "attn.out", d, d)
        out.append((p + "norm2.gain", "F32", [d]))
        matrix(p + "mlp.up", m, d)
        matrix(p + "mlp.down", d, m)
    out.append(("norm_out.gain", "F32", [d]))
    out.append(("head_bias", "F32", [1024]))
    return out


def check_limits(spec):
    """§3.2.1: the limits that keep every integer of the engine in range."""
    L, d, h, k, m = (spec[f] for f in SPEC_FIELDS)
    if not 1 <= L <= 64:
        raise FormatError(f"weights: layers must be 1..=64, not {L}")
    if h < 1 or d % h:
        raise FormatError(f"weights: width {d} is not a multiple of heads {h}")
    if d % 16 or not 16 <= d <= 2048:
        raise FormatError(f"weights: width must be a multiple of 16 in 16..=2048, not {d}")
    if d // h > 512:
        raise FormatError(f"weights: head_dim {d // h} exceeds 512")
    if m % 16 or not 16 <= m <= 8192:
        raise FormatError(f"weights: mlp_width must be a multiple of 16 in 16..=8192, not {m}")
    if not 1 <= k <= 32:
        raise FormatError(f"weights: context_frames must be 1..=32, not {k}")
    if spec["kv_heads"] < 1 or h % spec["kv_heads"]:
        raise FormatError(f"weights: kv_heads {spec['kv_heads']} does not divide heads {h}")
    if spec["reach_rows"] > FULL_REACH[0] or spec["reach_cols"] > FULL_REACH[1]:
        raise FormatError(f"weights: reach must be at most 7 rows and 15 columns")


def to_fixed(v, bits):
    """§3.2.2: round(f64(v) * 2^bits), halves away from zero, exactly."""
    x = Fraction(float(v)) * (1 << bits)
    r = math.floor(abs(x) + Fraction(1, 2))
    return r if x >= 0 else -r


class Weights:
    """A weights file (§3.2.2): its spec, its tensors, its model id (§4)."""

    def __init__(self, path):
        self.path = path
        raw = open(path, "rb").read()
        try:
            n = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8 : 8 + n])
        except (ValueError, UnicodeDecodeError) as e:
            raise FormatError(f"{path}: not a safetensors file ({e})")
        data = raw[8 + n :]
        meta = header.pop("__metadata__", None) or {}
        fmt = meta.get("format")
        if fmt not in (WEIGHTS_FORMAT, WEIGHTS_FORMAT_2):
            raise FormatError(f"{path}: metadata format is {fmt!r}, expected {WEIGHTS_FORMAT!r} or {WEIGHTS_FORMAT_2!r}")
        fields = SPEC_FIELDS + (SPEC_FIELDS_2 if fmt == WEIGHTS_FORMAT_2 else ())
        try:
            self.spec = {f: int(meta[f]) for f in fields}
        except (KeyError, ValueError) as e:
            raise FormatError(f"{path}: metadata lacks a spec field ({e})")
        if fmt == WEIGHTS_FORMAT:
            self.spec.update(kv_heads=self.spec["heads"], reach_rows=FULL_REACH[0], reach_cols=FULL_REACH[1])
        check_limits(self.spec)
        if spec_format(self.spec) != fmt:
            raise FormatError(f"{path}: metadata format is {fmt!r}, but the spec is of {spec_format(self.spec)!r}")
        expected = tensor_list(self.spec)
        if set(header) != {name for name, _, _ in expected}:
            raise FormatError(f"{path}: tensors differ from the spec's: "
                              f"{sorted(set(header) ^ {name for name, _, _ in expected})}")
        self.tensors = {}
        ident = hashlib.sha256()

        def string(text):
            ident.update(len(text.encode()).to_bytes(4, "little") + text.encode())

        def integer(v):
            ident.update(v.to_bytes(8, "little"))

        string(fmt)
        for f in fields:
            integer(self.spec[f])
        integer(len(expected))
        for name, dtype, shape in expected:
            t = header[name]
            if t["dtype"] != dtype or list(t["shape"]) != shape:
                raise FormatError(f"{path}: tensor {name} is {t['dtype']} {t['shape']}, expected {dtype} {shape}")
            begin, end = t["data_offsets"]
            blob = data[begin:end]
            count = int(np.prod(shape))
            if len(blob) != count * (1 if dtype == "I8" else 4):
                raise FormatError(f"{path}: tensor {name} has {len(blob)} bytes")
            string(name)
            string(dtype)
            integer(len(shape))
            for dim in shape:
                integer(dim)
            integer(len(blob))
            ident.update(blob)
            arr = np.frombuffer(blob, dtype=np.int8 if dtype == "I8" else "<f4").reshape(shape)
            if dtype == "F32" and not np.all(np.isfinite(arr)):
                raise FormatError(f"{path}: tensor {name} holds a non-finite value")
            if name.endswith(".scale") and not np.all((arr >= 0) & (arr <= 256)):
                raise FormatError(f"{path}: tensor {name} holds a row scale outside 0..=256")
            self.tensors[name] = arr
        self.model_id = ident.digest()


class Network:
    """§3.2.2: the weights as the integers the engine computes with."""

    def __init__(self, w):
        self.spec = w.spec
        t = w.tensors
        q24 = lambda name: np.array([to_fixed(v, 24) for v in t[name].tolist()], dtype=np.int64)
        q12 = lambda name: np.array([min(max(to_fixed(v, 12), I32_MIN), I32_MAX) for v in t[name].tolist()],
                                    dtype=np.int64)

        def matrix(name, rows=None):
            m, s = t[name].astype(np.int64), q24(name + ".scale")
            return (m, s) if rows is None else (m[:rows], s[:rows])

        def embedding(name):
            m, s = matrix(name)
            return shift_round(m * s[:, None], 12)

        self.tok_prev, self.tok_same, self.pos = embedding("tok_prev"), embedding("tok_same"), embedding("pos")
        self.layers = []
        K = self.spec["context_frames"]
        for l in range(self.spec["layers"]):
            p = f"layers.{l}."
            fb = [min(max(to_fixed(v, 8), -(1 << 20)), 1 << 20) for v in t[p + "attn.frame_bias"].reshape(-1).tolist()]
            self.layers.append(dict(
                norm1=q12(p + "norm1.gain"), qkv=matrix(p + "attn.qkv"),
                frame_bias=np.array(fb, dtype=np.int64).reshape(self.spec["heads"], K + 1),
                out=matrix(p + "attn.out"), norm2=q12(p + "norm2.gain"),
                up=matrix(p + "mlp.up"), down=matrix(p + "mlp.down")))
        self.norm_out = q12("norm_out.gain")
        self.head = matrix("tok_same", rows=1024)
        self.head_bias = q12("head_bias")


class NetworkState:
    """§3.2.4: one segment's pass through the network, element by element, keeping every
    element's quantized keys and values (per layer and head) for the elements after it."""

    def __init__(self, net, n_tokens, learn_inputs=False):
        self.net = net
        s = net.spec
        # §3.4: the segment's change of the input embeddings (Q24), rows tok_prev 0..1024,
        # tok_same 1025..2049, pos 2050..2177, when they learn.
        self.changes = [[0] * s["width"] for _ in range(2 * 1025 + 128)] if learn_inputs else None
        self.d, self.heads, self.kv_heads, self.K = s["width"], s["heads"], s["kv_heads"], s["context_frames"]
        self.hd = self.d // self.heads
        self.reach = (s["reach_rows"], s["reach_cols"])
        shape = (s["layers"], self.kv_heads, max(n_tokens, 1))
        self.keys = np.zeros(shape + (self.hd,), dtype=np.int64)
        self.vals = np.zeros(shape + (self.hd,), dtype=np.int64)
        self.kshift = np.zeros(shape, dtype=np.int64)
        self.vshift = np.zeros(shape, dtype=np.int64)

    @staticmethod
    def inputs(p, tokens):
        """§3.2.4 step 1: the embedding rows element p reads (prev, same, position k)."""
        prev = tokens[p - 1] if p > 0 else 1024
        same = tokens[p - TOKENS_PER_FRAME] if p >= TOKENS_PER_FRAME else 1024
        return prev, same, p % TOKENS_PER_FRAME

    def input_rows(self, p, tokens):
        """§3.4: the rows of the input change that element p reads."""
        prev, same, k = self.inputs(p, tokens)
        return prev, 1025 + same, 2050 + k

    def step(self, p, tokens):
        """Element p: returns the Q12 logits, the last hidden row (H, sigma) and the last
        residual row x."""
        net, d, hd = self.net, self.d, self.hd
        t = p // TOKENS_PER_FRAME
        prev, same, k = self.inputs(p, tokens)
        # 1. Input: saturating adds, left to right.
        x = sat32(sat32(net.tok_prev[prev] + net.tok_same[same]) + net.pos[k])
        if self.changes is not None:  # §3.4: plus what the rows have learnt
            rows = [self.changes[r] for r in self.input_rows(p, tokens)]
            x = sat32(x + shift_round(np.array([sum(c) for c in zip(*rows)], dtype=np.int64), 12))
        # The window: of the elements lo..p, those of the current frame and, in the earlier
        # frames, those within reach of position k.
        lo = max(0, t - self.K) * TOKENS_PER_FRAME
        e = np.arange(lo, p + 1)
        place = e % TOKENS_PER_FRAME
        near = (np.abs(place // 16 - k // 16) <= self.reach[0]) & (np.abs(place % 16 - k % 16) <= self.reach[1])
        e = e[(e // TOKENS_PER_FRAME == t) | near]
        dt = t - e // TOKENS_PER_FRAME
        group = self.heads // self.kv_heads
        for l, layer in enumerate(net.layers):
            # 2.1 Query, key and value.
            h, s = quantize(rms_norm(x, layer["norm1"]))
            y = linear(layer["qkv"], h, s)
            o = np.zeros(d, dtype=np.int64)
            # 2.2 Attention, head by head.
            for g in range(self.kv_heads):
                kv = slice(d + g * hd, d + (g + 1) * hd)
                self.keys[l, g, p], self.kshift[l, g, p] = quantize(y[kv])
                kv = slice(d + (self.kv_heads + g) * hd, d + (self.kv_heads + g + 1) * hd)
                self.vals[l, g, p], self.vshift[l, g, p] = quantize(y[kv])
            for j in range(self.heads):
                dims, g = slice(j * hd, (j + 1) * hd), j // group
                qq, sq = quantize(y[dims])
                score = self.keys[l, g, e] @ qq
                a = sat32(shift_round(score, 16 - sq - self.kshift[l, g, e]) + layer["frame_bias"][j][dt])
                w = exp_neg(a.max() - a)
                inv = (1 << 51) // int(w.sum())
                vs = self.vshift[l, g, e]
                vmax = int(vs[w > 0].max())
                gap = vmax - vs
                P = np.where((w > 0) & (gap < 32), (w * inv) >> (32 + np.minimum(np.maximum(gap, 0), 31)), 0)
                acc = P @ self.vals[l, g, e]
                o[dims] = shift_round(acc, 19 - vmax)
            # 2.3 Attention output.
            a, s = quantize(o)
            x = sat32(x + linear(layer["out"], a, s))
            # 2.4 MLP.
            h, s = quantize(rms_norm(x, layer["norm2"]))
            g, s2 = quantize(gelu(linear(layer["up"], h, s)))
            x = sat32(x + linear(layer["down"], g, s2))
        # 3. Output.
        H, sigma = quantize(rms_norm(x, net.norm_out))
        logits = sat32(linear(net.head, H, sigma) + net.head_bias)
        return logits, H, sigma, x

    def learn_inputs(self, p, tokens, rows, g, x, rate):
        """§3.4: the input embeddings' step after element p, from the nonzero gradients g
        of the tokens `rows` and the element's last residual row x. Python integers: exact."""
        net, d = self.net, self.d
        dh = sat32(g @ net.tok_same[rows]).tolist()  # |g| <= 64: exact in int64
        X, G = x.tolist(), net.norm_out.tolist()
        r = rms(x)
        A = [gi * hi for gi, hi in zip(G, dh)]
        T = sum(xi * ai for xi, ai in zip(X, A))
        c = min(max((T << 16) // (d * r * r), -(1 << 63)), (1 << 63) - 1)
        step = [((a - (xi * c) // (1 << 16)) << 6) // (r << rate) for xi, a in zip(X, A)]
        for row in self.input_rows(p, tokens):
            m = self.changes[row]
            self.changes[row] = [min(max(mi - (mi >> 5) - si, I32_MIN), I32_MAX) for mi, si in zip(m, step)]


def frequency_table(logits):
    """§3.2.5: the coder's table from Q12 logits; the leftover goes to the first token with
    the largest *rounded* logit."""
    l8 = shift_round(logits, 4)
    top = l8.max()
    e = exp_neg(top - l8)
    freq = 1 + (e * (TOTAL - VOCAB)) // int(e.sum())
    freq[int(np.argmax(l8 == top))] += TOTAL - int(freq.sum())
    return freq


class Table:
    """A frequency table with its running sums: token v owns [cum[v], cum[v+1])."""

    def __init__(self, freq):
        self.freq = freq
        self.cum = [0] + np.cumsum(freq).tolist()

    def find(self, target):
        v = bisect.bisect_right(self.cum, target) - 1
        return v, self.cum[v], self.cum[v + 1] - self.cum[v]

    def mass(self, lo, hi):
        return self.cum[hi] - self.cum[lo]


# ---------------------------------------------------------------------------------------------
# §3.4 Online adaptation of the output layer
# ---------------------------------------------------------------------------------------------

M_MAX = 2047 * (1 << 16) + (1 << 15) - 1


class Adapter:
    """§3.4: the segment's changes to the output matrix (M in Q30, its view V in Q14) and
    bias (B in Q24), all starting at zero; rates rm (matrix) and rb (bias, or None)."""

    def __init__(self, width, rm, rb, ri=None):
        if width > 512:
            raise FormatError("the adaptive predictors take networks up to width 512")
        self.rm, self.rb, self.ri = rm, rb, ri
        self.M = np.zeros((VOCAB, width), dtype=np.int64)
        self.V = np.zeros((VOCAB, width), dtype=np.int64)
        self.B = np.zeros(VOCAB, dtype=np.int64)

    def adjust(self, logits, H, sigma, x):
        self.H, self.sigma, self.x = H, sigma, x
        logits = sat32(logits + shift_round(self.V @ H, 14 - sigma))
        return sat32(logits + shift_round(self.B, 12))

    def learn(self, freq, y, state, p, tokens):
        target = np.zeros(VOCAB, dtype=np.int64)
        target[y] = TOTAL
        g = shift_round(freq - target, 18)
        rows = np.nonzero(g)[0]  # tokens in order; only g != 0 moves
        if len(rows) == 0:
            return
        g = g[rows]
        if self.ri is not None:
            state.learn_inputs(p, tokens, rows, g, self.x, self.ri)
        if self.rb is not None:
            self.B[rows] = sat32(self.B[rows] - shift_round(g << 18, self.rb))
        s = self.rm - 12 - self.sigma
        prod = g[:, None] * self.H[None, :]
        d = (prod + (1 << (s - 1))) >> s if s > 0 else prod << -s
        m = self.M[rows]
        m = np.minimum(np.maximum(m - (m >> 8) - d, -M_MAX), M_MAX)
        self.M[rows] = m
        self.V[rows] = (m + (1 << 15)) >> 16


# ---------------------------------------------------------------------------------------------
# Decoding a segment with each model (§3.1, §3.2, §3.3, §3.4)
# ---------------------------------------------------------------------------------------------


class NeuralTables:
    """§3.2 (and §3.4): the network's table for each token, adapted when rates are given."""

    def __init__(self, net, n_tokens, rates=None):
        self.state = NetworkState(net, n_tokens, learn_inputs=bool(rates) and rates[2] is not None)
        self.adapter = Adapter(net.spec["width"], *rates) if rates else None

    def table(self, p, tokens):
        logits, H, sigma, x = self.state.step(p, tokens)
        if self.adapter:
            logits = self.adapter.adjust(logits, H, sigma, x)
        return Table(frequency_table(logits))

    def learn(self, table, token, p, tokens):
        """After token p was coded (`tokens` holds the tokens before it)."""
        if self.adapter:
            self.adapter.learn(table.freq, token, self.state, p, tokens)


def split_p(table, d, n):
    """§3.3: the prior's 12-bit probability of the 1 branch at node n of depth d."""
    w = 1024 >> d
    lo = (n - (1 << d)) * w
    zeros, ones = table.mass(lo, lo + w // 2), table.mass(lo + w // 2, lo + w)
    return min(max((ones << 12) // (zeros + ones), 1), 4095)


def decode_segment(model, payload, n_tokens, limit):
    """Decode the first `limit` of a segment's n_tokens tokens with `model` (a dict:
    kind, and net / tables / rates as the kind needs)."""
    rc = RangeDecoder(payload)
    tokens = []
    kind = model["kind"]
    cm = ContextMix(n_tokens, *model["tables"]) if kind in ("context-mix", "mixed") else None
    nt = NeuralTables(model["net"], n_tokens, model.get("rates")) if kind in ("neural", "mixed") else None
    for i in range(limit):
        if kind == "neural":  # §3.2: the table itself
            table = nt.table(i, tokens)
            token, start, freq = table.find(rc.target())
            rc.consume(start, freq)
            nt.learn(table, token, i, tokens)
        else:  # §3.1, §3.3: the tree, with the network's table as the prior
            cm.begin(i, tokens)
            if nt is None:
                node_p = cm.node_p
            else:
                table = nt.table(i, tokens)
                node_p = lambda d, n: cm.node_p(d, n, STRETCH[split_p(table, d, n)])
            token = decode_tree_token(rc, node_p, cm.learn)
            if nt is not None:
                nt.learn(table, token, i, tokens)
        tokens.append(token)
    return tokens, rc


# ---------------------------------------------------------------------------------------------
# §4 Model id, §4.1 every release's predictors
# ---------------------------------------------------------------------------------------------

CM_TABLES, MIXED_TABLES = (22, True), (18, True)
# (rm, rb, ri): the output matrix's, the output bias's and the input embeddings' rates.
NEURAL_OUTPUT_RATES, MIXED_OUTPUT_RATES = (9, 6, None), (11, None, None)
NEURAL_ADAPTIVE_RATES, MIXED_ADAPTIVE_RATES = (9, 6, 6), (11, None, 6)

# §4.1: id string -> (kind, context mixer's tables (largest B, two slots per bucket), rates).
CONTEXT_MIX_IDS = {
    "cvq context-mix 2": CM_TABLES,
    "cvq context-mix 1": (22, False),
}
NETWORK_IDS = {
    "cvq mixed 4": ("mixed", MIXED_TABLES, None),
    "cvq mixed 3": ("mixed", (19, True), None),
    "cvq mixed 2": ("mixed", (21, False), None),
    "cvq neural-adaptive 2": ("neural", None, NEURAL_ADAPTIVE_RATES),
    "cvq mixed-adaptive 3": ("mixed", MIXED_TABLES, MIXED_ADAPTIVE_RATES),
    "cvq neural-adaptive 1": ("neural", None, NEURAL_OUTPUT_RATES),
    "cvq mixed-adaptive 2": ("mixed", MIXED_TABLES, MIXED_OUTPUT_RATES),
    "cvq mixed-adaptive 1": ("mixed", (19, True), MIXED_OUTPUT_RATES),
}


def find_model(model_id, weights_paths):
    """§4: the predictor an archive's id names; weights are tried in order, loaded lazily."""
    for name, tables in CONTEXT_MIX_IDS.items():
        if model_id == sha256(name.encode()):
            return dict(kind="context-mix", name=name, tables=tables)
    for path in weights_paths:
        w = Weights(path)
        if model_id == w.model_id:
            return dict(kind="neural", name="neural", weights=w)
        for name, (kind, tables, rates) in NETWORK_IDS.items():
            if model_id == sha256(name.encode(), w.model_id):
                return dict(kind=kind, name=name, weights=w, tables=tables, rates=rates)
    raise FormatError(f"unknown model id {model_id.hex()}: not a context mixer's, nor one of the weights "
                      f"tried ({', '.join(weights_paths) or 'none'})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("archive")
    ap.add_argument("-o", "--output", required=True, help="directory to write the segments into")
    ap.add_argument("--frames", type=int, default=None, help="decode only the first N frames of each segment")
    ap.add_argument("--weights", default=None,
                    help="int8 safetensors weights of the neural model (default: the repository's "
                         "weights/default.safetensors; earlier releases' weights/*.safetensors are found by model id)")
    args = ap.parse_args(argv)
    if args.frames is not None and args.frames < 0:
        ap.error("--frames must be at least 0")

    repo_weights = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights")
    paths = [args.weights] if args.weights else [os.path.join(repo_weights, "default.safetensors")]
    if os.path.isdir(repo_weights):
        paths += sorted(os.path.join(repo_weights, f) for f in os.listdir(repo_weights)
                        if f.endswith(".safetensors") and f != "default.safetensors")
    seen, unique = set(), []
    for p in paths:
        real = os.path.realpath(p)
        if real not in seen and (os.path.exists(p) or p == args.weights):
            seen.add(real)
            unique.append(os.path.relpath(real) if real.startswith(os.getcwd() + os.sep) else real)
    paths = unique

    try:
        data = open(args.archive, "rb").read()
        model_id, entries = read_archive(data)
        model = find_model(model_id, paths)
        if "weights" in model:
            model["net"] = Network(model["weights"])
    except (OSError, FormatError) as e:
        sys.exit(f"{args.archive}: {e}")
    print(f"{args.archive}: {model['name']}" + (f" (weights {model['weights'].path})" if "weights" in model else ""),
          file=sys.stderr)
    os.makedirs(args.output, exist_ok=True)
    for e in entries:
        frames = e["frames"] if args.frames is None else min(args.frames, e["frames"])
        t0 = time.time()
        try:
            tokens, rc = decode_segment(model, e["payload"], e["frames"] * TOKENS_PER_FRAME,
                                        frames * TOKENS_PER_FRAME)
            if frames == e["frames"]:  # §2 step 3
                rc.finish()
                if token_crc(tokens) != e["token_crc"]:
                    raise FormatError("token checksum mismatch: the decoder does not compute what the encoder did")
        except FormatError as err:
            sys.exit(f"{args.archive}: segment {e['name']!r}: {err}")
        with open(os.path.join(args.output, e["name"]), "wb") as f:
            f.write(restored_file(e, tokens))
        print(f"{e['name']}: {frames} frames in {time.time() - t0:.2f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
