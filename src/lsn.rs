//! Log sequence numbers: positions in the primary's write-ahead log.
//!
//! Postgres prints them as two hex halves, `X/Y`; the proxy compares them as
//! one `u64`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// Bytes from `other` up to `self`, or 0 if `other` is ahead.
    pub fn bytes_after(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

impl Lsn {
    /// Its `X/Y` text, written without the formatting machinery: every
    /// commit's LSN is sent to its client so.
    pub fn text(self) -> LsnText {
        let mut text = LsnText {
            bytes: [0; 17],
            len: 0,
        };
        text.push_hex((self.0 >> 32) as u32);
        text.bytes[text.len] = b'/';
        text.len += 1;
        text.push_hex(self.0 as u32);
        text
    }
}

/// An LSN's text, on the stack (see [`Lsn::text`]).
pub struct LsnText {
    /// Two halves of up to 8 hex digits each, and the slash.
    bytes: [u8; 17],
    len: usize,
}

impl LsnText {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and '/' are ever written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }

    /// Upper-case hex without leading zeros, as Postgres prints each half.
    fn push_hex(&mut self, value: u32) {
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let digits = (32 - value.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            let nibble = (value >> (4 * (digits - 1 - i))) & 0xf;
            self.bytes[self.len + i] = DIGITS[nibble as usize];
        }
        self.len += digits;
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid LSN \"{0}\": expected two hexadecimal numbers separated by a slash, such as 0/3000148"
)]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Lsn, LsnParseError> {
        let bad = || LsnParseError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let valid =
            |h: &str| !h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid(hi) || !valid(lo) {
            return Err(bad());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_postgres() {
        let lsn: Lsn = "16/B374D848".parse().expect("valid");
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>(), Ok(Lsn::ZERO));
        assert_eq!(
            "0/3000148".parse::<Lsn>().map(|l| l.to_string()),
            Ok("0/3000148".to_string())
        );
    }

    #[test]
    fn text_is_what_hex_formatting_gives() {
        let halves = [0u64, 1, 0xf, 0x10, 0xff, 0x1234, 0xB374_D848, 0xffff_ffff];
        for hi in halves {
            for lo in halves {
                let lsn = Lsn((hi << 32) | lo);
                assert_eq!(lsn.text().as_str(), format!("{hi:X}/{lo:X}"));
                assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
            }
        }
    }

    #[test]
    fn orders_by_position() {
        let a: Lsn = "0/FFFFFFFF".parse().expect("valid");
        let b: Lsn = "1/0".parse().expect("valid");
        assert!(a < b);
        assert_eq!(b.bytes_after(a), 1);
        assert_eq!(a.bytes_after(b), 0);
    }

    #[test]
    fn refuses_junk() {
        for junk in ["", "0", "0/", "/1", "x/1", "1/2/3", "123456789/0", "-1/0"] {
            assert!(junk.parse::<Lsn>().is_err(), "{junk}");
        }
    }
}
