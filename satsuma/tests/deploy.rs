//! Checks everything under `deploy/`: every YAML and JSON file parses; the Helm templates are
//! balanced and only use values, helpers and files that exist; the plain manifests agree with the
//! chart and with each other (selectors, ports, names, ConfigMap and Secret keys, config paths);
//! the example configs parse with the servers' real config parsers; the systemd units, the
//! Prometheus config and the Dockerfile point at things that exist; and every metric that the
//! Grafana dashboard and the alert rules query is present in the `/metrics` output of a real SFU
//! that carried real media (bots publishing and subscribing over UDP on 127.0.0.1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn chart() -> PathBuf {
    deploy().join("helm/satsuma")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn deploy_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    walk(&deploy(), &mut files);
    files.sort();
    files
}

fn is_template(path: &Path) -> bool {
    path.starts_with(chart().join("templates"))
}

/// All documents of a YAML stream, skipping empty ones (comments only).
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}"));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

fn yaml_one(path: &Path) -> Value {
    let mut docs = yaml_docs(&read(path), &path.display().to_string());
    assert_eq!(docs.len(), 1, "{} should hold one document", path.display());
    docs.remove(0)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {ptr} in {v}"))
}

fn u(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {ptr} in {v}"))
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a Vec<Value> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no array at {ptr} in {v}"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

// ------------------------------------------------------------------------------------------
// Parsing every file
// ------------------------------------------------------------------------------------------

#[test]
fn every_yaml_and_json_file_in_deploy_parses() {
    let mut yaml = 0;
    let mut json_files = 0;
    for path in deploy_files() {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "yaml" | "yml" if is_template(&path) => {} // checked by the template test
            "yaml" | "yml" => {
                let docs = yaml_docs(&read(&path), &path.display().to_string());
                assert!(!docs.is_empty(), "{} is empty", path.display());
                yaml += 1;
            }
            "json" => {
                json(&path);
                json_files += 1;
            }
            _ => {}
        }
    }
    // Chart.yaml, values.yaml, files/alerts.yml, the manifests, prometheus.yml, alerts.yml.
    assert!(yaml >= 6, "only {yaml} YAML files found");
    assert!(json_files >= 2, "only {json_files} JSON files found");
}

// ------------------------------------------------------------------------------------------
// Helm chart templates
// ------------------------------------------------------------------------------------------

/// The `{{ ... }}` actions of a template, trimmed of `-` markers and whitespace.
fn actions(text: &str, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .unwrap_or_else(|| panic!("{what}: unclosed {{{{"));
        let inner = &after[..end];
        assert!(!inner.contains("{{"), "{what}: nested {{{{ in {inner:?}");
        out.push(
            inner
                .trim_start_matches('-')
                .trim_end_matches('-')
                .trim()
                .to_string(),
        );
        rest = &after[end + 2..];
    }
    assert!(!rest.contains("}}"), "{what}: stray }}}}");
    out
}

/// Dotted paths following `prefix` in an action, e.g. `coordinator.port` for `.Values.`.
fn paths_after(action: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = action;
    while let Some(i) = rest.find(prefix) {
        let tail = &rest[i + prefix.len()..];
        let path: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .collect();
        out.push(path.trim_end_matches('.').to_string());
        rest = &tail[path.len()..];
    }
    out
}

fn quoted_after(action: &str, keyword: &str) -> Option<String> {
    let i = action.find(keyword)?;
    let tail = action[i + keyword.len()..].trim_start();
    let tail = tail.strip_prefix('"')?;
    Some(tail[..tail.find('"')?].to_string())
}

fn value_at<'a>(values: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted
        .split('.')
        .try_fold(values, |v, key| v.as_object()?.get(key))
}

