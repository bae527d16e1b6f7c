//! Statement classification: what a SQL text asks of the server, decided
//! before any backend is touched.
//!
//! [`classify`] is a pure function from the text of a simple Query (or of a
//! Parse message) to a [`Classification`]: a verdict for the whole text plus
//! one [`StatementClass`] per statement, so the router can route a
//! multi-statement query as one unit and still follow every `BEGIN`, `SET`
//! or `LISTEN` in it. [`ClassifyCache`] memoises it for the hot path.
//!
//! Why it is shaped this way:
//! - **Tokens first.** sqlparser's PostgreSQL tokenizer knows strings
//!   (standard-conforming: a backslash does not escape), `E''` strings,
//!   dollar quotes, nested comments and quoted identifiers, so nothing
//!   inside them is ever taken for SQL. Splitting at `;`, hints,
//!   transaction control, `SET`/`RESET`, `PREPARE`/`EXECUTE`, `LISTEN`,
//!   `COPY`, `EXPLAIN` and friends are read off these tokens by small exact
//!   grammars: sqlparser lacks several of them (`RESET`, `DO`, `LOCK`,
//!   `REFRESH`, `CHECKPOINT`, `TABLE t`, `FOR NO KEY UPDATE`...) and they
//!   are tiny.
//! - **The parser only gates reads.** A statement reaches a replica only if
//!   sqlparser parses it as a query *and* no token shows a side effect.
//!   A statement whose first keyword makes it a write (`INSERT`, `CREATE`,
//!   ...) is never parsed: the keyword is proof enough, and a big `INSERT`
//!   is exactly where parsing costs most.
//! - **Side effects are found on tokens, over-approximating**: a call
//!   `name(` of a writing function anywhere (select list, `WHERE`,
//!   subqueries, CTEs, `FROM`), `FOR UPDATE`/`SHARE`, `INTO`, `( DELETE`.
//!   A false alarm costs one trip to the primary; a miss costs an error or a
//!   stale session, so every doubt goes to the primary.
//! - What no classifier can see: writing functions reached through views,
//!   triggers, operators, casts or `DO` bodies. A replica refuses those
//!   (SQLSTATE 25006) and the router retries them on the primary.

use std::ops::Range;
use std::sync::Arc;

use dashmap::DashMap;
use sqlparser::ast::{SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Whitespace};

/// The verdict on a whole SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// How to route the text as one unit: the statement's own kind when
    /// there is one; for several, `Read` only if all are reads, the first
    /// pin if any pins, else `Write` (the first write's reason, or
    /// "multi-statement"). An empty text is a `Read` ("empty").
    pub kind: Kind,
    /// The hint leading the text (that of the first statement).
    pub hint: Option<Hint>,
    /// Every non-empty statement in order, for transaction and session
    /// tracking.
    pub statements: Vec<StatementClass>,
}

/// The verdict on one statement of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementClass {
    pub kind: Kind,
    pub hint: Option<Hint>,
    /// Where the statement is in the classified text: from its first token
    /// (after leading comments) to its last, without the `;`.
    pub span: Range<usize>,
}

/// What one statement asks of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Provably without side effects: may run on a replica.
    Read { reason: &'static str },
    /// Must run on the primary. `reason` labels metrics and logs.
    Write { reason: &'static str },
    /// Opens, ends or shapes a transaction block.
    Transaction(TxControl),
    /// Session state to replay on every backend, or that pins the session.
    SessionState(SessionChange),
    /// `EXECUTE name`: route it like the prepared statement `name`
    /// (see [`SessionChange::Prepare`]).
    Execute { name: String },
}

/// Transaction control. `read_only` is `Some(true)` for `READ ONLY`,
/// `Some(false)` for `READ WRITE`, `None` when the statement says neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxControl {
    /// `BEGIN` / `START TRANSACTION`.
    Begin {
        read_only: Option<bool>,
    },
    /// `COMMIT` / `END`; `chain`: `AND CHAIN` opens a new block at once.
    Commit {
        chain: bool,
    },
    /// `ROLLBACK` / `ABORT`.
    Rollback {
        chain: bool,
    },
    Savepoint {
        name: String,
    },
    ReleaseSavepoint {
        name: String,
    },
    RollbackToSavepoint {
        name: String,
    },
    /// Ends the block: the prepared transaction leaves the session.
    PrepareTransaction {
        gid: String,
    },
    /// Outside any block, on the primary, like a write.
    CommitPrepared {
        gid: String,
    },
    RollbackPrepared {
        gid: String,
    },
    /// `SET TRANSACTION ...`: the current block only.
    SetTransaction {
        read_only: Option<bool>,
    },
}

