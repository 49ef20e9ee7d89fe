"""`python -m pinclip ...` is the same as the `pinclip` command."""

from pinclip.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
