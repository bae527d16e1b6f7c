//! [`Datum`]: one column value of a change, typed by the column's type as
//! `test_decoding` names it (`integer`, `numeric`, `text[]`, ...).
//!
//! `test_decoding` prints integers, floats and numerics bare, booleans as
//! `true`/`false`, bit strings as `B'0101'`, NULL as `null`, an unchanged
//! TOASTed value as `unchanged-toast-datum`, and everything else as a SQL
//! string literal (`'it''s'`). Arrays arrive as a quoted array literal
//! (`'{a,"b c",NULL}'`), which [`parse_array`] takes apart.

use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum Datum {
    Null,
    /// A TOASTed value the change did not touch: not sent, still there.
    UnchangedToast,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Exact, as Postgres printed it.
    Numeric(String),
    Bits(String),
    Text(String),
    Array(Vec<Datum>),
}

/// A value as it appeared in the output, before typing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Literal {
    /// Unquoted: numbers, `true`, `null`, `unchanged-toast-datum`.
    Bare(String),
    /// A SQL string literal, unescaped.
    Quoted(String),
    /// `B'...'`, the digits.
    Bits(String),
}

impl Datum {
    /// Types `literal` by `type_name`; a value that does not fit its type is
    /// an error naming both.
    pub fn typed(type_name: &str, literal: Literal) -> Result<Datum, String> {
        let text = match literal {
            Literal::Bare(word) if word == "null" => return Ok(Datum::Null),
            Literal::Bare(word) if word == "unchanged-toast-datum" => {
                return Ok(Datum::UnchangedToast)
            }
            Literal::Bits(bits) => return Ok(Datum::Bits(bits)),
            Literal::Bare(text) | Literal::Quoted(text) => text,
        };
        if let Some(element_type) = type_name.strip_suffix("[]") {
            return parse_array(&text, element_type).map(Datum::Array);
        }
        scalar(type_name, text)
    }

    /// The value as JSON: numerics and bit strings as strings (exact), an
    /// unchanged TOAST value as `{"unchanged": true}`.
    pub fn to_json(&self) -> Value {
        match self {
            Datum::Null => Value::Null,
            Datum::UnchangedToast => json!({ "unchanged": true }),
            Datum::Bool(b) => json!(b),
            Datum::Int(i) => json!(i),
            Datum::Float(f) if f.is_finite() => json!(f),
            Datum::Float(f) => json!(f.to_string()),
            Datum::Numeric(s) | Datum::Bits(s) | Datum::Text(s) => json!(s),
            Datum::Array(items) => Value::Array(items.iter().map(Datum::to_json).collect()),
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Datum::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The text of a text, numeric or bit string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Datum::Numeric(s) | Datum::Bits(s) | Datum::Text(s) => Some(s),
            _ => None,
        }
    }
}

fn scalar(type_name: &str, text: String) -> Result<Datum, String> {
    let wrong = |e: &dyn std::fmt::Display| format!("{text:?} is not a {type_name}: {e}");
    Ok(match type_name {
        "smallint" | "integer" | "bigint" | "oid" => {
            Datum::Int(text.parse().map_err(|e| wrong(&e))?)
        }
        "real" | "double precision" => Datum::Float(match text.as_str() {
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            _ => text.parse().map_err(|e| wrong(&e))?,
        }),
        "numeric" => Datum::Numeric(text),
        "boolean" => match text.as_str() {
            "true" | "t" => Datum::Bool(true),
            "false" | "f" => Datum::Bool(false),
            _ => return Err(wrong(&"expected true or false")),
        },
        _ => Datum::Text(text),
    })
}

/// The elements of an array literal (`{1,2}`, `{"a b",NULL}`, `{{1},{2}}`,
/// `[0:1]={1,2}`), each typed by `element_type`; nested arrays nest.
pub fn parse_array(text: &str, element_type: &str) -> Result<Vec<Datum>, String> {
    let body = match text.find("={") {
        Some(at) if text.starts_with('[') => &text[at + 1..],
        _ => text,
    };
    let mut chars = body.chars().peekable();
    let items = array_items(&mut chars, element_type)
        .map_err(|e| format!("bad array literal {text:?}: {e}"))?;
    if chars.any(|c| !c.is_whitespace()) {
        return Err(format!("bad array literal {text:?}: text after the array"));
    }
    Ok(items)
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn array_items(chars: &mut Chars, element_type: &str) -> Result<Vec<Datum>, String> {
    if chars.next() != Some('{') {
        return Err("expected '{'".into());
    }
    let mut items = Vec::new();
    loop {
        skip_spaces(chars);
        match chars.peek() {
            Some('}') if items.is_empty() => {
                chars.next();
                return Ok(items);
            }
            Some('{') => items.push(Datum::Array(array_items(chars, element_type)?)),
            Some('"') => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => text.push(chars.next().ok_or("unfinished escape")?),
                        Some('"') => break,
                        Some(c) => text.push(c),
                        None => return Err("unfinished quoted element".into()),
                    }
                }
                items.push(scalar(element_type, text)?);
            }
            Some(_) => {
                let mut text = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    if c == '\\' {
                        chars.next();
                        text.push(chars.next().ok_or("unfinished escape")?);
                        continue;
                    }
                    text.push(c);
                    chars.next();
                }
                let text = text.trim_end().to_string();
                items.push(if text.eq_ignore_ascii_case("null") {
                    Datum::Null
                } else {
                    scalar(element_type, text)?
                });
            }
            None => return Err("unfinished array".into()),
        }
        skip_spaces(chars);
        match chars.next() {
            Some(',') => continue,
            Some('}') => return Ok(items),
            other => return Err(format!("expected ',' or '}}', found {other:?}")),
        }
    }
}

