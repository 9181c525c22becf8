"""The infra-validation gate's private model server: a candidate that cannot load is a failed `available`
check with the server's reason (the server refuses to start, as TF Serving does), not an exception."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_a_candidate_that_cannot_load_fails_the_available_check(tmp_path):
    from components.validate.validation import private_server_checks

    staged = tmp_path / "staging" / "retina-oct" / "4"
    staged.mkdir(parents=True)
    (staged / "saved_model.pb").write_bytes(b"not a SavedModel")
    checks = private_server_checks(str(staged), staged, None, "retina-oct", 4, None, None, None)
    assert [(c.name, c.passed) for c in checks] == [("available", False)]
    assert "{{{name: retina-oct version: 4} due to error: " in checks[0].note
