//! Batches for an epoch: shuffled with a seed, grouped by length, padded; and the
//! train/validation split. Everything here is a pure function of the examples, the options
//! and (seed, epoch), so that a resumed run rebuilds the same batches from its data cursor.

use zhiku_lm::seeded::SplitMix64;

use crate::error::TuneError;
use crate::spec::TrainExample;

/// A deterministic generator (SplitMix64): the same seed gives the same shuffles on every
/// machine, and its whole state is one `u64` that a checkpoint stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeededRng {
    pub state: u64,
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next value of `zhiku_lm`'s SplitMix64 from this state (one generator, one
    /// implementation).
    pub fn next_u64(&mut self) -> u64 {
        self.with_generator(SplitMix64::next_u64)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.with_generator(SplitMix64::uniform)
    }

    fn with_generator<T>(&mut self, draw: impl FnOnce(&mut SplitMix64) -> T) -> T {
        let mut generator = SplitMix64(self.state);
        let value = draw(&mut generator);
        self.state = generator.0;
        value
    }

    /// Uniform in `0..n` (n > 0), by rejection so that no value is favoured.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// How an epoch's examples become batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOptions {
    /// Rows per batch (at least 1): examples, or packed rows with `packing`.
    pub batch_size: usize,
    /// The id that fills a batch's shorter rows (attention and loss masks are false there).
    pub pad_id: u32,
    pub seed: u64,
    /// Length grouping: the shuffled examples are cut into buckets of this many batches,
    /// each bucket sorted by length, so that a batch holds examples of similar lengths
    /// (little padding) while the order stays random. 1 turns grouping off. Not used
    /// with `packing` (its rows are already about `max_seq_len` long).
    pub bucket_batches: usize,
    /// Concatenate examples into rows of up to `max_seq_len` tokens ([`pack_rows`])
    /// instead of one example per row.
    pub packing: bool,
    pub max_seq_len: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            batch_size: 1,
            pad_id: 0,
            seed: 0,
            bucket_batches: 16,
            packing: false,
            max_seq_len: 2048,
        }
    }
}

/// One padded batch, row-major `[rows, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub rows: usize,
    pub seq_len: usize,
    pub tokens: Vec<u32>,
    /// True on real tokens, false on padding (padding is at the end of a row).
    pub attention_mask: Vec<bool>,
    /// True where predicting the token counts in the loss: the examples' answer tokens.
    pub loss_mask: Vec<bool>,
    /// Every token's position in its example (0 starts one; a row's padding counts from 0
    /// too): what a packed row's attention and rotary use.
    pub positions: Vec<u32>,
    /// The examples in the batch, by index into the epoch's example list, row by row.
    pub examples: Vec<usize>,
}

impl Batch {
    /// Tokens the loss counts.
    pub fn answer_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }

    /// Real (unpadded) tokens.
    pub fn real_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m).count()
    }

    /// Pad tokens: the slots of the batch that hold no example's token.
    pub fn pad_tokens(&self) -> usize {
        self.rows * self.seq_len - self.real_tokens()
    }
}

/// First-fit decreasing: the examples of `lengths` packed into rows of at most `capacity`
/// tokens, the longest first, each into the first row with room for it (a new row when
/// none has); examples of equal length in an order drawn from `seed`. An example longer
/// than `capacity` gets a row of its own. Rows are returned in the order they were opened,
/// each as indices into `lengths`.
pub fn pack_rows(lengths: &[usize], capacity: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    SeededRng::new(seed).shuffle(&mut order);
    // Stable: equal lengths keep their seeded order.
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        let n = lengths[i];
        match rows.iter_mut().find(|(used, _)| used + n <= capacity) {
            Some((used, row)) => {
                *used += n;
                row.push(i);
            }
            None => rows.push((n, vec![i])),
        }
    }
    rows.into_iter().map(|(_, row)| row).collect()
}

