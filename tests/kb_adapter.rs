//! End-to-end, four processes: a knowledge base created with its own LoRA adapter
//! (`zhiku kb create NAME --adapter DIR`) answers through it. The generator (SmolLM2 GGUF)
//! starts with no adapter; the orchestrator has it load the directory when the knowledge
//! base is created, and loads it again when the generator lost it.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use tonic::Code;
use zhiku_e2e::binary;
use zhiku_e2e::pipeline::{STARTUP, Services};
use zhiku_proto::v1::generator_client::GeneratorClient;
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;
use zhiku_proto::v1::{
    AskRequest, CreateKnowledgeBaseRequest, DescribeKnowledgeBaseRequest, DocumentInput,
    GeneratorInfoRequest, IngestRequest, SamplingParams, UnloadAdapterRequest, ask_event,
};

/// A PEFT LoRA adapter on SmolLM2-135M's q and v projections (576 hidden; 3 KV heads of
/// 64), random but seeded, large enough to change greedy answers.
fn write_smollm_adapter(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let r = 4;
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 8,
                           "target_modules": ["q_proj", "v_proj"]})
        .to_string(),
    )
    .unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = |n: usize, scale: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                (u * scale).to_le_bytes()
            })
            .collect()
    };
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for layer in 0..30 {
        for (module, out) in [("q_proj", 576), ("v_proj", 192)] {
            let p = format!("base_model.model.model.layers.{layer}.self_attn.{module}");
            data.push((
                format!("{p}.lora_A.weight"),
                vec![r, 576],
                random(r * 576, 1.0),
            ));
            data.push((
                format!("{p}.lora_B.weight"),
                vec![out, r],
                random(out * r, 0.1),
            ));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(
        views,
        None::<HashMap<String, String>>,
        &dir.join("adapter_model.safetensors"),
    )
    .unwrap();
}

async fn answer(client: &mut OrchestratorClient<tonic::transport::Channel>, kb: &str) -> String {
    let mut request = tonic::Request::new(AskRequest {
        question: "小拾喜欢做什么？".into(),
        knowledge_base: kb.into(),
        top_k: 1,
        sampling: Some(SamplingParams {
            max_new_tokens: Some(24),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(120));
    let mut stream = client.ask(request).await.expect("ask").into_inner();
    while let Some(event) = stream.next().await {
        if let Some(ask_event::Event::Answer(a)) = event.expect("ask event").event {
            assert!(!a.refused, "{a:?}");
            return a.text;
        }
    }
    panic!("the stream ended without an answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_knowledge_base_created_with_an_adapter_answers_through_it() {
    let data = tempfile::tempdir().unwrap();
    let adapter_dir = data.path().join("adapters/xiaoshi");
    write_smollm_adapter(&adapter_dir);
    let store = data.path().join("store");
    let services = Services::start_with(
        "SmolLM2-135M-Instruct-GGUF",
        &["--data-dir", store.to_str().unwrap()],
        &[],
    )
    .await;
    let orchestrator = &services.orchestrator;
    let mut client = services.client().await;
    let mut gen_client = GeneratorClient::new(services.generator.channel(STARTUP).await);

    // The CLI: a directory given to --adapter is loaded under the knowledge base's name.
    let cli = |args: &[&str]| {
        let out = Command::new(binary("zhiku"))
            .args(["--addr", &orchestrator.endpoint()])
            .args(args)
            .output()
            .expect("run zhiku");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = cli(&[
        "kb",
        "create",
        "tuned",
        "--adapter",
        adapter_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("adapter `tuned`"), "{out}");
    let (ok, out) = cli(&["kb", "create", "plain"]);
    assert!(ok, "{out}");
    let described = client
        .describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: "tuned".into(),
            metadata_only: true,
            ..Default::default()
        })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(described.adapter, "tuned");
    assert_eq!(
        Path::new(&described.adapter_path),
        std::fs::canonicalize(&adapter_dir).unwrap()
    );
    let info = gen_client
        .info(GeneratorInfoRequest {})
        .await
        .expect("generator info")
        .into_inner();
    assert!(
        info.adapters.iter().any(|a| a.name == "tuned" && !a.merged),
        "{:?}",
        info.adapters
    );

    // The same passage in both; greedy answers differ only by the adapter.
    let doc = DocumentInput {
        file_name: "xiaoshi.md".into(),
        content: "小拾是一只住在图书馆里的猫。小拾喜欢在午后的阳光下读诗，也喜欢追逐书架间的影子。"
            .as_bytes()
            .to_vec(),
        ..Default::default()
    };
    for kb in ["tuned", "plain"] {
        let mut stream = client
            .ingest(IngestRequest {
                knowledge_base: kb.into(),
                documents: vec![doc.clone()],
                ..Default::default()
            })
            .await
            .expect("ingest")
            .into_inner();
        while let Some(event) = stream.next().await {
            event.expect("ingest event");
        }
    }
    let tuned = answer(&mut client, "tuned").await;
    let plain = answer(&mut client, "plain").await;
    assert_ne!(tuned, plain, "the adapter changed nothing");
    assert_eq!(
        answer(&mut client, "plain").await,
        plain,
        "greedy answers repeat"
    );

    // The generator loses the adapter (a restart would too): the next Ask loads it again
    // from the path the knowledge base keeps, and answers as before.
    gen_client
        .unload_adapter(UnloadAdapterRequest {
            name: "tuned".into(),
        })
        .await
        .expect("unload");
    assert_eq!(answer(&mut client, "tuned").await, tuned);

    // A directory that holds no adapter creates nothing, and says why.
    let empty = data.path().join("not-an-adapter");
    std::fs::create_dir_all(&empty).unwrap();
    let err = client
        .create_knowledge_base(CreateKnowledgeBaseRequest {
            name: "broken".into(),
            adapter_path: empty.to_string_lossy().into_owned(),
            ..Default::default()
        })
        .await
        .expect_err("no adapter there");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("generator"), "{}", err.message());
    let missing = client
        .describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: "broken".into(),
            metadata_only: true,
            ..Default::default()
        })
        .await
        .expect_err("nothing was created");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
}
