"""The WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

import logging
import os
import sys
from pathlib import Path

from inference_app import create_app
from inference_app.config import INSTANCE_PATH_ENV, ConfigError
from inference_app.core.errors import BundleError
from inference_app.logs import one_line

#: The exit status Gunicorn's arbiter takes for "the app failed to load"
#: (``gunicorn.arbiter.Arbiter.APP_LOAD_ERROR``): a worker exiting with it (no preload_app)
#: stops the server instead of being replaced by another that fails the same way.
APP_LOAD_ERROR = 4

try:
    app = create_app(
        instance_path=os.environ.get(INSTANCE_PATH_ENV, Path(__file__).parent / "instance")
    )
except (BundleError, ConfigError, OSError) as error:
    # A refused bundle or a bad setting is the operator's to fix: one error line in the
    # server's log format (Gunicorn's logging is set up before it imports this module, in
    # the master with preload_app), not a traceback, then a non-zero exit.
    logging.getLogger("inference_app").error("inference-app cannot start: %s", one_line(str(error)))
    sys.exit(APP_LOAD_ERROR)
