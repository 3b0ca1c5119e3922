"""Latency of the editing page, and a small load test, against 127.0.0.1 only.

    python benchmarks/app_latency.py --model tiny                 # fixture 05's 128 px model
    python benchmarks/app_latency.py --model demo --demo workdirs/demo
    python benchmarks/app_latency.py --model full256 --n_iters 5  # official widths, random
    python benchmarks/app_latency.py --model full256 --precision bf16 --uploads 1 \
        --renders 30 --concurrent 0                                # slider moves alone

The app runs in this process (engine warm-up, then uvicorn on a free 127.0.0.1 port in a
thread); the client is plain HTTP from threads, so the figures include the HTTP, PNG and
JSON layers but not a browser's drawing. Measured:
  upload -> reconstruction   POST /api/upload of a new image, poll /api/job every 10 ms
                             until done, GET the reconstruction PNG (median of --uploads)
  slider move -> new image   POST /api/render with a new InterFaceGAN factor until the PNG
                             is read (median and 90th percentile of --renders)
  load                       --concurrent requests at once (renders of cached inversions and
                             uploads of new images, each waited for until its inversion is
                             done), each bounded by --request_timeout_s: answered / lost,
                             wall time, peak RSS of the process.
Prints one markdown table and the `uptime` load average before and after.
"""
import argparse
import io
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def tiny_inverter(precision: str):
    from hyperstyle_jax.convert.hyperstyle import convert_hyperstyle, convert_w_encoder
    from hyperstyle_jax.inference import load_inverter

    d = tempfile.mkdtemp(prefix="app_latency_")
    e2e = os.path.join(ROOT, "tests", "fixtures", "05_e2e")
    convert_hyperstyle(os.path.join(e2e, "hyperstyle_e2e_default.pt"), f"{d}/hs",
                       log=lambda *a: None)
    convert_w_encoder(os.path.join(e2e, "w_encoder_narrow_psp.pt"), f"{d}/we",
                      log=lambda *a: None)
    return load_inverter(f"{d}/hs", f"{d}/we", precision=precision)


