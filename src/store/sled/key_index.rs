//! Where a key's `list` page starts: a sparse rank index over the key's domains, so that
//! `offset N` costs about as much as offset 0.
//!
//! sled has no "skip N entries" cheaper than reading them: a scan that skips 40,000 domains
//! reads 40,000 entries (18 ms, against 0.1 ms for the first page: paging through a key was
//! quadratic). This index keeps, for a key with many domains, every [`SPACING`]-th domain
//! name with its exact rank (its position in the key's sorted list). A page at offset N scans
//! from the last post at or before N and skips fewer than [`SPACING`] entries (a few more
//! after many adds near one post, until the posts are rebuilt).
//!
//! The posts are built by one scan the first time a deep page is asked for, and then kept
//! exact as domains come and go: registering a domain moves every later post one rank up,
//! removing one moves them down ([`KeyIndex::inserted`], [`KeyIndex::removed`], called by
//! the store in the same critical section that writes the key-domain entry). A build runs
//! without the store's write lock, so it records the key's change counter before its scan
//! and is discarded if a change to that key raced with it. A failed log write undoes
//! changes in the database behind the store's back (`durable`); every such undo bumps the
//! group commit's loss count, and posts from before it are dropped.
//!
//! Memory: one name per [`SPACING`] domains, for at most [`MAX_KEYS`] keys (the least
//! recently paged are dropped first), plus a change counter per key written since start.

use crate::apikey::KeyHash;
use std::collections::HashMap;
use std::sync::Mutex;

/// One post every this many domains.
pub(super) const SPACING: u64 = 512;

/// Keys whose posts are kept at once.
const MAX_KEYS: usize = 1024;

/// A post: a domain (the key-domain entry's name part) and its rank under its key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Post {
    name: Box<[u8]>,
    rank: u64,
}

#[derive(Debug, Default)]
struct KeyState {
    /// Changes (adds and removes) to this key's domains since start.
    changes: u64,
    /// Posts sorted by name (so by rank); `None` until a deep page is asked for.
    posts: Option<Vec<Post>>,
    /// When these posts were last used (for eviction).
    used: u64,
}

/// The index for all keys. See the module doc.
#[derive(Debug, Default)]
pub(super) struct KeyIndex {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The group commit's loss count the posts were built or kept under.
    losses: u64,
    keys: HashMap<KeyHash, KeyState>,
    /// Keys that currently have posts.
    with_posts: usize,
    clock: u64,
}

/// Where to start scanning for a page: from the entry named `from` (inclusive; `None` means
/// the key's first domain), skipping `skip` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Start {
    pub from: Option<Box<[u8]>>,
    pub skip: u64,
}

/// A build in progress: what the key's change counter and the loss count were before the
/// scan.
pub(super) struct Ticket {
    changes: u64,
    losses: u64,
}

