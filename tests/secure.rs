//! API keys, TLS and metrics through `zhiku serve`: the CLI and grpcurl talk to a TLS
//! orchestrator with a CA this test makes (rcgen), a wrong key is refused with
//! UNAUTHENTICATED and a read-only key with PERMISSION_DENIED, and a `/metrics` scrape after
//! that traffic (over TLS, as every listener of a server with --tls-cert), parsed as
//! Prometheus text, holds the counters and histograms of every stage.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use zhiku_e2e::{
    ZhikuServe, binary, free_addr, grpcurl, minilm_dir, models_dir, test_certificates,
    tls_and_key_flags,
};

const STARTUP: Duration = Duration::from_secs(180);
const FULL_KEY: &str = "full-key-for-the-test";
const READ_ONLY_KEY: &str = "read-only-key-for-the-test";

fn zhiku(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary("zhiku"))
        .args(args)
        .env("ZHIKU_MODELS_DIR", models_dir())
        .env_remove("ZHIKU_API_KEY")
        .output()
        .expect("runs zhiku");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// GET /metrics over HTTP/1.1 and TLS, trusting the CA at `ca`: (status line, body).
fn scrape(addr: SocketAddr, ca: &str, key: Option<&str>) -> (String, String) {
    use rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).expect("metrics listener");
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    let auth = key
        .map(|k| format!("authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    // The server may close without TLS's close_notify: what was read counts.
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

fn labels(sample: &prometheus_parse::Sample) -> HashMap<String, String> {
    sample
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The observations of histogram `name` where label `key` is `value`.
fn histogram_count(scrape: &prometheus_parse::Scrape, name: &str, key: &str, value: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| key.is_empty() || labels(s).get(key).map(String::as_str) == Some(value))
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

/// The sum of counter or gauge `name` over samples whose labels include `want`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| {
            let l = labels(s);
            want.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{name} is not a counter or gauge: {other:?}"),
        })
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[test]
fn keys_tls_and_metrics_through_zhiku_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(dir.path());
    let data = dir.path().join("data");
    let qwen = models_dir().join("Qwen2.5-Coder-0.5B-Instruct-GGUF");
    let minilm = minilm_dir();
    let metrics = free_addr();
    let metrics_arg = metrics.to_string();
    let ZhikuServe {
        serve, embedder, ..
    } = ZhikuServe::spawn(
        &minilm,
        &qwen,
        &data,
        &["--metrics-listen", metrics_arg.as_str()]
            .into_iter()
            .chain(tls_and_key_flags(&cert, &key, FULL_KEY, READ_ONLY_KEY))
            .collect::<Vec<_>>(),
    );
    let orchestrator = serve.addr;
    let addr = format!("https://localhost:{}", orchestrator.port());
    let cli = |key: &str, args: &[&str]| {
        let mut all = vec!["--addr", addr.as_str(), "--ca-cert", ca.as_str()];
        if !key.is_empty() {
            all.extend(["--api-key", key]);
        }
        all.extend_from_slice(args);
        zhiku(&all)
    };

    // grpcurl over TLS with the test CA, the key in a header (-H: reflection too).
    let target = format!("localhost:{}", orchestrator.port());
    let grpcurl_with = |auth: &str, method: &str| {
        let output = Command::new(grpcurl())
            .args(["-cacert", &ca, "-H", auth, "-d", "{}", &target, method])
            .output()
            .expect("grpcurl");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // Health over TLS, with the key (health is guarded without --open-health).
    let deadline = Instant::now() + STARTUP;
    loop {
        let (_, stdout, stderr) = grpcurl_with(
            &format!("authorization: Bearer {FULL_KEY}"),
            "grpc.health.v1.Health/Check",
        );
        if stdout.contains("\"SERVING\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving: {stdout}\n{stderr}\n{}",
            serve.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The CLI over TLS with the full key.
    {
        let (code, stdout, stderr) = cli(FULL_KEY, &["kb", "create", "secure"]);
        assert!(code == 0, "{stdout}\n{stderr}\n{}", serve.logs());
    }
    // The start-up log prints the flags without the keys.
    let logs = serve.logs();
    assert!(
        !logs.contains(FULL_KEY) && !logs.contains(READ_ONLY_KEY),
        "{logs}"
    );

    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("a.txt"),
        "小拾喜欢玩手机、打游戏、看电影。阿敏喜欢吐槽小拾。",
    )
    .unwrap();
    let (code, stdout, stderr) = cli(
        FULL_KEY,
        &["ingest", docs.to_str().unwrap(), "--kb", "secure"],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for _ in 0..2 {
        let (code, stdout, stderr) = cli(
            READ_ONLY_KEY,
            &[
                "ask",
                "小拾喜欢做什么？",
                "--kb",
                "secure",
                "--max-new-tokens",
                "8",
            ],
        );
        assert_eq!(code, 0, "{stdout}\n{stderr}");
    }
    let (code, stdout, stderr) = cli(
        FULL_KEY,
        &[
            "ask",
            "量子色动力学的渐近自由是什么？",
            "--kb",
            "secure",
            "--threshold",
            "0.99",
            "--mode",
            "dense",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("根据已知信息无法回答该问题"), "{stdout}");

    // Wrong, missing and read-only keys.
    let (code, _, stderr) = cli("wrong-key", &["kb", "list"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("Unauthenticated") || stderr.contains("API key"),
        "{stderr}"
    );
    let (code, _, stderr) = cli("", &["kb", "list"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("authorization: Bearer"), "{stderr}");
    let (code, _, stderr) = cli(READ_ONLY_KEY, &["kb", "delete", "secure"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("read-only"), "{stderr}");

    let list = "zhiku.v1.Orchestrator/ListKnowledgeBases";
    let (ok, stdout, stderr) = grpcurl_with(&format!("authorization: Bearer {FULL_KEY}"), list);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("secure"), "{stdout}");
    let (ok, stdout, stderr) = grpcurl_with("authorization: Bearer wrong-key", list);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("Unauthenticated"), "{stderr}");

    // The internal services want a key too.
    let (ok, _, stderr) = {
        let output = Command::new(grpcurl())
            .args([
                "-plaintext",
                "-d",
                r#"{"texts": ["x"]}"#,
                &embedder.to_string(),
                "zhiku.v1.Embedder/Embed",
            ])
            .output()
            .expect("grpcurl");
        (
            output.status.success(),
            String::new(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert!(!ok && stderr.contains("Unauthenticated"), "{stderr}");

    // /metrics: over TLS as every listener, guarded by the key, then parsed.
    let (status, _) = scrape(metrics, &ca, None);
    assert!(status.contains("401"), "{status}");
    let (status, body) = scrape(metrics, &ca, Some(FULL_KEY));
    assert!(status.contains("200"), "{status}");
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text format");

    let ask = "/zhiku.v1.Orchestrator/Ask";
    assert!(
        value(
            &parsed,
            "zhiku_requests_total",
            &[("method", ask), ("status", "Ok")]
        )
        .is_some_and(|v| v >= 3.0),
        "{body}"
    );
    assert!(
        value(
            &parsed,
            "zhiku_requests_total",
            &[("status", "Unauthenticated")]
        )
        .is_some_and(|v| v >= 2.0),
        "{body}"
    );
    assert!(
        value(
            &parsed,
            "zhiku_requests_total",
            &[("status", "PermissionDenied")]
        )
        .is_some_and(|v| v >= 1.0),
        "{body}"
    );
    assert!(histogram_count(&parsed, "zhiku_request_duration_seconds", "method", ask) >= 3.0);
    for stage in ["embed", "search", "fuse", "prefill", "decode"] {
        assert!(
            histogram_count(&parsed, "zhiku_stage_duration_seconds", "stage", stage) >= 1.0,
            "no {stage} latency\n{body}"
        );
    }
    for queue in ["embedder_texts", "generator_requests"] {
        assert!(
            value(&parsed, "zhiku_queue_depth", &[("queue", queue)]).is_some(),
            "{body}"
        );
    }
    assert!(
        value(&parsed, "zhiku_active_sequences", &[]).is_some(),
        "{body}"
    );
    assert!(
        value(&parsed, "zhiku_tokens_total", &[("kind", "generated")]).is_some_and(|v| v >= 2.0),
        "{body}"
    );
    assert!(histogram_count(&parsed, "zhiku_decode_tokens_per_second", "", "") >= 1.0);
    // The second identical Ask reuses the first one's prompt blocks.
    assert!(
        value(
            &parsed,
            "zhiku_prefix_cache_lookups_total",
            &[("result", "hit")]
        )
        .is_some_and(|v| v >= 1.0),
        "{body}"
    );
    assert!(histogram_count(&parsed, "zhiku_embedder_batch_size", "", "") >= 3.0);
    assert!(
        value(
            &parsed,
            "zhiku_retrieval_passages_total",
            &[("kb", "secure")]
        )
        .is_some_and(|v| v >= 2.0),
        "{body}"
    );
    assert_eq!(
        value(
            &parsed,
            "zhiku_retrieval_asks_total",
            &[("kb", "secure"), ("refused", "true")]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(
            &parsed,
            "zhiku_retrieval_asks_total",
            &[("kb", "secure"), ("refused", "false")]
        ),
        Some(2.0),
        "{body}"
    );
}
