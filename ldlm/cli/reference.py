"""`python -m ldlm.cli.reference`: train the reference LM that scores samples in `make eval` (resuming if a checkpoint exists)."""

from ldlm.cli import common


def main(argv=None) -> None:
    common.stage_main(__doc__, "ldlm.train.ar:run_reference", argv)


if __name__ == "__main__":
    main()
