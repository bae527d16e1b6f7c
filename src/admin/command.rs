//! The console's commands as data: the text a client sends becomes a
//! [`Command`] before anything runs, so parsing is tested without a socket
//! and the extended protocol can describe a statement's columns at Parse
//! time, before it is executed.

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    Reload,
    Pause,
    Resume,
    /// End one client, by the `pid` of `SHOW CLIENTS`.
    Kill(i32),
    Shutdown,
    /// `SET name = value`: accepted and ignored. Drivers set session options
    /// as they connect (pgjdbc sends `SET extra_float_digits = 3`), and none
    /// of them changes the console's text answers.
    Set,
}

/// What a `SHOW` shows; each is a result set with fixed text columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Clients,
    Servers,
    Replicas,
    Pools,
    Databases,
    Stats,
    Config,
    Version,
    Help,
}

/// Every command with a line about it: `SHOW HELP` lists these, and the
/// hint of an unknown command names them.
pub const HELP: &[(&str, &str)] = &[
    ("SHOW HELP", "this list"),
    (
        "SHOW CLIENTS",
        "connected clients: pid, user, database, server in use, causal LSN",
    ),
    (
        "SHOW SERVERS",
        "server connections per server, database and user: in use, idle",
    ),
    (
        "SHOW REPLICAS",
        "replicas: health, replayed LSN, lag, reads served, timeline",
    ),
    (
        "SHOW POOLS",
        "per database and user, as PgBouncer: clients, server connections, pool mode",
    ),
    (
        "SHOW DATABASES",
        "per database in use and server, as PgBouncer: host, port, pool size",
    ),
    (
        "SHOW STATS",
        "counters since start: clients, routing, read waits",
    ),
    ("SHOW CONFIG", "the configuration in force"),
    ("SHOW VERSION", "causeway's version"),
    ("RELOAD", "re-read the config file (as SIGHUP)"),
    (
        "PAUSE",
        "hold new work until RESUME, once running transactions end",
    ),
    ("RESUME", "let held work go"),
    ("KILL pid", "end one client (pid from SHOW CLIENTS)"),
    ("SHUTDOWN", "drain and stop the proxy (as SIGTERM)"),
    (
        "SET name = value",
        "accepted and ignored, for drivers that set options as they connect",
    ),
];

/// Why a text is no console command: the error's message and its hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    pub message: String,
    pub hint: String,
}

impl Command {
    /// Reads one command. Case, surrounding blanks and a trailing `;` do not
    /// matter; anything else that is not a command is [`Unknown`].
    pub fn parse(sql: &str) -> Result<Command, Unknown> {
        let text = sql.trim().trim_end_matches(';').trim();
        let lower = text.to_ascii_lowercase();
        let words: Vec<&str> = lower.split_whitespace().collect();
        let command = match words.as_slice() {
            ["show", what] => Command::Show(match *what {
                "clients" => Show::Clients,
                "servers" => Show::Servers,
                "replicas" => Show::Replicas,
                "pools" => Show::Pools,
                "databases" => Show::Databases,
                "stats" => Show::Stats,
                "config" => Show::Config,
                "version" => Show::Version,
                "help" => Show::Help,
                _ => return Err(unknown(text)),
            }),
            ["reload"] => Command::Reload,
            ["pause"] => Command::Pause,
            ["resume"] => Command::Resume,
            ["shutdown"] => Command::Shutdown,
            ["set", _, ..] => Command::Set,
            ["kill", pid] => match pid.parse::<i32>() {
                Ok(pid) => Command::Kill(pid),
                Err(_) => {
                    return Err(Unknown {
                        message: format!("KILL takes a client's pid, not \"{pid}\""),
                        hint: "SHOW CLIENTS lists the pids".to_string(),
                    })
                }
            },
            _ => return Err(unknown(text)),
        };
        Ok(command)
    }

    /// The columns of the result set this command answers with; empty for
    /// the commands that answer with a command tag only.
    pub fn columns(&self) -> &'static [&'static str] {
        match self {
            Command::Show(show) => show.columns(),
            _ => &[],
        }
    }

    /// The command tag of a command that returns no rows.
    pub fn tag(&self) -> &'static str {
        match self {
            Command::Show(_) => "SHOW",
            Command::Reload => "RELOAD",
            Command::Pause => "PAUSE",
            Command::Resume => "RESUME",
            Command::Kill(_) => "KILL",
            Command::Shutdown => "SHUTDOWN",
            Command::Set => "SET",
        }
    }
}

impl Show {
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Show::Clients => &[
                "pid",
                "user",
                "database",
                "address",
                "application_name",
                "client_id",
                "server",
                "causal_lsn",
                "units",
                "connected_seconds",
                "state",
            ],
            Show::Servers => &["server", "database", "user", "in_use", "idle"],
            Show::Replicas => &[
                "name",
                "address",
                "healthy",
                "replayed_lsn",
                "lag_bytes",
                "lag_seconds",
                "reads_served",
                "last_error",
                "timeline",
            ],
            Show::Pools => &[
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "sv_active",
                "sv_idle",
                "sv_used",
                "maxwait",
                "pool_mode",
            ],
            Show::Databases => &[
                "name",
                "host",
                "port",
                "database",
                "server",
                "role",
                "pool_size",
                "pool_mode",
                "current_connections",
                "paused",
                "disabled",
            ],
            Show::Stats => &["stat", "value"],
            Show::Config => &["key", "value"],
            Show::Version => &["version"],
            Show::Help => &["command", "description"],
        }
    }
}

fn unknown(text: &str) -> Unknown {
    let commands: Vec<&str> = HELP.iter().map(|(command, _)| *command).collect();
    Unknown {
        message: format!("unknown console command \"{text}\""),
        hint: format!("the console knows {}", commands.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_whatever_their_case_and_blanks() {
        let cases = [
            ("SHOW REPLICAS", Command::Show(Show::Replicas)),
            ("show pools;", Command::Show(Show::Pools)),
            ("  Show   Databases ; ", Command::Show(Show::Databases)),
            ("SHOW HELP", Command::Show(Show::Help)),
            ("reload", Command::Reload),
            ("PAUSE;", Command::Pause),
            ("resume", Command::Resume),
            ("KILL 42", Command::Kill(42)),
            ("shutdown", Command::Shutdown),
            ("SET extra_float_digits = 3", Command::Set),
            ("set application_name to 'x'", Command::Set),
        ];
        for (text, expected) in cases {
            assert_eq!(Command::parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn unknown_texts_say_what_the_console_knows() {
        for text in ["SELECT 1", "SHOW", "SHOW LISTS", "KILL", ""] {
            let err = Command::parse(text).expect_err(text);
            assert!(
                err.message.starts_with("unknown console command"),
                "{err:?}"
            );
            assert!(err.hint.contains("SHOW POOLS"), "{err:?}");
            assert!(err.hint.contains("SHUTDOWN"), "{err:?}");
        }
        let err = Command::parse("KILL me").expect_err("no pid");
        assert!(err.message.contains("pid"), "{err:?}");
    }

    #[test]
    fn every_show_has_columns_and_every_other_command_none() {
        for (text, _) in HELP {
            let command =
                Command::parse(&text.replace("pid", "1").replace("name = value", "a = b"))
                    .expect(text);
            match command {
                Command::Show(_) => assert!(!command.columns().is_empty(), "{text}"),
                _ => assert!(command.columns().is_empty(), "{text}"),
            }
        }
    }
}
