//! Data and comparisons for ranking both backends side by side.

use tonic::transport::Channel;
use zhiku_proto::v1::retriever_client::RetrieverClient;
use zhiku_proto::v1::{
    CreateKnowledgeBaseRequest, Distance, Passage, SearchMode, SearchRequest, SearchResponse,
    UpsertRequest,
};

use super::conformance::{clean, search_request};

pub const DIMS: usize = 32;
const DOCS: usize = 100;
const CHUNKS: u32 = 4;
/// Relative score difference allowed between the engines (float summation order).
const SCORE_EPS: f32 = 1e-4;
/// Hybrid: the retriever fuses both backends' rankings the same way, and scores within the
/// engines' rounding share a rank; two passages whose scores sit right at that tolerance may
/// still swap neighbouring ranks, which moves their fused scores by at most 1/60 − 1/61
/// (RRF, k = 60).
pub const FUSED_EPS: f32 = 1.0 / 60.0 - 1.0 / 61.0 + 1e-6;

const WORDS: &[&str] = &[
    "知识库",
    "问答",
    "向量",
    "数据库",
    "检索",
    "段落",
    "模型",
    "训练",
    "量化",
    "显卡",
    "部署",
    "提示词",
    "语义",
    "相似度",
    "文档",
    "切分",
    "小拾",
    "阿敏",
    "电影",
    "游戏",
    "手机",
    "公园",
    "天气",
    "散步",
    "Qdrant",
    "hybrid",
    "search",
    "sparse",
    "vector",
    "index",
];

/// SplitMix64: deterministic data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn vector(&mut self) -> Vec<f32> {
        (0..DIMS)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            .collect()
    }

    fn words(&mut self, min: usize, max: usize) -> String {
        let n = min + self.below(max - min + 1);
        (0..n)
            .map(|_| WORDS[self.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub fn corpus() -> Vec<Passage> {
    let mut rng = Rng(7);
    (0..DOCS)
        .flat_map(|d| (0..CHUNKS).map(move |c| (d, c)))
        .map(|(d, c)| Passage {
            document_id: format!("d{d:03}"),
            chunk_index: c,
            chunk_count: CHUNKS,
            text: rng.words(3, 24),
            source: format!("d{d:03}.txt"),
            vector: rng.vector(),
            ..Default::default()
        })
        .collect()
}

pub async fn load(c: &mut RetrieverClient<Channel>, kb: &str, corpus: &[Passage]) {
    clean(c, kb).await;
    c.create_knowledge_base(CreateKnowledgeBaseRequest {
        name: kb.into(),
        dimensions: DIMS as u32,
        distance: Distance::Cosine as i32,
        ..Default::default()
    })
    .await
    .expect("create");
    let r = c
        .upsert(UpsertRequest {
            knowledge_base: kb.into(),
            passages: corpus.to_vec(),
        })
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!(r.upserted, corpus.len() as u64);
}

#[derive(Debug, Clone)]
pub struct Query {
    pub mode: SearchMode,
    pub text: String,
    pub vector: Vec<f32>,
}

impl Query {
    pub fn request(&self, kb: &str) -> SearchRequest {
        let mut r = search_request(kb);
        r.mode = self.mode as i32;
        r.top_k = 10;
        if self.mode != SearchMode::Sparse {
            r.vector = self.vector.clone();
        }
        if self.mode != SearchMode::Dense {
            r.query_text = self.text.clone();
        }
        r
    }
}

/// 15 queries of each mode.
pub fn queries() -> Vec<Query> {
    let mut rng = Rng(11);
    let mut out = Vec::new();
    for mode in [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid] {
        for _ in 0..15 {
            out.push(Query {
                mode,
                text: rng.words(1, 3),
                vector: rng.vector(),
            });
        }
    }
    out
}

fn key(r: &SearchResponse, i: usize) -> (String, u32) {
    let p = r.hits[i].passage.as_ref().expect("passage");
    (p.document_id.clone(), p.chunk_index)
}

fn close(a: f32, b: f32, eps: f32) -> bool {
    (a - b).abs() <= eps * a.abs().max(b.abs()).max(1.0)
}

/// The same scores (within [`SCORE_EPS`]) in the same order; passages the same except within
/// runs of tied scores (compared as sets), and in the last run, which the top_k cut may split
/// differently.
pub fn assert_alike(a: &SearchResponse, b: &SearchResponse, what: &str) {
    assert_alike_within(a, b, what, SCORE_EPS);
}

/// [`assert_alike`] with scores `eps` apart (relative, absolute under 1) counted as tied.
pub fn assert_alike_within(a: &SearchResponse, b: &SearchResponse, what: &str, eps: f32) {
    assert_eq!(
        a.hits.len(),
        b.hits.len(),
        "{what}: hit counts\n{a:?}\n{b:?}"
    );
    for (i, (x, y)) in a.hits.iter().zip(&b.hits).enumerate() {
        assert!(
            close(x.score, y.score, eps),
            "{what}: score {i}: {} vs {}\n{a:?}\n{b:?}",
            x.score,
            y.score
        );
    }
    let mut start = 0;
    while start < a.hits.len() {
        let mut end = start + 1;
        while end < a.hits.len() && close(a.hits[start].score, a.hits[end].score, eps) {
            end += 1;
        }
        if end < a.hits.len() {
            let mut x: Vec<_> = (start..end).map(|i| key(a, i)).collect();
            let mut y: Vec<_> = (start..end).map(|i| key(b, i)).collect();
            x.sort();
            y.sort();
            assert_eq!(x, y, "{what}: hits {start}..{end}\n{a:?}\n{b:?}");
        }
        start = end;
    }
}
