"""`python -m ldlm.cli.data`: prepare the corpus and report its splits."""

from ldlm.cli import common


def _stage():
    from ldlm.data.stages import run_data
    return run_data


def main(argv=None) -> None:
    common.stage_main(__doc__, _stage, argv)


if __name__ == "__main__":
    main()
