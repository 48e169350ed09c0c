//! The instance manager's one connection to its own PostgreSQL: tokio-postgres over the Unix
//! socket, as the superuser, kept between looks and made again when the server went away
//! (a restart, a stop, a crash). Queries have a deadline; a connection that missed one is
//! dropped, never reused half-answered.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one statement may take (a CHECKPOINT included).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The shared slot of the connection (cloning a `Pg` shares it).
#[derive(Clone, Default)]
pub struct Db {
    client: Arc<Mutex<Option<Client>>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

/// Where and as whom to connect.
pub struct Target<'a> {
    pub socket_dir: &'a Path,
    pub port: u16,
    pub user: &'a str,
    pub dbname: &'a str,
}

impl Target<'_> {
    async fn connect(&self) -> anyhow::Result<Client> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.socket_dir)
            .port(self.port)
            .user(self.user)
            .dbname(self.dbname)
            .application_name("pgml-instance")
            .connect_timeout(CONNECT_TIMEOUT);
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
            .await
            .context("PostgreSQL did not accept a connection in 5 s")?
            .with_context(|| {
                format!(
                    "connecting to PostgreSQL's database {} on its socket",
                    self.dbname
                )
            })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection to PostgreSQL ended");
            }
        });
        Ok(client)
    }

    /// Runs `f` on a connection of its own (another database than the kept one's), within
    /// [`QUERY_TIMEOUT`]; the connection is closed after.
    pub async fn once<T>(
        &self,
        f: impl AsyncFn(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> anyhow::Result<T> {
        let client = self.connect().await?;
        tokio::time::timeout(QUERY_TIMEOUT, f(&client))
            .await
            .with_context(|| format!("PostgreSQL did not answer in {QUERY_TIMEOUT:?}"))?
            .map_err(anyhow::Error::new)
    }
}

impl Db {
    /// The connection, made when there is none or the one kept has closed.
    async fn client(&self, to: &Target<'_>) -> anyhow::Result<MutexGuard<'_, Option<Client>>> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            let client = to.connect().await?;
            *slot = Some(client);
        }
        Ok(slot)
    }

    /// Runs `f` on the connection within [`QUERY_TIMEOUT`]. A connection found closed by
    /// the statement (the server restarted since the last look) is made again and `f`
    /// tried once more; one that timed out or failed otherwise is dropped after the error.
    pub async fn run<T, F>(&self, to: &Target<'_>, f: F) -> anyhow::Result<T>
    where
        F: AsyncFn(&Client) -> Result<T, tokio_postgres::Error>,
    {
        for attempt in 0..2 {
            let mut slot = self.client(to).await?;
            let client = slot.as_ref().expect("just connected");
            match tokio::time::timeout(QUERY_TIMEOUT, f(client)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if client.is_closed() && attempt == 0 => {
                    tracing::debug!(error = %e, "PostgreSQL connection closed: connecting again");
                    *slot = None;
                }
                Ok(Err(e)) => {
                    if client.is_closed() {
                        *slot = None;
                    }
                    return Err(anyhow::Error::new(e));
                }
                Err(_) => {
                    *slot = None;
                    anyhow::bail!("PostgreSQL did not answer in {QUERY_TIMEOUT:?}");
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Forgets the connection (before the server is stopped on purpose).
    pub async fn close(&self) {
        *self.client.lock().await = None;
    }
}

/// The rows of a simple-protocol answer as text fields, NULL as "" (statements that return
/// no rows give none).
pub fn text_rows(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<String>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or_default().to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}
