# The outlet (and the orchestrator, same image) as a container (used by docker-compose.yml).
#   docker run IMAGE                          outlet run --config /etc/outlet/outlet.yaml
#   docker run --entrypoint orchestrator IMAGE run --config /etc/orchestrator/orchestrator.yaml
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app

RUN pip install --no-cache-dir uv

# Dependencies first (cached layer), then the project itself.
# Only the outlet, the orchestrator and their runtime dependencies: no harness (the
# `harness` workspace member and the dev group are left out).
COPY pyproject.toml uv.lock README.md ./
COPY harness/pyproject.toml ./harness/pyproject.toml
RUN uv sync --frozen --no-default-groups --no-install-project
COPY outlet ./outlet
COPY orchestrator ./orchestrator
RUN uv sync --frozen --no-default-groups

ENV PATH=/app/.venv/bin:$PATH
RUN mkdir -p /var/lib/outlet /etc/outlet /etc/orchestrator
EXPOSE 8080
ENTRYPOINT ["outlet"]
CMD ["run", "--config", "/etc/outlet/outlet.yaml"]
