//! Prefix-aware routing for generation: a request goes to the generator replica that last
//! served the longest prefix it shares with an earlier request, since that replica's prefix
//! cache most likely still holds the prefix's keys and values.
//!
//! A request's prefix is its adapter, then each chat message (role and content) in blocks of
//! [`BLOCK_BYTES`]; every block boundary gives a key hashing everything before it. The
//! routing table maps keys to the replica that last served them, bounded by least recent
//! use. A match counts when it covers at least half the request: a shared system prompt
//! alone is in every replica's cache anyway, and following it would pile every request onto
//! one replica.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use prost::Message;
use zhiku_proto::v1::{GenerateRequest, NextTokenLogprobsRequest, generate_request, scored_prompt};

/// Bytes of message content per key: coarser than the generator's cache blocks, so that a
/// request records a handful of keys, fine enough that passages shared by two Asks match.
pub const BLOCK_BYTES: usize = 512;

/// The keys of one request's prefixes, shortest first, with the bytes each covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixKeys {
    pub keys: Vec<(u64, usize)>,
    /// Bytes of the whole request's content.
    pub total: usize,
}

impl PrefixKeys {
    /// The keys of `messages` ((role, content) in order) under `adapter`.
    pub fn of_messages<'a>(
        adapter: &str,
        messages: impl IntoIterator<Item = (i32, &'a str)>,
    ) -> Self {
        let mut hasher = DefaultHasher::new();
        adapter.hash(&mut hasher);
        let mut keys = Vec::new();
        let mut covered = 0;
        for (role, content) in messages {
            role.hash(&mut hasher);
            for block in content.as_bytes().chunks(BLOCK_BYTES) {
                hasher.write(block);
                covered += block.len();
                keys.push((hasher.finish(), covered));
            }
        }
        Self {
            keys,
            total: covered,
        }
    }

    /// The keys of a GenerateRequest or NextTokenLogprobsRequest (its first prompt), from
    /// its gRPC message frame (`path` says which). None when it is neither, compressed or
    /// not a valid message: such a request is routed by load alone.
    pub fn of_grpc_frame(path: &str, frame: &[u8]) -> Option<Self> {
        let (&[0], rest) = frame.split_first_chunk::<1>()? else {
            return None;
        };
        let (length, message) = rest.split_first_chunk::<4>()?;
        let message = message.get(..u32::from_be_bytes(*length) as usize)?;
        if path.ends_with("/NextTokenLogprobs") {
            let request = NextTokenLogprobsRequest::decode(message).ok()?;
            let input = request.prompts.first()?.input.as_ref()?;
            return Some(match input {
                scored_prompt::Input::Prompt(p) => {
                    Self::of_messages(&request.adapter, [(0, p.as_str())])
                }
                scored_prompt::Input::Chat(c) => Self::of_messages(
                    &request.adapter,
                    c.messages.iter().map(|m| (m.role, m.content.as_str())),
                ),
            });
        }
        let request = GenerateRequest::decode(message).ok()?;
        Some(match request.input.as_ref()? {
            generate_request::Input::Prompt(p) => {
                Self::of_messages(&request.adapter, [(0, p.as_str())])
            }
            generate_request::Input::Chat(c) => Self::of_messages(
                &request.adapter,
                c.messages.iter().map(|m| (m.role, m.content.as_str())),
            ),
        })
    }
}

/// Which replica last served each prefix key, for at most `capacity` keys (the least
/// recently used go first). Replicas are named by address, so an entry outlives its
/// replica's restart and is ignored while that address is gone or down.
#[derive(Debug)]
pub struct PrefixTable {
    capacity: usize,
    entries: HashMap<u64, (Arc<str>, u64)>,
    /// Keys by the time of their last use.
    by_use: BTreeMap<u64, u64>,
    clock: u64,
}

