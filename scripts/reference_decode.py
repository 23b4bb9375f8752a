#!/usr/bin/env python3
"""Reference decoder for cvq archives, written from FORMAT.md alone.

    python3 scripts/reference_decode.py ARCHIVE -o DIR [--frames N] [--weights W.safetensors]

Reads a cvq archive (FORMAT.md, format version 2) and writes every segment into DIR under its
stored name, byte for byte what `cvq decompress` writes: the stored npy header followed by the
tokens in the header's dtype. `--frames N` stops each segment after N frames and writes those,
under a header for N frames (FORMAT.md section 1, "A header for fewer frames").

Python 3 and numpy only, no code shared with the Rust crate; slow on purpose: every step is
written the way the text states it. Section numbers (§) are FORMAT.md's.
"""

import argparse
import ast
import hashlib
import json
import os
import struct
import sys
import time
import zlib
from array import array

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
DTYPES = {"<i2": (2, "<"), ">i2": (2, ">"), "<u2": (2, "<"), ">u2": (2, ">"),
          "<i4": (4, "<"), ">i4": (4, ">"), "<i8": (8, "<"), ">i8": (8, ">")}


def parse_npy_header(header):
    """§1: check a stored npy header; return (descr, shape tuple, frames N)."""
    h = bytes(header)
    if h[:6] != b"\x93NUMPY" or len(h) < 10:
        raise FormatError("npy header: bad magic")
    major = h[6]
    if major == 1:
        dict_start, dict_len = 10, int.from_bytes(h[8:10], "little")
    elif major in (2, 3):
        if len(h) < 12:
            raise FormatError("npy header: truncated preamble")
        dict_start, dict_len = 12, int.from_bytes(h[8:12], "little")
    else:
        raise FormatError(f"npy header: unknown version {major}")
    if dict_start + dict_len != len(h):
        raise FormatError("npy header: its declared length is not the stored header's length")
    text = h[dict_start:].decode("utf-8" if major == 3 else "latin-1")
    try:
        d = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError) as e:
        raise FormatError(f"npy header: dictionary does not parse: {e}")
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise FormatError("npy header: expected the keys descr, fortran_order, shape")
    if d["fortran_order"] is not False:
        raise FormatError("npy header: Fortran order is not supported")
    if d["descr"] not in DTYPES:
        raise FormatError(f"npy header: unsupported dtype {d['descr']!r}")
    shape = d["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(x, int) and x >= 0 for x in shape):
        raise FormatError("npy header: bad shape")
    if not (len(shape) == 3 and shape[1:] == (8, 16)) and not (len(shape) == 2 and shape[1] == 128):
        raise FormatError(f"npy header: unsupported shape {shape}")
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
        descr, shape, n = parse_npy_header(headers[ref])
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
    width, order = DTYPES[entry["descr"]]
    values = b"".join(t.to_bytes(width, "little" if order == "<" else "big") for t in tokens)
    return bytes(header) + values


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
        self.table = array("I", bytes(4 * (N_MODELS << self.B)))
        self.weights = [[8192] * (N_INPUTS - 1) + [49152] for _ in range(10)]
        self.tokens = []

    # Contexts: taken before the token.
    def begin(self, i, tokens, frame_shape=(8, 16)):
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
        self.inputs = [None] * 10
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


def decode_context_mix(payload, n_tokens, limit, max_bits=22, two_slots=True):
    """§3.1: the segment's n_tokens tokens (the first `limit` of them)."""
    rc = RangeDecoder(payload)
    cm = ContextMix(n_tokens, max_bits, two_slots)
    tokens = []
    for i in range(limit):
        cm.begin(i, tokens)
        cm.path = []
        tokens.append(decode_tree_token(rc, cm.node_p, cm.learn))
    return tokens, rc


# ---------------------------------------------------------------------------------------------
# §4 Model id, §4.1 every release's predictors
# ---------------------------------------------------------------------------------------------

CONTEXT_MIX_IDS = {
    sha256(b"cvq context-mix 2"): ("cvq context-mix 2", dict(max_bits=22, two_slots=True)),
    sha256(b"cvq context-mix 1"): ("cvq context-mix 1", dict(max_bits=22, two_slots=False)),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("archive")
    ap.add_argument("-o", "--output", required=True, help="directory to write the segments into")
    ap.add_argument("--frames", type=int, default=None, help="decode only the first N frames of each segment")
    ap.add_argument("--weights", default=None, help="int8 safetensors weights of the neural model")
    args = ap.parse_args(argv)

    data = open(args.archive, "rb").read()
    try:
        model_id, entries = read_archive(data)
    except FormatError as e:
        sys.exit(f"{args.archive}: {e}")
    if model_id not in CONTEXT_MIX_IDS:
        sys.exit(f"{args.archive}: unknown model id {model_id.hex()}")
    name, params = CONTEXT_MIX_IDS[model_id]
    os.makedirs(args.output, exist_ok=True)
    for e in entries:
        frames = e["frames"] if args.frames is None else min(args.frames, e["frames"])
        t0 = time.time()
        try:
            tokens, rc = decode_context_mix(e["payload"], e["frames"] * TOKENS_PER_FRAME,
                                            frames * TOKENS_PER_FRAME, **params)
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
