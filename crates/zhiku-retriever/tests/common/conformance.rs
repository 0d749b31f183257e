//! The conformance suite: what every backend must do, checked through real gRPC.

use tonic::Code;
use tonic::transport::Channel;
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_proto::v1::{
    AdapterEvalFigures, AdapterProvenance, CreateKnowledgeBaseRequest, DeleteDocumentRequest,
    DeleteKnowledgeBaseRequest, DescribeKnowledgeBaseRequest, Distance, Filter,
    ListDocumentsRequest, ListKnowledgeBasesRequest, Passage, ReaderScope, RetrieverInfoRequest,
    SearchMode, SearchRequest, SearchResponse, SetDocumentReadersRequest,
    SetKnowledgeBaseAdapterRequest, UpsertRequest,
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
        readers: Vec::new(),
        document_id: doc.into(),
        chunk_index: chunk,
        chunk_count: count,
        text: text.into(),
        source: format!("{doc}.md"),
        vector: vector.to_vec(),
        heading_path: String::new(),
        context: String::new(),
        title: String::new(),
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
        adapter_path: "/srv/adapters/legal-lora".into(),
    })
    .await
    .expect("create");
}

pub async fn passage_count(c: &mut RetrieverClient<Channel>, kb: &str) -> (u64, u64) {
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
        rrf_k: None,
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

/// The sections of the suite, in the order they were written; each runs on its own
/// knowledge base (so they run in parallel against one server) and is one test per backend
/// (`tests/conformance.rs`).
pub const SECTIONS: &[&str] = &[
    "knowledge_bases",
    "reingest_and_stale_chunks",
    "documents_paged",
    "dense_search",
    "filters",
    "sparse_bm25",
    "hybrid",
    "bad_input",
    "deletes",
    "search_options",
    "readers",
];

/// Deletes `kb` if it is there (a run that died earlier may have left it).
pub async fn clean(c: &mut RetrieverClient<Channel>, kb: &str) {
    let _ = c
        .delete_knowledge_base(DeleteKnowledgeBaseRequest { name: kb.into() })
        .await;
}

/// `kb` created afresh and filled: the corpus, then document "a" re-ingested shorter (2
/// chunks), so it holds a:0, a:1, b:0, b:1.
pub async fn fresh(c: &mut RetrieverClient<Channel>, kb: &str) {
    clean(c, kb).await;
    create(c, kb).await;
    upsert_corpus(c, kb).await;
    let r = c
        .upsert(UpsertRequest {
            knowledge_base: kb.into(),
            passages: shorter_a(),
        })
        .await
        .expect("upsert shorter")
        .into_inner();
    assert_eq!((r.upserted, r.removed_stale), (2, 1));
}

fn shorter_a() -> Vec<Passage> {
    corpus()
        .into_iter()
        .filter(|(doc, chunk, _, _)| *doc == "a" && *chunk < 2)
        .map(|(doc, chunk, text, v)| passage(doc, chunk, 2, text, &v))
        .collect()
}

/// Create, describe, list, names taken and missing.
pub async fn knowledge_bases(c: &mut RetrieverClient<Channel>, kb: &str, backend: &str) {
    clean(c, kb).await;
    let info = c
        .info(RetrieverInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.backend, backend);
    create(c, kb).await;
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
    assert_eq!(d.adapter_path, "/srv/adapters/legal-lora");
    assert!(d.created_at_ms > 1_700_000_000_000, "{}", d.created_at_ms);
    assert_eq!((d.passage_count, d.document_count), (0, 0));
    let list = c
        .list_knowledge_bases(ListKnowledgeBasesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let listed = list
        .knowledge_bases
        .iter()
        .find(|k| k.name == kb)
        .expect("listed");
    assert_eq!(listed.adapter, "legal-lora");
    let info = c
        .info(RetrieverInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert!(info.knowledge_base_count >= 1);
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
            name: format!("{kb}-missing"),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &["does not exist"],
    );
    upsert_corpus(c, kb).await;
    let list = c
        .list_knowledge_bases(ListKnowledgeBasesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let listed = list
        .knowledge_bases
        .iter()
        .find(|k| k.name == kb)
        .expect("listed");
    assert_eq!((listed.passage_count, listed.document_count), (5, 2));
    adapter_binding(c, kb).await;
    clean(c, kb).await;
}

/// Rebinding a knowledge base's adapter with its provenance, then unbinding it; the
/// passages stay.
pub async fn adapter_binding(c: &mut RetrieverClient<Channel>, kb: &str) {
    let provenance = AdapterProvenance {
        data_file: "train.jsonl".into(),
        base_model: "models/SmolLM2".into(),
        base_sha256: "ab".repeat(32),
        eval_file: "cases.jsonl".into(),
        with_adapter: Some(AdapterEvalFigures {
            answerable: 3,
            unanswerable: 1,
            correct: 2,
            false_refusals: 0,
            abstained: 1,
        }),
        without_adapter: Some(AdapterEvalFigures {
            answerable: 3,
            unanswerable: 1,
            correct: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let bound = c
        .set_knowledge_base_adapter(SetKnowledgeBaseAdapterRequest {
            name: kb.into(),
            adapter: "legal-v2".into(),
            adapter_path: "/srv/adapters/legal-v2".into(),
            provenance: Some(provenance.clone()),
        })
        .await
        .expect("bind")
        .into_inner();
    assert_eq!(bound.adapter, "legal-v2");
    let kept = bound.adapter_provenance.expect("provenance kept");
    assert!(
        kept.bound_at_ms > 1_700_000_000_000,
        "the retriever dates it"
    );
    assert_eq!(
        AdapterProvenance {
            bound_at_ms: 0,
            ..kept
        },
        provenance
    );
    let d = c
        .describe_knowledge_base(DescribeKnowledgeBaseRequest {
            name: kb.into(),
            ..Default::default()
        })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(
        (d.adapter.as_str(), d.adapter_path.as_str()),
        ("legal-v2", "/srv/adapters/legal-v2")
    );
    assert_eq!(
        d.adapter_provenance
            .and_then(|p| p.with_adapter)
            .map(|f| f.correct),
        Some(2)
    );
    assert_eq!((d.passage_count, d.document_count), (5, 2));
    let unbound = c
        .set_knowledge_base_adapter(SetKnowledgeBaseAdapterRequest {
            name: kb.into(),
            ..Default::default()
        })
        .await
        .expect("unbind")
        .into_inner();
    assert_eq!(
        (unbound.adapter.as_str(), unbound.adapter_path.as_str()),
        ("", "")
    );
    assert!(unbound.adapter_provenance.is_none());
    expect_code(
        c.set_knowledge_base_adapter(SetKnowledgeBaseAdapterRequest {
            name: format!("{kb}-missing"),
            adapter: "x".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &["does not exist"],
    );
}

/// Deterministic ids: re-ingesting replaces; a shorter version removes the chunks past it.
pub async fn reingest_and_stale_chunks(c: &mut RetrieverClient<Channel>, kb: &str, _: &str) {
    clean(c, kb).await;
    create(c, kb).await;
    upsert_corpus(c, kb).await;
    assert_eq!(passage_count(c, kb).await, (5, 2));
    upsert_corpus(c, kb).await;
    assert_eq!(passage_count(c, kb).await, (5, 2), "re-ingest duplicated");
    let r = c
        .upsert(UpsertRequest {
            knowledge_base: kb.into(),
            passages: shorter_a(),
        })
        .await
        .expect("upsert shorter")
        .into_inner();
    assert_eq!((r.upserted, r.removed_stale), (2, 1));
    assert_eq!(passage_count(c, kb).await, (4, 2));
    // The removed chunk is gone from searches too.
    let mut req = search_request(kb);
    req.vector = vec![0.0, 0.0, 1.0, 0.0];
    req.top_k = 10;
    assert!(!ids(&search(c, req).await).contains(&("a".to_string(), 2)));
    // The same shorter version again removes nothing more.
    let r = c
        .upsert(UpsertRequest {
            knowledge_base: kb.into(),
            passages: shorter_a(),
        })
        .await
        .expect("upsert shorter again")
        .into_inner();
    assert_eq!((r.upserted, r.removed_stale), (2, 0));
    clean(c, kb).await;
}

/// ListDocuments: sorted by id, paged, with source, chunk count and metadata.
pub async fn documents_paged(c: &mut RetrieverClient<Channel>, kb: &str, _: &str) {
    fresh(c, kb).await;
    let page1 = c
        .list_documents(ListDocumentsRequest {
            readable_by: None,
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
            readable_by: None,
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
    let all = c
        .list_documents(ListDocumentsRequest {
            readable_by: None,
            knowledge_base: kb.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list documents")
        .into_inner();
    let names: Vec<_> = all
        .documents
        .iter()
        .map(|d| d.document_id.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(all.next_page_token.is_empty());
    clean(c, kb).await;
}

/// The dense request of several sections: nearest to passage b:0.
fn dense_request(kb: &str) -> SearchRequest {
    let mut req = search_request(kb);
    req.vector = vec![0.0, 0.0, 0.0, 1.0];
    req
}

/// Dense search: cosine scores, order, top_k, vectors, threshold.
pub async fn dense_search(c: &mut RetrieverClient<Channel>, kb: &str, _: &str) {
    fresh(c, kb).await;
    let req = dense_request(kb);
    let r = search(c, req.clone()).await;
    assert_eq!(r.mode, SearchMode::Dense as i32);
    assert_eq!(r.hits.len(), 4, "top_k 0 means 5; 4 passages stored");
    assert_eq!(ids(&r)[0], ("b".to_string(), 0));
    assert!((r.hits[0].score - 1.0).abs() < 1e-4, "{}", r.hits[0].score);
    // b:1 is [0.5; 4]: cosine 0.5 with the query.
    assert_eq!(ids(&r)[1], ("b".to_string(), 1));
    assert!((r.hits[1].score - 0.5).abs() < 1e-4, "{}", r.hits[1].score);
    assert_eq!(r.hits[0].dense_score, Some(r.hits[0].score));
    assert_eq!(r.hits[0].sparse_score, None);
    let p = r.hits[0].passage.as_ref().expect("passage");
    assert_eq!(p.text, corpus()[3].2);
    assert_eq!(p.source, "b.md");
    assert_eq!((p.char_start, p.char_end), (0, 20));
    assert_eq!(p.metadata.get("lang").map(String::as_str), Some("mixed"));
    assert!(p.vector.is_empty());
    assert!(r.hits.windows(2).all(|w| w[0].score >= w[1].score));
    let mut top2 = req.clone();
    top2.top_k = 2;
    top2.with_vectors = true;
    let r = search(c, top2).await;
    assert_eq!(r.hits.len(), 2);
    let v = &r.hits[0].passage.as_ref().expect("passage").vector;
    assert_eq!(v.len(), DIMS as usize);
    assert!((v[3] - 1.0).abs() < 1e-4, "{v:?}");
    let mut thr = req.clone();
    thr.score_threshold = Some(0.9);
    assert_eq!(ids(&search(c, thr).await), vec![("b".to_string(), 0)]);
    clean(c, kb).await;
}

/// Filters on document ids, sources and metadata (all must hold).
pub async fn filters(c: &mut RetrieverClient<Channel>, kb: &str, _: &str) {
    fresh(c, kb).await;
    let req = dense_request(kb);
    let mut f = req.clone();
    f.filter = Some(Filter {
        document_ids: vec!["a".into()],
        ..Default::default()
    });
    let r = search(c, f).await;
    assert_eq!(r.hits.len(), 2);
    assert!(ids(&r).iter().all(|(d, _)| d == "a"));
    let mut f = req.clone();
    f.filter = Some(Filter {
        sources: vec!["b.md".into()],
        ..Default::default()
    });
    let r = search(c, f).await;
    assert_eq!(r.hits.len(), 2);
    assert!(ids(&r).iter().all(|(d, _)| d == "b"));
    let mut f = req.clone();
    f.filter = Some(Filter {
        metadata: [("lang".to_string(), "mixed".to_string())].into(),
        ..Default::default()
    });
    let r = search(c, f).await;
    assert_eq!(r.hits.len(), 2);
    assert!(ids(&r).iter().all(|(d, _)| d == "b"));
    let mut f = req.clone();
    f.filter = Some(Filter {
        metadata: [("lang".to_string(), "fr".to_string())].into(),
        ..Default::default()
    });
    assert!(search(c, f).await.hits.is_empty());
    // Two conditions that no passage meets together.
    let mut f = req.clone();
    f.filter = Some(Filter {
        document_ids: vec!["a".into()],
        sources: vec!["b.md".into()],
        ..Default::default()
    });
    assert!(search(c, f).await.hits.is_empty());
    // A filter applies to BM25 as well.
    let mut s = search_request(kb);
    s.query_text = "向量数据库".into();
    s.filter = Some(Filter {
        document_ids: vec!["b".into()],
        ..Default::default()
    });
    assert!(ids(&search(c, s).await).iter().all(|(d, _)| d == "b"));
    clean(c, kb).await;
}

/// BM25 on Chinese segmented words and English words.
pub async fn sparse_bm25(c: &mut RetrieverClient<Channel>, kb: &str, _: &str) {
    fresh(c, kb).await;
    let mut s = search_request(kb);
    s.query_text = "向量数据库".into();
    let r = search(c, s.clone()).await;
    assert_eq!(r.mode, SearchMode::Sparse as i32);
    assert!(!r.hits.is_empty());
    assert_eq!(ids(&r)[0], ("a".to_string(), 1), "{r:?}");
    assert!(r.hits[0].score > 0.0);
    assert_eq!(r.hits[0].sparse_score, Some(r.hits[0].score));
    assert_eq!(r.hits[0].dense_score, None);
    let mut s2 = search_request(kb);
    s2.query_text = "hybrid search".into();
    assert_eq!(ids(&search(c, s2).await)[0], ("b".to_string(), 0));
    // Words in no passage: no hits.
    let mut none = search_request(kb);
    none.query_text = "完全无关的词语".into();
    assert!(search(c, none).await.hits.is_empty());
    // A passage's context (a table's caption and header) is indexed with its text and
    // comes back with it.
    let mut row = passage("c", 0, 1, "| 4-bit | 3.7 GB |", &[0.5; DIMS as usize]);
    row.context = "困惑度评测表\n| 精度 | 模型大小 |".into();
    let found = upsert_and_find(c, kb, &row, "困惑度评测").await;
    assert_eq!(found.context, row.context);
    assert_eq!(found.title, "");
    // So is its document's title: a passage that never names its project is found by it.
    let mut titled = passage("d", 0, 1, "transformers 4.49.0", &[0.5; DIMS as usize]);
    titled.title = "LLaMA-Factory / README_zh".into();
    let found = upsert_and_find(c, kb, &titled, "LLaMA-Factory").await;
    assert_eq!(found.title, titled.title);
    clean(c, kb).await;
}

/// Upserts `p`, then searches `kb` for `words` by keyword: `p` must come first; the passage
/// found, its text checked.
async fn upsert_and_find(
    c: &mut RetrieverClient<Channel>,
    kb: &str,
    p: &Passage,
    words: &str,
) -> Passage {
    c.upsert(UpsertRequest {
        knowledge_base: kb.into(),
        passages: vec![p.clone()],
    })
    .await
    .expect("upsert one passage");
    let mut by_words = search_request(kb);
    by_words.query_text = words.into();
    let r = search(c, by_words).await;
    let first = (p.document_id.clone(), p.chunk_index);
    assert_eq!(ids(&r)[0], first, "{words}: {r:?}");
    let found = r.hits[0].passage.clone().expect("passage");
    assert_eq!(found.text, p.text);
    found
}

/// Hybrid: both rankings fused by reciprocal rank; the threshold cuts dense candidates only.
pub async fn hybrid(c: &mut RetrieverClient<Channel>, kb: &str, _: &str) {
    fresh(c, kb).await;
    let mut h = search_request(kb);
    h.vector = vec![0.0, 1.0, 0.0, 0.0];
    h.query_text = "向量数据库".into();
    let r = search(c, h).await;
    assert_eq!(r.mode, SearchMode::Hybrid as i32);
    assert_eq!(ids(&r)[0], ("a".to_string(), 1));
    assert!(r.hits[0].dense_score.is_some() && r.hits[0].sparse_score.is_some());
    // First in both rankings: 2 / (60 + 0) (ranks count from 0).
    assert!(
        (r.hits[0].score - 2.0 / 60.0).abs() < 1e-5,
        "{}",
        r.hits[0].score
    );
    assert!(r.hits.windows(2).all(|w| w[0].score >= w[1].score));
    // The request's fusion constant: first in both rankings, 2 / (3 + 0).
    let mut h = search_request(kb);
    h.vector = vec![0.0, 1.0, 0.0, 0.0];
    h.query_text = "向量数据库".into();
    h.rrf_k = Some(3);
    let small = search(c, h.clone()).await;
    assert_eq!(ids(&small)[0], ("a".to_string(), 1));
    assert!(
        (small.hits[0].score - 2.0 / 3.0).abs() < 1e-5,
        "{}",
        small.hits[0].score
    );
    for k in [0, 1001] {
        h.rrf_k = Some(k);
        let status = c.search(h.clone()).await.expect_err("rrf_k out of range");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("rrf_k"), "{status:?}");
    }
    // score_threshold in hybrid holds for every hit's dense score: a BM25 find that the
    // dense ranking did not hold is scored from its vector, and kept only above it.
    let mut h = search_request(kb);
    h.vector = vec![0.0, 1.0, 0.0, 0.0];
    h.query_text = "hybrid search 向量数据库".into();
    h.score_threshold = Some(0.99);
    let r = search(c, h.clone()).await;
    assert_eq!(ids(&r)[0], ("a".to_string(), 1));
    assert!(
        !ids(&r).contains(&("b".to_string(), 0)),
        "a BM25 find of cosine 0 passed a threshold of 0.99: {r:?}"
    );
    for hit in &r.hits {
        let d = hit.dense_score.expect("every hybrid hit has a dense score");
        assert!(d >= 0.99, "dense score {d} under the threshold");
    }
    // Without a threshold the same passage is there, with its cosine.
    h.score_threshold = None;
    let r = search(c, h).await;
    let b = r
        .hits
        .iter()
        .find(|hit| hit.passage.as_ref().is_some_and(|p| p.document_id == "b"))
        .unwrap_or_else(|| panic!("the BM25 find was dropped: {r:?}"));
    assert!(b.sparse_score.is_some(), "{b:?}");
    assert!(b.dense_score.is_some_and(|d| d.abs() < 1e-5), "{b:?}");
    // A hybrid search whose text matches nothing is the dense ranking.
    let mut h = dense_request(kb);
    h.query_text = "完全无关的词语".into();
    h.mode = SearchMode::Hybrid as i32;
    assert_eq!(ids(&search(c, h).await)[0], ("b".to_string(), 0));
    clean(c, kb).await;
}

/// Bad input: INVALID_ARGUMENT (or NOT_FOUND) saying what to fix, and nothing written.
pub async fn bad_input(c: &mut RetrieverClient<Channel>, kb: &str, _: &str) {
    fresh(c, kb).await;
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
    let mut bad = dense_request(kb);
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
    // Size limits come before any segmenting or lookup.
    let mut bad = search_request(kb);
    bad.query_text = "检索".repeat(3000);
    expect_code(
        c.search(bad).await,
        Code::InvalidArgument,
        &[
            "`query_text` is 18000 bytes",
            "at most 16384",
            "--max-query-bytes",
        ],
    );
    let mut bad = dense_request(kb);
    bad.filter = Some(Filter {
        document_ids: (0..1025).map(|i| i.to_string()).collect(),
        ..Default::default()
    });
    expect_code(
        c.search(bad).await,
        Code::InvalidArgument,
        &["1025 values", "at most 1024"],
    );
    let mut bad = dense_request(&format!("{kb}-missing"));
    bad.top_k = 1;
    expect_code(c.search(bad).await, Code::NotFound, &["does not exist"]);
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
            name: format!("{kb}-zero"),
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
            knowledge_base: format!("{kb}-missing"),
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
            readable_by: None,
            knowledge_base: kb.into(),
            page_size: 0,
            page_token: "not-a-token".into(),
        })
        .await,
        Code::InvalidArgument,
        &["page_token"],
    );
    // Nothing was written by the refused calls.
    assert_eq!(passage_count(c, kb).await, (4, 2));
    clean(c, kb).await;
}

/// Deleting a document (twice), then the knowledge base.
pub async fn deletes(c: &mut RetrieverClient<Channel>, kb: &str, _: &str) {
    fresh(c, kb).await;
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
    assert_eq!(passage_count(c, kb).await, (2, 1));
    let r = search(c, dense_request(kb)).await;
    assert!(ids(&r).iter().all(|(d, _)| d == "a"), "{r:?}");
    expect_code(
        c.delete_document(DeleteDocumentRequest {
            knowledge_base: format!("{kb}-missing"),
            document_id: "b".into(),
        })
        .await,
        Code::NotFound,
        &["does not exist"],
    );
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
    expect_code(
        c.delete_knowledge_base(DeleteKnowledgeBaseRequest { name: kb.into() })
            .await,
        Code::NotFound,
        &[kb],
    );
    let list = c
        .list_knowledge_bases(ListKnowledgeBasesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(!list.knowledge_bases.iter().any(|k| k.name == kb));
}

/// What every mode passes on to its rankings: vectors, filters (a list matches any of its
/// values, all conditions hold), the threshold and top_k.
pub async fn search_options(c: &mut RetrieverClient<Channel>, kb: &str, _: &str) {
    fresh(c, kb).await;
    let vector_of =
        |r: &SearchResponse, i: usize| r.hits[i].passage.as_ref().expect("passage").vector.clone();
    // Vectors come back in BM25 and hybrid searches too, for every hit.
    let mut s = search_request(kb);
    s.query_text = "向量数据库".into();
    s.with_vectors = true;
    let r = search(c, s).await;
    assert_eq!(ids(&r)[0], ("a".to_string(), 1));
    assert_eq!(vector_of(&r, 0), [0.0, 1.0, 0.0, 0.0]);
    // Dense: b:0, b:1, then a:0 and a:1 (cosine 0); BM25: a:1, a:0. Fused: a:1 first.
    let mut h = dense_request(kb);
    h.query_text = "向量数据库".into();
    h.with_vectors = true;
    let r = search(c, h.clone()).await;
    assert_eq!(r.mode, SearchMode::Hybrid as i32);
    assert_eq!(r.hits.len(), 4, "{r:?}");
    assert_eq!(ids(&r)[0], ("a".to_string(), 1), "{r:?}");
    assert_eq!(vector_of(&r, 0), [0.0, 1.0, 0.0, 0.0]);
    for i in 0..r.hits.len() {
        assert_eq!(vector_of(&r, i).len(), DIMS as usize, "hit {i}: {r:?}");
    }
    // A dense-only hit: its vector and dense score, no BM25 score, fused score 1/60 (first
    // in the dense ranking).
    let b0 = ids(&r)
        .iter()
        .position(|id| *id == ("b".to_string(), 0))
        .expect("b:0 fused in");
    assert_eq!(vector_of(&r, b0), [0.0, 0.0, 0.0, 1.0]);
    assert_eq!(r.hits[b0].sparse_score, None, "{r:?}");
    let dense = r.hits[b0].dense_score.expect("a dense score");
    assert!((dense - 1.0).abs() < 1e-4, "{r:?}");
    assert!((r.hits[b0].score - 1.0 / 60.0).abs() < 1e-6, "{r:?}");
    // Without vectors asked for, none.
    h.with_vectors = false;
    let r = search(c, h.clone()).await;
    assert!(
        r.hits
            .iter()
            .all(|hit| hit.passage.as_ref().is_some_and(|p| p.vector.is_empty()))
    );
    // top_k cuts the fused list.
    let mut one = h.clone();
    one.top_k = 1;
    assert_eq!(ids(&search(c, one).await), vec![("a".to_string(), 1)]);
    // A hybrid filter holds in both rankings: BM25's a:1 is filtered out, so nothing has a
    // BM25 score.
    let mut f = h.clone();
    f.filter = Some(Filter {
        document_ids: vec!["b".into()],
        ..Default::default()
    });
    let r = search(c, f).await;
    assert_eq!(
        ids(&r),
        [("b".to_string(), 0), ("b".to_string(), 1)],
        "{r:?}"
    );
    assert!(r.hits.iter().all(|hit| hit.sparse_score.is_none()), "{r:?}");
    // A list matches any of its values.
    let mut f = dense_request(kb);
    f.filter = Some(Filter {
        document_ids: vec!["a".into(), "b".into(), "c".into()],
        ..Default::default()
    });
    assert_eq!(search(c, f).await.hits.len(), 4);
    let mut f = dense_request(kb);
    f.filter = Some(Filter {
        sources: vec!["a.md".into(), "b.md".into()],
        ..Default::default()
    });
    assert_eq!(search(c, f).await.hits.len(), 4);
    // Metadata pairs and other conditions: all hold.
    let mut f = dense_request(kb);
    f.filter = Some(Filter {
        readable_by: None,
        document_ids: vec!["a".into(), "b".into()],
        sources: vec!["a.md".into()],
        metadata: [("lang".to_string(), "zh".to_string())].into(),
    });
    let r = search(c, f).await;
    assert_eq!(r.hits.len(), 2, "{r:?}");
    assert!(ids(&r).iter().all(|(d, _)| d == "a"), "{r:?}");
    let mut f = dense_request(kb);
    f.filter = Some(Filter {
        metadata: [
            ("lang".to_string(), "zh".to_string()),
            ("team".to_string(), "search".to_string()),
        ]
        .into(),
        ..Default::default()
    });
    assert!(search(c, f).await.hits.is_empty());
    // BM25's threshold is on the BM25 score.
    let mut s = search_request(kb);
    s.query_text = "向量数据库 hybrid".into();
    let all = search(c, s.clone()).await;
    assert!(all.hits.len() >= 2, "{all:?}");
    assert!(all.hits[0].score > all.hits[1].score, "{all:?}");
    let cut = (all.hits[0].score + all.hits[1].score) / 2.0;
    s.score_threshold = Some(cut);
    let r = search(c, s.clone()).await;
    assert_eq!(ids(&r), ids(&all)[..1].to_vec(), "threshold {cut}: {r:?}");
    s.score_threshold = Some(all.hits[0].score * 2.0);
    assert!(search(c, s).await.hits.is_empty());
    clean(c, kb).await;
}

/// A scope of `groups`, in a filter.
fn readable_by(groups: &[&str]) -> Option<Filter> {
    Some(Filter {
        readable_by: Some(ReaderScope {
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }),
        ..Default::default()
    })
}

/// Sets the readers of `document_id` in `kb`.
async fn set_readers(
    c: &mut RetrieverClient<Channel>,
    kb: &str,
    document_id: &str,
    readers: &[&str],
) -> Result<u64, tonic::Status> {
    c.set_document_readers(SetDocumentReadersRequest {
        knowledge_base: kb.into(),
        document_id: document_id.into(),
        readers: readers.iter().map(|r| r.to_string()).collect(),
    })
    .await
    .map(|r| r.into_inner().updated_passages)
}

/// The documents of a response's hits, sorted and deduplicated.
fn documents_of(r: &SearchResponse) -> Vec<String> {
    let mut docs: Vec<String> = ids(r).into_iter().map(|(d, _)| d).collect();
    docs.sort();
    docs.dedup();
    docs
}

/// Documents with readers: a search confined to some groups finds (in every mode, inside
/// the engine's search, so that top_k is filled from what they may read) the documents of
/// those groups and the public ones, never another group's; listings alike; the readers
/// change without a re-embed; too many readers is INVALID_ARGUMENT.
pub async fn readers(c: &mut RetrieverClient<Channel>, kb: &str, _: &str) {
    clean(c, kb).await;
    create(c, kb).await;
    // Four documents of one chunk each, all near the query vector: hr's, finance's, one of
    // both, and a public one; finance's is the nearest.
    let docs: [(&str, &[&str], [f32; 4]); 4] = [
        ("hr-secret", &["hr"], [0.9, 0.1, 0.0, 0.0]),
        ("fin-secret", &["finance"], [1.0, 0.0, 0.0, 0.0]),
        ("both", &["finance", "hr"], [0.8, 0.2, 0.0, 0.0]),
        ("public", &[], [0.7, 0.3, 0.0, 0.0]),
    ];
    let passages = docs
        .iter()
        .map(|(doc, readers, v)| {
            let mut p = passage(doc, 0, 1, &format!("{doc} 薪资 salary report"), v);
            p.readers = readers.iter().map(|r| r.to_string()).collect();
            p
        })
        .collect();
    c.upsert(UpsertRequest {
        knowledge_base: kb.into(),
        passages,
    })
    .await
    .expect("upsert");
    let dense = |filter: Option<Filter>| {
        let mut r = search_request(kb);
        r.vector = vec![1.0, 0.0, 0.0, 0.0];
        r.top_k = 2;
        r.mode = SearchMode::Dense as i32;
        r.filter = filter;
        r
    };
    // No scope: every document.
    let r = search(c, dense(None)).await;
    assert_eq!(ids(&r)[0].0, "fin-secret");
    // hr fills its top 2 from what it may read, nearest first.
    let r = search(c, dense(readable_by(&["hr"]))).await;
    assert_eq!(
        ids(&r),
        [("hr-secret".to_string(), 0), ("both".to_string(), 0)]
    );
    // No groups: public documents only.
    let r = search(c, dense(readable_by(&[]))).await;
    assert_eq!(documents_of(&r), ["public"]);
    let r = search(c, dense(readable_by(&["marketing"]))).await;
    assert_eq!(documents_of(&r), ["public"]);
    for mode in [SearchMode::Sparse, SearchMode::Hybrid] {
        let mut r = dense(readable_by(&["hr"]));
        r.top_k = 10;
        r.mode = mode as i32;
        r.query_text = "薪资 salary".into();
        let found = search(c, r).await;
        assert_eq!(
            documents_of(&found),
            ["both", "hr-secret", "public"],
            "{mode:?}"
        );
        // With another condition, both hold.
        let mut r = dense(Some(Filter {
            document_ids: vec!["hr-secret".into(), "fin-secret".into()],
            ..readable_by(&["finance"]).unwrap_or_default()
        }));
        r.top_k = 10;
        r.mode = mode as i32;
        r.query_text = "薪资 salary".into();
        assert_eq!(
            documents_of(&search(c, r).await),
            ["fin-secret"],
            "{mode:?}"
        );
    }
    // Hits and listings say who may read.
    let r = search(c, dense(readable_by(&["finance"]))).await;
    let first = r.hits[0].passage.as_ref().expect("passage");
    assert_eq!(first.readers, ["finance"]);
    let listed = list_all(c, kb, Some(&["finance"])).await;
    assert_eq!(
        listed,
        [
            (
                "both".to_string(),
                vec!["finance".to_string(), "hr".to_string()]
            ),
            ("fin-secret".to_string(), vec!["finance".to_string()]),
            ("public".to_string(), vec![]),
        ]
    );
    assert_eq!(list_all(c, kb, None).await.len(), 4);

    // New readers without a re-embed: finance's document becomes hr's.
    let set = set_readers(c, kb, "fin-secret", &["hr"]).await;
    assert_eq!(set.expect("set readers"), 1);
    let r = search(c, dense(readable_by(&["hr"]))).await;
    assert_eq!(ids(&r)[0].0, "fin-secret");
    let r = search(c, dense(readable_by(&["finance"]))).await;
    assert_eq!(documents_of(&r), ["both", "public"]);
    let listed = list_all(c, kb, None).await;
    let fin = listed
        .iter()
        .find(|(id, _)| id == "fin-secret")
        .expect("listed");
    assert_eq!(fin.1, ["hr"]);
    // Made public again.
    set_readers(c, kb, "fin-secret", &[])
        .await
        .expect("set readers");
    let r = search(c, dense(readable_by(&[]))).await;
    assert_eq!(documents_of(&r), ["fin-secret", "public"]);
    let none = set_readers(c, kb, "nope", &["hr"]).await;
    assert_eq!(none.expect("set readers"), 0);

    // Bad readers.
    let mut p = passage("x", 0, 1, "x", &[1.0, 0.0, 0.0, 0.0]);
    p.readers = (0..65).map(|i| format!("g{i}")).collect();
    let upsert = |p: Passage| UpsertRequest {
        knowledge_base: kb.into(),
        passages: vec![p],
    };
    expect_code(
        c.upsert(upsert(p.clone())).await,
        Code::InvalidArgument,
        &["65 reader groups", "at most 64"],
    );
    p.readers = vec!["a b".into()];
    expect_code(
        c.upsert(upsert(p)).await,
        Code::InvalidArgument,
        &["\"a b\"", "without commas"],
    );
    expect_code(
        set_readers(c, kb, "public", &[""]).await,
        Code::InvalidArgument,
        &["invalid"],
    );
    clean(c, kb).await;
}

/// Every document of `kb` as (id, readers), one document a page (so paging is exercised),
/// seen by the reader groups `scope` or, with `None`, by a service key.
async fn list_all(
    c: &mut RetrieverClient<Channel>,
    kb: &str,
    scope: Option<&[&str]>,
) -> Vec<(String, Vec<String>)> {
    let mut request = ListDocumentsRequest {
        knowledge_base: kb.into(),
        page_size: 1,
        page_token: String::new(),
        readable_by: scope.map(|groups| ReaderScope {
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }),
    };
    let mut listed = Vec::new();
    loop {
        let page = c
            .list_documents(request.clone())
            .await
            .expect("list")
            .into_inner();
        listed.extend(
            page.documents
                .into_iter()
                .map(|d| (d.document_id, d.readers)),
        );
        if page.next_page_token.is_empty() {
            return listed;
        }
        request.page_token = page.next_page_token;
    }
}