#[test]
fn helm_templates_are_balanced_and_reference_what_exists() {
    let values = yaml_one(&chart().join("values.yaml"));
    let chart_meta = yaml_one(&chart().join("Chart.yaml"));
    assert_eq!(s(&chart_meta, "/apiVersion"), "v2");
    assert_eq!(s(&chart_meta, "/name"), "satsuma");

    let mut templates = Vec::new();
    walk(&chart().join("templates"), &mut templates);
    templates.sort();
    assert!(templates.len() >= 9, "{templates:?}");

    // Helpers defined in _helpers.tpl.
    let helpers_text = read(&chart().join("templates/_helpers.tpl"));
    let defined: BTreeSet<String> = actions(&helpers_text, "_helpers.tpl")
        .iter()
        .filter_map(|a| quoted_after(a, "define"))
        .collect();
    assert!(defined.contains("satsuma.fullname"), "{defined:?}");

    let mut used_values = BTreeSet::new();
    for path in &templates {
        let what = path.display().to_string();
        let text = read(path);
        let mut stack: Vec<&'static str> = Vec::new();
        for action in actions(&text, &what) {
            if action.starts_with("/*") {
                assert!(
                    action.ends_with("*/"),
                    "{what}: unclosed comment {action:?}"
                );
                continue;
            }
            let word = action.split_whitespace().next().unwrap_or("");
            match word {
                "if" => stack.push("if"),
                "range" => stack.push("range"),
                "with" => stack.push("with"),
                "define" => stack.push("define"),
                "else" => assert!(
                    matches!(stack.last(), Some(&"if" | &"with" | &"range")),
                    "{what}: else outside if/with/range"
                ),
                "end" => {
                    assert!(stack.pop().is_some(), "{what}: end without a block");
                }
                _ => {}
            }
            for p in paths_after(&action, ".Values.") {
                assert!(
                    value_at(&values, &p).is_some(),
                    "{what} uses .Values.{p}, which values.yaml does not define"
                );
                used_values.insert(p);
            }
            if let Some(name) = quoted_after(&action, "include") {
                assert!(defined.contains(&name), "{what} includes unknown {name}");
            }
            if let Some(file) = quoted_after(&action, ".Files.Get") {
                assert!(
                    chart().join(&file).is_file(),
                    "{what}: missing chart file {file}"
                );
            }
            if let Some(base) = quoted_after(&action, "$.Template.BasePath") {
                let file = base.trim_start_matches('/');
                assert!(
                    chart().join("templates").join(file).is_file(),
                    "{what}: includes missing template {file}"
                );
            }
        }
        assert!(stack.is_empty(), "{what}: unclosed blocks {stack:?}");
    }
    // Every leaf of values.yaml is used by some template (no dead settings), except labels and
    // annotations maps that are passed through whole.
    fn leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v.as_object() {
            Some(map) if !map.is_empty() => {
                for (k, child) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(child, &p, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut all = Vec::new();
    leaves(&values, "", &mut all);
    for leaf in all {
        let used = used_values
            .iter()
            .any(|u| leaf == *u || leaf.starts_with(&format!("{u}.")));
        assert!(used, "values.yaml sets {leaf}, which no template uses");
    }
}

#[test]
fn chart_files_are_copies_of_the_prometheus_and_grafana_files() {
    assert_eq!(
        read(&chart().join("files/alerts.yml")),
        read(&deploy().join("prometheus/alerts.yml")),
        "helm/satsuma/files/alerts.yml must equal prometheus/alerts.yml"
    );
    assert_eq!(
        read(&chart().join("files/satsuma-sfu.json")),
        read(&deploy().join("grafana/satsuma-sfu.json")),
        "helm/satsuma/files/satsuma-sfu.json must equal grafana/satsuma-sfu.json"
    );
}

// ------------------------------------------------------------------------------------------
// Rendered manifests
// ------------------------------------------------------------------------------------------

struct Manifests {
    docs: Vec<Value>,
    /// Template file name → kinds rendered from it (from the `# Source:` comments).
    sources: BTreeMap<String, Vec<String>>,
}

fn manifests() -> Manifests {
    let text = read(&deploy().join("kubernetes/satsuma.yaml"));
    let mut docs = Vec::new();
    let mut sources: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for chunk in text.split("\n---\n").skip(1) {
        let source = chunk
            .lines()
            .find_map(|l| l.strip_prefix("# Source: satsuma/templates/"))
            .unwrap_or_else(|| panic!("document without # Source: comment:\n{chunk}"))
            .to_string();
        let mut parsed = yaml_docs(chunk, &source);
        assert_eq!(parsed.len(), 1, "{source}");
        let doc = parsed.remove(0);
        sources
            .entry(source)
            .or_default()
            .push(s(&doc, "/kind").to_string());
        docs.push(doc);
    }
    Manifests { docs, sources }
}

impl Manifests {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    fn workloads(&self) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet")))
            .collect()
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().unwrap();
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn config_map_keys(m: &Manifests, name: &str) -> BTreeSet<String> {
    m.get("ConfigMap", name)["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

fn secret_keys(m: &Manifests, name: &str) -> BTreeSet<String> {
    let secret = m.get("Secret", name);
    let mut keys = BTreeSet::new();
    for field in ["data", "stringData"] {
        if let Some(map) = secret[field].as_object() {
            keys.extend(map.keys().cloned());
        }
    }
    keys
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    arr(workload, "/spec/template/spec/containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?
        .get("value")?
        .as_str()
}

fn container_port(c: &Value, name: &str) -> u64 {
    let port = arr(c, "/ports")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name} in {c}"));
    u(port, "/containerPort")
}

#[test]
fn rendered_manifests_match_the_chart_and_its_values() {
    let m = manifests();
    let values = yaml_one(&chart().join("values.yaml"));
    let chart_meta = yaml_one(&chart().join("Chart.yaml"));

    // Every template is rendered (or, if it is wrapped in an `if` over a value that is false by
    // default, left out), and with the kinds it declares.
    let mut templates = Vec::new();
    walk(&chart().join("templates"), &mut templates);
    for path in templates {
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if !file.ends_with(".yaml") {
            continue;
        }
        let text = read(&path);
        let first = actions(&text, &file).into_iter().next().unwrap_or_default();
        let enabled = match first.strip_prefix("if ") {
            Some(cond) => match cond.trim() {
                c if c.starts_with(".Values.") => {
                    value_at(&values, &c[".Values.".len()..]) != Some(&Value::Bool(false))
                }
                c if c.starts_with("not .Values.") => {
                    let v = value_at(&values, &c["not .Values.".len()..]).unwrap();
                    v.as_str().is_none_or(str::is_empty) && !v.as_bool().unwrap_or(false)
                }
                c => panic!("{file}: unexpected condition {c}"),
            },
            None => true,
        };
        let declared: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .map(|k| k.trim().to_string())
            .collect();
        match m.sources.get(&file) {
            Some(kinds) => {
                assert!(enabled, "{file} is disabled by default but rendered");
                assert_eq!(kinds, &declared, "{file}: rendered kinds differ");
            }
            None => assert!(!enabled, "{file} is enabled by default but not rendered"),
        }
    }

    // Values show up where they should.
    let image = format!(
        "{}:{}",
        s(&values, "/image/repository"),
        s(&chart_meta, "/appVersion")
    );
    for w in m.workloads() {
        for c in arr(w, "/spec/template/spec/containers") {
            assert_eq!(s(c, "/image"), image);
        }
    }
    let sfu = m.get("StatefulSet", "satsuma-sfu");
    assert_eq!(u(sfu, "/spec/replicas"), u(&values, "/sfu/replicas"));
    let sfu_c = container(sfu, "sfu");
    assert_eq!(container_port(sfu_c, "api"), u(&values, "/sfu/apiPort"));
    assert_eq!(container_port(sfu_c, "media"), u(&values, "/sfu/mediaPort"));
    let coord = m.get("Deployment", "satsuma-coordinator");
    assert_eq!(
        u(coord, "/spec/replicas"),
        u(&values, "/coordinator/replicas")
    );
    assert_eq!(
        container_port(container(coord, "coordinator"), "http"),
        u(&values, "/coordinator/port")
    );
    let coord_svc = m.get("Service", "satsuma-coordinator");
    assert_eq!(
        u(&arr(coord_svc, "/spec/ports")[0], "/port"),
        u(&values, "/coordinator/service/port")
    );

    // The dashboard and the alert rules are the files in deploy/.
    let dash = m.get("ConfigMap", "satsuma-dashboard");
    let embedded: Value = serde_json::from_str(s(dash, "/data/satsuma-sfu.json")).unwrap();
    assert_eq!(embedded, json(&deploy().join("grafana/satsuma-sfu.json")));
    let rule = m.get("PrometheusRule", "satsuma");
    assert_eq!(
        rule["spec"],
        yaml_one(&deploy().join("prometheus/alerts.yml"))
    );

    // Both workloads restart when the config changes (same checksum annotation).
    let sum = |w: &Value| s(w, "/spec/template/metadata/annotations/checksum~1config").to_string();
    assert_eq!(sum(sfu), sum(coord));
}

#[test]
fn rendered_manifests_cross_reference_each_other() {
    let m = manifests();

    // Unique names per kind; every document has apiVersion, kind and name.
    let mut seen = BTreeSet::new();
    for d in &m.docs {
        s(d, "/apiVersion");
        let key = (
            s(d, "/kind").to_string(),
            s(d, "/metadata/name").to_string(),
        );
        assert!(seen.insert(key.clone()), "duplicate {key:?}");
    }

    for w in m.workloads() {
        let name = s(w, "/metadata/name");
        let pod_labels = &w["spec"]["template"]["metadata"]["labels"];
        assert!(
            labels_match(&w["spec"]["selector"]["matchLabels"], pod_labels),
            "{name}: selector does not match its pod labels"
        );
        let pod = &w["spec"]["template"]["spec"];
        let volumes: BTreeMap<String, &Value> = pod["volumes"]
            .as_array()
            .map(|vs| vs.iter().map(|v| (s(v, "/name").to_string(), v)).collect())
            .unwrap_or_default();
        for c in arr(pod, "/containers") {
            let ports: Vec<&Value> = c["ports"]
                .as_array()
                .map(|p| p.iter().collect())
                .unwrap_or_default();
            let port_names: BTreeSet<&str> = ports.iter().map(|p| s(p, "/name")).collect();
            if pod["hostNetwork"] == true {
                for p in &ports {
                    assert_eq!(
                        p["containerPort"], p["hostPort"],
                        "{name}: hostNetwork port"
                    );
                }
            }
            for probe in ["readinessProbe", "livenessProbe"] {
                let port = &c[probe]["httpGet"]["port"];
                if let Some(pn) = port.as_str() {
                    assert!(
                        port_names.contains(pn),
                        "{name}: {probe} uses unknown port {pn}"
                    );
                }
            }
            // Environment: secret and configmap references exist; $(VAR) refers to an earlier
            // variable.
            let mut defined: BTreeSet<String> = BTreeSet::new();
            for e in c["env"].as_array().into_iter().flatten() {
                if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
                    let keys = secret_keys(&m, s(r, "/name"));
                    assert!(keys.contains(s(r, "/key")), "{name}: secret key {r}");
                }
                if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
                    let keys = config_map_keys(&m, s(r, "/name"));
                    assert!(keys.contains(s(r, "/key")), "{name}: configmap key {r}");
                }
                if let Some(v) = e["value"].as_str() {
                    let mut rest = v;
                    while let Some(i) = rest.find("$(") {
                        let tail = &rest[i + 2..];
                        let end = tail.find(')').unwrap();
                        assert!(
                            defined.contains(&tail[..end]),
                            "{name}: {} uses $({}) before it is defined",
                            s(e, "/name"),
                            &tail[..end]
                        );
                        rest = &tail[end..];
                    }
                }
                defined.insert(s(e, "/name").to_string());
            }
            // `--config PATH`: PATH is a key of the ConfigMap mounted at its directory.
            let args: Vec<&str> = arr(c, "/args")
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            let config = args
                .windows(2)
                .find(|w| w[0] == "--config")
                .map(|w| Path::new(w[1]))
                .unwrap_or_else(|| panic!("{name}: no --config"));
            let mount = arr(c, "/volumeMounts")
                .iter()
                .find(|vm| config.starts_with(s(vm, "/mountPath")))
                .unwrap_or_else(|| panic!("{name}: {} is not mounted", config.display()));
            let volume = volumes[s(mount, "/name")];
            let cm_name = s(volume, "/configMap/name");
            let keys = config_map_keys(&m, cm_name);
            let items = arr(volume, "/configMap/items");
            let file = config.file_name().unwrap().to_str().unwrap();
            assert!(
                items
                    .iter()
                    .any(|i| s(i, "/path") == file && keys.contains(s(i, "/key"))),
                "{name}: {file} is not an item of ConfigMap {cm_name}"
            );
        }
    }

    // Services select a workload and target ports it has.
    for svc in m.all("Service") {
        let name = s(svc, "/metadata/name");
        let selected: Vec<&Value> = m
            .workloads()
            .into_iter()
            .filter(|w| {
                labels_match(
                    &svc["spec"]["selector"],
                    &w["spec"]["template"]["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(
            selected.len(),
            1,
            "Service {name} selects {} workloads",
            selected.len()
        );
        let containers = arr(selected[0], "/spec/template/spec/containers");
        for p in arr(svc, "/spec/ports") {
            let target = s(p, "/targetPort");
            assert!(
                containers
                    .iter()
                    .any(|c| c["ports"].as_array().is_some_and(|ps| ps
                        .iter()
                        .any(|cp| cp["name"] == target && cp["protocol"] == p["protocol"]))),
                "Service {name} targets unknown port {target}"
            );
        }
    }

    // The StatefulSet's governing Service is headless and selects it.
    let sfu = m.get("StatefulSet", "satsuma-sfu");
    let governing = m.get("Service", s(sfu, "/spec/serviceName"));
    assert_eq!(governing["spec"]["clusterIP"], "None");

    // ServiceMonitors select a Service and scrape a port it has.
    let monitors = m.all("ServiceMonitor");
    assert_eq!(monitors.len(), 2);
    for sm in monitors {
        let name = s(sm, "/metadata/name");
        let services: Vec<&Value> = m
            .all("Service")
            .into_iter()
            .filter(|svc| {
                labels_match(
                    &sm["spec"]["selector"]["matchLabels"],
                    &svc["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(
            services.len(),
            1,
            "ServiceMonitor {name} selects {} Services",
            services.len()
        );
        for ep in arr(sm, "/spec/endpoints") {
            assert_eq!(s(ep, "/path"), "/metrics");
            assert!(
                arr(services[0], "/spec/ports")
                    .iter()
                    .any(|p| p["name"] == ep["port"]),
                "ServiceMonitor {name} scrapes unknown port {}",
                ep["port"]
            );
        }
    }
}

#[test]
fn kubernetes_configs_parse_with_the_real_parsers_and_point_at_each_other() {
    let m = manifests();
    let data = &m.get("ConfigMap", "satsuma-config")["data"];
    let sfu = m.get("StatefulSet", "satsuma-sfu");
    let sfu_c = container(sfu, "sfu");
    let coord_c = container(m.get("Deployment", "satsuma-coordinator"), "coordinator");

    // SFU: its TOML is a valid satsuma-sfu config file; the env overrides are well formed.
    let sfu_file: satsuma_sfu::config::FileConfig = toml::from_str(s(data, "/sfu.toml")).unwrap();
    assert_eq!(
        sfu_file.udp_bind.unwrap().port() as u64,
        container_port(sfu_c, "media")
    );
    let http_bind = env_value(sfu_c, "SATSUMA_SFU_HTTP_BIND").unwrap();
    assert_eq!(port_of(http_bind) as u64, container_port(sfu_c, "api"));
    // /metrics and /healthz have their own port, which the probes and the ServiceMonitor use;
    // the NetworkPolicy admits the API port from coordinator pods only.
    let metrics_bind = env_value(sfu_c, "SATSUMA_SFU_METRICS_BIND").unwrap();
    assert_eq!(
        port_of(metrics_bind) as u64,
        container_port(sfu_c, "metrics")
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(s(sfu_c, &format!("/{probe}/httpGet/port")), "metrics");
    }
    // Readiness follows /healthz (503 while draining); liveness /livez, which stays 200 while
    // the node drains, so a long drain does not get the pod killed.
    assert_eq!(s(sfu_c, "/readinessProbe/httpGet/path"), "/healthz");
    assert_eq!(s(sfu_c, "/livenessProbe/httpGet/path"), "/livez");
    let monitor = m.get("ServiceMonitor", "satsuma-sfu");
    assert_eq!(s(monitor, "/spec/endpoints/0/port"), "metrics");
    let policy = m.get("NetworkPolicy", "satsuma-sfu");
    let api_port = container_port(sfu_c, "api");
    for rule in arr(policy, "/spec/ingress") {
        let opens_api = rule["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["port"].as_u64() == Some(api_port));
        if opens_api {
            let from = arr(rule, "/from");
            assert_eq!(from.len(), 1, "{rule:?}");
            assert_eq!(
                s(
                    &from[0],
                    "/podSelector/matchLabels/app.kubernetes.io~1component"
                ),
                "coordinator"
            );
        }
    }
    let app: satsuma_sfu::App = env_value(sfu_c, "SATSUMA_SFU_APPS")
        .unwrap()
        .parse()
        .unwrap();

    // Coordinator: its TOML is a valid satsuma-coordinator config; it lists every SFU pod by
    // its stable DNS name at the API port, with the SFU's app id.
    let coord_file: satsuma_coordinator::Cli =
        toml::from_str(s(data, "/coordinator.toml")).unwrap();
    assert_eq!(
        coord_file.listen.unwrap().port() as u64,
        container_port(coord_c, "http")
    );
    assert_eq!(coord_file.sfu_app_id.as_deref(), Some(app.id.as_str()));
    assert_eq!(
        coord_file.dev,
        Some(false),
        "production manifests must not open /token"
    );
    let nodes = coord_file.sfu_nodes.unwrap();
    assert_eq!(nodes.len() as u64, u(sfu, "/spec/replicas"));
    let sts = s(sfu, "/metadata/name");
    let svc = s(sfu, "/spec/serviceName");
    for (i, url) in nodes.iter().enumerate() {
        assert_eq!(
            url,
            &format!(
                "http://{sts}-{i}.{svc}.satsuma.svc.cluster.local:{}",
                container_port(sfu_c, "api")
            )
        );
    }
    // The web client path is where the image puts it.
    let dockerfile = read(&deploy().join("Dockerfile"));
    let web_dir = coord_file.web_dir.unwrap();
    assert!(
        dockerfile.contains(&format!("SATSUMA_WEB_DIR={}", web_dir.display())),
        "coordinator web_dir {} is not the image's web dir",
        web_dir.display()
    );
}

// ------------------------------------------------------------------------------------------
// Example configs, systemd units, Prometheus, Dockerfile
// ------------------------------------------------------------------------------------------

#[test]
fn example_configs_parse_with_the_real_parsers() {
    let dir = deploy().join("config");
    let sfu = satsuma_sfu::config::FileConfig::load(&dir.join("sfu.toml")).unwrap();
    let coord: satsuma_coordinator::Cli =
        toml::from_str(&read(&dir.join("coordinator.toml"))).unwrap();
    // The coordinator's only node is the SFU of sfu.toml.
    let sfu_http = sfu.http_bind.unwrap();
    assert_eq!(coord.sfu_nodes.unwrap(), vec![format!("http://{sfu_http}")]);
    // The all-in-one config passes the binary's own check.
    let out = Command::new(env!("CARGO_BIN_EXE_satsuma"))
        .arg("--config")
        .arg(dir.join("satsuma.toml"))
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
    // And a broken one does not.
    let broken = std::env::temp_dir().join(format!("satsuma-broken-{}.toml", std::process::id()));
    std::fs::write(&broken, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_satsuma"))
        .arg("--config")
        .arg(&broken)
        .arg("--check-config")
        .output()
        .unwrap();
    std::fs::remove_file(&broken).unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `key=value` lines of a systemd unit (all sections), in order.
fn unit_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("bad unit line {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn satsuma_env_vars() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_satsuma"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

fn coordinator_env_vars() -> BTreeSet<String> {
    use clap::CommandFactory;
    satsuma_coordinator::Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().to_string()))
        .collect()
}

#[test]
fn systemd_units_are_hardened_and_point_at_real_files() {
    let dir = deploy().join("systemd");
    let mut units = Vec::new();
    walk(&dir, &mut units);
    units.sort();
    let names: Vec<String> = units
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "satsuma-coordinator.service",
            "satsuma-sfu.service",
            "satsuma.service"
        ]
    );
    for path in units {
        let unit = path.file_stem().unwrap().to_str().unwrap().to_string();
        let entries = unit_entries(&read(&path));
        let get = |k: &str| {
            entries
                .iter()
                .filter(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        // The binary is the unit's namesake, configured from deploy/config/<short>.toml.
        let exec = get("ExecStart")[0];
        let mut words = exec.split_whitespace();
        assert_eq!(
            words.next(),
            Some(format!("/usr/local/bin/{unit}").as_str())
        );
        assert_eq!(words.next(), Some("--config"));
        let config = words.next().unwrap();
        let short = unit.strip_prefix("satsuma-").unwrap_or(&unit);
        assert_eq!(config, format!("/etc/satsuma/{short}.toml"));
        assert!(deploy().join(format!("config/{short}.toml")).is_file());
        let env_file = get("EnvironmentFile")[0];
        assert_eq!(env_file, format!("-/etc/satsuma/{short}.env"));
        let example = deploy().join(format!("config/{short}.env.example"));
        // Every variable of the example env file (and of Environment=) is one the binary reads.
        let mut vars: Vec<String> = read(&example)
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .map(|l| l.split('=').next().unwrap().to_string())
            .collect();
        vars.extend(
            get("Environment")
                .iter()
                .map(|e| e.split('=').next().unwrap().to_string()),
        );
        let known = match short {
            "satsuma" => satsuma_env_vars(),
            "coordinator" => coordinator_env_vars(),
            _ => BTreeSet::new(),
        };
        for var in vars {
            if var == "RUST_LOG" {
                continue;
            }
            match short {
                "sfu" => assert!(var.starts_with("SATSUMA_SFU_"), "{unit}: {var}"),
                _ => assert!(known.contains(&var), "{unit}: {var} is not read by {unit}"),
            }
        }
        // Hardening.
        for (key, want) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("DynamicUser", "yes"),
            ("CapabilityBoundingSet", ""),
            ("RestrictNamespaces", "yes"),
            ("MemoryDenyWriteExecute", "yes"),
            ("SystemCallArchitectures", "native"),
            ("KillSignal", "SIGTERM"),
        ] {
            assert_eq!(get(key), vec![want], "{unit}: {key}");
        }
        assert!(
            get("SystemCallFilter").contains(&"@system-service"),
            "{unit}"
        );
    }
}

#[test]
fn prometheus_scrapes_the_default_ports_and_loads_its_rules() {
    let prom = yaml_one(&deploy().join("prometheus/prometheus.yml"));
    for file in arr(&prom, "/rule_files") {
        assert!(
            deploy()
                .join("prometheus")
                .join(file.as_str().unwrap())
                .is_file()
        );
    }
    let jobs: BTreeMap<&str, &Value> = arr(&prom, "/scrape_configs")
        .iter()
        .map(|j| (s(j, "/job_name"), j))
        .collect();
    let target_port = |job: &str| port_of(s(jobs[job], "/static_configs/0/targets/0"));
    let sfu_file =
        satsuma_sfu::config::FileConfig::load(&deploy().join("config/sfu.toml")).unwrap();
    assert_eq!(
        target_port("satsuma-sfu"),
        sfu_file.http_bind.unwrap().port()
    );
    assert_eq!(
        target_port("satsuma-sfu"),
        satsuma_sfu::Config::default().http_bind.port()
    );
    let coord: satsuma_coordinator::Cli =
        toml::from_str(&read(&deploy().join("config/coordinator.toml"))).unwrap();
    assert_eq!(
        target_port("satsuma-coordinator"),
        coord.listen.unwrap().port()
    );
    for j in jobs.values() {
        assert_eq!(s(j, "/metrics_path"), "/metrics");
    }
    // Alert rules that name a job name one of these.
    let alerts = read(&deploy().join("prometheus/alerts.yml"));
    for part in alerts.split("job=\"").skip(1) {
        let job = &part[..part.find('"').unwrap()];
        assert!(jobs.contains_key(job), "alerts.yml uses unknown job {job}");
    }
}

#[test]
fn dockerfile_builds_every_binary_it_ships() {
    let text = read(&deploy().join("Dockerfile"));
    let stages: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .filter_map(|l| l.split(" AS ").nth(1))
        .collect();
    assert_eq!(stages, ["build", "runtime"], "multi-stage build expected");
    for line in text.lines().filter(|l| l.contains("--from=")) {
        let from = line
            .split("--from=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        assert!(stages.contains(&from), "COPY from unknown stage {from}");
    }
    // The packages it builds exist in the workspace and each provides its binary.
    let packages = ["satsuma-sfu", "satsuma-coordinator", "satsuma"];
    let build = text
        .lines()
        .find(|l| l.contains("cargo build --release"))
        .unwrap();
    for p in packages {
        assert!(
            build.contains(&format!("-p {p} ")) || build.ends_with(&format!("-p {p}")),
            "{p}"
        );
        assert!(
            text.contains(&format!("target/release/{p} ")),
            "{p} not copied"
        );
    }
    let members = read(&repo().join("Cargo.toml"));
    for dir in ["sfu", "coordinator", "satsuma"] {
        assert!(
            members.contains(&format!("\"{dir}\"")),
            "{dir} not a workspace member"
        );
    }
    assert!(
        text.contains("./scripts/build-web.sh"),
        "the web client is not built"
    );
    dockerfile_bundles_the_web_client(&text);
    // Every SATSUMA_* variable it sets is an option of `satsuma`, and the exposed ports are the
    // ones those settings and the SFU API use.
    let known = satsuma_env_vars();
    let mut env = BTreeMap::new();
    for word in text.split_whitespace() {
        if let Some((k, v)) = word.split_once('=')
            && k.starts_with("SATSUMA_")
        {
            assert!(known.contains(k), "Dockerfile sets unknown {k}");
            env.insert(k.to_string(), v.to_string());
        }
    }
    let expose = text
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .unwrap();
    let exposed: BTreeSet<&str> = expose.split_whitespace().collect();
    // The SFU API carries the app secret: it stays on the container's loopback, unexposed.
    assert!(
        env["SATSUMA_SFU_API"].starts_with("127.0.0.1:"),
        "the SFU API must stay on loopback in the image"
    );
    let want: BTreeSet<String> = [
        format!("{}/tcp", port_of(&env["SATSUMA_LISTEN"])),
        format!("{}/udp", port_of(&env["SATSUMA_MEDIA"])),
    ]
    .into();
    assert_eq!(
        exposed,
        want.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    let ignore = read(&deploy().join("Dockerfile.dockerignore"));
    assert!(ignore.lines().any(|l| l == "target/"));
}

/// The image ships the bundled page (app.bundle.js and e2ee-worker.bundle.js, made by esbuild
/// from npm in scripts/build-web.sh), not the ~30 modules it falls back to without npm: the
/// build stage installs Node.js and npm before it builds the web client, the build fails when
/// the bundles or the page's bundle entry are missing, and the Debian release's Node.js is new
/// enough for the esbuild that client/web/package-lock.json pins. (Checked on the text: CI does
/// not build this Dockerfile; scripts/test-deploy.sh builds its image with buildah.)
fn dockerfile_bundles_the_web_client(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    let at = |what: &str| lines.iter().position(|l| l.contains(what));
    let npm = at("apt-get install").filter(|&i| {
        let words: Vec<&str> = lines[i].split_whitespace().collect();
        words.contains(&"nodejs") && words.contains(&"npm")
    });
    let npm =
        npm.expect("the build stage installs nodejs and npm (apt-get install ... nodejs npm)");
    let runtime = at(" AS runtime").unwrap();
    let web = at("./scripts/build-web.sh").unwrap();
    assert!(
        npm < web && web < runtime,
        "npm is installed in the build stage before the web build"
    );
    for check in [
        "test -s client/web/public/app.bundle.js",
        "test -s client/web/public/e2ee-worker.bundle.js",
        "<script type=\"module\" src=\"app.bundle.js\"",
    ] {
        let i = at(check).unwrap_or_else(|| panic!("the build does not check {check:?}"));
        assert!(web < i && i < runtime, "{check:?} after the web build");
    }
    // Node.js majors of the Debian releases the build stage may use.
    let release = text
        .lines()
        .find_map(|l| l.strip_prefix("ARG DEBIAN_RELEASE="))
        .unwrap()
        .trim();
    let node = match release {
        "bookworm" => 18,
        "trixie" => 20,
        other => panic!("Node.js of Debian {other}: add it here"),
    };
    let lock = json(&repo().join("client/web/package-lock.json"));
    let esbuild = lock["packages"]["node_modules/esbuild"]["engines"]["node"]
        .as_str()
        .expect("esbuild's engines.node in client/web/package-lock.json");
    let needs: u32 = esbuild
        .trim_start_matches(">=")
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or_else(|| panic!("esbuild engines.node {esbuild:?}"));
    assert!(
        needs <= node,
        "esbuild needs Node.js {esbuild}; Debian {release} has {node}"
    );
}

// ------------------------------------------------------------------------------------------
// Grafana dashboard and alert rules against the real SFU's /metrics
// ------------------------------------------------------------------------------------------

/// `satsuma_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("satsuma_") {
        let before_ok = i == 0
            || !rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if before_ok {
            out.push(name.clone());
        }
        rest = &rest[i + name.len()..];
    }
    out
}

fn dashboard_exprs(dash: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in arr(dash, "/panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(s(t, "/expr").to_string());
        }
    }
    for var in arr(dash, "/templating/list") {
        if let Some(q) = var.pointer("/query/query").and_then(Value::as_str) {
            exprs.push(q.to_string());
        }
    }
    exprs
}

fn alert_exprs(rules: &Value) -> Vec<String> {
    arr(rules, "/groups")
        .iter()
        .flat_map(|g| arr(g, "/rules").iter().map(|r| s(r, "/expr").to_string()))
        .collect()
}

#[test]
fn dashboard_is_well_formed() {
    let dash = json(&deploy().join("grafana/satsuma-sfu.json"));
    assert_eq!(s(&dash, "/uid"), "satsuma-sfu");
    let vars: BTreeSet<&str> = arr(&dash, "/templating/list")
        .iter()
        .map(|v| s(v, "/name"))
        .collect();
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in arr(&dash, "/panels") {
        assert!(ids.insert(u(panel, "/id")), "duplicate panel id");
        let grid = &panel["gridPos"];
        assert!(
            u(grid, "/x") + u(grid, "/w") <= 24,
            "panel wider than the grid"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(s(panel, "/datasource/uid"), "${datasource}");
        let targets = arr(panel, "/targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for t in targets {
            queries += 1;
            let expr = s(t, "/expr");
            assert!(
                !metric_names(expr).is_empty(),
                "{expr} queries no satsuma metric"
            );
            // Every $variable is a dashboard variable or a Grafana built-in.
            for part in expr.split('$').skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    vars.contains(name.as_str()) || name.starts_with("__"),
                    "{expr} uses undefined ${name}"
                );
            }
        }
    }
    assert!(queries >= 10, "only {queries} queries");
    assert!(vars.contains("datasource"));
}

/// Metric names in a Prometheus text exposition.
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            l.split(|c: char| c == '{' || c.is_whitespace())
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_query_is_exported_by_a_real_sfu() {
    let mut config = satsuma_sfu::Config {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        ..satsuma_sfu::Config::default()
    };
    config.announce_ips = vec!["127.0.0.1".parse().unwrap()];
    let app = config.apps[0].clone();
    let sfu = satsuma_sfu::Server::bind(config).await.unwrap();
    let base = format!("http://{}", sfu.http_addr());

    // Real traffic: a publisher with audio and video, a subscriber pulling both (keyframe
    // requests flow when it joins), a wrong-secret API call, and garbage datagrams.
    let alice = satsuma_bot::Bot::connect(&base, &app.id, &app.secret)
        .await
        .unwrap();
    alice.publish_audio("mic").await.unwrap();
    alice.publish_video("cam").await.unwrap();
    let bob = satsuma_bot::Bot::connect(&base, &app.id, &app.secret)
        .await
        .unwrap();
    bob.subscribe(alice.session_id(), "mic").await.unwrap();
    bob.subscribe(alice.session_id(), "cam").await.unwrap();
    let http = reqwest::Client::new();
    let denied = http
        .post(format!("{base}/v1/apps/{}/sessions/new", app.id))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let garbage = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for datagram in [&b"\x00\x01garbage"[..], &[0x80; 3], &[0x16, 0xfe, 0xfd]] {
        garbage.send_to(datagram, sfu.udp_addr()).await.unwrap();
    }

    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    let dash = json(&deploy().join("grafana/satsuma-sfu.json"));
    for expr in dashboard_exprs(&dash) {
        for name in metric_names(&expr) {
            wanted.insert(name, format!("dashboard: {expr}"));
        }
    }
    let rules = yaml_one(&deploy().join("prometheus/alerts.yml"));
    for expr in alert_exprs(&rules) {
        for name in metric_names(&expr) {
            wanted.insert(name, format!("alert: {expr}"));
        }
    }
    assert!(wanted.len() >= 10, "{wanted:?}");
    // The relay's per-link series exist only on a node with relay links: the relay test
    // (sfu/tests/relay_nodes.rs) checks those the dashboard queries against two real nodes.
    wanted.retain(|name, _| !name.starts_with("satsuma_sfu_relay_"));

    // Media flows for a while; labelled series appear once their event happened. Poll until
    // everything is there (or give up after a generous time and report what is missing).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let exposed = exposed_names(&text);
        let missing: Vec<(&String, &String)> = wanted
            .iter()
            .filter(|(name, _)| !exposed.contains(*name))
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break missing
                .into_iter()
                .map(|(n, w)| format!("{n} ({w})"))
                .collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        missing.is_empty(),
        "queried but not exported by the SFU:\n{}",
        missing.join("\n")
    );
    bob.shutdown().await.unwrap();
    alice.shutdown().await.unwrap();
    sfu.shutdown().await;
}
