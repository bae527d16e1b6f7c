//! Which transactions write, learned by the shape of their first
//! statement, for optimistic transactions.
//!
//! An optimistic block that writes pays a replay on the primary; one that
//! only reads saves the primary its work. Applications have few kinds of
//! transaction, and the first statement tells them apart well ("SELECT
//! ... FROM carts WHERE user_id = ?" starts a checkout, which writes; "SELECT
//! ... FROM products" starts a page view, which does not). So each block's
//! outcome is counted under its first statement with literals blanked, and a
//! shape whose blocks mostly wrote starts on the primary directly.

use dashmap::DashMap;

/// Blocks of a shape seen before its verdict counts.
const MIN_SAMPLES: u32 = 4;
/// Counts are halved past this many blocks, so a shape can change its ways.
const MAX_SAMPLES: u32 = 64;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    blocks: u32,
    wrote: u32,
}

/// Outcomes by shape. Bounded: when full it is cleared, which costs some
/// replays while it learns again, never correctness.
#[derive(Debug)]
pub struct Shapes {
    by_shape: DashMap<String, Counts>,
    capacity: usize,
}

impl Shapes {
    pub fn new(capacity: usize) -> Shapes {
        Shapes {
            by_shape: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether blocks of this shape mostly write: start them on the primary.
    pub fn mostly_writes(&self, shape: &str) -> bool {
        self.by_shape
            .get(shape)
            .is_some_and(|c| c.blocks >= MIN_SAMPLES && c.wrote * 2 > c.blocks)
    }

    /// Counts one block of `shape` that wrote or did not.
    pub fn record(&self, shape: &str, wrote: bool) {
        if !self.by_shape.contains_key(shape) && self.by_shape.len() >= self.capacity {
            self.by_shape.clear();
        }
        let mut counts = self.by_shape.entry(shape.to_string()).or_default();
        if counts.blocks >= MAX_SAMPLES {
            counts.blocks /= 2;
            counts.wrote /= 2;
        }
        counts.blocks += 1;
        counts.wrote += u32::from(wrote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_that_mostly_write_are_learned_and_unlearned() {
        let shapes = Shapes::new(100);
        let checkout = "SELECT * FROM carts WHERE user_id = ?";
        let browse = "SELECT * FROM products";
        for _ in 0..3 {
            shapes.record(checkout, true);
            shapes.record(browse, false);
        }
        assert!(!shapes.mostly_writes(checkout), "too few samples");
        shapes.record(checkout, true);
        assert!(shapes.mostly_writes(checkout));
        assert!(!shapes.mostly_writes(browse));
        for _ in 0..200 {
            shapes.record(checkout, false);
        }
        assert!(!shapes.mostly_writes(checkout), "a shape can change");
        let small = Shapes::new(2);
        small.record("a", true);
        small.record("b", true);
        small.record("c", true);
        assert!(small.by_shape.len() <= 2);
    }
}
