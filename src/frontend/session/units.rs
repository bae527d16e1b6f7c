//! Client messages grouped into units of work: a simple Query, a
//! FunctionCall, or an extended-protocol batch up to its Sync (or up to a
//! Flush, when the client waits for answers before it syncs). A unit is what
//! the router routes: all of it runs on one server.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use super::state::{Prepared, Replay, SessionState};
use super::texts::TextRules;
use crate::protocol::{self, FrameError};
use crate::router::facts::{SharedFacts, NOT_UTF8};
use crate::router::UnitFacts;

/// One unit of client work, ready to route.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The client's messages, as they came.
    pub bytes: Bytes,
    /// Ends in Query, Sync or FunctionCall: the server will answer with
    /// ReadyForQuery. False for a batch cut at Flush.
    pub synced: bool,
    /// Shared with the facts cache until something of this unit's own
    /// changes them (see [`merge_facts`]).
    pub facts: SharedFacts,
    /// A lone simple-protocol `BEGIN`, which the session may hold back until
    /// it knows where the transaction should run.
    pub lone_begin: bool,
    /// A simple-protocol `BEGIN`/`START TRANSACTION` alone, with modes that
    /// neither make it read-only nor serializable (`ISOLATION LEVEL READ
    /// COMMITTED`, `READ WRITE`...): held back too when blocks may start
    /// optimistically on a replica.
    pub begin_with_modes: bool,
    /// Named statements it uses (Bind, Describe, EXECUTE, DEALLOCATE).
    pub uses: Vec<String>,
    /// Statements it prepares with the protocol's Parse.
    pub parses: super::parses::Parses,
    /// Statements it prepares with SQL `PREPARE`.
    pub sql_prepares: Vec<(String, Prepared)>,
    /// Statements it closes with the protocol's Close, in order.
    pub closes: Vec<String>,
    /// A route forced on it (a retry on the primary).
    pub retried: bool,
    /// A `causeway.*` statement the proxy answers itself.
    pub local: Option<super::local::Local>,
    /// The proxy's whole answer to a unit lost with its server, sent to
    /// the client in the unit's turn (behind units that run again). If
    /// the unit is not `synced`, the client's Sync is still to come.
    pub answered: Option<Bytes>,
}

/// The facts of a unit that has none yet: it reads. One shared value, so
/// that starting a unit allocates nothing.
static NO_FACTS: std::sync::LazyLock<SharedFacts> =
    std::sync::LazyLock::new(|| Arc::new(UnitFacts::read()));

impl Default for Unit {
    fn default() -> Unit {
        Unit {
            bytes: Bytes::new(),
            synced: false,
            facts: NO_FACTS.clone(),
            lone_begin: false,
            begin_with_modes: false,
            uses: Vec::new(),
            parses: super::parses::Parses::default(),
            sql_prepares: Vec::new(),
            closes: Vec::new(),
            retried: false,
            local: None,
            answered: None,
        }
    }
}

/// Adds a statement's facts to a unit's: the statement's own shared value
/// when the unit had none yet, else a copy of the unit's that is changed.
pub fn merge_facts(facts: &mut SharedFacts, more: &SharedFacts) {
    if Arc::ptr_eq(facts, &NO_FACTS) {
        *facts = more.clone();
    } else {
        Arc::make_mut(facts).merge(more);
    }
}

impl Unit {
    /// Names this unit creates (Parse or PREPARE), which must be free on
    /// the server before it runs.
    pub fn creates(&self) -> Vec<String> {
        if self.parses.is_empty() && self.sql_prepares.is_empty() {
            return Vec::new();
        }
        let mut names: Vec<String> = self.parses.named().map(|(n, _)| n.clone()).collect();
        names.extend(self.sql_prepares.iter().map(|(n, _)| n.clone()));
        names
    }

    /// Named statements to have on the server first.
    pub fn needs(&self) -> std::borrow::Cow<'_, [String]> {
        if self.facts.executes.is_empty() {
            return std::borrow::Cow::Borrowed(&self.uses);
        }
        let mut names = self.uses.clone();
        names.extend(self.facts.executes.iter().cloned());
        std::borrow::Cow::Owned(names)
    }
}

/// What became of the client's bytes.
pub enum Parsed {
    /// Nothing more can be done until more bytes come.
    More,
    /// The client said Terminate.
    Terminate,
}

/// Builds units from client messages.
#[derive(Debug, Default)]
pub struct UnitBuilder {
    building: Option<Unit>,
    building_bytes: BytesMut,
    /// Whether the server reads texts as the proxy does.
    pub texts: TextRules,
}

