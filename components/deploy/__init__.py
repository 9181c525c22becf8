"""Deploy step: registry version -> SavedModel in the TF Serving repository, gated by a canary check."""
