//! TLS from clients: SSLRequest gets `S` and a rustls handshake when `[tls]`
//! has a certificate; psql connects with `sslmode=require` and with
//! `verify-full` against the test's CA, and refuses a proxy whose
//! certificate another CA signed; `client_mode = "require"` turns
//! plaintext logins away with Postgres's FATAL 28000. Against a real
//! primary and two streaming replicas.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use causeway::tls::ClientMode;
use causeway::tls::SslMode;
use support::{ClusterOptions, TestCluster, TestProxy, APP_DB, APP_PASSWORD, APP_USER};

/// A CA, and a certificate it signed for `localhost` and 127.0.0.1, as
/// PEM files in `dir`: (ca.pem, server.pem, server.key).
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("causeway test CA {name}"),
    );
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-server.pem")),
        dir.join(format!("{name}-server.key")),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write CA");
    std::fs::write(&paths.1, cert.pem()).expect("write certificate");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write key");
    paths
}

/// psql through the proxy with a libpq connection string's TLS part;
/// stdout, or stderr as the error.
fn psql(port: u16, tls: &str, sql: &str) -> Result<String, String> {
    let psql = std::env::var("PG_BIN")
        .map(|bin| format!("{bin}/psql"))
        .unwrap_or_else(|_| "psql".to_string());
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user={APP_USER} dbname={APP_DB} {tls}"
    );
    let out = Command::new(psql)
        .args(["-X", "-A", "-t", "-d", &conninfo, "-c", sql])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE")
        .output()
        .expect("psql runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[test]
fn clients_connect_over_tls_and_plaintext_is_refused_when_required() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, cert, key) = certificates(dir.path(), "good");
    let (other_ca, _, _) = certificates(dir.path(), "other");
    let cluster = TestCluster::shared();
    let proxy = TestProxy::start_with(cluster, |c| {
        c.tls.cert_file = Some(cert.clone());
        c.tls.key_file = Some(key.clone());
        c.tls.client_mode = Some(ClientMode::Require);
    });
    let port = proxy.port;
    let ca = ca.display().to_string();

    for tls in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-full sslrootcert={ca}"),
        format!("sslmode=verify-ca sslrootcert={ca}"),
        "sslmode=require channel_binding=require".to_string(),
    ] {
        let info = psql(port, &tls, "\\conninfo").unwrap_or_else(|e| panic!("{tls}: {e}"));
        assert!(
            info.contains("SSL connection (protocol: TLSv1.3"),
            "{tls}: {info}"
        );
        // Through TLS the proxy routes as ever: a read on a replica.
        let on_replica = psql(port, &tls, "SELECT pg_is_in_recovery()").expect("read");
        assert_eq!(on_replica, "t", "{tls}");
    }
    // tokio-postgres with rustls: verify-full against the CA, and
    // SCRAM-SHA-256-PLUS required.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let on_replica: bool = runtime.block_on(async {
        let roots = causeway::tls::ServerTls::new(
            SslMode::VerifyFull,
            Some(Path::new(&ca)),
            "test.sslrootcert",
        )
        .expect("roots")
        .expect("tls");
        let connector = postgres_rustls::MakeTlsConnector::new(tokio_rustls::TlsConnector::from(
            roots.config.clone(),
        ));
        let (client, connection) = tokio_postgres::Config::new()
            .host("localhost")
            .hostaddr(std::net::IpAddr::from([127, 0, 0, 1]))
            .port(port)
            .user(APP_USER)
            .password(APP_PASSWORD)
            .dbname(APP_DB)
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .channel_binding(tokio_postgres::config::ChannelBinding::Require)
            .connect(connector)
            .await
            .expect("tokio-postgres over TLS with channel binding");
        tokio::spawn(connection);
        client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("read")
            .get(0)
    });
    assert!(on_replica);
    // Another CA: the client refuses the proxy.
    let err = psql(
        port,
        &format!("sslmode=verify-full sslrootcert={}", other_ca.display()),
        "SELECT 1",
    )
    .expect_err("a certificate from another CA");
    assert!(err.contains("certificate verify failed"), "{err}");
    // Plaintext, when TLS is required: Postgres's own refusal.
    let err = psql(port, "sslmode=disable", "SELECT 1").expect_err("plaintext refused");
    assert!(
        err.contains("no pg_hba.conf entry for host \"127.0.0.1\", user \"app\", database \"app\", no encryption"),
        "{err}"
    );
    proxy.stop();

    // "prefer": TLS when asked, plaintext otherwise.
    let prefer = TestProxy::start_with(cluster, |c| {
        c.tls.cert_file = Some(cert.clone());
        c.tls.key_file = Some(key.clone());
    });
    let info = psql(prefer.port, "sslmode=prefer", "\\conninfo").expect("prefer");
    assert!(info.contains("SSL connection"), "{info}");
    assert_eq!(
        psql(prefer.port, "sslmode=disable", "SELECT 1").expect("plaintext"),
        "1"
    );
    // SCRAM-SHA-256-PLUS is offered over TLS only.
    assert_eq!(
        psql(
            prefer.port,
            "sslmode=require channel_binding=require",
            "SELECT 1"
        )
        .expect("bound"),
        "1"
    );
    let err = psql(
        prefer.port,
        "sslmode=disable channel_binding=require",
        "SELECT 1",
    )
    .expect_err("no binding without TLS");
    assert!(err.contains("channel binding"), "{err}");
    prefer.stop();
}