impl KeyIndex {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section leaves the map consistent, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The index, with every post dropped if changes were undone since it was built.
    fn current(&self, losses: u64) -> std::sync::MutexGuard<'_, Inner> {
        let mut inner = self.inner();
        if inner.losses != losses {
            inner.losses = losses;
            inner.with_posts = 0;
            for state in inner.keys.values_mut() {
                state.posts = None;
            }
        }
        inner
    }

    /// A domain `name` was registered under `hash` (call under the store's write lock).
    pub(super) fn inserted(&self, hash: &KeyHash, name: &[u8]) {
        self.shift(hash, name, true);
    }

    /// A domain `name` was unregistered from `hash` (call under the store's write lock).
    pub(super) fn removed(&self, hash: &KeyHash, name: &[u8]) {
        self.shift(hash, name, false);
    }

    fn shift(&self, hash: &KeyHash, name: &[u8], up: bool) {
        let mut inner = self.inner();
        let state = inner.keys.entry(*hash).or_default();
        state.changes += 1;
        let Some(posts) = &mut state.posts else {
            return;
        };
        // Posts after `name` move; a post *at* a removed name no longer exists.
        let first_after = posts.partition_point(|p| &*p.name <= name);
        if !up && first_after > 0 && &*posts[first_after - 1].name == name {
            posts.remove(first_after - 1);
            for post in &mut posts[first_after - 1..] {
                post.rank -= 1;
            }
            return;
        }
        for post in &mut posts[first_after..] {
            if up {
                post.rank += 1;
            } else {
                post.rank = post.rank.saturating_sub(1);
            }
        }
    }

    /// Where a page at `offset` starts, if `hash` has posts that get close enough; `None`
    /// when the caller should build them ([`KeyIndex::begin_build`]) or, for a small
    /// offset, simply scan from the start.
    /// `losses` is the group commit's loss count now.
    pub(super) fn start(&self, hash: &KeyHash, offset: u64, losses: u64) -> Option<Start> {
        if offset < SPACING {
            return Some(Start {
                from: None,
                skip: offset,
            });
        }
        let mut inner = self.current(losses);
        inner.clock += 1;
        let clock = inner.clock;
        let state = inner.keys.get_mut(hash)?;
        let posts = state.posts.as_ref()?;
        state.used = clock;
        let i = posts.partition_point(|p| p.rank <= offset);
        let start = match i {
            0 => Start {
                from: None,
                skip: offset,
            },
            i => Start {
                from: Some(posts[i - 1].name.clone()),
                skip: offset - posts[i - 1].rank,
            },
        };
        // Many adds between two posts stretch the gap; past a limit, rebuild.
        (start.skip < 4 * SPACING).then_some(start)
    }

    /// Starts building the posts of `hash`: call before scanning its domains.
    pub(super) fn begin_build(&self, hash: &KeyHash, losses: u64) -> Ticket {
        let mut inner = self.current(losses);
        let changes = inner.keys.entry(*hash).or_default().changes;
        Ticket { changes, losses }
    }

    /// Installs the posts built from a scan of every domain of `hash`, in order, unless a
    /// change to the key or an undo (`losses` is the loss count now) raced with the scan
    /// (then the next deep page tries again).
    pub(super) fn finish_build(
        &self,
        hash: &KeyHash,
        ticket: Ticket,
        names: Vec<Box<[u8]>>,
        losses: u64,
    ) {
        let posts = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| Post {
                name,
                rank: i as u64 * SPACING,
            })
            .collect();
        let mut inner = self.current(losses);
        if ticket.losses != losses {
            return;
        }
        inner.clock += 1;
        let clock = inner.clock;
        let had_posts;
        {
            let state = inner.keys.entry(*hash).or_default();
            if state.changes != ticket.changes {
                return;
            }
            had_posts = state.posts.is_some();
            state.posts = Some(posts);
            state.used = clock;
        }
        if !had_posts {
            inner.with_posts += 1;
        }
        if inner.with_posts > MAX_KEYS {
            inner.evict_least_recently_used();
        }
    }
}

