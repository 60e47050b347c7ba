"""tasklens's errors and warnings."""

from __future__ import annotations

import warnings

import pytest

from tasklens.errors import TasklensWarning

pytestmark = pytest.mark.reliability


def test_tasklens_warnings_can_be_filtered_as_a_category():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("x", TasklensWarning, stacklevel=1)
    assert caught and issubclass(caught[0].category, UserWarning)
