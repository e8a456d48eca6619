//! `sisy hosts …`: the view `sisy.host_status` and the functions `sisy.drain/undrain`.

use anyhow::Result;
use serde_json::Value;
use tokio_postgres::Client;

use super::output::Output;
use super::{HostsCommand, sql_error};
use crate::db::cli as q;

pub async fn run(client: &mut Client, cmd: HostsCommand, output: Output) -> Result<()> {
    let (sql, host, verb) = match cmd {
        HostsCommand::List => {
            let rows = client
                .query(q::HOSTS_LIST, &[])
                .await
                .map_err(|e| sql_error(e, ""))?;
            let rows: Vec<Value> = rows.iter().map(|r| r.get(0)).collect();
            output.rows(
                &rows,
                &[
                    ("name", "HOST"),
                    ("alive", "ALIVE"),
                    ("draining", "DRAINING"),
                    ("pools", "POOLS"),
                    ("running", "RUNNING"),
                    ("capacity", "CAPACITY"),
                    ("last_seen", "LAST SEEN (UTC)"),
                    ("version", "VERSION"),
                ],
            );
            return Ok(());
        }
        HostsCommand::Drain { host } => (q::HOSTS_DRAIN, host, "draining"),
        HostsCommand::Undrain { host } => (q::HOSTS_UNDRAIN, host, "no longer draining"),
    };
    client
        .execute(sql, &[&host])
        .await
        .map_err(|e| sql_error(e, "see `sisy hosts list`"))?;
    if output == Output::Json {
        outln!("{}", serde_json::json!({ "ok": true, "host": host }));
    } else {
        outln!("host {host} is {verb}");
    }
    Ok(())
}
