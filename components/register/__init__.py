"""Register step: MLflow registry versions, the `challenger` alias and the champion gate."""
