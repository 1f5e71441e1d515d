"""``python -m gradinspect`` runs the CLI."""

from gradinspect.cli import main

main()
