//! psql helpers: the quickest way for a test to look at a server directly,
//! bypassing the proxy. They log in as the superuser `postgres` over TCP
//! (trusted on loopback), so they work on any server of the cluster.

use super::cluster::TestCluster;
use super::tools::{run, try_run, Tools};

impl TestCluster {
    /// Runs `sql` on database `postgres` at `port`; returns psql's unaligned,
    /// tuples-only output (`-X -At`): rows on lines, columns split by `|`,
    /// trailing newline removed. Panics with psql's stderr on error.
    pub fn psql(&self, port: u16, sql: &str) -> String {
        self.psql_db(port, "postgres", sql)
    }

    /// [`TestCluster::psql`] on database `db`.
    pub fn psql_db(&self, port: u16, db: &str, sql: &str) -> String {
        let output = run(
            &mut psql_command(port, db, &[sql]),
            &format!("psql on port {port}, db {db}: {sql}"),
        );
        trim_output(output)
    }

    /// [`TestCluster::psql_db`] returning the error (psql's stderr) instead of
    /// panicking: for statements expected to fail, or servers that may be down.
    pub fn try_psql(&self, port: u16, db: &str, sql: &str) -> Result<String, String> {
        try_run(&mut psql_command(port, db, &[sql])).map(trim_output)
    }

    /// Runs each statement on its own (one `-c` each, so each commits alone;
    /// CREATE DATABASE and ALTER SYSTEM need that), stopping at the first error.
    pub fn psql_statements(&self, port: u16, db: &str, statements: &[&str]) -> String {
        let output = run(
            &mut psql_command(port, db, statements),
            &format!("psql on port {port}, db {db}: {statements:?}"),
        );
        trim_output(output)
    }
}

fn psql_command(port: u16, db: &str, statements: &[&str]) -> std::process::Command {
    let mut cmd = Tools::get().psql_command();
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &port.to_string(), "-d", db]);
    for statement in statements {
        cmd.arg("-c").arg(statement);
    }
    cmd
}

fn trim_output(mut output: String) -> String {
    while output.ends_with('\n') {
        output.pop();
    }
    output
}
