"""Local process supervisor: Redis (if none answers), milvus-lite, Celery workers and the API.

`make run` uses it in the foreground; the integration tests use the same code with temporary ports and
directories, so what the tests start is exactly what a user runs.
"""
