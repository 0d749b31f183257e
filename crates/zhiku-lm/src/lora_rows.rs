//! Per-row LoRA in one batched product per layer (BGMV/SGMV-style, on candle's ops). The
//! distinct adapters of a step that target a layer are stacked along the rank axis,
//! A_cat [Σr, in] and B_cat [out, Σr], and the rows take
//! `y += ((x·A_catᵀ) ⊙ M)·B_catᵀ`, where row i of M [rows, Σr] holds the scale (alpha/r)
//! of row i's adapter in that adapter's rank columns and zeros elsewhere: a row on the base
//! model, or on an adapter that does not target the layer, gets a row of zeros. Two matmuls
//! and one product per layer whatever the number of adapters, instead of a narrow, two
//! matmuls and a cat per run of rows (each a kernel launch, and the cat a copy, on a GPU).
//!
//! The scale sits in M rather than in B_cat so that a lone adapter's B is stacked as it is
//! (no scaled copy of it per set), and M costs the same either way.
//!
//! From the host the rows need one u32 each, the slot of their adapter, uploaded once per
//! step (with the logit rows, by [`crate::decoder`]). The masks are made from it on the
//! device, once per step and set of rank columns; the stacked weights once per set of
//! adapters, kept by the layer ([`LoraStacks`]) for the steps that follow.
//!
//! The kernel path keeps a product per run of rows ([`RowAdapters::runs`]): it gives a
//! sequence the same bits in a batch as alone (its run is the same matmul either way),
//! which the batched product cannot (its sums run over other adapters' ranks, and the CPU
//! matmul's blocking follows the batch's size), though on the CPU the batched product is
//! the faster on decode steps.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use candle_core::{DType, Tensor};

use crate::lora::{LoraAdapter, LoraPair};

/// A run of consecutive rows of a batch that share one adapter (None: the base model).
#[derive(Clone)]
pub struct RowGroup {
    pub start: usize,
    pub len: usize,
    pub adapter: Option<Arc<LoraAdapter>>,
}

/// How the rows of a forward map to adapters. Built once per step by the engine; a forward
/// reads it on the device as [`RowAdapters`].
#[derive(Clone, Default)]
pub struct Adapters {
    pub groups: Vec<RowGroup>,
}

impl Adapters {
    /// Every row on the base model.
    pub fn none() -> Self {
        Self::default()
    }
}

/// The adapters of a step's rows as one slot per row: `adapters[slot]`, or the base model
/// for slot `adapters.len()`.
pub struct RowSlots {
    /// The distinct adapters, ordered by load (id), so that the same set stacks the same way
    /// in every step.
    pub adapters: Vec<Arc<LoraAdapter>>,
    /// The slot of every row.
    pub slots: Vec<u32>,
}

impl Adapters {
    /// The slot of each of `rows` rows; None when every row is on the base model. Rows that
    /// no group covers are on the base model; groups past the rows or overlapping are an
    /// error.
    pub fn row_slots(&self, rows: usize) -> candle_core::Result<Option<RowSlots>> {
        let mut adapters: Vec<Arc<LoraAdapter>> = Vec::new();
        for a in self.groups.iter().filter_map(|g| g.adapter.as_ref()) {
            if !adapters.iter().any(|b| Arc::ptr_eq(a, b)) {
                adapters.push(a.clone());
            }
        }
        if adapters.is_empty() {
            return Ok(None);
        }
        adapters.sort_by_key(|a| (a.id, Arc::as_ptr(a) as usize));
        let base = adapters.len() as u32;
        let mut slots: Vec<Option<u32>> = vec![None; rows];
        for g in &self.groups {
            let Some(part) = g
                .start
                .checked_add(g.len)
                .and_then(|end| slots.get_mut(g.start..end))
            else {
                candle_core::bail!(
                    "adapter rows {}..{} are past a batch of {rows} rows",
                    g.start,
                    g.start.saturating_add(g.len)
                );
            };
            let slot = match &g.adapter {
                Some(a) => adapters
                    .iter()
                    .position(|b| Arc::ptr_eq(a, b))
                    .map_or(base, |p| p as u32),
                None => base,
            };
            for s in part {
                if s.replace(slot).is_some() {
                    candle_core::bail!("adapter row groups overlap at rows {}..", g.start);
                }
            }
        }
        Ok(Some(RowSlots {
            adapters,
            slots: slots.into_iter().map(|s| s.unwrap_or(base)).collect(),
        }))
    }
}

