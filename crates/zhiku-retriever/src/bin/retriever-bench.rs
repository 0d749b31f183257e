//! `retriever-bench`: recall and latency of the retriever's dense search.
//!
//! Stores N random unit vectors (default 100 000 × 384) in the embedded backend (qdrant-edge
//! in a temporary directory), builds its HNSW index, then for Q random queries compares the
//! top-10 of the store with the exact top-10 (brute force, computed here) and measures search
//! latency for several HNSW `ef` values. With `ZHIKU_TEST_QDRANT_URL` set (e.g. under
//! `scripts/qdrant-test-server`) it measures a Qdrant server the same way on the same data,
//! once the server has indexed every vector (status green, `indexed_vectors_count` = points),
//! and prints both side by side. Run it in release: `cargo run --release -p zhiku-retriever
//! --bin retriever-bench`.
//!
//! With `--filtered` (the default) every point also carries readers (every point `all`, one
//! in 100 `p1`, one in 2 `p50`), and searches confined to the readers `p1` (1% of the
//! points) and `p50` (50%) are compared with the exact top-10 of the points they may read
//! (and so is the engine's own exact filtered search), their p50 latency beside the
//! unfiltered search's at the same ef, measured interleaved: each query unfiltered, 1%, 50%
//! in turn, so that a shared machine's drifting load weighs on all three alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use zhiku_retriever::store::embedded::{EmbeddedStore, HnswSettings};
use zhiku_retriever::store::qdrant::{QdrantSettings, QdrantStore};
use zhiku_retriever::store::{
    Distance, KbMeta, Mode, PassageFilter, PassagePayload, PointRecord, SearchSpec, SparseVec,
    VectorStore, now_ms,
};

/// Recall@10 and p50/p99 search latency of the retriever's vector stores.
#[derive(Debug, Parser)]
#[command(name = "retriever-bench")]
struct Args {
    /// Vectors stored.
    #[arg(long, env = "ZHIKU_BENCH_POINTS", default_value_t = 100_000)]
    points: usize,
    /// Vector length.
    #[arg(long, env = "ZHIKU_BENCH_DIMS", default_value_t = 384)]
    dims: usize,
    /// Queries measured.
    #[arg(long, env = "ZHIKU_BENCH_QUERIES", default_value_t = 200)]
    queries: usize,
    /// Nearest neighbours compared (recall@k).
    #[arg(long, env = "ZHIKU_BENCH_K", default_value_t = 10)]
    k: usize,
    /// HNSW search beam widths to measure (comma-separated).
    #[arg(
        long,
        env = "ZHIKU_BENCH_EF",
        value_delimiter = ',',
        default_value = "64,128,256,512"
    )]
    ef: Vec<usize>,
    /// HNSW edges per node.
    #[arg(long, env = "ZHIKU_BENCH_HNSW_M", default_value_t = 16)]
    m: usize,
    /// HNSW build-time beam width.
    #[arg(long, env = "ZHIKU_BENCH_HNSW_EF_CONSTRUCT", default_value_t = 100)]
    ef_construct: usize,
    /// Seed of the random vectors.
    #[arg(long, env = "ZHIKU_BENCH_SEED", default_value_t = 42)]
    seed: u64,
    /// How the random vectors are drawn: `uniform` on the sphere (no structure at all: the
    /// worst case for any graph index) or `clustered` around random centres (like real
    /// text embeddings, whose neighbours are much nearer than the rest).
    #[arg(long, env = "ZHIKU_BENCH_DISTRIBUTION", value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Centres of the clustered distribution.
    #[arg(long, env = "ZHIKU_BENCH_CLUSTERS", default_value_t = 1000)]
    clusters: usize,
    /// Also measure exact (brute-force) search by the engine.
    #[arg(long, env = "ZHIKU_BENCH_EXACT", default_value_t = true, action = clap::ArgAction::Set)]
    exact: bool,
    /// Also measure searches confined by readers to 1% and 50% of the points.
    #[arg(long, env = "ZHIKU_BENCH_FILTERED", default_value_t = true, action = clap::ArgAction::Set)]
    filtered: bool,
}

/// The reader groups of the filtered searches: (group, one point in how many holds it).
const READER_SHARES: [(&str, usize); 2] = [("p1", 100), ("p50", 2)];

