//! [`Change`]: what handlers receive, one per changed row, placed in its
//! transaction; and [`assemble`], which turns a batch of slot rows into them.
//!
//! Logical decoding returns whole transactions in commit order, so a batch
//! is BEGIN, changes, COMMIT, BEGIN, ... Each change gets its transaction's
//! commit LSN; `(commit_lsn, lsn)` increases strictly through the stream,
//! which lets a handler make itself idempotent (see `ride_stats`).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde_json::{json, Map, Value};

use super::datum::Datum;
use super::decode::{decode, Field, Kind, Line};

/// A WAL position, `X/Y` as Postgres prints it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not an LSN: {text:?}");
        let (hi, lo) = text.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// One row of `pg_logical_slot_peek_changes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRow {
    pub lsn: Lsn,
    pub xid: u32,
    pub data: String,
}

/// One changed row (or one truncated table), typed.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub kind: Kind,
    pub schema: String,
    pub table: String,
    /// The new row (insert, update) or what the server sent of the old one
    /// (delete: its replica identity); empty for a truncate.
    pub columns: Vec<String>,
    pub types: Vec<String>,
    pub values: Vec<Datum>,
    /// The row's identity: its primary-key (replica identity) columns, with
    /// the old values for an update that changed them.
    pub keys: Vec<(String, Datum)>,
    pub xid: u32,
    /// Where this change is in the WAL.
    pub lsn: Lsn,
    /// Where its transaction committed.
    pub commit_lsn: Lsn,
}

impl Change {
    /// The value of `column`, if the change carries it.
    pub fn get(&self, column: &str) -> Option<&Datum> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.values.get(i)
    }

    pub fn key(&self, column: &str) -> Option<&Datum> {
        self.keys.iter().find(|(k, _)| k == column).map(|(_, v)| v)
    }

    /// The structured log line's fields.
    pub fn to_json(&self) -> Value {
        let object = |pairs: &mut dyn Iterator<Item = (&String, &Datum)>| {
            Value::Object(
                pairs
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect::<Map<_, _>>(),
            )
        };
        json!({
            "kind": self.kind.as_str(),
            "schema": self.schema,
            "table": self.table,
            "keys": object(&mut self.keys.iter().map(|(k, v)| (k, v))),
            "values": object(&mut self.columns.iter().zip(&self.values)),
            "xid": self.xid,
            "lsn": self.lsn.to_string(),
            "commit_lsn": self.commit_lsn.to_string(),
        })
    }
}

/// The identity columns of each table, in order, as far as known.
pub type KeyColumns = HashMap<(String, String), Vec<String>>;

/// A batch, assembled.
#[derive(Debug, Default)]
pub struct Batch {
    pub changes: Vec<Change>,
    /// The last COMMIT's LSN: how far the slot may be consumed.
    pub last_commit: Option<Lsn>,
    /// Rows that did not decode (logged by the caller, never fatal).
    pub undecoded: Vec<(SlotRow, String)>,
}

/// The tables a batch's changes touch, so their keys can be looked up first.
pub fn tables_in(rows: &[SlotRow]) -> Vec<(String, String)> {
    let mut tables = Vec::new();
    for row in rows {
        if let Ok(Line::Change(change)) = decode(&row.data) {
            for table in change.tables {
                if !tables.contains(&table) {
                    tables.push(table);
                }
            }
        }
    }
    tables
}

/// Turns slot rows into changes: each gets its transaction's commit LSN and
/// its keys (from `key_columns`, else from what the server sent as the old
/// key). Changes of a transaction whose COMMIT is not in `rows` are left
/// out, and `last_commit` stays before them, so they are read again.
pub fn assemble(rows: Vec<SlotRow>, key_columns: &KeyColumns) -> Batch {
    let mut batch = Batch::default();
    let mut open: Vec<Change> = Vec::new();
    for row in rows {
        match decode(&row.data) {
            Ok(Line::Begin { .. }) => open.clear(),
            Ok(Line::Commit { .. }) => {
                for mut change in open.drain(..) {
                    change.commit_lsn = row.lsn;
                    batch.changes.push(change);
                }
                batch.last_commit = Some(row.lsn);
            }
            Ok(Line::Message { .. }) => {}
            Ok(Line::Change(printed)) => {
                let tuple = printed.tuple.unwrap_or_default();
                for (schema, table) in printed.tables {
                    let known = key_columns.get(&(schema.clone(), table.clone()));
                    let keys = keys_of(printed.kind, &tuple, printed.old_key.as_deref(), known);
                    open.push(Change {
                        kind: printed.kind,
                        columns: tuple.iter().map(|f| f.name.clone()).collect(),
                        types: tuple.iter().map(|f| f.type_name.clone()).collect(),
                        values: tuple.iter().map(|f| f.value.clone()).collect(),
                        keys,
                        schema,
                        table,
                        xid: row.xid,
                        lsn: row.lsn,
                        commit_lsn: Lsn::default(),
                    });
                }
            }
            Err(why) => batch.undecoded.push((row, why)),
        }
    }
    batch
}

