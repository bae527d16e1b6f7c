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
                    let word = |k: &str| w.value.eq_ignore_ascii_case(k);
                    let opens = word("begin") && next_is_atomic(&lexemes[i + 1..]);
                    if opens || (atomic > 0 && word("case")) {
                        atomic += 1;
                    } else if atomic > 0 && word("end") {
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
    let next = rest
        .iter()
        .find(|l| !matches!(l.token.token, Token::Whitespace(_)));
    next.is_some_and(|l| is_keyword(&l.token.token, "atomic"))
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
    statement_kind(cx, t).unwrap_or_else(unparsable)
}

/// `None` when the statement is not one this module can read: the server
/// will judge it, on the primary.
fn statement_kind(cx: &Context, t: &Toks) -> Option<Kind> {
    if lparen(t, 0) {
        return Some(query(cx, t, "select"));
    }
    let head = match tok(t, 0)? {
        Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => return None,
    };
    let kind = match head.as_str() {
        "SELECT" => query(cx, t, "select"),
        "VALUES" => query(cx, t, "values"),
        "WITH" => query(cx, t, "with"),
        "TABLE" => table(cx, t),
        "SHOW" => read("show"),
        // A cursor outside a block is WITH HOLD, and that pinned the session.
        "FETCH" | "MOVE" => read("fetch"),
        "EXPLAIN" => explain(cx, t)?,
        "COPY" => copy(cx, t)?,
        "DECLARE" => declare(cx, t)?,
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE" => {
            Kind::Transaction(transaction(t)?)
        }
        "PREPARE" => prepare(cx, t)?,
        "EXECUTE" => execute(cx, t)?,
        "SET" => set(cx, t)?,
        "RESET" => session(reset(t)?),
        "DISCARD" => session(SessionChange::Discard(discard(t)?)),
        "DEALLOCATE" => {
            let i = if kw(t, 1, "PREPARE") { 2 } else { 1 };
            session(SessionChange::Deallocate {
                name: name_or_all(t, i)?,
            })
        }
        "LISTEN" => pin(PinReason::Listen {
            channel: final_ident(t, 1)?,
        }),
        "UNLISTEN" if is(t, 1, &Token::Mul) && t.len() == 2 => {
            session(SessionChange::Unlisten { channel: None })
        }
        "UNLISTEN" => session(SessionChange::Unlisten {
            channel: Some(final_ident(t, 1)?),
        }),
        "LOAD" => final_string(t, 1).map(|_| pin(PinReason::Load))?,
        "CLOSE" => session(SessionChange::CloseCursor {
            name: name_or_all(t, 1)?,
        }),
        "CREATE" if creates_temp(t) => pin(PinReason::TempTable),
        other => {
            // The first keyword decides; only a session pin can outrank it.
            let reason = write_keyword_reason(other)?;
            match function_effect(cx, t) {
                Some(Effect::Pin(p)) => pin(p),
                _ => write(reason),
            }
        }
    };
    Some(kind)
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
        let temp = |j| kw_any(t, j, &["TEMP", "TEMPORARY"]);
        let local = kw_any(t, i + 1, &["LOCAL", "GLOBAL"]) && temp(i + 2);
        if temp(i + 1) || local || in_pg_temp(t, i + 1) {
            return Some(pin(PinReason::TempTable));
        }
    }
    let dml = |i| {
        ["INSERT", "UPDATE", "DELETE", "MERGE"]
            .into_iter()
            .find(|k| kw(t, i, k))
    };
    // `( DELETE` can only be a data-modifying CTE body.
    if (1..t.len()).any(|i| lparen(t, i - 1) && dml(i).is_some()) {
        return Some(write("data-modifying CTE"));
    }
    if kw(t, 0, "WITH") {
        // The main statement after the CTE list, at parenthesis depth 0.
        let mut depth = 0usize;
        for i in 0..t.len() {
            match tok(t, i) {
                Some(Token::LParen) => depth += 1,
                Some(Token::RParen) => depth = depth.saturating_sub(1),
                _ if depth > 0 || kw_any(t, i.wrapping_sub(1), &["FOR", "KEY"]) => {}
                _ => {
                    if let Some(reason) = dml(i).and_then(write_keyword_reason) {
                        return Some(write(reason));
                    }
                }
            }
        }
    }
    if into.is_some() {
        return Some(write("select into"));
    }
    for i in 0..t.len() {
        let no_key_update = kw(t, i + 1, "NO") && kw(t, i + 2, "KEY") && kw(t, i + 3, "UPDATE");
        let key_share = kw(t, i + 1, "KEY") && kw(t, i + 2, "SHARE");
        if kw(t, i, "FOR") && (kw(t, i + 1, "UPDATE") || no_key_update) {
            return Some(write("for update"));
        }
        if kw(t, i, "FOR") && (kw(t, i + 1, "SHARE") || key_share) {
            return Some(write("for share"));
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
    let name_end = qualified_name_end(t, if kw(t, 1, "ONLY") { 2 } else { 1 });
    let end = name_end.map(|end| end + usize::from(is(t, end, &Token::Mul)));
    if end == Some(t.len()) {
        read("table")
    } else {
        query(cx, t, "table")
    }
}

/// The verdict on a statement nested in another (EXPLAIN ANALYZE, COPY
/// (query), DECLARE): a read keeps `reason`, a write or pin passes through,
/// anything else is not allowed there.
fn nested(cx: &Context, t: &Toks, reason: &'static str) -> Option<Kind> {
    match classify_tokens(cx, t) {
        Kind::Read { .. } => Some(read(reason)),
        effect @ (Kind::Write { .. } | Kind::SessionState(SessionChange::Pin(_))) => Some(effect),
        _ => None,
    }
}

fn explain(cx: &Context, t: &Toks) -> Option<Kind> {
    let (analyze, i) = if kw_any(t, 1, &["ANALYZE", "ANALYSE"]) {
        (true, if kw(t, 2, "VERBOSE") { 3 } else { 2 })
    } else if kw(t, 1, "VERBOSE") {
        (false, 2)
    } else if lparen(t, 1) && !starts_query(t, 2) {
        let close = matching_paren(t, 1)?;
        let options = split_commas(&t[2..close]);
        (
            options.iter().any(|option| analyze_option(option)),
            close + 1,
        )
    } else {
        (false, 1)
    };
    let inner = t.get(i..).filter(|inner| !inner.is_empty())?;
    if !analyze {
        // Planning only: the executor never starts, so even a write is a read.
        return Some(read("explain"));
    }
    Some(match nested(cx, inner, "explain analyze") {
        Some(Kind::Write { .. }) | None => write("explain analyze of write"),
        Some(kind) => kind,
    })
}

/// `ANALYZE [value]` in an EXPLAIN option list; the server takes false,
/// off and 0 (any case, quoted or not) as false.
fn analyze_option(option: &Toks) -> bool {
    let falsy = |s: &str| {
        ["false", "off", "0"]
            .iter()
            .any(|f| s.eq_ignore_ascii_case(f))
    };
    kw_any(option, 0, &["ANALYZE", "ANALYSE"])
        && match option.get(1..).unwrap_or_default() {
            [value] => match &value.token.token {
                Token::Word(w) => !falsy(&w.value),
                Token::Number(n, _) => !falsy(n),
                Token::SingleQuotedString(s) => !falsy(s),
                _ => true,
            },
            _ => true,
        }
}

/// `COPY [BINARY] table [(columns)] FROM|TO ...` or `COPY (query) TO ...`.
fn copy(cx: &Context, t: &Toks) -> Option<Kind> {
    let mut i = if lparen(t, 1) {
        let close = matching_paren(t, 1)?;
        let source = nested(cx, &t[2..close], "copy to stdout")?;
        if !matches!(source, Kind::Read { .. }) {
            return Some(source);
        }
        close + 1
    } else {
        qualified_name_end(t, if kw(t, 1, "BINARY") { 2 } else { 1 })?
    };
    if lparen(t, i) {
        i = matching_paren(t, i)? + 1;
    }
    Some(if kw(t, i, "FROM") {
        write("copy from")
    } else if !kw(t, i, "TO") {
        return None;
    } else if kw(t, i + 1, "STDOUT") {
        read("copy to stdout")
    } else if kw(t, i + 1, "PROGRAM") {
        write("copy to program")
    } else {
        // A file on the server's disk: the primary is the server meant.
        write("copy to file")
    })
}

/// `DECLARE name [BINARY] [ASENSITIVE|INSENSITIVE] [[NO] SCROLL] CURSOR
/// [{WITH|WITHOUT} HOLD] FOR query`. Without HOLD the cursor lives in the
/// current block, so it is as much a read as its query.
fn declare(cx: &Context, t: &Toks) -> Option<Kind> {
    let name = ident(t, 1)?;
    let mut i = 2;
    while kw_any(
        t,
        i,
        &["BINARY", "ASENSITIVE", "INSENSITIVE", "NO", "SCROLL"],
    ) {
        i += 1;
    }
    if !kw(t, i, "CURSOR") {
        return None;
    }
    let hold = kw(t, i + 1, "WITH") && kw(t, i + 2, "HOLD");
    if hold || (kw(t, i + 1, "WITHOUT") && kw(t, i + 2, "HOLD")) {
        i += 2;
    }
    let query = t
        .get(i + 2..)
        .filter(|q| kw(t, i + 1, "FOR") && !q.is_empty())?;
    if hold {
        return Some(pin(PinReason::CursorWithHold { name }));
    }
    nested(cx, query, "declare cursor")
}

fn transaction(t: &Toks) -> Option<TxControl> {
    let after_work = |j| {
        if kw_any(t, j, &["WORK", "TRANSACTION"]) {
            j + 1
        } else {
            j
        }
    };
    let to = after_work(1);
    Some(if kw(t, 0, "BEGIN") {
        TxControl::Begin {
            read_only: transaction_modes(t, to)?,
        }
    } else if kw(t, 0, "START") && kw(t, 1, "TRANSACTION") {
        TxControl::Begin {
            read_only: transaction_modes(t, 2)?,
        }
    } else if kw(t, 0, "COMMIT") && kw(t, 1, "PREPARED") {
        TxControl::CommitPrepared {
            gid: final_string(t, 2)?,
        }
    } else if kw_any(t, 0, &["COMMIT", "END"]) {
        TxControl::Commit {
            chain: chain(t, to)?,
        }
    } else if kw(t, 0, "ROLLBACK") && kw(t, 1, "PREPARED") {
        TxControl::RollbackPrepared {
            gid: final_string(t, 2)?,
        }
    } else if kw(t, 0, "ROLLBACK") && kw(t, to, "TO") {
        let j = if kw(t, to + 1, "SAVEPOINT") {
            to + 2
        } else {
            to + 1
        };
        TxControl::RollbackToSavepoint {
            name: final_ident(t, j)?,
        }
    } else if kw_any(t, 0, &["ROLLBACK", "ABORT"]) {
        TxControl::Rollback {
            chain: chain(t, to)?,
        }
    } else if kw(t, 0, "SAVEPOINT") {
        TxControl::Savepoint {
            name: final_ident(t, 1)?,
        }
    } else if kw(t, 0, "RELEASE") {
        let j = if kw(t, 1, "SAVEPOINT") { 2 } else { 1 };
        TxControl::ReleaseSavepoint {
            name: final_ident(t, j)?,
        }
    } else {
        return None;
    })
}

/// `[AND [NO] CHAIN]` ending the statement.
fn chain(t: &Toks, i: usize) -> Option<bool> {
    let and_chain = kw(t, i, "AND") && kw(t, i + 1, "CHAIN");
    let and_no_chain = kw(t, i, "AND") && kw(t, i + 1, "NO") && kw(t, i + 2, "CHAIN");
    match t.len() - i.min(t.len()) {
        0 => Some(false),
        2 if and_chain => Some(true),
        3 if and_no_chain => Some(false),
        _ => None,
    }
}

/// A transaction mode list ending the statement; `None` on a syntax error.
/// Like the server, the last access mode wins.
fn transaction_modes(t: &Toks, mut i: usize) -> Option<Option<bool>> {
    let mut read_only = None;
    let start = i;
    while i < t.len() {
        if i > start && is(t, i, &Token::Comma) {
            i += 1;
        }
        let level = kw(t, i, "ISOLATION") && kw(t, i + 1, "LEVEL");
        let two_words = (kw(t, i + 2, "REPEATABLE") && kw(t, i + 3, "READ"))
            || (kw(t, i + 2, "READ") && kw_any(t, i + 3, &["COMMITTED", "UNCOMMITTED"]));
        i += if level && kw(t, i + 2, "SERIALIZABLE") {
            3
        } else if level && two_words {
            4
        } else if kw(t, i, "READ") && kw_any(t, i + 1, &["ONLY", "WRITE"]) {
            read_only = Some(kw(t, i + 1, "ONLY"));
            2
        } else if kw(t, i, "DEFERRABLE") {
            1
        } else if kw(t, i, "NOT") && kw(t, i + 1, "DEFERRABLE") {
            2
        } else {
            return None;
        };
    }
    Some(read_only)
}

/// `PREPARE TRANSACTION 'gid'` or `PREPARE name [(types)] AS statement`.
fn prepare(cx: &Context, t: &Toks) -> Option<Kind> {
    if kw(t, 1, "TRANSACTION") && string_lit(t, 2).is_some() {
        let gid = final_string(t, 2)?;
        return Some(Kind::Transaction(TxControl::PrepareTransaction { gid }));
    }
    let name = ident(t, 1)?;
    let i = if lparen(t, 2) {
        matching_paren(t, 2)? + 1
    } else {
        2
    };
    let inner = t
        .get(i + 1..)
        .filter(|inner| kw(t, i, "AS") && !inner.is_empty())?;
    let inner = Box::new(classify_tokens(cx, inner));
    Some(session(SessionChange::Prepare {
        name,
        inner,
        statement: cx.text(t),
    }))
}

/// `EXECUTE name [(arguments)]`: the arguments may call writing functions.
fn execute(cx: &Context, t: &Toks) -> Option<Kind> {
    let name = ident(t, 1)?;
    if t.len() > 2 && matching_paren(t, 2) != Some(t.len() - 1) {
        return None;
    }
    Some(match function_effect(cx, t.get(2..).unwrap_or_default()) {
        Some(Effect::Pin(p)) => pin(p),
        Some(Effect::Write(reason)) => write(reason),
        None => Kind::Execute { name },
    })
}

fn set(cx: &Context, t: &Toks) -> Option<Kind> {
    let (scope, i) = if kw(t, 1, "LOCAL") {
        (SetScope::Local, 2)
    } else if kw(t, 1, "SESSION") && !kw_any(t, 2, &["AUTHORIZATION", "CHARACTERISTICS"]) {
        (SetScope::Session, 2)
    } else {
        (SetScope::Session, 1)
    };
    let statement = cx.text(t);
    let words = |words: &[&str]| words.iter().enumerate().all(|(k, w)| kw(t, i + k, w));
    let assigns = |j| kw(t, j, "TO") || is(t, j, &Token::Eq);
    let has_value = |j| t.len() > j;
    if words(&["TRANSACTION", "SNAPSHOT"]) {
        final_string(t, i + 2)?;
        return Some(Kind::Transaction(TxControl::SetTransaction {
            read_only: None,
        }));
    }
    if words(&["TRANSACTION"]) && has_value(i + 1) {
        let read_only = transaction_modes(t, i + 1)?;
        return Some(Kind::Transaction(TxControl::SetTransaction { read_only }));
    }
    if words(&["SESSION", "CHARACTERISTICS", "AS", "TRANSACTION"]) && has_value(i + 4) {
        let read_only = transaction_modes(t, i + 4)?;
        return Some(session(SessionChange::TransactionDefaults {
            read_only,
            statement,
        }));
    }
    // `name TO|= value` first: as in the server's grammar, a keyword of
    // the special forms followed by TO or = is just a parameter name.
    // All forms take a value except SET NAMES (the default encoding).
    let generic = var_name(t, i).filter(|&(_, j)| assigns(j));
    let (name, scope) = match generic {
        Some((name, j)) if has_value(j + 1) => (name, scope),
        Some(_) => return None,
        None if words(&["TIME", "ZONE"]) && has_value(i + 2) => ("timezone".into(), scope),
        None if words(&["SESSION", "AUTHORIZATION"]) && has_value(i + 2) => {
            ("session_authorization".into(), scope)
        }
        None if words(&["XML", "OPTION"]) && has_value(i + 2) => ("xmloption".into(), scope),
        None if words(&["ROLE"]) && has_value(i + 1) => ("role".into(), scope),
        None if words(&["SCHEMA"]) && has_value(i + 1) => ("search_path".into(), scope),
        None if words(&["NAMES"]) => ("client_encoding".into(), scope),
        None if words(&["CATALOG"]) && has_value(i + 1) => ("catalog".into(), scope),
        // SET CONSTRAINTS lasts until the end of the transaction.
        None if words(&["CONSTRAINTS"]) && has_value(i + 1) => {
            ("constraints".into(), SetScope::Local)
        }
        None => match var_name(t, i)? {
            (name, j) if kw(t, j, "FROM") && kw(t, j + 1, "CURRENT") && t.len() == j + 2 => {
                (name, scope)
            }
            _ => return None,
        },
    };
    Some(session(SessionChange::Set {
        name,
        scope,
        statement,
    }))
}

fn reset(t: &Toks) -> Option<SessionChange> {
    let words = |words: &[&str]| words.iter().enumerate().all(|(k, w)| kw(t, 1 + k, w));
    if words(&["ALL"]) && t.len() == 2 {
        return Some(SessionChange::ResetAll);
    }
    let (name, end) = if words(&["TIME", "ZONE"]) {
        ("timezone".into(), 3)
    } else if words(&["SESSION", "AUTHORIZATION"]) {
        ("session_authorization".into(), 3)
    } else if words(&["TRANSACTION", "ISOLATION", "LEVEL"]) {
        ("transaction_isolation".into(), 4)
    } else {
        var_name(t, 1)?
    };
    (end == t.len()).then_some(SessionChange::Reset { name })
}

fn discard(t: &Toks) -> Option<DiscardTarget> {
    let target = match tok(t, 1)? {
        Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => return None,
    };
    let target = match target.as_str() {
        "ALL" => DiscardTarget::All,
        "PLANS" => DiscardTarget::Plans,
        "SEQUENCES" => DiscardTarget::Sequences,
        "TEMP" | "TEMPORARY" => DiscardTarget::Temp,
        _ => return None,
    };
    (t.len() == 2).then_some(target)
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
    let schema = match tok(t, i) {
        Some(Token::Word(w)) => w.value.eq_ignore_ascii_case("pg_temp"),
        _ => false,
    };
    schema && is(t, i + 1, &Token::Period)
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
        let called = lparen(t, i + 1);
        let attribute =
            i > 0 && is(t, i - 1, &Token::Period) && !cx.extra_write_functions.is_empty();
        if !called && !attribute {
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

fn lparen(t: &Toks, i: usize) -> bool {
    is(t, i, &Token::LParen)
}

/// An unquoted keyword (quoting makes a keyword an identifier).
fn is_keyword(token: &Token, keyword: &str) -> bool {
    match token {
        Token::Word(w) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case(keyword),
        _ => false,
    }
}

fn kw(t: &Toks, i: usize, keyword: &str) -> bool {
    tok(t, i).is_some_and(|token| is_keyword(token, keyword))
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

/// An identifier that ends the statement.
fn final_ident(t: &Toks, i: usize) -> Option<String> {
    ident(t, i).filter(|_| t.len() == i + 1)
}

/// `ALL` (`None`) or a name, ending the statement.
fn name_or_all(t: &Toks, i: usize) -> Option<Option<String>> {
    if kw(t, i, "ALL") && t.len() == i + 1 {
        Some(None)
    } else {
        final_ident(t, i).map(Some)
    }
}

/// A string literal that ends the statement.
fn final_string(t: &Toks, i: usize) -> Option<String> {
    string_lit(t, i).filter(|_| t.len() == i + 1)
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
    kw_any(t, i, &["SELECT", "WITH", "VALUES", "TABLE"]) || lparen(t, i)
}

/// The index of the `)` closing the `(` at `open`.
fn matching_paren(t: &Toks, open: usize) -> Option<usize> {
    if !lparen(t, open) {
        return None;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected verdicts. `Set`, `Defaults` and `Prepare` carry the
    /// statement text, taken here from the corpus entry itself.
    enum X {
        K(Kind),
        Set(&'static str, SetScope),
        Defaults(Option<bool>),
        Prepare(&'static str, Kind),
    }

    fn r(reason: &'static str) -> X {
        X::K(read(reason))
    }
    fn w(reason: &'static str) -> X {
        X::K(write(reason))
    }
    fn tx(control: TxControl) -> X {
        X::K(Kind::Transaction(control))
    }
    fn begin(read_only: Option<bool>) -> X {
        tx(TxControl::Begin { read_only })
    }
    fn s(change: SessionChange) -> X {
        X::K(session(change))
    }
    fn pinned(reason: PinReason) -> X {
        X::K(pin(reason))
    }
    fn name(n: &str) -> String {
        n.to_owned()
    }
    fn some(n: &str) -> Option<String> {
        Some(n.to_owned())
    }
    fn set(n: &'static str) -> X {
        X::Set(n, SetScope::Session)
    }

    const EXTRA: [&str; 2] = ["app.mark_seen", "Touch_Session"];

    fn extras() -> Vec<String> {
        EXTRA.iter().map(|f| f.to_string()).collect()
    }

    #[rustfmt::skip]
    fn corpus() -> Vec<(&'static str, X)> {
        use PinReason::*;
        use SessionChange as SC;
        use TxControl as TC;
        vec![
            // --- reads: plain, pgbench, ORMs, introspection
            ("SELECT 1", r("select")),
            ("select 1;", r("select")),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", r("select")),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;", r("select")),
            ("VALUES (1, 'a'), (2, 'b')", r("values")),
            ("TABLE pgbench_branches", r("table")),
            ("TABLE ONLY public.rides *", r("table")),
            ("(SELECT 1) UNION ALL (SELECT 2)", r("select")),
            ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r", r("with")),
            ("WITH x AS MATERIALIZED (SELECT 1) SELECT * FROM x", r("with")),
            ("WITH x AS (SELECT id FROM t) SELECT * FROM x ORDER BY id", r("with")),
            (r#"SELECT "users"."id", "users"."email" FROM "users" WHERE "users"."email" ILIKE $1 LIMIT $2"#, r("select")),
            (r#"SELECT "posts".* FROM "posts" WHERE "posts"."author_id" = ANY($1) ORDER BY "posts"."created_at" DESC"#, r("select")),
            (r#"SELECT "t0"."id", "t0"."email" FROM "public"."User" AS "t0" WHERE ("t0"."email" = $1 AND 1=1) LIMIT $2 OFFSET $3"#, r("select")),
            (r#"SELECT "schema_migrations"."version" FROM "schema_migrations" ORDER BY "schema_migrations"."version" ASC"#, r("select")),
            (r#"SELECT COUNT(*) AS "count" FROM "rides" WHERE "rides"."deleted_at" IS NULL"#, r("select")),
            ("SELECT data->>'name' AS name FROM docs WHERE data @> '{\"tags\": [\"a\"]}'::jsonb", r("select")),
            ("SELECT data #>> '{a,b}', data -> 'c' FROM docs WHERE data ? 'k'", r("select")),
            ("SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY created_at DESC) AS rn FROM rides", r("select")),
            ("SELECT sum(distance) OVER w FROM rides WINDOW w AS (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)", r("select")),
            ("SELECT u.id, last.* FROM users u, LATERAL (SELECT * FROM rides r WHERE r.user_id = u.id ORDER BY id DESC LIMIT 1) last", r("select")),
            ("SELECT * FROM generate_series(1, 10) AS g(i)", r("select")),
            ("SELECT d::date FROM generate_series(now() - interval '7 days', now(), '1 day') d", r("select")),
            ("SELECT count(*) FILTER (WHERE distance > 10) FROM rides", r("select")),
            ("SELECT DISTINCT ON (user_id) user_id, id FROM rides ORDER BY user_id, id DESC", r("select")),
            ("SELECT * FROM t WHERE tags && ARRAY['a']::text[]", r("select")),
            ("SELECT to_tsvector('english', body) @@ to_tsquery('cat') FROM docs", r("select")),
            ("SELECT now() AT TIME ZONE 'UTC', EXTRACT(EPOCH FROM now())", r("select")),
            ("SELECT substring(name from 1 for 3) FROM t", r("select")),
            ("SELECT * FROM t WHERE (created_at, id) > ($1, $2) ORDER BY created_at, id LIMIT 50", r("select")),
            ("SELECT EXISTS (SELECT 1 FROM users WHERE email = $1)", r("select")),
            ("SELECT coalesce(sum(distance), 0) FROM rides WHERE user_id = $1", r("select")),
            ("SELECT a, count(*) FROM t GROUP BY a HAVING count(*) > 1", r("select")),
            ("SELECT json_agg(x) FROM (SELECT * FROM t LIMIT 10) x", r("select")),
            ("SELECT * FROM t1 JOIN t2 USING (id) WHERE t1.name ILIKE '%' || $1 || '%'", r("select")),
            ("SELECT 1 AS \"select\", 2 AS \"delete\"", r("select")),
            ("SELECT gen_random_uuid(), random(), clock_timestamp(), version()", r("select")),
            ("SELECT pg_sleep(0.1)", r("select")),
            ("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()", r("select")),
            ("SELECT current_setting('search_path'), current_user, current_database()", r("select")),
            ("SELECT txid_current_if_assigned()", r("select")),
            ("SELECT t.oid, t.typname FROM pg_type t WHERE t.typname = ANY($1)", r("select")),
            ("SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname OPERATOR(pg_catalog.~) '^(rides)$' COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3", r("select")),
            ("SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true) FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef), a.attnotnull FROM pg_catalog.pg_attribute a WHERE a.attrelid = '16384' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", r("select")),
            ("SELECT n.nspname as \"Schema\", c.relname as \"Name\", CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' END as \"Type\", pg_catalog.pg_get_userbyid(c.relowner) as \"Owner\" FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','v','m','S','f','') AND n.nspname <> 'pg_catalog' AND n.nspname !~ '^pg_toast' AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1,2", r("select")),
            (r#"SELECT d.datname as "Name", pg_catalog.pg_get_userbyid(d.datdba) as "Owner", pg_catalog.array_to_string(d.datacl, E'\n') AS "Access privileges" FROM pg_catalog.pg_database d ORDER BY 1;"#, r("select")),
            ("SELECT r.rolname, ARRAY(SELECT b.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid) as memberof FROM pg_catalog.pg_roles r WHERE r.rolname !~ '^pg_' ORDER BY 1", r("select")),
            ("SELECT typinput='pg_catalog.array_in'::regproc as is_array, typtype, typname, pg_type.oid FROM pg_catalog.pg_type LEFT JOIN (select ns.oid as nspoid, ns.nspname, r.r from pg_namespace as ns join ( select s.r, (current_schemas(false))[s.r] as nspname from generate_series(1, array_upper(current_schemas(false), 1)) as s(r) ) as r using ( nspname ) ) as sp ON sp.nspoid = typnamespace WHERE typname = $1 ORDER BY sp.r, pg_type.oid DESC", r("select")),
            ("SELECT t.typname, t.typtype, t.typelem, r.rngsubtype, t.typbasetype, n.nspname, t.typrelid FROM pg_catalog.pg_type t LEFT OUTER JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid INNER JOIN pg_catalog.pg_namespace n ON t.typnamespace = n.oid WHERE t.oid = $1", r("select")),
            ("SELECT enumlabel FROM pg_catalog.pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder", r("select")),
            ("SELECT slot_name, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", r("select")),
            ("select count(*) from pgbench_accounts where aid between $1 and $2", r("select")),
            ("SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY latency) FROM requests", r("select")),
            ("SELECT id FROM t WHERE y <> ALL($1::int[]) ORDER BY id FETCH FIRST 10 ROWS ONLY", r("select")),
            ("SHOW search_path", r("show")),
            ("SHOW ALL", r("show")),
            ("SHOW TRANSACTION ISOLATION LEVEL", r("show")),
            ("show time zone", r("show")),
            ("EXPLAIN SELECT * FROM rides", r("explain")),
            ("EXPLAIN INSERT INTO rides (distance) VALUES (1)", r("explain")),
            ("EXPLAIN SELECT nextval('s')", r("explain")),
            ("EXPLAIN VERBOSE DELETE FROM t", r("explain")),
            ("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM rides", r("explain analyze")),
            ("EXPLAIN ANALYZE SELECT count(*) FROM rides", r("explain analyze")),
            ("EXPLAIN ANALYSE VERBOSE SELECT 1", r("explain analyze")),
            ("EXPLAIN (ANALYZE false) DELETE FROM t", r("explain")),
            ("EXPLAIN (ANALYZE off, FORMAT JSON) UPDATE t SET a = 1", r("explain")),
            ("EXPLAIN (FORMAT JSON, COSTS 0) SELECT 1", r("explain")),
            ("COPY rides TO STDOUT", r("copy to stdout")),
            ("COPY public.rides (id, distance) TO STDOUT WITH (FORMAT csv, HEADER)", r("copy to stdout")),
            ("COPY (SELECT * FROM rides WHERE distance > 1) TO STDOUT", r("copy to stdout")),
            ("COPY BINARY rides TO STDOUT", r("copy to stdout")),
            ("FETCH 10 FROM c", r("fetch")),
            ("MOVE NEXT IN c", r("fetch")),
            // --- traps: nothing in strings, comments or quotes counts
            ("SELECT 'nextval(1)'", r("select")),
            ("SELECT \"nextval\" FROM t", r("select")),
            ("SELECT nextval_count FROM stats", r("select")),
            ("SELECT 1 -- ; DELETE FROM t", r("select")),
            ("/* DELETE */ SELECT 1", r("select")),
            ("SELECT 1 /* nested /* DELETE FROM t; */ still a comment */", r("select")),
            ("SELECT $$ nextval('s'); DELETE FROM t $$", r("select")),
            ("SELECT $fn$ ; DELETE FROM t; $fn$ AS body", r("select")),
            ("SELECT E'it\\'s nextval(1); DELETE'", r("select")),
            ("SELECT \"for update\", \"into\" FROM t", r("select")),
            ("SELECT lower('LO_CREATE(1)') FROM t", r("select")),
            ("SELECT c.mark_seen_at FROM customers c", r("select")),
            // --- writes by first keyword
            ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)", w("insert")),
            ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", w("update")),
            ("UPDATE pgbench_tellers SET tbalance = tbalance + 12 WHERE tid = 3;", w("update")),
            (r#"INSERT INTO "rides" ("user_id", "distance") VALUES ($1, $2) RETURNING "id""#, w("insert")),
            ("INSERT INTO users (email, name) VALUES ($1, $2) ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name RETURNING *", w("insert")),
            ("INSERT INTO idempotency_keys (key) VALUES ($1) ON CONFLICT DO NOTHING", w("insert")),
            ("DELETE FROM sessions WHERE expires_at < now()", w("delete")),
            ("MERGE INTO accounts a USING staged s ON a.id = s.id WHEN MATCHED THEN UPDATE SET balance = s.balance", w("merge")),
            ("create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,filler char(22))", w("ddl")),
            ("drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers", w("ddl")),
            ("alter table pgbench_branches add primary key (bid)", w("ddl")),
            ("copy pgbench_accounts from stdin with (freeze on)", w("copy from")),
            ("vacuum analyze pgbench_branches", w("vacuum")),
            ("truncate pgbench_history", w("truncate")),
            ("CREATE INDEX CONCURRENTLY rides_user_idx ON rides (user_id)", w("ddl")),
            ("CREATE EXTENSION IF NOT EXISTS pgcrypto", w("ddl")),
            ("CREATE MATERIALIZED VIEW mv AS SELECT 1", w("ddl")),
            ("CREATE UNLOGGED TABLE cache (k text)", w("ddl")),
            ("CREATE FUNCTION add(a int, b int) RETURNS int AS $$ SELECT a + b $$ LANGUAGE sql", w("ddl")),
            ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END", w("ddl")),
            ("CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO u VALUES (1); INSERT INTO v VALUES (2))", w("ddl")),
            ("COMMENT ON TABLE rides IS 'rides; DELETE'", w("ddl")),
            ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", w("refresh materialized view")),
            ("GRANT SELECT ON rides TO reader", w("grant")),
            ("REVOKE ALL ON rides FROM PUBLIC", w("revoke")),
            ("CALL settle_charges(42)", w("call")),
            ("DO $$ BEGIN PERFORM 1; END $$", w("do")),
            ("DO LANGUAGE plpgsql $body$ BEGIN RAISE NOTICE 'x'; END $body$", w("do")),
            ("ANALYZE rides", w("analyze")),
            ("CLUSTER rides USING rides_pkey", w("cluster")),
            ("REINDEX TABLE rides", w("reindex")),
            ("CHECKPOINT", w("checkpoint")),
            ("LOCK TABLE rides IN ACCESS EXCLUSIVE MODE", w("lock")),
            ("NOTIFY rides, 'hello'", w("notify")),
            ("COPY rides (id, distance) FROM STDIN WITH (FORMAT csv)", w("copy from")),
            ("COPY rides TO '/tmp/rides.csv'", w("copy to file")),
            ("COPY rides TO PROGRAM 'gzip > /tmp/rides.gz'", w("copy to program")),
            ("COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", w("insert")),
            ("COPY (SELECT nextval('s')) TO STDOUT", w("writing function nextval")),
            // --- reads that write
            ("WITH gone AS (DELETE FROM t WHERE id = $1 RETURNING *) SELECT * FROM gone", w("data-modifying CTE")),
            ("WITH moved AS (DELETE FROM staged_jobs WHERE id IN (SELECT id FROM staged_jobs LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING *) INSERT INTO jobs SELECT * FROM moved", w("data-modifying CTE")),
            ("WITH u AS NOT MATERIALIZED (UPDATE t SET a = 1 RETURNING id) SELECT count(*) FROM u", w("data-modifying CTE")),
            ("WITH x AS (SELECT 1 AS v) INSERT INTO t SELECT v FROM x", w("insert")),
            ("WITH x AS (SELECT id FROM t) UPDATE t SET a = 1 FROM x WHERE t.id = x.id", w("update")),
            ("WITH x AS (SELECT 1) DELETE FROM t", w("delete")),
            ("SELECT * FROM rides WHERE id = $1 FOR UPDATE", w("for update")),
            ("SELECT * FROM jobs ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED", w("for update")),
            ("SELECT * FROM t FOR NO KEY UPDATE OF t NOWAIT", w("for update")),
            ("SELECT * FROM t FOR SHARE", w("for share")),
            ("select * from t for key share", w("for share")),
            ("SELECT 1 FROM t WHERE a IN (SELECT a FROM u FOR SHARE)", w("for share")),
            ("SELECT * INTO backup FROM rides", w("select into")),
            ("SELECT nextval('rides_id_seq')", w("writing function nextval")),
            ("SELECT pg_catalog.nextval('s')", w("writing function nextval")),
            ("SELECT NEXTVAL ('s')", w("writing function nextval")),
            ("SELECT \"nextval\"('s')", w("writing function nextval")),
            ("SELECT setval('s', 42)", w("writing function setval")),
            ("SELECT currval('s')", w("writing function currval")),
            ("SELECT lastval()", w("writing function lastval")),
            ("SELECT id FROM t WHERE id = nextval('s')", w("writing function nextval")),
            ("SELECT * FROM t WHERE id IN (SELECT nextval('s'))", w("writing function nextval")),
            ("WITH s AS (SELECT nextval('s') AS v) SELECT v FROM s", w("writing function nextval")),
            ("SELECT * FROM nextval('s')", w("writing function nextval")),
            ("VALUES (nextval('s'))", w("writing function nextval")),
            ("SELECT pg_advisory_xact_lock(42)", w("advisory lock function")),
            ("SELECT pg_try_advisory_xact_lock(1, 2)", w("advisory lock function")),
            ("SELECT pg_advisory_unlock(42)", w("advisory lock function")),
            ("SELECT pg_advisory_unlock_all()", w("advisory lock function")),
            ("SELECT pg_notify('rides', '{\"id\": 1}')", w("writing function pg_notify")),
            ("SELECT set_config('app.tenant', $1, true)", w("writing function set_config")),
            ("SELECT txid_current()", w("writing function txid_current")),
            ("SELECT pg_current_xact_id()", w("writing function pg_current_xact_id")),
            ("SELECT * FROM pg_logical_slot_get_changes('cdc', NULL, 100)", w("replication function")),
            ("SELECT * FROM pg_logical_slot_peek_changes('cdc', NULL, NULL, 'include-xids', '0')", w("replication function")),
            ("SELECT data FROM pg_logical_slot_get_binary_changes('cdc', NULL, NULL)", w("replication function")),
            ("SELECT * FROM pg_create_logical_replication_slot('cdc', 'test_decoding')", w("replication function")),
            ("SELECT pg_drop_replication_slot('cdc')", w("replication function")),
            ("SELECT pg_replication_slot_advance('cdc', '0/1000')", w("replication function")),
            ("SELECT lo_create(0)", w("large object function")),
            ("SELECT lo_import('/tmp/x')", w("large object function")),
            ("SELECT lo_unlink(16400)", w("large object function")),
            ("SELECT lowrite(lo_open(16400, 131072), 'data')", w("large object function")),
            ("SELECT pg_switch_wal()", w("wal control function")),
            ("SELECT pg_cancel_backend(123)", w("backend signal function")),
            ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'x'", w("backend signal function")),
            ("SELECT pg_reload_conf()", w("server control function")),
            ("SELECT pg_stat_reset()", w("statistics reset function")),
            ("SELECT pg_stat_reset_shared('bgwriter')", w("statistics reset function")),
            ("SELECT dblink_exec('dbname=other', 'DELETE FROM t')", w("dblink function")),
            ("SELECT pg_current_wal_lsn()", w("primary-only function")),
            ("SELECT app.mark_seen($1)", w("configured writing function")),
            ("SELECT MARK_SEEN(1)", w("configured writing function")),
            ("SELECT c.mark_seen FROM customers c", w("configured writing function")),
            ("SELECT id FROM sessions WHERE touch_session(id)", w("configured writing function")),
            ("EXPLAIN ANALYZE DELETE FROM t", w("explain analyze of write")),
            ("EXPLAIN (ANALYZE, COSTS off) INSERT INTO t VALUES (1)", w("explain analyze of write")),
            ("EXPLAIN (ANALYZE) SELECT nextval('s')", w("explain analyze of write")),
            ("EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", w("explain analyze of write")),
            // --- fail safe: what cannot be parsed goes to the primary
            ("SELEC 1", w("unparsable")),
            ("SELECT (1", w("unparsable")),
            ("SELECT 'unterminated", w("unparsable")),
            ("\"SELECT\" 1", w("unparsable")),
            ("EXPLAIN", w("unparsable")),
            // Valid PostgreSQL reads that sqlparser 0.59 rejects.
            ("SELECT * FROM ROWS FROM (generate_series(1, 2), generate_series(1, 3))", w("unparsable")),
            ("SELECT 1 FROM t FOR READ ONLY", w("unparsable")),
            ("SELECT $1::text COLLATE \"C\"", w("unparsable")),
            ("SELECT * FROM t WHERE a BETWEEN SYMMETRIC 1 AND 2", w("unparsable")),
            ("SELECT (x).* FROM t", w("unparsable")),
            ("SELECT xmlelement(name foo)", w("unparsable")),
            ("TABLE t ORDER BY 1", w("unparsable")),
            // --- transaction control
            ("BEGIN", begin(None)),
            ("begin;", begin(None)),
            ("BEGIN WORK", begin(None)),
            ("BEGIN READ ONLY", begin(Some(true))),
            ("BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE", begin(Some(true))),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE", begin(None)),
            ("BEGIN READ ONLY, READ WRITE", begin(Some(false))),
            ("START TRANSACTION READ WRITE", begin(Some(false))),
            ("START TRANSACTION ISOLATION LEVEL READ COMMITTED READ ONLY", begin(Some(true))),
            ("BEGIN ISOLATION LEVEL BOGUS", w("unparsable")),
            ("BEGIN READ", w("unparsable")),
            ("COMMIT", tx(TC::Commit { chain: false })),
            ("END TRANSACTION", tx(TC::Commit { chain: false })),
            ("COMMIT AND CHAIN", tx(TC::Commit { chain: true })),
            ("COMMIT WORK AND NO CHAIN", tx(TC::Commit { chain: false })),
            ("ROLLBACK", tx(TC::Rollback { chain: false })),
            ("ABORT", tx(TC::Rollback { chain: false })),
            ("ROLLBACK TRANSACTION AND CHAIN", tx(TC::Rollback { chain: true })),
            ("SAVEPOINT active_record_1", tx(TC::Savepoint { name: name("active_record_1") })),
            ("SAVEPOINT \"MySp\"", tx(TC::Savepoint { name: name("MySp") })),
            ("RELEASE SAVEPOINT Active_Record_1", tx(TC::ReleaseSavepoint { name: name("active_record_1") })),
            ("RELEASE sp", tx(TC::ReleaseSavepoint { name: name("sp") })),
            ("ROLLBACK TO SAVEPOINT active_record_1", tx(TC::RollbackToSavepoint { name: name("active_record_1") })),
            ("ROLLBACK WORK TO sp", tx(TC::RollbackToSavepoint { name: name("sp") })),
            ("PREPARE TRANSACTION 'tx-1'", tx(TC::PrepareTransaction { gid: name("tx-1") })),
            ("COMMIT PREPARED 'tx-1'", tx(TC::CommitPrepared { gid: name("tx-1") })),
            ("ROLLBACK PREPARED 'tx-1'", tx(TC::RollbackPrepared { gid: name("tx-1") })),
            ("SET TRANSACTION READ ONLY", tx(TC::SetTransaction { read_only: Some(true) })),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", tx(TC::SetTransaction { read_only: None })),
            ("SET LOCAL TRANSACTION READ WRITE", tx(TC::SetTransaction { read_only: Some(false) })),
            ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", tx(TC::SetTransaction { read_only: None })),
            ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", X::Defaults(Some(true))),
            ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", X::Defaults(None)),
            // --- session state
            ("SET search_path TO app, public", set("search_path")),
            ("SET search_path = \"$user\", public", set("search_path")),
            ("SET SESSION statement_timeout = '5s'", set("statement_timeout")),
            ("SET LOCAL statement_timeout = 0", X::Set("statement_timeout", SetScope::Local)),
            ("SET TIME ZONE 'UTC'", set("timezone")),
            ("SET TIME ZONE INTERVAL '-08:00' HOUR TO MINUTE", set("timezone")),
            ("SET timezone = 'Europe/Berlin'", set("timezone")),
            ("SET ROLE app_reader", set("role")),
            ("SET role TO 'app_reader'", set("role")),
            ("SET SESSION AUTHORIZATION 'alice'", set("session_authorization")),
            ("SET SESSION AUTHORIZATION DEFAULT", set("session_authorization")),
            ("SET NAMES 'UTF8'", set("client_encoding")),
            ("SET SCHEMA 'app'", set("search_path")),
            ("SET XML OPTION DOCUMENT", set("xmloption")),
            ("SET application_name = 'psql'", set("application_name")),
            ("SET extra_float_digits = 3", set("extra_float_digits")),
            ("SET DateStyle = ISO", set("datestyle")),
            ("SET \"Application_Name\" TO 'x'", set("application_name")),
            ("SET causeway.client_id = 'api-1'", set("causeway.client_id")),
            ("SET causeway.min_lsn = '0/3000148'", set("causeway.min_lsn")),
            ("SET work_mem FROM CURRENT", set("work_mem")),
            ("SET statement_timeout TO DEFAULT", set("statement_timeout")),
            ("SET CONSTRAINTS ALL DEFERRED", X::Set("constraints", SetScope::Local)),
            ("SET search_path", w("unparsable")),
            ("SET TIME ZONE", w("unparsable")),
            ("RESET search_path", s(SC::Reset { name: name("search_path") })),
            ("RESET ALL", s(SC::ResetAll)),
            ("RESET TIME ZONE", s(SC::Reset { name: name("timezone") })),
            ("RESET ROLE", s(SC::Reset { name: name("role") })),
            ("RESET SESSION AUTHORIZATION", s(SC::Reset { name: name("session_authorization") })),
            ("RESET causeway.min_lsn", s(SC::Reset { name: name("causeway.min_lsn") })),
            ("PREPARE get_ride (bigint) AS SELECT * FROM rides WHERE id = $1", X::Prepare("get_ride", read("select"))),
            ("PREPARE ins AS INSERT INTO t VALUES ($1)", X::Prepare("ins", write("insert"))),
            ("PREPARE \"Q1\" AS SELECT nextval('s')", X::Prepare("Q1", write("writing function nextval"))),
            ("PREPARE transaction AS SELECT 1", X::Prepare("transaction", read("select"))),
            ("EXECUTE get_ride(42)", X::K(Kind::Execute { name: name("get_ride") })),
            ("EXECUTE Q1", X::K(Kind::Execute { name: name("q1") })),
            ("EXECUTE get_ride(nextval('s'))", w("writing function nextval")),
            ("DEALLOCATE get_ride", s(SC::Deallocate { name: some("get_ride") })),
            ("DEALLOCATE PREPARE \"Q1\"", s(SC::Deallocate { name: some("Q1") })),
            ("DEALLOCATE ALL", s(SC::Deallocate { name: None })),
            ("DISCARD ALL", s(SC::Discard(DiscardTarget::All))),
            ("DISCARD PLANS", s(SC::Discard(DiscardTarget::Plans))),
            ("DISCARD SEQUENCES", s(SC::Discard(DiscardTarget::Sequences))),
            ("DISCARD TEMPORARY", s(SC::Discard(DiscardTarget::Temp))),
            ("LISTEN rides", pinned(Listen { channel: name("rides") })),
            ("LISTEN \"Rides\"", pinned(Listen { channel: name("Rides") })),
            ("UNLISTEN rides", s(SC::Unlisten { channel: some("rides") })),
            ("UNLISTEN *", s(SC::Unlisten { channel: None })),
            ("LOAD 'auto_explain'", pinned(Load)),
            ("CREATE TEMP TABLE scratch (a int)", pinned(TempTable)),
            ("CREATE TEMPORARY TABLE scratch AS SELECT 1", pinned(TempTable)),
            ("CREATE LOCAL TEMP TABLE scratch (a int)", pinned(TempTable)),
            ("CREATE GLOBAL TEMPORARY TABLE scratch (a int)", pinned(TempTable)),
            ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", pinned(TempTable)),
            ("CREATE TEMP SEQUENCE s", pinned(TempTable)),
            ("CREATE TABLE pg_temp.scratch (a int)", pinned(TempTable)),
            ("SELECT * INTO TEMP scratch FROM rides", pinned(TempTable)),
            ("SELECT * INTO LOCAL TEMPORARY scratch FROM rides", pinned(TempTable)),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM rides", pinned(CursorWithHold { name: name("c") })),
            ("DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1", r("declare cursor")),
            ("DECLARE c BINARY CURSOR FOR SELECT * FROM t FOR UPDATE", w("for update")),
            ("DECLARE c CURSOR FOR SELECT nextval('s')", w("writing function nextval")),
            ("CLOSE c", s(SC::CloseCursor { name: some("c") })),
            ("CLOSE ALL", s(SC::CloseCursor { name: None })),
            ("SELECT pg_advisory_lock(42)", pinned(AdvisoryLock)),
            ("SELECT pg_try_advisory_lock(hashtext($1))", pinned(AdvisoryLock)),
            ("SELECT pg_catalog.pg_advisory_lock_shared(1)", pinned(AdvisoryLock)),
            ("SELECT nextval('s'), pg_advisory_lock(1)", pinned(AdvisoryLock)),
            ("INSERT INTO locks SELECT pg_advisory_lock(1)", pinned(AdvisoryLock)),
            ("EXPLAIN ANALYZE SELECT pg_advisory_lock(1)", pinned(AdvisoryLock)),
            ("SELECT set_config('search_path', 'tenant_1', false)", pinned(SetConfig)),
            ("SELECT set_config('app.tenant', $1, $2)", pinned(SetConfig)),
            ("CREATE TABLE pg_advisory_lock_log (a int)", w("ddl")),
        ]
    }

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
                X::Defaults(read_only) => session(SessionChange::TransactionDefaults {
                    read_only,
                    statement,
                }),
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
        let begin = Kind::Transaction(TxControl::Begin { read_only: None });
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
            kinds(
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 2"
            ),
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

    #[test]
    fn cache_returns_the_same_verdict_and_stays_bounded() {
        let cache = ClassifyCache::new(4, vec!["mark_seen".into()]);
        let first = cache.get_or_classify("SELECT mark_seen(1)");
        let again = cache.get_or_classify("SELECT mark_seen(1)");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.kind, write("configured writing function"));
        assert_eq!(cache.len(), 1);

        for n in 0..20 {
            let sql = format!("SELECT {n}");
            assert_eq!(cache.get_or_classify(&sql).kind, read("select"));
            assert!(cache.len() <= 4, "{} entries after {sql}", cache.len());
        }
        assert!(!cache.is_empty());

        let disabled = ClassifyCache::new(0, Vec::new());
        assert_eq!(
            disabled.get_or_classify("BEGIN").kind,
            Kind::Transaction(TxControl::Begin { read_only: None })
        );
        assert!(disabled.is_empty());

        let huge = format!(
            "SELECT {}",
            "1 + ".repeat(ClassifyCache::MAX_CACHED_SQL_BYTES / 4) + "1"
        );
        let cache = ClassifyCache::new(4, Vec::new());
        assert_eq!(cache.get_or_classify(&huge).kind, read("select"));
        assert!(cache.is_empty());
    }
}
