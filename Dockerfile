# aiotusd: a tus 1.0.0 resumable-upload server.
#
#   docker build -t aiotusd .
#   docker run -p 1080:1080 -v aiotusd-data:/data aiotusd
#
# Uploads and the SQLite database live in the volume /data. Further flags can
# follow the image name (`docker run ... aiotusd --max-size 5GiB`); settings can
# also come from AIOTUSD_<NAME> variables or a TOML file named by AIOTUSD_CONFIG,
# except host and data_dir, which the flags below fix (flags win).
# aiotusd gives in-flight requests shutdown_timeout (10 s) on SIGTERM; give
# `docker stop` a longer --time than that.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml setup.cfg README.md /src/
COPY server /src/server
COPY storage_backends /src/storage_backends
RUN pip install /src && rm -rf /src

RUN useradd --system --user-group --uid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin aiotusd \
    && mkdir -p /data \
    && chown aiotusd:aiotusd /data

USER aiotusd
WORKDIR /data
VOLUME /data
EXPOSE 1080

# GET /healthz on the port the server was given, however it was given: `aiotusd healthcheck
# --pid 1` loads the settings from the flags, environment and working directory of process 1
# (the server, or an init that runs it), and the config file they name; over TLS when
# tls_cert is set (the certificate is for the public name: not verified against 127.0.0.1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["aiotusd", "healthcheck", "--pid", "1"]

ENTRYPOINT ["aiotusd", "--host", "0.0.0.0", "--data-dir", "/data"]