impl PrefixTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The replica holding the longest prefix of `keys` that covers at least half of the
    /// request, among those `usable` accepts, with the bytes it covers.
    pub fn lookup(
        &self,
        keys: &PrefixKeys,
        usable: impl Fn(&str) -> bool,
    ) -> Option<(Arc<str>, usize)> {
        keys.keys
            .iter()
            .rev()
            .take_while(|(_, covered)| covered * 2 >= keys.total)
            .find_map(|(key, covered)| {
                let (replica, _) = self.entries.get(key)?;
                usable(replica).then(|| (Arc::clone(replica), *covered))
            })
    }

    /// Notes that `replica` serves every prefix of `keys` now.
    pub fn record(&mut self, keys: &PrefixKeys, replica: &Arc<str>) {
        if self.capacity == 0 {
            return;
        }
        for &(key, _) in &keys.keys {
            self.clock += 1;
            if let Some((_, used)) = self.entries.insert(key, (Arc::clone(replica), self.clock)) {
                self.by_use.remove(&used);
            }
            self.by_use.insert(self.clock, key);
        }
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zhiku_proto::v1::{Chat, ChatMessage};

    fn chat(messages: &[(i32, &str)]) -> PrefixKeys {
        PrefixKeys::of_messages("", messages.iter().copied())
    }

    fn replica(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn a_follow_up_turn_finds_the_replica_of_its_conversation() {
        let passages = "检索到的段落。".repeat(200);
        let first = chat(&[(1, "你是助手"), (2, &passages)]);
        let mut table = PrefixTable::new(1000);
        table.record(&first, &replica("a"));
        let follow_up = chat(&[(1, "你是助手"), (2, &passages), (3, "回答"), (2, "再问")]);
        let found = table.lookup(&follow_up, |_| true).unwrap();
        assert_eq!(&*found.0, "a");
        assert!(found.1 >= passages.len());
        // Another conversation under the same system prompt shares too little.
        let other = chat(&[(1, "你是助手"), (2, &"别的问题。".repeat(200))]);
        assert_eq!(table.lookup(&other, |_| true), None);
    }

    #[test]
    fn a_replica_that_is_gone_or_down_is_not_followed() {
        let keys = chat(&[(2, &"x".repeat(2000))]);
        let mut table = PrefixTable::new(100);
        table.record(&keys, &replica("a"));
        assert_eq!(table.lookup(&keys, |r| r != "a"), None);
        // It comes back (same address): its entries count again.
        assert!(table.lookup(&keys, |_| true).is_some());
        table.record(&keys, &replica("b"));
        assert_eq!(&*table.lookup(&keys, |_| true).unwrap().0, "b");
    }

    #[test]
    fn the_table_keeps_at_most_its_capacity_dropping_the_least_recently_used() {
        let mut table = PrefixTable::new(10);
        let old = chat(&[(2, "old")]);
        table.record(&old, &replica("a"));
        for i in 0..50 {
            let keys = chat(&[(2, &format!("{i}").repeat(700))]);
            table.record(&keys, &replica("b"));
            assert!(table.len() <= 10);
            if i < 3 {
                // Used again: stays while younger ones go.
                table.record(&old, &replica("a"));
            }
        }
        assert_eq!(table.len(), 10);
        assert_eq!(table.lookup(&old, |_| true), None);
        assert_eq!(table.by_use.len(), table.entries.len());
        let zero = PrefixTable::new(0);
        assert!(zero.is_empty());
    }

    #[test]
    fn keys_come_from_the_wire_form_of_a_request() {
        let request = GenerateRequest {
            input: Some(generate_request::Input::Chat(Chat {
                messages: vec![ChatMessage {
                    role: 2,
                    content: "y".repeat(1500),
                }],
            })),
            sampling: None,
            adapter: "kb-a".into(),
        };
        let message = request.encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let keys = PrefixKeys::of_grpc_frame("/zhiku.v1.Generator/GenerateStream", &frame).unwrap();
        assert_eq!(keys.keys.len(), 3);
        assert_eq!(keys.total, 1500);
        assert_eq!(
            keys,
            PrefixKeys::of_messages("kb-a", [(2, "y".repeat(1500).as_str())])
        );
        // Another adapter is another prefix.
        assert_ne!(
            keys.keys[0],
            PrefixKeys::of_messages("", [(2, "y".repeat(1500).as_str())]).keys[0]
        );
        frame[0] = 1;
        assert_eq!(
            PrefixKeys::of_grpc_frame("/zhiku.v1.Generator/GenerateStream", &frame),
            None
        );
        assert_eq!(PrefixKeys::of_grpc_frame("/x", &[0, 0]), None);
    }
}
