# Settings of this instance; they override inference_app.config.DEFAULTS, and the
# INFERENCE_APP_<KEY> environment variables override them. See README "Configuration".

# The model `POST /predict` uses; default: the first model by name.
DEFAULT_MODEL = "iris"

# Requests with more rows than this get 422.
# MAX_ROWS = 10_000

# Request bodies above this many bytes get 413.
# MAX_CONTENT_LENGTH = 16 * 1024 * 1024

# Object rows with keys that are not features: "reject" (422) or "ignore".
# UNKNOWN_FEATURES = "reject"