impl Inner {
    fn evict_least_recently_used(&mut self) {
        let oldest = self
            .keys
            .iter()
            .filter(|(_, s)| s.posts.is_some())
            .min_by_key(|(_, s)| s.used)
            .map(|(k, _)| *k);
        if let Some(key) = oldest
            && let Some(state) = self.keys.get_mut(&key)
        {
            state.posts = None;
            self.with_posts -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: u64) -> Box<[u8]> {
        format!("d{i:06}.example").into_bytes().into_boxed_slice()
    }

    /// Builds posts over domains 0, 2, 4, ... (so odd ones can be inserted in between).
    fn built(index: &KeyIndex, hash: &KeyHash, count: u64) {
        let ticket = index.begin_build(hash, 0);
        let names = (0..count).step_by(SPACING as usize).map(|i| name(2 * i));
        index.finish_build(hash, ticket, names.collect(), 0);
    }

    /// The reference: a sorted list of names and the page start it implies.
    fn check(index: &KeyIndex, hash: &KeyHash, all: &[Box<[u8]>], offset: u64) {
        let start = index.start(hash, offset, 0).expect("posts are built");
        let begin = match &start.from {
            None => 0,
            Some(from) => all.partition_point(|n| n < from),
        };
        assert_eq!(
            all.get(begin + start.skip as usize),
            all.get(offset as usize),
            "offset {offset}: {start:?}"
        );
    }

    #[test]
    fn pages_start_at_the_right_entry_as_domains_come_and_go() {
        let index = KeyIndex::default();
        let hash = KeyHash([7; 32]);
        let count = 5 * SPACING;
        let mut all: Vec<Box<[u8]>> = (0..count).map(|i| name(2 * i)).collect();
        assert_eq!(index.start(&hash, SPACING, 0), None, "no posts yet");
        built(&index, &hash, count);
        for offset in [0, 1, SPACING - 1, SPACING, 3 * SPACING + 17, count - 1] {
            check(&index, &hash, &all, offset);
        }
        // Insert before, between and after posts; remove a post itself and a non-post.
        for i in [1, 2 * SPACING + 1, 4 * SPACING + 3, 2 * count + 1] {
            index.inserted(&hash, &name(i));
            let at = all.partition_point(|n| *n < name(i));
            all.insert(at, name(i));
        }
        for removed in [name(2 * SPACING), name(6)] {
            index.removed(&hash, &removed);
            all.retain(|n| *n != removed);
        }
        for offset in (0..all.len() as u64).step_by(37) {
            check(&index, &hash, &all, offset);
        }
    }

    #[test]
    fn a_build_that_raced_with_a_change_is_discarded() {
        let index = KeyIndex::default();
        let hash = KeyHash([1; 32]);
        let ticket = index.begin_build(&hash, 0);
        index.inserted(&hash, b"x.example");
        index.finish_build(&hash, ticket, vec![name(0), name(SPACING)], 0);
        assert_eq!(index.start(&hash, SPACING, 0), None);
        built(&index, &hash, 2 * SPACING);
        assert!(index.start(&hash, SPACING, 0).is_some());
    }

    #[test]
    fn an_undo_drops_every_post_and_a_build_it_raced_with() {
        let index = KeyIndex::default();
        let hash = KeyHash([3; 32]);
        built(&index, &hash, 2 * SPACING);
        assert!(index.start(&hash, SPACING, 0).is_some());
        let ticket = index.begin_build(&KeyHash([4; 32]), 0);
        // A failed log write undid changes: the loss count is now 1.
        assert_eq!(index.start(&hash, SPACING, 1), None);
        index.finish_build(&KeyHash([4; 32]), ticket, vec![name(0), name(SPACING)], 1);
        assert_eq!(index.start(&KeyHash([4; 32]), SPACING, 1), None);
        assert_eq!(index.inner().with_posts, 0);
    }

    #[test]
    fn a_stretched_gap_asks_for_a_rebuild() {
        let index = KeyIndex::default();
        let hash = KeyHash([2; 32]);
        built(&index, &hash, 2 * SPACING);
        // Many adds after the last post: the skip from it grows past the limit.
        for i in 0..4 * SPACING {
            index.inserted(&hash, format!("z{i:06}").as_bytes());
        }
        assert!(index.start(&hash, SPACING + 4 * SPACING - 1, 0).is_some());
        assert_eq!(index.start(&hash, SPACING + 4 * SPACING, 0), None);
    }

    #[test]
    fn posts_are_kept_for_a_bounded_number_of_keys() {
        let index = KeyIndex::default();
        for k in 0..=MAX_KEYS {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&(k as u64).to_le_bytes());
            built(&index, &KeyHash(bytes), SPACING);
        }
        assert_eq!(index.inner().with_posts, MAX_KEYS);
        // The first key, the least recently used, lost its posts.
        assert_eq!(index.start(&KeyHash([0; 32]), SPACING, 0), None);
    }
}
