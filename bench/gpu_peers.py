#!/usr/bin/env python3
"""mmkit's CUDA quantized matmuls beside their GPU peers, measured in one run.

mmkit's numbers come from the C++ bench `mmkit_cuda_gemv_bench` (run here with
--mmkit-bench, or read from its --json output with --mmkit-json); the peers are
timed here through PyTorch on the same shapes:

  * cuBLAS bf16 `x @ w.T`: 8192x8192 at the bench's M list, 14336x4096 at M = 1/16/128;
  * torch int4 tinygemm (`torch._weight_int4pack_mm`, group size 128 and 64), M = 1/16/128;
  * `torch._grouped_mm` bf16 and a per-expert loop of `x_e @ w_e.T` on the
    Qwen3-30B-A3B MoE decode shapes (128 experts, top-8; gate+up 1536x2048,
    down 2048x768; T = 1/4/16/64/256 tokens, random routing).

Protocol (shared/PERF.md sections 1-4): bf16 activations; cold L2 (weights
rotate over copies so that >= 2x the L2 is read between two uses of one copy,
or, where that needs too much memory, a 2x-L2 buffer is written before each
call); each call bracketed by its own CUDA events (launch included), median of
>= 30 calls after a warm-up; every GB/s also given as % of the device-to-device
copy bandwidth measured in this run (512 MiB, bytes read + written, median of 20).

Bytes per call (PERF.md section 1): N*K*bytes_per_weight + M*K*2 + M*N*2, with
bytes_per_weight = bits/8 + (scale + bias bytes)/group (2 for bf16). MoE:
distinct active experts' weights + T*K*2 + T*top_k*N*2 (the byte count
mmkit's bench uses). The peers get their MoE routing pre-sorted by expert (the
sort/gather is not timed), which favours them.

Outputs in --out DIR: peers.json, table.md, roofline.png (when matplotlib
imports; otherwise `gpu_peers.py --plot-only DIR` renders it later, anywhere).

Usage:
  gpu_peers.py --mmkit-bench build/ci/src/cuda/mmkit_cuda_gemv_bench --out OUT [--quick]
  gpu_peers.py --mmkit-json gemv.json --out OUT
  gpu_peers.py --plot-only OUT
  gpu_peers.py --self-test
"""
import argparse
import datetime
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

EXIT_MISSING = 2  # no torch / no GPU / no numpy

# ---- shapes (mirroring src/cuda/tools/cuda_gemv_bench.cu) ---------------------------------
DENSE_MAIN = (8192, 8192)  # (N, K) of the bench's quantized cases
DENSE_FFN = (14336, 4096)  # PERF.md section 3 peer table
HEADLINE_FMT = "affine b4 g64"
M_FULL = [1, 2, 4, 8, 16, 32, 64, 256, 2048]  # the bench's headline M list (used without its JSON)
M_QUICK = [1, 8, 256]
PEER_SMALL_M_FULL = [1, 16, 128]  # tinygemm, and cuBLAS on 14336x4096
PEER_SMALL_M_QUICK = [1]
MOE_T_FULL = [1, 4, 16, 64, 256]
MOE_T_QUICK = [1, 64]
MOE_SHAPES = [  # (label as in the bench, experts E, N, K, top_k)
    ("qwen3-30b-a3b gate+up", 128, 1536, 2048, 8),
    ("qwen3-30b-a3b down", 128, 2048, 768, 8),
]
MOE_ROUTINGS = 16  # routings rotated per T, as in the bench

# Implementations: key -> (table column / legend label).
PEERS = [
    ("cublas_bf16", "cuBLAS bf16"),
    ("tinygemm_int4_g128", "tinygemm int4 g128"),
    ("tinygemm_int4_g64", "tinygemm int4 g64"),
    ("grouped_mm_bf16", "torch._grouped_mm bf16"),
    ("expert_loop_bf16", "per-expert loop bf16"),
]
PEER_LABEL = dict(PEERS)
PEER_LABEL["mmkit_bench_cublas_bf16"] = "cuBLAS bf16 (mmkit bench, C++)"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- byte accounting (PERF.md section 1) ----------------------------------------------------
def bytes_per_weight(fmt):
    """Bytes per weight of a format name: 'bf16', 'affine bB gG', 'mxfp4', 'nvfp4', 'mxfp8', 'int4 gG'."""
    if fmt == "bf16":
        return 2.0
    m = re.fullmatch(r"affine b(\d+) g(\d+)", fmt)
    if m:  # bf16 scale + bf16 bias per group
        return int(m.group(1)) / 8 + 4 / int(m.group(2))
    m = re.fullmatch(r"int4 g(\d+)", fmt)
    if m:  # tinygemm: bf16 scale + bf16 zero per group
        return 0.5 + 4 / int(m.group(1))
    table = {"mxfp4": 0.5 + 1 / 32, "nvfp4": 0.5 + 1 / 16, "mxfp8": 1 + 1 / 32}
    if fmt in table:
        return table[fmt]
    raise ValueError(f"unknown format {fmt!r}")


def dense_bytes(fmt, M, N, K):
    return N * K * bytes_per_weight(fmt) + M * K * 2 + M * N * 2


def moe_bytes(fmt, distinct, T, topk, N, K):
    return distinct * N * K * bytes_per_weight(fmt) + T * K * 2 + T * topk * N * 2


def expected_distinct(E, topk, T):
    """Expected number of distinct experts hit by T tokens routed to top_k distinct random experts."""
    return E * (1 - (1 - topk / E) ** T)


def finish_record(rec, copy_gbs):
    """Fill gbs / pct_copy / tflops from us, bytes and flops."""
    us = rec.get("us")
    if us is None or not (us > 0):
        rec.update(gbs=None, pct_copy=None, tflops=None)
        return rec
    rec["gbs"] = rec["bytes"] / (us * 1e-6) / 1e9
    rec["pct_copy"] = 100.0 * rec["gbs"] / copy_gbs if copy_gbs else None
    rec["tflops"] = rec["flops"] / (us * 1e-6) / 1e12 if rec.get("flops") else None
    return rec


def case_of(kind, N, K, E=None, topk=None, label=None):
    if kind == "dense":
        return f"dense {N}x{K}"
    return f"moe {label}"


def shape_of(kind, N, K, E=None, topk=None):
    return f"{N}x{K}" if kind == "dense" else f"{E}x{N}x{K} top-{topk}"


