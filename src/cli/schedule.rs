//! `sisy schedule check`: the next occurrences of an expression, or what is wrong with it.
//! Needs no database: it is the parser the guardians use.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use super::output::Output;
use crate::schedule::Schedule;

pub fn check(
    expr: &str,
    tz: &str,
    after: Option<DateTime<Utc>>,
    count: usize,
    output: Output,
) -> Result<()> {
    let schedule =
        Schedule::parse(expr, tz).with_context(|| format!("the schedule '{expr}' is not valid"))?;
    let start = after.unwrap_or_else(Utc::now);
    let mut at = start;
    let mut next = Vec::new();
    while next.len() < count {
        let Some(n) = schedule.next_after(at) else {
            break;
        };
        next.push(n);
        at = n;
    }
    // Shown on the zone's clock by the same zone data the guardian computes with.
    let zone = schedule.timezone();
    let local = |n: &DateTime<Utc>| zone.at(*n).unwrap_or_else(|| n.fixed_offset());
    if output == Output::Json {
        let list: Vec<_> = next
            .iter()
            .map(|n| serde_json::json!({ "local": local(n).to_rfc3339(), "utc": n.to_rfc3339() }))
            .collect();
        outln!(
            "{}",
            serde_json::json!({ "expr": expr, "timezone": tz, "next": list })
        );
        return Ok(());
    }
    if next.is_empty() {
        outln!("'{expr}' never fires after {start}");
    }
    for n in next {
        outln!(
            "{} {} ({})  {}",
            local(&n).format("%Y-%m-%d %H:%M:%S"),
            zone.abbreviation_at(n),
            local(&n).format("%:z"),
            n.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    Ok(())
}
