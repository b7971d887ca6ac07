"""tusd's command-line flags, and what each is in aiotusd.

People who move from tusd bring its flags along (``-upload-dir``, ``-hooks-http``...). A
flag whose meaning is aiotusd's too is taken as an alias; one with no equivalent, or with a
meaning that differs (``-cors-allow-origin`` is a regular expression, ``--cors-origins`` a
list), stops the command with a hint rather than doing something the operator did not ask
for. The table is data, so that ``docs/coming-from-tusd.md`` and the tests can walk it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DOC = "docs/coming-from-tusd.md"


@dataclass(frozen=True)
class TusdFlag:
    """What one tusd flag becomes: the aiotusd ``settings`` that take its value (for a
    boolean flag, its truth), and ``also`` settings with fixed values that go with it (for
    a boolean flag: when it is true). Without either it has no equivalent, and ``hint``
    says what to do instead."""

    settings: tuple[str, ...] = ()
    also: Mapping[str, str] = field(default_factory=dict)
    switch: bool = False
    hint: str = ""

    def requires(self) -> tuple[str, ...]:
        """Every aiotusd setting the alias needs."""
        return (*self.settings, *self.also)


def _alias(*settings: str, switch: bool = False, **also: str) -> TusdFlag:
    return TusdFlag(settings=settings, also=also, switch=switch)


def _none(hint: str, switch: bool = False) -> TusdFlag:
    return TusdFlag(hint=hint, switch=switch)


_NO_GCS = _none("aiotusd stores uploads on a filesystem or in S3 (--storage s3)")
_NO_PPROF = _none("aiotusd has no profiling endpoint")

TUSD_FLAGS: dict[str, TusdFlag] = {
    # Listening
    "host": _alias("host"),
    "port": _alias("port"),
    "unix-sock": _alias("unix_socket"),
    "base-path": _alias("base_path"),
    "behind-proxy": _alias("behind_proxy", switch=True),
    # TLS
    "tls-certificate": _alias("tls_cert"),
    "tls-key": _alias("tls_key"),
    "tls-mode": _none("aiotusd takes TLS 1.2 and 1.3 with Python's default ciphers"),
    # The protocol
    "enable-experimental-protocol": _none("aiotusd speaks tus 1.0 only", switch=True),
    "disable-download": _alias("disable_download", switch=True),
    "disable-termination": _alias("disable_termination", switch=True),
    "max-size": _alias("max_size"),
    # CORS
    "disable-cors": TusdFlag(also={"cors_origins": ""}, switch=True),
    "cors-allow-origin": _none(
        "it takes a regular expression; aiotusd's --cors-origins takes a list of origins "
        "such as https://app.example.com, or *"),
    "cors-allow-credentials": _alias("cors_credentials", switch=True),
    "cors-allow-methods": _none("aiotusd allows the methods tus uses"),
    "cors-allow-headers": _alias("cors_allow_headers"),
    "cors-max-age": _none("aiotusd's preflight answers are cached for a day"),
    "cors-expose-headers": _alias("cors_expose_headers"),
    # Storage
    "upload-dir": _alias("data_dir"),
    "dir": _alias("data_dir"),
    "filelock-holder-poll-interval": _none("aiotusd's locks need no polling; see --lock-timeout"),
    "filelock-acquirer-poll-interval": _none("aiotusd's locks need no polling; see --lock-timeout"),
    "s3-bucket": _alias("s3_bucket", storage="s3"),
    "s3-object-prefix": _alias("s3_prefix"),
    "s3-endpoint": _alias("s3_endpoint"),
    "s3-part-size": _alias("s3_part_size"),
    "s3-concurrent-part-uploads": _alias("s3_concurrency"),
    "s3-max-buffered-parts": _none("aiotusd buffers --s3-concurrency parts per upload"),
    "s3-disable-content-hashes": _none(
        "aiotusd sends each part's Content-MD5 (S3 checks it) and no SHA-256", switch=True),
    "s3-disable-ssl": _none("give --s3-endpoint an http:// URL", switch=True),
    "s3-transfer-acceleration": _none(
        "give --s3-endpoint the bucket's accelerate endpoint", switch=True),
    "gcs-bucket": _NO_GCS,
    "gcs-object-prefix": _NO_GCS,
    "azure-storage": _NO_GCS,
    "azure-container-access-type": _NO_GCS,
    "azure-blob-access-tier": _NO_GCS,
    "azure-object-prefix": _NO_GCS,
    "azure-endpoint": _NO_GCS,
    # Hooks: tusd's receivers and scripts expect tusd's event document.
    "hooks-enabled-events": _alias("hooks_events"),
    "progress-hooks-interval": _alias("hooks_progress_interval"),
    "hooks-dir": _alias("hooks_dir", hooks_format="tusd"),
    "hooks-http": _alias("hooks_url", hooks_format="tusd"),
    "hooks-http-forward-headers": _alias("hooks_forward_headers"),
    "hooks-http-timeout": _alias("hooks_timeout"),
    "hooks-http-retry": _none(
        "aiotusd retries post events until --hooks-max-attempts or --hooks-max-age, and "
        "never blocking ones"),
    "hooks-http-backoff": _none("aiotusd's --hooks-retry-delay doubles with each retry"),
    "hooks-grpc": _none("aiotusd sends hooks over HTTP (--hooks-url), to a command "
                        "(--hooks-command) or to Python (--hooks-python)"),
    "hooks-grpc-retry": _none("aiotusd has no gRPC hooks"),
    "hooks-grpc-backoff": _none("aiotusd has no gRPC hooks"),
    "hooks-plugin": _none("in-process hooks are Python: --hooks-python module:function"),
    "hooks-stop-code": _none("a hook command rejects a request with its answer on stdout"),
    # Monitoring and logs
    "expose-metrics": _alias("metrics", switch=True),
    "metrics-path": _none("aiotusd serves metrics at /metrics; --metrics-port moves them"),
    "expose-pprof": _NO_PPROF,
    "pprof-path": _NO_PPROF,
    "pprof-block-profile-rate": _NO_PPROF,
    "pprof-mutex-profile-rate": _NO_PPROF,
    "show-greeting": _none("aiotusd has no greeting page; --demo serves an upload page",
                           switch=True),
    "verbose": _none("use --log-level", switch=True),
    "show-startup-logs": _none(
        "aiotusd's start-up lines are logged at info: --log-level warning leaves them out",
        switch=True),
    "log-format": _alias("log_format"),
    # Timeouts
    "network-timeout": _alias("idle_timeout", "send_timeout"),
    "timeout": _none("it is in milliseconds; aiotusd's --idle-timeout takes a duration "
                     "such as 60s"),
    "shutdown-timeout": _alias("shutdown_timeout"),
    "acquire-lock-timeout": _alias("lock_timeout"),
    "request-completion-timeout": _none("aiotusd records what a stopped request received"),
}
