"""Minimal safetensors reader/writer in pure Python + numpy (independent reference).

Checkpoint layouts accepted by load_checkpoint():
  (a) folder with model.safetensors
  (b) folder with model.safetensors.index.json + shards (weight_map: tensor -> shard file)
  (c) a single .safetensors file
Float tensors (F64/F32/F16/BF16) come back as float64; others keep their numpy dtype.
Run `python3 tests/ref/st.py` for a self-test against the official `safetensors` package.
"""
import json
import os
import struct
from collections import OrderedDict

import numpy as np

# storage numpy dtype per safetensors dtype (BF16 is stored as raw uint16 bits)
STORAGE = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
FLOATS = ("F64", "F32", "F16", "BF16")


# ---------------------------------------------------------------- bf16 helpers
def bf16_bits_to_f32(bits):
    """uint16 bf16 bit patterns -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16_bits(x):
    """float32 -> bf16 bits, round-to-nearest-even; NaN stays (quiet) NaN."""
    b = np.ascontiguousarray(np.asarray(x, dtype=np.float32)).view(np.uint32)
    rounded = (b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    out = np.where(nan, (b >> np.uint32(16)) | np.uint32(0x0040), rounded)
    return out.astype(np.uint16)


def f64_to_bf16_bits(x):
    """float64 -> bf16 bits with a single correct RNE rounding.

    Avoids double rounding: first round f64 -> f32 *to odd* (truncate toward zero and set the
    sticky LSB when inexact), then f32 -> bf16 RNE. f32 keeps >= bf16 precision + 2 bits, so the
    result equals direct RNE rounding (also for subnormals and overflow to inf)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        t = x.astype(np.float32)
        too_big = np.abs(t.astype(np.float64)) > np.abs(x)  # RNE rounded away from zero
        t = np.where(too_big & np.isfinite(x), np.nextafter(t, np.float32(0)), t).astype(np.float32)
        inexact = (t.astype(np.float64) != x) & np.isfinite(x)
    bits = np.ascontiguousarray(t).view(np.uint32) | np.where(inexact, np.uint32(1), np.uint32(0))
    return f32_to_bf16_bits(bits.view(np.float32))


def to_float64(dtype, arr):
    if dtype == "BF16":
        return bf16_bits_to_f32(arr).astype(np.float64)
    return arr.astype(np.float64)


def encode(dtype, arr):
    """Array (any numeric) -> storage array for `dtype`. BF16: uint16 input is taken as raw bits."""
    arr = np.asarray(arr)
    if dtype == "BF16":
        if arr.dtype == np.uint16:
            return arr
        return f64_to_bf16_bits(arr.astype(np.float64))
    return arr.astype(STORAGE[dtype])


