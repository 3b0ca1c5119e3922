"""The editing page: upload -> align -> invert -> edit with sliders and text, in a browser.

    python -m hyperstyle_jax.app --demo workdirs/demo
    python -m hyperstyle_jax.app --checkpoint CKPT --w_encoder WENC --directions DIRS/ ...

A thin layer over the same functions the CLIs call:
    engine.py   the model side: decode/align uploads, invert (W-encoder + one compiled call
                per hypernetwork iteration, so each iteration is shown as it comes), render
                edits with the `editing` modules' pure functions and one compiled renderer
                per kind; every device call under one lock; warm-up compiles everything
    state.py    per-image state: content hash -> Inversion (codes, deltas, ...), bounded LRU
    server.py   FastAPI routes (JSON + PNG), one inversion worker thread
    static/     the page (plain HTML/JS/CSS, no build step, nothing from the internet)
    __main__.py options, loading, the private temp folder, uvicorn on 127.0.0.1:7860
"""
