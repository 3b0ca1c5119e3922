"""The web layer of the editing page (FastAPI): parse a request, call `Engine`, answer.

Routes (JSON unless said):
    GET  /                      the page (static/index.html; its JS and CSS under /static)
    GET  /api/info              the model's controls (directions, GANSpace edits, ...)
    POST /api/upload            multipart `files` (one or more) + `align` -> one entry per
                                file: {name, key, job, note, aligned} or {name, error}
    POST /api/example/{name}    the same for a shipped / generated example
    GET  /api/job/{id}?since=k  inversion progress: status, step, iteration images >= k
    GET  /api/image/{key}/{which}.png     which = input | reconstruction
    POST /api/render            {key, edits} -> image/png of the edited render
    GET  /api/full/{key}.png?edits=JSON   an aligned upload's photo (its size) with the
                                edited face pasted back (attachment <stem>_full.png)
    GET  /api/latents/{key}.npy, /api/deltas/{key}.npz   the `invert` formats
    GET  /api/health            queue and cache figures (for the load test)

Inversions run on one worker thread, in upload order; renders run on the server's
thread pool. Both take the engine's device lock per compiled call, so requests queue
rather than fail. Errors are answered as {"error": one line} with a 4xx status.
(No `from __future__ import annotations` here: FastAPI reads the route annotations, and
those name classes imported inside `create_app`.)
"""
import base64
import collections
import itertools
import json
import os
import queue
import threading
import time

from hyperstyle_jax.app.engine import EditSpec, Engine, UploadError, png_bytes, stem_of
from hyperstyle_jax.editing import EditError
from hyperstyle_jax.utils.cli import one_line

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
THUMB = 256  # iteration images are shown at most this large
MAX_FILES = 16  # per upload request


class Job:
    def __init__(self, jid: str, key: str, name: str, total: int):
        self.id, self.key, self.name, self.total = jid, key, name, total
        self.status, self.step, self.error, self.note = "queued", -1, "", ""
        self.images: list = []  # data: URLs, one per finished step
        self.t0, self.t_done = time.perf_counter(), None

    def as_dict(self, since: int = 0) -> dict:
        return {"id": self.id, "key": self.key, "name": self.name, "status": self.status,
                "step": self.step, "total": self.total, "error": self.error,
                "note": self.note, "first": since, "images": self.images[since:],
                "seconds": round((self.t_done or time.perf_counter()) - self.t0, 3)}


class Inversions:
    """A FIFO of inversion jobs and the one thread that runs them."""

    def __init__(self, engine: Engine, max_pending: int = 64, keep: int = 256):
        self.engine, self.max_pending = engine, max_pending
        self.jobs: "collections.OrderedDict[str, Job]" = collections.OrderedDict()
        self._by_key: dict = {}
        self._q: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._keep = keep
        self._thread = threading.Thread(target=self._work, name="inversions", daemon=True)
        self._thread.start()

    def submit(self, prep) -> Job:
        with self._lock:
            running = self._by_key.get(prep.key)
            if running is not None and running.status in ("queued", "running"):
                return running  # the same photo uploaded twice at once: one inversion
            job = Job(f"j{next(self._ids)}", prep.key, prep.name, self.engine.n_iters)
            job.note = prep.note
            hit = self.engine.cache.get(prep.key)
            if hit is not None:
                job.images = [_data_url(im) for im in hit.iterations]
                job.status, job.step, job.t_done = "done", self.engine.n_iters, time.perf_counter()
            elif self._q.qsize() >= self.max_pending:
                raise UploadError(f"{prep.name}: the server is busy ({self._q.qsize()} "
                                  f"inversions queued); try again in a minute")
            else:
                self._q.put((job, prep))
            self.jobs[job.id] = job
            self._by_key[prep.key] = job
            while len(self.jobs) > self._keep:  # forget old finished jobs
                old_id, old = next(iter(self.jobs.items()))
                if old.status in ("queued", "running"):
                    break
                self.jobs.pop(old_id)
            return job

    def _work(self) -> None:
        while True:
            job, prep = self._q.get()
            job.status = "running"
            try:
                def on_step(k, n, img, job=job):
                    job.images.append(_data_url(img))
                    job.step = k

                self.engine.invert(prep, on_step=on_step)
                job.status = "done"
            except Exception as e:  # noqa: BLE001 -- one job fails, the server goes on
                job.status, job.error = "error", f"{prep.name}: {one_line(e)}"
            job.t_done = time.perf_counter()

    @property
    def pending(self) -> int:
        return self._q.qsize()


def _data_url(img) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img, THUMB)).decode("ascii")