/// The readers of point `i`: `all`, and each group of [`READER_SHARES`] it holds.
fn readers_of(i: usize) -> Vec<String> {
    let mut readers = vec!["all".to_string()];
    readers.extend(
        READER_SHARES
            .iter()
            .filter(|(_, every)| i.is_multiple_of(*every))
            .map(|(group, _)| group.to_string()),
    );
    readers
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Distribution {
    Uniform,
    Clustered,
}

/// SplitMix64: small, deterministic, good enough for test vectors.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn next_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn unit_vector(&mut self, dims: usize) -> Vec<f32> {
        normalized((0..dims).map(|_| self.next_f32()).collect())
    }

    /// A point near a random one of `centres`: the centre plus noise of about 0.6 its length.
    fn near(&mut self, centres: &[Vec<f32>]) -> Vec<f32> {
        let c = &centres[(self.next_u64() % centres.len() as u64) as usize];
        let scale = 0.6 * (3.0 / c.len() as f32).sqrt();
        normalized(c.iter().map(|x| x + scale * self.next_f32()).collect())
    }
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Exact top-k document ids by cosine (the vectors are unit length).
fn exact_top_k(data: &[Vec<f32>], query: &[f32], k: usize) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = data
        .iter()
        .enumerate()
        .map(|(i, v)| (dot(v, query), i))
        .collect();
    scored.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
    scored.truncate(k);
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, i)| i).collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// What builds a store's HNSW index after the upserts.
enum Indexer {
    /// The embedded store builds it when told to.
    Embedded(Arc<EmbeddedStore>),
    /// The server builds it in the background: wait until it has.
    Server(Arc<QdrantStore>),
}

struct Figures {
    ef: usize,
    recall: f64,
    p50: Duration,
    p99: Duration,
}

/// One search: how long it took and how many of `want` it found.
// The benchmark's knobs, each named at its call.
#[allow(clippy::too_many_arguments)]
async fn search_once(
    store: &Arc<dyn VectorStore>,
    kb: &str,
    query: &[f32],
    want: &[usize],
    k: usize,
    ef: Option<usize>,
    exact: bool,
    filter: &PassageFilter,
) -> Result<(Duration, usize), Box<dyn std::error::Error>> {
    let spec = SearchSpec {
        mode: Mode::Dense,
        dense: Some(query.to_vec()),
        sparse: None,
        limit: k,
        filter: filter.clone(),
        score_threshold: None,
        hnsw_ef: ef,
        exact,
        with_vectors: false,
        rrf_k: zhiku_retriever::store::DEFAULT_RRF_K,
        distance: Distance::Cosine,
    };
    let started = Instant::now();
    let hits = store.search(kb, spec).await?;
    let took = started.elapsed();
    let got: std::collections::HashSet<usize> = hits
        .iter()
        .filter_map(|h| h.payload.document_id.parse().ok())
        .collect();
    Ok((took, want.iter().filter(|i| got.contains(i)).count()))
}

