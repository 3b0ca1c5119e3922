"""The train command line around absl's parse: a mistake is one line (exit 2), and
`--help` lists every flag and every key of the chosen config (exit 0).

`train.py` defines the flags (`config_flags.DEFINE_config_file('config', ...)`, a required
`--workdir`, ...) and runs `app.run(main, flags_parser=...parse_flags...)`.
"""
from __future__ import annotations

import os
import sys

from absl import flags

from hyperstyle_jax.training.config import config_lines
from hyperstyle_jax.utils import cli

HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")

# Python's words in absl's messages for a wrong override type -> the user's.
_PLAIN_WORDS = (("invalid literal for int() with base 10", "expected an integer"),
                ("could not convert string to float", "expected a number"))


def flag_error(e: Exception) -> str:
    """A command-line mistake (absl / ml_collections exception) as one line."""
    message = str(e).strip()
    if isinstance(e, AttributeError):  # ml_collections: an override names no config field
        words = message.split('"')   # ... Did you mean "batch_size" instead of "bacth_size"?
        if "Did you mean" in message and len(words) >= 4:
            return f"no config key {words[3]!r} (did you mean {words[1]!r}?)"
        return f"no config key {message.strip(chr(39))} (see --help for the keys)"
    if isinstance(e, OSError) or "Traceback" in message:  # the file failed to load or run
        return f"--config: cannot load the config file ({message.splitlines()[-1].strip()})"
    for python, plain in _PLAIN_WORDS:
        message = message.replace(python, plain)
    return " ".join(message.removeprefix("flag ").split())


def print_help(doc: str, names) -> None:
    """`doc`, the flags `names` with their defaults, and every key of the `--config` file
    (with its `:stage` and overrides) with its value."""
    print(doc.strip(), "\noptions:")
    for name in names:
        flag = flags.FLAGS[name]
        default = flag.default_as_str if name == "config" else repr(flag.default)
        print(f"  --{'[no]' if flag.boolean else ''}{name}  {flag.help} (default: {default})")
    try:
        lines = config_lines(flags.FLAGS["config"].value)
    except (flags.Error, AttributeError, OSError) as e:
        print(f"\n(cannot list the config keys: {flag_error(e)})")
        return
    print(f"\nconfig keys of {flags.FLAGS['config'].config_filename} "
          "(override with --config.KEY=VALUE):")
    print("\n".join(f"  {line}" for line in lines))


def parse_flags(argv: list, doc: str, names) -> list:
    """absl's parse of `argv` (the `app.run` flags_parser); `names`: the flags `--help`
    lists under `doc`."""
    if any(a in HELP_FLAGS for a in argv[1:]):
        try:
            flags.FLAGS([a for a in argv if a not in HELP_FLAGS])
        except flags.Error:
            pass  # e.g. no --workdir: the help still lists the config's keys
        print_help(doc, names)
        sys.exit(0)
    try:
        rest = flags.FLAGS(argv)
        flags.FLAGS["config"].value.keys()  # config_flags loads the file lazily
    except (flags.Error, AttributeError, OSError) as e:
        sys.exit(cli.fail(flag_error(e)))
    workdir = flags.FLAGS["workdir"].value
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        sys.exit(cli.fail(f"--workdir {workdir}: is an existing file, not a folder"))
    if len(rest) > 1:
        sys.exit(cli.fail(f"unexpected arguments: {' '.join(rest[1:])}"))
    return rest
