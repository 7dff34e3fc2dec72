"""`python -m ldlm <command> ...`: the same as the `ldlm` command."""

from ldlm.cli.main import main

main()