def create_app(engine: Engine, max_pending: int = 64):
    """The FastAPI application over a built (ideally warmed-up) engine."""
    # fastapi (with starlette) is the optional `app` extra: imported only to serve.
    from fastapi import FastAPI, File, Form, Request, UploadFile  # noqa: PLC0415  app extra
    from fastapi.responses import FileResponse, JSONResponse, Response  # noqa: PLC0415
    from fastapi.staticfiles import StaticFiles  # noqa: PLC0415  the app extra
    from starlette.concurrency import run_in_threadpool  # noqa: PLC0415  the app extra

    app = FastAPI(title="hyperstyle_jax editing page", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    jobs = Inversions(engine, max_pending=max_pending)
    app.state.engine, app.state.jobs = engine, jobs
    stats = {"renders": 0, "render_errors": 0}

    max_body = engine.max_upload_bytes * MAX_FILES + (1 << 20)

    @app.middleware("http")
    async def refuse_huge_bodies(request: Request, call_next):
        # Before the multipart parser spools anything: a body over the limit is answered
        # from its Content-Length alone.
        n = request.headers.get("content-length")
        if n is not None and n.isdigit() and int(n) > max_body:
            return error(f"upload too large ({int(n) / 2 ** 20:.1f} MB; the limit is "
                         f"{engine.max_upload_bytes / 2 ** 20:.0f} MB per file, "
                         f"{MAX_FILES} files)", 413)
        return await call_next(request)

    def error(msg: str, status: int = 400):
        return JSONResponse({"error": msg}, status_code=status)

    def lookup(key: str):
        inv = engine.cache.get(key)
        if inv is None:
            raise KeyError(key)
        return inv

    gone = ("that image is no longer in memory (the cache keeps the most recent ones); "
            "upload it again")

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception):  # the server goes on
        return error(f"internal error: {one_line(exc)}", 500)

    @app.get("/")
    def index():
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/api/info")
    def info():
        return engine.info()

    @app.get("/api/health")
    def health():
        return {"pending_inversions": jobs.pending, "cached": len(engine.cache),
                "cache_bytes": engine.cache.nbytes, "evictions": engine.cache.evictions, **stats}

    def start(data: bytes, name: str, align: bool) -> dict:
        try:
            prep = engine.prepare(data, name, align)
            job = jobs.submit(prep)
        except UploadError as e:
            return {"name": name, "error": str(e)}
        return {"name": name, "key": job.key, "job": job.id, "note": job.note,
                "aligned": prep.face is not None}

    @app.post("/api/upload")
    async def upload(files: list[UploadFile] = File(...), align: bool = Form(False)):
        out = []
        limit = engine.max_upload_bytes
        if len(files) > MAX_FILES:
            return error(f"{len(files)} files in one upload; the limit is {MAX_FILES}")
        for f in files:
            name = os.path.basename(f.filename or "upload")
            data = await f.read(limit + 1)  # never more than the limit in memory
            await f.close()
            if len(data) > limit:
                out.append({"name": name, "error": f"{name}: file too large (over "
                                                   f"{limit / 2 ** 20:.0f} MB)"})
                continue
            # Decoding and alignment are CPU work: off the event loop.
            out.append(await run_in_threadpool(start, data, name, align))
        return {"items": out}

    @app.post("/api/example/{name}")
    def example(name: str, align: bool = False):
        src = engine.examples.get(name)
        if src is None:
            return error(f"no example {name!r}", 404)
        if isinstance(src, str):
            with open(src, "rb") as f:
                src = f.read()
        return {"items": [start(src, name, align)]}

    @app.get("/api/job/{jid}")
    def job(jid: str, since: int = 0):
        j = jobs.jobs.get(jid)
        if j is None:
            return error(f"no job {jid}", 404)
        return j.as_dict(max(0, since))

    @app.get("/api/image/{key}/{which}.png")
    def image(key: str, which: str):
        try:
            inv = lookup(key)
        except KeyError:
            return error(gone, 404)
        if which == "input":
            return Response(png_bytes(inv.image), media_type="image/png")
        if which == "reconstruction":
            return Response(png_bytes(inv.reconstruction), media_type="image/png")
        return error(f"no image {which!r} (input or reconstruction)", 404)

    @app.post("/api/render")
    def render(body: dict):
        key = str(body.get("key", ""))
        try:
            inv = lookup(key)
            spec = EditSpec.parse(body.get("edits", {}))
            other = lookup(spec.mix_with) if spec.mix_with and spec.mix_alpha else None
            img = engine.render(inv, spec, other)
        except KeyError:
            stats["render_errors"] += 1
            return error(gone, 404)
        except EditError as e:
            stats["render_errors"] += 1
            return error(one_line(e))
        stats["renders"] += 1
        stem = stem_of(inv.name)
        return Response(png_bytes(img), media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{stem}_edit.png"'})

    @app.post("/api/refine/{key}")
    def refine(key: str):
        """PTI-style refinement of an inversion: a new key (`<key>-r`) to edit."""
        try:
            inv = lookup(key)
            refined = engine.refine(inv)
        except KeyError:
            return error(gone, 404)
        except EditError as e:
            return error(one_line(e))
        return {"key": refined.key, "name": refined.name, "note": refined.note,
                "aligned": refined.face is not None}

    @app.get("/api/full/{key}.png")
    def full_photo(key: str, edits: str = "{}"):
        try:
            inv = lookup(key)
            spec = EditSpec.parse(json.loads(edits))
            other = lookup(spec.mix_with) if spec.mix_with and spec.mix_alpha else None
            png = engine.full_photo(inv, spec, other)
        except KeyError:
            return error(gone, 404)
        except ValueError as e:  # EditError, and bad JSON
            return error(one_line(e))
        stem = stem_of(inv.name)
        return Response(png, media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{stem}_full.png"'})

    @app.get("/api/latents/{key}.npz")
    def latents(key: str):
        try:
            inv = lookup(key)
        except KeyError:
            return error(gone, 404)
        return Response(engine.latents_bytes([inv]), media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="latents.npz"'})

    @app.get("/api/deltas/{key}.npz")
    def deltas(key: str):
        try:
            inv = lookup(key)
        except KeyError:
            return error(gone, 404)
        stem = stem_of(inv.name)
        return Response(engine.deltas_bytes(inv), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{stem}.npz"'})

    return app


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 7860,
          log_level: str = "warning") -> None:
    """Run uvicorn on the app until interrupted (blocking)."""
    import uvicorn  # noqa: PLC0415  the optional app extra

    uvicorn.run(create_app(engine), host=host, port=port, log_level=log_level,
                access_log=False)
