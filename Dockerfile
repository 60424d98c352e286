# One image for every process: daphne, each domain's worker, and one-off management commands.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=project.settings \
    DJANGO_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bus ./bus
COPY project ./project
COPY workers ./workers
COPY consumers ./consumers
COPY routing.py manage.py ./
RUN pip install --no-cache-dir . && mkdir -p /data

EXPOSE 8000
CMD ["daphne", "--bind", "0.0.0.0", "--port", "8000", "project.asgi:application"]
