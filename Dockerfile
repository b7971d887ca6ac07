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

# No curl in the slim image: GET /healthz with Python (over TLS when AIOTUSD_TLS_CERT is set;
# the certificate is for the public name, so it is not verified against 127.0.0.1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import http.client, os, ssl, sys; port = int(os.environ.get('AIOTUSD_PORT', '1080')); c = http.client.HTTPSConnection('127.0.0.1', port, timeout=4, context=ssl._create_unverified_context()) if os.environ.get('AIOTUSD_TLS_CERT') else http.client.HTTPConnection('127.0.0.1', port, timeout=4); c.request('GET', '/healthz'); sys.exit(0 if c.getresponse().status == 200 else 1)"]

ENTRYPOINT ["aiotusd", "--host", "0.0.0.0", "--data-dir", "/data"]
