"""Command-line interface (typer): ``veil.cli.main:main``."""