// The benchmark's knobs, each named at its call.
#[allow(clippy::too_many_arguments)]
async fn measure(
    store: &Arc<dyn VectorStore>,
    kb: &str,
    queries: &[Vec<f32>],
    truth: &[Vec<usize>],
    k: usize,
    ef: Option<usize>,
    exact: bool,
    filter: &PassageFilter,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let mut latencies = Vec::with_capacity(queries.len());
    let mut found = 0usize;
    for (q, want) in queries.iter().zip(truth) {
        let (took, hits) = search_once(store, kb, q, want, k, ef, exact, filter).await?;
        latencies.push(took);
        found += hits;
    }
    latencies.sort();
    Ok(Figures {
        ef: ef.unwrap_or(0),
        recall: found as f64 / (queries.len() * k) as f64,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

/// Fills a knowledge base of `store`, waits for its index, measures every ef (and exact);
/// returns the rows of figures (ef 0 = exact).
async fn bench(
    name: &str,
    store: Arc<dyn VectorStore>,
    indexer: Indexer,
    args: &Args,
    data: &[Vec<f32>],
    queries: &[Vec<f32>],
    truth: &[Vec<usize>],
) -> Result<Vec<Figures>, Box<dyn std::error::Error>> {
    let kb = "bench";
    let _ = store.delete_kb(kb).await;
    store
        .create_kb(KbMeta {
            name: kb.into(),
            dimensions: args.dims as u32,
            distance: Distance::Cosine,
            description: "retriever-bench".into(),
            adapter: String::new(),
            adapter_path: String::new(),
            created_at_ms: now_ms(),
            adapter_provenance: None,
        })
        .await?;
    let started = Instant::now();
    for (batch_no, batch) in data.chunks(1000).enumerate() {
        let points = batch
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let i = batch_no * 1000 + j;
                PointRecord {
                    id: zhiku_retriever::knowledge::point_id(kb, &i.to_string(), 0),
                    dense: v.clone(),
                    sparse: SparseVec::default(),
                    payload: PassagePayload {
                        document_id: i.to_string(),
                        readers: if args.filtered {
                            readers_of(i)
                        } else {
                            Vec::new()
                        },
                        ..PassagePayload::default()
                    },
                }
            })
            .collect();
        store.upsert(kb, points, vec![]).await?;
    }
    let upsert_time = started.elapsed();
    let started = Instant::now();
    let index_time = match &indexer {
        Indexer::Embedded(embedded) => {
            let e = embedded.clone();
            tokio::task::spawn_blocking(move || e.optimize(kb)).await??;
            started.elapsed()
        }
        Indexer::Server(server) => {
            let (took, indexed, points) = server
                .wait_indexed(kb, Duration::from_secs(10), Duration::from_secs(3600))
                .await?;
            println!("[{name}] status green, {indexed} of {points} vectors indexed");
            took
        }
    };
    let count = store.count(kb).await?;
    println!(
        "[{name}] {count} points of {} dims: upsert {:.1} s ({:.0} points/s), indexed {:.1} s \
         after the last upsert",
        args.dims,
        upsert_time.as_secs_f64(),
        data.len() as f64 / upsert_time.as_secs_f64(),
        index_time.as_secs_f64()
    );
    // Warm-up (page cache, lazy structures).
    measure(
        &store,
        kb,
        &queries[..queries.len().min(20)],
        truth,
        args.k,
        None,
        false,
        &PassageFilter::default(),
    )
    .await?;
    println!(
        "[{name}] {:>6} {:>12} {:>10} {:>10}",
        "ef", "recall@k", "p50 ms", "p99 ms"
    );
    let mut rows = Vec::new();
    let all = PassageFilter::default();
    for &ef in &args.ef {
        rows.push(measure(&store, kb, queries, truth, args.k, Some(ef), false, &all).await?);
    }
    if args.exact {
        rows.push(measure(&store, kb, queries, truth, args.k, None, true, &all).await?);
    }
    for f in &rows {
        println!(
            "[{name}] {:>6} {:>12.4} {:>10.3} {:>10.3}",
            ef_label(f.ef),
            f.recall,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3
        );
    }
    if args.filtered {
        filtered(name, &store, kb, args, data, queries, truth).await?;
    }
    store.delete_kb(kb).await?;
    Ok(rows)
}

/// The searches confined by readers: for each ef, every query is searched unfiltered, then
/// confined to 1%, then to 50% of the points, one after the other, so that the p50 ratios
/// compare searches made under the same load (a shared machine's load drifts over a run).
/// Recall is against the exact top-k of the points the filter lets through; the engine's
/// own exact filtered search is measured against the same truth.
async fn filtered(
    name: &str,
    store: &Arc<dyn VectorStore>,
    kb: &str,
    args: &Args,
    data: &[Vec<f32>],
    queries: &[Vec<f32>],
    truth: &[Vec<usize>],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut cases = vec![("none".to_string(), PassageFilter::default(), truth.to_vec())];
    for (group, every) in READER_SHARES {
        // The exact top-k of the points the group may read.
        let readable: Vec<usize> = (0..data.len()).filter(|i| i % every == 0).collect();
        let subset: Vec<Vec<f32>> = readable.iter().map(|&i| data[i].clone()).collect();
        let filtered_truth: Vec<Vec<usize>> = queries
            .iter()
            .map(|q| {
                exact_top_k(&subset, q, args.k)
                    .into_iter()
                    .map(|j| readable[j])
                    .collect()
            })
            .collect();
        let filter = PassageFilter {
            readable_by: Some(vec![group.to_string()]),
            ..PassageFilter::default()
        };
        cases.push((format!("{}%", 100 / every), filter, filtered_truth));
    }
    println!(
        "[{name}] {:>6} {:>6} {:>12} {:>10} {:>16} {:>14}",
        "filter", "ef", "recall@k", "p50 ms", "p50 / unfiltered", "exact recall@k"
    );
    for &ef in &args.ef {
        let mut figures: Vec<(Vec<Duration>, usize)> = vec![(Vec::new(), 0); cases.len()];
        for (i, q) in queries.iter().enumerate() {
            for ((_, filter, truth), (latencies, found)) in cases.iter().zip(&mut figures) {
                let (took, hits) =
                    search_once(store, kb, q, &truth[i], args.k, Some(ef), false, filter).await?;
                latencies.push(took);
                *found += hits;
            }
        }
        let p50s: Vec<Duration> = figures
            .iter_mut()
            .map(|(latencies, _)| {
                latencies.sort();
                percentile(latencies, 0.50)
            })
            .collect();
        for (c, ((label, filter, truth), (_, found))) in cases.iter().zip(&figures).enumerate() {
            // The engine's exact search under the same filter: what the ANN search should
            // find.
            let exact = if c == 0 {
                1.0
            } else {
                measure(store, kb, queries, truth, args.k, None, true, filter)
                    .await?
                    .recall
            };
            println!(
                "[{name}] {:>6} {:>6} {:>12.4} {:>10.3} {:>16.2} {:>14.4}",
                label,
                ef,
                *found as f64 / (queries.len() * args.k) as f64,
                ms(p50s[c]),
                p50s[c].as_secs_f64() / p50s[0].as_secs_f64().max(1e-9),
                exact
            );
        }
    }
    Ok(())
}

fn ef_label(ef: usize) -> String {
    if ef == 0 {
        "exact".to_string()
    } else {
        ef.to_string()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut rng = Rng(args.seed);
    let started = Instant::now();
    let centres: Vec<Vec<f32>> = (0..args.clusters.max(1))
        .map(|_| rng.unit_vector(args.dims))
        .collect();
    let draw = |rng: &mut Rng| match args.distribution {
        Distribution::Uniform => rng.unit_vector(args.dims),
        Distribution::Clustered => rng.near(&centres),
    };
    let data: Vec<Vec<f32>> = (0..args.points).map(|_| draw(&mut rng)).collect();
    let queries: Vec<Vec<f32>> = (0..args.queries).map(|_| draw(&mut rng)).collect();
    let truth: Vec<Vec<usize>> = queries
        .iter()
        .map(|q| exact_top_k(&data, q, args.k))
        .collect();
    println!(
        "{} random unit vectors ({:?}) × {} dims, {} queries, exact top-{} by brute force in \
         {:.1} s; HNSW m={} ef_construct={}",
        args.points,
        args.distribution,
        args.dims,
        args.queries,
        args.k,
        started.elapsed().as_secs_f64(),
        args.m,
        args.ef_construct
    );

    let dir = tempfile::tempdir()?;
    let hnsw = HnswSettings {
        m: args.m,
        ef_construct: args.ef_construct,
        ..HnswSettings::default()
    };
    let embedded = Arc::new(EmbeddedStore::open(dir.path(), hnsw)?);
    let local = bench(
        "embedded",
        embedded.clone(),
        Indexer::Embedded(embedded),
        &args,
        &data,
        &queries,
        &truth,
    )
    .await?;

    match std::env::var("ZHIKU_TEST_QDRANT_URL") {
        Ok(url) if !url.is_empty() => {
            let store = QdrantStore::connect(QdrantSettings {
                api_key: std::env::var("ZHIKU_TEST_QDRANT_API_KEY").ok(),
                collection_prefix: format!("zhiku_bench_{}_", std::process::id()),
                timeout_secs: 60,
                hnsw,
                ..QdrantSettings::new(url)
            })
            .await?;
            let store = Arc::new(store);
            let server = bench(
                "qdrant",
                store.clone(),
                Indexer::Server(store),
                &args,
                &data,
                &queries,
                &truth,
            )
            .await?;
            println!(
                "\nside by side (recall@{}, ms):\n{:>6} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8}",
                args.k, "ef", "embedded", "p50", "p99", "qdrant", "p50", "p99"
            );
            for (e, q) in local.iter().zip(&server) {
                println!(
                    "{:>6} | {:>8.4} {:>8.3} {:>8.3} | {:>8.4} {:>8.3} {:>8.3}",
                    ef_label(e.ef),
                    e.recall,
                    ms(e.p50),
                    ms(e.p99),
                    q.recall,
                    ms(q.p50),
                    ms(q.p99)
                );
            }
        }
        _ => println!("[qdrant] skipped: set ZHIKU_TEST_QDRANT_URL to measure a Qdrant server"),
    }
    Ok(())
}