/// One rank block of a mask: the columns of the adapter in `slot`, `rank` of them, scaled
/// by the f64 whose bits `scale` holds.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Columns {
    slot: usize,
    rank: usize,
    scale: u64,
}

/// Which adapter each row of a forward uses, on the model's device: what
/// [`crate::layers::Linear::forward`] reads. Made once per step.
pub struct RowAdapters {
    /// The kernel path's runs of rows, each applied on its own; None: the batched product.
    runs: Option<Adapters>,
    adapters: Vec<Arc<LoraAdapter>>,
    /// [rows] u32, each row's slot; None: every row on the base model.
    slots: Option<Tensor>,
    rows: usize,
    /// The masks made so far in this step, by their rank blocks and dtype.
    masks: RefCell<Vec<(Vec<Columns>, DType, Tensor)>>,
}

impl RowAdapters {
    /// Every row on the base model.
    pub fn none() -> Self {
        Self {
            runs: None,
            adapters: Vec::new(),
            slots: None,
            rows: 0,
            masks: RefCell::new(Vec::new()),
        }
    }

    /// `slots` [rows] (u32, on the model's device): row i uses `adapters[slots[i]]`, or the
    /// base model where the slot is `adapters.len()`.
    pub fn new(adapters: Vec<Arc<LoraAdapter>>, slots: Tensor) -> candle_core::Result<Self> {
        if slots.dtype() != DType::U32 {
            candle_core::bail!("adapter slots are u32, not {:?}", slots.dtype());
        }
        let rows = slots.dims1()?;
        Ok(Self {
            runs: None,
            adapters,
            slots: Some(slots),
            rows,
            masks: RefCell::new(Vec::new()),
        })
    }

    /// `adapters`' slots uploaded on their own (the decoder sends them with the logit rows).
    pub fn upload(
        adapters: &Adapters,
        rows: usize,
        device: &candle_core::Device,
    ) -> candle_core::Result<Self> {
        match adapters.row_slots(rows)? {
            None => Ok(Self::none()),
            Some(s) => {
                let slots = crate::transfer::upload(s.slots, rows, device)?;
                Self::new(s.adapters, slots)
            }
        }
    }

    /// The kernel path's: `adapters`' runs of `rows` rows, each run's product on its own.
    pub fn runs(adapters: &Adapters, rows: usize) -> candle_core::Result<Self> {
        if adapters.row_slots(rows)?.is_none() {
            return Ok(Self::none());
        }
        Ok(Self {
            runs: Some(adapters.clone()),
            rows,
            ..Self::none()
        })
    }

    /// The same adapters for the rows `rows` [n] (u32, on the device; `host_rows` the same
    /// on the host) pick: on the device, or for runs a run of one row each.
    pub fn select(&self, rows: &Tensor, host_rows: &[u32]) -> candle_core::Result<Self> {
        if let Some(runs) = &self.runs {
            let mut picked = Adapters::none();
            for (i, &row) in host_rows.iter().enumerate() {
                let row = row as usize;
                let adapter = runs
                    .groups
                    .iter()
                    .find(|g| (g.start..g.start + g.len).contains(&row))
                    .and_then(|g| g.adapter.clone());
                picked.groups.push(RowGroup {
                    start: i,
                    len: 1,
                    adapter,
                });
            }
            return Self::runs(&picked, host_rows.len());
        }
        match &self.slots {
            None => Ok(Self::none()),
            Some(slots) => Self::new(self.adapters.clone(), slots.index_select(rows, 0)?),
        }
    }

    /// `y` [rows, out], the base product of the layer `module` on `x` [rows, in], plus the
    /// LoRA update of every row whose adapter targets the layer.
    pub(crate) fn apply(
        &self,
        x: &Tensor,
        y: Tensor,
        module: &str,
        stacks: &LoraStacks,
        features: (usize, usize),
    ) -> candle_core::Result<Tensor> {
        if let Some(runs) = &self.runs {
            return per_run(x, y, module, runs);
        }
        match self.update(x, module, stacks, features)? {
            None => Ok(y),
            Some(update) => {
                let update = update.to_dtype(y.dtype())?;
                y + update
            }
        }
    }

