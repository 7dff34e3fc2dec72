"""`python -m ldlm.cli.vae`: train the TextVAE (resuming if a checkpoint exists), evaluate it."""

from ldlm.cli import common


def main(argv=None) -> None:
    common.stage_main(__doc__, "ldlm.train.vae:run_vae", argv)


if __name__ == "__main__":
    main()
