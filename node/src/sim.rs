//! A deterministic harness for the core: no clock, no network, no OS
//! randomness. Events are queued with their time; [`Harness::run`] feeds
//! them to [`Core::step`] in batches whose sizes, order, duplicates, drops
//! and delays all come from one seed, and records every effect. The same
//! seed and events give the same bytes out ([`Harness::transcript`],
//! [`Harness::dump`]), which is what the model tests check and what a
//! network simulator will run many times over. It holds no global state.

use crate::core::{Core, Effect, Event, Ticket};
use crate::store::Store;
use crate::store::kv::Table;

/// How the harness may disturb delivery.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Shuffle the queue before each batch.
    pub reorder: bool,
    /// Per mille of duplicable events delivered twice.
    pub duplicate_per_mille: u32,
    /// Per mille of droppable events (peer items, hints) never delivered.
    pub drop_per_mille: u32,
    /// Largest batch handed to one step.
    pub max_batch: usize,
}

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// From a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// 32 bytes (a step's seed).
    pub fn seed32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        out
    }
}

/// A copy of an event the network could deliver twice.
fn duplicate(e: &Event) -> Option<Event> {
    Some(match e {
        Event::Records { source, records } => Event::Records {
            source: source.clone(),
            records: records.clone(),
        },
        Event::Listed { source, records } => Event::Listed {
            source: source.clone(),
            records: records.clone(),
        },
        Event::Items {
            source,
            node,
            items,
        } => Event::Items {
            source: source.clone(),
            node: node.clone(),
            items: items.clone(),
        },
        Event::Remove { source, subject } => Event::Remove {
            source: source.clone(),
            subject: subject.clone(),
        },
        Event::Touch { source } => Event::Touch {
            source: source.clone(),
        },
        Event::Rotation { source, key } => Event::Rotation {
            source: source.clone(),
            key: *key,
        },
        Event::Revocation { source, key } => Event::Revocation {
            source: source.clone(),
            key: *key,
        },
        Event::Refresh(k) => Event::Refresh(k.clone()),
        _ => return None,
    })
}

/// Whether the network may lose it (local requests are never lost).
fn droppable(e: &Event) -> bool {
    matches!(
        e,
        Event::Records { .. }
            | Event::Listed { .. }
            | Event::Items { .. }
            | Event::Touch { .. }
            | Event::Refresh(_)
    )
}

/// The harness.
#[derive(Debug)]
pub struct Harness {
    core: Core,
    rng: SimRng,
    queue: Vec<(Ticket, u64, Event)>,
    next_ticket: Ticket,
    transcript: Vec<u8>,
    /// The latest time an event was delivered at: the warm-up runs then.
    last_now_ms: u64,
}

impl Harness {
    /// Around a core; `seed` decides everything random from here on.
    pub fn new(core: Core, seed: u64) -> Self {
        Self {
            core,
            rng: SimRng::new(seed),
            queue: Vec::new(),
            next_ticket: 1,
            transcript: Vec::new(),
            last_now_ms: 0,
        }
    }

    /// The core.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Queues an event at `now_ms`; returns its ticket.
    pub fn push(&mut self, now_ms: u64, event: Event) -> Ticket {
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.queue.push((t, now_ms, event));
        t
    }

    /// Delivers everything queued, disturbed by `faults`; returns the
    /// effects in order.
    pub fn run(&mut self, faults: Faults) -> Vec<Effect> {
        let mut out = Vec::new();
        let mut queue = std::mem::take(&mut self.queue);
        while !queue.is_empty() {
            if faults.reorder {
                // Fisher-Yates with the harness's generator.
                for i in (1..queue.len()).rev() {
                    let j = usize::try_from(self.rng.below(i as u64 + 1)).unwrap_or(0);
                    queue.swap(i, j);
                }
            }
            let max = faults.max_batch.max(1) as u64;
            let n = usize::try_from(1 + self.rng.below(max))
                .unwrap_or(1)
                .min(queue.len());
            let mut batch = Vec::with_capacity(n);
            let taken: Vec<_> = queue.drain(..n).collect();
            for (t, now, e) in taken {
                if droppable(&e) && self.rng.below(1000) < u64::from(faults.drop_per_mille) {
                    continue;
                }
                if self.rng.below(1000) < u64::from(faults.duplicate_per_mille)
                    && let Some(copy) = duplicate(&e)
                {
                    // The copy arrives later, in a batch of its own choosing.
                    queue.push((t, now, copy));
                }
                batch.push((t, now, e));
            }
            // Time never runs backwards within a step.
            batch.sort_by_key(|(_, now, _)| *now);
            if let Some((_, now, _)) = batch.last() {
                self.last_now_ms = self.last_now_ms.max(*now);
            }
            let effects = self.core.step(self.rng.seed32(), batch);
            for e in &effects {
                self.transcript
                    .extend_from_slice(format!("{e:?}\n").as_bytes());
            }
            out.extend(effects);
        }
        while self.core.warming() {
            let t = self.next_ticket;
            self.next_ticket += 1;
            // The harness's own request: its answer is not the caller's.
            let effects = self
                .core
                .step(self.rng.seed32(), vec![(t, self.last_now_ms, Event::Warm)]);
            out.extend(
                effects
                    .into_iter()
                    .filter(|e| !matches!(e, Effect::Reply(ticket, _) if *ticket == t)),
            );
        }
        out
    }

    /// Every effect so far, as text.
    pub fn transcript(&self) -> &[u8] {
        &self.transcript
    }

    /// Every table of the store, in key order.
    pub fn dump(&self) -> Vec<u8> {
        dump(self.core.store())
    }
}

/// Every table of a store, in key order.
pub fn dump(store: &Store) -> Vec<u8> {
    let mut out = Vec::new();
    for table in Table::ALL {
        out.extend_from_slice(table.name().as_bytes());
        out.push(b'\n');
        let _ = store.kv().scan(table, &[], &mut |k, v| {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
            true
        });
    }
    out
}
