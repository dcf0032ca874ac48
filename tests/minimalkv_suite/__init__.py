"""minimalkv's own conformance test classes, vendored from minimalkv 1.11.2 (BSD-3-Clause).

minimalkv publishes no tests in its wheel; these come from its source distribution. See README.md
for the upstream commit and every change, and LICENSE for minimalkv's license. The classes
are run against kvstore by ``tests/test_minimalkv_suite.py``; nothing here is collected on
its own (no file is named ``test_*.py``).
"""

import pytest

# The asserts are in these modules, not in the test file: let pytest explain their failures.
pytest.register_assert_rewrite(
    *(
        f"{__name__}.{module}"
        for module in (
            "basic_store",
            "hmac_decorator",
            "idgens",
            "prefix_decorator",
            "readonly_decorator",
            "url_encode_keys_decorator",
        )
    )
)
