"""`python -m ldlm.cli.notebooks --run-dir RUN`: execute every notebook on a finished run."""

import argparse

from ldlm.cli import common


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run-dir", default="runs/bbc_news_cpu")
    p.add_argument("--only", action="append", default=None,
                   help="notebook name without .py (repeatable)")
    args = p.parse_args(argv)

    def run():
        from ldlm.notebooks import run_notebooks

        for path in run_notebooks(args.run_dir, args.only):
            print(f"executed {path}")

    common.main_guard(run)


if __name__ == "__main__":
    main()
