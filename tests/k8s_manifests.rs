//! deploy/k8s holds what a cluster needs for item 1 of the scaling design: every zhiku
//! workload is ready only when its grpc.health.v1 says so, asks for resources (the
//! generator a GPU), has a disruption budget, and each downstream service has the headless
//! service the orchestrator's `dns://` addresses resolve. The manifests are read with a small
//! reader of the YAML they are written in (block style; CI validates them against the
//! Kubernetes schema with kubernetes-validate, see .ci/run).

use std::path::Path;

use serde_json::{Map, Value, json};

const DIR: &str = "deploy/k8s";

/// One line of a manifest: its indentation and its text.
struct Line {
    indent: usize,
    text: String,
}

/// The documents of a manifest, read as the block-style YAML the files use: mappings,
/// sequences, plain and quoted scalars, flow sequences of scalars, `{}`, `|` blocks. Every
/// scalar is a string.
fn documents(yaml: &str) -> Vec<Value> {
    yaml.split("\n---\n")
        .map(|doc| {
            let raw: Vec<&str> = doc.lines().collect();
            let mut lines = Vec::new();
            let mut i = 0;
            while i < raw.len() {
                let line = raw[i];
                let text = line.trim_start();
                i += 1;
                if text.is_empty() || text.starts_with('#') {
                    continue;
                }
                let indent = line.len() - text.len();
                lines.push(Line {
                    indent,
                    text: text.to_owned(),
                });
                // A literal block: its lines are one scalar, kept whole.
                if text.ends_with(": |") || text == "- |" || text.ends_with(": |-") {
                    let mut block = Vec::new();
                    while i < raw.len()
                        && (raw[i].trim().is_empty()
                            || raw[i].len() - raw[i].trim_start().len() > indent)
                    {
                        block.push(raw[i].trim_start());
                        i += 1;
                    }
                    let last = lines.last_mut().unwrap();
                    last.text = format!(
                        "{}{}",
                        last.text.trim_end_matches(['|', '-']),
                        json!(block.join("\n"))
                    );
                }
            }
            let mut at = 0;
            node(&mut lines, &mut at)
        })
        .collect()
}

fn node(lines: &mut [Line], at: &mut usize) -> Value {
    if *at >= lines.len() {
        return Value::Null;
    }
    let indent = lines[*at].indent;
    if lines[*at].text.starts_with("- ") || lines[*at].text == "-" {
        sequence(lines, at, indent)
    } else {
        mapping(lines, at, indent)
    }
}

fn is_entry(text: &str) -> bool {
    !text.starts_with(['"', '\'', '[', '{'])
        && text.split_once(':').is_some_and(|(key, rest)| {
            !key.contains(' ') && (rest.is_empty() || rest.starts_with(' '))
        })
}

fn mapping(lines: &mut [Line], at: &mut usize, indent: usize) -> Value {
    let mut map = Map::new();
    while *at < lines.len() && lines[*at].indent == indent && !lines[*at].text.starts_with('-') {
        let text = lines[*at].text.clone();
        let (key, rest) = text.split_once(':').expect("a `key: value` line");
        *at += 1;
        let rest = rest.trim();
        let value = if !rest.is_empty() {
            scalar(rest)
        } else if *at < lines.len()
            && (lines[*at].indent > indent
                || (lines[*at].indent == indent && lines[*at].text.starts_with('-')))
        {
            node(lines, at)
        } else {
            Value::Null
        };
        map.insert(key.to_owned(), value);
    }
    Value::Object(map)
}

fn sequence(lines: &mut [Line], at: &mut usize, indent: usize) -> Value {
    let mut items = Vec::new();
    while *at < lines.len() && lines[*at].indent == indent && lines[*at].text.starts_with('-') {
        let rest = lines[*at].text[1..].trim_start().to_owned();
        if rest.is_empty() {
            *at += 1;
            items.push(node(lines, at));
        } else if is_entry(&rest) {
            // `- key: value`: a mapping whose first entry shares the dash's line.
            lines[*at].indent = indent + 2;
            lines[*at].text = rest;
            items.push(mapping(lines, at, indent + 2));
        } else {
            *at += 1;
            items.push(scalar(&rest));
        }
    }
    Value::Array(items)
}

