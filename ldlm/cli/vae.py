"""`python -m ldlm.cli.vae`: train the TextVAE (resuming if a checkpoint exists), evaluate it."""

from ldlm.cli import common


def _stage():
    from ldlm.train.vae import run_vae
    return run_vae


def main(argv=None) -> None:
    common.stage_main(__doc__, _stage, argv)


if __name__ == "__main__":
    main()