/// Where a statement text came from: where its facts are likely filed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFrom {
    /// A simple-protocol Query: clients inline their values there.
    Query,
    /// A Parse: values come as `$n` parameters.
    Parse,
}

/// Gives the facts of a statement text; the session's cache.
pub trait FactsSource {
    fn facts(&self, sql: &str, from: TextFrom) -> SharedFacts;
}

impl UnitBuilder {
    /// True while an extended batch is half read.
    pub fn is_building(&self) -> bool {
        self.building.is_some()
    }

    /// Takes whole messages from `cbuf` and pushes finished units to `out`.
    /// COPY messages go straight to `copy_out` (the server in COPY mode).
    /// Stops early when `out` holds `max_units`.
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        &mut self,
        cbuf: &mut BytesMut,
        out: &mut std::collections::VecDeque<Unit>,
        copy_out: &mut BytesMut,
        copy_streaming: &mut usize,
        state: &SessionState,
        source: &dyn FactsSource,
        max_units: usize,
    ) -> Result<Parsed, FrameError> {
        loop {
            if *copy_streaming > 0 {
                let n = (*copy_streaming).min(cbuf.len());
                copy_out.extend_from_slice(&cbuf[..n]);
                cbuf.advance(n);
                *copy_streaming -= n;
                if cbuf.is_empty() {
                    return Ok(Parsed::More);
                }
            }
            if out.len() >= max_units {
                return Ok(Parsed::More);
            }
            let Some(header) = protocol::frontend_header(cbuf)? else {
                return Ok(Parsed::More);
            };
            let len = header.wire_len();
            if cbuf.len() < len {
                if header.tag == b'd' {
                    *copy_streaming = len;
                    continue;
                }
                return Ok(Parsed::More);
            }
            if !matches!(header.tag, b'X' | b'd' | b'c' | b'f' | b'Q' | b'F') {
                // Extended protocol: the message is read in place and
                // copied into its batch, never split off (which would make
                // the read buffer shared, and cost a reference count).
                let unit = self.building.get_or_insert_with(Unit::default);
                let message = &cbuf[..len];
                if !matches!(header.tag, b'S' | b'H') {
                    extended_message(
                        unit,
                        header.tag,
                        &message[5..],
                        state,
                        source,
                        &mut self.texts,
                    );
                }
                self.building_bytes.extend_from_slice(message);
                cbuf.advance(len);
                match header.tag {
                    b'S' => self.finish_batch(out, true),
                    b'H' => self.finish_batch(out, false),
                    _ => {}
                }
                continue;
            }
            let message = cbuf.split_to(len);
            let body = &message[5..];
            match header.tag {
                b'X' => return Ok(Parsed::Terminate),
                b'd' | b'c' | b'f' => copy_out.extend_from_slice(&message),
                b'Q' => {
                    self.finish_batch(out, false);
                    let (text, mut facts) =
                        text_facts(text_bytes(body), TextFrom::Query, source, &self.texts);
                    self.texts.note_effects(&facts.effects);
                    let sql: &str = &text;
                    let lone_begin = facts.begin == Some(false)
                        && facts.effects.is_empty()
                        && !facts.ends_tx
                        && is_lone_begin(sql);
                    let begin_with_modes = facts.begin == Some(false)
                        && !facts.serializable
                        && facts.effects.is_empty()
                        && !facts.ends_tx
                        && facts.write_reason.is_none()
                        && !sql.trim().trim_end_matches(';').contains(';');
                    let local = super::local::parse(sql);
                    // The text may borrow from the message, which the unit
                    // keeps.
                    drop(text);
                    let mut unit = Unit {
                        local,
                        bytes: message.freeze(),
                        synced: true,
                        lone_begin,
                        begin_with_modes,
                        ..Unit::default()
                    };
                    for effect in &facts.effects {
                        if let crate::router::Effect::Prepare { name, sql, inner } = effect {
                            let prepared = Prepared::new(Replay::Sql(sql.clone()), inner.clone());
                            unit.sql_prepares.push((name.clone(), prepared));
                        }
                    }
                    // EXECUTE runs a prepared statement: route it by that
                    // statement's own facts.
                    if !facts.executes.is_empty() {
                        let facts = Arc::make_mut(&mut facts);
                        for name in facts.executes.clone() {
                            match state.prepared.get(&name) {
                                Some(prepared) => facts.merge(&prepared.facts),
                                None => {
                                    facts.merge(&UnitFacts::write("unknown prepared statement"))
                                }
                            }
                        }
                    }
                    unit.facts = facts;
                    out.push_back(unit);
                }
                b'F' => {
                    self.finish_batch(out, false);
                    out.push_back(Unit {
                        bytes: message.freeze(),
                        synced: true,
                        facts: Arc::new(UnitFacts::write("function call")),
                        ..Unit::default()
                    });
                }
                _ => {}
            }
        }
    }

    fn finish_batch(&mut self, out: &mut std::collections::VecDeque<Unit>, synced: bool) {
        if let Some(mut unit) = self.building.take() {
            unit.bytes = self.building_bytes.split().freeze();
            if !synced && unit.bytes[..] == *b"H\0\0\0\x04" {
                // A Flush alone (libpq sends one as it leaves pipeline
                // mode): every batch before it ended in a Sync or a Flush,
                // so no server holds output of the client's to flush, and
                // nothing is sent. Sent, it would leave the session with a
                // batch open on a server: holding the connection, routing
                // its next unit there, and lost with it.
                return;
            }
            unit.synced = synced;
            out.push_back(unit);
        }
    }
}