# ---- mmkit bench JSON --------------------------------------------------------------------------
_NONFINITE = re.compile(r"(?<=[:\s,\[])(-?)(nan|inf)\b", re.IGNORECASE)


def load_mmkit_json(text):
    """Parse the bench's JSON (C++ streams write bare nan / inf, which json rejects)."""
    def repl(m):
        return "NaN" if m.group(2).lower() == "nan" else (m.group(1) + "Infinity")
    return json.loads(_NONFINITE.sub(repl, text))


_DENSE_NAME = re.compile(r"^(?P<fmt>affine b\d+ g\d+|mxfp4|nvfp4|mxfp8) \[(?P<kernel>[^\]]+)\]$")
_MOE_NAME = re.compile(r"^(?P<label>.+?) T=(?P<T>\d+) \[(?P<kernel>[^\]]+)\]$")


def mmkit_records(doc, copy_gbs):
    """Measurement records from the bench's JSON; the first row of a (format, M) or
    (shape, T) is the kernel the registry dispatches, later rows are comparisons."""
    out, seen = [], set()
    moe = {s[0]: s for s in MOE_SHAPES}
    for r in doc.get("results", []):
        name, us = r.get("name", ""), r.get("median_us")
        N, K, M = int(r["N"]), int(r["K"]), int(r["M"])
        gbs = r.get("gbs")
        nbytes = gbs * us * 1e3 if (gbs and us and math.isfinite(gbs) and math.isfinite(us)) else None
        base = dict(source="mmkit_bench", us=us, idle_call_us=r.get("idle_call_us"), N=N, K=K,
                    check_max_abs_diff=r.get("check_max_abs_diff"), pct_copy_own_run=r.get("pct_copy"), status="ok")
        md, mm = _DENSE_NAME.match(name), _MOE_NAME.match(name)
        if name.startswith("cuBLAS bf16"):
            rec = dict(base, impl="mmkit_bench_cublas_bf16", kind="dense", kernel="cublasGemmEx", format="bf16", M=M,
                       case=case_of("dense", N, K), shape=shape_of("dense", N, K), bytes=dense_bytes("bf16", M, N, K),
                       flops=2.0 * M * N * K, dispatched=True)
        elif md:
            fmt = md.group("fmt")
            key = ("dense", fmt, N, K, M)
            rec = dict(base, impl="mmkit", kind="dense", kernel=md.group("kernel"), format=fmt, M=M,
                       case=case_of("dense", N, K), shape=shape_of("dense", N, K),
                       bytes=nbytes or dense_bytes(fmt, M, N, K), flops=2.0 * M * N * K, dispatched=key not in seen)
            seen.add(key)
        elif mm and mm.group("label") in moe:
            label, E, _, _, topk = moe[mm.group("label")]
            T = int(mm.group("T"))
            key = ("moe", label, T)
            rec = dict(base, impl="mmkit", kind="moe", kernel=mm.group("kernel"), format=HEADLINE_FMT, T=T, E=E,
                       topk=topk, rows=M, case=case_of("moe", N, K, label=label), shape=shape_of("moe", N, K, E, topk),
                       bytes=nbytes or moe_bytes(HEADLINE_FMT, expected_distinct(E, topk, T), T, topk, N, K),
                       flops=2.0 * M * N * K, dispatched=key not in seen)
            seen.add(key)
        else:
            continue
        rec["name"] = f"mmkit {name}" if rec["impl"] == "mmkit" else name
        out.append(finish_record(rec, copy_gbs))
    return out


def run_mmkit_bench(path, out_dir, quick):
    """Run the C++ bench with --json into out_dir, echoing its output to stderr."""
    jpath = os.path.join(out_dir, "mmkit_gemv.json")
    cmd = [path, "--json", jpath] + (["--quick"] if quick else [])
    log(f"gpu_peers: running {' '.join(cmd)}")
    if os.path.exists(jpath):
        os.remove(jpath)
    with open(os.path.join(out_dir, "mmkit_bench.log"), "w") as logf:
        try:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except OSError as e:
            return None, f"cannot run {path}: {e}"
        for line in p.stdout:
            logf.write(line)
            log("  mmkit| " + line.rstrip())
        rc = p.wait()
    if rc != 0:
        return None, f"{path} exited with status {rc} (see mmkit_bench.log)"
    if not os.path.exists(jpath):
        return None, f"{path} wrote no JSON (no GPU seen by it? see mmkit_bench.log)"
    return jpath, None


# ---- timing ------------------------------------------------------------------------------------
class Gpu:
    """Timing helpers bound to torch and the device's L2 size."""

    def __init__(self, torch, quick, iters=None):
        self.torch = torch
        self.quick = quick
        self.iters = iters or (30 if quick else 100)
        self.warmup = 5 if quick else 10
        self.idle_iters = 10 if quick else 20
        props = torch.cuda.get_device_properties(0)
        self.name = props.name
        self.l2 = int(getattr(props, "L2_cache_size", 0) or (50 << 20))
        self.sms = props.multi_processor_count
        free, total = torch.cuda.mem_get_info()
        # Weight copies for rotation may take this much; above it, flush L2 instead.
        self.rotate_budget = min(24 << 30, int(0.5 * free))
        self._flush_buf = None

    def copies_for(self, footprint):
        """Copies such that >= 2x L2 of other copies is read between two uses of one."""
        return max(2, math.ceil(2 * self.l2 / max(footprint, 1)) + 1)

    def flush(self):
        if self._flush_buf is None:
            self._flush_buf = self.torch.empty(2 * self.l2, dtype=self.torch.uint8, device="cuda")
        self._flush_buf.zero_()

    def time_us(self, fn, flush=False, iters=None):
        """Median device time of fn(i) (us), each call between its own events; the
        host enqueues ahead, so host launch time shows only where it cannot keep up."""
        torch = self.torch
        iters = max(30, iters or self.iters)
        for i in range(self.warmup):
            if flush:
                self.flush()
            fn(i)
        torch.cuda.synchronize()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for i, (a, b) in enumerate(ev):
            if flush:
                self.flush()
            a.record()
            fn(self.warmup + i)
            b.record()
        torch.cuda.synchronize()
        return statistics.median(a.elapsed_time(b) * 1e3 for a, b in ev)

    def idle_call_us(self, fn, flush=False):
        """Median latency of one call on an idle GPU, host launch included."""
        torch = self.torch
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t = []
        for i in range(self.idle_iters):
            if flush:
                self.flush()
                torch.cuda.synchronize()
            a.record()
            fn(i)
            b.record()
            b.synchronize()
            t.append(a.elapsed_time(b) * 1e3)
        return statistics.median(t)

    def copy_gbs(self):
        torch = self.torch
        n = 512 << 20
        src = torch.ones(n, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        for _ in range(3):  # warm-up, then a median of 20 calls, each between its own events
            dst.copy_(src)
        torch.cuda.synchronize()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(20)]
        for a, b in ev:
            a.record()
            dst.copy_(src)
            b.record()
        torch.cuda.synchronize()
        us = statistics.median(a.elapsed_time(b) * 1e3 for a, b in ev)
        del src, dst
        torch.cuda.empty_cache()
        return 2.0 * n / (us * 1e-6) / 1e9


