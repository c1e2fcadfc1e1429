"""`python -m wd_cli ...` (and `torchrun -m wd_cli train stpt ...`) runs the `wd` command."""

from wd_cli.main import cli

if __name__ == "__main__":
    cli()