fn scalar(text: &str) -> Value {
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return Value::Array(
            inner
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(scalar)
                .collect(),
        );
    }
    if text == "{}" {
        return Value::Object(Map::new());
    }
    if text.starts_with('"') {
        return serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    Value::String(text.trim_matches('\'').to_owned())
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every resource in deploy/k8s, with the file it is in.
fn resources() -> Vec<(String, Value)> {
    let mut all = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(root().join(DIR))
        .expect("deploy/k8s")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "kustomization.yaml" {
            continue;
        }
        for doc in documents(&std::fs::read_to_string(&path).unwrap()) {
            all.push((name.clone(), doc));
        }
    }
    all
}

fn of_kind<'a>(all: &'a [(String, Value)], kinds: &[&str]) -> Vec<&'a Value> {
    all.iter()
        .map(|(_, r)| r)
        .filter(|r| kinds.contains(&r["kind"].as_str().unwrap_or_default()))
        .collect()
}

fn named<'a>(all: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    of_kind(all, &[kind])
        .into_iter()
        .find(|r| r["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

fn containers(workload: &Value) -> &Vec<Value> {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
}

fn env(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}

#[test]
fn the_reader_reads_the_yaml_the_manifests_use() {
    let docs = documents(
        "a:\n  b: \"1\"\n  c: [\"x\", y]\n  d:\n    - e: f\n      g: h\n    - i\n  k: |\n    one\n    two\nl: {}\n---\nm: n\n",
    );
    assert_eq!(
        docs[0],
        json!({"a": {"b": "1", "c": ["x", "y"], "d": [{"e": "f", "g": "h"}, "i"], "k": "one\ntwo"}, "l": {}})
    );
    assert_eq!(docs[1], json!({"m": "n"}));
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let kustomization =
        &documents(&std::fs::read_to_string(root().join(DIR).join("kustomization.yaml")).unwrap())
            [0];
    let mut listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    listed.sort();
    let mut files: Vec<String> = resources().into_iter().map(|(f, _)| f).collect();
    files.dedup();
    assert_eq!(listed, files);
}

#[test]
fn every_workload_is_ready_by_its_health_check_and_asks_for_resources() {
    let all = resources();
    let workloads = of_kind(&all, &["Deployment", "StatefulSet"]);
    assert!(workloads.len() >= 5);
    for workload in workloads {
        let name = workload["metadata"]["name"].as_str().unwrap();
        for container in containers(workload) {
            let probe = &container["readinessProbe"];
            assert!(probe.is_object(), "{name}: no readinessProbe");
            let resources = &container["resources"];
            for (kind, what) in [
                ("requests", "cpu"),
                ("requests", "memory"),
                ("limits", "memory"),
            ] {
                assert!(
                    resources[kind][what].is_string(),
                    "{name}: no {kind}.{what}"
                );
            }
            let image = container["image"].as_str().unwrap();
            if !image.starts_with("zhiku") {
                continue;
            }
            // A zhiku service: ready when grpc.health.v1 says SERVING for its service.
            let service = format!(
                "zhiku.v1.{}",
                match name.trim_start_matches("zhiku-") {
                    "embedder" => "Embedder",
                    "retriever" => "Retriever",
                    "generator" => "Generator",
                    "orchestrator" => "Orchestrator",
                    other => panic!("a zhiku workload of unknown service {other}"),
                }
            );
            let grpc_port = container["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "grpc")
                .map(|p| p["containerPort"].clone())
                .unwrap_or_else(|| panic!("{name}: no port named grpc"));
            let listen = env(container, "ZHIKU_LISTEN").unwrap();
            assert!(listen.ends_with(&format!(":{}", grpc_port.as_str().unwrap())));
            if probe["grpc"].is_object() {
                assert_eq!(probe["grpc"]["port"], grpc_port, "{name}");
                assert_eq!(probe["grpc"]["service"], service.as_str(), "{name}");
                assert_eq!(
                    env(container, "ZHIKU_OPEN_HEALTH").as_deref(),
                    Some("true"),
                    "{name}: the kubelet's probe carries no key"
                );
            } else {
                let command = &probe["exec"]["command"];
                assert_eq!(command[0], "zhiku-healthcheck", "{name}");
                assert!(
                    command[1]
                        .as_str()
                        .unwrap()
                        .ends_with(grpc_port.as_str().unwrap())
                );
                assert_eq!(command[2], service.as_str(), "{name}");
            }
        }
    }
}

#[test]
fn the_generator_runs_on_a_gpu_and_reads_adapters_from_a_shared_volume() {
    let all = resources();
    let generator = named(&all, "Deployment", "zhiku-generator");
    let container = &containers(generator)[0];
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(
        env(container, "ZHIKU_GENERATOR_DEVICE").as_deref(),
        Some("cuda")
    );
    let volumes = generator["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let adapters = volumes
        .iter()
        .find(|v| v["name"] == "adapters")
        .expect("an adapters volume");
    let claim = adapters["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap();
    let pvc = named(&all, "PersistentVolumeClaim", claim);
    assert_eq!(
        pvc["spec"]["accessModes"][0], "ReadWriteMany",
        "every replica reads it"
    );
}

#[test]
fn each_downstream_has_the_headless_service_the_orchestrator_resolves() {
    let all = resources();
    let orchestrator = &containers(named(&all, "Deployment", "zhiku-orchestrator"))[0];
    for service in ["embedder", "retriever", "generator"] {
        let variable = format!("ZHIKU_{}_ADDR", service.to_uppercase());
        let address = env(orchestrator, &variable).unwrap_or_else(|| panic!("no {variable}"));
        let (name, port) = address
            .strip_prefix("dns://")
            .and_then(|a| a.split_once(':'))
            .unwrap_or_else(|| panic!("{variable}={address} is not dns://name:port"));
        let headless = named(&all, "Service", name);
        assert_eq!(
            headless["spec"]["clusterIP"], "None",
            "{name} is not headless"
        );
        assert_eq!(headless["spec"]["ports"][0]["port"], port, "{name}");
        let deployment = named(&all, "Deployment", &format!("zhiku-{service}"));
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        for (key, value) in headless["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&labels[key], value, "{name} selects no {service} pod");
        }
        let ports = containers(deployment)[0]["ports"].as_array().unwrap();
        assert!(
            ports.iter().any(|p| p["containerPort"] == port),
            "{name}: port {port}"
        );
    }
}

#[test]
fn every_workload_has_a_disruption_budget_and_the_generator_scales_on_its_queue() {
    let all = resources();
    let budgets = of_kind(&all, &["PodDisruptionBudget"]);
    for workload in of_kind(&all, &["Deployment", "StatefulSet"]) {
        let name = workload["metadata"]["name"].as_str().unwrap();
        if name.starts_with("prometheus") {
            continue;
        }
        let labels = &workload["spec"]["template"]["metadata"]["labels"];
        assert!(
            budgets.iter().any(|b| {
                b["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| &labels[k] == v)
            }),
            "{name} has no PodDisruptionBudget"
        );
    }
    let hpa = named(&all, "HorizontalPodAutoscaler", "zhiku-generator");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "zhiku-generator");
    let metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        .as_str()
        .unwrap();
    // prometheus-adapter serves that name, from the queue the generator reports.
    let adapter = named(&all, "ConfigMap", "prometheus-adapter");
    let rules = adapter["data"]["config.yaml"].as_str().unwrap();
    assert!(rules.contains(&format!("as: {metric}")), "{rules}");
    assert!(rules.contains("zhiku_queue_depth") && rules.contains("queue=\"generator_requests\""));
    let scheduler =
        std::fs::read_to_string(root().join("crates/zhiku-generator/src/engine/scheduler.rs"))
            .unwrap();
    assert!(scheduler.contains("set_queue(\"generator_requests\""));
    let service = named(&all, "APIService", "v1beta1.custom.metrics.k8s.io");
    assert_eq!(service["spec"]["service"]["name"], "prometheus-adapter");
}
