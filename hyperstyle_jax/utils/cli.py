"""What every command line shares: one error path, --debug, output folders, progress, --help.

    def main(argv=None) -> int:            # the CLI's entry point (tests call it too)
        return cli.run(_main, argv)          # _main(argv) -> int; raises cli.UserError
    cli.out_dir(args.out, "--out")           # an existing *file* there is a UserError
    for item in cli.progress(items, desc="invert", unit="img"): ...
    bar = cli.progress_bar(total, desc="align", unit="images")   # update/write/close

One error path: a failure the user can cause (bad path, bad value, unreadable checkpoint)
is raised as `UserError`, one of the package's ValueError subclasses (`EditError`,
`CheckpointError`, ...) or an OSError; `run` prints it as one line on stderr,
`error: ...`, and exits with `EXIT_USAGE` (2, as argparse does for a bad flag). Anything
else is a bug: one line with the exception's type, a hint, and exit status 1. `--debug`
(or HYPERSTYLE_DEBUG=1) prints the traceback instead. Ctrl-C exits with 130. The web page
answers errors with the same `one_line`.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
import traceback
from typing import Callable, Iterable, Optional, Sequence

from tqdm import tqdm

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """A mistake in the input that the message explains; printed as one line."""


def debug_enabled(argv: Optional[Sequence[str]] = None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("HYPERSTYLE_DEBUG", "") not in ("", "0")


def is_user_error(e: BaseException) -> bool:
    """UserError, OSError, or one of the package's ValueError subclasses (a plain
    ValueError, like any other exception, is a bug)."""
    return isinstance(e, (UserError, OSError)) or (isinstance(e, ValueError)
                                                   and type(e) is not ValueError)


def one_line(e: BaseException) -> str:
    """An exception as one line: its message with newlines folded (no traceback); the
    type's name is added for anything but a user error."""
    msg = " ".join(str(e).split()) or type(e).__name__
    if not is_user_error(e) and type(e).__name__ not in msg:
        msg = f"{type(e).__name__}: {msg}"
    return msg


def fail(message: str, code: int = EXIT_USAGE) -> int:
    """Print `error: message` on stderr and return `code` (for callers that cannot raise)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def run(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None,
        user_error_code: int = EXIT_USAGE) -> int:
    """Call `main(argv)` (argv without `--debug`); any exception becomes one line on
    stderr: a user error (`is_user_error`) exits with `user_error_code`, anything else
    with 1 and a hint; with --debug the traceback instead. argparse's SystemExit passes."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = debug_enabled(args)
    args = [a for a in args if a != "--debug"]
    try:
        return int(main(args) or 0)
    except KeyboardInterrupt:
        print("\nerror: interrupted; finished outputs are kept", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - the point is one line for anything
        user = is_user_error(e)
        if debug:
            traceback.print_exc()
        else:
            hint = "" if user else " (run with --debug for the traceback)"
            print(f"error: {one_line(e)}{hint}", file=sys.stderr, flush=True)
        return user_error_code if user else 1


def out_dir(path: str, flag: str = "--out") -> str:
    """Create the output folder; a file in its place is a UserError naming the flag."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is an existing file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create the folder ({e.strerror})") from None
    return path


# ----------------------------------------------------------------------------- progress


class _PlainProgress:
    """Progress for logs and pipes: one line every `every` items or `every_s` seconds (and
    at the end), `desc: n/total unit, postfix (pct%), rate`; never a carriage return."""

    def __init__(self, total: Optional[int], desc: str, unit: str, every: int, every_s: float,
                 initial: int, file):
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.every, self.every_s = max(1, every), every_s
        self.n, self.postfix = initial, ""
        self._n0, self._last_n = initial, initial
        self.t0 = self._last_t = time.perf_counter()

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.perf_counter()
        if (self.n - self._last_n >= self.every or (self.total and self.n >= self.total)
                or now - self._last_t >= self.every_s):
            self._last_n, self._last_t = self.n, now
            print(self._line(now - self.t0), file=self.file, flush=True)

    def _line(self, dt: float) -> str:
        line = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "")
        line += f" {self.unit}" if self.unit else ""
        line += f", {self.postfix}" if self.postfix else ""
        if self.total:
            line += f" ({100 * self.n // self.total}%)"
        done, unit = self.n - self._n0, self.unit or "it"
        if dt > 0 and done > 0:
            rate = done / dt
            line += f", {rate:.2f} {unit}/s" if rate >= 1 else f", {1 / rate:.2f} s/{unit}"
        return line

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def write(self, s: str, file=None) -> None:
        print(s, file=file or self.file, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoProgress(_PlainProgress):
    """`enabled=False`: counts but prints no progress; `write` still prints messages."""

    def update(self, k: int = 1) -> None:
        self.n += k


def progress_bar(total: Optional[int] = None, desc: str = "", unit: str = "it",
                 every: Optional[int] = None, initial: int = 0, *, every_s: float = 10.0,
                 file=None, enabled: bool = True):
    """The one progress bar: tqdm when `file` (default stderr) is a terminal; elsewhere
    (CI, nohup, a log file) plain lines, one every `every` items (default: every 10 %) or
    `every_s` seconds, and at the end. `enabled=False` gives a silent bar.

    Every kind has `update(n=1)`, `set_postfix_str(s)`, `set_postfix(**kw)`,
    `write(message)` (a line that does not break the bar; printed even when disabled),
    `close()`, and works as a context manager."""
    file = sys.stderr if file is None else file
    if every is None:
        every = max(1, (total or 100) // 10)
    if not enabled:
        return _NoProgress(total, desc, unit, every, every_s, initial, file)
    if getattr(file, "isatty", lambda: False)():
        return tqdm(total=total, desc=desc, unit=unit or "it", dynamic_ncols=True,
                    initial=initial, file=file)
    return _PlainProgress(total, desc, unit, every, every_s, initial, file)


def progress(iterable: Iterable, total: Optional[int] = None, desc: str = "", unit: str = "it",
             every: Optional[int] = None, *, file=None, enabled: bool = True):
    """Iterate with `progress_bar` (total: len(iterable) when it has one)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    bar = progress_bar(total, desc, unit, every, file=file, enabled=enabled)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()


def write_line(bar, message: str) -> None:
    """Print a message on stderr without breaking a bar (tqdm.write on a terminal)."""
    if bar is not None:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- --help


def _is_list_item(line: str) -> bool:
    head = line.split(" ", 1)[0]
    return head in ("-", "*", "•") or (head[:-1].isdigit() and head[-1:] in (".", ")"))


def reflow(text: str, width: int) -> list:
    """Prose paragraphs (consecutive non-indented lines; a list item starts a new one)
    joined and wrapped to `width`; indented lines (commands, tables) and blank lines kept."""
    out, para = [], []

    def flush():
        if para:
            out.extend(textwrap.wrap(" ".join(para), width, break_on_hyphens=False,
                                     break_long_words=False) or [""])
            para.clear()

    for line in text.splitlines():
        if not line.strip() or line[0].isspace():
            flush()
            out.append(line.rstrip())
        else:
            if _is_list_item(line):
                flush()
            para.append(line.strip())
    flush()
    return out


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help re-flows the description's prose to the terminal's width, keeps its indented
    lines (commands, tables) as written, and shows each option's default (not for required
    options, flags that are off by default, or options without one)."""

    def _fill_text(self, text, width, indent):
        return "\n".join(indent + line for line in reflow(text, width))

    def _get_help_string(self, action):
        if (action.required or action.default in (None, False, argparse.SUPPRESS)
                or "default" in (action.help or "")):
            return action.help
        return super()._get_help_string(action)
