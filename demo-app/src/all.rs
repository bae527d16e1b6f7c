//! `demo-app all`: every process of the demo in one terminal, like
//! `forego start`: api, payments, enqueuer, completer, reaper, streamer, two
//! consumers, cdc and the simulator, each a child process of this binary,
//! each line of its output prefixed with its name (coloured on a terminal).
//!
//! The children run in process groups of their own, so a Ctrl-C in the
//! terminal reaches only this process, which then stops them in order: the
//! simulator first (no new traffic), then everything else with SIGTERM, each
//! finishing what it was doing; whatever is still running after the grace
//! period gets SIGKILL (and if `all` is killed outright, its children get
//! SIGTERM from the kernel). If any child exits on its own, the rest are stopped
//! the same way and `all` fails, naming it.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

/// How long children get to stop after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// One child: its name (the prefix) and its `demo-app` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub name: String,
    pub args: Vec<String>,
}

impl Proc {
    fn new(name: &str, args: &[&str]) -> Proc {
        Proc {
            name: name.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// What `all` runs.
#[derive(Clone, Debug)]
pub struct AllConfig {
    pub api_port: u16,
    pub payments_port: u16,
    /// Pause between the simulator's rides.
    pub pause_ms: u64,
    /// Seconds between the simulator's status lines (0: none, and its
    /// summary every 100 rides instead).
    pub status_every: u64,
    /// Leave the simulator out.
    pub no_simulator: bool,
}

/// The log consumers `all` runs, by name.
pub const CONSUMERS: [&str; 2] = ["a", "b"];

/// The demo's processes; the simulator, if any, last.
pub fn procs(config: &AllConfig) -> Vec<Proc> {
    let api = config.api_port.to_string();
    let payments = config.payments_port.to_string();
    let api_url = format!("http://127.0.0.1:{api}");
    let payments_url = format!("http://127.0.0.1:{payments}");
    let mut procs = vec![
        Proc::new("payments", &["payments", "--port", &payments]),
        Proc::new(
            "api",
            &["api", "--port", &api, "--payments-url", &payments_url],
        ),
        Proc::new("enqueuer", &["enqueuer"]),
        Proc::new("completer", &["completer", "--payments-url", &payments_url]),
        Proc::new("reaper", &["reaper"]),
        Proc::new("streamer", &["streamer"]),
    ];
    for name in CONSUMERS {
        procs.push(Proc::new(&format!("consumer-{name}"), &["consumer", name]));
    }
    procs.push(Proc::new("cdc", &["cdc"]));
    if !config.no_simulator {
        let pause = config.pause_ms.to_string();
        let mut args = vec!["simulate", "--api-url", &api_url, "--pause-ms", &pause];
        let status_every = config.status_every.to_string();
        let consumers = CONSUMERS.join(",");
        if config.status_every > 0 {
            args.extend([
                "--status-every",
                &status_every,
                "--report-every",
                "0",
                "--consumers",
                &consumers,
            ]);
        }
        procs.push(Proc::new("simulator", &args));
    }
    procs
}

/// Runs `procs` as children of `exe` until `shutdown` or until one exits;
/// `Ok` only when stopped by `shutdown`.
pub async fn run(
    exe: &Path,
    procs: &[Proc],
    wait_for_port: Option<u16>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let width = procs.iter().map(|p| p.name.len()).max().unwrap_or(0);
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let (exited_tx, mut exited_rx) = mpsc::unbounded_channel();
    let mut pids: Vec<Option<u32>> = Vec::new();
    let mut failure = None;
    for (index, proc) in procs.iter().enumerate() {
        let last = index + 1 == procs.len();
        if last && proc.name == "simulator" {
            if let Some(port) = wait_for_port {
                wait_listening(port, &mut shutdown).await;
            }
        }
        let prefix = prefix(&proc.name, width, index, colour);
        match spawn(exe, proc) {
            Ok(child) => {
                pids.push(child.id());
                tokio::spawn(supervise(child, prefix, index, exited_tx.clone()));
            }
            Err(e) => {
                failure = Some(format!("cannot start {}: {e}", proc.name));
                pids.push(None);
                break;
            }
        }
    }
    if failure.is_none() {
        tokio::select! {
            _ = crate::shutdown::requested(shutdown.clone()) => {}
            Some((index, status)) = exited_rx.recv() => {
                pids[index] = None;
                failure = Some(format!("{} exited ({status})", procs[index].name));
            }
        }
    }
    if let Some(why) = &failure {
        say(&format!("{why}; stopping everything"));
    } else {
        say("stopping everything");
    }
    // The simulator first, so nothing sends requests to stopping services.
    let (simulator, rest): (Vec<usize>, Vec<usize>) =
        (0..procs.len()).partition(|&i| procs[i].name == "simulator");
    for group in [simulator, rest] {
        for &i in &group {
            if let Some(pid) = pids[i] {
                signal(pid, libc::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + GRACE;
        while group.iter().any(|&i| pids[i].is_some()) {
            match tokio::time::timeout_at(deadline, exited_rx.recv()).await {
                Ok(Some((index, _))) => {
                    pids[index] = None;
                }
                _ => break,
            }
        }
        for &i in &group {
            if let Some(pid) = pids[i].take() {
                say(&format!(
                    "{} did not stop within {GRACE:?}: killing it",
                    procs[i].name
                ));
                signal(pid, libc::SIGKILL);
            }
        }
    }
    say("stopped");
    failure.map_or(Ok(()), Err)
}

fn spawn(exe: &Path, proc: &Proc) -> std::io::Result<Child> {
    let mut command = Command::new(exe);
    command
        .args(&proc.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // Should `all` itself be killed outright, its children get SIGTERM
    // rather than running on without anyone reading their output.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command.spawn()
}

/// Copies the child's output, prefixed, until it exits; then reports.
async fn supervise(
    mut child: Child,
    prefix: String,
    index: usize,
    exited: mpsc::UnboundedSender<(usize, ExitStatus)>,
) {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (_, _, status) = tokio::join!(copy(stdout, &prefix), copy(stderr, &prefix), child.wait());
    if let Ok(status) = status {
        let _ = exited.send((index, status));
    }
}

async fn copy(stream: Option<impl AsyncRead + Unpin>, prefix: &str) {
    let Some(stream) = stream else { return };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{prefix}{}", text.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

/// `name     | `, padded to `width`, in the `index`th colour.
fn prefix(name: &str, width: usize, index: usize, colour: bool) -> String {
    const COLOURS: [u8; 10] = [36, 33, 32, 35, 34, 96, 93, 92, 95, 94];
    if colour {
        let code = COLOURS[index % COLOURS.len()];
        format!("\x1b[{code}m{name:<width$} |\x1b[0m ")
    } else {
        format!("{name:<width$} | ")
    }
}

fn say(message: &str) {
    println!("all: {message}");
}

fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Waits (up to 15 s, or until shutdown) until something listens on `port`.
async fn wait_listening(port: u16, shutdown: &mut watch::Receiver<bool>) {
    for _ in 0..150 {
        if *shutdown.borrow()
            || tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_process_simulator_last() {
        let config = AllConfig {
            api_port: 7000,
            payments_port: 7001,
            pause_ms: 100,
            status_every: 0,
            no_simulator: false,
        };
        let names: Vec<String> = procs(&config).into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "payments",
                "api",
                "enqueuer",
                "completer",
                "reaper",
                "streamer",
                "consumer-a",
                "consumer-b",
                "cdc",
                "simulator"
            ]
        );
        let simulator = procs(&config).pop().unwrap();
        assert_eq!(
            simulator.args,
            [
                "simulate",
                "--api-url",
                "http://127.0.0.1:7000",
                "--pause-ms",
                "100"
            ]
        );
        let watched = AllConfig {
            status_every: 5,
            ..config.clone()
        };
        let simulator = procs(&watched).pop().unwrap();
        assert_eq!(
            simulator.args[5..],
            [
                "--status-every",
                "5",
                "--report-every",
                "0",
                "--consumers",
                "a,b"
            ]
        );
        let without = AllConfig {
            no_simulator: true,
            ..config
        };
        assert_eq!(procs(&without).len(), 9);
    }

    #[test]
    fn prefixes_line_up() {
        assert_eq!(prefix("api", 8, 0, false), "api      | ");
        assert_eq!(prefix("api", 3, 0, true), "\x1b[36mapi |\x1b[0m ");
    }
}