    /// The LoRA update [rows, out] of the layer named `module` for the rows of `x`
    /// [rows, in], in the adapters' dtype; None when no row's adapter targets it.
    fn update(
        &self,
        x: &Tensor,
        module: &str,
        stacks: &LoraStacks,
        (in_features, out_features): (usize, usize),
    ) -> candle_core::Result<Option<Tensor>> {
        let Some(slots) = &self.slots else {
            return Ok(None);
        };
        let targeting: Vec<(usize, &Arc<LoraAdapter>, &LoraPair)> = self
            .adapters
            .iter()
            .enumerate()
            .filter_map(|(slot, a)| a.pairs.get(module).map(|p| (slot, a, p)))
            .collect();
        if targeting.is_empty() {
            return Ok(None);
        }
        let rows = x.dim(0)?;
        if rows != self.rows {
            candle_core::bail!(
                "layer `{module}`: {rows} rows, but adapters for {} rows",
                self.rows
            );
        }
        let stack = stacks.stack(module, &targeting, (in_features, out_features))?;
        let columns: Vec<Columns> = targeting
            .iter()
            .zip(&stack.ranks)
            .map(|((slot, _, pair), &rank)| Columns {
                slot: *slot,
                rank,
                scale: pair.scale.to_bits(),
            })
            .collect();
        let mask = self.mask(&columns, stack.a.dtype(), slots)?;
        let low = x.to_dtype(stack.a.dtype())?.matmul(&stack.a.t()?)?;
        Ok(Some((low * mask)?.matmul(&stack.b.t()?)?))
    }

    /// M [rows, Σr] for the rank blocks `columns` (in slot order): a table of one row per
    /// slot (the scale in its block's columns, zeros elsewhere; zeros for the base model and
    /// slots without a block), made on the device, whose rows the slots pick.
    fn mask(
        &self,
        columns: &[Columns],
        dtype: DType,
        slots: &Tensor,
    ) -> candle_core::Result<Tensor> {
        if let Some((_, _, m)) = self
            .masks
            .borrow()
            .iter()
            .find(|(c, d, _)| c == columns && *d == dtype)
        {
            return Ok(m.clone());
        }
        let device = slots.device();
        let total: usize = columns.iter().map(|c| c.rank).sum();
        let mut table = Vec::with_capacity(self.adapters.len() + 1);
        let mut offset = 0;
        for slot in 0..=self.adapters.len() {
            let row = match columns.iter().find(|c| c.slot == slot) {
                Some(c) => {
                    let block = Tensor::ones((1, c.rank), dtype, device)?
                        .affine(f64::from_bits(c.scale), 0.0)?
                        .pad_with_zeros(1, offset, total - offset - c.rank)?;
                    offset += c.rank;
                    block
                }
                None => Tensor::zeros((1, total), dtype, device)?,
            };
            table.push(row);
        }
        let mask = Tensor::cat(&table, 0)?.index_select(slots, 0)?;
        self.masks
            .borrow_mut()
            .push((columns.to_vec(), dtype, mask.clone()));
        Ok(mask)
    }
}

/// `y` plus, run by run, the update of the run's adapter where it targets `module`: narrow
/// the run, x·Aᵀ·Bᵀ times the scale, and cat the runs back.
fn per_run(x: &Tensor, y: Tensor, module: &str, runs: &Adapters) -> candle_core::Result<Tensor> {
    let mut parts = Vec::with_capacity(runs.groups.len());
    let mut touched = false;
    for g in &runs.groups {
        let rows = y.narrow(0, g.start, g.len)?;
        match g.adapter.as_ref().and_then(|a| a.pairs.get(module)) {
            None => parts.push(rows),
            Some(pair) => {
                touched = true;
                let xs = x.narrow(0, g.start, g.len)?.to_dtype(pair.a.dtype())?;
                let low = xs.matmul(&pair.a.t()?)?;
                let update = (low.matmul(&pair.b.t()?)? * pair.scale)?;
                parts.push((rows + update.to_dtype(y.dtype())?)?);
            }
        }
    }
    if !touched {
        return Ok(y);
    }
    Tensor::cat(&parts, 0)
}

/// How many sets of adapters a layer keeps stacked: enough for the sets that alternate
/// while a few requests with different adapters decode side by side, few enough that the
/// copies of their weights stay small beside the model.
const STACKS_KEPT: usize = 4;

/// A layer's stacked adapters, the most recently used last. The stacks hold their adapters
/// weakly: an unloaded adapter's stacks are dropped at the layer's next forward.
#[derive(Default)]
pub(crate) struct LoraStacks(Mutex<Vec<Arc<Stack>>>);

