# gotham-connector: a small image running as an unprivileged user; state on a volume.
FROM python:3.11-slim AS build
WORKDIR /src
# gcc compiles connector/_native.c; only the build stage has it, the venv carries the result.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# The [iceberg] extra: committing to an Iceberg table is one config switch in the image.
COPY pyproject.toml constraints.txt README.md ./
COPY connector ./connector
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt '.[iceberg]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/gotham-connector connector \
 && mkdir -p /var/lib/gotham-connector /etc/gotham-connector \
 && chown connector /var/lib/gotham-connector
COPY --from=build /opt/venv /opt/venv
COPY examples/connector.toml /etc/gotham-connector/connector.toml
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER connector
VOLUME ["/var/lib/gotham-connector"]
# SIGTERM: unsubscribe, flush, checkpoint, exit 0 within 15 s (give the runtime 20 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["gotham-connector"]
CMD ["run", "--config", "/etc/gotham-connector/connector.toml"]
