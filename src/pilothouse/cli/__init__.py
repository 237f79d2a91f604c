"""The ``pilothouse`` command line: kubectl-like verbs over the control API."""
