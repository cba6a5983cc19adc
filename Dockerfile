# syntax=docker/dockerfile:1
# Build:  docker build -t retention .
# Run:    docker run --rm -e RETENTION_DATABASE_URL=postgresql://… retention purge --dry-run
#         docker run --rm -e RETENTION_DATABASE_URL=postgresql://… retention db upgrade
# The image installs the same wheel the tests build; migrations ship inside the package.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY retention ./retention
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/retention --create-home retention
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/retention-*.whl && rm -rf /wheels
COPY policies /etc/retention/policies
ENV RETENTION_POLICY_DIR=/etc/retention/policies \
    RETENTION_STATE_DIR=/var/lib/retention \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/retention
ENTRYPOINT ["retention"]
CMD ["--help"]
