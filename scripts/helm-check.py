#!/usr/bin/env python3
"""Renders the Helm chart in deploy/helm/outbox-relay and checks what it produces.

No Helm binary is installable here (neither Debian nor PyPI ships one), so the
chart is written in Go's text/template and its built-in functions only — a
subset Helm renders the same way — and rendered with Go's own text/template
(PyPI's go-template, a build of Go's library), with Helm's data: .Values (numbers
as float64, as Helm's JSON decoding gives them), .Release, .Chart, and every
template parsed together with _helpers.tpl. Then, for each set of values below:

- every Kubernetes object validates strictly against the Kubernetes 1.30 and
  1.37 OpenAPI schemas (PyPI's kubernetes-validate: unknown fields are errors);
- the ServiceMonitor selects the metrics Service's labels and names its port;
- probes, mounts, the config file's `<option>_file` lines and the volumes
  agree; no secret value is in the pod spec, the environment or the ConfigMap;
- the binary accepts the config file the chart generates: `outbox-relay doctor
  --config` (every key is a real option) with the secret files in place,
  against the test database (exit 0 or 1, never 64).

  python3 scripts/helm-check.py [--binary PATH]
"""
import argparse
import copy
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "deploy", "helm", "outbox-relay")
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]


def ensure(module, package):
    try:
        __import__(module)
    except ImportError:
        print(f"helm-check: installing {package} with pip", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", package], check=True)


ensure("go_template", "go-template")
ensure("kubernetes_validate", "kubernetes-validate")
ensure("yaml", "pyyaml")
import go_template  # noqa: E402
import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402

SECRET = "password=chart-check-secret-value"


def merge(base, override):
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def helm_numbers(value):
    """Helm decodes values through JSON: every number is a float64."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {k: helm_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [helm_numbers(v) for v in value]
    return value


def render(values, release="orders"):
    chart = yaml.safe_load(open(os.path.join(CHART, "Chart.yaml")))
    data = {
        "Values": helm_numbers(values),
        "Release": {"Name": release, "Namespace": "default", "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
    }
    helpers = open(os.path.join(CHART, "templates", "_helpers.tpl")).read()
    documents = []
    with tempfile.TemporaryDirectory() as tmp:
        data_file = os.path.join(tmp, "data.yaml")
        with open(data_file, "w") as f:
            yaml.safe_dump(data, f)
        for name in sorted(os.listdir(os.path.join(CHART, "templates"))):
            if name.startswith("_") or not name.endswith(".yaml"):
                continue
            source = os.path.join(tmp, name)
            with open(source, "w") as f:
                f.write(helpers + open(os.path.join(CHART, "templates", name)).read())
            out = os.path.join(tmp, name + ".out")
            go_template.render_template(source, data_file, out)
            if not os.path.exists(out):
                raise SystemExit(f"helm-check: templates/{name} did not render (a template error; Go printed it above)")
            text = open(out).read()
            if "<no value>" in text:
                raise SystemExit(f"helm-check: templates/{name} refers to a value that does not exist:\n{text}")
            for document in yaml.safe_load_all(text):
                if document:
                    documents.append((name, document))
    return documents


def check(name, values, binary, expect):
    problems = []
    documents = render(values)
    kinds = {}
    for template, document in documents:
        kinds.setdefault(document["kind"], []).append(document)
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked below
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except Exception as error:  # ValidationError, InvalidSchemaError
                problems.append(f"{template}: {document['kind']} is invalid for Kubernetes {version}: {error}")
    for kind, count in expect.items():
        if len(kinds.get(kind, [])) != count:
            problems.append(f"expected {count} {kind}, rendered {len(kinds.get(kind, []))}")

    deployment = kinds["Deployment"][0]
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    if any(labels.get(k) != v for k, v in selector.items()):
        problems.append("the Deployment's selector does not match its pod labels")
    relay = next(c for c in pod["containers"] if c["name"] == "outbox-relay")
    if relay["args"][:2] != ["run", "--config"]:
        problems.append(f"the relay container runs {relay['args']}")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if relay.get(probe, {}).get("httpGet", {}).get("path") != "/healthz":
            problems.append(f"{probe} is not /healthz (a standby is never /readyz-ready: a rolling update would hang)")
    if pod["terminationGracePeriodSeconds"] * 1000 <= int(values["config"].get("shutdown_timeout_ms", 10000)):
        problems.append("terminationGracePeriodSeconds is not longer than shutdown_timeout_ms")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in relay["volumeMounts"]}
    config = kinds["ConfigMap"][0]["data"]["outbox-relay.conf"]
    for index, secret in enumerate(values["secretFiles"]):
        volume, mount = volumes.get(f"secret-{index}"), mounts.get(f"secret-{index}")
        if not volume or volume["secret"]["secretName"] != secret["secretName"] or volume["secret"].get("defaultMode") != 0o400:
            problems.append(f"secret {secret['secretName']} is not mounted read-only for the relay alone")
        if not mount or not mount.get("readOnly"):
            problems.append(f"secret-{index} is not mounted read-only")
        line = f"{secret['option']}_file = {mount['mountPath'] if mount else '?'}/{secret['key']}"
        if line not in config:
            problems.append(f"the config file lacks `{line}`")
    everything = yaml.safe_dump([d for _, d in documents if d["kind"] != "Secret"])
    if SECRET in everything or "env" in relay:
        problems.append("a secret value (or any environment variable) reaches the pod spec or the ConfigMap")
    if values.get("doctorInitContainer"):
        doctor = pod.get("initContainers", [{}])[0]
        if doctor.get("args", [])[:1] != ["doctor"] or doctor.get("volumeMounts") != relay["volumeMounts"]:
            problems.append("the doctor init container does not run doctor with the relay's config and secrets")
    if values["mode"] == "sidecar":
        names = [c["name"] for c in pod["containers"]]
        wanted = [c["name"] for c in values["sidecar"]["containers"]] + ["outbox-relay"]
        if names != wanted:
            problems.append(f"sidecar mode: containers {names}, expected {wanted}")
    if "Service" in kinds:
        service = kinds["Service"][0]
        if not service["spec"].get("publishNotReadyAddresses"):
            problems.append("the metrics Service leaves the (not ready) hot standby unscraped")
        if any(labels.get(k) != v for k, v in service["spec"]["selector"].items()):
            problems.append("the metrics Service does not select the pods")
        for monitor in kinds.get("ServiceMonitor", []):
            if monitor["spec"]["selector"]["matchLabels"] != {k: service["metadata"]["labels"][k] for k in monitor["spec"]["selector"]["matchLabels"]}:
                problems.append("the ServiceMonitor does not select the metrics Service")
            ports = {p["name"] for p in service["spec"]["ports"]}
            if any(e["port"] not in ports for e in monitor["spec"]["endpoints"]):
                problems.append("the ServiceMonitor names a port the Service does not have")
    problems += binary_accepts(config, values, binary)
    status = "ok" if not problems else "FAILED"
    print(f"helm-check: {name}: {len(documents)} objects ({', '.join(sorted(kinds))}) {status}", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return not problems


def binary_accepts(config, values, binary):
    """The generated config file, with its secret files in place, read by the binary."""
    conninfo = os.environ.get("OUTBOX_TEST_PG")
    if not conninfo or not os.path.exists(binary):
        return [] if os.environ.get("HELM_CHECK_WITHOUT_BINARY") else ["no OUTBOX_TEST_PG or binary to read the config file with"]
    with tempfile.TemporaryDirectory() as tmp:
        text = config.replace("/var/run/secrets/outbox-relay/", tmp + "/")
        for index, secret in enumerate(values["secretFiles"]):
            os.makedirs(f"{tmp}/{index}", exist_ok=True)
            with open(f"{tmp}/{index}/{secret['key']}", "w") as f:
                f.write(conninfo if secret["option"] == "source" else "x=y\n")
        path = os.path.join(tmp, "outbox-relay.conf")
        with open(path, "w") as f:
            f.write(text)
        result = subprocess.run([binary, "doctor", "--config", path], capture_output=True, text=True, timeout=120)
        if result.returncode not in (0, 1) or "connection" not in result.stdout:
            return [f"`outbox-relay doctor --config` rejected the generated config file (exit {result.returncode}): {result.stderr.strip()}"]
    return []


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, ".build", "debug", "outbox-relay"))
    args = parser.parse_args()
    defaults = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    scenarios = [
        ("standalone, defaults", defaults, {"Deployment": 1, "ConfigMap": 1, "Service": 1, "PodDisruptionBudget": 1, "Secret": 0}),
        (
            "sidecar, ServiceMonitor, doctor, extra secrets",
            merge(
                defaults,
                {
                    "mode": "sidecar",
                    "doctorInitContainer": True,
                    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                    "createSourceSecret": {"enabled": True, "value": "host=db dbname=orders user=outbox_relay " + SECRET},
                    "repeatedConfig": {"kafka_property": ["compression.type=zstd", "acks=all"]},
                    "secretFiles": defaults["secretFiles"] + [{"option": "kafka_properties", "secretName": "kafka-sasl", "key": "client.properties"}],
                    "podAnnotations": {"example.com/team": "orders"},
                    "sidecar": {
                        "containers": [
                            {
                                "name": "orders",
                                "image": "example.com/orders:1.0",
                                "args": ["serve"],
                                "ports": [8080],
                                "env": [{"name": "PROFILE", "value": "prod"}],
                                "resources": {"requests": {"cpu": "100m"}},
                            }
                        ]
                    },
                },
            ),
            {"Deployment": 1, "ConfigMap": 1, "Service": 1, "ServiceMonitor": 1, "PodDisruptionBudget": 1, "Secret": 1},
        ),
        ("one replica, nothing optional", merge(defaults, {"replicaCount": 1, "service": {"enabled": False}}), {"PodDisruptionBudget": 0, "Service": 0}),
    ]
    ok = all([check(name, values, args.binary, expect) for name, values, expect in scenarios])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
