"""Run medsearch from a checkout without installing it: `python cli.py index corpus/`."""

from medsearch.cli import main

if __name__ == "__main__":
    main()
