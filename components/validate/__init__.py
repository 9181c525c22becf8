"""Infra-validation step: the candidate SavedModel loaded in a private model server before any traffic."""
