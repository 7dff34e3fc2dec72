"""`python -m ldlm.cli.ar`: train the autoregressive baseline LM (resuming if a checkpoint exists)."""

from ldlm.cli import common


def main(argv=None) -> None:
    common.stage_main(__doc__, "ldlm.train.ar:run_ar", argv)


if __name__ == "__main__":
    main()
