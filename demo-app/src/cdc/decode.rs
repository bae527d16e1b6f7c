//! One row of `test_decoding` output, parsed: no I/O, so every format quirk
//! is tested on strings.
//!
//! ```text
//! BEGIN 529
//! table public.rides: INSERT: id[bigint]:96 distance[numeric]:12.300 note[text]:'it''s'
//! table public.rides: UPDATE: old-key: id[bigint]:96 new-tuple: id[bigint]:97 ...
//! table public.rides: DELETE: id[bigint]:96
//! table public."Odd Name", public.b: TRUNCATE: restart_seqs cascade
//! message: transactional: 1 prefix: demo, sz: 5 content:hello
//! COMMIT 529
//! ```
//!
//! Identifiers are quoted as Postgres quotes them (`"Odd Name"`, `"a""b"`),
//! so a column called `old-key` (quoted) never reads as the `old-key:`
//! marker. A text value may contain newlines; a row is one change, whatever
//! it contains.

use super::datum::{Datum, Literal};

/// What a table change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Truncate => "truncate",
        }
    }
}

/// One `name[type]:value` of a tuple.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: String,
    pub type_name: String,
    pub value: Datum,
}

/// A table change as printed, before it is placed in its transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct TableChange {
    pub kind: Kind,
    /// `(schema, table)`: one, or several for a TRUNCATE.
    pub tables: Vec<(String, String)>,
    /// The new row (INSERT, UPDATE) or the old row's identity (DELETE);
    /// `None` for `(no-tuple-data)`.
    pub tuple: Option<Vec<Field>>,
    /// UPDATE's `old-key:` (the key changed, or REPLICA IDENTITY FULL).
    pub old_key: Option<Vec<Field>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    Begin {
        xid: Option<u32>,
    },
    Commit {
        xid: Option<u32>,
    },
    Change(TableChange),
    Message {
        transactional: bool,
        prefix: String,
        content: String,
    },
}

/// Parses one row's `data`.
pub fn decode(data: &str) -> Result<Line, String> {
    let bad = |why: &str| format!("cannot decode {data:?}: {why}");
    if let Some(rest) = word(data, "BEGIN") {
        return Ok(Line::Begin { xid: xid(rest) });
    }
    if let Some(rest) = word(data, "COMMIT") {
        return Ok(Line::Commit { xid: xid(rest) });
    }
    if let Some(rest) = data.strip_prefix("message: ") {
        return message(rest).ok_or_else(|| bad("unexpected message format"));
    }
    let rest = data
        .strip_prefix("table ")
        .ok_or_else(|| bad("not BEGIN, COMMIT, a message or a table change"))?;
    let mut cursor = Cursor::new(rest);
    let mut tables = vec![cursor.qualified_name().map_err(|e| bad(&e))?];
    while cursor.eat(", ") {
        tables.push(cursor.qualified_name().map_err(|e| bad(&e))?);
    }
    if !cursor.eat(": ") {
        return Err(bad("expected ': ' after the table name"));
    }
    let kind = if cursor.eat("INSERT:") {
        Kind::Insert
    } else if cursor.eat("UPDATE:") {
        Kind::Update
    } else if cursor.eat("DELETE:") {
        Kind::Delete
    } else if cursor.eat("TRUNCATE:") {
        Kind::Truncate
    } else {
        return Err(bad("unknown change kind"));
    };
    let mut change = TableChange {
        kind,
        tables,
        tuple: None,
        old_key: None,
    };
    if kind == Kind::Truncate {
        return Ok(Line::Change(change));
    }
    if cursor.eat(" (no-tuple-data)") {
        return Ok(Line::Change(change));
    }
    if kind == Kind::Update && cursor.eat(" old-key:") {
        change.old_key = Some(cursor.tuple().map_err(|e| bad(&e))?);
        if !cursor.eat(" new-tuple:") {
            return Err(bad("old-key without new-tuple"));
        }
    }
    change.tuple = Some(cursor.tuple().map_err(|e| bad(&e))?);
    if !cursor.rest().is_empty() {
        return Err(bad(&format!(
            "unexpected {:?} after the tuple",
            cursor.rest()
        )));
    }
    Ok(Line::Change(change))
}

/// `rest` after `keyword` when `data` is that keyword alone or followed by a space.
fn word<'a>(data: &'a str, keyword: &str) -> Option<&'a str> {
    let rest = data.strip_prefix(keyword)?;
    (rest.is_empty() || rest.starts_with(' ')).then_some(rest)
}

/// The xid in `" 529"` or `" 529 (at 2024-...)"`.
fn xid(rest: &str) -> Option<u32> {
    rest.split_whitespace().next()?.parse().ok()
}

