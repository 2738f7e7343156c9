"""``python -m csfnet``: the ``csfnet`` command (used by Kubeflow steps to run a command in a fresh process)."""

from csfnet.cli import main

raise SystemExit(main())