/// Session state changes. `statement` is the statement's own text, for
/// verbatim replay; replay only what the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// `SET`, `SET TIME ZONE`, `SET ROLE`, `SET SESSION AUTHORIZATION`,
    /// `SET SCHEMA`, `SET NAMES`...; `name` is the lowercased parameter.
    Set {
        name: String,
        scope: SetScope,
        statement: String,
    },
    /// `RESET name`: forget the recorded `SET` of `name`.
    Reset {
        name: String,
    },
    ResetAll,
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION ...`: replay like a SET;
    /// `read_only` is the new default of later blocks.
    TransactionDefaults {
        read_only: Option<bool>,
        statement: String,
    },
    /// `PREPARE name AS ...`: replay it; `inner` is the verdict for a later
    /// `EXECUTE name` (PREPARE itself executes nothing).
    Prepare {
        name: String,
        inner: Box<Kind>,
        statement: String,
    },
    /// `DEALLOCATE name`, or `None` for `DEALLOCATE ALL`.
    Deallocate {
        name: Option<String>,
    },
    Discard(DiscardTarget),
    /// State that cannot be replayed: run on the primary and stay there.
    Pin(PinReason),
    /// `UNLISTEN channel`, or `None` for `UNLISTEN *`.
    Unlisten {
        channel: Option<String>,
    },
    /// `CLOSE cursor`, or `None` for `CLOSE ALL`.
    CloseCursor {
        name: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetScope {
    Session,
    /// `SET LOCAL` (and `SET CONSTRAINTS`): ends with the transaction.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardTarget {
    All,
    Plans,
    Sequences,
    Temp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinReason {
    Listen {
        channel: String,
    },
    /// `CREATE TEMP ...`, `SELECT ... INTO TEMP`, anything in `pg_temp.`.
    TempTable,
    CursorWithHold {
        name: String,
    },
    /// A session-level `pg_advisory_lock`/`pg_try_advisory_lock` (shared too).
    AdvisoryLock,
    /// `set_config(name, value, is_local)` unless `is_local` is literally true.
    SetConfig,
    /// `LOAD 'library'`.
    Load,
}

/// A leading `/* causeway: primary */` or `/* causeway: replica */`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
}

const UNPARSABLE: &str = "unparsable";

/// Classifies every statement of `sql`. `extra_write_functions` names
/// functions that write besides the built-in ones; case-insensitive, a
/// schema prefix is ignored (a call `any_schema.name(` matches).
pub fn classify(sql: &str, extra_write_functions: &[String]) -> Classification {
    let cx = Context::new(sql, extra_write_functions);
    let Some(lexemes) = lex(sql) else {
        // An unterminated string or comment: the server will refuse it too.
        let kind = Kind::Write { reason: UNPARSABLE };
        let span = 0..sql.len();
        let statement = StatementClass {
            kind: kind.clone(),
            hint: None,
            span,
        };
        return Classification {
            kind,
            hint: None,
            statements: vec![statement],
        };
    };
    let statements: Vec<StatementClass> = split(&lexemes)
        .into_iter()
        .filter_map(|piece| classify_piece(&cx, piece))
        .collect();
    Classification {
        kind: combine(&statements),
        hint: statements.first().and_then(|s| s.hint),
        statements,
    }
}

fn combine(statements: &[StatementClass]) -> Kind {
    match statements {
        [] => Kind::Read { reason: "empty" },
        [only] => only.kind.clone(),
        _ if statements
            .iter()
            .all(|s| matches!(s.kind, Kind::Read { .. })) =>
        {
            Kind::Read {
                reason: "multi-statement read",
            }
        }
        _ => {
            let pin = statements.iter().find(|s| is_pin(&s.kind));
            let write = statements.iter().find_map(|s| match s.kind {
                Kind::Write { reason } => Some(reason),
                _ => None,
            });
            match (pin, write) {
                (Some(pin), _) => pin.kind.clone(),
                (None, reason) => Kind::Write {
                    reason: reason.unwrap_or("multi-statement"),
                },
            }
        }
    }
}

fn is_pin(kind: &Kind) -> bool {
    matches!(kind, Kind::SessionState(SessionChange::Pin(_)))
}

/// Memoises [`classify`] by SQL text. Bounded: when full, about half the
/// entries are dropped (cheaper than LRU bookkeeping on every hit; the
/// texts a workload repeats come straight back). Texts longer than
/// [`ClassifyCache::MAX_CACHED_SQL_BYTES`] are classified but not kept.
/// The extra write functions are fixed per cache: build a new one on reload.
pub struct ClassifyCache {
    entries: DashMap<String, Arc<Classification>>,
    capacity: usize,
    extra_write_functions: Vec<String>,
}

impl ClassifyCache {
    pub const MAX_CACHED_SQL_BYTES: usize = 16 * 1024;

    pub fn new(capacity: usize, extra_write_functions: Vec<String>) -> Self {
        ClassifyCache {
            entries: DashMap::new(),
            capacity,
            extra_write_functions,
        }
    }

    pub fn get_or_classify(&self, sql: &str) -> Arc<Classification> {
        if let Some(hit) = self.entries.get(sql) {
            return Arc::clone(hit.value());
        }
        let classified = Arc::new(classify(sql, &self.extra_write_functions));
        if self.capacity > 0 && sql.len() <= Self::MAX_CACHED_SQL_BYTES {
            if self.entries.len() >= self.capacity {
                let mut keep = false;
                self.entries.retain(|_, _| {
                    keep = !keep;
                    keep
                });
            }
            self.entries.insert(sql.to_owned(), Arc::clone(&classified));
        }
        classified
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

// ---------------------------------------------------------------------------
// Lexing and splitting

/// A token with its byte range in the text (sqlparser gives line/column).
struct Lexeme {
    token: TokenWithSpan,
    start: usize,
    end: usize,
}

type Toks<'a> = [&'a Lexeme];

fn lex(sql: &str) -> Option<Vec<Lexeme>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    let mut cursor = ByteCursor {
        chars: sql.chars(),
        at: Location::new(1, 1),
        byte: 0,
    };
    Some(
        tokens
            .into_iter()
            .map(|token| {
                let start = cursor.seek(token.span.start);
                let end = cursor.seek(token.span.end);
                Lexeme { token, start, end }
            })
            .collect(),
    )
}

/// Walks the text forward, counting lines and columns as the tokenizer
/// does (a column is a char, `\n` starts a line), to turn token locations
/// into byte offsets in one pass.
struct ByteCursor<'a> {
    chars: std::str::Chars<'a>,
    at: Location,
    byte: usize,
}

impl ByteCursor<'_> {
    fn seek(&mut self, target: Location) -> usize {
        while (self.at.line, self.at.column) < (target.line, target.column) {
            let Some(c) = self.chars.next() else { break };
            self.byte += c.len_utf8();
            if c == '\n' {
                self.at = Location::new(self.at.line + 1, 1);
            } else {
                self.at.column += 1;
            }
        }
        self.byte
    }
}

/// Splits at `;` the way the server's grammar does: not inside parentheses
/// (`CREATE RULE ... DO (a; b)`) nor inside the `BEGIN ATOMIC ... END` body
/// of a `CREATE [OR REPLACE] FUNCTION|PROCEDURE` (psql's heuristic, but
/// counting `BEGIN` only before `ATOMIC`, so a function named `begin` does
/// not swallow the next statements).
fn split(lexemes: &[Lexeme]) -> Vec<&[Lexeme]> {
    let mut pieces = Vec::new();
    let (mut start, mut parens, mut atomic) = (0, 0usize, 0usize);
    let mut head: Vec<&str> = Vec::new();
    for (i, lexeme) in lexemes.iter().enumerate() {
        match &lexeme.token.token {
            Token::SemiColon if parens == 0 && atomic == 0 => {
                pieces.push(&lexemes[start..i]);
                start = i + 1;
                head.clear();
            }
            Token::LParen => parens += 1,
            Token::RParen => parens = parens.saturating_sub(1),
            Token::Word(w) if w.quote_style.is_none() => {
                if head.len() < 4 {
                    head.push(&w.value);
                }
                if parens == 0 && defines_routine(&head) {
                    let v = w.value.as_str();
                    if v.eq_ignore_ascii_case("begin") && next_is_atomic(&lexemes[i + 1..]) {
                        atomic += 1;
                    } else if atomic > 0 && v.eq_ignore_ascii_case("case") {
                        atomic += 1;
                    } else if atomic > 0 && v.eq_ignore_ascii_case("end") {
                        atomic -= 1;
                    }
                }
            }
            _ => {}
        }
    }
    pieces.push(&lexemes[start..]);
    pieces
}

fn defines_routine(head: &[&str]) -> bool {
    let is = |i: usize, word: &str| head.get(i).is_some_and(|w| w.eq_ignore_ascii_case(word));
    let routine = |i: usize| is(i, "function") || is(i, "procedure");
    is(0, "create") && (routine(1) || (is(1, "or") && is(2, "replace") && routine(3)))
}

fn next_is_atomic(rest: &[Lexeme]) -> bool {
    rest.iter()
        .find(|l| !matches!(l.token.token, Token::Whitespace(_)))
        .is_some_and(|l| matches!(&l.token.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("atomic")))
}

fn classify_piece(cx: &Context, piece: &[Lexeme]) -> Option<StatementClass> {
    let hint = piece
        .iter()
        .map_while(|l| match &l.token.token {
            Token::Whitespace(w) => Some(w),
            _ => None,
        })
        .find_map(|w| match w {
            Whitespace::MultiLineComment(text) => parse_hint(text),
            _ => None,
        });
    let toks: Vec<&Lexeme> = piece
        .iter()
        .filter(|l| !matches!(l.token.token, Token::Whitespace(_)))
        .collect();
    let span = toks.first()?.start..toks.last()?.end;
    Some(StatementClass {
        kind: classify_tokens(cx, &toks),
        hint,
        span,
    })
}

/// `causeway: primary|replica`, any case, any whitespace around the parts.
fn parse_hint(comment: &str) -> Option<Hint> {
    let text = comment.trim();
    let prefix = text.get(..8)?;
    if !prefix.eq_ignore_ascii_case("causeway") {
        return None;
    }
    let target = text.get(8..)?.trim_start().strip_prefix(':')?.trim();
    if target.eq_ignore_ascii_case("primary") {
        Some(Hint::Primary)
    } else if target.eq_ignore_ascii_case("replica") {
        Some(Hint::Replica)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// One statement

struct Context<'a> {
    sql: &'a str,
    /// Lowercased, without schema.
    extra_write_functions: Vec<String>,
}

impl<'a> Context<'a> {
    fn new(sql: &'a str, extra: &[String]) -> Self {
        let extra_write_functions = extra
            .iter()
            .map(|f| {
                let name = f.rsplit('.').next().unwrap_or(f);
                name.trim().trim_matches('"').to_ascii_lowercase()
            })
            .collect();
        Context {
            sql,
            extra_write_functions,
        }
    }

    fn text(&self, t: &Toks) -> String {
        match (t.first(), t.last()) {
            (Some(first), Some(last)) => {
                self.sql.get(first.start..last.end).unwrap_or("").to_owned()
            }
            _ => String::new(),
        }
    }

    fn is_extra(&self, name: &str) -> bool {
        self.extra_write_functions.iter().any(|f| f == name)
    }
}

fn read(reason: &'static str) -> Kind {
    Kind::Read { reason }
}

fn write(reason: &'static str) -> Kind {
    Kind::Write { reason }
}

fn unparsable() -> Kind {
    write(UNPARSABLE)
}

fn session(change: SessionChange) -> Kind {
    Kind::SessionState(change)
}

fn pin(reason: PinReason) -> Kind {
    session(SessionChange::Pin(reason))
}

fn classify_tokens(cx: &Context, t: &Toks) -> Kind {
    if is(t, 0, &Token::LParen) {
        return query(cx, t, "select");
    }
    let Some(Token::Word(head)) = tok(t, 0) else {
        return unparsable();
    };
    if head.quote_style.is_some() {
        return unparsable();
    }
    match head.value.to_ascii_uppercase().as_str() {
        "SELECT" => query(cx, t, "select"),
        "VALUES" => query(cx, t, "values"),
        "WITH" => query(cx, t, "with"),
        "TABLE" => table(cx, t),
        "SHOW" => read("show"),
        // A cursor outside a block is WITH HOLD, and that pinned the session.
        "FETCH" | "MOVE" => read("fetch"),
        "EXPLAIN" => explain(cx, t),
        "COPY" => copy(cx, t),
        "DECLARE" => declare(cx, t),
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE" => {
            transaction(t).map_or_else(unparsable, Kind::Transaction)
        }
        "PREPARE" => prepare(cx, t),
        "EXECUTE" => execute(cx, t),
        "SET" => set(cx, t),
        "RESET" => reset(t),
        "DISCARD" => discard(t),
        "DEALLOCATE" => deallocate(t),
        "LISTEN" => match (ident(t, 1), t.len()) {
            (Some(channel), 2) => pin(PinReason::Listen { channel }),
            _ => unparsable(),
        },
        "UNLISTEN" => match (tok(t, 1), ident(t, 1), t.len()) {
            (Some(Token::Mul), _, 2) => session(SessionChange::Unlisten { channel: None }),
            (_, Some(channel), 2) => session(SessionChange::Unlisten {
                channel: Some(channel),
            }),
            _ => unparsable(),
        },
        "LOAD" => match (string_lit(t, 1), t.len()) {
            (Some(_), 2) => pin(PinReason::Load),
            _ => unparsable(),
        },
        "CLOSE" => match (kw(t, 1, "ALL"), ident(t, 1), t.len()) {
            (true, _, 2) => session(SessionChange::CloseCursor { name: None }),
            (false, Some(name), 2) => session(SessionChange::CloseCursor { name: Some(name) }),
            _ => unparsable(),
        },
        "CREATE" if creates_temp(t) => pin(PinReason::TempTable),
        other => match write_keyword_reason(other) {
            // The first keyword decides; only a session pin can outrank it.
            Some(reason) => match function_effect(cx, t) {
                Some(Effect::Pin(p)) => pin(p),
                _ => write(reason),
            },
            None => unparsable(),
        },
    }
}

/// Statements that are writes by their first keyword alone.
fn write_keyword_reason(head: &str) -> Option<&'static str> {
    Some(match head {
        "INSERT" => "insert",
        "UPDATE" => "update",
        "DELETE" => "delete",
        "MERGE" => "merge",
        "CREATE" | "ALTER" | "DROP" | "COMMENT" | "SECURITY" | "IMPORT" | "REASSIGN" => "ddl",
        "TRUNCATE" => "truncate",
        "GRANT" => "grant",
        "REVOKE" => "revoke",
        "CALL" => "call",
        "DO" => "do",
        "VACUUM" => "vacuum",
        "ANALYZE" | "ANALYSE" => "analyze",
        "CLUSTER" => "cluster",
        "REINDEX" => "reindex",
        "CHECKPOINT" => "checkpoint",
        "LOCK" => "lock",
        "REFRESH" => "refresh materialized view",
        "NOTIFY" => "notify",
        _ => return None,
    })
}

/// SELECT / VALUES / WITH / `(`: a read only if no token shows a side
/// effect and sqlparser agrees it is a query.
fn query(cx: &Context, t: &Toks, reason: &'static str) -> Kind {
    if let Some(effect) = query_side_effect(cx, t) {
        return effect;
    }
    match parse_query(t) {
        Ok(()) => read(reason),
        Err(reason) => write(reason),
    }
}

fn query_side_effect(cx: &Context, t: &Toks) -> Option<Kind> {
    let function = function_effect(cx, t);
    if let Some(Effect::Pin(p)) = function {
        return Some(pin(p));
    }
    let into = (0..t.len()).find(|&i| kw(t, i, "INTO"));
    if let Some(i) = into {
        let temp = |j| kw(t, j, "TEMP") || kw(t, j, "TEMPORARY");
        if temp(i + 1)
            || (kw_any(t, i + 1, &["LOCAL", "GLOBAL"]) && temp(i + 2))
            || in_pg_temp(t, i + 1)
        {
            return Some(pin(PinReason::TempTable));
        }
    }
    let dml = |i| {
        ["INSERT", "UPDATE", "DELETE", "MERGE"]
            .into_iter()
            .find(|k| kw(t, i, k))
    };
    // `( DELETE` can only be a data-modifying CTE body.
    if (1..t.len()).any(|i| is(t, i - 1, &Token::LParen) && dml(i).is_some()) {
        return Some(write("data-modifying CTE"));
    }
    if kw(t, 0, "WITH") {
        // The main statement after the CTE list, at parenthesis depth 0.
        let mut depth = 0usize;
        for i in 0..t.len() {
            match tok(t, i) {
                Some(Token::LParen) => depth += 1,
                Some(Token::RParen) => depth = depth.saturating_sub(1),
                _ if depth == 0 && !kw_any(t, i.wrapping_sub(1), &["FOR", "KEY"]) => {
                    if let Some(keyword) = dml(i) {
                        return Some(write(write_keyword_reason(keyword).unwrap_or(UNPARSABLE)));
                    }
                }
                _ => {}
            }
        }
    }
    if into.is_some() {
        return Some(write("select into"));
    }
    for i in 0..t.len() {
        if kw(t, i, "FOR") {
            if kw(t, i + 1, "UPDATE")
                || (kw(t, i + 1, "NO") && kw(t, i + 2, "KEY") && kw(t, i + 3, "UPDATE"))
            {
                return Some(write("for update"));
            }
            if kw(t, i + 1, "SHARE") || (kw(t, i + 1, "KEY") && kw(t, i + 2, "SHARE")) {
                return Some(write("for share"));
            }
        }
    }
    match function {
        Some(Effect::Write(reason)) => Some(write(reason)),
        _ => None,
    }
}

fn parse_query(t: &Toks) -> Result<(), &'static str> {
    let tokens = t.iter().map(|l| l.token.clone()).collect();
    let statements = Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|_| UNPARSABLE)?;
    match statements.as_slice() {
        [Statement::Query(query)] => match query.body.as_ref() {
            SetExpr::Insert(_) => Err("insert"),
            SetExpr::Update(_) => Err("update"),
            SetExpr::Delete(_) => Err("delete"),
            SetExpr::Merge(_) => Err("merge"),
            _ => Ok(()),
        },
        _ => Err(UNPARSABLE),
    }
}

/// `TABLE [ONLY] name [*]`, which sqlparser does not know.
fn table(cx: &Context, t: &Toks) -> Kind {
    let mut i = if kw(t, 1, "ONLY") { 2 } else { 1 };
    if let Some(end) = qualified_name_end(t, i) {
        i = end;
        if is(t, i, &Token::Mul) {
            i += 1;
        }
        if i == t.len() {
            return read("table");
        }
    }
    query(cx, t, "table")
}

fn explain(cx: &Context, t: &Toks) -> Kind {
    let mut analyze = false;
    let mut i = 1;
    if kw_any(t, 1, &["ANALYZE", "ANALYSE"]) {
        analyze = true;
        i = if kw(t, 2, "VERBOSE") { 3 } else { 2 };
    } else if kw(t, 1, "VERBOSE") {
        i = 2;
    } else if is(t, 1, &Token::LParen) && !starts_query(t, 2) {
        let Some(close) = matching_paren(t, 1) else {
            return unparsable();
        };
        analyze = split_commas(&t[2..close])
            .iter()
            .any(|option| analyze_option(option));
        i = close + 1;
    }
    let inner = &t[i.min(t.len())..];
    if inner.is_empty() {
        return unparsable();
    }
    if !analyze {
        // Planning only: the executor never starts, so even a write is a read.
        return read("explain");
    }
    match classify_tokens(cx, inner) {
        Kind::Read { .. } => read("explain analyze"),
        pinned @ Kind::SessionState(SessionChange::Pin(_)) => pinned,
        _ => write("explain analyze of write"),
    }
}

/// `ANALYZE [value]` in an EXPLAIN option list; the server takes false,
/// off and 0 (any case, quoted or not) as false.
fn analyze_option(option: &Toks) -> bool {
    if !kw_any(option, 0, &["ANALYZE", "ANALYSE"]) {
        return false;
    }
    let falsy = |s: &str| {
        ["false", "off", "0"]
            .iter()
            .any(|f| s.eq_ignore_ascii_case(f))
    };
    match &option[1..] {
        [] => true,
        [value] => match &value.token.token {
            Token::Word(w) => !falsy(&w.value),
            Token::Number(n, _) => !falsy(n),
            Token::SingleQuotedString(s) => !falsy(s),
            _ => true,
        },
        _ => true,
    }
}

fn copy(cx: &Context, t: &Toks) -> Kind {
    let mut i;
    if is(t, 1, &Token::LParen) {
        let Some(close) = matching_paren(t, 1) else {
            return unparsable();
        };
        match classify_tokens(cx, &t[2..close]) {
            Kind::Read { .. } => {}
            effect @ (Kind::Write { .. } | Kind::SessionState(SessionChange::Pin(_))) => {
                return effect
            }
            _ => return unparsable(),
        }
        i = close + 1;
    } else {
        let Some(end) = qualified_name_end(t, if kw(t, 1, "BINARY") { 2 } else { 1 }) else {
            return unparsable();
        };
        i = end;
        if is(t, i, &Token::LParen) {
            let Some(close) = matching_paren(t, i) else {
                return unparsable();
            };
            i = close + 1;
        }
    }
    if kw(t, i, "FROM") {
        return write("copy from");
    }
    if !kw(t, i, "TO") {
        return unparsable();
    }
    if kw(t, i + 1, "STDOUT") {
        read("copy to stdout")
    } else if kw(t, i + 1, "PROGRAM") {
        write("copy to program")
    } else {
        // A file on the server's disk: the primary is the server meant.
        write("copy to file")
    }
}

/// `DECLARE name [BINARY] [ASENSITIVE|INSENSITIVE] [[NO] SCROLL] CURSOR
/// [{WITH|WITHOUT} HOLD] FOR query`. Without HOLD the cursor lives in the
/// current block, so it is as much a read as its query.
fn declare(cx: &Context, t: &Toks) -> Kind {
    let Some(name) = ident(t, 1) else {
        return unparsable();
    };
    let mut i = 2;
    while kw_any(
        t,
        i,
        &["BINARY", "ASENSITIVE", "INSENSITIVE", "NO", "SCROLL"],
    ) {
        i += 1;
    }
    if !kw(t, i, "CURSOR") {
        return unparsable();
    }
    i += 1;
    let hold = kw(t, i, "WITH") && kw(t, i + 1, "HOLD");
    if hold || (kw(t, i, "WITHOUT") && kw(t, i + 1, "HOLD")) {
        i += 2;
    }
    if !kw(t, i, "FOR") || i + 1 >= t.len() {
        return unparsable();
    }
    if hold {
        return pin(PinReason::CursorWithHold { name });
    }
    match classify_tokens(cx, &t[i + 1..]) {
        Kind::Read { .. } => read("declare cursor"),
        effect @ (Kind::Write { .. } | Kind::SessionState(SessionChange::Pin(_))) => effect,
        _ => unparsable(),
    }
}

fn transaction(t: &Toks) -> Option<TxControl> {
    let name_at = |j: usize| ident(t, j).filter(|_| t.len() == j + 1);
    let gid_at = |j: usize| string_lit(t, j).filter(|_| t.len() == j + 1);
    let after_work = |j: usize| {
        if kw_any(t, j, &["WORK", "TRANSACTION"]) {
            j + 1
        } else {
            j
        }
    };
    if kw(t, 0, "BEGIN") {
        transaction_modes(t, after_work(1)).map(|read_only| TxControl::Begin { read_only })
    } else if kw(t, 0, "START") && kw(t, 1, "TRANSACTION") {
        transaction_modes(t, 2).map(|read_only| TxControl::Begin { read_only })
    } else if kw(t, 0, "COMMIT") && kw(t, 1, "PREPARED") {
        gid_at(2).map(|gid| TxControl::CommitPrepared { gid })
    } else if kw_any(t, 0, &["COMMIT", "END"]) {
        chain(t, after_work(1)).map(|chain| TxControl::Commit { chain })
    } else if kw(t, 0, "ROLLBACK") && kw(t, 1, "PREPARED") {
        gid_at(2).map(|gid| TxControl::RollbackPrepared { gid })
    } else if kw(t, 0, "ROLLBACK") && kw(t, after_work(1), "TO") {
        let to = after_work(1);
        let j = if kw(t, to + 1, "SAVEPOINT") {
            to + 2
        } else {
            to + 1
        };
        name_at(j).map(|name| TxControl::RollbackToSavepoint { name })
    } else if kw_any(t, 0, &["ROLLBACK", "ABORT"]) {
        chain(t, after_work(1)).map(|chain| TxControl::Rollback { chain })
    } else if kw(t, 0, "SAVEPOINT") {
        name_at(1).map(|name| TxControl::Savepoint { name })
    } else if kw(t, 0, "RELEASE") {
        name_at(if kw(t, 1, "SAVEPOINT") { 2 } else { 1 })
            .map(|name| TxControl::ReleaseSavepoint { name })
    } else {
        None
    }
}

/// `[AND [NO] CHAIN]` ending the statement.
fn chain(t: &Toks, i: usize) -> Option<bool> {
    if i == t.len() {
        Some(false)
    } else if kw(t, i, "AND") && kw(t, i + 1, "CHAIN") && t.len() == i + 2 {
        Some(true)
    } else if kw(t, i, "AND") && kw(t, i + 1, "NO") && kw(t, i + 2, "CHAIN") && t.len() == i + 3 {
        Some(false)
    } else {
        None
    }
}

/// A transaction mode list ending the statement; `None` on a syntax error.
/// Like the server, the last access mode wins.
fn transaction_modes(t: &Toks, mut i: usize) -> Option<Option<bool>> {
    let mut read_only = None;
    let mut first = true;
    while i < t.len() {
        if !first && is(t, i, &Token::Comma) {
            i += 1;
        }
        first = false;
        if kw(t, i, "ISOLATION") && kw(t, i + 1, "LEVEL") {
            i += 2;
            if kw(t, i, "SERIALIZABLE") {
                i += 1;
            } else if kw(t, i, "REPEATABLE") && kw(t, i + 1, "READ") {
                i += 2;
            } else if kw(t, i, "READ") && kw_any(t, i + 1, &["COMMITTED", "UNCOMMITTED"]) {
                i += 2;
            } else {
                return None;
            }
        } else if kw(t, i, "READ") && kw_any(t, i + 1, &["ONLY", "WRITE"]) {
            read_only = Some(kw(t, i + 1, "ONLY"));
            i += 2;
        } else if kw(t, i, "DEFERRABLE") {
            i += 1;
        } else if kw(t, i, "NOT") && kw(t, i + 1, "DEFERRABLE") {
            i += 2;
        } else {
            return None;
        }
    }
    Some(read_only)
}

/// `PREPARE TRANSACTION 'gid'` or `PREPARE name [(types)] AS statement`.
fn prepare(cx: &Context, t: &Toks) -> Kind {
    if kw(t, 1, "TRANSACTION") && string_lit(t, 2).is_some() {
        return match (string_lit(t, 2), t.len()) {
            (Some(gid), 3) => Kind::Transaction(TxControl::PrepareTransaction { gid }),
            _ => unparsable(),
        };
    }
    let Some(name) = ident(t, 1) else {
        return unparsable();
    };
    let mut i = 2;
    if is(t, 2, &Token::LParen) {
        let Some(close) = matching_paren(t, 2) else {
            return unparsable();
        };
        i = close + 1;
    }
    if !kw(t, i, "AS") || i + 1 >= t.len() {
        return unparsable();
    }
    let inner = Box::new(classify_tokens(cx, &t[i + 1..]));
    session(SessionChange::Prepare {
        name,
        inner,
        statement: cx.text(t),
    })
}

/// `EXECUTE name [(arguments)]`: the arguments may call writing functions.
fn execute(cx: &Context, t: &Toks) -> Kind {
    let Some(name) = ident(t, 1) else {
        return unparsable();
    };
    if t.len() > 2 && !(is(t, 2, &Token::LParen) && matching_paren(t, 2) == Some(t.len() - 1)) {
        return unparsable();
    }
    match function_effect(cx, &t[2.min(t.len())..]) {
        Some(Effect::Pin(p)) => pin(p),
        Some(Effect::Write(reason)) => write(reason),
        None => Kind::Execute { name },
    }
}

fn set(cx: &Context, t: &Toks) -> Kind {
    let (scope, i) = if kw(t, 1, "LOCAL") {
        (SetScope::Local, 2)
    } else if kw(t, 1, "SESSION") && !kw_any(t, 2, &["AUTHORIZATION", "CHARACTERISTICS"]) {
        (SetScope::Session, 2)
    } else {
        (SetScope::Session, 1)
    };
    let assigns = |j: usize| kw(t, j, "TO") || is(t, j, &Token::Eq);
    let statement = cx.text(t);
    if kw(t, i, "TRANSACTION") {
        if kw(t, i + 1, "SNAPSHOT") {
            return match (string_lit(t, i + 2), t.len() == i + 3) {
                (Some(_), true) => Kind::Transaction(TxControl::SetTransaction { read_only: None }),
                _ => unparsable(),
            };
        }
        return match transaction_modes(t, i + 1).filter(|_| t.len() > i + 1) {
            Some(read_only) => Kind::Transaction(TxControl::SetTransaction { read_only }),
            None => unparsable(),
        };
    }
    if kw(t, i, "SESSION")
        && kw(t, i + 1, "CHARACTERISTICS")
        && kw(t, i + 2, "AS")
        && kw(t, i + 3, "TRANSACTION")
    {
        return match transaction_modes(t, i + 4).filter(|_| t.len() > i + 4) {
            Some(read_only) => session(SessionChange::TransactionDefaults {
                read_only,
                statement,
            }),
            None => unparsable(),
        };
    }
    if kw(t, i, "CONSTRAINTS") && !assigns(i + 1) && t.len() > i + 1 {
        let name = "constraints".to_owned();
        return session(SessionChange::Set {
            name,
            scope: SetScope::Local,
            statement,
        });
    }
    // (name, where its value starts, whether the value may be empty)
    let special = if kw(t, i, "TIME") && kw(t, i + 1, "ZONE") {
        Some(("timezone", i + 2, false))
    } else if kw(t, i, "SESSION") && kw(t, i + 1, "AUTHORIZATION") {
        Some(("session_authorization", i + 2, false))
    } else if kw(t, i, "XML") && kw(t, i + 1, "OPTION") {
        Some(("xmloption", i + 2, false))
    } else if assigns(i + 1) {
        None
    } else if kw(t, i, "ROLE") {
        Some(("role", i + 1, false))
    } else if kw(t, i, "SCHEMA") {
        Some(("search_path", i + 1, false))
    } else if kw(t, i, "NAMES") {
        Some(("client_encoding", i + 1, true))
    } else if kw(t, i, "CATALOG") {
        Some(("catalog", i + 1, false))
    } else {
        None
    };
    let name = match special {
        Some((name, value, may_be_empty)) if may_be_empty || t.len() > value => name.to_owned(),
        Some(_) => return unparsable(),
        None => match var_name(t, i) {
            Some((name, j)) if assigns(j) && t.len() > j + 1 => name,
            Some((name, j)) if kw(t, j, "FROM") && kw(t, j + 1, "CURRENT") && t.len() == j + 2 => {
                name
            }
            _ => return unparsable(),
        },
    };
    session(SessionChange::Set {
        name,
        scope,
        statement,
    })
}

fn reset(t: &Toks) -> Kind {
    if kw(t, 1, "ALL") && t.len() == 2 {
        return session(SessionChange::ResetAll);
    }
    let named = if kw(t, 1, "TIME") && kw(t, 2, "ZONE") {
        Some(("timezone".to_owned(), 3))
    } else if kw(t, 1, "SESSION") && kw(t, 2, "AUTHORIZATION") {
        Some(("session_authorization".to_owned(), 3))
    } else if kw(t, 1, "TRANSACTION") && kw(t, 2, "ISOLATION") && kw(t, 3, "LEVEL") {
        Some(("transaction_isolation".to_owned(), 4))
    } else {
        var_name(t, 1)
    };
    match named {
        Some((name, end)) if end == t.len() => session(SessionChange::Reset { name }),
        _ => unparsable(),
    }
}

fn discard(t: &Toks) -> Kind {
    let target = if kw(t, 1, "ALL") {
        DiscardTarget::All
    } else if kw(t, 1, "PLANS") {
        DiscardTarget::Plans
    } else if kw(t, 1, "SEQUENCES") {
        DiscardTarget::Sequences
    } else if kw_any(t, 1, &["TEMP", "TEMPORARY"]) {
        DiscardTarget::Temp
    } else {
        return unparsable();
    };
    if t.len() == 2 {
        session(SessionChange::Discard(target))
    } else {
        unparsable()
    }
}

fn deallocate(t: &Toks) -> Kind {
    let i = if kw(t, 1, "PREPARE") { 2 } else { 1 };
    match (kw(t, i, "ALL"), ident(t, i), t.len() == i + 1) {
        (true, _, true) => session(SessionChange::Deallocate { name: None }),
        (false, Some(name), true) => session(SessionChange::Deallocate { name: Some(name) }),
        _ => unparsable(),
    }
}

/// `CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP|TEMPORARY ...`, or any object
/// put in `pg_temp.` (a view over a temp table is temporary too).
fn creates_temp(t: &Toks) -> bool {
    let mut i = if kw(t, 1, "OR") && kw(t, 2, "REPLACE") {
        3
    } else {
        1
    };
    if kw_any(t, i, &["GLOBAL", "LOCAL"]) {
        i += 1;
    }
    kw_any(t, i, &["TEMP", "TEMPORARY"]) || (0..t.len()).any(|j| in_pg_temp(t, j))
}

fn in_pg_temp(t: &Toks, i: usize) -> bool {
    matches!(tok(t, i), Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("pg_temp"))
        && is(t, i + 1, &Token::Period)
}

// ---------------------------------------------------------------------------
// Writing functions

#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    Pin(PinReason),
    Write(&'static str),
}

/// The strongest effect of any writing function called in `t`: a pin
/// wins, else the first write. A call is a name followed by `(`, with any
/// schema; quoted names count too (`"nextval"(...)` calls nextval).
/// Configured functions also count in attribute notation (`row.fn`), which
/// calls a function taking the row's composite type.
fn function_effect(cx: &Context, t: &Toks) -> Option<Effect> {
    let mut first_write = None;
    for i in 0..t.len() {
        let Some(Token::Word(w)) = tok(t, i) else {
            continue;
        };
        let called = is(t, i + 1, &Token::LParen);
        let attribute = !called && i > 0 && is(t, i - 1, &Token::Period);
        if !called && !(attribute && !cx.extra_write_functions.is_empty()) {
            continue;
        }
        let name = w.value.to_ascii_lowercase();
        let effect = if called {
            builtin_effect(&name, t, i + 1)
        } else {
            None
        };
        let effect = effect.or_else(|| {
            cx.is_extra(&name)
                .then_some(Effect::Write("configured writing function"))
        });
        match effect {
            Some(Effect::Pin(p)) => return Some(Effect::Pin(p)),
            Some(effect) if first_write.is_none() => first_write = Some(effect),
            _ => {}
        }
    }
    first_write
}

fn builtin_effect(name: &str, t: &Toks, open: usize) -> Option<Effect> {
    let reason = match name {
        "nextval" => "writing function nextval",
        "setval" => "writing function setval",
        // Read-only, but fails on a server where nextval was not called.
        "currval" => "writing function currval",
        "lastval" => "writing function lastval",
        "pg_notify" => "writing function pg_notify",
        "txid_current" => "writing function txid_current",
        "pg_current_xact_id" => "writing function pg_current_xact_id",
        "set_config" if is_local_set_config(t, open) => "writing function set_config",
        "set_config" => return Some(Effect::Pin(PinReason::SetConfig)),
        "pg_advisory_lock"
        | "pg_advisory_lock_shared"
        | "pg_try_advisory_lock"
        | "pg_try_advisory_lock_shared" => {
            return Some(Effect::Pin(PinReason::AdvisoryLock));
        }
        "loread" | "lowrite" => "large object function",
        "pg_current_wal_lsn" | "pg_current_wal_insert_lsn" | "pg_current_wal_flush_lsn" => {
            "primary-only function"
        }
        "pg_switch_wal"
        | "pg_switch_xlog"
        | "pg_create_restore_point"
        | "pg_backup_start"
        | "pg_backup_stop"
        | "pg_start_backup"
        | "pg_stop_backup"
        | "pg_log_standby_snapshot" => "wal control function",
        "pg_cancel_backend" | "pg_terminate_backend" => "backend signal function",
        "pg_reload_conf" | "pg_rotate_logfile" => "server control function",
        "pg_stat_statements_reset" => "statistics reset function",
        "pg_create_physical_replication_slot"
        | "pg_create_logical_replication_slot"
        | "pg_copy_physical_replication_slot"
        | "pg_copy_logical_replication_slot"
        | "pg_drop_replication_slot"
        | "pg_replication_slot_advance" => "replication function",
        _ if name.starts_with("pg_advisory_") || name.starts_with("pg_try_advisory_") => {
            "advisory lock function"
        }
        _ if name.starts_with("lo_") => "large object function",
        _ if name.starts_with("pg_logical_") || name.starts_with("pg_replication_origin_") => {
            "replication function"
        }
        _ if name.starts_with("pg_stat_reset") => "statistics reset function",
        _ if name.starts_with("dblink") => "dblink function",
        _ => return None,
    };
    Some(Effect::Write(reason))
}

/// `set_config(name, value, true)`: the setting dies with the transaction,
/// so it needs the primary but no pin. Anything but a literal true pins.
fn is_local_set_config(t: &Toks, open: usize) -> bool {
    let Some(close) = matching_paren(t, open) else {
        return false;
    };
    match split_commas(&t[open + 1..close]).as_slice() {
        [_, _, [flag]] => match &flag.token.token {
            Token::Word(w) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case("true"),
            Token::SingleQuotedString(s) => ["t", "true", "on", "yes", "1"]
                .iter()
                .any(|v| s.eq_ignore_ascii_case(v)),
            _ => false,
        },
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Token helpers

fn tok<'a>(t: &'a Toks, i: usize) -> Option<&'a Token> {
    t.get(i).map(|l| &l.token.token)
}

fn is(t: &Toks, i: usize, token: &Token) -> bool {
    tok(t, i) == Some(token)
}

/// An unquoted keyword (quoting makes a keyword an identifier).
fn kw(t: &Toks, i: usize, keyword: &str) -> bool {
    matches!(tok(t, i), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(keyword))
}

fn kw_any(t: &Toks, i: usize, keywords: &[&str]) -> bool {
    keywords.iter().any(|k| kw(t, i, k))
}

/// An identifier as the server folds it: unquoted is lowercased.
fn ident(t: &Toks, i: usize) -> Option<String> {
    match tok(t, i)? {
        Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
        Token::Word(w) => Some(w.value.to_ascii_lowercase()),
        _ => None,
    }
}

fn string_lit(t: &Toks, i: usize) -> Option<String> {
    match tok(t, i)? {
        Token::SingleQuotedString(s)
        | Token::EscapedStringLiteral(s)
        | Token::UnicodeStringLiteral(s)
        | Token::NationalStringLiteral(s) => Some(s.clone()),
        Token::DollarQuotedString(d) => Some(d.value.clone()),
        _ => None,
    }
}

/// A configuration parameter name, `a` or `a.b`, lowercased (the server
/// compares them case-insensitively even when quoted), and where it ends.
fn var_name(t: &Toks, i: usize) -> Option<(String, usize)> {
    let Some(Token::Word(first)) = tok(t, i) else {
        return None;
    };
    let mut name = first.value.to_ascii_lowercase();
    let mut j = i + 1;
    while is(t, j, &Token::Period) {
        let Some(Token::Word(part)) = tok(t, j + 1) else {
            return None;
        };
        name.push('.');
        name.push_str(&part.value.to_ascii_lowercase());
        j += 2;
    }
    Some((name, j))
}

/// Where `name[.name...]` starting at `i` ends.
fn qualified_name_end(t: &Toks, i: usize) -> Option<usize> {
    var_name(t, i).map(|(_, end)| end)
}

fn starts_query(t: &Toks, i: usize) -> bool {
    kw_any(t, i, &["SELECT", "WITH", "VALUES", "TABLE"]) || is(t, i, &Token::LParen)
}

/// The index of the `)` closing the `(` at `open`.
fn matching_paren(t: &Toks, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, lexeme) in t.iter().enumerate().skip(open) {
        match lexeme.token.token {
            Token::LParen => depth += 1,
            Token::RParen if depth <= 1 => return Some(i),
            Token::RParen => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Splits a list at its top-level commas.
fn split_commas<'t, 'a>(t: &'t Toks<'a>) -> Vec<&'t Toks<'a>> {
    let mut parts = Vec::new();
    let (mut start, mut depth) = (0, 0usize);
    for (i, lexeme) in t.iter().enumerate() {
        match lexeme.token.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => {
                parts.push(&t[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&t[start..]);
    parts
}
