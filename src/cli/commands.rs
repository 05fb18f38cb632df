//! One function per subcommand. Each returns the text for stdout, so `main` only prints.

use super::client::{AdminClient, CliError};
use super::table;
use crate::admin::views::{
    DomainList, DomainView, ImportRequest, ImportResponse, KeyConfirmed, KeyList, Requeued, Revoked,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

/// How lists are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people (the default).
    Table,
    /// The admin API's JSON, pretty-printed.
    Json,
    /// RFC 4180 CSV with a header line.
    Csv,
}

/// Domains per import request: small enough for a lively progress bar.
const IMPORT_BATCH: usize = 100;

/// `certline domains`.
pub async fn domains(
    client: &AdminClient,
    state: Option<String>,
    suffix: Option<String>,
    needs_action: bool,
    format: Format,
) -> Result<String, CliError> {
    let mut query = Vec::new();
    if let Some(s) = state {
        query.push(("state", s));
    }
    if let Some(s) = suffix {
        query.push(("suffix", s));
    }
    if needs_action {
        query.push(("needs_action", "true".to_owned()));
    }
    let list: DomainList = client.get(&["api", "domains"], &query).await?;
    if format == Format::Json {
        return Ok(json(&list));
    }
    let header = [
        "DOMAIN",
        "SECTIGO",
        "KEY",
        "ID",
        "DCV",
        "DCV_DOMAIN",
        "DCV_EXPIRES",
        "NEXT_ATTEMPT",
        "NEEDS_ACTION",
    ];
    let rows: Vec<Vec<String>> = list.domains.iter().map(domain_row).collect();
    if format == Format::Csv {
        return Ok(table::csv(&header, &rows));
    }
    let mut out = table::render(&header, &rows);
    let what = if needs_action {
        "need action"
    } else {
        "listed"
    };
    out.push_str(&format!(
        "{} domain(s) {what}; Sectigo bridge {}\n",
        list.count, list.bridge
    ));
    Ok(out)
}

fn domain_row(d: &DomainView) -> Vec<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let why = d
        .needs_action
        .iter()
        .map(|r| format!("{}: {}", r.reason, r.detail))
        .collect::<Vec<_>>()
        .join("; ");
    vec![
        d.domain.clone(),
        d.sectigo.clone(),
        d.key.clone(),
        d.id.map_or_else(|| "-".into(), |i| i.to_string()),
        opt(&d.dcv),
        opt(&d.dcv_domain),
        opt(&d.dcv_expires),
        opt(&d.next_attempt),
        if why.is_empty() { "-".into() } else { why },
    ]
}

/// `certline keys`.
pub async fn keys(client: &AdminClient, format: Format) -> Result<String, CliError> {
    let list: KeyList = client.get(&["api", "keys"], &[]).await?;
    if format == Format::Json {
        return Ok(json(&list));
    }
    let header = [
        "ID",
        "EMAIL",
        "CREATED",
        "CLAIMED",
        "CONFIRMED",
        "REVOKED",
        "DOMAINS",
    ];
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = list
        .keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                opt(&k.email),
                k.created.clone(),
                opt(&k.claimed),
                opt(&k.confirmed),
                opt(&k.revoked),
                k.domains.to_string(),
            ]
        })
        .collect();
    if format == Format::Csv {
        return Ok(table::csv(&header, &rows));
    }
    let mut out = table::render(&header, &rows);
    out.push_str(&format!("{} key(s)\n", list.count));
    Ok(out)
}

/// `certline revoke PREFIX`.
pub async fn revoke(client: &AdminClient, prefix: &str) -> Result<String, CliError> {
    let r: Revoked = client
        .post(&["api", "keys", prefix, "revoke"], None::<&()>)
        .await?;
    Ok(if r.already {
        format!("key {} was already revoked ({})\n", r.id, r.revoked)
    } else {
        format!(
            "key {} revoked; its requests are refused from now on\n",
            r.id
        )
    })
}

/// `certline confirm PREFIX`.
pub async fn confirm(client: &AdminClient, prefix: &str) -> Result<String, CliError> {
    let c: KeyConfirmed = client
        .post(&["api", "keys", prefix, "confirm"], None::<&()>)
        .await?;
    let released = match c.requeued {
        0 => String::new(),
        n => format!("; {n} waiting domain(s) go on to Sectigo now"),
    };
    Ok(if c.already {
        format!(
            "key {} was already confirmed ({}){released}\n",
            c.id, c.confirmed
        )
    } else {
        format!("key {} confirmed{released}\n", c.id)
    })
}

/// `certline requeue DOMAIN`.
pub async fn requeue(client: &AdminClient, domain: &str) -> Result<String, CliError> {
    let r: Requeued = client
        .post(&["api", "domains", domain, "requeue"], None::<&()>)
        .await?;
    Ok(format!(
        "{} is {} for the Sectigo bridge, due now\n",
        r.domain, r.sectigo
    ))
}

/// What `certline import` did: the report for stdout, and how many lines were not domains.
pub struct ImportReport {
    pub text: String,
    pub invalid: usize,
}

/// `certline import FILE --apikey K`: one domain per line, `#` starts a comment. Sent in
/// batches through the admin API, with a progress bar on stderr (hidden when stderr is not
/// a terminal).
pub async fn import(
    client: &AdminClient,
    file: &Path,
    apikey: &str,
) -> Result<ImportReport, CliError> {
    let text = std::fs::read_to_string(file).map_err(|source| CliError::Read {
        path: file.display().to_string(),
        source,
    })?;
    let lines: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.split('#').next().unwrap_or("").trim();
            (!line.is_empty()).then(|| (i + 1, line.to_owned()))
        })
        .collect();
    let bar = ProgressBar::new(lines.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} domains ({eta} left)")
            .expect("a valid template"),
    );
    let (mut added, mut already) = (0usize, 0usize);
    let mut invalid = Vec::new();
    for chunk in lines.chunks(IMPORT_BATCH) {
        let request = ImportRequest {
            apikey: apikey.to_owned(),
            domains: chunk.iter().map(|(_, d)| d.clone()).collect(),
        };
        let response: ImportResponse = match client.post(&["api", "domains"], Some(&request)).await
        {
            Ok(r) => r,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        for ((line, input), result) in chunk.iter().zip(&response.results) {
            match result.outcome.as_str() {
                "added" => added += 1,
                "already_registered" => already += 1,
                _ => invalid.push(format!("line {line}: {input}: not a valid domain name")),
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let mut text = format!(
        "{added} added, {already} already registered, {} invalid ({} lines read from {})\n",
        invalid.len(),
        lines.len(),
        file.display()
    );
    for line in &invalid {
        text.push_str(line);
        text.push('\n');
    }
    Ok(ImportReport {
        text,
        invalid: invalid.len(),
    })
}

fn json<T: serde::Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("serialising to memory cannot fail");
    s.push('\n');
    s
}
