//! The programs a test cluster needs, and how to run them.
//!
//! Postgres refuses to run as root, and tests often do run as root (CI, a
//! container). So when the effective uid is 0 the server programs (initdb,
//! pg_ctl, pg_basebackup) run as the unprivileged `postgres` user through
//! `runuser -u postgres --`; otherwise they run directly. Clients (psql) run
//! as whoever we are: they log in over TCP, the user does not matter.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// What to install when a program is missing (Debian package names).
const SERVER_PACKAGE: &str = "postgresql-15 (or any `postgresql-NN` server package)";
const REDIS_PACKAGE: &str = "redis-server";

/// Environment variables that would silently change where psql or libpq-style
/// clients connect; a test must talk to its own cluster only.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGDATA",
    "PGTARGETSESSIONATTRS",
];

/// Where the Postgres programs are and which user the servers run as.
pub struct Tools {
    pub bin_dir: PathBuf,
    /// `Some((uid, gid))` of `postgres` when we are root and must switch user.
    pub run_as: Option<(u32, u32)>,
}

impl Tools {
    /// Found once per test process; panics naming the package to install.
    pub fn get() -> &'static Tools {
        static TOOLS: OnceLock<Tools> = OnceLock::new();
        TOOLS.get_or_init(|| {
            let bin_dir = find_pg_bin_dir();
            let run_as = if effective_uid() == 0 {
                Some(ensure_postgres_user())
            } else {
                None
            };
            Tools { bin_dir, run_as }
        })
    }

    /// A server-side program (initdb, pg_ctl, pg_basebackup), as the user the
    /// servers run as. The working directory is `cwd`: initdb and pg_ctl
    /// complain when started from a directory that user cannot read.
    pub fn server_command(&self, program: &str, cwd: &Path) -> Command {
        let path = self.bin_dir.join(program);
        let mut cmd = match self.run_as {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        clean_env(&mut cmd);
        cmd.current_dir(cwd).stdin(Stdio::null());
        cmd
    }

    /// psql, run as ourselves.
    pub fn psql_command(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        clean_env(&mut cmd);
        cmd.env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    /// The same server-program invocation as a shell prefix, for the watchdog.
    pub fn shell_prefix(&self, program: &str) -> String {
        let path = shell_quote(&self.bin_dir.join(program).to_string_lossy());
        match self.run_as {
            Some(_) => format!("runuser -u postgres -- {path}"),
            None => path,
        }
    }

    /// Where clusters are made: `$CAUSEWAY_TEST_TMPDIR` if set, else
    /// `/dev/shm` when it is a tmpfs with at least 2 GiB free, else the
    /// system temp dir. A data directory is ~1000 small files and creating
    /// files on a VM's disk is slow: on tmpfs initdb and pg_basebackup run
    /// 3-10 times faster (and a throwaway cluster needs no disk anyway).
    pub fn cluster_parent_dir(&self) -> PathBuf {
        if let Some(dir) = std::env::var_os("CAUSEWAY_TEST_TMPDIR") {
            return PathBuf::from(dir);
        }
        let shm = Path::new("/dev/shm");
        if tmpfs_free_bytes(shm).is_some_and(|free| free >= 2 << 30) {
            return shm.to_path_buf();
        }
        std::env::temp_dir()
    }

    /// Hands a path we created to the servers' user (no-op when not root).
    pub fn give_to_server_user(&self, path: &Path) {
        if let Some((uid, gid)) = self.run_as {
            chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown postgres {}: {e}", path.display()));
        }
    }

    /// As root, every ancestor of `dir` must be traversable (o+x) by the
    /// `postgres` user, or the servers cannot reach their data. /tmp already
    /// is; a TMPDIR under /root is not, and we add just the x bit.
    pub fn make_ancestors_traversable(&self, dir: &Path) {
        if self.run_as.is_none() {
            return;
        }
        for ancestor in dir.ancestors().skip(1) {
            let Ok(meta) = fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                fs::set_permissions(ancestor, fs::Permissions::from_mode(mode | 0o001))
                    .unwrap_or_else(|e| {
                        panic!("chmod o+x {} (for user postgres): {e}", ancestor.display())
                    });
            }
        }
    }
}

