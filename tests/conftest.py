from __future__ import annotations

import pytest

from tasklens.models import load_model


@pytest.fixture(scope="session")
def organism():
    """The shipped organism, loaded once for the whole session."""
    return load_model("organism")
