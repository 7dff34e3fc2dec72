"""`python -m ldlm.cli.eval`: ldlm at every sampler and step budget against the AR baseline and real text."""

from ldlm.cli import common


def main(argv=None) -> None:
    common.stage_main(__doc__, "ldlm.eval.compare:run_eval", argv)


if __name__ == "__main__":
    main()