/// Notes what one extended-protocol message means for its unit's routing.
fn extended_message(
    unit: &mut Unit,
    tag: u8,
    body: &[u8],
    state: &SessionState,
    source: &dyn FactsSource,
    texts: &mut TextRules,
) {
    match tag {
        b'P' => {
            let (raw_name, rest) = split_cstr(body);
            let name = std::str::from_utf8(raw_name).unwrap_or("");
            let (sql, facts) = text_facts(text_bytes(rest), TextFrom::Parse, source, texts);
            texts.note_effects(&facts.effects);
            merge_facts(&mut unit.facts, &facts);
            // A statement name that is not UTF-8 is kept by its server
            // alone: the proxy, which files names as text, could not tell
            // two such names apart to prepare them elsewhere.
            if name.is_empty() && !raw_name.is_empty() {
                Arc::make_mut(&mut unit.facts).pin(NOT_UTF8);
            }
            if unit.parses.is_empty() {
                unit.local = super::local::parse(&sql);
            } else {
                unit.local = None;
            }
            // Only a named statement outlives its batch and may need to be
            // prepared again elsewhere; the unnamed one just takes its place
            // in the order of ParseComplete answers.
            let named = (!name.is_empty()).then(|| {
                let mut message = BytesMut::with_capacity(body.len() + 5);
                message.extend_from_slice(b"P");
                message.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
                message.extend_from_slice(body);
                (
                    name.to_string(),
                    Prepared::new(Replay::Parse(message.freeze()), facts),
                )
            });
            unit.parses.push(named);
        }
        b'B' => {
            use_statement(unit, bound_statement(body), state);
            bind_settings(unit, body);
        }
        b'D' if body.first() == Some(&b'S') => use_statement(unit, cstr(&body[1..]), state),
        b'C' if body.first() == Some(&b'S') => {
            let name = cstr(&body[1..]);
            if !name.is_empty() {
                unit.closes.push(name.to_string());
            }
        }
        _ => {}
    }
}

/// Gives a `set_config('name', $n, false)` of this unit the value of its
/// Bind parameter, so it is replayed like a `SET`. A value that cannot be
/// read (NULL, not UTF-8, missing) leaves the setting unknown: the session
/// is pinned to its server instead.
fn bind_settings(unit: &mut Unit, bind: &[u8]) {
    use crate::router::Effect;
    let unresolved = |e: &Effect| matches!(e, Effect::SetFromParameter { .. });
    if !unit.facts.effects.iter().any(unresolved) {
        return;
    }
    let params = crate::protocol::messages::bind_text_parameters(bind);
    let mut pin = false;
    let facts = Arc::make_mut(&mut unit.facts);
    for effect in facts.effects.iter_mut() {
        let Effect::SetFromParameter { name, param } = effect else {
            continue;
        };
        match params
            .as_ref()
            .and_then(|p| p.get(*param))
            .cloned()
            .flatten()
        {
            Some(value) => {
                let sql = crate::router::facts::set_config_sql(name, &value);
                *effect = Effect::Set {
                    name: std::mem::take(name),
                    sql,
                };
            }
            None => pin = true,
        }
    }
    if pin {
        facts.effects.retain(|e| !unresolved(e));
        facts.pin(crate::router::facts::SET_CONFIG);
    }
}

