# Vendored from minimalkv 1.11.2, tests/test_readonly_decorator.py (see README.md beside this file).
# kvstore: changes are marked "kvstore:"; minimalkv names are bound to kvstore's classes.
import pytest

from kvstore.decorators import ReadOnlyDecorator


class TestReadOnlyDecorator:
    def test_readonly(self, base_store):
        # kvstore: the wrapped store is the base_store fixture (was a fresh DictStore()).
        store0 = base_store
        store0.put("file1", b"content")

        store = ReadOnlyDecorator(store0)
        with pytest.raises(AttributeError):
            store.put("file1", b"content2")
        with pytest.raises(AttributeError):
            store.delete("file1")
        assert store.get("file1") == b"content"
        assert "file1" in store
        assert set(store.keys()) == {"file1"}