fn keys_of(
    kind: Kind,
    tuple: &[Field],
    old_key: Option<&[Field]>,
    known: Option<&Vec<String>>,
) -> Vec<(String, Datum)> {
    let find = |fields: &[Field], name: &str| {
        fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.clone())
    };
    match known.filter(|k| !k.is_empty()) {
        Some(columns) => columns
            .iter()
            .filter_map(|c| {
                let old = old_key.and_then(|o| find(o, c));
                old.or_else(|| find(tuple, c)).map(|v| (c.clone(), v))
            })
            .collect(),
        None => {
            let fields = match (old_key, kind) {
                (Some(old), _) => old,
                (None, Kind::Delete) => tuple,
                _ => &[],
            };
            fields
                .iter()
                .map(|f| (f.name.clone(), f.value.clone()))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(lsn: u64, data: &str) -> SlotRow {
        SlotRow {
            lsn: Lsn(lsn),
            xid: 7,
            data: data.into(),
        }
    }

    fn keyed() -> KeyColumns {
        let mut keys = KeyColumns::new();
        keys.insert(("public".into(), "t".into()), vec!["id".into()]);
        keys
    }

    #[test]
    fn lsn_round_trips() {
        assert_eq!("0/3000148".parse(), Ok(Lsn(0x300_0148)));
        assert_eq!(
            "1/0".parse::<Lsn>().map(|l| l.to_string()),
            Ok("1/0".into())
        );
        assert!("3000148".parse::<Lsn>().is_err());
    }

    #[test]
    fn changes_get_their_commit_and_keys() {
        let batch = assemble(
            vec![
                row(10, "BEGIN 7"),
                row(11, "table public.t: INSERT: id[integer]:1 name[text]:'a'"),
                row(12, "table public.t: UPDATE: id[integer]:1 name[text]:'b'"),
                row(13, "table public.t: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2 name[text]:'b'"),
                row(14, "table public.t: DELETE: id[integer]:2"),
                row(15, "COMMIT 7"),
                row(16, "BEGIN 8"),
                row(17, "table public.t: INSERT: id[integer]:3 name[text]:'c'"),
            ],
            &keyed(),
        );
        assert_eq!(
            batch.last_commit,
            Some(Lsn(15)),
            "the open transaction is not consumed"
        );
        assert!(batch.undecoded.is_empty());
        type Summary = (Kind, Vec<(String, Datum)>, u64, u64);
        let summary: Vec<Summary> = batch
            .changes
            .iter()
            .map(|c| (c.kind, c.keys.clone(), c.lsn.0, c.commit_lsn.0))
            .collect();
        let id = |i| vec![("id".to_string(), Datum::Int(i))];
        assert_eq!(
            summary,
            vec![
                (Kind::Insert, id(1), 11, 15),
                (Kind::Update, id(1), 12, 15),
                (Kind::Update, id(1), 13, 15),
                (Kind::Delete, id(2), 14, 15),
            ]
        );
        assert_eq!(batch.changes[2].get("id"), Some(&Datum::Int(2)));
        assert_eq!(batch.changes[1].get("name"), Some(&Datum::Text("b".into())));
        assert_eq!(batch.changes[0].key("id"), Some(&Datum::Int(1)));
    }

    #[test]
    fn without_known_keys_the_old_key_or_deleted_identity_is_used() {
        let batch = assemble(
            vec![
                row(1, "BEGIN 7"),
                row(2, "table public.u: INSERT: id[integer]:1"),
                row(3, "table public.u: DELETE: id[integer]:1"),
                row(
                    4,
                    "table public.u: UPDATE: old-key: id[integer]:5 new-tuple: id[integer]:6",
                ),
                row(5, "COMMIT 7"),
            ],
            &KeyColumns::new(),
        );
        let keys: Vec<usize> = batch.changes.iter().map(|c| c.keys.len()).collect();
        assert_eq!(keys, vec![0, 1, 1]);
        assert_eq!(batch.changes[2].key("id"), Some(&Datum::Int(5)));
    }

    #[test]
    fn a_row_that_does_not_decode_is_set_aside() {
        let batch = assemble(
            vec![
                row(1, "BEGIN 7"),
                row(2, "table public.t: INSERT: id[integer]:oops"),
                row(3, "table public.t: INSERT: id[integer]:4"),
                row(4, "COMMIT 7"),
            ],
            &keyed(),
        );
        assert_eq!(batch.undecoded.len(), 1);
        assert_eq!(batch.changes.len(), 1);
        assert_eq!(batch.last_commit, Some(Lsn(4)));
    }

    #[test]
    fn truncate_is_one_change_per_table() {
        let batch = assemble(
            vec![
                row(1, "BEGIN 7"),
                row(2, "table public.a, public.b: TRUNCATE: (no-flags)"),
                row(3, "COMMIT 7"),
            ],
            &KeyColumns::new(),
        );
        let tables: Vec<&str> = batch.changes.iter().map(|c| c.table.as_str()).collect();
        assert_eq!(tables, vec!["a", "b"]);
        assert!(batch
            .changes
            .iter()
            .all(|c| c.kind == Kind::Truncate && c.columns.is_empty()));
    }

    #[test]
    fn json_line() {
        let batch = assemble(
            vec![
                row(1, "BEGIN 7"),
                row(
                    2,
                    "table public.t: INSERT: id[integer]:1 name[text]:'it''s'",
                ),
                row(3, "COMMIT 7"),
            ],
            &keyed(),
        );
        assert_eq!(
            batch.changes[0].to_json(),
            json!({
                "kind": "insert", "schema": "public", "table": "t",
                "keys": { "id": 1 }, "values": { "id": 1, "name": "it's" },
                "xid": 7, "lsn": "0/2", "commit_lsn": "0/3",
            })
        );
    }
}
