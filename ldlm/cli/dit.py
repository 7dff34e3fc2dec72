"""`python -m ldlm.cli.dit`: train the latent DiT (resuming if a checkpoint exists), dump samples."""

from ldlm.cli import common


def _stage():
    from ldlm.train.dit import run_dit
    return run_dit


def main(argv=None) -> None:
    common.stage_main(__doc__, _stage, argv)


if __name__ == "__main__":
    main()
