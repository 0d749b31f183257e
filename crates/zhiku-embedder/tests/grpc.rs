//! The embedder over real gRPC on loopback, with the real MiniLM model (and Rerank with a
//! tiny cross-encoder written by the test).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestServer, cosine, minilm_args};
use futures::StreamExt;
use tonic::Code;
use zhiku_proto::v1::{EmbedKind, EmbedRequest, EmbedderInfoRequest, TokenizeRequest};
use zhiku_runtime::ServerArgs;

fn request(texts: &[&str], kind: EmbedKind) -> EmbedRequest {
    EmbedRequest {
        texts: texts.iter().map(|t| t.to_string()).collect(),
        kind: kind as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_keeps_order_and_matches_the_model() {
    let server = TestServer::start(minilm_args(), ServerArgs::default()).await;
    let mut client = server.client().await;
    let texts = [
        "知识库问答",
        "LoRA 低秩适配",
        "hello world",
        "",
        "小拾喜欢看电影。",
    ];
    let response = client
        .embed(request(&texts, EmbedKind::Passage))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.embeddings.len(), texts.len());
    assert_eq!(response.dimensions, 384);
    for (text, embedding) in texts.iter().zip(&response.embeddings) {
        let alone = client
            .embed(request(&[text], EmbedKind::Passage))
            .await
            .unwrap()
            .into_inner();
        let cos = cosine(&embedding.values, &alone.embeddings[0].values);
        assert!(cos > 0.9999, "order or batching changed {text:?}: {cos}");
        assert!(!embedding.truncated);
        assert!(embedding.token_count >= 2, "[CLS] and [SEP] at least");
    }
    assert_eq!(
        response.total_tokens,
        response
            .embeddings
            .iter()
            .map(|e| e.token_count)
            .sum::<u32>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_and_the_server_stays_up() {
    let server = TestServer::start(minilm_args(), ServerArgs::default()).await;
    let mut client = server.client().await;

    let long = "检索增强生成。".repeat(200);
    let many: Vec<&str> = vec!["x"; 257];
    // One byte over --max-text-bytes (65536 by default).
    let huge = format!("{}xx", "知".repeat(65_536 / 3));
    // Each bad request, and what its message must name so that the caller can fix it.
    let bad: [(&str, EmbedRequest, &[&str]); 5] = [
        (
            "empty",
            request(&[], EmbedKind::Query),
            &["`texts` is empty"],
        ),
        (
            "too many",
            request(&many, EmbedKind::Query),
            &["at most 256"],
        ),
        (
            "unknown kind",
            EmbedRequest {
                texts: vec!["a".into()],
                kind: 7,
                ..Default::default()
            },
            &["`kind` 7"],
        ),
        (
            "over-long and rejected",
            EmbedRequest {
                texts: vec!["short".into(), long.clone()],
                reject_overlong: true,
                ..Default::default()
            },
            &["`texts[1]`", "limit of 256"],
        ),
        (
            "over the byte limit",
            request(&["short", &huge], EmbedKind::Passage),
            &[
                "`texts[1]` is 65537 bytes",
                "at most 65536",
                "--max-text-bytes",
            ],
        ),
    ];
    for (case, req, fragments) in bad {
        let status = client.embed(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
        for fragment in fragments {
            assert!(
                status.message().contains(fragment),
                "{case}: {:?} lacks {fragment:?}",
                status.message()
            );
        }
    }

    // Tokenize checks the same limit before tokenizing.
    let status = client
        .tokenize(TokenizeRequest {
            texts: vec![huge.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("--max-text-bytes"), "{status:?}");

    // Truncated by default, and reported.
    let truncated = client
        .embed(request(&["short", &long], EmbedKind::Passage))
        .await
        .unwrap()
        .into_inner();
    assert!(!truncated.embeddings[0].truncated);
    assert!(truncated.embeddings[1].truncated);
    assert_eq!(truncated.embeddings[1].token_count, 256);

    let info = client
        .info(EmbedderInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.dimensions, 384);
    assert_eq!(info.max_input_tokens, 256);
    assert_eq!(info.pooling, "mean");
    assert_eq!(info.dtype, "f32");
    assert_eq!(info.device, "cpu");
    assert_eq!(info.model_type, "bert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_stream_answers_in_request_order() {
    let server = TestServer::start(minilm_args(), ServerArgs::default()).await;
    let mut client = server.client().await;
    let requests: Vec<EmbedRequest> = (0..30)
        .map(|i| EmbedRequest {
            // Sizes vary so that later requests could finish first if order were not kept.
            texts: (0..(30 - i) % 7 + 1)
                .map(|j| format!("第{i}批第{j}句"))
                .collect(),
            kind: EmbedKind::Query as i32,
            id: format!("req-{i}"),
            ..Default::default()
        })
        .collect();
    let expected: Vec<(String, usize)> = requests
        .iter()
        .map(|r| (r.id.clone(), r.texts.len()))
        .collect();
    let responses = client
        .embed_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(String, usize)> = responses
        .map(|r| {
            let r = r.unwrap();
            (r.id, r.embeddings.len())
        })
        .collect()
        .await;
    assert_eq!(got, expected);

    // A bad request ends the stream with INVALID_ARGUMENT after the good ones before it.
    let mixed = vec![
        request(&["好"], EmbedKind::Query),
        request(&[], EmbedKind::Query),
        request(&["坏"], EmbedKind::Query),
    ];
    let mut stream = client
        .embed_stream(futures::stream::iter(mixed))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok());
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_reports_tokens_with_character_offsets() {
    let server = TestServer::start(minilm_args(), ServerArgs::default()).await;
    let mut client = server.client().await;
    let response = client
        .tokenize(TokenizeRequest {
            texts: vec!["我小 likes movies".into()],
            kind: EmbedKind::Query as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let tokens = &response.texts[0].tokens;
    assert_eq!(tokens.first().unwrap().text, "[CLS]");
    assert!(tokens.first().unwrap().special);
    assert_eq!(tokens.last().unwrap().text, "[SEP]");
    // Offsets are in characters: 小 is character 1 (bytes 3..6).
    let small = tokens
        .iter()
        .find(|t| t.text == "小")
        .expect("小 is a token");
    assert_eq!((small.start, small.end), (1, 2));
    let likes = tokens.iter().find(|t| t.text == "likes").expect("likes");
    assert_eq!((likes.start, likes.end), (3, 8));
    assert!(!response.texts[0].truncated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_calls_complete_batched() {
    let server = TestServer::start(minilm_args(), ServerArgs::default()).await;
    let channel = server.channel().await;
    let reference = {
        let mut client = zhiku_proto::v1::embedder_client::EmbedderClient::new(channel.clone());
        client
            .embed(request(&["第7个问题：知识库是什么？"], EmbedKind::Query))
            .await
            .unwrap()
            .into_inner()
            .embeddings[0]
            .values
            .clone()
    };
    let batches_before = server.state.batcher.stats().batches.load(Ordering::Relaxed);
    let calls = (0..200).map(|i| {
        let mut client = zhiku_proto::v1::embedder_client::EmbedderClient::new(channel.clone());
        tokio::spawn(async move {
            let text = format!("第{i}个问题：知识库是什么？");
            let response = client.embed(request(&[&text], EmbedKind::Query)).await?;
            Ok::<_, tonic::Status>((i, response.into_inner()))
        })
    });
    let results = tokio::time::timeout(Duration::from_secs(300), futures::future::join_all(calls))
        .await
        .expect("200 calls finish");
    for result in results {
        let (i, response) = result.unwrap().unwrap();
        assert_eq!(response.embeddings.len(), 1);
        if i == 7 {
            assert!(cosine(&response.embeddings[0].values, &reference) > 0.9999);
        }
    }
    let batches = server.state.batcher.stats().batches.load(Ordering::Relaxed) - batches_before;
    assert!(
        batches < 200,
        "200 single-text calls ran in {batches} batches: not batched"
    );
    assert!(
        server
            .state
            .batcher
            .stats()
            .largest_batch
            .load(Ordering::Relaxed)
            > 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overfull_queue_answers_resource_exhausted_at_once() {
    let mut args = minilm_args();
    args.max_queued_texts = 16;
    args.max_batch_tokens = 256;
    let server = TestServer::start(args, ServerArgs::default()).await;
    let channel = server.channel().await;
    let long = "检索增强生成先检索相关段落，再让模型据此回答问题。".repeat(6);
    let calls = (0..60).map(|_| {
        let mut client = zhiku_proto::v1::embedder_client::EmbedderClient::new(channel.clone());
        let texts = vec![long.clone(); 4];
        tokio::spawn(async move {
            client
                .embed(EmbedRequest {
                    texts,
                    ..Default::default()
                })
                .await
        })
    });
    // Nothing hangs: every call answers, embedded or refused.
    let results = tokio::time::timeout(Duration::from_secs(300), futures::future::join_all(calls))
        .await
        .expect("no call hangs");
    let mut ok = 0;
    let mut refused = 0;
    for result in results {
        match result.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("queue is full"),
                    "{}",
                    status.message()
                );
                refused += 1;
            }
        }
    }
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    // The server is fine afterwards.
    let mut client = server.client().await;
    assert!(
        client
            .embed(request(&["still up"], EmbedKind::Query))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_concurrency_limit_refuses_but_health_still_answers() {
    let server = TestServer::start(
        minilm_args(),
        ServerArgs {
            max_concurrent_requests: 2,
            ..ServerArgs::default()
        },
    )
    .await;
    let channel = server.channel().await;
    let long = "并发限制。".repeat(40);
    let calls: Vec<_> = (0..24)
        .map(|_| {
            let mut client = zhiku_proto::v1::embedder_client::EmbedderClient::new(channel.clone());
            let texts = vec![long.clone(); 16];
            tokio::spawn(async move {
                client
                    .embed(EmbedRequest {
                        texts,
                        ..Default::default()
                    })
                    .await
            })
        })
        .collect();
    let status = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "zhiku.v1.Embedder".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut busy = 0;
    for call in calls {
        if let Err(status) = call.await.unwrap() {
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert!(
                status.message().contains("--max-concurrent-requests"),
                "{}",
                status.message()
            );
            busy += 1;
        }
    }
    assert!(
        busy > 0,
        "24 concurrent calls against a limit of 2: some must be refused"
    );
}

/// Rerank over gRPC with a tiny cross-encoder written by the test (see
/// zhiku_embedder::testing::write_reranker: relevance grows with the share of "答案"):
/// scores in input order, the order best first, pairs of concurrent calls batched with the
/// same scores, and every bad request INVALID_ARGUMENT with what to fix. Without
/// --reranker-model: FAILED_PRECONDITION naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rerank_scores_orders_batches_and_checks_its_input() {
    use zhiku_embedder::testing;
    use zhiku_proto::v1::RerankRequest;

    let embedder_dir = tempfile::tempdir().unwrap();
    testing::write_checkpoint(embedder_dir.path(), "bert", 0, 64).unwrap();
    let reranker_dir = tempfile::tempdir().unwrap();
    testing::write_reranker(reranker_dir.path(), "xlm-roberta", 40, "答案").unwrap();
    let mut args = zhiku_embedder::EmbedderArgs::for_model(embedder_dir.path().to_string_lossy());
    args.max_client_batch_size = 4;
    let plain = TestServer::start(args.clone(), ServerArgs::default()).await;
    args.reranker_model = Some(reranker_dir.path().to_string_lossy().into_owned());
    let server = TestServer::start(args, ServerArgs::default()).await;
    let mut client = server.client().await;

    let info = client
        .info(EmbedderInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.reranker_model
            .ends_with(&*reranker_dir.path().to_string_lossy())
    );
    // 40 positions, less XLM-R's padding offset.
    assert_eq!(info.reranker_max_input_tokens, 38);

    let rerank = |query: &str, passages: &[&str]| RerankRequest {
        query: query.into(),
        passages: passages.iter().map(|p| p.to_string()).collect(),
        reject_overlong: false,
    };
    let passages = ["hello world", "答案 答案", "知识 答案 库 问答"];
    let response = client
        .rerank(rerank("问题", &passages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.order, [1, 2, 0]);
    assert_eq!(response.scores.len(), 3);
    for (i, s) in response.scores.iter().enumerate() {
        assert_eq!(s.index as usize, i);
        assert!((s.score - 1.0 / (1.0 + (-s.logit).exp())).abs() < 1e-6);
        assert!(!s.truncated);
    }
    assert_eq!(
        response.total_tokens,
        response.scores.iter().map(|s| s.token_count).sum::<u32>()
    );

    // Concurrent calls (their pairs batched together) get the scores they get alone.
    let mut calls = Vec::new();
    for _ in 0..16 {
        let mut client = client.clone();
        let request = rerank("问题", &passages);
        calls.push(tokio::spawn(async move {
            client.rerank(request).await.unwrap().into_inner()
        }));
    }
    for call in calls {
        let again = call.await.unwrap();
        for (a, b) in again.scores.iter().zip(&response.scores) {
            assert!((a.logit - b.logit).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
    let stats = server.state.reranker.as_ref().unwrap().batcher.stats();
    assert_eq!(stats.texts.load(Ordering::Relaxed), 3 + 16 * 3);

    // Bad requests: INVALID_ARGUMENT, with what to fix.
    let long_query = vec!["问题"; 30].join(" ");
    let long_passage = vec!["段落"; 60].join(" ");
    let mut overlong = rerank("问题", &[&long_passage]);
    overlong.reject_overlong = true;
    // One byte over --max-text-bytes (65536 by default): refused before tokenizing.
    let huge = "a".repeat(65_537);
    for (request, says) in [
        (rerank(&huge, &passages), "`query` is 65537 bytes"),
        (
            rerank("问题", &["a", &huge]),
            "`passages[1]` is 65537 bytes",
        ),
        (rerank("", &passages), "`query` is empty"),
        (rerank("  ", &passages), "`query` is empty"),
        (rerank("问题", &[]), "`passages` is empty"),
        (rerank("问题", &["a"; 5]), "at most 4"),
        (rerank(&long_query, &passages), "`query` is 32 tokens"),
        (overlong, "`passages[0]`"),
    ] {
        let status = client.rerank(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(says), "{says}: {status:?}");
    }
    // Truncated when allowed, and it says so.
    let cut = client
        .rerank(rerank("问题", &[&long_passage]))
        .await
        .unwrap()
        .into_inner();
    assert!(cut.scores[0].truncated);
    assert_eq!(cut.scores[0].token_count, 38);

    let status = plain
        .client()
        .await
        .rerank(rerank("问题", &passages))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("--reranker-model"), "{status:?}");
    let info = plain
        .client()
        .await
        .info(EmbedderInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.reranker_model.is_empty());
}