fn skip_spaces(chars: &mut Chars) {
    while chars.peek().is_some_and(|c| c.is_whitespace()) {
        chars.next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    #[test]
    fn scalars_by_type() {
        let bare = |s: &str| Literal::Bare(s.into());
        let quoted = |s: &str| Literal::Quoted(s.into());
        assert_eq!(Datum::typed("integer", bare("-42")), Ok(Datum::Int(-42)));
        assert_eq!(Datum::typed("bigint", bare("null")), Ok(Datum::Null));
        assert_eq!(Datum::typed("text", bare("null")), Ok(Datum::Null));
        assert_eq!(Datum::typed("text", quoted("null")), Ok(text("null")));
        assert_eq!(
            Datum::typed("numeric", bare("12.300")),
            Ok(Datum::Numeric("12.300".into()))
        );
        assert_eq!(
            Datum::typed("numeric", bare("NaN")),
            Ok(Datum::Numeric("NaN".into()))
        );
        assert_eq!(
            Datum::typed("double precision", bare("1.5")),
            Ok(Datum::Float(1.5))
        );
        assert_eq!(
            Datum::typed("double precision", bare("-Infinity")),
            Ok(Datum::Float(f64::NEG_INFINITY))
        );
        assert_eq!(
            Datum::typed("boolean", bare("false")),
            Ok(Datum::Bool(false))
        );
        assert_eq!(
            Datum::typed("bit varying", Literal::Bits("101".into())),
            Ok(Datum::Bits("101".into()))
        );
        assert_eq!(
            Datum::typed("text", bare("unchanged-toast-datum")),
            Ok(Datum::UnchangedToast)
        );
        assert_eq!(
            Datum::typed("jsonb", quoted("{\"a\": 1}")),
            Ok(text("{\"a\": 1}"))
        );
        assert!(Datum::typed("integer", bare("x")).is_err());
        assert!(Datum::typed("boolean", bare("maybe")).is_err());
    }

    #[test]
    fn arrays() {
        assert_eq!(
            parse_array(r#"{a,"b c",NULL,"NULL","x\"y\\z"}"#, "text"),
            Ok(vec![
                text("a"),
                text("b c"),
                Datum::Null,
                text("NULL"),
                text("x\"y\\z")
            ])
        );
        assert_eq!(parse_array("{}", "integer"), Ok(vec![]));
        assert_eq!(
            parse_array("{{1,2},{3,NULL}}", "integer"),
            Ok(vec![
                Datum::Array(vec![Datum::Int(1), Datum::Int(2)]),
                Datum::Array(vec![Datum::Int(3), Datum::Null]),
            ])
        );
        assert_eq!(
            parse_array("[0:1]={7,8}", "bigint"),
            Ok(vec![Datum::Int(7), Datum::Int(8)])
        );
        assert_eq!(
            parse_array("{ t , f }", "boolean"),
            Ok(vec![Datum::Bool(true), Datum::Bool(false)])
        );
        assert!(parse_array("{1,2", "integer").is_err());
        assert!(parse_array("{1,2}x", "integer").is_err());
        assert!(parse_array("1,2", "integer").is_err());
        assert!(parse_array("{1,x}", "integer").is_err());
    }

    #[test]
    fn json() {
        assert_eq!(Datum::Numeric("1.50".into()).to_json(), json!("1.50"));
        assert_eq!(
            Datum::Array(vec![Datum::Int(1), Datum::Null]).to_json(),
            json!([1, null])
        );
        assert_eq!(Datum::Float(f64::NAN).to_json(), json!("NaN"));
        assert_eq!(
            Datum::UnchangedToast.to_json(),
            json!({ "unchanged": true })
        );
    }
}