def full_inverter(size: int, precision: str):
    """Official widths, random weights (benchmarks/invert.py's model), as an Inverter."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import jax
    from invert import build

    from hyperstyle_jax.inference import make_inverter

    model, frozen, hyper = build(size)
    to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)  # noqa: E731
    return make_inverter(model.config, to_np(frozen), to_np(hyper), precision=precision)


def photo(seed: int, hw) -> bytes:
    from PIL import Image

    r = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]] / max(hw)
    ch = [np.sin(6 * (xx * r.rand() + yy * r.rand()) + 6 * r.rand()) for _ in range(3)]
    arr = np.clip((np.stack(ch, -1) * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def post_upload(base: str, data: bytes, name: str, timeout: float) -> dict:
    b = "----bench"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    req = urllib.request.Request(base + "/api/upload", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={b}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())["items"][0]


def wait_job(base: str, job: str, deadline: float) -> dict:
    while True:
        with urllib.request.urlopen(f"{base}/api/job/{job}?since=999", timeout=30) as r:
            j = json.loads(r.read())
        if j["status"] in ("done", "error") or time.time() > deadline:
            return j
        time.sleep(0.01)  # the page polls every 150 ms; finer here to time the server


def upload_to_reconstruction(base, data, name, timeout) -> float:
    t0 = time.perf_counter()
    item = post_upload(base, data, name, timeout)
    if "error" in item:
        raise RuntimeError(item["error"])
    j = wait_job(base, item["job"], time.time() + timeout)
    if j["status"] != "done":
        raise RuntimeError(f"job {j['status']}: {j.get('error')}")
    with urllib.request.urlopen(f"{base}/api/image/{item['key']}/reconstruction.png",
                                timeout=timeout) as r:
        r.read()
    return time.perf_counter() - t0, item["key"]


def render(base, key, direction, factor, timeout) -> float:
    t0 = time.perf_counter()
    payload = json.dumps({"key": key, "edits": {"interfacegan": {direction: factor}}}).encode()
    req = urllib.request.Request(base + "/api/render", data=payload, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = r.read()
    if not data.startswith(b"\x89PNG"):
        raise RuntimeError("not a PNG")
    return time.perf_counter() - t0


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main():
    from hyperstyle_jax.inference import add_precision_argument

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("tiny", "demo", "full256"), default="tiny")
    p.add_argument("--demo", help="demo workdir (with --model demo)")
    add_precision_argument(p)  # the page's option, passed to load_inverter / make_inverter
    p.add_argument("--n_iters", type=int, default=0, help="0: 3 (demo), 2 (tiny), 5 (full256)")
    p.add_argument("--uploads", type=int, default=3)
    p.add_argument("--renders", type=int, default=10)
    p.add_argument("--concurrent", type=int, default=20)
    p.add_argument("--concurrent_uploads", type=int, default=4,
                   help="of the concurrent requests, how many are new uploads (inversions)")
    p.add_argument("--request_timeout_s", type=float, default=600.0)
    args = p.parse_args()
    if args.uploads < 1:
        p.error("--uploads must be >= 1 (the renders edit the first upload)")
    load_before = os.getloadavg()

    import uvicorn

    from hyperstyle_jax.app.engine import Engine
    from hyperstyle_jax.app.server import create_app

    t0 = time.perf_counter()
    if args.model == "tiny":
        inverter, n_iters = tiny_inverter(args.precision), args.n_iters or 2
    elif args.model == "demo":
        from hyperstyle_jax.inference import load_inverter

        exp = os.path.join(args.demo, "export")
        inverter = load_inverter(f"{exp}/hyperstyle", f"{exp}/w_encoder",
                                 precision=args.precision)
        n_iters = args.n_iters or 3
    else:
        inverter, n_iters = full_inverter(256, args.precision), args.n_iters or 5
    g = inverter.generator_config
    r = np.random.RandomState(0)
    direction = r.randn(1, g.style_dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    engine = Engine(inverter, n_iters=n_iters, directions={"d": direction})
    t_load = time.perf_counter() - t0
    engine.warm_up()
    t_warm = time.perf_counter() - t0 - t_load

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, max_pending=64), host="127.0.0.1",
                                           port=port, log_level="warning", access_log=False))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    hw = tuple(inverter.input_hw)
    to = args.request_timeout_s

    ups, keys = [], []
    for i in range(args.uploads):
        dt, key = upload_to_reconstruction(base, photo(i, hw), f"p{i}.png", to)
        ups.append(dt)
        keys.append(key)
    rends = [render(base, keys[0], "d", float(k % 7) - 3, to) for k in range(args.renders)]

    # ---- load: all requests started together; each one waited for (bounded)
    results, lock = [], threading.Lock()
    n_up = min(args.concurrent_uploads, args.concurrent)

    def one(i):
        try:
            if i < n_up:
                dt, _ = upload_to_reconstruction(base, photo(1000 + i, hw), f"c{i}.png", to)
                kind = "upload"
            else:
                dt, kind = render(base, keys[i % len(keys)], "d", float(i % 9) - 4, to), "render"
            out = (kind, True, dt, "")
        except Exception as e:  # noqa: BLE001 -- counted as lost
            out = ("?", False, 0.0, f"{type(e).__name__}: {e}")
        with lock:
            results.append(out)

    t_load0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.concurrent)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(to + 30)
    wall = time.perf_counter() - t_load0
    answered = sum(1 for r in results if r[1])
    lost = args.concurrent - answered
    with urllib.request.urlopen(base + "/api/health", timeout=30) as r:
        health = json.loads(r.read())
    server.should_exit = True
    th.join(10)
    load_after = os.getloadavg()

    def ms(xs):
        return f"{1000 * statistics.median(xs):.0f} ms" if xs else "-"

    def p90(xs):  # nearest rank: with 10 renders, the 9th fastest
        return ms([sorted(xs)[max(0, -(-9 * len(xs) // 10) - 1)]]) if xs else "-"

    lat_r = [r[2] for r in results if r[1] and r[0] == "render"]
    lat_u = [r[2] for r in results if r[1] and r[0] == "upload"]
    print(f"\nmodel: {args.model} ({g.size} px, style_dim {g.style_dim}, input {hw[0]}x{hw[1]}, "
          f"{n_iters} iterations, {args.precision}); load {t_load:.1f} s, compile + warm-up "
          f"{t_warm:.1f} s")
    print("| measure | median | p90 | min | max |")
    print("|---|---:|---:|---:|---:|")
    print(f"| upload -> reconstruction ({len(ups)} new images) | {ms(ups)} | {p90(ups)} | "
          f"{ms([min(ups)])} | {ms([max(ups)])} |")
    print(f"| slider move -> new image ({len(rends)} renders) | {ms(rends)} | {p90(rends)} | "
          f"{ms([min(rends)])} | {ms([max(rends)])} |")
    print(f"\nload test: {args.concurrent} concurrent requests ({n_up} uploads, "
          f"{args.concurrent - n_up} renders): {answered} answered, {lost} lost, wall "
          f"{wall:.1f} s; render latency median {ms(lat_r)} "
          f"max {ms([max(lat_r)]) if lat_r else '-'}"
          f"; upload->reconstruction median {ms(lat_u)} max {ms([max(lat_u)]) if lat_u else '-'}; "
          f"peak RSS {rss_mb():.0f} MB; cache {health['cached']} inversions, "
          f"{health['cache_bytes'] / 2 ** 20:.1f} MB")
    for r in results:
        if not r[1]:
            print("  lost:", r[3])
    print(f"load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} "
          f"{load_before[2]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f} "
          f"{load_after[2]:.2f}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
