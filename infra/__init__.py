"""Deployment material (images, Kubernetes manifests) and, in `infra.local`, the local-development tooling."""
