"""The base of the API's schemas: marshmallow's Schema, whose instances are shared rather
than copied.

flask-smorest deep-copies every endpoint's documentation each time an app registers a
blueprint, and that documentation holds the schema instances of the endpoint's arguments
and responses: copying each of them with all its fields took 40% of `create_app`, which
every gunicorn worker runs at boot (and every test that builds an app). A schema is
configured when it is constructed and never changed afterwards, by the service or by
flask-smorest and apispec, so a "copy" of one may be the schema itself.
"""

from __future__ import annotations

from typing import Any

import marshmallow


class Schema(marshmallow.Schema):
    def __deepcopy__(self, memo: dict[int, Any]) -> Schema:
        return self
