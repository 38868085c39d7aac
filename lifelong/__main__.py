"""``python -m lifelong`` runs the ``lifelong`` command."""
from lifelong.cli import main

main()
