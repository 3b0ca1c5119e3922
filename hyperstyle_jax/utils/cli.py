"""What every command line shares: one-line errors, --debug, output folders, progress.

    sys.exit(cli.run(main, argv))      # main(argv) -> int
    cli.out_dir(args.out, "--out")     # an existing *file* there is a one-line error
    for item in cli.progress(items, desc="invert", unit="img"): ...

A failure a user can cause (bad path, bad value, unreadable checkpoint) is raised as
`UserError` (or one of the package's ValueError subclasses) and printed as one line on
stderr, `error: ...`, with a non-zero exit; `--debug` (or HYPERSTYLE_DEBUG=1) prints the
traceback instead. Ctrl-C exits with 130, as shells expect.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Callable, Iterable, Optional, Sequence

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """A mistake in the input that the message explains; printed as one line."""


def debug_enabled(argv: Optional[Sequence[str]] = None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("HYPERSTYLE_DEBUG", "") not in ("", "0")


def one_line(e: BaseException) -> str:
    """An exception as one line: its message with newlines folded (no traceback)."""
    msg = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, (UserError, OSError)) and type(e).__name__ not in msg:
        known = isinstance(e, ValueError) and type(e) is not ValueError  # our subclasses
        if not known:
            msg = f"{type(e).__name__}: {msg}"
    return msg


def fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def run(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None
        ) -> int:
    """Call `main(argv)`; turn any escaping exception into one line (traceback with --debug)."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = debug_enabled(args)
    args = [a for a in args if a != "--debug"]
    try:
        return int(main(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - the point is one line for anything
        if debug:
            traceback.print_exc()
        else:
            hint = "" if isinstance(e, UserError) else " (run with --debug for the traceback)"
            print(f"error: {one_line(e)}{hint}", file=sys.stderr, flush=True)
        return 1


def out_dir(path: str, flag: str = "--out") -> str:
    """Create the output folder; a file in its place is a UserError naming the flag."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is an existing file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create the folder ({e.strerror})") from None
    return path


class _PlainProgress:
    """Progress for logs and pipes: one plain line every `every` items (no redraws)."""

    def __init__(self, total: Optional[int], desc: str, unit: str, every: int, initial: int):
        self.total, self.desc, self.unit, self.every = total, desc, unit, max(1, every)
        self.n, self.t0, self.postfix = initial, time.perf_counter(), ""
        self._last = initial

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.n - self._last >= self.every or (self.total and self.n >= self.total):
            self._last = self.n
            dt = time.perf_counter() - self.t0
            of = f"/{self.total}" if self.total else ""
            rate = f", {self.n / dt:.2f} {self.unit}/s" if dt > 0 else ""
            post = f", {self.postfix}" if self.postfix else ""
            print(f"{self.desc}: {self.n}{of} {self.unit}{rate}{post}", file=sys.stderr,
                  flush=True)

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def write(self, s: str, file=None) -> None:
        print(s, file=file or sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def __iter__(self):
        raise TypeError("iterate over cli.progress(iterable) instead")


def progress_bar(total: Optional[int] = None, desc: str = "", unit: str = "it",
                 every: Optional[int] = None, initial: int = 0):
    """A tqdm bar on a terminal; elsewhere (CI, nohup, a log file) plain periodic lines.

    `every` defaults to about 20 lines over the whole run."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, initial=initial)
    if every is None:
        every = max(1, (total or 200) // 20)
    return _PlainProgress(total, desc, unit, every, initial)


def progress(iterable: Iterable, total: Optional[int] = None, desc: str = "", unit: str = "it",
             every: Optional[int] = None):
    """Iterate with `progress_bar`."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    bar = progress_bar(total, desc, unit, every)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()


def write_line(bar, message: str) -> None:
    """Print a message on stderr without breaking a bar (tqdm.write on a terminal)."""
    if bar is not None and hasattr(bar, "write"):
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


import argparse  # noqa: E402 - kept beside the formatter it serves


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the docstring's layout and shows each option's default (not for
    required options, flags that are off by default, or options without one)."""

    def _fill_text(self, text, width, indent):
        # Indented lines (commands, tables) keep their layout; long prose lines wrap.
        import textwrap

        out = []
        for line in text.splitlines():
            out.extend(textwrap.wrap(line, width) if len(line) > width and not
                       line.startswith(" ") else [line])
        return "\n".join(indent + line for line in out)

    def _get_help_string(self, action):
        if (action.required or action.default in (None, False, argparse.SUPPRESS)
                or "default" in (action.help or "")):
            return action.help
        return super()._get_help_string(action)
