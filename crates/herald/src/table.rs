//! A tiny printer of aligned text tables and of `key: value` lists, for the CLI's human output.

use std::io::{self, Write};

/// Space between columns.
const GAP: &str = "  ";

/// Rows of cells under a header, printed with every column as wide as its widest cell.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|cell| (*cell).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; a row with fewer cells than the header is padded with empty cells.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|cell| one_line(&cell)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in `\n`, without trailing spaces.
    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (column, cell) in row.iter().enumerate() {
                widths[column] = widths[column].max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (column, width) in widths.iter().enumerate() {
                let cell = row.get(column).map(String::as_str).unwrap_or("");
                if column > 0 {
                    line.push_str(GAP);
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(self.render().as_bytes())
    }
}

/// Prints `key: value` lines with the values aligned.
pub fn write_fields(out: &mut dyn Write, fields: &[(&str, String)]) -> io::Result<()> {
    let width = fields
        .iter()
        .map(|(key, _)| key.chars().count() + 1)
        .max()
        .unwrap_or(0);
    for (key, value) in fields {
        let label = format!("{key}:");
        writeln!(out, "{label:<width$}{GAP}{}", one_line(value))?;
    }
    Ok(())
}

/// A cell must stay on one line, or the columns after it would shift.
fn one_line(text: &str) -> String {
    if text.contains(['\n', '\r', '\t']) {
        text.replace(['\n', '\r', '\t'], " ")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut table = Table::new(&["NAME", "PARTITIONS", "EVENTS"]);
        table.row(vec!["orders".into(), "3".into(), "1200".into()]);
        table.row(vec!["a".into(), "12".into(), "7".into()]);
        assert_eq!(
            table.render(),
            "NAME    PARTITIONS  EVENTS\n\
             orders  3           1200\n\
             a       12          7\n"
        );
    }

    #[test]
    fn short_rows_are_padded_and_lines_have_no_trailing_spaces() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["long value".into()]);
        assert_eq!(table.render(), "A           B\nlong value\n");
    }

    #[test]
    fn cells_stay_on_one_line() {
        let mut table = Table::new(&["X", "Y"]);
        table.row(vec!["two\nlines".into(), "é".into()]);
        assert_eq!(table.render(), "X          Y\ntwo lines  é\n");
    }

    #[test]
    fn fields_are_aligned() {
        let mut out = Vec::new();
        write_fields(
            &mut out,
            &[("name", "orders".into()), ("dedup window", "2m".into())],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "name:          orders\ndedup window:  2m\n"
        );
    }
}
