"""`python -m rlhi_local` is the `rlhi` command (the daemon is started this way)."""

from .cli import cli

if __name__ == "__main__":
    cli()
