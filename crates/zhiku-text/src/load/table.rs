//! Rows of a csv (or tsv) file as records.
//!
//! A row only means something with its column names ("价格: 3.5" rather than "3.5"), so each
//! row is rendered `header: value`, one line per column, and is kept whole as one passage.

/// One record per data row; rows with no value are left out, as are empty values. A column
/// with no header (or more cells than headers) is named `column N`, from 1.
pub(super) fn records(text: &str, delimiter: u8) -> Result<Vec<String>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| format!("header row: {e}"))?
        .clone();
    let mut records = Vec::new();
    for (row, result) in reader.records().enumerate() {
        // Row 1 is the header.
        let record = result.map_err(|e| format!("row {}: {e}", row + 2))?;
        let lines: Vec<String> = record
            .iter()
            .enumerate()
            .filter_map(|(column, value)| {
                let value = value.trim();
                if value.is_empty() {
                    return None;
                }
                let name = headers
                    .get(column)
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map_or_else(|| format!("column {}", column + 1), str::to_string);
                Some(format!("{name}: {value}"))
            })
            .collect();
        if !lines.is_empty() {
            records.push(lines.join("\n"));
        }
    }
    Ok(records)
}
