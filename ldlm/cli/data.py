"""`python -m ldlm.cli.data`: prepare the corpus and report its splits."""

from ldlm.cli import common


def main(argv=None) -> None:
    common.stage_main(__doc__, "ldlm.data.stages:run_data", argv)


if __name__ == "__main__":
    main()
