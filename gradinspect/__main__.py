"""``python -m gradinspect`` runs the CLI."""

from gradinspect.cli.commands import main

main()
