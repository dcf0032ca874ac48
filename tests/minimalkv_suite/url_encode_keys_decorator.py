# Vendored from minimalkv 1.11.2, tests/test_url_encode_keys_decorator.py (see README.md beside this file).
# kvstore: changes are marked "kvstore:"; minimalkv names are bound to kvstore's classes.
import pytest

from kvstore.decorators import URLEncodeKeysDecorator

from .basic_store import BasicStore


class TestURLEncodeKeysDecorator(BasicStore):
    # kvstore: the base_store fixture (was a fresh DictStore()) is the subclass's.

    @pytest.fixture()
    def store(self, base_store):
        return URLEncodeKeysDecorator(base_store)

    def test_urlencode(self, store):
        store.put("key special:-🍺", b"val1")
        assert store.get("key special:-🍺") == b"val1"

    def test_urlencode_base_store(self, store, base_store, value):
        store.put("abc def/key", value)
        assert "abc+def%2Fkey" in base_store
        assert base_store.get("abc+def%2Fkey") == value
        assert store.get("abc def/key") == value

    # The invalid key is replaced by a valid one after encoding through
    # the decorator...
    test_exception_on_invalid_key_delete = None
    test_exception_on_invalid_key_get_file = None
    test_exception_on_invalid_key_get = None
