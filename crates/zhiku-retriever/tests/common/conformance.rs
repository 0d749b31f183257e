//! The conformance suite: what every backend must do, checked through real gRPC.

use tonic::Code;
use tonic::transport::Channel;
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, DeleteDocumentRequest, DeleteKnowledgeBaseRequest,
    DescribeKnowledgeBaseRequest, Distance, Filter, ListDocumentsRequest,
    ListKnowledgeBasesRequest, Passage, RetrieverInfoRequest, SearchMode, SearchRequest,
    SearchResponse, UpsertRequest,
};

pub const DIMS: u32 = 4;

/// The test corpus: (document, chunk, text, vector).
pub fn corpus() -> Vec<(&'static str, u32, &'static str, [f32; 4])> {
    vec![
        (
            "a",
            0,
            "知识库问答系统把文档切成段落。",
            [1.0, 0.0, 0.0, 0.0],
        ),
        (
            "a",
            1,
            "向量数据库按照语义相似度检索段落。",
            [0.0, 1.0, 0.0, 0.0],
        ),
        (
            "a",
            2,
            "旧版本的第三段落，以后会被删除。",
            [0.0, 0.0, 1.0, 0.0],
        ),
        (
            "b",
            0,
            "Qdrant supports sparse vectors and hybrid search.",
            [0.0, 0.0, 0.0, 1.0],
        ),
        (
            "b",
            1,
            "今天天气很好，我们去公园散步。",
            [0.5, 0.5, 0.5, 0.5],
        ),
    ]
}

pub fn passage(doc: &str, chunk: u32, count: u32, text: &str, vector: &[f32]) -> Passage {
    let mut metadata = std::collections::HashMap::new();
    metadata.insert(
        "lang".to_string(),
        if doc == "b" { "mixed" } else { "zh" }.to_string(),
    );
    Passage {
        document_id: doc.into(),
        chunk_index: chunk,
        chunk_count: count,
        text: text.into(),
        source: format!("{doc}.md"),
        vector: vector.to_vec(),
        heading_path: String::new(),
        char_start: chunk * 20,
        char_end: chunk * 20 + 20,
        metadata,
    }
}

pub fn corpus_passages() -> Vec<Passage> {
    corpus()
        .into_iter()
        .map(|(doc, chunk, text, v)| {
            let count = if doc == "a" { 3 } else { 2 };
            passage(doc, chunk, count, text, &v)
        })
        .collect()
}

pub async fn upsert_corpus(c: &mut RetrieverClient<Channel>, kb: &str) {
    let r = c
        .upsert(UpsertRequest {
            knowledge_base: kb.into(),
            passages: corpus_passages(),
        })
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!(r.upserted, 5);
}

pub async fn create(c: &mut RetrieverClient<Channel>, kb: &str) {
    c.create_knowledge_base(CreateKnowledgeBaseRequest {
        name: kb.into(),
        dimensions: DIMS,
        distance: Distance::Cosine as i32,
        description: "conformance".into(),
        adapter: "legal-lora".into(),
    })
    .await
    .expect("create");
}

async fn passage_count(c: &mut RetrieverClient<Channel>, kb: &str) -> (u64, u64) {
    let d = c
        .describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: kb.into(),
            ..Default::default()
        })
        .await
        .expect("describe")
        .into_inner();
    (d.passage_count, d.document_count)
}

pub fn search_request(kb: &str) -> SearchRequest {
    SearchRequest {
        knowledge_base: kb.into(),
        vector: vec![],
        query_text: String::new(),
        top_k: 0,
        score_threshold: None,
        filter: None,
        mode: SearchMode::Unspecified as i32,
        with_vectors: false,
    }
}

pub async fn search(c: &mut RetrieverClient<Channel>, req: SearchRequest) -> SearchResponse {
    c.search(req).await.expect("search").into_inner()
}

pub fn ids(r: &SearchResponse) -> Vec<(String, u32)> {
    r.hits
        .iter()
        .map(|h| {
            let p = h.passage.as_ref().expect("passage");
            (p.document_id.clone(), p.chunk_index)
        })
        .collect()
}

