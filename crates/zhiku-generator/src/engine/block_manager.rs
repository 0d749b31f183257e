//! Which KV blocks each sequence holds: a fixed pool of blocks (the storage itself is
//! `zhiku_lm::kv::KvCache`), reference counts, and the prefix cache: full blocks shared
//! between sequences whose prompts start with the same tokens, evicted least recently used
//! when the budget runs out.

use std::collections::{HashMap, VecDeque};

use zhiku_lm::kv::BLOCK_SIZE;

/// A chain hash of a full block: its tokens, the block before it and the adapter it was
/// computed with (an adapter on q/k/v changes K and V).
pub type BlockHash = u64;

fn block_hash(parent: BlockHash, tokens: &[u32], adapter: &str) -> BlockHash {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    adapter.hash(&mut h);
    h.finish()
}

/// Prefix-cache counters, reported by Info.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrefixStats {
    /// Sequences that reused at least one cached block.
    pub hits: u64,
    /// Sequences that reused none.
    pub misses: u64,
    /// Prompt tokens whose K/V were reused instead of computed.
    pub cached_tokens: u64,
}

/// Which blocks are free, which are shared, which hold a reusable prefix.
pub struct BlockManager {
    num_blocks: usize,
    refs: Vec<u32>,
    /// Never-used or released blocks that hold no cached prefix.
    free: Vec<u32>,
    /// Full blocks holding a known prefix: hash → block, and back.
    cached: HashMap<BlockHash, u32>,
    hash_of: Vec<Option<BlockHash>>,
    /// Cached blocks nobody holds, least recently released first (evicted in that order).
    evictable: VecDeque<u32>,
    pub stats: PrefixStats,
}