/// Path of redis-server, or a panic naming the package.
pub fn redis_server_path() -> PathBuf {
    find_in_path("redis-server").unwrap_or_else(|| {
        panic!(
            "redis-server not found in PATH: install the Debian package `{REDIS_PACKAGE}` \
             (apt-get install -y {REDIS_PACKAGE})"
        )
    })
}

/// Runs a command to completion; on failure panics with its stderr and stdout
/// (this is test code: a broken fixture should say exactly what broke).
pub fn run(cmd: &mut Command, what: &str) -> String {
    match try_run(cmd) {
        Ok(stdout) => stdout,
        Err(message) => panic!("{what}: {message}"),
    }
}

/// Like [`run`], but returns the failure (with stderr) instead of panicking.
pub fn try_run(cmd: &mut Command) -> Result<String, String> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    if status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{cmd:?} failed ({status})\n--- stderr ---\n{}\n--- stdout ---\n{}",
            String::from_utf8_lossy(&stderr).trim_end(),
            stdout.trim_end()
        ))
    }
}

/// Single-quotes a string for `sh`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Free bytes of `dir` if it is a tmpfs (`df` rather than statvfs: no libc).
fn tmpfs_free_bytes(dir: &Path) -> Option<u64> {
    let out = try_run(
        Command::new("df")
            .args(["-k", "--output=fstype,avail"])
            .arg(dir),
    )
    .ok()?;
    let mut fields = out.lines().nth(1)?.split_whitespace();
    let (fstype, avail_kib) = (fields.next()?, fields.next()?);
    (fstype == "tmpfs").then_some(())?;
    avail_kib.parse::<u64>().ok().map(|kib| kib * 1024)
}

fn clean_env(cmd: &mut Command) {
    for var in PG_ENV {
        cmd.env_remove(var);
    }
}

/// `$PG_BIN`, else the newest `/usr/lib/postgresql/NN/bin`, else `$PATH`.
fn find_pg_bin_dir() -> PathBuf {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "pg_basebackup", "psql"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        if has_all(&dir) {
            return dir;
        }
        panic!(
            "PG_BIN={} lacks initdb, pg_ctl, postgres, pg_basebackup or psql: point it at \
             the bin directory of the Debian package {SERVER_PACKAGE}, or unset it",
            dir.display()
        );
    }
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_all(dir))
        .collect();
    versioned.sort();
    if let Some((_, dir)) = versioned.pop() {
        return dir;
    }
    if let Some(dir) = find_in_path("initdb").and_then(|p| p.parent().map(Path::to_path_buf)) {
        if has_all(&dir) {
            return dir;
        }
    }
    panic!(
        "PostgreSQL server programs (initdb, pg_ctl, postgres, pg_basebackup, psql) not found \
         in $PG_BIN, /usr/lib/postgresql/*/bin or $PATH: install the Debian package \
         {SERVER_PACKAGE} (apt-get install -y postgresql-15)"
    )
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The effective uid, from /proc (no libc dependency needed).
fn effective_uid() -> u32 {
    let status = fs::read_to_string("/proc/self/status")
        .unwrap_or_else(|e| panic!("read /proc/self/status to learn our uid: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .unwrap_or_else(|| panic!("no effective uid in /proc/self/status"))
}

/// uid and gid of the `postgres` user, created (system user) when missing.
fn ensure_postgres_user() -> (u32, u32) {
    let id = |flag: &str| try_run(Command::new("id").args([flag, "postgres"]));
    if id("-u").is_err() {
        run(
            Command::new("useradd").args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "postgres",
            ]),
            "creating user postgres (Postgres refuses to run as root)",
        );
    }
    let number = |flag: &str| -> u32 {
        let out = id(flag).unwrap_or_else(|e| panic!("id {flag} postgres: {e}"));
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("id {flag} postgres printed {out:?}: {e}"))
    };
    (number("-u"), number("-g"))
}
