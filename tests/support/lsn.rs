//! `Lsn`: a WAL position as Postgres prints it (`0/3000148`), ordered, so a
//! test can say `replayed >= written` instead of comparing strings.

use std::fmt;
use std::str::FromStr;

/// A write-ahead-log position. Postgres prints it as two hex halves, `HI/LO`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (hi, lo) = text
            .split_once('/')
            .ok_or_else(|| format!("not an LSN (no '/'): {text:?}"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|e| format!("bad LSN {text:?}: {e}"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|e| format!("bad LSN {text:?}: {e}"))?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Parses psql output that must be an LSN; a NULL (empty output) or garbage
/// is a broken test setup, so it panics naming what was asked.
pub(crate) fn parse_lsn(output: &str, what: &str) -> Lsn {
    output
        .parse()
        .unwrap_or_else(|e| panic!("{what}: expected an LSN, got {output:?} ({e})"))
}
