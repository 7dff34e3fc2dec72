"""`python -m ldlm.cli.latents`: encode the train and validation blocks with the trained VAE."""

from ldlm.cli import common


def _stage():
    from ldlm.data.latents import run_latents
    return run_latents


def main(argv=None) -> None:
    common.stage_main(__doc__, _stage, argv)


if __name__ == "__main__":
    main()
