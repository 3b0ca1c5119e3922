"""A user's careless mistakes end in one line on stderr and a non-zero exit, never a traceback.

The train CLI runs in subprocesses (its flags are parsed from the command line); the
other CLIs are called in-process through their `main(argv)`.
"""
import os
import subprocess
import sys

import pytest
from helpers import ROOT

TINY = os.path.join(ROOT, "configs", "tiny.py")


def _train(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "hyperstyle_jax.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("override, expected", [
    ("--config.bacth_size=4", "no config key 'bacth_size' (did you mean 'batch_size'?)"),
    ("--config.batch_size=abc", "--config.batch_size=abc: expected an integer"),
    ("--config.optim.lr=fast", "--config.optim.lr=fast: expected a number"),
])
def test_train_bad_override_is_one_line(tmp_path, override, expected):
    out = _train("--config", TINY, "--workdir", str(tmp_path / "w"), override)
    assert out.returncode == 2
    assert expected in _one_error_line(out.stderr)
    assert not (tmp_path / "w").exists()


def test_train_missing_config_file_and_workdir_that_is_a_file(tmp_path):
    out = _train("--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "w"))
    assert out.returncode == 2
    line = _one_error_line(out.stderr)
    assert "nope.py" in line and "cannot load the config file" in line
    f = tmp_path / "a_file"
    f.write_text("x")
    out = _train("--config", TINY, "--workdir", str(f))
    assert out.returncode == 2
    assert f"--workdir {f}: is an existing file" in _one_error_line(out.stderr)


def test_train_help_exits_0_and_lists_config_keys_with_defaults():
    out = _train("--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "config.batch_size = 8" in out.stdout          # tiny.py's value
    assert "config.optim.lr = 0.001" in out.stdout
    assert "--workdir" in out.stdout and "(default: True)" in out.stdout


@pytest.mark.parametrize("module", ["invert", "generate", "evaluate"])
def test_help_of_every_cli_exits_0_and_shows_defaults(module, capsys):
    import importlib

    mod = importlib.import_module(f"hyperstyle_jax.{module}")
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    assert "(default:" in capsys.readouterr().out


def test_convert_weights_help_names_each_kind_and_how_to_see_its_options(capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import convert_weights
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit) as e:
        convert_weights.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # help wraps at the terminal's width
    assert e.value.code == 0 and "convert_weights.py KIND --help" in out
    for kind in ("stylegan2", "hyperstyle", "w_encoder", "lpips", "arcface", "moco"):
        assert kind in out


def test_out_that_is_an_existing_file_is_one_line(tmp_path, capsys):
    from hyperstyle_jax import generate, invert

    f = tmp_path / "taken"
    f.write_text("x")
    img = tmp_path / "img.png"
    img.write_bytes(b"")
    assert invert.main(["--checkpoint", "c", "--w_encoder", "w", "--images", str(img),
                        "--out", str(f)]) == 2
    assert generate.main(["--random_init", "16", "--seeds", "0", "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count(f"error: --out {f}: is an existing file") == 2 and "Traceback" not in err


def test_edit_out_that_is_an_existing_file_is_one_line(tmp_path, capsys):
    from hyperstyle_jax import edit

    f = tmp_path / "taken"
    f.write_text("x")
    assert edit.main(["interpolate", "--inversion", str(tmp_path), "--checkpoint",
                      str(tmp_path / "nope"), "--pair", "a", "b", "--out", str(f)]) == 1
    err = capsys.readouterr().err
    assert f"error: --out {f}: is an existing file" in err and "Traceback" not in err


def test_evaluate_out_that_is_a_folder_is_one_line(tmp_path, capsys):
    from hyperstyle_jax import evaluate

    assert evaluate.main(["--pred", str(tmp_path), "--gt", str(tmp_path), "--out",
                          str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is an existing folder" in err and "Traceback" not in err


def test_cli_run_turns_an_unexpected_exception_into_one_line_and_debug_shows_it(capsys):
    from hyperstyle_jax.utils import cli

    def boom(argv):
        raise RuntimeError("disk on fire")

    assert cli.run(boom, []) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: RuntimeError: disk on fire (run with --debug for the traceback)"
    assert cli.run(boom, ["--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err

    def interrupted(argv):
        raise KeyboardInterrupt

    assert cli.run(interrupted, []) == 130


def test_help_reflows_prose_paragraphs_and_keeps_indented_lines(monkeypatch, capsys):
    """`generate --help` at 72 columns: each prose paragraph is filled as one text (no line
    ends short mid-sentence, e.g. before "so a seed gives"); command lines keep their layout."""
    from hyperstyle_jax import generate

    monkeypatch.setenv("COLUMNS", "72")
    with pytest.raises(SystemExit) as e:
        generate.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    width = 72 - 2  # argparse leaves two columns
    desc = out.split("\n\n", 1)[1].split("\noptions:")[0].splitlines()
    assert ("  python -m hyperstyle_jax.generate --checkpoint ckpt/stylegan2_ffhq --seeds 0-7 "
            "--out out/gen") in desc  # wider than the terminal, kept as written
    prose = [ln for ln in desc if ln and not ln[0].isspace()]
    assert prose and all(len(ln) <= width for ln in prose)
    for line, nxt in zip(desc, desc[1:]):
        if line in prose and nxt in prose:  # the next word did not fit on this line
            assert len(line) + 1 + len(nxt.split()[0]) > width, (line, nxt)
    assert any(ln.startswith("Latents: ") for ln in prose)  # a paragraph still starts a line


def test_reflow_joins_prose_and_keeps_lists_tables_and_blank_lines():
    from hyperstyle_jax.utils.cli import reflow

    text = ("One sentence that was\nbroken in the source.\n\n    cmd --flag  # kept\n"
            "- a list item\n- another item\n")
    assert reflow(text, 30) == ["One sentence that was broken", "in the source.", "",
                                "    cmd --flag  # kept", "- a list item", "- another item"]


def test_progress_bar_plain_lines_postfix_write_and_disabled():
    import io

    from hyperstyle_jax.utils import cli

    buf = io.StringIO()  # not a TTY: plain lines, every 10 % by default
    bar = cli.progress_bar(20, desc="edit", unit="", file=buf)
    for _ in range(20):
        bar.update()
    bar.close()
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue() and len(lines) == 10
    assert lines[-1].startswith("edit: 20/20 (100%), ")

    buf = io.StringIO()
    with cli.progress_bar(3, desc="align", unit="images", every=2, file=buf) as bar:
        bar.update()
        bar.write("failed: x.png")
        bar.set_postfix_str("1 failed")
        bar.update(2)
    assert buf.getvalue().splitlines()[0] == "failed: x.png"
    assert buf.getvalue().splitlines()[1].startswith("align: 3/3 images, 1 failed (100%), ")

    buf = io.StringIO()
    bar = cli.progress_bar(5, desc="quiet", file=buf, enabled=False)
    bar.update(5)
    bar.set_postfix(loss=1)
    bar.write("a message still shows")
    bar.close()
    assert buf.getvalue() == "a message still shows\n"
    assert list(cli.progress(range(4), desc="x", file=io.StringIO())) == [0, 1, 2, 3]
