# The one image for every app service (api, worker, beat, migrate): the command differs.
# Build stage makes a wheel; the runtime stage installs it without dev dependencies and
# without the source tree, so `celery -A` and `voiceagent` import one copy of the code.

FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md alembic.ini ./
COPY crm ./crm
COPY agent ./agent
COPY voice_gateway ./voice_gateway
COPY migrations ./migrations
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data
RUN useradd --create-home --home-dir /home/voiceagent --uid 10001 --user-group voiceagent \
    && mkdir -p /data \
    && chown voiceagent:voiceagent /data
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
USER voiceagent
WORKDIR /home/voiceagent
VOLUME ["/data"]
EXPOSE 8000
CMD ["voiceagent", "serve", "--host", "0.0.0.0", "--port", "8000"]
