//! One function per subcommand. Listings write to the given output page by page; the
//! others return the text for stdout, so `main` only prints.

use super::client::{AdminClient, CliError};
use super::table::{Format, ListWriter};
use crate::admin::views::{
    DomainList, DomainView, ImportRequest, ImportResponse, KeyConfirmed, KeyList, KeyView,
    Requeued, Revoked,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::Path;

/// Domains per import request: small enough for a lively progress bar.
const IMPORT_BATCH: usize = 100;

/// What `certline domains` lists.
#[derive(Debug, Clone, Default)]
pub struct DomainFilter {
    pub state: Option<String>,
    pub suffix: Option<String>,
    pub needs_action: bool,
}

/// `certline domains`: pages through `GET /api/domains`, writing each page to `out` as it
/// arrives, so memory stays flat however many domains there are.
pub async fn domains(
    client: &AdminClient,
    filter: DomainFilter,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(s) = filter.state {
        query.push(("state", s));
    }
    if let Some(s) = filter.suffix {
        query.push(("suffix", s));
    }
    if filter.needs_action {
        query.push(("needs_action", "true".to_owned()));
    }
    const HEADER: &[&str] = &[
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
    let mut writer = ListWriter::new(out, format, HEADER);
    let mut cursor = None;
    let bridge = loop {
        let page: DomainList = client
            .get(&["api", "domains"], &with_cursor(&query, cursor))
            .await?;
        writer
            .page(&page.domains, domain_row)
            .map_err(CliError::Output)?;
        cursor = page.next_cursor;
        if cursor.is_none() {
            break page.bridge;
        }
    };
    let what = if filter.needs_action {
        "need action"
    } else {
        "listed"
    };
    let footer = format!(
        "{} domain(s) {what}; Sectigo bridge {bridge}\n",
        writer.written
    );
    writer.finish(&footer).map_err(CliError::Output)
}

/// The query with the page's cursor.
fn with_cursor(
    query: &[(&'static str, String)],
    cursor: Option<String>,
) -> Vec<(&'static str, String)> {
    let mut query = query.to_vec();
    if let Some(cursor) = cursor {
        query.push(("cursor", cursor));
    }
    query
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

/// `certline keys`: pages through `GET /api/keys` like [`domains`].
pub async fn keys(
    client: &AdminClient,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    const HEADER: &[&str] = &[
        "ID",
        "EMAIL",
        "CREATED",
        "CLAIMED",
        "CONFIRMED",
        "REVOKED",
        "DOMAINS",
    ];
    let mut writer = ListWriter::new(out, format, HEADER);
    let mut cursor = None;
    loop {
        let page: KeyList = client
            .get(&["api", "keys"], &with_cursor(&[], cursor))
            .await?;
        writer.page(&page.keys, key_row).map_err(CliError::Output)?;
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    let footer = format!("{} key(s)\n", writer.written);
    writer.finish(&footer).map_err(CliError::Output)
}

fn key_row(k: &KeyView) -> Vec<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    vec![
        k.id.clone(),
        opt(&k.email),
        k.created.clone(),
        opt(&k.claimed),
        opt(&k.confirmed),
        opt(&k.revoked),
        k.domains.to_string(),
    ]
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