class Measure:
    """Runs one peer case: rotation or flush, timing, record, progress line."""

    def __init__(self, gpu, copy_gbs, t0):
        self.gpu, self.copy_gbs, self.t0 = gpu, copy_gbs, t0
        self.records = []

    def add(self, rec):
        finish_record(rec, self.copy_gbs)
        self.records.append(rec)
        x = f"M={rec['M']}" if rec["kind"] == "dense" else f"T={rec['T']}"
        el = time.time() - self.t0
        if rec["status"] == "ok":
            log(f"[{el:6.1f}s] {rec['name']:<34} {rec['shape']:<20} {x:<7} {rec['us']:9.2f} us "
                f"{rec['gbs']:8.1f} GB/s {rec['pct_copy']:5.1f}% of copy  (idle-GPU call {rec['idle_call_us']:.1f} us)")
        else:
            log(f"[{el:6.1f}s] {rec['name']:<34} {rec['shape']:<20} {x:<7} {rec['status']}")
        return rec

    def unavailable(self, base, reason):
        reason = " ".join(str(reason).split())[:300]
        return self.add(dict(base, us=None, idle_call_us=None, status=f"unavailable: {reason}"))

    def timed(self, base, fn, flush, iters=None):
        g = self.gpu
        us = g.time_us(fn, flush=flush, iters=iters)
        idle = g.idle_call_us(fn, flush=flush)
        return self.add(dict(base, us=us, idle_call_us=idle, status="ok"))


def _err(e):
    return f"{type(e).__name__}: {e}".splitlines()[0]


# ---- peers ---------------------------------------------------------------------------------------
def peer_cublas(ms, gpu, N, K, Ms):
    """cuBLAS bf16 x @ w.T through torch.mm, weights rotated."""
    torch = gpu.torch
    wbytes = N * K * 2
    copies = gpu.copies_for(wbytes)
    flush = copies * wbytes > gpu.rotate_budget
    if flush:
        copies = 1
    ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
    for M in Ms:
        base = dict(impl="cublas_bf16", name="cuBLAS bf16 (torch.mm)", kernel="torch.mm(x, w.t())", kind="dense",
                    format="bf16", M=M, N=N, K=K, case=case_of("dense", N, K), shape=shape_of("dense", N, K),
                    source="torch", bytes=dense_bytes("bf16", M, N, K), flops=2.0 * M * N * K,
                    cold_l2="flush" if flush else f"rotate {copies} copies")
        try:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            y = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            ms.timed(base, lambda i: torch.mm(x, ws[i % copies].t(), out=y), flush,
                     iters=30 if M >= 1024 else None)
        except Exception as e:  # noqa: BLE001 -- a peer failing must not stop the run
            ms.unavailable(base, _err(e))


