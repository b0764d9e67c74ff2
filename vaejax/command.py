"""What every command (`train.py`, `python -m vaejax.evaluate`, ...) shares: flags -> validated options
-> work, and a problem a user can cause ends in one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vaejax.errors import VaejaxError


def one_line(text: str) -> str:
    """`text` on one line: a flag's value may hold line breaks, the report must not."""
    return " ".join(str(text).splitlines())


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) with exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


@dataclass(frozen=True)
class Command:
    """A command: its parser, how parsed flags become validated options (raising VaejaxError), and
    the work done with them (returning the exit code)."""

    prog: str
    build_parser: Callable[[], argparse.ArgumentParser]
    options: Callable[[argparse.Namespace], Any]
    run: Callable[[Any], int]
    interrupted: str = "interrupted"  # said on Ctrl-C
    interrupted_exit_code: int = 130  # the shell's code for death by SIGINT
    # the options' arguments of vaejax.devices.use_deterministic_kernels (none: its defaults)
    kernel_settings: Callable[[Any], dict] = lambda options: {}

    def main(self, argv: list[str] | None = None) -> int:
        try:
            flags = self.build_parser().parse_args(argv)
        except SystemExit as exit:  # a bad flag (one line already printed), or --help
            return exit.code if isinstance(exit.code, int) else 0
        try:
            options = self.options(flags)
            from vaejax import devices  # JAX, only for valid flags; its backend reads these when it starts

            devices.use_deterministic_kernels(**self.kernel_settings(options))
            return self.run(options)
        except VaejaxError as error:
            kind = "error: " if error.exit_code == 2 else ""  # an interrupt after a checkpoint is no error
            print(f"{self.prog}: {kind}{one_line(error)}", file=sys.stderr)
            return error.exit_code
        except KeyboardInterrupt:
            print(f"{self.prog}: {self.interrupted}", file=sys.stderr)
            return self.interrupted_exit_code
