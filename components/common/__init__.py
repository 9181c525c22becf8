"""Code every step shares: storage, the local stack, dataset layouts, synthetic data, configuration."""

import logging
import os

# boto3/botocore log every credential lookup at INFO; a step's log should show the step's work.
if not os.environ.get("RETINA_DEBUG_S3"):
    for _name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(_name).setLevel(logging.WARNING)