# ---------------------------------------------------------------- reading
def read_file(path):
    """-> (OrderedDict name -> (dtype, raw storage array), metadata dict or None)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=OrderedDict)
    meta = header.pop("__metadata__", None)
    base = 8 + n
    out = OrderedDict()
    for name, info in header.items():
        dt, shape = info["dtype"], info["shape"]
        b, e = info["data_offsets"]
        if dt not in STORAGE:
            raise ValueError(f"{path}: unsupported dtype {dt} for {name}")
        arr = np.frombuffer(data[base + b: base + e], dtype=STORAGE[dt]).reshape(shape).copy()
        out[name] = (dt, arr)
    return out, meta


def checkpoint_files(path):
    """Resolve a checkpoint path to its ordered list of safetensors files."""
    if os.path.isfile(path):
        return [path]
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):
        with open(index) as f:
            wm = json.load(f, object_pairs_hook=OrderedDict)["weight_map"]
        files = []
        for shard in wm.values():
            if shard not in files:
                files.append(shard)
        return [os.path.join(path, s) for s in files]
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def load_checkpoint(path, raw=False):
    """-> OrderedDict name -> (dtype, array); floats upcast to float64 unless raw=True."""
    out = OrderedDict()
    for fpath in checkpoint_files(path):
        tensors, _ = read_file(fpath)
        for name, (dt, arr) in tensors.items():
            if name in out:
                raise ValueError(f"duplicate tensor {name} in {path}")
            out[name] = (dt, arr if raw or dt not in FLOATS else to_float64(dt, arr))
    return out


# ---------------------------------------------------------------- writing
def serialize(tensors, metadata=None):
    header = OrderedDict()
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, off = [], 0
    for name, (dt, arr) in tensors.items():
        arr = np.asarray(arr)
        buf = np.ascontiguousarray(encode(dt, arr)).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(buf)]}
        blobs.append(buf)
        off += len(buf)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs), off


def write_file(path, tensors, metadata=None):
    """Write one safetensors file; tensors: name -> (dtype, array). Returns data byte size."""
    blob, size = serialize(tensors, metadata)
    with open(path, "wb") as f:
        f.write(blob)
    return size


def write_sharded(folder, shards, metadata=None):
    """shards: list of dicts name -> (dtype, array). Writes model-0000i-of-0000N.safetensors
    + model.safetensors.index.json."""
    os.makedirs(folder, exist_ok=True)
    n = len(shards)
    weight_map, total = OrderedDict(), 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        total += write_file(os.path.join(folder, fname), shard, metadata)
        for name in shard:
            weight_map[name] = fname
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")


def write_checkpoint(folder, tensors, shards=1, metadata=None):
    """Write tensors as folder/model.safetensors (shards=1) or split into `shards` files."""
    os.makedirs(folder, exist_ok=True)
    if shards <= 1:
        write_file(os.path.join(folder, "model.safetensors"), tensors, metadata)
        return
    names = list(tensors)
    bounds = np.linspace(0, len(names), shards + 1).round().astype(int)
    write_sharded(folder, [OrderedDict((k, tensors[k]) for k in names[bounds[i]:bounds[i + 1]])
                           for i in range(shards)], metadata)


# ---------------------------------------------------------------- self-test
def _selftest():
    import tempfile
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    d = tempfile.mkdtemp()
    a32 = rng.normal(size=(3, 5)).astype(np.float32)
    a16 = rng.normal(size=(7,)).astype(np.float16)
    ints = {"i64": np.arange(6, dtype=np.int64).reshape(2, 3), "i32": np.array([-1, 2], np.int32),
            "i16": np.array([3], np.int16), "i8": np.array([-4, 5], np.int8),
            "u8": np.array([255, 0], np.uint8), "b": np.array([True, False, True])}
    # official writer -> our reader
    p = os.path.join(d, "off.safetensors")
    save_file({"a32": a32, "a16": a16, "scalar": np.array(1.5, np.float64), **ints}, p, metadata={"format": "pt"})
    got, meta = read_file(p)
    assert meta == {"format": "pt"}, meta
    assert got["a32"][0] == "F32" and np.array_equal(got["a32"][1], a32)
    assert got["a16"][0] == "F16" and np.array_equal(got["a16"][1], a16)
    assert got["scalar"][1].shape == () and got["scalar"][1] == 1.5
    for k, v in ints.items():
        assert np.array_equal(got[k][1], v) and got[k][1].dtype == v.dtype, k
    # our writer -> official reader
    q = os.path.join(d, "ours.safetensors")
    tens = OrderedDict([("z", ("F32", a32)), ("a", ("F16", a16))] +
                       [(k, ({"i64": "I64", "i32": "I32", "i16": "I16", "i8": "I8", "u8": "U8", "b": "BOOL"}[k], v))
                        for k, v in ints.items()])
    write_file(q, tens, {"format": "pt"})
    off = load_file(q)
    assert np.array_equal(off["z"], a32) and np.array_equal(off["a"], a16)
    for k, v in ints.items():
        assert np.array_equal(off[k], v), k
    with open(q, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
    assert n % 8 == 0
    # BF16: round-trip bits; official reader sees the header (no bf16 in numpy -> check via bytes)
    vals = np.array([1.0, -2.5, 3.14159, 1e-3, 0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, 3.0e38, 3.5e38])
    bits = f64_to_bf16_bits(vals)
    back = bf16_bits_to_f32(bits)
    assert np.array_equal(f32_to_bf16_bits(back), bits)
    assert back[0] == 1.0 and back[1] == -2.5 and np.isnan(back[8]) and np.isinf(back[11])
    assert np.signbit(back[5]) and back[4] == 0 and not np.signbit(back[4])
    # RNE ties to even on hand-picked f32 bit patterns
    for inp, exp in [(0x3F808000, 0x3F80), (0x3F818000, 0x3F82), (0x3F808001, 0x3F81),
                     (0x3F807FFF, 0x3F80), (0x7F7FFFFF, 0x7F80), (0x7FC00001, 0x7FC0), (0xFF800000, 0xFF80)]:
        got_b = int(f32_to_bf16_bits(np.array([inp], np.uint32).view(np.float32))[0])
        assert got_b == exp, (hex(inp), hex(got_b))
    # f64 -> bf16 without double rounding: 1 + 2^-8 + 2^-30 must round up (f32 would tie first)
    assert int(f64_to_bf16_bits(np.array([1 + 2**-8 + 2**-30]))[0]) == 0x3F81
    assert int(f64_to_bf16_bits(np.array([1 + 2**-8]))[0]) == 0x3F80
    # brute-force: f64 -> bf16 equals the nearest (ties-even) bf16 for random values
    x = rng.normal(size=20000) * 10.0 ** rng.integers(-40, 38, size=20000)
    bb = f64_to_bf16_bits(x)
    lo = bf16_bits_to_f32(bb).astype(np.float64)
    for step in (-1, 1):  # neighbours must not be strictly closer
        nb = bf16_bits_to_f32((bb.astype(np.int32) + step).astype(np.uint16)).astype(np.float64)
        ok = (np.abs(nb - x) >= np.abs(lo - x)) | ~np.isfinite(nb)
        assert ok.all()
    w = os.path.join(d, "bf.safetensors")
    write_file(w, {"w": ("BF16", vals)})
    got, _ = read_file(w)
    assert got["w"][0] == "BF16" and np.array_equal(got["w"][1], bits)
    from safetensors import safe_open
    with safe_open(w, framework="numpy") as f:  # official parser accepts the header
        assert list(f.keys()) == ["w"]
    # sharded writer / loader
    big = OrderedDict((f"t{i}", ("F32", rng.normal(size=(i + 1,)).astype(np.float32))) for i in range(5))
    write_checkpoint(os.path.join(d, "sh"), big, shards=3, metadata={"format": "pt"})
    ld = load_checkpoint(os.path.join(d, "sh"))
    assert list(ld) == list(big) and all(np.array_equal(ld[k][1], big[k][1]) for k in big)
    with open(os.path.join(d, "sh", "model.safetensors.index.json")) as f:
        idx = json.load(f)
    assert idx["metadata"]["total_size"] == sum(v[1].nbytes for v in big.values())
    for fn in set(idx["weight_map"].values()):
        load_file(os.path.join(d, "sh", fn))
    print("st.py selftest OK")


if __name__ == "__main__":
    _selftest()
