"""The Kubernetes backend of the three ports, the operator and the router pods."""