/// Whether a unit runs anything (a Query or an Execute), rather than only
/// preparing or describing statements: a Parse of `BEGIN` opens no block.
pub fn executes(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while rest.len() >= 5 {
        if matches!(rest[0], b'Q' | b'E') {
            return true;
        }
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        match usize::try_from(len).ok().and_then(|n| rest.get(1 + n..)) {
            Some(next) => rest = next,
            None => break,
        }
    }
    false
}

/// The SQL texts of a unit's Query and Parse messages, read as routing
/// reads them (see [`text_facts`]).
pub fn sql_texts(bytes: &[u8]) -> Vec<Cow<'_, str>> {
    let mut texts = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let tag = rest[0];
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        let Some(message) = usize::try_from(len).ok().and_then(|n| rest.get(1..1 + n)) else {
            break;
        };
        let body = message.get(4..).unwrap_or_default();
        match tag {
            b'Q' => texts.push(String::from_utf8_lossy(text_bytes(body))),
            b'P' => texts.push(String::from_utf8_lossy(text_bytes(split_cstr(body).1))),
            _ => {}
        }
        rest = &rest[1 + message.len()..];
    }
    texts.retain(|t| !t.is_empty());
    texts
}

/// Splits a NUL-terminated string off the front of `body`.
fn split_cstr(body: &[u8]) -> (&[u8], &[u8]) {
    match body.iter().position(|&b| b == 0) {
        Some(end) => (&body[..end], &body[end + 1..]),
        None => (body, &[]),
    }
}

/// A named statement used by Bind or Describe: route by its SQL, and make
/// sure the server has it.
fn use_statement(unit: &mut Unit, name: &str, state: &SessionState) {
    if name.is_empty() {
        return;
    }
    if let Some(local) = state.local_prepared.get(name) {
        // A `causeway.*` command prepared earlier: answered by the proxy,
        // when it is all the batch runs.
        if unit.parses.is_empty() && unit.uses.is_empty() {
            unit.local = Some(local.clone());
        }
        return;
    }
    let parsed_here = unit.parses.named().any(|(n, _)| n == name);
    if parsed_here {
        return;
    }
    match state.prepared.get(name) {
        Some(prepared) => {
            merge_facts(&mut unit.facts, &prepared.facts);
            if !unit.uses.iter().any(|u| u == name) {
                unit.uses.push(name.to_string());
            }
        }
        // Unknown here: the server will say it does not exist; any server
        // can say that, the primary is as good as any. It is still among
        // the names the unit uses, so that a statement another client
        // left under that name on the server is closed first (see
        // `SessionState::catch_up`).
        None => {
            Arc::make_mut(&mut unit.facts).merge(&UnitFacts::write("unknown prepared statement"));
            if !unit.uses.iter().any(|u| u == name) {
                unit.uses.push(name.to_string());
            }
        }
    }
}

/// A statement or portal name: the NUL-terminated string at the start of
/// `body`, or empty (the unnamed one) when it is not UTF-8. A Parse of such
/// a name pins the session to the connection that holds it (see
/// `extended_message`); statement texts go through [`text_facts`].
/// The statement a Bind message names (after its portal's name); empty
/// for the unnamed statement or a name that is not UTF-8.
pub(super) fn bound_statement(body: &[u8]) -> &str {
    cstr(split_cstr(body).1)
}

/// The SQL text of a Parse message (after the statement's name).
pub(super) fn parsed_sql(body: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(text_bytes(split_cstr(body).1))
}

fn cstr(body: &[u8]) -> &str {
    std::str::from_utf8(text_bytes(body)).unwrap_or("")
}

/// The bytes of a NUL-terminated string at the start of `body`.
fn text_bytes(body: &[u8]) -> &[u8] {
    // memchr for the terminator: every statement's text passes here.
    std::ffi::CStr::from_bytes_until_nul(body).map_or(body, |c| c.to_bytes())
}