/// The pairs of some adapters on one layer, stacked along the rank axis.
pub(crate) struct Stack {
    adapters: Vec<Weak<LoraAdapter>>,
    /// Each adapter's rank on this layer, in stacking order.
    ranks: Vec<usize>,
    /// A_cat [Σr, in]
    a: Tensor,
    /// B_cat [out, Σr]
    b: Tensor,
}

impl LoraStacks {
    /// The stack of `targeting`'s pairs (in slot order) on the layer `module` of
    /// `in_features` → `out_features`: the one kept, or one made now on their device.
    fn stack(
        &self,
        module: &str,
        targeting: &[(usize, &Arc<LoraAdapter>, &LoraPair)],
        (in_features, out_features): (usize, usize),
    ) -> candle_core::Result<Arc<Stack>> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let same = |s: &Stack| {
            s.adapters.len() == targeting.len()
                && s.adapters
                    .iter()
                    .zip(targeting)
                    // A live Weak pins its allocation: the address is this adapter's alone.
                    .all(|(w, (_, a, _))| std::ptr::eq(w.as_ptr(), Arc::as_ptr(a)))
        };
        if let Some(i) = kept.iter().position(|s| same(s)) {
            let s = kept.remove(i);
            kept.push(s.clone());
            return Ok(s);
        }
        let mut ranks = Vec::with_capacity(targeting.len());
        let dtype = targeting
            .first()
            .map_or(DType::F32, |(_, _, p)| p.a.dtype());
        let (mut a_parts, mut b_parts) = (Vec::new(), Vec::new());
        for (_, adapter, pair) in targeting {
            let (rank, a_in) = pair.a.dims2()?;
            let (b_out, b_rank) = pair.b.dims2()?;
            if a_in != in_features || b_out != out_features || b_rank != rank {
                candle_core::bail!(
                    "adapter `{}`: module `{module}` is [{out_features}, {in_features}] in the \
                     model, but its A is [{rank}, {a_in}] and its B [{b_out}, {b_rank}]",
                    adapter.name
                );
            }
            ranks.push(rank);
            a_parts.push(pair.a.to_dtype(dtype)?);
            b_parts.push(pair.b.to_dtype(dtype)?);
        }
        let stack = Arc::new(Stack {
            adapters: targeting
                .iter()
                .map(|(_, a, _)| Arc::downgrade(a))
                .collect(),
            ranks,
            a: Tensor::cat(&a_parts, 0)?,
            b: Tensor::cat(&b_parts, 1)?,
        });
        if kept.len() >= STACKS_KEPT {
            kept.remove(0);
        }
        kept.push(stack.clone());
        Ok(stack)
    }

    /// Drops the stacks of adapters no longer loaded.
    pub(crate) fn drop_unloaded(&self) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !kept.is_empty() {
            kept.retain(|s| s.adapters.iter().all(|a| a.strong_count() > 0));
        }
    }

    #[cfg(test)]
    fn kept(&self) -> Vec<Arc<Stack>> {
        self.0.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;

    use super::*;
    use crate::layers::{Linear, RowGroup};
    use crate::seeded::SplitMix64;
    use crate::transfer;

    const IN: usize = 10;
    const OUT: usize = 12;

    fn normal(shape: (usize, usize), seed: u64, dtype: DType) -> Tensor {
        let mut rng = SplitMix64(seed);
        let v: Vec<f64> = (0..shape.0 * shape.1).map(|_| rng.normal()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    /// An adapter of `rank` and `alpha` on `modules`, its pairs drawn from `seed`.
    fn adapter(
        name: &str,
        rank: usize,
        alpha: f32,
        modules: &[&str],
        seed: u64,
        dtype: DType,
    ) -> Arc<LoraAdapter> {
        let mut a = LoraAdapter::none();
        a.name = name.to_owned();
        a.id = seed;
        a.rank = rank;
        a.alpha = alpha;
        a.pairs = modules
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = seed * 100 + 2 * i as u64;
                let pair = LoraPair {
                    a: normal((rank, IN), s, dtype),
                    b: normal((OUT, rank), s + 1, dtype),
                    scale: alpha as f64 / rank as f64,
                };
                (m.to_string(), pair)
            })
            .collect::<HashMap<_, _>>();
        Arc::new(a)
    }

    fn layer(module: &str, seed: u64, dtype: DType) -> Linear {
        Linear::dense(
            normal((OUT, IN), seed, dtype),
            Some(normal((1, OUT), seed + 1, dtype).squeeze(0).unwrap()),
            module,
        )
        .unwrap()
    }

    /// A run of rows and their adapter.
    type Run<'a> = (usize, Option<&'a Arc<LoraAdapter>>);

    fn groups(runs: &[Run]) -> Adapters {
        let mut out = Adapters::none();
        let mut start = 0;
        for (len, adapter) in runs {
            out.groups.push(RowGroup {
                start,
                len: *len,
                adapter: adapter.cloned(),
            });
            start += len;
        }
        out
    }

    /// The kernel path's product per run of rows: what the batched product must equal.
    fn per_group(layer: &Linear, x: &Tensor, adapters: &Adapters) -> Tensor {
        let runs = RowAdapters::runs(adapters, x.dim(0).unwrap()).unwrap();
        layer.forward(x, &runs).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Batches of every kind against the product per run of rows, on two layers: one that
    /// every adapter targets but `c`, one that only `a` and `c` target.
    fn batched_equals_per_group(dtype: DType, tolerance: f64) {
        let layers = [layer("m.q", 1, dtype), layer("m.v", 3, dtype)];
        let a = adapter("a", 4, 8.0, &["m.q", "m.v"], 11, dtype);
        let b = adapter("b", 8, 4.0, &["m.q"], 12, dtype);
        let c = adapter("c", 2, 3.0, &["m.v"], 13, dtype);
        let batches: Vec<Vec<Run>> = vec![
            // Base rows, three adapters of ranks 4, 8 and 2, runs in no order, one adapter
            // in two runs.
            vec![
                (2, Some(&b)),
                (1, None),
                (3, Some(&a)),
                (1, Some(&c)),
                (2, Some(&b)),
                (2, None),
            ],
            vec![(1, Some(&c)), (2, Some(&a)), (1, Some(&b))],
            // One row.
            vec![(1, Some(&a))],
            vec![(1, Some(&c))],
            // Every row on one adapter.
            vec![(5, Some(&b))],
            // An adapter that targets neither layer's rows alone with the base.
            vec![(2, None), (3, Some(&c))],
        ];
        for runs in &batches {
            let adapters = groups(runs);
            let rows: usize = runs.iter().map(|r| r.0).sum();
            let x = normal((rows, IN), rows as u64, dtype);
            let on_device = RowAdapters::upload(&adapters, rows, &Device::Cpu).unwrap();
            for l in &layers {
                let batched = l.forward(&x, &on_device).unwrap();
                let reference = per_group(l, &x, &adapters);
                let diff = max_diff(&batched, &reference);
                assert!(
                    diff <= tolerance,
                    "{} {dtype:?}, runs {:?}: {diff}",
                    l.module(),
                    runs.iter()
                        .map(|r| (r.0, r.1.map(|a| a.name.clone())))
                        .collect::<Vec<_>>()
                );
            }
        }
        // The adapters change what they target (the comparison is not of base against base).
        let adapters = groups(&[(1, Some(&a)), (1, Some(&b))]);
        let x = normal((2, IN), 5, dtype);
        let on_device = RowAdapters::upload(&adapters, 2, &Device::Cpu).unwrap();
        let base = layers[0].base(&x).unwrap();
        assert!(max_diff(&layers[0].forward(&x, &on_device).unwrap(), &base) > 0.1);
    }

    #[test]
    fn the_batched_product_is_the_product_per_run_of_rows_f32() {
        batched_equals_per_group(DType::F32, 1e-5);
    }

    #[test]
    fn the_batched_product_is_the_product_per_run_of_rows_f64() {
        batched_equals_per_group(DType::F64, 1e-12);
    }

    /// The logit rows' adapters picked on the device are those rows' own.
    #[test]
    fn selected_rows_keep_their_adapters() {
        let l = layer("m.q", 1, DType::F32);
        let a = adapter("a", 4, 8.0, &["m.q"], 11, DType::F32);
        let b = adapter("b", 8, 4.0, &["m.q"], 12, DType::F32);
        let adapters = groups(&[(3, Some(&b)), (2, None), (4, Some(&a))]);
        let on_device = RowAdapters::upload(&adapters, 9, &Device::Cpu).unwrap();
        let x = normal((9, IN), 9, DType::F32);
        let picked = [8u32, 2, 4];
        let ids = Tensor::new(&picked, &Device::Cpu).unwrap();
        let rows = x.index_select(&ids, 0).unwrap();
        let head = groups(&[(1, Some(&a)), (1, Some(&b)), (1, None)]);
        let got = l
            .forward(&rows, &on_device.select(&ids, &picked).unwrap())
            .unwrap();
        assert!(max_diff(&got, &per_group(&l, &rows, &head)) <= 1e-5);
        let runs = RowAdapters::runs(&adapters, 9).unwrap();
        let on_host = l
            .forward(&rows, &runs.select(&ids, &picked).unwrap())
            .unwrap();
        assert_eq!(max_diff(&on_host, &per_group(&l, &rows, &head)), 0.0);
    }

    /// The rows' slots are the one upload; the masks and the stacks are made on the device.
    /// A set of adapters is stacked once and kept for the steps that follow, a few sets at
    /// most, and an unloaded adapter's stacks go at the layer's next forward.
    #[test]
    fn stacks_are_made_once_per_set_and_kept_a_few() {
        let l = layer("m.q", 1, DType::F32);
        let all: Vec<Arc<LoraAdapter>> = (0..6)
            .map(|i| {
                adapter(
                    &format!("a{i}"),
                    2 + i,
                    4.0,
                    &["m.q"],
                    20 + i as u64,
                    DType::F32,
                )
            })
            .collect();
        let x = normal((3, IN), 3, DType::F32);
        let step = |runs: &[Run]| {
            let (_, moved) = transfer::counted(|| {
                let on_device = RowAdapters::upload(&groups(runs), 3, &Device::Cpu).unwrap();
                l.forward(&x, &on_device).unwrap();
            });
            assert_eq!((moved.uploads, moved.read_backs), (1, 0), "{moved:?}");
        };
        step(&[(1, Some(&all[0])), (1, None), (1, Some(&all[1]))]);
        let first = l.stacks.kept();
        assert_eq!(first.len(), 1);
        // The same set in another order is the same stack.
        step(&[(1, Some(&all[1])), (2, Some(&all[0]))]);
        let again = l.stacks.kept();
        assert_eq!(again.len(), 1);
        assert!(Arc::ptr_eq(&first[0], &again[0]));
        for a in &all[2..] {
            step(&[(2, Some(&all[0])), (1, Some(a))]);
        }
        assert_eq!(l.stacks.kept().len(), STACKS_KEPT);
        drop(all);
        let none = RowAdapters::none();
        l.forward(&x, &none).unwrap();
        assert!(l.stacks.kept().is_empty());
    }

    /// What a request or a file could get wrong is an error, not a panic.
    #[test]
    fn misfits_are_errors() {
        let l = layer("m.q", 1, DType::F32);
        let mut wide = LoraAdapter::none();
        wide.name = "wide".into();
        wide.pairs.insert(
            "m.q".into(),
            LoraPair {
                a: normal((4, IN + 1), 1, DType::F32),
                b: normal((OUT, 4), 2, DType::F32),
                scale: 1.0,
            },
        );
        let mut ranks = LoraAdapter::none();
        ranks.name = "ranks".into();
        ranks.pairs.insert(
            "m.q".into(),
            LoraPair {
                a: normal((4, IN), 1, DType::F32),
                b: normal((OUT, 3), 2, DType::F32),
                scale: 1.0,
            },
        );
        let x = normal((2, IN), 3, DType::F32);
        for bad in [Arc::new(wide), Arc::new(ranks)] {
            let on_device =
                RowAdapters::upload(&groups(&[(2, Some(&bad))]), 2, &Device::Cpu).unwrap();
            let err = l.forward(&x, &on_device).unwrap_err().to_string();
            assert!(err.contains(&bad.name) && err.contains("m.q"), "{err}");
        }
        let a = adapter("a", 4, 8.0, &["m.q"], 11, DType::F32);
        let past = Adapters {
            groups: vec![RowGroup {
                start: 1,
                len: usize::MAX,
                adapter: Some(a.clone()),
            }],
        };
        assert!(past.row_slots(2).is_err());
        let overlapping = groups(&[(2, Some(&a)), (1, None)]);
        let mut overlapping = overlapping;
        overlapping.groups[1].start = 1;
        assert!(overlapping.row_slots(3).is_err());
        // Adapters for another number of rows.
        let on_device = RowAdapters::upload(&groups(&[(3, Some(&a))]), 3, &Device::Cpu).unwrap();
        assert!(l.forward(&x, &on_device).is_err());
        // Rows no group covers are on the base model.
        let partial = Adapters {
            groups: vec![RowGroup {
                start: 1,
                len: 1,
                adapter: Some(a.clone()),
            }],
        };
        let slots = partial.row_slots(3).unwrap().unwrap();
        assert_eq!(slots.slots, [1, 0, 1]);
    }
}
