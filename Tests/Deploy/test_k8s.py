"""deploy/k8s: every manifest validated offline against the Kubernetes 1.30 schemas bundled in
kubernetes-validate (strict: unknown fields fail), the kustomizations complete, and the properties the operator
guide promises (probes, drain, security contexts, PDB, who may reach Redis, the Sentinel variant's settings)."""
import pathlib

import kubernetes_validate
import pytest
import yaml

from conftest import DEPLOY

K8S = DEPLOY / "k8s"
# K3s' current stable line when this was written; kubernetes-validate 1.37 bundles schemas 1.25 … 1.37.
KUBERNETES_VERSION = "1.30.0"
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: pathlib.Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def resources(*directories: str) -> list:
    """The documents a kustomization applies (following directory entries)."""
    result = []
    for directory in directories:
        base = K8S / directory
        kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
        for entry in kustomization["resources"]:
            target = (base / entry).resolve()
            if target.is_dir():
                result += resources(str(target.relative_to(K8S)))
            else:
                result += documents(target)
    return result


def find(docs, kind, name):
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name, len(matches))
    return matches[0]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_is_valid_kubernetes(path):
    for document in documents(path):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_validation_rejects_a_broken_manifest():
    deployment = find(documents(K8S / "broker/deployment.yaml"), "Deployment", "agentchat-broker")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment["spec"]["replicas"] = 2
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomizations_cover_every_manifest():
    listed = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        for entry in yaml.safe_load(kustomization.read_text())["resources"]:
            target = (kustomization.parent / entry).resolve()
            assert target.exists(), f"{kustomization}: {entry} does not exist"
            if target.is_file():
                listed.add(target)
    assert set(MANIFESTS) == listed


@pytest.mark.parametrize("variant", [".", "sentinel"])
def test_every_variant_is_complete(variant):
    docs = resources(variant)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert len(names) == len(docs), "a resource is defined twice"
    for kind, name in [("Namespace", "agentchat"), ("Deployment", "agentchat-broker"), ("Service", "agentchat-broker"),
                       ("PodDisruptionBudget", "agentchat-broker"), ("ConfigMap", "agentchat"),
                       ("ConfigMap", "agentchat-redis-endpoint"), ("StatefulSet", "agentchat-redis"),
                       ("NetworkPolicy", "default-deny"), ("NetworkPolicy", "agentchat-redis")]:
        assert (kind, name) in names, (variant, kind, name)
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "agentchat", d["metadata"]["name"]


def test_broker_deployment():
    docs = resources(".")
    deployment = find(docs, "Deployment", "agentchat-broker")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
        assert container[probe]["httpGet"]["port"] == "http"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "/bin/sleep"
    # preStop sleep + the broker's longest drain (10 s, several processes) fit in the grace period.
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + 10
    assert container["resources"]["requests"] and container["resources"]["limits"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sources = container["envFrom"]
    assert {"configMapRef": {"name": "agentchat"}} in sources
    assert {"configMapRef": {"name": "agentchat-redis-endpoint"}} in sources
    assert {"secretRef": {"name": "agentchat", "optional": True}} in sources
    config = find(docs, "ConfigMap", "agentchat")["data"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert config["AGENTCHAT_DATA_DIR"] in mounts, "the data directory must be writable (an emptyDir)"
    assert config["AGENTCHAT_HOST"] == "0.0.0.0" and config["AGENTCHAT_PORT"] == "8080"
    assert find(docs, "ConfigMap", "agentchat-redis-endpoint")["data"] == {
        "AGENTCHAT_REDIS_URL": "redis://agentchat-redis:6379"}
    assert find(docs, "PodDisruptionBudget", "agentchat-broker")["spec"]["minAvailable"] == 1
    service = find(docs, "Service", "agentchat-broker")
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]


def test_broker_config_names_only_known_variables():
    from test_systemd import known_variables  # noqa: PLC0415
    from conftest import bin_dir  # noqa: PLC0415
    known = known_variables(bin_dir() / "agentchat-broker")
    for variant in (".", "sentinel"):
        for d in resources(variant):
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] in ("agentchat", "agentchat-redis-endpoint"):
                assert set(d["data"]) <= known, (variant, set(d["data"]) - known)


@pytest.mark.parametrize("variant", [".", "sentinel"])
def test_redis_statefulsets_keep_an_aof_on_a_volume_and_take_the_password_from_a_secret(variant):
    docs = resources(variant)
    statefulset = find(docs, "StatefulSet", "agentchat-redis")
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    password = [e for e in container["env"] if e["name"] == "REDIS_PASSWORD"]
    assert password[0]["valueFrom"]["secretKeyRef"] == {"name": "agentchat-redis", "key": "password"}
    config_name = next(v["configMap"]["name"] for v in statefulset["spec"]["template"]["spec"]["volumes"]
                       if "configMap" in v)
    redis_conf = find(docs, "ConfigMap", config_name)["data"]["redis.conf"]
    for line in ("appendonly yes", "appendfsync everysec", "dir /data"):
        assert line in redis_conf.splitlines()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("variant", [".", "sentinel"])