def _int4_weights(torch, N, K, gs, seed):
    """Random 4-bit codes (N, K) and per-group bf16 scales / zeros (K/gs, N)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randint(0, 16, (N, K), device="cuda", dtype=torch.uint8, generator=g)
    s = (torch.rand(K // gs, N, device="cuda", generator=g) * 0.01 + 0.002).to(torch.bfloat16)
    z = (torch.randn(K // gs, N, device="cuda", generator=g) * 0.01).to(torch.bfloat16)
    return q, s, z


def peer_tinygemm(ms, gpu, N, K, gs, Ms):
    """torch._weight_int4pack_mm (tinygemm), weights packed by _convert_weight_to_int4pack."""
    torch = gpu.torch
    fmt = f"int4 g{gs}"
    impl = f"tinygemm_int4_g{gs}"
    wbytes = N * K * bytes_per_weight(fmt)
    copies = gpu.copies_for(wbytes)
    flush = copies * wbytes > gpu.rotate_budget
    if flush:
        copies = 1

    def base(M):
        return dict(impl=impl, name=f"tinygemm int4 g{gs}", kernel="torch._weight_int4pack_mm", kind="dense",
                    format=fmt, M=M, N=N, K=K, case=case_of("dense", N, K), shape=shape_of("dense", N, K),
                    source="torch", bytes=dense_bytes(fmt, M, N, K), flops=2.0 * M * N * K,
                    cold_l2="flush" if flush else f"rotate {copies} copies")

    try:
        mm = getattr(torch, "_weight_int4pack_mm", None) or torch.ops.aten._weight_int4pack_mm
        convert = torch.ops.aten._convert_weight_to_int4pack
        packed, sz, check = [], [], None
        for c in range(copies):
            q, s, z = _int4_weights(torch, N, K, gs, 1000 + c)
            # Two codes a byte, the even k in the high nibble (the layout the CUDA packer reads).
            u8 = ((q[:, ::2] << 4) | q[:, 1::2]).contiguous()
            packed.append(convert(u8, 8))
            sz.append(torch.stack([s, z], dim=2).contiguous())  # (K/gs, N, 2)
            if c == 0:  # reference for a check: w = (q - 8) * scale + zero
                w = ((q.float() - 8).view(N, K // gs, gs) * s.float().t().unsqueeze(-1)
                     + z.float().t().unsqueeze(-1)).view(N, K)
                xc = torch.randn(4, K, device="cuda", dtype=torch.bfloat16)
                ref = xc.float() @ w.t()
                got = mm(xc, packed[0], gs, sz[0]).float()
                check = ((got - ref).abs().max() / ref.abs().max()).item()
                del w, ref, got
            del q, s, z, u8
    except Exception as e:  # noqa: BLE001
        for M in Ms:
            ms.unavailable(base(M), _err(e))
        return
    if check is not None and not check < 2e-2:
        log(f"gpu_peers: warning: tinygemm g{gs} differs from its dequantized reference (max rel err {check:.3g})")
    for M in Ms:
        b = dict(base(M), check_max_rel_err=check)
        try:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            ms.timed(b, lambda i: mm(x, packed[i % copies], gs, sz[i % copies]), flush)
        except Exception as e:  # noqa: BLE001
            ms.unavailable(b, _err(e))


def _routings(np, E, topk, T, K, n, seed, torch):
    """n random routings of T tokens to top_k distinct experts, each sorted by expert:
    (x gathered in expert order (L, K), int32 end offsets (E,), [(expert, start, end)], distinct)."""
    rng = np.random.default_rng(seed)
    x = torch.randn(T, K, device="cuda", dtype=torch.bfloat16) * 0.02
    out = []
    for _ in range(n):
        experts = np.argsort(rng.random((T, E)), axis=1)[:, :topk].reshape(-1)  # (L,)
        tokens = np.repeat(np.arange(T), topk)
        order = np.argsort(experts, kind="stable")
        counts = np.bincount(experts, minlength=E)
        ends = np.cumsum(counts)
        xs = x[torch.from_numpy(tokens[order]).to("cuda")].contiguous()
        offs = torch.from_numpy(ends.astype(np.int32)).to("cuda")
        groups = [(e, int(ends[e] - counts[e]), int(ends[e])) for e in range(E) if counts[e]]
        out.append((xs, offs, groups, len(groups)))
    return out


def peer_moe(ms, gpu, np, label, E, N, K, topk, Ts, which):
    """torch._grouped_mm bf16 and a per-expert loop on one MoE projection, bf16 weights (E, N, K)."""
    torch = gpu.torch
    expert_bytes = N * K * 2
    copies = gpu.copies_for(expert_bytes * expected_distinct(E, topk, min(Ts)))
    flush = copies * E * expert_bytes > gpu.rotate_budget
    if flush:
        copies = 1
    ws = [torch.randn(E, N, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
    wts = [w.transpose(-2, -1) for w in ws]  # (E, K, N), K-major: _grouped_mm's mat_b
    gmm = getattr(torch, "_grouped_mm", None)
    for T in Ts:
        L = T * topk
        sets = _routings(np, E, topk, T, K, MOE_ROUTINGS, 4321 + T, torch)
        distinct = sum(s[3] for s in sets) / len(sets)
        out = torch.empty(L, N, device="cuda", dtype=torch.bfloat16)

        def base(impl, name, kernel):
            return dict(impl=impl, name=name, kernel=kernel, kind="moe", format="bf16", T=T, E=E, topk=topk, rows=L,
                        N=N, K=K, case=case_of("moe", N, K, label=label), shape=shape_of("moe", N, K, E, topk),
                        source="torch", distinct_experts=distinct, bytes=moe_bytes("bf16", distinct, T, topk, N, K),
                        flops=2.0 * L * N * K, cold_l2="flush" if flush else f"rotate {copies} copies x {MOE_ROUTINGS} routings")

        def loop(i):
            xs, _, groups, _ = sets[i % MOE_ROUTINGS]
            w = ws[i % copies]
            for e, s, t in groups:
                torch.mm(xs[s:t], w[e].t(), out=out[s:t])

        ref = None
        if "loop" in which:
            b = base("expert_loop_bf16", "per-expert loop bf16", "for e: torch.mm(x_e, w_e.t())")
            try:
                loop(0)
                ref = out.clone()
                ms.timed(b, loop, flush)
            except Exception as e:  # noqa: BLE001
                ms.unavailable(b, _err(e))
        if "grouped" in which:
            b = base("grouped_mm_bf16", "torch._grouped_mm bf16", "torch._grouped_mm(x, w.mT, offs)")
            try:
                if gmm is None:
                    raise RuntimeError(f"torch {torch.__version__} has no torch._grouped_mm")
                if ref is not None:  # same routing, same weights: the loop's result
                    got = gmm(sets[0][0], wts[0], offs=sets[0][1])
                    b["check_max_rel_err"] = ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
                ms.timed(b, lambda i: gmm(sets[i % MOE_ROUTINGS][0], wts[i % copies], offs=sets[i % MOE_ROUTINGS][1]),
                         flush)
            except Exception as e:  # noqa: BLE001
                ms.unavailable(b, _err(e))


# ---- report --------------------------------------------------------------------------------------
def _fmt_us(us):
    return "–" if us is None else (f"{us:.1f}" if us < 1000 else f"{us:.0f}")


def _key(r):
    return (r["case"], r["M"] if r["kind"] == "dense" else r["T"])


def table_rows(doc):
    """Rows of the one table: (shape label, kind, M or T, mmkit record or None, other mmkit records, {impl: record},
    roofline us)."""
    recs = doc["measurements"]
    copy = doc["copy_gbs"]
    peers_at = {}
    for r in recs:
        if r["impl"] in PEER_LABEL and r["impl"] != "mmkit_bench_cublas_bf16":
            peers_at.setdefault(_key(r), {})[r["impl"]] = r
    mmkit = [r for r in recs if r["impl"] == "mmkit"]
    rows = []

    def add(label, case, kind, x, fmt, N, K, E=None, topk=None):
        mk = [r for r in mmkit if _key(r) == (case, x) and r["format"] == fmt]
        disp = next((r for r in mk if r.get("dispatched")), mk[0] if mk else None)
        others = [r for r in mk if r is not disp]
        if kind == "dense":
            roof = dense_bytes(fmt, x, N, K) / (copy * 1e3) if copy else None
        else:
            roof = moe_bytes(fmt, expected_distinct(E, topk, x), x, topk, N, K) / (copy * 1e3) if copy else None
        rows.append(dict(label=label, kind=kind, x=x, fmt=fmt, mmkit=disp, others=others,
                         peers=peers_at.get((case, x), {}), roofline_us=roof))

    # Dense: per (N, K), the headline format over every M seen, then other formats.
    dense_shapes = []
    for r in recs:
        if r["kind"] == "dense" and r["impl"] != "mmkit_bench_cublas_bf16" and (r["N"], r["K"]) not in dense_shapes:
            dense_shapes.append((r["N"], r["K"]))
    dense_shapes.sort(key=lambda nk: (nk != DENSE_MAIN, nk))
    for N, K in dense_shapes:
        case = case_of("dense", N, K)
        Ms = sorted({r["M"] for r in recs if r["case"] == case and r["impl"] != "mmkit_bench_cublas_bf16"
                     and (r["impl"] != "mmkit" or r["format"] == HEADLINE_FMT)})
        for M in Ms:
            add(f"{N}x{K} {HEADLINE_FMT}", case, "dense", M, HEADLINE_FMT, N, K)
        fmts = []
        for r in mmkit:
            if r["case"] == case and r["format"] != HEADLINE_FMT and r["format"] not in fmts:
                fmts.append(r["format"])
        for f in fmts:
            for M in sorted({r["M"] for r in mmkit if r["case"] == case and r["format"] == f}):
                add(f"{N}x{K} {f}", case, "dense", M, f, N, K)
    for label, E, N, K, topk in MOE_SHAPES:
        case = case_of("moe", N, K, label=label)
        for T in sorted({r["T"] for r in recs if r["case"] == case}):
            add(f"{label} ({E}x{N}x{K}, top-{topk}), 4-bit g64", case, "moe", T, HEADLINE_FMT, N, K, E, topk)
    return rows


def render_table(doc):
    rows = table_rows(doc)
    used = [k for k, _ in PEERS if any(k in r["peers"] for r in rows)]
    lines = [
        f"# mmkit vs GPU peers: {doc['device']}",
        "",
        f"Measured {doc.get('date', '?')}, torch {doc.get('torch', '?')}, {'quick' if doc.get('quick') else 'full'} run. "
        f"Device-to-device copy (same run, read + write, 512 MiB, median of 20): **{doc['copy_gbs']:.0f} GB/s**.",
        "bf16 activations, cold L2, each call between its own CUDA events (launch included), median; "
        "% = achieved GB/s over the copy bandwidth (bytes as PERF.md section 1; MoE: distinct active experts).",
        "Peer cells: `us, % of copy, mmkit speed-up (peer us / mmkit us)`. Roofline: mmkit's format's bytes at the copy "
        "bandwidth. MoE peers are bf16 with routing pre-sorted (sort/gather not timed).",
        "",
    ]
    head = ["shape (N x K; MoE E x N x K)", "M / T", "mmkit kernel", "mmkit us", "mmkit % copy", "roofline us"]
    head += [PEER_LABEL[k] for k in used] + ["other mmkit kernels"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    notes = {}
    for r in rows:
        mk = r["mmkit"]
        x = f"M={r['x']}" if r["kind"] == "dense" else f"T={r['x']}"
        cells = [r["label"], x, mk["kernel"] if mk else "–", _fmt_us(mk["us"]) if mk else "–",
                 f"{mk['pct_copy']:.0f}%" if mk and mk.get("pct_copy") is not None else "–",
                 _fmt_us(r["roofline_us"])]
        for k in used:
            p = r["peers"].get(k)
            if p is None:
                cells.append("")
            elif p["status"] != "ok":
                notes.setdefault(k, p["status"])
                cells.append("n/a")
            else:
                c = f"{_fmt_us(p['us'])}, {p['pct_copy']:.0f}%"
                if mk and mk.get("us"):
                    c += f", **{p['us'] / mk['us']:.2f}x**"
                cells.append(c)
        cells.append("; ".join(f"{o['kernel']} {_fmt_us(o['us'])} us ({o['pct_copy']:.0f}%)" for o in r["others"]
                               if o.get("us")) or "")
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        for k, s in notes.items():
            lines.append(f"* {PEER_LABEL[k]}: {s}")
    xc = [r for r in doc["measurements"] if r["impl"] == "mmkit_bench_cublas_bf16" and r.get("us")]
    if xc:
        lines.append("")
        lines.append("cuBLAS bf16 as timed by the mmkit bench (C++, same shapes): " +
                     ", ".join(f"M={r['M']} {_fmt_us(r['us'])} us" for r in xc) + ".")
    if doc.get("mmkit_copy_gbs"):
        lines.append(f"mmkit bench's own copy measurement: {doc['mmkit_copy_gbs']:.0f} GB/s "
                     f"({'same invocation' if doc.get('mmkit_source') == 'bench' else 'from ' + str(doc.get('mmkit_source'))}).")
    if doc.get("warnings"):
        lines.append("")
        lines += [f"* warning: {w}" for w in doc["warnings"]]
    return "\n".join(lines) + "\n"


def render_plot(doc, path):
    """roofline.png: achieved GB/s vs M (dense) or T (MoE), log x, one series per implementation,
    the copy bandwidth as a line. Returns a reason string when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return _err(e)
    copy = doc["copy_gbs"]
    recs = [r for r in doc["measurements"] if r.get("status") == "ok" and r.get("gbs")]
    panels = []
    for nk in (DENSE_MAIN, DENSE_FFN):
        case = case_of("dense", *nk)
        if any(r["case"] == case for r in recs):
            panels.append((case, f"dense {nk[0]}x{nk[1]} (mmkit: {HEADLINE_FMT})", "rows M"))
    for label, E, N, K, topk in MOE_SHAPES:
        case = case_of("moe", N, K, label=label)
        if any(r["case"] == case for r in recs):
            panels.append((case, f"{label}: {E}x{N}x{K}, top-{topk} (mmkit: 4-bit g64)", "tokens T"))
    if not panels:
        return "no measurements to plot"
    cols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(7.5 * cols, 4.8 * nrows), squeeze=False)
    for ax, (case, title, xlabel) in zip(axes.flat, panels):
        series = {}
        for r in recs:
            if r["case"] != case or (r["impl"] == "mmkit" and r["format"] != HEADLINE_FMT):
                continue
            if r["impl"] == "mmkit":  # the dispatched kernels as one series, comparison kernels apart
                name = "mmkit (dispatched)" if r.get("dispatched") else f"mmkit {r['kernel']} (not dispatched)"
            else:
                name = PEER_LABEL.get(r["impl"], r["impl"])
            x = r["M"] if r["kind"] == "dense" else r["T"]
            series.setdefault(name, []).append((x, r["gbs"]))
        for name in sorted(series, key=lambda s: (not s.startswith("mmkit"), s)):
            pts = sorted(series[name])
            style = "-o" if name.startswith("mmkit") else "--s"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name, markersize=4)
        ax.axhline(copy, color="k", linewidth=1)
        ax.text(0.01, copy, f" copy {copy:.0f} GB/s", transform=ax.get_yaxis_transform(), va="bottom", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(xlabel + " (log)")
        ax.set_ylabel("achieved GB/s")
        ax.set_ylim(0, copy * 1.12)
        sec = ax.secondary_yaxis("right", functions=(lambda g: 100.0 * g / copy, lambda p: p * copy / 100.0))
        sec.set_ylabel("% of copy bandwidth")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{doc['device']}: mmkit vs peers ({doc.get('date', '')}, bf16 activations, cold L2)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_outputs(doc, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "peers.json"), "w") as f:
        json.dump(_json_safe(doc), f, indent=1)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(render_table(doc))
    why = render_plot(doc, os.path.join(out_dir, "roofline.png"))
    if why:
        log(f"gpu_peers: roofline.png skipped (matplotlib unavailable: {why}); "
            f"render it later with: python3 bench/gpu_peers.py --plot-only {out_dir}")
    return why is None


