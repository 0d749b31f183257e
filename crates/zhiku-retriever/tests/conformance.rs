//! The conformance suite against both backends, over real gRPC on loopback: one test per
//! section and backend (`embedded::…`, `qdrant::…`), and the two backends side by side on
//! the same data (`both_backends_rank_alike`).
//!
//! The `qdrant::…` tests need a Qdrant server at `ZHIKU_TEST_QDRANT_URL` (`scripts/test`
//! starts one with `scripts/qdrant-test-server` when `../shared/qdrant/qdrant` is there);
//! without one they print SKIPPED and pass.

mod common;

use common::TestServer;

/// Collections of this run: distinct per process, so runs never meet on one server.
fn qdrant_prefix() -> String {
    format!("zhiku_test_{}_", std::process::id())
}

macro_rules! sections {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let server =
                        TestServer::start(common::embedded_retriever(dir.path()).await).await;
                    let mut c = server.client().await;
                    common::conformance::$name(&mut c, stringify!($name), "embedded").await;
                }
            )*
        }

        mod qdrant {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(url) = common::qdrant_url("the conformance suite on a Qdrant server")
                    else {
                        return;
                    };
                    let retriever = common::qdrant_retriever(&url, &qdrant_prefix()).await;
                    let server = TestServer::start(retriever).await;
                    let mut c = server.client().await;
                    common::conformance::$name(&mut c, stringify!($name), "qdrant").await;
                }
            )*
        }

        #[test]
        fn every_section_is_a_test() {
            assert_eq!(common::conformance::SECTIONS, [$(stringify!($name)),*]);
        }
    };
}

sections!(
    knowledge_bases,
    reingest_and_stale_chunks,
    documents_paged,
    dense_search,
    filters,
    sparse_bm25,
    hybrid,
    bad_input,
    deletes,
    search_options,
    readers,
);

/// Both backends given the same 400 passages answer the same searches alike, in every mode:
/// the same scores (1e-4 relative: the engines sum floats in different orders) in the same
/// order. Dense (exact at this size on both) and BM25: where scores tie, the engines may order
/// the tied passages differently (and pick different ones at the top_k cut). Hybrid: the
/// retriever fuses both backends' rankings itself with ties broken by point id (`fuse_rrf`
/// in `src/store/points.rs`), so the fused scores agree too, up to `ranking::FUSED_EPS` (a
/// swap of neighbouring ranks between passages whose scores differ by less than the engines'
/// rounding); the engines' own fusion did not (they break ties, and cut candidate lists
/// inside ties, each their own way: fused scores up to a third apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_rank_alike() {
    let Some(url) = common::qdrant_url("the conformance suite on a Qdrant server") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded = TestServer::start(common::embedded_retriever(dir.path()).await).await;
    let server = TestServer::start(common::qdrant_retriever(&url, &qdrant_prefix()).await).await;
    let (mut e, mut s) = (embedded.client().await, server.client().await);
    let kb = "rank_alike";
    let corpus = common::ranking::corpus();
    for c in [&mut e, &mut s] {
        common::ranking::load(c, kb, &corpus).await;
    }
    let mut compared = 0;
    for (i, query) in common::ranking::queries().into_iter().enumerate() {
        let a = common::conformance::search(&mut e, query.request(kb)).await;
        let b = common::conformance::search(&mut s, query.request(kb)).await;
        let what = format!("query {i} ({query:?})");
        if query.mode == zhiku_proto::v1::SearchMode::Hybrid {
            common::ranking::assert_alike_within(&a, &b, &what, common::ranking::FUSED_EPS);
        } else {
            common::ranking::assert_alike(&a, &b, &what);
        }
        compared += a.hits.len();
    }
    for c in [&mut e, &mut s] {
        common::conformance::clean(c, kb).await;
    }
    // Let go of the embedded store before its directory goes.
    embedded.stop().await;
    server.stop().await;
    assert!(compared > 100, "too few hits compared: {compared}");
}

/// A hybrid search's first hits do not depend on how many were asked for, up to 20: each
/// ranking brings at least as many candidates to the fusion as a search for 20 does. (With
/// 20 candidates for a search of 5, a passage far down one ranking and high in the other was
/// in one list only, and a search for 5 ranked it lower than a search for 20.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_first_hits_do_not_depend_on_top_k() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(common::embedded_retriever(dir.path()).await).await;
    let mut c = server.client().await;
    let kb = "first_hits";
    common::ranking::load(&mut c, kb, &common::ranking::corpus()).await;
    let mut compared = 0;
    for (i, query) in common::ranking::queries()
        .into_iter()
        .filter(|q| q.mode == zhiku_proto::v1::SearchMode::Hybrid)
        .enumerate()
    {
        let mut few = query.request(kb);
        few.top_k = 5;
        let mut many = query.request(kb);
        many.top_k = 20;
        let few = common::conformance::search(&mut c, few).await;
        let many = common::conformance::search(&mut c, many).await;
        let first = |r: &zhiku_proto::v1::SearchResponse, n: usize| {
            r.hits
                .iter()
                .take(n)
                .map(|h| {
                    let p = h.passage.as_ref().expect("passage");
                    (p.document_id.clone(), p.chunk_index, h.score)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            first(&few, 5),
            first(&many, few.hits.len()),
            "query {i} ({query:?})"
        );
        compared += few.hits.len();
    }
    server.stop().await;
    assert!(compared >= 50, "too few hits compared: {compared}");
}
