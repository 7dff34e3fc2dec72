"""`python -m ldlm.cli.data`: prepare the corpus and report its splits."""

from ldlm.cli import common


def main(argv=None) -> None:
    args = common.parser(__doc__).parse_args(argv)

    def run():
        from ldlm.data.stages import run_data
        cfg, run_dir = common.resolve(args)
        run_data(cfg, run_dir)

    common.main_guard(run)


if __name__ == "__main__":
    main()