def _json_safe(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


# ---- main run ------------------------------------------------------------------------------------
def import_gpu_stack():
    """(torch, numpy) or exit 2 with one line saying what is missing."""
    try:
        import numpy as np
    except Exception as e:  # noqa: BLE001
        print(f"gpu_peers: numpy is missing ({_err(e)}); it is needed for the MoE routings", file=sys.stderr)
        sys.exit(EXIT_MISSING)
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        print(f"gpu_peers: PyTorch is missing ({_err(e)}); run this on the GPU machine (PyTorch with CUDA)",
              file=sys.stderr)
        sys.exit(EXIT_MISSING)
    try:
        ok = torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception:  # noqa: BLE001
        ok = False
    if not ok:
        print(f"gpu_peers: no CUDA GPU visible to PyTorch {torch.__version__} "
              f"(built with CUDA {torch.version.cuda}); nothing measured", file=sys.stderr)
        sys.exit(EXIT_MISSING)
    return torch, np


def measure(args):
    torch, np = import_gpu_stack()
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    warnings, status = [], 0

    # mmkit first, alone on the GPU (this process has not touched it yet).
    mmkit_doc, mmkit_source = None, None
    if args.mmkit_bench:
        jpath, err = run_mmkit_bench(args.mmkit_bench, args.out, args.quick)
        if err:
            warnings.append(f"mmkit bench: {err}")
            log(f"gpu_peers: {warnings[-1]}")
            status = 1
        else:
            mmkit_source = "bench"
            with open(jpath) as f:
                mmkit_doc = load_mmkit_json(f.read())
    elif args.mmkit_json:
        try:
            with open(args.mmkit_json) as f:
                mmkit_doc = load_mmkit_json(f.read())
        except (OSError, ValueError) as e:
            print(f"gpu_peers: cannot read the mmkit JSON {args.mmkit_json}: {_err(e)}", file=sys.stderr)
            return EXIT_MISSING
        mmkit_source = args.mmkit_json
    else:
        warnings.append("no mmkit numbers (pass --mmkit-bench or --mmkit-json): peers only")
        log(f"gpu_peers: {warnings[-1]}")

    gpu = Gpu(torch, args.quick, args.iters)
    log(f"gpu_peers: {gpu.name}, {gpu.sms} SMs, L2 {gpu.l2 >> 20} MiB, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda})")
    copy_gbs = gpu.copy_gbs()
    log(f"gpu_peers: device-to-device copy {copy_gbs:.1f} GB/s (read + write, 512 MiB, median of 20)")

    records = []
    if mmkit_doc:
        if mmkit_doc.get("device") and mmkit_doc["device"] != gpu.name:
            warnings.append(f"mmkit JSON is from {mmkit_doc['device']}, peers from {gpu.name}")
        mc = mmkit_doc.get("copy_gbs")
        if mc and abs(mc / copy_gbs - 1) > 0.05:
            warnings.append(f"mmkit bench's copy bandwidth {mc:.0f} GB/s differs from this run's {copy_gbs:.0f} GB/s "
                            "by > 5%; % of copy here uses this run's")
        records += mmkit_records(mmkit_doc, copy_gbs)
    for w in warnings:
        if "mmkit JSON is from" in w or "differs" in w:
            log(f"gpu_peers: warning: {w}")

    # Shapes: the bench's own lists where its JSON has them.
    head_ms = sorted({r["M"] for r in records if r["impl"] == "mmkit" and r["format"] == HEADLINE_FMT
                      and (r["N"], r["K"]) == DENSE_MAIN})
    Ms = head_ms or (M_QUICK if args.quick else M_FULL)
    small = PEER_SMALL_M_QUICK if args.quick else PEER_SMALL_M_FULL
    moe_ts = sorted({r["T"] for r in records if r["impl"] == "mmkit" and r["kind"] == "moe"})
    Ts = moe_ts or (MOE_T_QUICK if args.quick else MOE_T_FULL)
    which = set(args.peers.split(","))

    ms = Measure(gpu, copy_gbs, t0)
    N, K = DENSE_MAIN
    jobs = []  # each peer function frees its weights on return
    if "cublas" in which:
        jobs += [(peer_cublas, (N, K, Ms)), (peer_cublas, (*DENSE_FFN, small))]
    if "tinygemm" in which:
        for gs in (128, 64) if not args.quick else (128,):
            jobs += [(peer_tinygemm, (N, K, gs, small)), (peer_tinygemm, (*DENSE_FFN, gs, small))]
    if which & {"grouped", "loop"}:
        jobs += [(peer_moe, (np, label, E, n, k, topk, Ts, which)) for label, E, n, k, topk in MOE_SHAPES]
    for fn, job_args in jobs:
        fn(ms, gpu, *job_args)
        torch.cuda.empty_cache()
    records += ms.records

    doc = dict(device=gpu.name, sms=gpu.sms, l2_bytes=gpu.l2, torch=torch.__version__, cuda=torch.version.cuda,
               date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), quick=bool(args.quick), copy_gbs=copy_gbs,
               mmkit_copy_gbs=(mmkit_doc or {}).get("copy_gbs"), mmkit_source=mmkit_source,
               protocol=("bf16 activations; cold L2 (rotated weight copies, >= 2x L2 between reuses, else a 2x-L2 write "
                         "before each call); per-call CUDA events, launch included; median of >= 30 after warm-up; "
                         "% of the same run's device-to-device copy bandwidth"),
               warnings=warnings, measurements=records)
    plotted = write_outputs(doc, args.out)
    log(f"gpu_peers: wrote {args.out}/peers.json, table.md{', roofline.png' if plotted else ''} "
        f"in {time.time() - t0:.0f} s")
    sys.stdout.write(render_table(doc))
    return status


