"""`python -m ldlm.cli.latents`: encode the train and validation blocks with the trained VAE."""

from ldlm.cli import common


def main(argv=None) -> None:
    common.stage_main(__doc__, "ldlm.data.latents:run_latents", argv)


if __name__ == "__main__":
    main()