/// `transactional: 1 prefix: demo, sz: 5 content:hello`
fn message(rest: &str) -> Option<Line> {
    let rest = rest.strip_prefix("transactional: ")?;
    let (flag, rest) = rest.split_once(" prefix: ")?;
    let (prefix, rest) = rest.split_once(", sz: ")?;
    let (_size, content) = rest.split_once(" content:")?;
    Some(Line::Message {
        transactional: flag == "1",
        prefix: prefix.to_string(),
        content: content.to_string(),
    })
}

/// A position in the text after `table `.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor { text, at: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn eat(&mut self, token: &str) -> bool {
        let found = self.rest().starts_with(token);
        if found {
            self.at += token.len();
        }
        found
    }

    /// `schema.table`, either part possibly quoted.
    fn qualified_name(&mut self) -> Result<(String, String), String> {
        let schema = self.identifier(&['.'])?;
        if !self.eat(".") {
            return Err("expected schema.table".into());
        }
        let table = self.identifier(&[':', ','])?;
        Ok((schema, table))
    }

    /// A quoted identifier, or a bare one ending before any of `stops`.
    fn identifier(&mut self, stops: &[char]) -> Result<String, String> {
        if self.eat("\"") {
            let mut name = String::new();
            loop {
                let rest = self.rest();
                let end = rest.find('"').ok_or("unterminated quoted identifier")?;
                name.push_str(&rest[..end]);
                self.at += end + 1;
                if !self.eat("\"") {
                    return Ok(name);
                }
                name.push('"');
            }
        }
        let rest = self.rest();
        let end = rest.find(stops).unwrap_or(rest.len());
        if end == 0 {
            return Err("empty identifier".into());
        }
        self.at += end;
        Ok(rest[..end].to_string())
    }

    /// ` name[type]:value` fields up to the end or ` new-tuple:`.
    fn tuple(&mut self) -> Result<Vec<Field>, String> {
        let mut fields = Vec::new();
        while self.rest().starts_with(' ') && !self.rest().starts_with(" new-tuple:") {
            self.at += 1;
            let name = self.identifier(&['['])?;
            if !self.eat("[") {
                return Err(format!("expected '[' after column {name:?}"));
            }
            let rest = self.rest();
            let end = rest
                .find("]:")
                .ok_or_else(|| format!("no type for column {name:?}"))?;
            let type_name = rest[..end].to_string();
            self.at += end + 2;
            let literal = self.literal()?;
            let value =
                Datum::typed(&type_name, literal).map_err(|e| format!("column {name:?}: {e}"))?;
            fields.push(Field {
                name,
                type_name,
                value,
            });
        }
        Ok(fields)
    }

    fn literal(&mut self) -> Result<Literal, String> {
        if self.eat("B'") {
            let rest = self.rest();
            let end = rest.find('\'').ok_or("unterminated bit string")?;
            self.at += end + 1;
            return Ok(Literal::Bits(rest[..end].to_string()));
        }
        if self.eat("'") {
            let mut text = String::new();
            loop {
                let rest = self.rest();
                let end = rest.find('\'').ok_or("unterminated string literal")?;
                text.push_str(&rest[..end]);
                self.at += end + 1;
                if !self.eat("'") {
                    return Ok(Literal::Quoted(text));
                }
                text.push('\'');
            }
        }
        let rest = self.rest();
        let end = rest.find(' ').unwrap_or(rest.len());
        self.at += end;
        Ok(Literal::Bare(rest[..end].to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, type_name: &str, value: Datum) -> Field {
        Field {
            name: name.into(),
            type_name: type_name.into(),
            value,
        }
    }

    fn change(data: &str) -> TableChange {
        match decode(data) {
            Ok(Line::Change(change)) => change,
            other => panic!("{data}: {other:?}"),
        }
    }

    #[test]
    fn begin_and_commit() {
        assert_eq!(decode("BEGIN 529"), Ok(Line::Begin { xid: Some(529) }));
        assert_eq!(decode("BEGIN"), Ok(Line::Begin { xid: None }));
        assert_eq!(decode("COMMIT 529"), Ok(Line::Commit { xid: Some(529) }));
        assert_eq!(
            decode("COMMIT 529 (at 2024-05-01 10:00:00.1+00)"),
            Ok(Line::Commit { xid: Some(529) })
        );
        assert!(decode("BEGINNING").is_err());
    }

    #[test]
    fn insert_with_quotes_nulls_and_arrays() {
        let c = change(
            "table public.rides: INSERT: id[bigint]:96 distance[numeric]:12.300 \
             note[text]:'it''s a ride: ok' tags[text[]]:'{a,\"b c\",NULL}' \
             paid[boolean]:true charge_id[text]:null at[timestamp with time zone]:'2024-05-01 10:00:00+00'",
        );
        assert_eq!(c.kind, Kind::Insert);
        assert_eq!(c.tables, vec![("public".to_string(), "rides".to_string())]);
        assert_eq!(c.old_key, None);
        assert_eq!(
            c.tuple,
            Some(vec![
                field("id", "bigint", Datum::Int(96)),
                field("distance", "numeric", Datum::Numeric("12.300".into())),
                field("note", "text", Datum::Text("it's a ride: ok".into())),
                field(
                    "tags",
                    "text[]",
                    Datum::Array(vec![
                        Datum::Text("a".into()),
                        Datum::Text("b c".into()),
                        Datum::Null
                    ])
                ),
                field("paid", "boolean", Datum::Bool(true)),
                field("charge_id", "text", Datum::Null),
                field(
                    "at",
                    "timestamp with time zone",
                    Datum::Text("2024-05-01 10:00:00+00".into())
                ),
            ])
        );
    }

    #[test]
    fn values_that_look_like_syntax() {
        let c = change(
            "table public.t: INSERT: a[text]:' new-tuple: x[integer]:1' b[text]:'''' \
             c[text]:'line one\nline two' d[text]:''",
        );
        let values: Vec<Datum> = c.tuple.unwrap().into_iter().map(|f| f.value).collect();
        assert_eq!(
            values,
            vec![
                Datum::Text(" new-tuple: x[integer]:1".into()),
                Datum::Text("'".into()),
                Datum::Text("line one\nline two".into()),
                Datum::Text("".into()),
            ]
        );
    }

    #[test]
    fn quoted_identifiers() {
        let c = change(
            "table \"My Schema\".\"Odd \"\"Name\"\"\": INSERT: \"old-key\"[integer]:1 \
             \"Col[1]\"[character varying]:'x'",
        );
        assert_eq!(
            c.tables,
            vec![("My Schema".to_string(), "Odd \"Name\"".to_string())]
        );
        assert_eq!(
            c.tuple,
            Some(vec![
                field("old-key", "integer", Datum::Int(1)),
                field("Col[1]", "character varying", Datum::Text("x".into())),
            ])
        );
    }

    #[test]
    fn update_with_and_without_old_key() {
        let c = change("table public.t: UPDATE: id[integer]:1 name[text]:'b'");
        assert_eq!((c.kind, c.old_key), (Kind::Update, None));
        assert_eq!(c.tuple.map(|t| t.len()), Some(2));

        let c = change(
            "table public.t: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2 name[text]:'b'",
        );
        assert_eq!(c.old_key, Some(vec![field("id", "integer", Datum::Int(1))]));
        assert_eq!(
            c.tuple,
            Some(vec![
                field("id", "integer", Datum::Int(2)),
                field("name", "text", Datum::Text("b".into())),
            ])
        );
    }

    #[test]
    fn delete_truncate_and_no_tuple_data() {
        let c = change("table public.t: DELETE: id[integer]:1");
        assert_eq!(c.kind, Kind::Delete);
        assert_eq!(c.tuple, Some(vec![field("id", "integer", Datum::Int(1))]));
        let c = change("table public.t: DELETE: (no-tuple-data)");
        assert_eq!((c.kind, c.tuple), (Kind::Delete, None));
        let c = change("table public.a, public.\"B\": TRUNCATE: restart_seqs cascade");
        assert_eq!(c.kind, Kind::Truncate);
        assert_eq!(
            c.tables,
            vec![
                ("public".to_string(), "a".to_string()),
                ("public".to_string(), "B".to_string())
            ]
        );
        let c = change("table public.a: TRUNCATE: (no-flags)");
        assert_eq!(c.tables.len(), 1);
    }

    #[test]
    fn bits_and_toast() {
        let c = change("table public.t: UPDATE: id[integer]:1 b[bit varying]:B'101' big[text]:unchanged-toast-datum");
        let values: Vec<Datum> = c.tuple.unwrap().into_iter().map(|f| f.value).collect();
        assert_eq!(
            values,
            vec![
                Datum::Int(1),
                Datum::Bits("101".into()),
                Datum::UnchangedToast
            ]
        );
    }

    #[test]
    fn messages() {
        assert_eq!(
            decode("message: transactional: 1 prefix: demo, sz: 11 content:hello world"),
            Ok(Line::Message {
                transactional: true,
                prefix: "demo".into(),
                content: "hello world".into()
            })
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for data in [
            "",
            "table",
            "table public",
            "table public.t",
            "table public.t: UPSERT: id[integer]:1",
            "table public.t: INSERT: id[integer:1",
            "table public.t: INSERT: id[integer]:'open",
            "table public.t: INSERT: id[integer]:x",
            "table public.t: UPDATE: old-key: id[integer]:1",
            "table \"unterminated: INSERT: id[integer]:1",
            "table public.t: INSERT: id[integer]:1trailing",
            "message: what",
        ] {
            assert!(decode(data).is_err(), "{data:?} should not decode");
        }
    }
}