/// The facts of the statement text `raw`, and the text as the proxy reads
/// it. A text that is not UTF-8 (from a client whose `client_encoding` is
/// LATIN1, say) is read with its foreign bytes replaced: the keywords that
/// decide where it runs are ASCII, so it is routed as it should be. What
/// it changes in the session (a SET, a PREPARE) would be replayed on
/// another connection from that altered copy, so such a text pins the
/// session to its connection instead, as a temporary table does. So does
/// a text the server may read otherwise than the proxy (see [`super::texts`]).
fn text_facts<'a>(
    raw: &'a [u8],
    from: TextFrom,
    source: &dyn FactsSource,
    rules: &TextRules,
) -> (Cow<'a, str>, SharedFacts) {
    let (sql, mut facts) = match std::str::from_utf8(raw) {
        Ok(sql) => (Cow::Borrowed(sql), source.facts(sql, from)),
        Err(_) => {
            let sql = String::from_utf8_lossy(raw);
            let mut facts = source.facts(&sql, from);
            if !facts.effects.is_empty() {
                Arc::make_mut(&mut facts).pin(NOT_UTF8);
            }
            (sql, facts)
        }
    };
    if let Some(reason) = rules.pin_for(raw) {
        Arc::make_mut(&mut facts).pin(reason);
    }
    (sql, facts)
}

/// A unit that is one simple-protocol statement ending a block, alone:
/// `Some(true)` for `COMMIT` (or `END`), `Some(false)` for `ROLLBACK` (or
/// `ABORT`); nothing of it runs before the block ends.
pub fn lone_end(bytes: &[u8]) -> Option<bool> {
    // A simple-protocol unit is one Query message.
    if bytes.first() != Some(&b'Q') {
        return None;
    }
    let texts = sql_texts(bytes);
    let [sql] = texts.as_slice() else {
        return None;
    };
    match bare(sql).as_str() {
        "commit" | "commit work" | "commit transaction" | "end" | "end work"
        | "end transaction" => Some(true),
        "rollback"
        | "rollback work"
        | "rollback transaction"
        | "abort"
        | "abort work"
        | "abort transaction" => Some(false),
        _ => None,
    }
}

/// A statement's text without its surrounding space and `;`, lowercased,
/// to be compared whole with a short statement.
fn bare(sql: &str) -> String {
    sql.trim().trim_end_matches(';').trim().to_ascii_lowercase()
}

fn is_lone_begin(sql: &str) -> bool {
    matches!(
        bare(sql).as_str(),
        "begin" | "begin transaction" | "begin work" | "start transaction"
    )
}

/// Facts with a cache, shared by all sessions, and the session's database
/// catalog, which tells reads that call VOLATILE user functions.
pub struct CachedFacts<'a> {
    pub cache: &'a crate::router::facts::FactsCache,
    pub extra_write_functions: &'a [String],
    pub catalog: &'a crate::catalog::Catalog,
}

impl FactsSource for CachedFacts<'_> {
    fn facts(&self, sql: &str, from: TextFrom) -> SharedFacts {
        let lookup = match from {
            TextFrom::Query => crate::router::facts::cached_query,
            TextFrom::Parse => crate::router::facts::cached,
        };
        let mut facts = lookup(self.cache, sql, self.extra_write_functions);
        if facts.calls.is_empty() || (facts.write_reason.is_some() && !self.catalog.has_setters()) {
            return facts;
        }
        let calls = self.catalog.judge(&facts.calls);
        let writes = facts.write_reason.is_none() && calls.writer.is_some();
        let sets = calls.setter.is_some();
        if writes {
            Arc::make_mut(&mut facts).write_reason = Some("volatile function");
        }
        if sets {
            Arc::make_mut(&mut facts).pin(crate::router::facts::SETTER_CALL);
        }
        facts
    }
}

pub fn shared(facts: UnitFacts) -> SharedFacts {
    Arc::new(facts)
}

#[cfg(test)]
mod tests {
    use super::lone_end;
    use crate::protocol::messages;

    fn query(sql: &str) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        messages::query(&mut out, sql);
        out.to_vec()
    }

    #[test]
    fn tells_a_lone_end_of_a_block() {
        assert_eq!(lone_end(&query("COMMIT")), Some(true));
        assert_eq!(lone_end(&query(" end work ;")), Some(true));
        assert_eq!(lone_end(&query("Commit Transaction")), Some(true));
        assert_eq!(lone_end(&query("ROLLBACK")), Some(false));
        assert_eq!(lone_end(&query("abort;")), Some(false));
        assert_eq!(lone_end(&query("ROLLBACK TO a")), None);
        assert_eq!(lone_end(&query("COMMIT AND CHAIN")), None);
        assert_eq!(lone_end(&query("SELECT 1; COMMIT")), None);
        assert_eq!(lone_end(&query("COMMIT PREPARED 'x'")), None);
        let mut two = query("COMMIT");
        two.extend(query("SELECT 1"));
        assert_eq!(lone_end(&two), None, "a second message");
    }
}
