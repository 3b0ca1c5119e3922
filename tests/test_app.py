"""The editing page (`python -m hyperstyle_jax.app`) in a real browser.

One server subprocess on a tiny converted model (fixture 05's 128 px HyperStyle and
narrow W-encoder; random InterFaceGAN directions and PCA file; StyleCLIP with a random
narrow CLIP and fixture 10's fs3 / S_mean_std; fixture 13's ReStyle-e4e and fine-tuned
generator as a domain), driven by Debian's chromium through Playwright. Never skipped:
a missing browser is a failure.

Set HYPERSTYLE_APP_SCREENSHOT=docs/app.png to write the edited page's screenshot there.
"""
import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from helpers import ROOT, free_port, quiet
from PIL import Image

from hyperstyle_jax.app.engine import EditSpec, UploadError
from hyperstyle_jax.app.inversion_cache import Inversion, InversionCache, content_key
from hyperstyle_jax.editing import EditError

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
F10 = os.path.join(HERE, "10_styleclip")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
N_ITERS = 2
MAX_UPLOAD_MB = 0.25
START_TIMEOUT_S = 600  # load, compile and warm up on a busy 2-core CPU


# ----------------------------------------------------------------------------- no server


def _inv(key, nbytes):
    return Inversion(key, key, np.zeros((nbytes,), np.uint8), np.zeros((0,), np.float32), [], [],
                     np.zeros((0,), np.float32))


def test_cache_is_bounded_lru():
    c = InversionCache(max_items=3, max_bytes=250)
    for k in "abc":
        c.put(_inv(k, 100))  # 300 bytes > 250: 'a' goes
    assert "a" not in c and len(c) == 2
    c.get("b")            # b is now the most recent
    c.put(_inv("d", 100))
    assert "c" not in c and "b" in c and "d" in c and c.evictions == 2
    c.put(_inv("big", 1000))  # alone over the bound: kept, everything older goes
    assert len(c) == 1 and "big" in c
    assert content_key(b"x", True) != content_key(b"x", False) == content_key(b"x", False)


def test_edit_spec_parsing():
    s = EditSpec.parse({"interfacegan": {"age": "1.5"}, "ganspace": "pc_0", "mix_alpha": 0.5})
    assert s.interfacegan == {"age": 1.5} and s.ganspace == "pc_0" and s.mix_alpha == 0.5
    for bad in [{"nope": 1}, {"alpha": "x"}, {"alpha": float("nan")}, {"interfacegan": 3}]:
        with pytest.raises(EditError):
            EditSpec.parse(bad)
    assert issubclass(UploadError, ValueError)


# ----------------------------------------------------------------------------- precision


@pytest.fixture(scope="module")
def engines(e2e_checkpoints):
    """The page's engine built from its command line, once per --precision (loaded, not
    compiled: `Engine.build` compiles on first use)."""
    from hyperstyle_jax.app.__main__ import build_engine, build_parser

    base = ["--checkpoint", e2e_checkpoints.hyperstyle(), "--w_encoder",
            e2e_checkpoints.w_encoder(), "--n_iters", "1"]
    out = {}
    for prec in ("fp32", "bf16"):
        args = build_parser().parse_args(base + (["--precision", prec] if prec != "fp32" else []))
        out[prec] = build_engine(args)
    return out


def test_precision_reaches_the_engine_and_its_info(engines):
    import jax.numpy as jnp

    for prec, eng in engines.items():  # fp32 is the default: no option given
        assert eng.inverter.model.precision == prec and eng.info()["precision"] == prec
    shw = engines["bf16"].inverter.hyper_vars["params"]["shared_weight_hypernet"]
    assert shw["w1"].dtype == jnp.bfloat16  # bf16 storage of the hypernet: load_inverter's


