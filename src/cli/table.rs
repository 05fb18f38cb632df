//! Plain-text tables and CSV for the CLI's output, written a page at a time.

use serde::Serialize;
use std::io::{self, Write};

/// How lists are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people (the default).
    Table,
    /// JSON Lines: one JSON object per line, as the admin API shows each item.
    Json,
    /// RFC 4180 CSV with a header line.
    Csv,
}

/// Writes a listing as its pages arrive, holding nothing but the current page: the column
/// widths of a table come from the header and the first page (a longer value further down
/// only shifts its own line).
pub struct ListWriter<'a> {
    out: &'a mut dyn Write,
    format: Format,
    header: &'static [&'static str],
    /// Known once the first page is written.
    widths: Option<Vec<usize>>,
    /// Items written so far.
    pub written: u64,
}

impl<'a> ListWriter<'a> {
    pub fn new(out: &'a mut dyn Write, format: Format, header: &'static [&'static str]) -> Self {
        Self {
            out,
            format,
            header,
            widths: None,
            written: 0,
        }
    }

    /// Writes one page; `row` gives an item's table and CSV cells.
    pub fn page<T: Serialize>(
        &mut self,
        items: &[T],
        row: impl Fn(&T) -> Vec<String>,
    ) -> io::Result<()> {
        match self.format {
            Format::Json => {
                for item in items {
                    serde_json::to_writer(&mut *self.out, item)?;
                    self.out.write_all(b"\n")?;
                }
            }
            Format::Csv => {
                if self.widths.is_none() {
                    self.widths = Some(Vec::new());
                    let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
                    self.out.write_all(csv_line(&header).as_bytes())?;
                }
                for item in items {
                    self.out.write_all(csv_line(&row(item)).as_bytes())?;
                }
            }
            Format::Table => {
                let rows: Vec<Vec<String>> = items.iter().map(row).collect();
                if self.widths.is_none() {
                    let mut widths: Vec<usize> =
                        self.header.iter().map(|h| h.chars().count()).collect();
                    for row in &rows {
                        for (w, cell) in widths.iter_mut().zip(row) {
                            *w = (*w).max(cell.chars().count());
                        }
                    }
                    let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
                    self.out
                        .write_all(aligned_line(&widths, &header).as_bytes())?;
                    self.widths = Some(widths);
                }
                let widths = self.widths.as_deref().unwrap_or_default();
                for row in &rows {
                    self.out.write_all(aligned_line(widths, row).as_bytes())?;
                }
            }
        }
        self.written += items.len() as u64;
        self.out.flush()
    }

    /// Ends the listing: a table's header is written even when nothing was listed, and
    /// `footer` (for tables only) after it.
    pub fn finish(mut self, footer: &str) -> io::Result<()> {
        if self.widths.is_none() && self.format != Format::Json {
            self.page::<()>(&[], |_| Vec::new())?;
        }
        if self.format == Format::Table {
            self.out.write_all(footer.as_bytes())?;
        }
        self.out.flush()
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn aligned_line(widths: &[usize], cells: &[String]) -> String {
    let last = cells.len().saturating_sub(1);
    let mut text = String::new();
    for (i, cell) in cells.iter().enumerate() {
        text.push_str(cell);
        if i < last {
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count()) + 2;
            text.extend(std::iter::repeat_n(' ', pad));
        }
    }
    let mut line = text.trim_end().to_owned();
    line.push('\n');
    line
}

/// One RFC 4180 CSV line: fields with a comma, quote or line break are quoted, quotes
/// doubled.
fn csv_line(cells: &[String]) -> String {
    let field = |f: &str| {
        if f.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_owned()
        }
    };
    let mut line = cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(format: Format, pages: &[&[(&str, &str)]]) -> String {
        let mut out = Vec::new();
        let mut writer = ListWriter::new(&mut out, format, &["DOMAIN", "STATE"]);
        for page in pages {
            writer
                .page(page, |(a, b)| vec![a.to_string(), b.to_string()])
                .unwrap();
        }
        writer.finish("done\n").unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn tables_align_on_the_first_page_and_csv_quotes() {
        let first: &[(&str, &str)] = &[("a.example", "synced"), ("bb", "failed")];
        let second: &[(&str, &str)] = &[("a-much-longer.example", "queued")];
        assert_eq!(
            written(Format::Table, &[first, second]),
            "DOMAIN     STATE\na.example  synced\nbb         failed\na-much-longer.example  queued\ndone\n"
        );
        assert_eq!(
            written(Format::Csv, &[&[("x", "say \"hi\", twice")]]),
            "DOMAIN,STATE\r\nx,\"say \"\"hi\"\", twice\"\r\n"
        );
        assert_eq!(
            written(Format::Json, &[first, second]),
            "[\"a.example\",\"synced\"]\n[\"bb\",\"failed\"]\n[\"a-much-longer.example\",\"queued\"]\n"
        );
        assert_eq!(written(Format::Csv, &[]), "DOMAIN,STATE\r\n");
        assert_eq!(written(Format::Table, &[]), "DOMAIN  STATE\ndone\n");
    }
}