# ---- self-test ------------------------------------------------------------------------------------
_SYNTH_MMKIT = """{
  "device": "NVIDIA H100 80GB HBM3", "driver": 13000, "runtime": 13000,
  "copy_gbs": 3000,
  "results": [
    {"name": "affine b4 g64 [cuda_qmv1_mma]", "M": 1, "N": 8192, "K": 8192, "median_us": 15.0, "gbs": 2518.7, "pct_copy": 84.0, "tflops": 8.9, "idle_call_us": 20.1, "check_max_abs_diff": 0.001},
    {"name": "affine b4 g64 [cuda_qmv]", "M": 1, "N": 8192, "K": 8192, "median_us": 22.0, "gbs": 1717.3, "pct_copy": 57.2, "tflops": 6.1, "idle_call_us": 27.0, "check_max_abs_diff": -1},
    {"name": "affine b4 g64 [cuda_qmm_mma]", "M": 256, "N": 8192, "K": 8192, "median_us": 40.0, "gbs": 1050.0, "pct_copy": 35.0, "tflops": 860.0, "idle_call_us": 45.0, "check_max_abs_diff": nan},
    {"name": "mxfp4 [cuda_qmv1_mma]", "M": 1, "N": 8192, "K": 8192, "median_us": 14.0, "gbs": 2550.0, "pct_copy": 85.0, "tflops": 9.5, "idle_call_us": 19.0, "check_max_abs_diff": -nan},
    {"name": "qwen3-30b-a3b gate+up T=1 [cuda_qmm_gather_grouped]", "M": 8, "N": 1536, "K": 2048, "median_us": 7.0, "gbs": 2030.0, "pct_copy": 67.7, "tflops": 7.2, "idle_call_us": 11.0, "check_max_abs_diff": 0.0},
    {"name": "qwen3-30b-a3b gate+up T=1 [cuda_qmv1_mma]", "M": 8, "N": 1536, "K": 2048, "median_us": 9.0, "gbs": 1579.0, "pct_copy": 52.6, "tflops": 5.6, "idle_call_us": 13.0, "check_max_abs_diff": 0.0},
    {"name": "qwen3-30b-a3b down T=64 [cuda_qmm_gather_grouped]", "M": 512, "N": 2048, "K": 768, "median_us": 40.0, "gbs": 2700.0, "pct_copy": 90.0, "tflops": 40.3, "idle_call_us": 44.0, "check_max_abs_diff": inf},
    {"name": "cuBLAS bf16 (peer)", "M": 1, "N": 8192, "K": 8192, "median_us": 61.0, "gbs": 2200.0, "pct_copy": 73.3, "tflops": 2.2, "idle_call_us": 66.0, "check_max_abs_diff": -1}
  ]
}
"""


