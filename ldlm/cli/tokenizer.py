"""`python -m ldlm.cli.tokenizer`: train the tokenizer and cut every split into blocks."""

from ldlm.cli import common


def _stage():
    from ldlm.data.stages import run_tokenizer
    return run_tokenizer


def main(argv=None) -> None:
    common.stage_main(__doc__, _stage, argv)


if __name__ == "__main__":
    main()
