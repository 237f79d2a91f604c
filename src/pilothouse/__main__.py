"""``python -m pilothouse`` runs the CLI (the daemon and replicas start this way)."""

from pilothouse.cli.main import main

main()