impl BlockManager {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            num_blocks,
            refs: vec![0; num_blocks],
            // Popped from the back: low block numbers first.
            free: (0..num_blocks as u32).rev().collect(),
            cached: HashMap::new(),
            hash_of: vec![None; num_blocks],
            evictable: VecDeque::new(),
            stats: PrefixStats::default(),
        }
    }

    pub fn total(&self) -> usize {
        self.num_blocks
    }

    /// Blocks that can be handed out now (free, or cached and unheld).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks some sequence holds.
    pub fn in_use(&self) -> usize {
        self.num_blocks - self.available()
    }

    fn take(&mut self) -> Option<u32> {
        let block = match self.free.pop() {
            Some(b) => b,
            None => {
                let b = self.evictable.pop_front()?;
                if let Some(h) = self.hash_of[b as usize].take() {
                    self.cached.remove(&h);
                }
                b
            }
        };
        self.refs[block as usize] = 1;
        Some(block)
    }

    fn hold(&mut self, block: u32) {
        if self.refs[block as usize] == 0 {
            self.evictable.retain(|b| *b != block);
        }
        self.refs[block as usize] += 1;
    }

    /// The blocks for a new sequence of `prompt` that may grow to `total_tokens`: the
    /// longest run of cached full blocks that starts the prompt (at most all but its last
    /// token, whose logits must be computed), then fresh blocks. None when the budget
    /// cannot hold it now. Returns (blocks, tokens already cached).
    pub fn allocate(
        &mut self,
        prompt: &[u32],
        total_tokens: usize,
        adapter: &str,
        use_prefix: bool,
    ) -> Option<(Vec<u32>, usize)> {
        let needed = total_tokens.div_ceil(BLOCK_SIZE).max(1);
        if needed > self.num_blocks {
            return None;
        }
        let mut reused = Vec::new();
        if use_prefix {
            let mut parent = 0;
            let reusable = prompt.len().saturating_sub(1) / BLOCK_SIZE;
            for chunk in prompt.chunks_exact(BLOCK_SIZE).take(reusable) {
                let h = block_hash(parent, chunk, adapter);
                match self.cached.get(&h) {
                    Some(&b) => reused.push(b),
                    None => break,
                }
                parent = h;
            }
        }
        // Held blocks are not in `evictable`; reused ones that are must not be counted twice.
        let reused_evictable = reused
            .iter()
            .filter(|b| self.refs[**b as usize] == 0)
            .count();
        if self.available() - reused_evictable < needed - reused.len() {
            return None;
        }
        for &b in &reused {
            self.hold(b);
        }
        let mut blocks = reused.clone();
        while blocks.len() < needed {
            blocks.push(self.take()?);
        }
        if use_prefix {
            if reused.is_empty() {
                self.stats.misses += 1;
            } else {
                self.stats.hits += 1;
                self.stats.cached_tokens += (reused.len() * BLOCK_SIZE) as u64;
            }
        }
        Some((blocks, reused.len() * BLOCK_SIZE))
    }

    /// Records that the first `tokens.len() / BLOCK_SIZE` blocks of `blocks` now hold the
    /// K/V of `tokens` (computed), so later prompts may reuse them.
    pub fn register_prefix(&mut self, blocks: &[u32], tokens: &[u32], adapter: &str) {
        let mut parent = 0;
        for (chunk, &b) in tokens.chunks_exact(BLOCK_SIZE).zip(blocks) {
            let h = block_hash(parent, chunk, adapter);
            parent = h;
            if self.hash_of[b as usize] == Some(h) {
                continue;
            }
            if self.cached.contains_key(&h) {
                continue; // another block already holds this prefix
            }
            if let Some(old) = self.hash_of[b as usize].take() {
                self.cached.remove(&old);
            }
            self.cached.insert(h, b);
            self.hash_of[b as usize] = Some(h);
        }
    }

    /// Gives back a sequence's blocks. Blocks holding a cached prefix stay reusable until
    /// they are needed for something else.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks {
            let r = &mut self.refs[b as usize];
            if *r == 0 {
                continue;
            }
            *r -= 1;
            if *r == 0 {
                if self.hash_of[b as usize].is_some() {
                    self.evictable.push_back(b);
                } else {
                    self.free.push(b);
                }
            }
        }
    }

    /// Drops every cached prefix computed with `adapter` (it was unloaded or replaced).
    pub fn forget_adapter(&mut self, _adapter: &str) {
        // Hashes do not record their adapter separately; forgetting everything unheld is
        // correct (only a cost) and rare.
        let unheld: Vec<u32> = self.evictable.drain(..).collect();
        for b in unheld {
            if let Some(h) = self.hash_of[b as usize].take() {
                self.cached.remove(&h);
            }
            self.free.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: usize, seed: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + seed).collect()
    }

    #[test]
    fn a_shared_prefix_is_reused_and_counted() {
        let mut m = BlockManager::new(16);
        let prompt = tokens(40, 1);
        let (a, cached) = m.allocate(&prompt, 48, "", true).unwrap();
        assert_eq!((a.len(), cached), (3, 0));
        m.register_prefix(&a, &prompt, "");
        m.release(&a);
        // Same 40 tokens then more: the two full blocks (32 tokens) are reused.
        let mut longer = prompt.clone();
        longer.extend(tokens(10, 99));
        let (b, cached) = m.allocate(&longer, 60, "", true).unwrap();
        assert_eq!(cached, 32);
        assert_eq!(&b[..2], &a[..2]);
        assert_eq!(m.stats.hits, 1);
        assert_eq!(m.stats.misses, 1);
        // Another adapter never shares K/V with the base model.
        let (c, cached) = m.allocate(&longer, 60, "legal", true).unwrap();
        assert_eq!(cached, 0);
        assert!(c.iter().all(|x| !b.contains(x)));
    }

    #[test]
    fn the_last_prompt_token_is_never_taken_from_the_cache() {
        let mut m = BlockManager::new(8);
        let prompt = tokens(32, 3);
        let (a, _) = m.allocate(&prompt, 33, "", true).unwrap();
        m.register_prefix(&a, &prompt, "");
        m.release(&a);
        let (_, cached) = m.allocate(&prompt, 33, "", true).unwrap();
        assert_eq!(
            cached, 16,
            "one block is recomputed so the last token has logits"
        );
    }

    #[test]
    fn the_budget_is_never_exceeded_and_cached_blocks_are_evicted() {
        let mut m = BlockManager::new(4);
        let p1 = tokens(32, 1);
        let (a, _) = m.allocate(&p1, 64, "", true).unwrap();
        assert!(
            m.allocate(&tokens(8, 2), 8, "", true).is_none(),
            "all 4 held"
        );
        m.register_prefix(&a, &p1, "");
        m.release(&a);
        assert_eq!(m.available(), 4);
        // A new prompt needing all four blocks evicts the cached ones.
        let (b, cached) = m.allocate(&tokens(60, 5), 64, "", true).unwrap();
        assert_eq!((b.len(), cached), (4, 0));
        m.release(&b);
        let (_, cached) = m.allocate(&p1, 40, "", true).unwrap();
        assert_eq!(cached, 0, "the evicted prefix is gone");
    }

    #[test]
    fn too_long_for_the_whole_cache_is_refused() {
        let mut m = BlockManager::new(2);
        assert!(m.allocate(&tokens(10, 1), 33, "", false).is_none());
    }
}
