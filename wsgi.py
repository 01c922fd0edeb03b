"""The WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

import os
from pathlib import Path

from inference_app import create_app
from inference_app.config import INSTANCE_PATH_ENV

app = create_app(
    instance_path=os.environ.get(INSTANCE_PATH_ENV, Path(__file__).parent / "instance")
)
