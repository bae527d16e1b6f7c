//! [`Metres`]: a distance as a whole number of metres, which is what
//! `rides.distance` (kilometres, `numeric(13, 3)`) holds exactly. Floats
//! would drift; a consumer's total must equal `sum(distance)` exactly.

use std::fmt;
use std::ops::AddAssign;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Metres(pub i64);

impl FromStr for Metres {
    type Err = String;

    /// Kilometres as Postgres prints a numeric: `12`, `12.3`, `-0.125`.
    /// More than three decimals are refused unless they are zeros.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not a distance in km with at most 3 decimals: {text:?}");
        let (negative, digits) = match text.trim().strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.trim()),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
            return Err(bad());
        }
        let (kept, rest) = fraction.split_at(fraction.len().min(3));
        if rest.bytes().any(|b| b != b'0') {
            return Err(bad());
        }
        let km: i64 = whole.parse().map_err(|_| bad())?;
        let metres: i64 = format!("{kept:0<3}").parse().map_err(|_| bad())?;
        let total = km
            .checked_mul(1000)
            .and_then(|m| m.checked_add(metres))
            .ok_or_else(bad)?;
        Ok(Metres(if negative { -total } else { total }))
    }
}

impl fmt::Display for Metres {
    /// Kilometres with three decimals, as `sum(distance)` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:03}", abs / 1000, abs % 1000)
    }
}

impl AddAssign for Metres {
    fn add_assign(&mut self, other: Metres) {
        self.0 += other.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numeric_text() {
        assert_eq!("12.345".parse(), Ok(Metres(12_345)));
        assert_eq!("12.3".parse(), Ok(Metres(12_300)));
        assert_eq!("12".parse(), Ok(Metres(12_000)));
        assert_eq!("0.001".parse(), Ok(Metres(1)));
        assert_eq!("-0.125".parse(), Ok(Metres(-125)));
        assert_eq!("1.50000".parse(), Ok(Metres(1_500)));
        assert!("1.2345".parse::<Metres>().is_err());
        assert!("".parse::<Metres>().is_err());
        assert!(".5".parse::<Metres>().is_err());
        assert!("1e3".parse::<Metres>().is_err());
        assert!("NaN".parse::<Metres>().is_err());
    }

    #[test]
    fn prints_like_postgres() {
        assert_eq!(Metres(12_345).to_string(), "12.345");
        assert_eq!(Metres(5).to_string(), "0.005");
        assert_eq!(Metres(0).to_string(), "0.000");
        assert_eq!(Metres(-125).to_string(), "-0.125");
        let mut total = Metres(999);
        total += Metres(1);
        assert_eq!(total.to_string(), "1.000");
    }
}
