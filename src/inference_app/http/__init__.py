"""The HTTP layer: Flask blueprints, marshmallow schemas and error envelopes over the core."""