def test_only_the_broker_reaches_redis(variant):
    docs = resources(variant)
    deny = find(docs, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    policy = find(docs, "NetworkPolicy", "agentchat-redis")["spec"]
    redis_labels = find(docs, "StatefulSet", "agentchat-redis")["spec"]["template"]["metadata"]["labels"]
    assert all(redis_labels.get(k) == v for k, v in policy["podSelector"]["matchLabels"].items())
    allowed = [peer["podSelector"]["matchLabels"] for rule in policy["ingress"] for peer in rule["from"]]
    # Only broker pods, and (Sentinel variant) the Redis/Sentinel pods themselves.
    assert {"app.kubernetes.io/name": "agentchat-broker"} in allowed
    assert all(a in ({"app.kubernetes.io/name": "agentchat-broker"}, {"app.kubernetes.io/component": "redis"})
               for a in allowed)
    broker = find(docs, "NetworkPolicy", "agentchat-broker")["spec"]
    assert broker["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]


def test_sentinel_variant():
    docs = resources("sentinel")
    redis = find(docs, "StatefulSet", "agentchat-redis")
    sentinels = find(docs, "StatefulSet", "agentchat-sentinel")
    assert redis["spec"]["replicas"] == 2 and sentinels["spec"]["replicas"] == 3
    endpoint = find(docs, "ConfigMap", "agentchat-redis-endpoint")["data"]
    assert "AGENTCHAT_REDIS_URL" not in endpoint
    assert endpoint["AGENTCHAT_REDIS_MASTER"] == "agentchat"
    addresses = endpoint["AGENTCHAT_REDIS_SENTINELS"].split(",")
    assert addresses == [f"agentchat-sentinel-{i}.agentchat-sentinel:26379" for i in range(3)]
    scripts = find(docs, "ConfigMap", "agentchat-redis-sentinel")["data"]
    assert "sentinel monitor agentchat $master 6379 2" in scripts["start-sentinel.sh"]


def test_ingress_for_traefik_with_tls():
    ingress = find(documents(K8S / "ingress/ingress.yaml"), "Ingress", "agentchat-broker")
    assert ingress["spec"]["ingressClassName"] == "traefik"
    assert ingress["spec"]["tls"][0]["secretName"] == "agentchat-tls"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "agentchat-broker", "port": {"name": "http"}}


@pytest.mark.parametrize("script", ["start-redis.sh", "start-sentinel.sh"])
def test_sentinel_start_scripts_are_valid_shell(tmp_path, script):
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    text = find(resources("sentinel"), "ConfigMap", "agentchat-redis-sentinel")["data"][script]
    path = tmp_path / script
    path.write_text(text)
    result = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", "--shell=sh", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_broker_reads_the_redis_password_from_the_mounted_secret():
    docs = resources(".")
    config = find(docs, "ConfigMap", "agentchat")["data"]
    pod = find(docs, "Deployment", "agentchat-broker")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "redis-password")
    volume = next(v for v in pod["volumes"] if v["name"] == "redis-password")
    assert volume["secret"]["secretName"] == "agentchat-redis"
    (item,) = volume["secret"]["items"]
    assert config["AGENTCHAT_REDIS_PASSWORD_FILE"] == f"{mount['mountPath']}/{item['path']}"
    assert item["key"] == "password" and config["AGENTCHAT_REDIS_USERNAME"] == "agentchat"


def test_k8s_redis_configuration_runs_with_the_broker(tmp_path, broker_binary):
    """The single Redis's ConfigMap and start command run for real (paths moved to a temporary directory, a unix
    socket instead of port 6379): the default user is off, and the broker logs in as `agentchat` with the password
    file, as the Deployment configures it: /health 200."""
    import os  # noqa: PLC0415
    import re  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    from test_systemd import health, redis_cli, wait_for  # noqa: PLC0415
    docs = resources(".")
    statefulset = find(docs, "StatefulSet", "agentchat-redis")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    conf = find(docs, "ConfigMap", "agentchat-redis")["data"]["redis.conf"]
    run, data = tmp_path / "run", tmp_path / "data"
    run.mkdir()
    data.mkdir()
    socket_path = tmp_path / "redis.sock"
    conf = conf.replace("port 6379", f"port 0\nunixsocket {socket_path}").replace("dir /data", f"dir {data}")
    conf = conf.replace("/run/redis", str(run))
    (tmp_path / "redis.conf").write_text(conf)
    assert container["command"] == ["sh", "-c"]
    script = container["args"][0].replace("/run/redis", str(run)).replace("/etc/redis/redis.conf",
                                                                         str(tmp_path / "redis.conf"))
    env = dict(os.environ, REDIS_PASSWORD="broker-secret", REDIS_ADMIN_PASSWORD="admin-secret")
    redis = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = None
    try:
        wait_for(lambda: socket_path.exists(), "redis-server's socket")
        assert "NOAUTH" in redis_cli(socket_path, "GET", "x").stdout
        # The readiness probe's command, as the pod runs it.
        probe = container["readinessProbe"]["exec"]["command"]
        probe = [p.replace("redis-cli", f"redis-cli -s {socket_path}") for p in probe]
        assert subprocess.run(probe, env=env, timeout=30).returncode == 0
        password_file = tmp_path / "password"
        password_file.write_text("broker-secret")
        config = find(docs, "ConfigMap", "agentchat")["data"]
        broker_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCHAT_")}
        broker_env.update(config)
        broker_env.update(AGENTCHAT_HOST="127.0.0.1", AGENTCHAT_PORT="0", AGENTCHAT_DATA_DIR=str(tmp_path / "keys"),
                          AGENTCHAT_REDIS_URL=f"unix://{socket_path}", AGENTCHAT_REDIS_PASSWORD_FILE=str(password_file))
        broker = subprocess.Popen([str(broker_binary)], env=broker_env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", broker.stdout.readline())
        assert match
        wait_for(lambda: health(int(match.group(1)))[0] == 200, "/health 200")
    finally:
        for process in (broker, redis):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=20)
