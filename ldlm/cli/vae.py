"""`python -m ldlm.cli.vae`: train the TextVAE (resuming if a checkpoint exists), evaluate it."""

from ldlm.cli import common


def main(argv=None) -> None:
    args = common.parser(__doc__).parse_args(argv)

    def run():
        from ldlm.train.vae import run_vae
        cfg, run_dir = common.resolve(args)
        run_vae(cfg, run_dir)

    common.main_guard(run)


if __name__ == "__main__":
    main()
