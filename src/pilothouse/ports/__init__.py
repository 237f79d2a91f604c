"""The three ports controllers see the world through (docs/architecture.md).

- :mod:`.workload`: revisions with N replicas of a template, gangs of workers, and what
  runs of them (a Deployment per revision and gated pods on Kubernetes; processes
  embedded).
- :mod:`.dataplane`: traffic weights and mirroring per revision, and the measurements the
  autoscaler and the rollout analysis read (the embedded router; router pods on
  Kubernetes).
- :mod:`.state`: resources, their status, events and users' requests, and model
  references (SQLite embedded; custom resources, the status subresource and Events on
  Kubernetes).

Only value types and protocols live here: no I/O. ``runtime.local`` implements all three
with processes, SQLite and the embedded router; ``runtime.memory`` implements them in
memory for the controller contract suite; a Kubernetes backend implements them next.
"""
