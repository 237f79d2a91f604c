"""The model server a replica runs: verified loading, OIP v2 and v1 over REST, metrics."""
