//! The console's pgwire handlers: one [`ConsoleHandler`] answers the simple
//! query protocol (`Query`) and the extended one (Parse, Bind, Describe,
//! Execute, Sync), and [`CommandParser`] is the "SQL parser" pgwire calls
//! at Parse, which reads a [`Command`] and knows its columns before it runs.
//! pgwire keeps the prepared statements and portals, sends Describe's
//! answers and splits results at Execute's row limit.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{stream, Sink};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;

use super::command::{Command, Unknown};
use super::show;
use crate::server::ProxyHandle;

/// How long `PAUSE` waits for running transactions before it answers.
const PAUSE_WAIT: Duration = Duration::from_secs(60);

pub struct ConsoleHandler {
    handle: Arc<ProxyHandle>,
    parser: Arc<CommandParser>,
}

impl ConsoleHandler {
    pub fn new(handle: Arc<ProxyHandle>) -> ConsoleHandler {
        ConsoleHandler {
            handle,
            parser: Arc::new(CommandParser),
        }
    }

    /// Runs `command`; rows go out in `format` (the Bind's result formats).
    async fn run(&self, command: &Command, format: &Format) -> Result<Response, Box<ErrorInfo>> {
        // Always the proxy now in force, not the one this session began with.
        let proxy = self.handle.get();
        let done = |command: &Command| Ok(Response::Execution(Tag::new(command.tag())));
        match command {
            Command::Show(what) => {
                let fields = Arc::new(fields(command, format));
                let rows = show::rows(&proxy, *what);
                let mut encoder = DataRowEncoder::new(fields.clone());
                let mut encoded = Vec::with_capacity(rows.len());
                for row in rows {
                    for value in row {
                        encoder.encode_field(&value).map_err(|e| Box::new(ErrorInfo::from(e)))?;
                    }
                    encoded.push(Ok(encoder.take_row()));
                }
                let mut response = QueryResponse::new(fields, stream::iter(encoded));
                response.set_command_tag(command.tag());
                Ok(Response::Query(response))
            }
            Command::Reload => match self.handle.reload() {
                Ok(_) => done(command),
                Err(e) => Err(error(
                    "F0000",
                    format!("RELOAD failed, the old configuration stays: {e}"),
                )),
            },
            Command::Pause => match proxy.pause.pause(PAUSE_WAIT).await {
                Ok(()) => done(command),
                Err(busy) => Err(error(
                    "55000",
                    format!(
                        "PAUSE: {busy} sessions still have a transaction open after {} s; new units stay held until RESUME",
                        PAUSE_WAIT.as_secs()
                    ),
                )),
            },
            Command::Resume => {
                proxy.pause.resume();
                done(command)
            }
            Command::Kill(pid) => match proxy.stats.clients.get(pid).map(|c| c.clone()) {
                Some(client) => {
                    client.signal.raise(crate::stats::SessionSignal::KILL);
                    done(command)
                }
                None => Err(error(
                    "42704",
                    format!("no client with pid {pid} (see SHOW CLIENTS)"),
                )),
            },
            Command::Shutdown => {
                self.handle.request_shutdown();
                done(command)
            }
            Command::Set => done(command),
        }
    }
}

/// Every column is text. A text value's binary form is its UTF-8 bytes, so
/// a client that asks for binary results (tokio-postgres does) gets the same
/// bytes, labelled as it asked.
fn fields(command: &Command, format: &Format) -> Vec<FieldInfo> {
    command
        .columns()
        .iter()
        .enumerate()
        .map(|(i, name)| {
            FieldInfo::new(
                name.to_string(),
                None,
                None,
                Type::TEXT,
                column_format(format, i),
            )
        })
        .collect()
}

/// The format asked for column `i`; pgwire's own lookup panics when a
/// client sends fewer per-column codes than there are columns.
fn column_format(format: &Format, i: usize) -> FieldFormat {
    match format {
        Format::UnifiedText => FieldFormat::Text,
        Format::UnifiedBinary => FieldFormat::Binary,
        Format::Individual(codes) => codes
            .get(i)
            .map(|code| FieldFormat::from(*code))
            .unwrap_or(FieldFormat::Text),
    }
}

fn error(code: &str, message: String) -> Box<ErrorInfo> {
    Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    ))
}

fn unknown(why: Unknown) -> Box<ErrorInfo> {
    let mut info = error("42601", why.message);
    info.hint = Some(why.hint);
    info
}

#[async_trait]
impl SimpleQueryHandler for ConsoleHandler {
    /// Runs each `;`-separated command in turn and stops at the first error,
    /// as Postgres does with a multi-statement Query.
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut responses = Vec::new();
        for text in query.split(';').filter(|t| !t.trim().is_empty()) {
            let outcome = match Command::parse(text) {
                Ok(command) => self.run(&command, &Format::UnifiedText).await,
                Err(why) => Err(unknown(why)),
            };
            match outcome {
                Ok(response) => responses.push(response),
                Err(info) => {
                    responses.push(Response::Error(info));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for ConsoleHandler {
    type Statement = Command;
    type QueryParser = CommandParser;

    fn query_parser(&self) -> Arc<CommandParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Command>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Command>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.run(&portal.statement.statement, &portal.result_column_format)
            .await
            .map_err(PgWireError::UserError)
    }
}

/// Reads the text of a Parse as a console command: an unknown one fails at
/// Parse, as a syntax error does in Postgres. Commands take no parameters.
pub struct CommandParser;

#[async_trait]
impl QueryParser for CommandParser {
    type Statement = Command;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Command>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        Command::parse(sql)
            .map(Some)
            .map_err(|why| PgWireError::UserError(unknown(why)))
    }

    fn get_parameter_types(&self, _command: &Command) -> PgWireResult<Vec<Type>> {
        Ok(Vec::new())
    }

    fn get_result_schema(
        &self,
        command: &Command,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(fields(command, format.unwrap_or(&Format::UnifiedText)))
    }
}
