"""Shared command-line plumbing: experiment + preset + overrides -> Config, run directory,
and user errors printed without a traceback."""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys
from typing import Callable

from ldlm.config import Config, load_experiment
from ldlm.errors import LdlmError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--exp", default="bbc_news",
                   help="experiment name (experiments/<name>.py) or path to its .py file")
    p.add_argument("--preset", default="cpu", help="tiny | cpu | base")
    p.add_argument("--run-dir", default=None,
                   help="run directory (default runs/<exp>_<preset>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set data.block_len=128 (repeatable)")
    return p


def resolve(args: argparse.Namespace) -> tuple[Config, pathlib.Path]:
    cfg = load_experiment(args.exp, args.preset, args.overrides)
    run_dir = pathlib.Path(args.run_dir or f"runs/{pathlib.Path(args.exp).stem}_{args.preset}")
    return cfg, run_dir


def main_guard(fn: Callable[[], object]) -> None:
    """Runs `fn`; an LdlmError becomes one line on stderr and exit status 2."""
    try:
        fn()
    except LdlmError as e:
        print(f"ldlm: error: {e}", file=sys.stderr)
        sys.exit(2)


def stage_main(description: str, stage: str, argv=None) -> None:
    """Entry point of a stage: parse the common flags, resolve the config, run the stage
    function named "package.module:function" with (cfg, run_dir). The import happens after
    parsing, so `--help` stays fast."""
    args = parser(description).parse_args(argv)

    def run():
        from ldlm.distributed import initialize_from_env

        initialize_from_env()
        module, function = stage.split(":")
        cfg, run_dir = resolve(args)
        getattr(importlib.import_module(module), function)(cfg, run_dir)

    main_guard(run)
