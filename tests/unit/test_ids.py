"""trovemeter.ids: the fast helpers give exactly what the standard library gives."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from trovemeter.ids import uuid5


@given(namespace=st.uuids(), name=st.text())
def test_uuid5_is_the_standard_librarys(namespace: uuid.UUID, name: str) -> None:
    assert uuid5(namespace, name) == str(uuid.uuid5(namespace, name))
