"""`python -m ldlm.cli.dit`: train the latent DiT (resuming if a checkpoint exists), dump samples."""

from ldlm.cli import common


def main(argv=None) -> None:
    common.stage_main(__doc__, "ldlm.train.dit:run_dit", argv)


if __name__ == "__main__":
    main()
