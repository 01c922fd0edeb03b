"""The Open Inference Protocol over gRPC: its messages, codec, service and lifecycle.

Only :mod:`inference_app.grpc.service` imports ``grpc``; :mod:`~inference_app.grpc.lifecycle`,
which the Gunicorn master runs, never does (gRPC is not fork-safe: a preloading master must
not start it).
"""
