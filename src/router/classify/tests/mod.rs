//! The classifier's tests: the corpus of single statements and their
//! verdicts (in `corpus`), and the behaviour of whole texts: splitting,
//! empty texts, spans and replay text, hints, and the cache.

mod corpus;

use super::statement::{pin, read, session, write};
use super::*;
use corpus::{corpus, extras, X};

/// The statement text as the classifier should report it.
fn statement_text(sql: &str) -> String {
    sql.trim().trim_end_matches(';').trim_end().to_owned()
}

#[test]
fn corpus_verdicts() {
    let extras = extras();
    let corpus = corpus();
    assert!(corpus.len() >= 150, "corpus has {} entries", corpus.len());
    let mut failures = Vec::new();
    for (sql, expected) in corpus {
        let statement = statement_text(sql);
        let expected = match expected {
            X::K(kind) => kind,
            X::Set(name, scope) => session(SessionChange::Set {
                name: name.to_owned(),
                scope,
                statement,
            }),
            X::Defaults(modes) => session(SessionChange::TransactionDefaults { modes, statement }),
            X::Prepare(name, inner) => session(SessionChange::Prepare {
                name: name.to_owned(),
                inner: Box::new(inner),
                statement,
            }),
        };
        let got = classify(sql, &extras);
        if got.kind != expected || got.statements.len() != 1 {
            failures.push(format!(
                "{sql}\n   expected {expected:?}\n   got      {:?} ({} statements)",
                got.kind,
                got.statements.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn kinds(sql: &str) -> Vec<Kind> {
    classify(sql, &[])
        .statements
        .into_iter()
        .map(|s| s.kind)
        .collect()
}

#[test]
fn multi_statement_texts_show_every_statement() {
    let c = classify("INSERT INTO t VALUES (1); SELECT * FROM t", &[]);
    assert_eq!(c.kind, write("insert"));
    assert_eq!(
        kinds("INSERT INTO t VALUES (1); SELECT * FROM t"),
        vec![write("insert"), read("select")]
    );

    let c = classify("BEGIN; SELECT 1; COMMIT;", &[]);
    assert_eq!(c.kind, write("multi-statement"));
    let begin = Kind::Transaction(TxControl::Begin {
        modes: TxModes::default(),
    });
    let commit = Kind::Transaction(TxControl::Commit { chain: false });
    assert_eq!(
        kinds("BEGIN; SELECT 1; COMMIT;"),
        vec![begin, read("select"), commit]
    );

    assert_eq!(
        classify("SELECT 1; SELECT 2", &[]).kind,
        read("multi-statement read")
    );
    assert_eq!(
        classify("SELECT 1; LISTEN x; DELETE FROM t", &[]).kind,
        pin(PinReason::Listen {
            channel: "x".into()
        })
    );
    assert_eq!(
        kinds("SELECT 'a;b'; SELECT $$;$$"),
        vec![read("select"), read("select")]
    );
    // Standard-conforming strings: the backslash does not escape the quote.
    assert_eq!(
        kinds("SELECT 'C:\\'; DELETE FROM t"),
        vec![read("select"), write("delete")]
    );
    assert_eq!(
        classify("SELECT 'C:\\'; DELETE FROM t", &[]).kind,
        write("delete")
    );
    assert_eq!(kinds(";; SELECT 1 ;;"), vec![read("select")]);
    // The server's lexer: `e''` escapes, comments nest, `#` is an operator.
    assert_eq!(
        kinds("SELECT e'a\\'; DELETE FROM t; --'"),
        vec![read("select")]
    );
    assert_eq!(
        kinds("SELECT 1 /* /* */ ; DELETE FROM t */"),
        vec![read("select")]
    );
    assert_eq!(kinds("SELECT $a$ $b$; DELETE $a$"), vec![read("select")]);
    assert_eq!(
        kinds("SELECT 5 # 3; DELETE FROM t"),
        vec![read("select"), write("delete")]
    );
    assert_eq!(
        kinds("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 2"),
        vec![write("ddl"), read("select")]
    );
    assert_eq!(
        kinds("CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'select 1'; COMMIT"),
        vec![
            write("ddl"),
            Kind::Transaction(TxControl::Commit { chain: false })
        ]
    );
}

#[test]
fn empty_texts_are_empty_reads() {
    for sql in ["", "   ", ";", "/* only a comment */", "-- just this\n"] {
        let c = classify(sql, &[]);
        assert_eq!(c.kind, read("empty"), "{sql:?}");
        assert!(c.statements.is_empty(), "{sql:?}");
    }
}

#[test]
fn spans_and_replay_text_are_exact() {
    let sql = concat!(
        "  /* causeway: primary */ SET LOCAL statement_timeout = 0 ;",
        " SELECT 'é' -- tail\n; RESET ALL"
    );
    let c = classify(sql, &[]);
    let texts: Vec<&str> = c.statements.iter().map(|s| &sql[s.span.clone()]).collect();
    assert_eq!(
        texts,
        vec!["SET LOCAL statement_timeout = 0", "SELECT 'é'", "RESET ALL"]
    );
    let expected = SessionChange::Set {
        name: "statement_timeout".into(),
        scope: SetScope::Local,
        statement: "SET LOCAL statement_timeout = 0".into(),
    };
    assert_eq!(c.statements[0].kind, session(expected));

    let sql = "SELECT 1;\r\nSET search_path TO \"Ünïcode\", public;";
    let c = classify(sql, &[]);
    let expected = SessionChange::Set {
        name: "search_path".into(),
        scope: SetScope::Session,
        statement: "SET search_path TO \"Ünïcode\", public".into(),
    };
    assert_eq!(c.statements.len(), 2);
    assert_eq!(c.statements[1].kind, session(expected));
}

#[test]
fn hints() {
    let hint = |sql: &str| classify(sql, &[]).hint;
    assert_eq!(
        hint("/* causeway: primary */ SELECT 1"),
        Some(Hint::Primary)
    );
    assert_eq!(
        hint("/*causeway:replica*/INSERT INTO t VALUES (1)"),
        Some(Hint::Replica)
    );
    assert_eq!(
        hint("\n  /*  CauseWay :  PRIMARY  */\nSELECT 1"),
        Some(Hint::Primary)
    );
    assert_eq!(
        hint("/* app=web */ /* causeway: replica */ SELECT 1"),
        Some(Hint::Replica)
    );
    assert_eq!(hint("/* causeway: nonsense */ SELECT 1"), None);
    assert_eq!(hint("/* causeway primary */ SELECT 1"), None);
    assert_eq!(hint("SELECT /* causeway: primary */ 1"), None);
    assert_eq!(hint("-- causeway: primary\nSELECT 1"), None);
    assert_eq!(hint("SELECT 1"), None);
    // What differs between the primary and a replica by their role is
    // asked of the primary (pgjdbc's targetServerType=primary).
    assert_eq!(hint("show transaction_read_only"), Some(Hint::Primary));
    assert_eq!(hint("SHOW in_hot_standby;"), Some(Hint::Primary));
    assert_eq!(hint("SHOW work_mem"), None);
    assert_eq!(
        hint("SELECT current_setting('transaction_read_only')"),
        Some(Hint::Primary)
    );
    assert_eq!(hint("SHOW default_transaction_read_only"), None);
    assert_eq!(
        hint("/* causeway: replica */ SHOW transaction_read_only"),
        Some(Hint::Replica)
    );
    // The hint does not change the verdict; the router weighs it.
    let c = classify("/* causeway: replica */ INSERT INTO t VALUES (1)", &[]);
    assert_eq!((c.kind, c.hint), (write("insert"), Some(Hint::Replica)));

    let c = classify(
        "/* causeway: primary */ SELECT 1; /* causeway: replica */ SELECT 2; SELECT 3",
        &[],
    );
    let hints: Vec<Option<Hint>> = c.statements.iter().map(|s| s.hint).collect();
    assert_eq!(hints, vec![Some(Hint::Primary), Some(Hint::Replica), None]);
    assert_eq!(c.hint, Some(Hint::Primary));
}