/// A cluster that takes TLS logins only (`hostssl`): causeway reaches the
/// primary, the replicas and their monitor over TLS with `verify-full`
/// against the test's CA; a proxy that trusts another CA, or that speaks
/// plain text, gets in nowhere, and says why.
#[test]
fn servers_are_reached_over_tls_only_with_a_certificate_that_verifies() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, cert, key) = certificates(dir.path(), "servers");
    let (other_ca, _, _) = certificates(dir.path(), "other");
    let cluster = TestCluster::start(ClusterOptions {
        tls: Some((cert, key)),
        ..ClusterOptions::default()
    });
    let proxy = TestProxy::start_with(&cluster, |c| {
        c.tls.server_sslmode = Some(SslMode::VerifyFull);
        c.tls.server_sslrootcert = Some(ca.clone());
    });
    // The monitor reaches every server: both replicas serve reads.
    support::wait_for(
        "the replicas to be healthy",
        std::time::Duration::from_secs(30),
        || {
            let p = proxy.proxy.monitor.positions();
            let healthy = p.replicas.iter().filter(|r| p.serves(r)).count();
            (p.primary_healthy && healthy == 2)
                .then_some(())
                .ok_or_else(|| format!("{p:?}"))
        },
    );
    // Reads on a replica and writes on the primary, each over TLS.
    let read = psql(
        proxy.port,
        "sslmode=disable",
        "SELECT pg_is_in_recovery(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .expect("read");
    assert_eq!(read, "t|t");
    let write = psql(
        proxy.port,
        "sslmode=disable",
        "CREATE TABLE tls_notes (id int); \
         SELECT pg_is_in_recovery(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .expect("write");
    assert!(write.ends_with("f|t"), "{write}");
    // The monitor's own connections are TLS too.
    let monitors = cluster.psql(
        cluster.primary_port(),
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'causeway monitor'",
    );
    assert_eq!(monitors.trim(), "1|1");
    proxy.stop();

    // A proxy that trusts another CA refuses the servers' certificate.
    let wrong = TestProxy::start_unready(&cluster, |c| {
        c.tls.server_sslmode = Some(SslMode::VerifyFull);
        c.tls.server_sslrootcert = Some(other_ca.clone());
    });
    let err = psql(wrong.port, "sslmode=disable", "SELECT 1").expect_err("wrong CA");
    assert!(
        err.contains("TLS with server") && err.contains("invalid peer certificate"),
        "{err}"
    );
    wrong.stop();
    // Plain text: the servers' own refusal, passed on.
    let plain = TestProxy::start_unready(&cluster, |c| {
        c.tls.server_sslmode = Some(SslMode::Disable);
    });
    let err = psql(plain.port, "sslmode=disable", "SELECT 1").expect_err("plain text");
    assert!(err.contains("no encryption"), "{err}");
    plain.stop();
}
