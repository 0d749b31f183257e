//! BM25 sparse vectors, computed here for both backends so that they rank alike.
//!
//! This is Qdrant's own BM25 embedder (shipped in `qdrant-edge`): Qdrant's multilingual
//! tokenizer (charabia, which segments Chinese into words with jieba), lowercasing, English
//! and Chinese stopwords, the English stemmer, and Qdrant's term hashing. A document vector
//! holds BM25 term-frequency weights (k1 = 1.2, b = 0.75); a query vector holds 1 per term;
//! the stores keep the sparse vectors with the IDF modifier, so a sparse search scores
//! Σ idf(t) · tf-weight(t, passage) — BM25.

use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};

use crate::error::{Result, RetrieverError};
use crate::store::SparseVec;

/// Typical passage length in tokens (the splitter's 250 characters of Chinese make about
/// 120-160 words); BM25 normalises lengths against it.
const AVERAGE_PASSAGE_TOKENS: f64 = 150.0;

/// Turns text into BM25 sparse vectors.
#[derive(Debug)]
pub struct Bm25 {
    model: EdgeBm25,
}

impl Bm25 {
    pub fn new() -> Result<Self> {
        // The config is built through its JSON form (the one Qdrant's REST API takes): the
        // stopwords type is not exported by qdrant-edge.
        let config: EdgeBm25Config = serde_json::from_value(serde_json::json!({
            "avg_len": AVERAGE_PASSAGE_TOKENS,
            "tokenizer": "multilingual",
            "language": "english",
            "stopwords": { "languages": ["english", "chinese"] },
        }))
        .map_err(|e| RetrieverError::Engine(format!("BM25 config: {e}")))?;
        let model = EdgeBm25::new(config)
            .map_err(|e| RetrieverError::Engine(format!("BM25 model: {e}")))?;
        Ok(Self { model })
    }

    /// The vector stored with a passage.
    pub fn document(&self, text: &str) -> SparseVec {
        let v = self.model.embed_document(text);
        SparseVec {
            indices: v.indices,
            values: v.values,
        }
    }

    /// The vector of a query.
    pub fn query(&self, text: &str) -> SparseVec {
        let v = self.model.embed_query(text);
        SparseVec {
            indices: v.indices,
            values: v.values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_is_segmented_into_words() {
        let bm25 = Bm25::new().expect("model");
        // Whole-sentence tokens would give one term; words give several.
        let v = bm25.query("知识库问答系统使用向量检索");
        assert!(v.indices.len() >= 3, "{v:?}");
        // The same word in another sentence shares a term.
        let a = bm25.query("向量检索");
        let b = bm25.query("我们喜欢向量检索的速度");
        assert!(
            a.indices.iter().any(|i| b.indices.contains(i)),
            "{a:?} {b:?}"
        );
    }

    #[test]
    fn documents_weigh_repeated_terms() {
        let bm25 = Bm25::new().expect("model");
        let d = bm25.document("Qdrant Qdrant Qdrant search");
        assert_eq!(d.indices.len(), 2);
        let max = d.values.iter().cloned().fold(0.0f32, f32::max);
        let min = d.values.iter().cloned().fold(f32::MAX, f32::min);
        assert!(max > min);
    }
}
