"""Former name of ``scalable_lm.serving.http`` (kept for one release): this module is that one."""

import sys

from scalable_lm.serving import http as _http

sys.modules[__name__] = _http
