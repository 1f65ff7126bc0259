# The worker image used by docker-compose.yml: `capture-worker run` as a least-privilege login
# (the compose `migrate` service migrates and makes the login with the admin URL).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
RUN pip install . \
    && useradd --system --no-create-home --shell /usr/sbin/nologin capture

USER capture
EXPOSE 8080
CMD ["capture-worker", "run"]
