"""Check that a `python3 ARGS` command would parse, without running it: the dry run of gpu_session.sh.

    python benchmarks/parse_only.py train.py --latent_dim 2 --workdir /tmp/run
    python benchmarks/parse_only.py benchmarks/determinism.py --epochs 3 --out x.json
    DRY_RUN=1 bash benchmarks/gpu_session.sh     # every python3 the script calls comes here

`train.py ARGS` is parsed and validated as train.py does it (vaejax.cli's parser, then its
Config and Launch validation), without training; a benchmark script's ARGS go to its
`build_parser().parse_args`; `-c CODE` is compiled; `-m pytest` and `-m pip` are skipped with a
line. Anything else fails, so a command gpu_session.sh adds must be taught here first. Exit 0 when
the command parses, else 1 (2 for a command this cannot check), with the reason on stderr; with
PARSE_ONLY_FAILURES set, each failure is also appended to that file.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SKIPPED_MODULES = ("pytest", "pip")  # they run tests and install packages: nothing to parse


class ParseFailure(Exception):
    pass


def parsed(parse, args: list[str]):
    """`parse(args)`, an argparse exit (bad flag) turned into ParseFailure; --help counts as parsed."""
    try:
        return parse(args)
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise ParseFailure(f"the flags do not parse (exit {exit.code})") from None
        return None


def check_train(args: list[str]) -> str:
    from vaejax.cli import COMMAND
    from vaejax.errors import VaejaxError

    flags = parsed(COMMAND.build_parser().parse_args, args)
    if flags is None:
        return "train.py: --help"
    try:
        config, _ = COMMAND.options(flags)
    except VaejaxError as error:
        raise ParseFailure(f"train.py: {error}") from None
    return f"train.py: {config.model}, latent {config.latent_dim}, {config.epochs} epochs -> {config.workdir}"


def check_script(path: Path, args: list[str]) -> str:
    spec = importlib.util.spec_from_file_location(f"parse_only_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "build_parser"):
        raise ParseFailure(f"{path.name} has no build_parser()")
    parsed(module.build_parser().parse_args, args)
    return f"{path.relative_to(ROOT)}: parses"


def check(argv: list[str]) -> str:
    """What the command `python3 *argv` is, once checked; ParseFailure when it would not parse."""
    if len(argv) >= 2 and argv[0] == "-c":
        try:
            compile(argv[1], "<python3 -c>", "exec")
        except SyntaxError as error:
            raise ParseFailure(f"python3 -c: {error}") from None
        return "python3 -c: compiles"
    if len(argv) >= 2 and argv[0] == "-m" and argv[1] in SKIPPED_MODULES:
        return f"python3 -m {argv[1]}: skipped in a dry run"
    if argv and argv[0].endswith(".py"):
        path = Path(argv[0]) if Path(argv[0]).is_absolute() else Path.cwd() / argv[0]
        if not path.is_file():
            raise ParseFailure(f"no script {argv[0]}")
        if path.resolve() == (ROOT / "train.py").resolve():
            return check_train(argv[1:])
        if path.resolve().parent == ROOT / "benchmarks":
            return check_script(path.resolve(), argv[1:])
    raise LookupError(f"parse_only.py cannot check `python3 {shlex.join(argv)}`: teach it this kind of command")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        print(f"dry run: {check(argv)}", flush=True)
        return 0
    except (ParseFailure, LookupError) as error:
        message = f"dry run: FAILS: python3 {shlex.join(argv)}: {error}"
        code = 1 if isinstance(error, ParseFailure) else 2
    print(message, file=sys.stderr, flush=True)
    if os.environ.get("PARSE_ONLY_FAILURES"):
        with open(os.environ["PARSE_ONLY_FAILURES"], "a") as failures:
            failures.write(message + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
