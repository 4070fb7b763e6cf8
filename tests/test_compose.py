"""The deployment files in compose/: Envoy configs validated by the real Envoy, sidecar configs
loaded by the sidecar's own loader, docker-compose and Kubernetes manifests checked for the
wiring between them."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy_harness import envoy_available

from sidecar.config import load_config
from sidecar.demo.envoy import ExtProcListener, bootstrap, envoy_binary, write_bootstrap
from sidecar.pending import build_pending_store

COMPOSE = Path(__file__).resolve().parent.parent / "compose"
needs_envoy = pytest.mark.skipif(envoy_available() is not None, reason=f"{envoy_available()}")


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def k8s_docs() -> list[dict[str, Any]]:
    text = (COMPOSE / "k8s" / "llm-gateway.yaml").read_text(encoding="utf-8")
    return [d for d in yaml.safe_load_all(text) if d]


def k8s_config_map() -> dict[str, str]:
    (config_map,) = [d for d in k8s_docs() if d["kind"] == "ConfigMap"]
    data: dict[str, str] = config_map["data"]
    return data


def sidecar_cluster(envoy_config: dict[str, Any]) -> dict[str, Any]:
    clusters = envoy_config["static_resources"]["clusters"]
    (cluster,) = [c for c in clusters if c["name"] == "llm_sidecar"]
    return dict(cluster)


def ext_proc_filter(envoy_config: dict[str, Any]) -> dict[str, Any]:
    hcm = envoy_config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    (ext_proc,) = [
        f for f in hcm["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"
    ]
    return dict(ext_proc["typed_config"])


@needs_envoy
def test_compose_envoy_config_is_valid() -> None:
    result = validate(COMPOSE / "envoy.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_envoy
def test_k8s_envoy_config_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(k8s_config_map()["envoy.yaml"], encoding="utf-8")
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_envoy
def test_demo_bootstrap_is_valid(tmp_path: Path) -> None:
    config = bootstrap(9901, 9000, [ExtProcListener("demo", 10000, 50051, True, 5.0)])
    result = validate(write_bootstrap(tmp_path / "demo.yaml", config))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_envoy
def test_envoy_rejects_a_broken_config(tmp_path: Path) -> None:
    """The validation above can fail: a bad processing mode is refused."""
    config = yaml.safe_load((COMPOSE / "envoy.yaml").read_text(encoding="utf-8"))
    ext_proc_filter(config)  # exists
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0]["typed_config"]["processing_mode"]["request_body_mode"] = "SOMETIMES"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert validate(path).returncode != 0


def test_k8s_envoy_config_matches_compose_except_the_sidecar_address() -> None:
    compose = yaml.safe_load((COMPOSE / "envoy.yaml").read_text(encoding="utf-8"))
    k8s = yaml.safe_load(k8s_config_map()["envoy.yaml"])
    expected = copy.deepcopy(compose)
    cluster = sidecar_cluster(expected)
    cluster["type"] = "STATIC"
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["address"] = "127.0.0.1"
    for c in expected["static_resources"]["clusters"]:
        if c["name"] == "llm_sidecar":
            c.update(cluster)
    assert k8s == expected


def test_envoy_configs_follow_the_recommendations() -> None:
    """Cache-only default: fail open, mode override on, BUFFERED request bodies."""
    for text in (
        (COMPOSE / "envoy.yaml").read_text(encoding="utf-8"),
        k8s_config_map()["envoy.yaml"],
    ):
        ext_proc = ext_proc_filter(yaml.safe_load(text))
        assert ext_proc["failure_mode_allow"] is True
        assert ext_proc["allow_mode_override"] is True
        assert ext_proc["processing_mode"]["request_body_mode"] == "BUFFERED"
        # Longer than the default single-flight wait (cache.lock_wait_ms = 3000).
        assert float(ext_proc["message_timeout"].rstrip("s")) > 3.0
        # The sidecar's transport-wait signal (docs/overload.md).
        assert "request.time" in ext_proc["request_attributes"]


def test_compose_sidecar_config_loads_and_matches_envoy() -> None:
    config = load_config(COMPOSE / "sidecar.yaml", environ={})
    assert config.cache.exact_store.startswith("redis://redis:")
    assert config.cache.vector_store.startswith("qdrant://qdrant:")
    assert config.server.grpc_host == "0.0.0.0"
    # Starts without SIDECAR_PENDING_KEY: Envoy's ext_proc needs no shared pending store.
    assert build_pending_store(config, {}).name == "memory"
    envoy = yaml.safe_load((COMPOSE / "envoy.yaml").read_text(encoding="utf-8"))
    endpoint = sidecar_cluster(envoy)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("sidecar", config.server.grpc_port)


def test_k8s_sidecar_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(k8s_config_map()["sidecar.yaml"], encoding="utf-8")
    config = load_config(path, environ={})
    assert config.server.grpc_port == 50051 and config.cache.default_cache_key
    assert build_pending_store(config, {}).name == "memory"


def test_k8s_pod_runs_envoy_and_the_sidecar_together() -> None:
    (deployment,) = [d for d in k8s_docs() if d["kind"] == "Deployment"]
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"envoy", "sidecar"}
    probe = containers["sidecar"]["readinessProbe"]["grpc"]
    assert probe == {"port": 50051, "service": "envoy.service.ext_proc.v3.ExternalProcessor"}


def test_docker_compose_wires_envoy_sidecar_redis_and_qdrant() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"envoy", "sidecar", "redis", "qdrant"}
    for service in ("envoy", "sidecar"):
        for volume in services[service]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (COMPOSE / source).is_file(), source
    assert (COMPOSE / services["sidecar"]["build"]["dockerfile"].split("/", 1)[1]).is_file()
    assert services["envoy"]["depends_on"]["sidecar"]["condition"] == "service_healthy"


def test_docker_compose_config_parses_with_the_docker_client() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker client has no compose plugin")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE / "docker-compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def _envoy_start_script(name: str) -> str:
    """The shell command that starts Envoy in docker-compose.yaml or the k8s manifest."""
    if name == "compose":
        compose = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text(encoding="utf-8"))
        script: str = compose["services"]["envoy"]["command"][0]
        return script.replace("$$", "$")  # compose's escape for a literal $
    (deployment,) = [d for d in k8s_docs() if d["kind"] == "Deployment"]
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    script = containers["envoy"]["args"][0]
    return script


@needs_envoy
@pytest.mark.parametrize("name", ["compose", "k8s"])
def test_envoy_start_script_sends_the_first_token_to_the_sidecar(tmp_path: Path, name: str) -> None:
    """Run the start script with Envoy in validate mode: the placeholder in initial_metadata
    becomes the first token of SIDECAR_AUTH_TOKEN and the result is a valid config."""
    source = tmp_path / "in.yaml"
    if name == "compose":
        source.write_text((COMPOSE / "envoy.yaml").read_text(encoding="utf-8"))
    else:
        source.write_text(k8s_config_map()["envoy.yaml"], encoding="utf-8")
    out = tmp_path / "out.yaml"
    script = (
        _envoy_start_script(name)
        .replace("/etc/envoy/envoy.yaml", str(source))
        .replace("/tmp/envoy.yaml", str(out))
        .replace("exec envoy ", f"exec {envoy_binary()} --mode validate --disable-hot-restart ")
    )
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_AUTH_TOKEN": "tok-new,tok-old"}
    done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    metadata = ext_proc_filter(yaml.safe_load(out.read_text()))["grpc_service"]["initial_metadata"]
    assert metadata == [{"key": "authorization", "value": "Bearer tok-new"}]


def test_deployments_give_the_sidecar_a_token() -> None:
    for config in (
        load_config(COMPOSE / "sidecar.yaml", environ={}),
        load_config_text(k8s_config_map()["sidecar.yaml"]),
    ):
        assert config.server.auth_token_env == "SIDECAR_AUTH_TOKEN"
    compose = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text(encoding="utf-8"))
    for service in ("envoy", "sidecar"):
        assert "SIDECAR_AUTH_TOKEN" in compose["services"][service]["environment"]
    (deployment,) = [d for d in k8s_docs() if d["kind"] == "Deployment"]
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        (env,) = [e for e in container["env"] if e["name"] == "SIDECAR_AUTH_TOKEN"]
        assert env["valueFrom"]["secretKeyRef"]["name"] == "llm-gateway-token"


def load_config_text(text: str) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sidecar.yaml"
        path.write_text(text, encoding="utf-8")
        return load_config(path, environ={})