def test_bf16_render_is_close_to_fp32_and_not_equal(engines):
    """The renderer the engine compiles (`shared_delta_renderer(1)`), with offsets, in both
    precisions: within a few % (mean relative error) and not the same numbers."""
    inv = engines["fp32"].inverter
    r = np.random.RandomState(0)
    codes = np.asarray(inv.frozen["latent_avg"], np.float32)
    codes = (codes + 0.5 * r.randn(*codes.shape) * codes.std()).astype(np.float32)[None]
    deltas = [None if s is None else (0.05 * r.randn(*s)).astype(np.float32)
              for s in inv.model.tuned_delta_shapes()]
    out = {p: e.inverter.shared_delta_renderer(1)(codes, deltas)[0] for p, e in engines.items()}
    err = np.abs(out["bf16"] - out["fp32"]).mean() / np.abs(out["fp32"]).mean()
    assert 0 < err < 3e-2, err


def test_bad_precision_is_one_argparse_line(capsys):
    from hyperstyle_jax.app.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--demo", "nowhere", "--precision", "fp16"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "--precision" in lines[0] and "'fp16'" in lines[0], err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- the server


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _photo(seed: int, size: int = 96) -> np.ndarray:
    """A smooth colour field (no face): something for the tiny model to invert."""
    r = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    chans = [np.sin(6 * (xx * r.rand() + yy * r.rand()) + 6 * r.rand()) for _ in range(3)]
    return np.clip((np.stack(chans, -1) * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory, e2e_checkpoints):
    d = tmp_path_factory.mktemp("app")
    os.symlink(e2e_checkpoints.hyperstyle(), d / "hs")
    os.symlink(e2e_checkpoints.w_encoder(), d / "we")
    r = np.random.RandomState(0)
    os.makedirs(d / "dirs")
    for name in ("age", "smile"):  # (1, D) unit directions of the 64-wide codes
        v = r.randn(1, 64).astype(np.float32)
        np.save(d / "dirs" / f"{name}.npy", v / np.linalg.norm(v))
    comp = r.randn(4, 1, 64).astype(np.float32)
    comp /= np.linalg.norm(comp, axis=-1, keepdims=True)
    np.savez(d / "pca.npz", mean=r.randn(1, 64).astype(np.float32) * 0.1,
             std=np.ones(4, np.float32), comp=comp)
    # StyleCLIP: a random narrow CLIP (as tests/test_styleclip.py) + fixture 10's files
    import jax

    from hyperstyle_jax.checkpoints import save_converted
    from hyperstyle_jax.models.clip import CLIPConfig, random_init

    cfg = CLIPConfig(embed_dim=512, image_resolution=32, vision_layers=1, vision_width=32,
                     vision_patch_size=16, vision_heads=2, transformer_width=32,
                     transformer_heads=2, transformer_layers=1)
    save_converted(str(d / "clip"), jax.tree.map(np.asarray, random_init(cfg, seed=5)),
                   cfg.to_dict(), kind="clip")
    # domain: fixture 13's ReStyle-e4e and a fine-tuned copy of the 128 px generator
    from hyperstyle_jax.convert.restyle import convert_restyle_e4e
    from hyperstyle_jax.convert.stylegan2 import convert_stylegan2

    f13 = os.path.join(HERE, "13_restyle_domain")
    convert_restyle_e4e(os.path.join(f13, "restyle_e4e_narrow.pt"), str(d / "restyle"),
                        log=quiet)
    convert_stylegan2(os.path.join(f13, "stylegan2_narrow128_finetuned.pt"), str(d / "toon"),
                      log=quiet)
    os.makedirs(d / "examples")
    Image.fromarray(_photo(9)).save(d / "examples" / "colours.png")
    photos = {}
    for i in range(2):
        photos[f"photo{i}.png"] = d / f"photo{i}.png"
        Image.fromarray(_photo(i)).save(photos[f"photo{i}.png"])
    good = _png(_photo(5))
    (d / "truncated.png").write_bytes(good[:len(good) // 2])
    (d / "notes.png").write_bytes(b"this is not an image\n" * 10)
    (d / "big.png").write_bytes(os.urandom(int(MAX_UPLOAD_MB * 2 ** 20) + 1000))
    return d, photos


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


@pytest.fixture(scope="module")
def server(files):
    d, _ = files
    port = free_port()
    cmd = [sys.executable, "-m", "hyperstyle_jax.app", "--checkpoint", str(d / "hs"),
           "--w_encoder", str(d / "we"), "--directions", str(d / "dirs"), "--pca",
           str(d / "pca.npz"), "--examples", str(d / "examples"), "--n_iters", str(N_ITERS),
           "--clip", str(d / "clip"), "--fs3", os.path.join(F10, "fs3_narrow.npy"),
           "--s_stats", os.path.join(F10, "S_mean_std_narrow"), "--restyle", str(d / "restyle"),
           "--generator", str(d / "toon"), "--max_upload_mb", str(MAX_UPLOAD_MB),
           "--cache_items", "4", "--refine_steps", "2", "--port", str(port)]
    # JAX logs every compilation: none may happen after warm-up (checked at the end).
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while True:
        if proc.poll() is not None:
            reader.join(5)
            pytest.fail("the app exited while starting:\n" + "".join(lines[-40:]))
        try:
            if _get(base + "/api/health", 1.0)[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.time() - t0 > START_TIMEOUT_S:
            proc.kill()
            pytest.fail("the app did not start in time:\n" + "".join(lines[-40:]))
        time.sleep(0.5)
    yield base, lines
    proc.send_signal(signal.SIGINT)  # uvicorn's graceful stop; atexit removes the temp folder
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(5)
    tmp = [m.group(1) for m in (re.search(r"temp folder (\S+)", x) for x in lines) if m]
    assert tmp and not os.path.exists(tmp[0]), "the app's temp folder was not removed"
    served = next(i for i, x in enumerate(lines) if x.startswith("serving on"))
    late = [x for x in lines[served:] if "ompil" in x]
    assert not late, "compiled while serving:\n" + "".join(late[:20])


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 900})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server[0] + "/")
    pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _edit_pixels(pg) -> np.ndarray:
    """The edit panel's current image, read back from its blob URL."""
    b64 = pg.evaluate("""async () => {
        const r = await fetch(document.getElementById('edit-img').src);
        const b = new Uint8Array(await r.arrayBuffer());
        let s = ''; for (const x of b) s += String.fromCharCode(x);
        return btoa(s); }""")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _wait_version(pg, at_least: int) -> None:
    pg.wait_for_function(
        f"() => {{ const s = document.getElementById('render-status');"
        f" return s.dataset.state === 'done' && +s.dataset.version >= {at_least}; }}",
        timeout=60_000)


def _wait_inverted(pg, timeout_ms: int = 120_000) -> None:
    """Until the current image is inverted; fails at once with the page's error message."""
    pg.wait_for_function(
        "() => document.getElementById('progress').dataset.state === 'done'"
        " || document.getElementById('message').dataset.kind === 'error'", timeout=timeout_ms)
    assert pg.get_attribute("#message", "data-kind") != "error", pg.inner_text("#message")


def _act(pg, action) -> None:
    """Do one control change (with no render in flight) and wait for its render."""
    v = int(pg.get_attribute("#render-status", "data-version"))
    action()
    _wait_version(pg, v + 1)


def test_upload_invert_edit_download(page, server, files, tmp_path):
    d, photos = files
    pg = page
    # the header names the precision the server was started with (the default here)
    assert "fp32" in pg.inner_text("#model-info")
    assert json.loads(_get(server[0] + "/api/info")[1])["precision"] == "fp32"
    # controls come from the model's files: one slider per direction, GANSpace names
    assert pg.locator("#ifg-sliders input[type=range]").count() == 2
    names = pg.evaluate(
        "[...document.querySelectorAll('#ganspace-select option')].map(o => o.value)")
    # none, the official cars edits that fit (component 0, rows 0-5: Pose I/II), PC 0..3
    assert names == ["", "pose_i", "pose_ii", "pc_0", "pc_1", "pc_2", "pc_3"], names
    pg.set_input_files("#file-input", [str(photos["photo0.png"]), str(photos["photo1.png"])])
    t0 = time.time()
    pg.click("#upload-btn")
    _wait_inverted(pg)
    _wait_version(pg, 1)
    t_recon = time.time() - t0
    # every iteration image was shown (W-encoder + N_ITERS), the panels are filled
    assert pg.locator("#iterations img").count() == N_ITERS + 1
    assert pg.locator("#gallery button").count() == 2
    pg.wait_for_function("() => document.getElementById('recon-img').complete"
                         " && document.getElementById('recon-img').naturalWidth > 0")
    assert pg.evaluate("document.getElementById('recon-img').naturalWidth") == 128
    unedited = _edit_pixels(pg)
    assert unedited.shape == (128, 128, 3)

    # a slider move re-renders without re-inverting
    _act(pg, lambda: pg.locator("#ifg-age").fill("4"))
    edited = _edit_pixels(pg)
    assert np.abs(edited.astype(int) - unedited.astype(int)).max() > 10, "the edit changed nothing"
    _act(pg, lambda: pg.locator("#ganspace-select").select_option("pc_1"))
    assert np.abs(_edit_pixels(pg).astype(int) - edited.astype(int)).max() > 0
    _act(pg, lambda: pg.locator("#ganspace-select").select_option(""))
    np.testing.assert_array_equal(_edit_pixels(pg), edited)  # deterministic re-render
    # StyleCLIP text edit on top (β low enough that the random CLIP's direction edits)
    _act(pg, lambda: pg.locator("#sc-beta").fill("0.05"))
    _act(pg, lambda: pg.locator("#sc-alpha").fill("3"))
    assert np.abs(_edit_pixels(pg).astype(int) - edited.astype(int)).max() > 0
    _act(pg, lambda: pg.locator("#sc-alpha").fill("0"))
    np.testing.assert_array_equal(_edit_pixels(pg), edited)
    # a domain: the fine-tuned generator renders the ReStyle codes with the kept offsets
    _act(pg, lambda: pg.locator("#domain-select").select_option("domain_toon"))
    assert np.abs(_edit_pixels(pg).astype(int) - edited.astype(int)).max() > 10
    _act(pg, lambda: pg.locator("#domain-select").select_option(""))
    np.testing.assert_array_equal(_edit_pixels(pg), edited)

    # downloads: the edited PNG, latents.npz ({stem: codes}) and deltas npz (layer_<j>)
    with pg.expect_download() as dl:
        pg.click("#download-png")
    got = tmp_path / "edit.png"
    dl.value.save_as(got)
    assert dl.value.suggested_filename == "photo0_edit.png"
    np.testing.assert_array_equal(np.asarray(Image.open(got).convert("RGB")), edited)
    with pg.expect_download() as dl:
        pg.click("#download-latents")
    dl.value.save_as(tmp_path / "latents.npz")
    lat = dict(np.load(tmp_path / "latents.npz"))
    assert list(lat) == ["photo0"] and lat["photo0"].shape[-1] == 64
    with pg.expect_download() as dl:
        pg.click("#download-deltas")
    dl.value.save_as(tmp_path / "deltas.npz")
    with np.load(tmp_path / "deltas.npz") as f:
        assert f.files and all(k.startswith("layer_") for k in f.files)
        deltas = {k: f[k] for k in f.files}

    # interpolation with the second upload: alpha 1 shows photo1's reconstruction
    _act(pg, lambda: pg.click("#reset-btn"))
    pg.wait_for_selector("#gallery button[data-done='1'] >> nth=1", timeout=120_000)
    keys = pg.evaluate("[...document.querySelectorAll('#gallery button')].map(b => b.dataset.key)")
    _act(pg, lambda: pg.locator("#interp-with").select_option(keys[1]))
    _act(pg, lambda: pg.locator("#interp-alpha").fill("1"))
    _, recon1 = _get(f"{server[0]}/api/image/{keys[1]}/reconstruction.png")
    np.testing.assert_allclose(_edit_pixels(pg).astype(int),
                               np.asarray(Image.open(io.BytesIO(recon1)).convert("RGB")).astype(int),
                               atol=2)
    _act(pg, lambda: pg.locator("#interp-alpha").fill("0.5"))
    _act(pg, lambda: pg.locator("#ifg-age").fill("3"))

    shot = tmp_path / "app.png"
    pg.screenshot(path=str(shot), full_page=True)
    if os.environ.get("HYPERSTYLE_APP_SCREENSHOT"):
        shutil.copy(shot, os.environ["HYPERSTYLE_APP_SCREENSHOT"])

    # the page's inversion is the CLI's: same codes and offsets as Inverter.batched_inverter
    from hyperstyle_jax.inference import load_inverter
    from hyperstyle_jax.utils import images

    inv = load_inverter(str(d / "hs"), str(d / "we"))
    x = images.resize(images.read_image(str(photos["photo0.png"])), inv.input_hw)
    ref = inv.batched_inverter(1, N_ITERS)(images.to_float(x[None]))
    np.testing.assert_allclose(lat["photo0"], ref["codes"][0], atol=1e-5)
    for j, r in enumerate(ref["deltas"]):
        if r is not None:
            np.testing.assert_allclose(deltas[f"layer_{j}"], r[0], atol=1e-5)
    print(f"upload -> reconstruction in the browser: {t_recon:.2f} s")


def test_bad_uploads_get_a_message(page, server, files):
    d, photos = files
    pg = page
    for name, words in [("truncated.png", "unreadable"), ("notes.png", "not an image"),
                        ("big.png", "too large")]:
        pg.set_input_files("#file-input", str(d / name))
        pg.click("#upload-btn")
        pg.wait_for_selector("#message[data-kind='error']", timeout=30_000)
        text = pg.inner_text("#message")
        assert name in text and words in text, text
        pg.evaluate("document.getElementById('message').dataset.kind = 'none'")
    # the server goes on: a good photo after the bad ones is inverted and rendered
    pg.set_input_files("#file-input", str(photos["photo1.png"]))
    pg.click("#upload-btn")
    _wait_inverted(pg)
    _wait_version(pg, 1)
    # alignment: a photo without a face is used whole, with a note saying so
    pg.check("#align")
    pg.set_input_files("#file-input", str(photos["photo0.png"]))
    pg.click("#upload-btn")
    pg.wait_for_function("() => !document.getElementById('message').textContent"
                         ".startsWith('uploading')", timeout=60_000)
    assert pg.get_attribute("#message", "data-kind") == "note"
    assert "no face found in photo0.png" in pg.inner_text("#message")
    _wait_inverted(pg)
    _wait_version(pg, 2)
    pg.uncheck("#align")
    # an example works the same way
    pg.locator("#example-select").select_option("colours.png")
    pg.click("#example-btn")
    pg.wait_for_selector("#gallery button[data-done='1'] >> nth=2", timeout=120_000)
    _wait_version(pg, 3)


def test_aligned_upload_downloads_the_full_photo(page, server, tmp_path):
    """An aligned upload offers "download full photo": the upload's size, the edited face
    pasted back, every pixel outside the face mask the upload's own."""
    from hyperstyle_jax import align
    from hyperstyle_jax.align import paste

    face_jpg = os.path.join(HERE, "12_alignment", "grace_hopper.jpg")
    pg = page
    pg.check("#align")
    pg.set_input_files("#file-input", face_jpg)
    pg.click("#upload-btn")
    _wait_inverted(pg)
    _wait_version(pg, 1)
    assert "aligned" in pg.inner_text("#message")
    _act(pg, lambda: pg.locator("#ifg-age").fill("3"))
    assert pg.is_visible("#download-full")
    with pg.expect_download() as dl:
        pg.click("#download-full")
    assert dl.value.suggested_filename == "grace_hopper_full.png"
    dl.value.save_as(tmp_path / "full.png")
    out = np.asarray(Image.open(tmp_path / "full.png"))
    photo, _ = paste.read_original(face_jpg)
    assert out.shape == photo.shape
    with Image.open(face_jpg) as pil:  # as the page aligns an upload: PIL's decode
        [face] = align.align_faces(pil, size=1024)
    alpha, box = paste.blend_weight(face)
    support = np.zeros(photo.shape[:2], np.float32)
    support[box[1]:box[3], box[0]:box[2]] = alpha
    np.testing.assert_array_equal(out[support == 0], photo[support == 0])
    assert np.abs(out[support > 0.99].astype(int) - photo[support > 0.99]).mean() > 1
    # an unaligned upload has no full photo to offer
    pg.uncheck("#align")


def test_concurrent_renders_queue(server):
    """Several clients at once: every request is answered (the device lock queues them)."""
    base = server[0]
    body = _png(_photo(3))
    boundary = "xyzBOUNDARY"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"c.png\""
            f"\r\nContent-Type: image/png\r\n\r\n").encode() + body
    form += f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        base + "/api/upload", data=form, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    item = json.loads(urllib.request.urlopen(req, timeout=30).read())["items"][0]
    for _ in range(600):
        j = json.loads(_get(f"{base}/api/job/{item['job']}")[1])
        if j["status"] in ("done", "error"):
            break
        time.sleep(0.2)
    assert j["status"] == "done", j
    results = [None] * 12

    def one(i):
        payload = json.dumps({"key": item["key"], "edits": {"interfacegan": {"smile": i - 6}}})
        r = urllib.request.Request(base + "/api/render", data=payload.encode(), method="POST",
                                   headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(r, timeout=120) as resp:
            results[i] = (resp.status, resp.read()[:8])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert all(r is not None and r[0] == 200 and r[1] == b"\x89PNG\r\n\x1a\n" for r in results)
    bad = urllib.request.Request(base + "/api/render", data=b'{"key": "nope"}', method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(bad, timeout=10)
    assert e.value.code == 404 and b"upload it again" in e.value.read()


def test_device_lock_serves_renders_before_inversion_steps():
    from hyperstyle_jax.app.engine import DeviceLock

    lock, order = DeviceLock(), []
    started = threading.Event()

    def holder():
        with lock(background=True):
            started.set()
            time.sleep(0.3)

    def call(tag, background):
        with lock(background=background):
            order.append(tag)

    h = threading.Thread(target=holder)
    h.start()
    started.wait()
    bg = threading.Thread(target=call, args=("step", True))
    bg.start()
    time.sleep(0.05)
    fg = threading.Thread(target=call, args=("render", False))
    fg.start()
    for t in (h, bg, fg):
        t.join(5)
    assert order == ["render", "step"]


def test_oversized_body_is_refused_before_parsing(server):
    """A body over the per-request bound is answered 413 from its Content-Length alone
    (the headers are sent, the body never is)."""
    import http.client

    port = int(server[0].rsplit(":", 1)[1])
    size = int((MAX_UPLOAD_MB * 16 + 1) * 2 ** 20) + 10
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/api/upload")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and b"too large" in resp.read()
    conn.close()
    assert _get(server[0] + "/api/health")[0] == 200  # and the server goes on


def test_refine_button(page, server, files):
    """'Refine' tunes the current image's offsets (PTI-style, 2 steps, compiled in warm-up):
    a new gallery entry '<name> (refined)' whose reconstruction is the refined render."""
    d, photos = files
    pg = page
    pg.set_input_files("#file-input", [str(photos["photo1.png"])])
    pg.click("#upload-btn")
    _wait_inverted(pg)
    _wait_version(pg, 1)
    assert pg.is_visible("#refine-btn")  # in the controls shown with an inversion
    n = pg.locator("#gallery button").count()
    v = int(pg.get_attribute("#render-status", "data-version"))
    pg.click("#refine-btn")
    pg.wait_for_function("() => document.getElementById('message').textContent"
                         ".startsWith('refined (2 steps)')"
                         " || document.getElementById('message').dataset.kind === 'error'",
                         timeout=120_000)
    assert pg.get_attribute("#message", "data-kind") != "error", pg.inner_text("#message")
    _wait_version(pg, v + 1)
    assert pg.locator("#gallery button").count() == n + 1
    key = pg.get_attribute("#recon-img", "data-key")
    assert key.endswith("-r")
    status, body = _get(f"{server[0]}/api/image/{key}/reconstruction.png")
    assert status == 200 and body[:4] == b"\x89PNG"
    req = urllib.request.Request(f"{server[0]}/api/refine/nokey", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 404
