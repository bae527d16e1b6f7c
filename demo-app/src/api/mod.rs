//! `demo-app api`: the rides API (axum).
//!
//! - `POST /rides` ([`rides::create`]): a ride, made idempotent by the
//!   `Idempotency-Key` header and the atomic phases of [`crate::atomic`].
//! - `GET /rides/{id}` ([`rides::show`]): reads it back through causeway and
//!   says which server answered.
//! - `GET`/`POST /things/{id}` ([`things`]): several reads, a write, a read,
//!   in one request, to show where each went.
//!
//! Every route needs `Authorization: <email>` ([`auth`]).

pub mod auth;
pub mod rides;
pub mod things;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::db::Db;
use crate::payments::PaymentsClient;
use crate::servers::ServerNames;

/// What every handler shares.
pub struct ApiContext {
    pub db: Db,
    pub payments: PaymentsClient,
    pub servers: ServerNames,
    pub lock_timeout: Duration,
    /// Honour the `X-Inject-Failure` header (for the simulator and tests).
    pub allow_failure_injection: bool,
}

pub fn router(context: Arc<ApiContext>) -> Router {
    Router::new()
        .route("/rides", post(rides::create))
        .route("/rides/{id}", get(rides::show))
        .route("/things/{id}", get(things::show).post(things::update))
        .with_state(context)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    context: Arc<ApiContext>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(context).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
