//! The Parse messages of a unit, as the answers confirm them: a count, and
//! the named statements with their place in the order of ParseComplete
//! answers, so that the session files exactly those the server accepted.

use super::state::Prepared;

/// The Parse messages of a unit (or of the units in flight on a server):
/// how many there are, which is how many ParseComplete answers confirm
/// them, and the named ones with their place in that order. The unnamed
/// statement is only counted, so a unit that uses it allocates nothing
/// here.
#[derive(Debug, Clone, Default)]
pub struct Parses {
    count: usize,
    named: Vec<(usize, String, Prepared)>,
}

impl Parses {
    /// Notes the next Parse: of the named statement `name`, or of the
    /// unnamed one.
    pub fn push(&mut self, named: Option<(String, Prepared)>) {
        if let Some((name, prepared)) = named {
            self.named.push((self.count, name, prepared));
        }
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The named statements, in order.
    pub fn named(&self) -> impl Iterator<Item = (&String, &Prepared)> {
        self.named
            .iter()
            .map(|(_, name, prepared)| (name, prepared))
    }

    /// The named statements among the first `completes` Parses: those the
    /// server has confirmed.
    pub fn confirmed(&self, completes: usize) -> impl Iterator<Item = (&String, &Prepared)> {
        self.named
            .iter()
            .take_while(move |(place, _, _)| *place < completes)
            .map(|(_, name, prepared)| (name, prepared))
    }

    /// Puts `earlier`'s Parses before these.
    pub fn prepend(&mut self, earlier: Parses) {
        let shift = earlier.count;
        let mut named = earlier.named;
        named.extend(
            self.named
                .drain(..)
                .map(|(place, name, prepared)| (place + shift, name, prepared)),
        );
        self.named = named;
        self.count += shift;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::session::state::Replay;
    use crate::frontend::session::units::shared;
    use crate::router::UnitFacts;

    fn named(name: &str) -> Option<(String, Prepared)> {
        let replay = Replay::Sql(format!("SELECT '{name}'"));
        Some((
            name.to_string(),
            Prepared::new(replay, shared(UnitFacts::read())),
        ))
    }

    fn names<'a>(it: impl Iterator<Item = (&'a String, &'a Prepared)>) -> Vec<&'a str> {
        it.map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn parses_are_confirmed_in_their_order_across_a_flush() {
        // Before a Flush: unnamed, then a; after it: b, unnamed, c.
        let mut earlier = Parses::default();
        earlier.push(None);
        earlier.push(named("a"));
        let mut later = Parses::default();
        later.push(named("b"));
        later.push(None);
        later.push(named("c"));
        later.prepend(earlier);
        assert!(!later.is_empty());
        assert_eq!(names(later.named()), ["a", "b", "c"]);
        assert_eq!(names(later.confirmed(1)), Vec::<&str>::new());
        assert_eq!(names(later.confirmed(2)), ["a"]);
        assert_eq!(names(later.confirmed(4)), ["a", "b"]);
        assert_eq!(names(later.confirmed(5)), ["a", "b", "c"]);
        assert!(Parses::default().is_empty());
    }
}
