"""`python -m ldlm.cli.tokenizer`: train the tokenizer and cut every split into blocks."""

from ldlm.cli import common


def main(argv=None) -> None:
    common.stage_main(__doc__, "ldlm.data.stages:run_tokenizer", argv)


if __name__ == "__main__":
    main()
