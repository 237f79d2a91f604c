"""Level-based, idempotent reconcile loops: spec + observed state -> actions."""