/// The batches of epoch `epoch`: the examples shuffled with (seed, epoch), grouped by
/// length, padded to the longest in each batch; the batch order shuffled too. With
/// `packing`, the rows of [`pack_rows`] (the same for every epoch) in an order shuffled
/// with (seed, epoch), `batch_size` rows a batch, each padded to the batch's longest row.
pub fn epoch_batches(
    examples: &[TrainExample],
    options: &BatchOptions,
    epoch: u64,
) -> Result<Vec<Batch>, TuneError> {
    if options.batch_size == 0 {
        return Err(TuneError::Validation(
            "the batch size must be at least 1".into(),
        ));
    }
    if let Some((i, _)) = examples
        .iter()
        .enumerate()
        .find(|(_, e)| e.tokens.len() != e.loss_mask.len() || e.tokens.is_empty())
    {
        return Err(TuneError::Validation(format!(
            "example {i} is empty or its loss mask does not match its tokens"
        )));
    }
    let mut rng = SeededRng::new(epoch_seed(options.seed, epoch));
    if options.packing {
        if options.max_seq_len == 0 {
            return Err(TuneError::Validation(
                "packing needs rows of at least 1 token (max_seq_len)".into(),
            ));
        }
        let lengths: Vec<usize> = examples.iter().map(|e| e.tokens.len()).collect();
        let mut rows = pack_rows(&lengths, options.max_seq_len, options.seed);
        rng.shuffle(&mut rows);
        return Ok(rows
            .chunks(options.batch_size)
            .map(|rows| pad(examples, rows, options.pad_id))
            .collect());
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    rng.shuffle(&mut order);
    let bucket = options
        .batch_size
        .saturating_mul(options.bucket_batches.max(1));
    let mut batches = Vec::new();
    for chunk in order.chunks_mut(bucket) {
        // Stable: equal lengths keep their shuffled order.
        chunk.sort_by_key(|&i| examples[i].tokens.len());
        for rows in chunk.chunks(options.batch_size) {
            let rows: Vec<Vec<usize>> = rows.iter().map(|&i| vec![i]).collect();
            batches.push(pad(examples, &rows, options.pad_id));
        }
    }
    rng.shuffle(&mut batches);
    Ok(batches)
}

/// A batch of `rows` (each the examples laid side by side in one row), right-padded to the
/// longest row.
fn pad(examples: &[TrainExample], rows: &[Vec<usize>], pad_id: u32) -> Batch {
    let row_len = |row: &Vec<usize>| row.iter().map(|&i| examples[i].tokens.len()).sum();
    let seq_len = rows.iter().map(row_len).max().unwrap_or(0);
    let mut batch = Batch {
        rows: rows.len(),
        seq_len,
        tokens: Vec::with_capacity(rows.len() * seq_len),
        attention_mask: Vec::with_capacity(rows.len() * seq_len),
        loss_mask: Vec::with_capacity(rows.len() * seq_len),
        positions: Vec::with_capacity(rows.len() * seq_len),
        examples: rows.iter().flatten().copied().collect(),
    };
    for row in rows {
        for &i in row {
            let example = &examples[i];
            let n = example.tokens.len();
            batch.tokens.extend_from_slice(&example.tokens);
            batch.attention_mask.extend(std::iter::repeat_n(true, n));
            batch.loss_mask.extend_from_slice(&example.loss_mask);
            batch.positions.extend(0..n as u32);
        }
        let padding = seq_len - row_len(row);
        batch.tokens.extend(std::iter::repeat_n(pad_id, padding));
        batch
            .attention_mask
            .extend(std::iter::repeat_n(false, padding));
        batch.loss_mask.extend(std::iter::repeat_n(false, padding));
        batch.positions.extend(0..padding as u32);
    }
    batch
}

/// A seed per epoch, so that epochs differ and any epoch can be rebuilt alone.
fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    SeededRng::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// Splits `items` into (train, validation): `fraction` of them (rounded, at least one when
/// the fraction is above zero) drawn with `seed` for validation, both in their original
/// order. Split conversations before rendering them, so that the turns of one conversation
/// never land on both sides.
pub fn split_train_validation<T: Clone>(
    items: &[T],
    fraction: f64,
    seed: u64,
) -> Result<(Vec<T>, Vec<T>), TuneError> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(TuneError::Validation(format!(
            "the validation fraction must be at least 0 and below 1, not {fraction}"
        )));
    }
    let mut held = ((items.len() as f64) * fraction).round() as usize;
    if fraction > 0.0 {
        held = held.max(1);
    }
    if fraction > 0.0 && held >= items.len() {
        return Err(TuneError::Validation(format!(
            "{} examples are too few to hold {held} out for validation and train on the rest",
            items.len()
        )));
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    SeededRng::new(seed).shuffle(&mut order);
    let mut is_held = vec![false; items.len()];
    for &i in &order[..held] {
        is_held[i] = true;
    }
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for (item, held) in items.iter().zip(is_held) {
        if held {
            validation.push(item.clone());
        } else {
            train.push(item.clone());
        }
    }
    Ok((train, validation))
}