def self_test(keep_dir=None):
    """Byte accounting against PERF.md, the bench-JSON parser, table and plot on synthetic data."""
    fails = []

    def check(cond, what):
        if not cond:
            fails.append(what)

    def near(a, b, rel=0.02):
        return abs(a - b) <= rel * abs(b)

    # PERF.md section 1 / 3: bytes per weight and rooflines at 3.01 TB/s (H100).
    for f, bpw in [("affine b4 g32", 0.625), ("affine b4 g64", 0.5625), ("affine b4 g128", 0.53125),
                   ("affine b2 g64", 0.3125), ("affine b3 g64", 0.4375), ("affine b8 g64", 1.0625),
                   ("mxfp4", 0.53125), ("nvfp4", 0.5625), ("mxfp8", 1.03125), ("int4 g128", 0.53125), ("bf16", 2.0)]:
        check(bytes_per_weight(f) == bpw, f"bytes/weight {f}")
    bw = 3.01e12
    check(near(dense_bytes("affine b4 g64", 1, 14336, 4096) / bw * 1e6, 11.0, 0.01), "roofline 14336x4096 4-bit M=1")
    check(near(dense_bytes("affine b4 g64", 1, 8192, 8192) / bw * 1e6, 12.6, 0.01), "roofline 8192^2 4-bit M=1")
    check(near(dense_bytes("affine b4 g64", 1, 8192, 8192) / 1e6, 37.8, 0.01), "bytes 8192^2 4-bit M=1 (cuda.md)")
    check(near(moe_bytes("bf16", 8, 1, 8, 1536, 2048) / bw * 1e6, 16.7, 0.01), "MoE gate+up bf16 roofline T=1")
    check(near(moe_bytes("affine b4 g64", 8, 1, 8, 1536, 2048) / bw * 1e6, 4.7, 0.02), "MoE gate+up 4-bit T=1")
    d64 = expected_distinct(128, 8, 64)
    check(near(moe_bytes("bf16", d64, 64, 8, 1536, 2048) / bw * 1e6, 266, 0.02), "MoE gate+up bf16 roofline T=64")
    check(near(moe_bytes("affine b4 g64", d64, 64, 8, 1536, 2048) / bw * 1e6, 75, 0.02), "MoE gate+up 4-bit T=64")

    # The bench's JSON (bare nan/inf included) into records.
    copy = 3000.0
    mk = mmkit_records(load_mmkit_json(_SYNTH_MMKIT), copy)
    check(len(mk) == 8, f"parsed {len(mk)} mmkit rows, want 8")
    disp = [r for r in mk if r["impl"] == "mmkit" and r["dispatched"]]
    check([r["kernel"] for r in disp] == ["cuda_qmv1_mma", "cuda_qmm_mma", "cuda_qmv1_mma", "cuda_qmm_gather_grouped",
                                         "cuda_qmm_gather_grouped"], "dispatched rows")
    moe1 = next(r for r in mk if r.get("T") == 1 and r["dispatched"])
    check(moe1["rows"] == 8 and moe1["E"] == 128 and moe1["N"] == 1536, "MoE row fields")
    check(near(mk[0]["pct_copy"], 100 * 2518.7 / copy, 1e-6), "pct recomputed vs this run's copy")

    # Synthetic peers: cuBLAS 4x slower than mmkit at M=1, an unavailable tinygemm g64, MoE peers.
    def peer(impl, kind, us, **kw):
        if kind == "dense":
            N, K, M = kw["N"], kw["K"], kw["M"]
            fmt = "bf16" if "tinygemm" not in impl else f"int4 g{impl[-3:].lstrip('g')}"
            r = dict(impl=impl, name=PEER_LABEL[impl], kernel="x", kind="dense", format=fmt, M=M, N=N, K=K,
                     case=case_of("dense", N, K), shape=shape_of("dense", N, K), source="synthetic",
                     bytes=dense_bytes(fmt, M, N, K), flops=2.0 * M * N * K, us=us, idle_call_us=us and us + 5, status="ok")
        else:
            label, E, N, K, topk = MOE_SHAPES[kw["moe"]]
            T = kw["T"]
            d = expected_distinct(E, topk, T)
            r = dict(impl=impl, name=PEER_LABEL[impl], kernel="x", kind="moe", format="bf16", T=T, E=E, topk=topk,
                     rows=T * topk, N=N, K=K, case=case_of("moe", N, K, label=label), shape=shape_of("moe", N, K, E, topk),
                     source="synthetic", distinct_experts=d, bytes=moe_bytes("bf16", d, T, topk, N, K),
                     flops=2.0 * T * topk * N * K, us=us, idle_call_us=us and us + 5, status="ok")
        if us is None:
            r["status"] = "unavailable: RuntimeError: synthetic"
        return finish_record(r, copy)

    peers = [peer("cublas_bf16", "dense", 60.0, N=8192, K=8192, M=1),
             peer("cublas_bf16", "dense", 61.0, N=8192, K=8192, M=256),
             peer("cublas_bf16", "dense", 58.0, N=14336, K=4096, M=1),
             peer("tinygemm_int4_g128", "dense", 26.8, N=8192, K=8192, M=1),
             peer("tinygemm_int4_g64", "dense", None, N=8192, K=8192, M=1),
             peer("tinygemm_int4_g128", "dense", 530.0, N=8192, K=8192, M=128),
             peer("grouped_mm_bf16", "moe", 46.8, moe=0, T=1),
             peer("expert_loop_bf16", "moe", 187.0, moe=0, T=1),
             peer("grouped_mm_bf16", "moe", 300.0, moe=1, T=64)]
    doc = dict(device="NVIDIA H100 80GB HBM3 (synthetic)", torch="synthetic", date="self-test", quick=True,
               copy_gbs=copy, mmkit_copy_gbs=3000.0, mmkit_source="bench", warnings=[], measurements=mk + peers)
    table = render_table(doc)
    check("**4.00x**" in table, "cuBLAS/mmkit speed-up 60/15 = 4.00x in the table")
    check("**6.69x**" in table, "grouped_mm/mmkit speed-up 46.8/7 = 6.69x in the table")
    check("unavailable: RuntimeError: synthetic" in table, "unavailable peer noted")
    check("cuda_qmv 22.0 us" in table, "other mmkit kernel listed")
    check("14336x4096" in table and "| M=128 |" in table, "peer-only rows present")
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln]
    widths = {ln.count("|") for ln in rows}
    check(len(widths) == 1, f"table rows have equal column counts ({widths})")

    out = keep_dir or tempfile.mkdtemp(prefix="gpu_peers_selftest_")
    plotted = write_outputs(doc, out)
    back = json.load(open(os.path.join(out, "peers.json")))
    check(back["copy_gbs"] == copy and len(back["measurements"]) == len(mk) + len(peers), "peers.json round trip")
    check(render_table(back) == table, "table from peers.json equals the table from memory")
    if plotted:
        check(os.path.getsize(os.path.join(out, "roofline.png")) > 10000, "roofline.png written")
    print(table)
    if fails:
        print("gpu_peers self-test FAILED:\n  " + "\n  ".join(fails), file=sys.stderr)
        return 1
    print(f"gpu_peers self-test passed ({'with' if plotted else 'without'} the PNG; files in {out})", file=sys.stderr)
    return 0


