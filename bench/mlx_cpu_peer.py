#!/usr/bin/env python3
"""MLX's CPU backend on the cases of bench/cpu_bench.cpp (same case names), for
the side-by-side table of bench/run_cpu.sh. Writes {"cases": {name: median_us}}.

Weights are random codes with realistic scales (as the C++ harness builds them),
rotated over copies totalling >= 3x the L3 for quantized_matmul; MoE routing is
drawn fresh per call. MLX's x86 quantized kernels are single-threaded and
slow, so the slowest cases run once (--slow adds quantized_matmul M = 256).

Usage: mlx_cpu_peer.py [--json out.json] [--quick] [--slow]
"""
import argparse
import json
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="mlx_cpu.json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--slow", action="store_true")
    args = ap.parse_args()
    try:
        import mlx.core as mx
    except ImportError as e:  # reported, not fatal: the C++ table leaves the column empty
        print(f"mlx_cpu_peer: mlx is not importable ({e}); try: pip install 'mlx[cpu]'", file=sys.stderr)
        json.dump({"mlx_version": None, "error": str(e), "cases": {}}, open(args.json, "w"), indent=2)
        return 0
    mx.set_default_device(mx.cpu)
    cases = {}

    def timed(name, fn, reps, budget_s=20.0):
        fn(0)  # warm-up
        ts = []
        start = time.perf_counter()
        for i in range(reps):
            t0 = time.perf_counter()
            fn(i + 1)
            ts.append((time.perf_counter() - t0) * 1e6)
            if time.perf_counter() - start > budget_s:
                break
        cases[name] = statistics.median(ts)
        print(f"  {name}: {cases[name] / 1e3:.2f} ms ({len(ts)} calls)", file=sys.stderr)

    def rand_q(E, rows, cols, bits, gs, dt, mode="affine", seed=0):
        mx.random.seed(seed)
        shape = (E, rows, cols * bits // 32) if E else (rows, cols * bits // 32)
        w = mx.random.randint(0, 2**31 - 1, shape, dtype=mx.uint32) * 2 + mx.random.randint(0, 2, shape, dtype=mx.uint32)
        gshape = shape[:-1] + (cols // gs,)
        if mode == "affine":
            r = 0.02 + 0.01 * mx.random.uniform(shape=gshape)
            s = (2 * r / ((1 << bits) - 1)).astype(dt)
            b = (-r).astype(dt)
        else:
            s = mx.random.randint(118, 122, gshape, dtype=mx.uint8)
            b = None
        mx.eval(w, s, *( [b] if b is not None else []))
        return w, s, b

    l3 = 32 << 20
    N, K = 14336, 4096
    qmm_cases = [("affine", 4, 64, mx.float32, [1, 2, 4, 8]), ("affine", 4, 64, mx.bfloat16, [1, 8]),
                 ("affine", 4, 128, mx.float32, [1]), ("affine", 8, 64, mx.float32, [1]),
                 ("mxfp4", 4, 32, mx.float32, [1])]
    if args.slow:
        qmm_cases[0][4].append(256)
    if args.quick:
        qmm_cases = qmm_cases[:2]
    for mode, bits, gs, dt, Ms in qmm_cases:
        name_f = f"affine{bits}g{gs}" if mode == "affine" else mode
        sbytes = 4 if dt == mx.float32 else 2
        wbytes = N * K * (bits / 8 + (2 * sbytes / gs if mode == "affine" else 1 / gs))
        copies = max(2, int(-(-3 * l3 // wbytes)))
        try:
            qs = [rand_q(0, N, K, bits, gs, dt, mode, seed=c) for c in range(copies)]
        except Exception as e:  # a mode this MLX lacks
            print(f"  skip {name_f}: {e}", file=sys.stderr)
            continue
        dname = "float32" if dt == mx.float32 else "bfloat16"
        for M in Ms:
            x = mx.random.normal((M, K)).astype(dt)
            mx.eval(x)

            def call(i, x=x):
                w, s, b = qs[i % copies]
                kw = dict(transpose=True, group_size=gs, bits=bits)
                if mode != "affine":
                    kw["mode"] = mode
                mx.eval(mx.quantized_matmul(x, w, s, b, **kw))

            timed(f"qmm {name_f} {dname} M={M} {N}x{K}", call, 1 if M >= 64 else 5)

    moe = [("qwen3-30b-a3b", 128, 8, 2048, 768, [1, 8]), ("gpt-oss-120b", 128, 4, 2880, 2880, [1]),
           ("mixtral-8x7b", 8, 2, 4096, 14336, [1])]
    if args.quick:
        moe = moe[:1]
    for model, E, k, H, I, Ts in moe:
        w, s, b = rand_q(E, 2 * I, H, 4, 64, mx.bfloat16, seed=1)
        for T in Ts:
            import random
            rng = random.Random(17)
            sets = []
            for _ in range(8):
                lhs, rhs = [], []
                for t in range(T):
                    for e in rng.sample(range(E), k):
                        lhs.append(t)
                        rhs.append(e)
                sets.append((mx.array(lhs, dtype=mx.uint32), mx.array(rhs, dtype=mx.uint32)))
            x = (mx.random.normal((T, 1, H)) * 0.5).astype(mx.bfloat16)
            mx.eval(x)

            def call(i, x=x, sets=sets):
                lhs, rhs = sets[i % len(sets)]
                mx.eval(mx.gather_qmm(x, w, s, b, lhs_indices=lhs, rhs_indices=rhs, transpose=True, group_size=64,
                                      bits=4))

            timed(f"gather_qmm {model} bf16 T={T} unsorted", call, 5)
        del w, s, b

    for mode, bits, gs, odt, oname in [("affine", 4, 64, mx.float32, "float32"), ("affine", 4, 64, mx.bfloat16, "bfloat16"),
                                       ("mxfp4", 4, 32, mx.bfloat16, "bfloat16")]:
        R, C = 14336, 4096
        name_f = f"affine{bits}g{gs}" if mode == "affine" else mode
        w, s, b = rand_q(0, R, C, bits, gs, mx.bfloat16 if mode == "affine" else mx.bfloat16, mode, seed=9)
        if mode == "affine" and odt == mx.float32:
            s, b = s.astype(mx.float32), b.astype(mx.float32)

        def call(i, w=w, s=s, b=b, mode=mode, gs=gs, bits=bits, odt=odt):
            kw = dict(group_size=gs, bits=bits)
            if mode != "affine":
                kw["mode"] = mode
            y = mx.dequantize(w, s, b, **kw)
            mx.eval(y.astype(odt) if y.dtype != odt else y)

        try:
            timed(f"dequantize {name_f} -> {oname} {R}x{C}", call, 5)
        except Exception as e:
            print(f"  skip dequantize {name_f}: {e}", file=sys.stderr)

    for mode, bits, gs in [("affine", 4, 64), ("mxfp4", 4, 32)]:
        for dt, dname in [(mx.float32, "float32"), (mx.bfloat16, "bfloat16")]:
            name_f = f"affine{bits}g{gs}" if mode == "affine" else mode
            w = mx.random.normal((4096, 4096)).astype(dt)
            mx.eval(w)

            def call(i, w=w, mode=mode, gs=gs, bits=bits):
                kw = dict(group_size=gs, bits=bits)
                if mode != "affine":
                    kw["mode"] = mode
                mx.eval(*mx.quantize(w, **kw))

            try:
                timed(f"quantize {dname} -> {name_f} 4096x4096", call, 3)
            except Exception as e:
                print(f"  skip quantize {name_f}: {e}", file=sys.stderr)

    json.dump({"mlx_version": mx.__version__, "cases": cases}, open(args.json, "w"), indent=2)
    print(f"mlx_cpu_peer: wrote {args.json} ({len(cases)} cases, mlx {mx.__version__})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
