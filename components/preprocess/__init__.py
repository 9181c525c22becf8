"""Preprocessing step: decode raw fundus/OCT images, normalise them, write TFRecord shards with Beam."""