def plot_only(out_dir):
    path = os.path.join(out_dir, "peers.json")
    try:
        doc = json.load(open(path))
    except OSError as e:
        print(f"gpu_peers: cannot read {path}: {e.strerror}", file=sys.stderr)
        return EXIT_MISSING
    why = render_plot(doc, os.path.join(out_dir, "roofline.png"))
    if why:
        print(f"gpu_peers: cannot render roofline.png: matplotlib unavailable ({why})", file=sys.stderr)
        return EXIT_MISSING
    print(f"gpu_peers: wrote {os.path.join(out_dir, 'roofline.png')}", file=sys.stderr)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="mmkit's CUDA quantized matmuls beside cuBLAS bf16, torch int4 tinygemm, torch._grouped_mm and a "
                    "per-expert loop, in one run, as % of the same run's copy bandwidth (shared/PERF.md).",
        epilog="Example (GPU machine): python3 bench/gpu_peers.py --mmkit-bench "
               "build/ci/src/cuda/mmkit_cuda_gemv_bench --out $OUT/peers")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--mmkit-bench", metavar="PATH", help="mmkit_cuda_gemv_bench binary: run it (with --json into --out)")
    src.add_argument("--mmkit-json", metavar="PATH", help="an existing JSON written by mmkit_cuda_gemv_bench --json")
    ap.add_argument("--out", metavar="DIR", help="output folder: peers.json, table.md, roofline.png")
    ap.add_argument("--quick", action="store_true", help="fewer shapes and iterations (< 60 s on an H100); "
                    "passes --quick to the mmkit bench")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per case (>= 30; default 100, quick 30)")
    ap.add_argument("--peers", default="cublas,tinygemm,grouped,loop",
                    help="comma list of peers to time (default: cublas,tinygemm,grouped,loop)")
    ap.add_argument("--plot-only", metavar="DIR", help="render DIR/roofline.png from DIR/peers.json and exit")
    ap.add_argument("--self-test", action="store_true", help="check byte accounting, parser, table and plot on "
                    "synthetic data (no GPU needed)")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test(args.out)
    if args.plot_only:
        return plot_only(args.plot_only)
    if not args.out:
        ap.error("--out DIR is required (or --plot-only DIR / --self-test)")
    bad = set(args.peers.split(",")) - {"cublas", "tinygemm", "grouped", "loop"}
    if bad:
        ap.error(f"unknown peers: {','.join(sorted(bad))}")
    if args.iters is not None and args.iters < 30:
        ap.error("--iters must be >= 30 (median of >= 30 timed calls)")
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
