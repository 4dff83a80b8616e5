"""simclr-xb command line (placeholder)."""
import click

@click.group()
def main():
    """simclr-xb."""

@main.command()
def info():
    click.echo("info")