fn expect_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    words: &[&str],
) -> String {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    for w in words {
        assert!(
            status.message().contains(w),
            "{w:?} not in {:?}",
            status.message()
        );
    }
    status.message().to_string()
}

/// Runs everything a backend must do on knowledge bases named `<prefix>…`.
pub async fn run(mut c: RetrieverClient<Channel>, prefix: &str, backend: &str) {
    let kb = format!("{prefix}conf");
    let kb = kb.as_str();
    let _ = c
        .delete_knowledge_base(DeleteKnowledgeBaseRequest { name: kb.into() })
        .await;

    // Knowledge bases.
    let info = c
        .info(RetrieverInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.backend, backend);
    create(&mut c, kb).await;
    let d = c
        .describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: kb.into(),
            ..Default::default()
        })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(d.name, kb);
    assert_eq!(d.dimensions, DIMS);
    assert_eq!(d.distance, Distance::Cosine as i32);
    assert_eq!(d.description, "conformance");
    assert_eq!(d.adapter, "legal-lora");
    assert!(d.created_at_ms > 1_700_000_000_000, "{}", d.created_at_ms);
    assert_eq!((d.passage_count, d.document_count), (0, 0));
    let list = c
        .list_knowledge_bases(ListKnowledgeBasesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(list.knowledge_bases.iter().any(|k| k.name == kb));
    expect_code(
        c.create_knowledge_base(CreateKnowledgeBaseRequest {
            name: kb.into(),
            dimensions: DIMS,
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
        &[kb],
    );
    expect_code(
        c.describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: format!("{prefix}missing"),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &["does not exist"],
    );

    // Upsert, re-ingest, stale chunks.
    upsert_corpus(&mut c, kb).await;
    assert_eq!(passage_count(&mut c, kb).await, (5, 2));
    upsert_corpus(&mut c, kb).await;
    assert_eq!(
        passage_count(&mut c, kb).await,
        (5, 2),
        "re-ingest duplicated"
    );
    let shorter: Vec<Passage> = corpus()
        .into_iter()
        .filter(|(doc, chunk, _, _)| *doc == "a" && *chunk < 2)
        .map(|(doc, chunk, text, v)| passage(doc, chunk, 2, text, &v))
        .collect();
    let r = c
        .upsert(UpsertRequest {
            knowledge_base: kb.into(),
            passages: shorter,
        })
        .await
        .expect("upsert shorter")
        .into_inner();
    assert_eq!((r.upserted, r.removed_stale), (2, 1));
    assert_eq!(passage_count(&mut c, kb).await, (4, 2));

    // Documents, paged and sorted.
    let page1 = c
        .list_documents(ListDocumentsRequest {
            knowledge_base: kb.into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("list documents")
        .into_inner();
    assert_eq!(page1.documents.len(), 1);
    assert_eq!(page1.documents[0].document_id, "a");
    assert_eq!(page1.documents[0].chunk_count, 2);
    assert_eq!(page1.documents[0].source, "a.md");
    assert_eq!(
        page1.documents[0].metadata.get("lang").map(String::as_str),
        Some("zh")
    );
    assert!(!page1.next_page_token.is_empty());
    let page2 = c
        .list_documents(ListDocumentsRequest {
            knowledge_base: kb.into(),
            page_size: 1,
            page_token: page1.next_page_token,
        })
        .await
        .expect("list documents")
        .into_inner();
    assert_eq!(page2.documents.len(), 1);
    assert_eq!(page2.documents[0].document_id, "b");
    assert_eq!(page2.documents[0].chunk_count, 2);
    assert!(page2.next_page_token.is_empty());

    // Dense search.
    let mut req = search_request(kb);
    req.vector = vec![0.0, 0.0, 0.0, 1.0];
    let r = search(&mut c, req.clone()).await;
    assert_eq!(r.mode, SearchMode::Dense as i32);
    assert_eq!(r.hits.len(), 4, "top_k 0 means 5; 4 passages stored");
    assert_eq!(ids(&r)[0], ("b".to_string(), 0));
    assert!((r.hits[0].score - 1.0).abs() < 1e-4, "{}", r.hits[0].score);
    assert_eq!(r.hits[0].dense_score, Some(r.hits[0].score));
    assert_eq!(r.hits[0].sparse_score, None);
    let p = r.hits[0].passage.as_ref().expect("passage");
    assert_eq!(p.text, corpus()[3].2);
    assert_eq!(p.source, "b.md");
    assert_eq!((p.char_start, p.char_end), (0, 20));
    assert!(p.vector.is_empty());
    assert!(r.hits.windows(2).all(|w| w[0].score >= w[1].score));
    let mut top2 = req.clone();
    top2.top_k = 2;
    top2.with_vectors = true;
    let r = search(&mut c, top2).await;
    assert_eq!(r.hits.len(), 2);
    let v = &r.hits[0].passage.as_ref().expect("passage").vector;
    assert_eq!(v.len(), DIMS as usize);
    let mut thr = req.clone();
    thr.score_threshold = Some(0.9);
    assert_eq!(ids(&search(&mut c, thr).await), vec![("b".to_string(), 0)]);

    // Filters.
    let mut f = req.clone();
    f.filter = Some(Filter {
        document_ids: vec!["a".into()],
        ..Default::default()
    });
    let r = search(&mut c, f).await;
    assert_eq!(r.hits.len(), 2);
    assert!(ids(&r).iter().all(|(d, _)| d == "a"));
    let mut f = req.clone();
    f.filter = Some(Filter {
        sources: vec!["b.md".into()],
        ..Default::default()
    });
    assert!(ids(&search(&mut c, f).await).iter().all(|(d, _)| d == "b"));
    let mut f = req.clone();
    f.filter = Some(Filter {
        metadata: [("lang".to_string(), "mixed".to_string())].into(),
        ..Default::default()
    });
    let r = search(&mut c, f).await;
    assert_eq!(r.hits.len(), 2);
    assert!(ids(&r).iter().all(|(d, _)| d == "b"));
    let mut f = req.clone();
    f.filter = Some(Filter {
        metadata: [("lang".to_string(), "fr".to_string())].into(),
        ..Default::default()
    });
    assert!(search(&mut c, f).await.hits.is_empty());

    // Sparse (BM25, Chinese segmented).
    let mut s = search_request(kb);
    s.query_text = "向量数据库".into();
    let r = search(&mut c, s.clone()).await;
    assert_eq!(r.mode, SearchMode::Sparse as i32);
    assert!(!r.hits.is_empty());
    assert_eq!(ids(&r)[0], ("a".to_string(), 1), "{r:?}");
    assert!(r.hits[0].score > 0.0);
    assert_eq!(r.hits[0].sparse_score, Some(r.hits[0].score));
    assert_eq!(r.hits[0].dense_score, None);
    let mut s2 = search_request(kb);
    s2.query_text = "hybrid search".into();
    assert_eq!(ids(&search(&mut c, s2).await)[0], ("b".to_string(), 0));

    // Hybrid: both rankings fused.
    let mut h = search_request(kb);
    h.vector = vec![0.0, 1.0, 0.0, 0.0];
    h.query_text = "向量数据库".into();
    let r = search(&mut c, h).await;
    assert_eq!(r.mode, SearchMode::Hybrid as i32);
    assert_eq!(ids(&r)[0], ("a".to_string(), 1));
    assert!(r.hits[0].dense_score.is_some() && r.hits[0].sparse_score.is_some());
    assert!(r.hits.windows(2).all(|w| w[0].score >= w[1].score));
    // score_threshold in hybrid: dense candidates under it are dropped, BM25 finds are kept.
    let mut h = search_request(kb);
    h.vector = vec![0.0, 1.0, 0.0, 0.0];
    h.query_text = "hybrid search 向量数据库".into();
    h.score_threshold = Some(0.99);
    let r = search(&mut c, h).await;
    assert_eq!(ids(&r)[0], ("a".to_string(), 1));
    assert!(
        ids(&r).contains(&("b".to_string(), 0)),
        "BM25-only hit dropped: {r:?}"
    );
    for hit in &r.hits {
        if let Some(d) = hit.dense_score {
            assert!(d >= 0.99, "dense score {d} under the threshold");
        }
    }
    // A hybrid search whose text matches nothing is the dense ranking.
    let mut h = search_request(kb);
    h.vector = vec![0.0, 0.0, 0.0, 1.0];
    h.query_text = "完全无关的词语".into();
    h.mode = SearchMode::Hybrid as i32;
    assert_eq!(ids(&search(&mut c, h).await)[0], ("b".to_string(), 0));

    // Bad input: INVALID_ARGUMENT saying what to fix.
    let mut bad = corpus_passages();
    bad[1].vector = vec![1.0; 3];
    expect_code(
        c.upsert(UpsertRequest {
            knowledge_base: kb.into(),
            passages: bad,
        })
        .await,
        Code::InvalidArgument,
        &["passage 1", "\"a\"", "3 dimensions", "4-dimensional"],
    );
    let mut bad = search_request(kb);
    bad.vector = vec![1.0; 5];
    expect_code(
        c.search(bad).await,
        Code::InvalidArgument,
        &["5 dimensions"],
    );
    let mut bad = req.clone();
    bad.top_k = 101;
    expect_code(c.search(bad).await, Code::InvalidArgument, &["top_k"]);
    expect_code(
        c.search(search_request(kb)).await,
        Code::InvalidArgument,
        &["vector", "query_text"],
    );
    let mut bad = search_request(kb);
    bad.query_text = "x".into();
    bad.mode = SearchMode::Dense as i32;
    expect_code(
        c.search(bad).await,
        Code::InvalidArgument,
        &["needs `vector`"],
    );
    expect_code(
        c.create_knowledge_base(CreateKnowledgeBaseRequest {
            name: "bad name!".into(),
            dimensions: 4,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["1-64 ASCII letters"],
    );
    expect_code(
        c.create_knowledge_base(CreateKnowledgeBaseRequest {
            name: format!("{prefix}zero"),
            dimensions: 0,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["dimensions"],
    );
    expect_code(
        c.upsert(UpsertRequest {
            knowledge_base: kb.into(),
            passages: vec![],
        })
        .await,
        Code::InvalidArgument,
        &["1-1024 passages"],
    );
    expect_code(
        c.upsert(UpsertRequest {
            knowledge_base: format!("{prefix}missing"),
            passages: corpus_passages(),
        })
        .await,
        Code::NotFound,
        &["does not exist"],
    );
    let mut twice = corpus_passages();
    twice.push(twice[0].clone());
    expect_code(
        c.upsert(UpsertRequest {
            knowledge_base: kb.into(),
            passages: twice,
        })
        .await,
        Code::InvalidArgument,
        &["twice"],
    );
    expect_code(
        c.list_documents(ListDocumentsRequest {
            knowledge_base: kb.into(),
            page_size: 0,
            page_token: "not-a-token".into(),
        })
        .await,
        Code::InvalidArgument,
        &["page_token"],
    );
    // Nothing was written by the refused calls.
    assert_eq!(passage_count(&mut c, kb).await, (4, 2));

    // Delete a document, then the knowledge base.
    let r = c
        .delete_document(DeleteDocumentRequest {
            knowledge_base: kb.into(),
            document_id: "b".into(),
        })
        .await
        .expect("delete document")
        .into_inner();
    assert_eq!(r.deleted_passages, 2);
    let r = c
        .delete_document(DeleteDocumentRequest {
            knowledge_base: kb.into(),
            document_id: "b".into(),
        })
        .await
        .expect("delete document again")
        .into_inner();
    assert_eq!(r.deleted_passages, 0);
    assert_eq!(passage_count(&mut c, kb).await, (2, 1));
    let r = c
        .delete_knowledge_base(DeleteKnowledgeBaseRequest { name: kb.into() })
        .await
        .expect("delete kb")
        .into_inner();
    assert_eq!(r.deleted_passages, 2);
    expect_code(
        c.describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: kb.into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &[kb],
    );
}
