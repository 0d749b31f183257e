//! The one search, fusion and write algorithm of both backends, over [`Points`]: what a
//! backend does with the points of one knowledge base (nearest neighbours, upsert, count and
//! delete by filter).
//!
//! Here: which rankings a search mode asks for, the filter a search or a write means,
//! reciprocal-rank fusion, the scores a hit carries, stale-chunk and document deletion. A
//! backend converts [`Nearest`], [`FieldMatch`] and [`PointRecord`] into its engine's
//! requests and its engine's points into [`Scored`], and adds its own extras around these
//! calls (the embedded one: write lock, flush and document index; the server one: retries
//! and the knowledge base's existence check).

use std::collections::BTreeMap;

use super::{
    Distance, Hit, Mode, PassageFilter, PassagePayload, PointRecord, SearchSpec, SparseVec,
    StaleChunks, UpsertOutcome, fields, metadata_kv,
};
use crate::error::Result;

/// One condition on a payload field; a filter is a list of them that must all hold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FieldMatch {
    /// The keyword field holds this value.
    Is(&'static str, String),
    /// The keyword field holds one of these values.
    AnyOf(&'static str, Vec<String>),
    /// The integer field is at least this.
    AtLeast(&'static str, u32),
    /// The keyword-list field holds one of these values, or is empty or absent (readers:
    /// a passage without readers is everyone's).
    AnyOfOrEmpty(&'static str, Vec<String>),
}

/// The vector a ranking is nearest to, and so the named vector it searches.
#[derive(Debug, Clone, Copy)]
pub(crate) enum QueryVector<'a> {
    Dense(&'a [f32]),
    Sparse(&'a SparseVec),
}

/// One ranking to ask a backend for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Nearest<'a> {
    pub vector: QueryVector<'a>,
    pub limit: usize,
    pub score_threshold: Option<f32>,
    /// Conditions every point must meet (None: every point).
    pub filter: Option<&'a [FieldMatch]>,
    pub hnsw_ef: Option<usize>,
    pub exact: bool,
    /// Return each point's dense vector.
    pub with_vector: bool,
}

/// A point of a ranking, converted from the engine's.
#[derive(Debug, Clone)]
pub(crate) struct Scored {
    /// The point id as text: what breaks ties in the fusion.
    pub key: String,
    pub score: f32,
    pub payload: PassagePayload,
    /// The dense vector, when [`Nearest::with_vector`] asked for it.
    pub vector: Option<Vec<f32>>,
}

/// The points of one knowledge base, as a backend stores them.
#[tonic::async_trait]
pub(crate) trait Points: Sync {
    /// The `query.limit` points nearest to `query.vector` that meet the filter and the
    /// threshold, best first, with their payloads.
    async fn nearest(&self, query: Nearest<'_>) -> Result<Vec<Scored>>;
    /// Writes `points` (never empty), replacing points of the same id.
    async fn upsert(&self, points: Vec<PointRecord>) -> Result<()>;
    /// The points that meet `filter` (None: all of them), counted exactly.
    async fn count(&self, filter: Option<&[FieldMatch]>) -> Result<u64>;
    /// Deletes the points that meet `filter`.
    async fn delete(&self, filter: &[FieldMatch]) -> Result<()>;
    /// Sets the payload field `field` to `value` on the points that meet `filter`.
    async fn set_field(
        &self,
        filter: &[FieldMatch],
        field: &'static str,
        value: serde_json::Value,
    ) -> Result<()>;
}

/// The conditions of a search filter (None: it lets every passage through).
pub(crate) fn passage_filter(filter: &PassageFilter) -> Option<Vec<FieldMatch>> {
    if filter.is_empty() {
        return None;
    }
    let mut all = Vec::new();
    if !filter.document_ids.is_empty() {
        all.push(FieldMatch::AnyOf(
            fields::DOCUMENT_ID,
            filter.document_ids.clone(),
        ));
    }
    if !filter.sources.is_empty() {
        all.push(FieldMatch::AnyOf(fields::SOURCE, filter.sources.clone()));
    }
    for (k, v) in &filter.metadata {
        all.push(FieldMatch::Is(fields::METADATA_KV, metadata_kv(k, v)));
    }
    if let Some(groups) = &filter.readable_by {
        all.push(FieldMatch::AnyOfOrEmpty(fields::READERS, groups.clone()));
    }
    Some(all)
}

/// Every chunk of a document.
pub(crate) fn document_filter(document_id: &str) -> Vec<FieldMatch> {
    vec![FieldMatch::Is(fields::DOCUMENT_ID, document_id.to_string())]
}

/// The chunks a shorter version of a document leaves behind.
fn stale_filter(stale: &StaleChunks) -> Vec<FieldMatch> {
    vec![
        FieldMatch::Is(fields::DOCUMENT_ID, stale.document_id.clone()),
        FieldMatch::AtLeast(fields::CHUNK_INDEX, stale.chunk_count),
    ]
}

/// Which ranking a score comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ranking {
    Dense,
    Sparse,
}

impl Scored {
    fn into_hit(self, ranking: Ranking) -> (String, Hit) {
        let hit = Hit {
            score: self.score,
            dense_score: (ranking == Ranking::Dense).then_some(self.score),
            sparse_score: (ranking == Ranking::Sparse).then_some(self.score),
            vector: self.vector,
            payload: self.payload,
        };
        (self.key, hit)
    }
}

fn keyed(points: Vec<Scored>, ranking: Ranking) -> Vec<(String, Hit)> {
    points.into_iter().map(|p| p.into_hit(ranking)).collect()
}

/// Searches `points` as `spec` says: one ranking (dense or BM25), or both fused.
pub(crate) async fn search(points: &impl Points, spec: &SearchSpec) -> Result<Vec<Hit>> {
    let filter = passage_filter(&spec.filter);
    let nearest = |vector, limit, score_threshold| Nearest {
        vector,
        limit,
        score_threshold,
        filter: filter.as_deref(),
        hnsw_ef: spec.hnsw_ef,
        exact: spec.exact,
        with_vector: spec.with_vectors,
    };
    let dense = QueryVector::Dense(spec.dense.as_deref().unwrap_or_default());
    // No indexable word in the query: BM25 matches nothing.
    let sparse = spec
        .sparse
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(QueryVector::Sparse);
    let (vector, ranking) = match (spec.mode, sparse) {
        (Mode::Dense, _) => (dense, Ranking::Dense),
        (Mode::Sparse, Some(sparse)) => (sparse, Ranking::Sparse),
        (Mode::Sparse, None) => return Ok(vec![]),
        (Mode::Hybrid, sparse) => {
            // Both rankings from the engine, fused here (see `fuse_rrf`).
            // One more than fused: `fuse_rrf` drops a full ranking's last run of ties.
            let candidates = prefetch_limit(spec.limit) + 1;
            let dense = points
                .nearest(nearest(dense, candidates, spec.score_threshold))
                .await?;
            // With their dense vectors: a passage that BM25 finds beyond the dense ranking's
            // reach gets its similarity here, so that the threshold judges it like the rest.
            let sparse = match sparse {
                Some(sparse) => {
                    let query = Nearest {
                        with_vector: true,
                        ..nearest(sparse, candidates, None)
                    };
                    points.nearest(query).await?
                }
                None => vec![],
            };
            let dense = keyed(dense, Ranking::Dense);
            let sparse = with_similarity(
                keyed(sparse, Ranking::Sparse),
                &dense,
                spec.dense.as_deref().unwrap_or_default(),
                spec.distance,
            );
            let admits = |hit: &Hit| match (hit.dense_score, spec.score_threshold) {
                (Some(similarity), Some(threshold)) => passes(spec.distance, similarity, threshold),
                _ => true,
            };
            let mut hits = fuse_rrf(dense, sparse, candidates, spec.limit, spec.rrf_k, admits);
            if !spec.with_vectors {
                for hit in &mut hits {
                    hit.vector = None;
                }
            }
            return Ok(hits);
        }
    };
    let found = points
        .nearest(nearest(vector, spec.limit, spec.score_threshold))
        .await?;
    Ok(found.into_iter().map(|p| p.into_hit(ranking).1).collect())
}

/// Writes `records`, then removes the `stale` chunks.
pub(crate) async fn upsert(
    points: &impl Points,
    records: Vec<PointRecord>,
    stale: &[StaleChunks],
) -> Result<UpsertOutcome> {
    let upserted = records.len() as u64;
    if !records.is_empty() {
        points.upsert(records).await?;
    }
    let mut removed_stale = 0;
    for rule in stale {
        removed_stale += delete_counted(points, &stale_filter(rule)).await?;
    }
    Ok(UpsertOutcome {
        upserted,
        removed_stale,
    })
}

/// Deletes every chunk of a document; returns how many there were.
pub(crate) async fn delete_document(points: &impl Points, document_id: &str) -> Result<u64> {
    delete_counted(points, &document_filter(document_id)).await
}

/// Sets the readers of every chunk of a document; returns how many chunks there were.
pub(crate) async fn set_readers(
    points: &impl Points,
    document_id: &str,
    readers: &[String],
) -> Result<u64> {
    let filter = document_filter(document_id);
    let n = points.count(Some(&filter)).await?;
    if n > 0 {
        points
            .set_field(&filter, fields::READERS, serde_json::json!(readers))
            .await?;
    }
    Ok(n)
}

/// Deletes the points that meet `filter`, when there are any; returns how many.
async fn delete_counted(points: &impl Points, filter: &[FieldMatch]) -> Result<u64> {
    let n = points.count(Some(filter)).await?;
    if n > 0 {
        points.delete(filter).await?;
    }
    Ok(n)
}

/// The fewest candidates each ranking brings to a hybrid fusion: as many as a search for 20
/// brings, so that the first hits of any search up to 20 are the same. With 20, a passage
/// ranked 30th by one ranking and 5th by the other was in one list only and lost its place
/// to passages that both lists held (measured in the docs' eval benchmark page).
const HYBRID_MIN_CANDIDATES: usize = 80;

/// How many candidates each ranking contributes to a hybrid fusion.
fn prefetch_limit(limit: usize) -> usize {
    (limit * 4).max(HYBRID_MIN_CANDIDATES)
}

/// The BM25 hits that the dense ranking does not hold, each with its dense similarity to
/// `query` (from the vector the search returned) as its `dense_score`: the dense ranking
/// stops at its candidates, and a passage past them may still be as close as they are.
/// Under Euclid distance (a distance, not a similarity) they are left without one.
fn with_similarity(
    sparse: Vec<(String, Hit)>,
    dense: &[(String, Hit)],
    query: &[f32],
    distance: Distance,
) -> Vec<(String, Hit)> {
    let ranked: std::collections::HashSet<&str> = dense.iter().map(|(k, _)| k.as_str()).collect();
    sparse
        .into_iter()
        .map(|(key, mut hit)| {
            if !ranked.contains(key.as_str())
                && let Some(vector) = &hit.vector
            {
                hit.dense_score = similarity(distance, query, vector);
            }
            (key, hit)
        })
        .collect()
}

/// The dense score the engines give `vector` against `query`: the cosine, or the dot
/// product; None for Euclid distance and for vectors of another length or no norm.
fn similarity(distance: Distance, query: &[f32], vector: &[f32]) -> Option<f32> {
    if query.len() != vector.len() || query.is_empty() {
        return None;
    }
    let dot: f32 = query.iter().zip(vector).map(|(a, b)| a * b).sum();
    match distance {
        Distance::Dot => Some(dot),
        Distance::Cosine => {
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let denominator = norm(query) * norm(vector);
            (denominator > 0.0).then(|| dot / denominator)
        }
        Distance::Euclid => None,
    }
}

/// Whether a dense score passes a score threshold (a similarity: at least it).
fn passes(distance: Distance, score: f32, threshold: f32) -> bool {
    match distance {
        Distance::Cosine | Distance::Dot => score >= threshold,
        Distance::Euclid => true,
    }
}

/// Reciprocal-rank fusion of a dense and a BM25 ranking (each `(point id, hit)` with that
/// ranking's score, at most `candidates` long) with constant `k`, the top `limit`, for
/// both backends. A BM25 hit that the dense ranking does not hold joins only when
/// `admits` it (its similarity, when known, passes the threshold): otherwise it would take
/// a place that the threshold empties later.
///
/// Done here rather than by the engines: Qdrant (server and qdrant-edge alike) orders
/// passages of equal score in no fixed order, inside each ranking, at its cut, and in the
/// fused result, so the same data fused by the two engines gave different ranks, and so
/// different fused scores, to the same passage. Here ties go by point id (the same on both
/// backends), passages of equal score share the rank of the first of them, and a full
/// ranking loses its last run of equal scores (the engine may have cut through it, keeping
/// any of them), so the fused order depends only on the scores. "Equal" is within
/// [`TIE_EPS`]: the engines sum BM25 and dot products in their own order, and a last-bit
/// difference once moved a passage three places in one backend's ranking and not the other's.
/// Its time is the `fuse` stage of the metrics.
fn fuse_rrf(
    dense: Vec<(String, Hit)>,
    sparse: Vec<(String, Hit)>,
    candidates: usize,
    limit: usize,
    k: u32,
    admits: impl Fn(&Hit) -> bool,
) -> Vec<Hit> {
    let started = std::time::Instant::now();
    let ranked = |mut list: Vec<(String, Hit)>| {
        list.sort_by(|(a, x), (b, y)| y.score.total_cmp(&x.score).then_with(|| a.cmp(b)));
        let ranks = shared_ranks(&list);
        if list.len() >= candidates
            && let Some(&last) = ranks.last()
            // All tied: nothing better to keep.
            && last > 0
        {
            list.truncate(last);
        }
        list.into_iter().zip(ranks)
    };
    let mut fused: BTreeMap<String, Hit> = BTreeMap::new();
    for (list, is_dense) in [(ranked(dense), true), (ranked(sparse), false)] {
        for ((key, hit), rank) in list {
            if !is_dense && !fused.contains_key(&key) && !admits(&hit) {
                continue;
            }
            let part = 1.0 / (k as f32 + rank as f32);
            let score = hit.score;
            // A dense hit's dense score is set below; a BM25-only one keeps its similarity.
            let entry = fused.entry(key).or_insert_with(|| Hit {
                score: 0.0,
                sparse_score: None,
                ..hit
            });
            entry.score += part;
            if is_dense {
                entry.dense_score = Some(score);
            } else {
                entry.sparse_score = Some(score);
            }
        }
    }
    let mut hits: Vec<(String, Hit)> = fused.into_iter().collect();
    hits.sort_by(|(a, x), (b, y)| y.score.total_cmp(&x.score).then_with(|| a.cmp(b)));
    let hits = hits.into_iter().take(limit).map(|(_, hit)| hit).collect();
    zhiku_runtime::metrics::metrics().stage(
        zhiku_runtime::metrics::stage::FUSE,
        started.elapsed().as_secs_f64(),
    );
    hits
}

/// Scores this close (relative, absolute below 1) are one score to the fusion: well above
/// the engines' rounding differences, well below any difference a ranking should follow.
const TIE_EPS: f32 = 1e-5;

fn tied(a: f32, b: f32) -> bool {
    (a - b).abs() <= TIE_EPS * a.abs().max(b.abs()).max(1.0)
}

/// The rank of each hit of a list sorted best first: its index, or, in a run of tied scores
/// (each tied with the one before), the index of the run's first.
fn shared_ranks(sorted: &[(String, Hit)]) -> Vec<usize> {
    let mut ranks: Vec<usize> = Vec::with_capacity(sorted.len());
    for (i, (_, hit)) in sorted.iter().enumerate() {
        let rank = match (i.checked_sub(1), ranks.last()) {
            (Some(prev), Some(&rank)) if tied(sorted[prev].1.score, hit.score) => rank,
            _ => i,
        };
        ranks.push(rank);
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DEFAULT_RRF_K;

    fn hit(text: &str, score: f32) -> Hit {
        Hit {
            payload: PassagePayload {
                text: text.into(),
                ..PassagePayload::default()
            },
            score,
            dense_score: None,
            sparse_score: None,
            vector: None,
        }
    }

    fn ranking(scores: &[(&str, f32)]) -> Vec<(String, Hit)> {
        scores
            .iter()
            .map(|(id, s)| (id.to_string(), hit(id, *s)))
            .collect()
    }

    #[test]
    fn fusion_sums_reciprocal_ranks_and_keeps_the_parts() {
        let dense = ranking(&[("a", 0.9), ("b", 0.8), ("c", 0.7)]);
        let sparse = ranking(&[("c", 5.0), ("d", 4.0)]);
        let hits = fuse_rrf(dense, sparse, 10, 10, DEFAULT_RRF_K, |_| true);
        let texts: Vec<&str> = hits.iter().map(|h| h.payload.text.as_str()).collect();
        // c: 1/62 + 1/60; a: 1/60; d: 1/61; b: 1/61 (b before d by id).
        assert_eq!(texts, ["c", "a", "b", "d"]);
        let k = DEFAULT_RRF_K as f32;
        assert!((hits[0].score - (1.0 / (k + 2.0) + 1.0 / k)).abs() < 1e-7);
        assert_eq!(
            (hits[0].dense_score, hits[0].sparse_score),
            (Some(0.7), Some(5.0))
        );
        assert_eq!(
            (hits[3].dense_score, hits[3].sparse_score),
            (None, Some(4.0))
        );
        assert_eq!(
            fuse_rrf(ranking(&[("a", 1.0)]), vec![], 10, 0, DEFAULT_RRF_K, |_| {
                true
            }),
            vec![]
        );
    }

    #[test]
    fn fusion_does_not_depend_on_the_order_of_tied_scores() {
        let one = fuse_rrf(
            ranking(&[("x", 0.5), ("y", 0.5), ("z", 0.4)]),
            ranking(&[("z", 2.0), ("y", 1.0), ("x", 1.0)]),
            10,
            3,
            DEFAULT_RRF_K,
            |_| true,
        );
        let other = fuse_rrf(
            ranking(&[("y", 0.5), ("x", 0.5), ("z", 0.4)]),
            ranking(&[("z", 2.0), ("x", 1.0), ("y", 1.0)]),
            10,
            3,
            DEFAULT_RRF_K,
            |_| true,
        );
        assert_eq!(one, other);
        // A full ranking cut inside a tie (either of b, c could have been returned): the
        // tie goes, on whichever side it was cut.
        let cut = |tied: &str| {
            fuse_rrf(
                ranking(&[("a", 0.9), (tied, 0.5)]),
                vec![],
                2,
                10,
                DEFAULT_RRF_K,
                |_| true,
            )
        };
        assert_eq!(cut("b"), cut("c"));
        assert_eq!(cut("b").len(), 1);
    }

    #[test]
    fn scores_a_rounding_apart_share_a_rank() {
        // The same BM25 scores as two engines summed them: "m" and "n" a last bit above "d"
        // in one, below it in the other. Before ranks were shared, "d" ranked 2nd in one
        // and 0th in the other.
        let bits = |x: f32, steps: i32| f32::from_bits((x.to_bits() as i32 + steps) as u32);
        let base = 4.791_643_6_f32;
        let fuse = |steps: i32| {
            fuse_rrf(
                ranking(&[("z", 0.9)]),
                ranking(&[
                    ("d", base),
                    ("m", bits(base, steps)),
                    ("n", bits(base, 2 * steps)),
                    ("q", 1.0),
                ]),
                10,
                10,
                DEFAULT_RRF_K,
                |_| true,
            )
        };
        let one = fuse(3);
        let other = fuse(-3);
        let score = |hits: &[Hit], id: &str| {
            hits.iter()
                .find(|h| h.payload.text == id)
                .map(|h| h.score)
                .expect("hit")
        };
        for id in ["d", "m", "n"] {
            assert_eq!(score(&one, id), score(&other, id), "{id}");
            assert_eq!(score(&one, id), 1.0 / DEFAULT_RRF_K as f32, "{id}");
        }
        // A real difference keeps its rank: "q" is 3rd.
        assert_eq!(score(&one, "q"), 1.0 / (DEFAULT_RRF_K as f32 + 3.0));
        assert_eq!(
            shared_ranks(&ranking(&[("a", 2.0), ("b", 1.0), ("c", 1.0), ("d", 0.5)])),
            [0, 1, 1, 3]
        );
    }

    #[test]
    fn a_small_k_lets_either_rankings_first_hit_lead() {
        // "a" is second in both rankings, "d" first in the dense one and absent from BM25.
        let dense = || ranking(&[("d", 0.9), ("a", 0.8), ("x", 0.7), ("y", 0.6)]);
        let sparse = || ranking(&[("s", 9.0), ("a", 8.0), ("x", 7.0), ("y", 6.0)]);
        let order = |k| {
            fuse_rrf(dense(), sparse(), 10, 10, k, |_| true)
                .into_iter()
                .map(|h| h.payload.text)
                .collect::<Vec<_>>()
        };
        // k = 60: agreement wins; the passages both rank lead, each list's own first last.
        assert_eq!(order(60), ["a", "x", "y", "d", "s"]);
        // k = 1: a first place (1/1) is worth two second places (1/2 + 1/2).
        assert_eq!(order(1), ["a", "d", "s", "x", "y"]);
    }

    #[test]
    fn bm25_finds_beyond_the_dense_ranking_are_scored_and_thresholded() {
        let with_vector = |id: &str, v: [f32; 2]| {
            let mut h = hit(id, 1.0);
            h.vector = Some(v.to_vec());
            (id.to_string(), h)
        };
        let dense = ranking(&[("a", 0.95)]);
        // "a" is in the dense ranking (its dense score stays the engine's); "far" points
        // away from the query, "near" along it.
        let sparse = vec![
            with_vector("far", [0.0, 1.0]),
            with_vector("a", [0.6, 0.8]),
            with_vector("near", [3.0, 0.0]),
        ];
        let scored = with_similarity(sparse, &dense, &[1.0, 0.0], Distance::Cosine);
        let dense_scores: Vec<Option<f32>> = scored.iter().map(|(_, h)| h.dense_score).collect();
        assert_eq!(dense_scores, [Some(0.0), None, Some(1.0)]);
        // Under a threshold of 0.9 "far" does not join, and takes no place from "near".
        let admits = |h: &Hit| {
            h.dense_score
                .is_none_or(|s| passes(Distance::Cosine, s, 0.9))
        };
        let fused = fuse_rrf(dense, scored, 10, 2, DEFAULT_RRF_K, admits);
        let shown: Vec<(&str, Option<f32>)> = fused
            .iter()
            .map(|h| (h.payload.text.as_str(), h.dense_score))
            .collect();
        assert_eq!(shown, [("a", Some(0.95)), ("near", Some(1.0))]);
    }

    #[test]
    fn similarity_is_the_engines_dense_score() {
        assert_eq!(
            similarity(Distance::Dot, &[1.0, 2.0], &[3.0, 4.0]),
            Some(11.0)
        );
        let cos = similarity(Distance::Cosine, &[1.0, 0.0], &[1.0, 1.0]).expect("cosine");
        assert!(
            (cos - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6,
            "{cos}"
        );
        assert_eq!(similarity(Distance::Euclid, &[1.0], &[2.0]), None);
        assert_eq!(similarity(Distance::Cosine, &[1.0], &[1.0, 0.0]), None);
        assert_eq!(similarity(Distance::Cosine, &[0.0, 0.0], &[1.0, 0.0]), None);
        assert!(passes(Distance::Euclid, 5.0, 0.1));
        assert!(!passes(Distance::Cosine, 0.5, 0.9));
    }
}
