//! CSV: numeric feature columns and one label column, chosen by name or index (the last by
//! default), header optional; and the embedded 8x8 digits file.
//!
//! Features that are all integers in `0..=255` are kept as bytes scaled by their largest value
//! (pixels exported as CSV stay as compact and as scaled as images); any other number makes
//! every feature an `f32`, used as it is. Labels that are all integers in `0..65536` are class
//! numbers; otherwise each distinct label text is a class, numbered in sorted order.
//! Missing values, ragged rows and non-numeric cells are errors naming `file:row:col`.

use std::path::Path;

use hivemesh_evolve::arch::Shape;

use super::{Dataset, MAX_CLASSES, Values, read_maybe_gz};
use crate::error::DataError;

/// Which column holds the label.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LabelColumn {
    /// The last column.
    #[default]
    Last,
    /// A column by its 0-based index.
    Index(usize),
    /// A column by its header name (the file must have a header).
    Name(String),
}

/// Whether the first row names the columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Header {
    /// A header if the first row has a cell that is not a number (outside the label column).
    #[default]
    Auto,
    /// The first row is a header.
    Present,
    /// Every row is a sample.
    Absent,
}

/// How to read a CSV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    /// The label column.
    pub label: LabelColumn,
    /// Whether there is a header row.
    pub header: Header,
    /// The field separator (`,` by default; `\t` for TSV).
    pub delimiter: char,
    /// The shape of one sample (its values must number the feature columns); `None`: flat.
    pub shape: Option<Shape>,
}

impl Default for CsvOptions {
    fn default() -> CsvOptions {
        CsvOptions {
            label: LabelColumn::Last,
            header: Header::Auto,
            delimiter: ',',
            shape: None,
        }
    }
}

/// A CSV dataset and, when its labels were texts, the class names (class `i` is `names[i]`).
#[derive(Debug, Clone, PartialEq)]
pub struct CsvDataset {
    /// The samples.
    pub dataset: Dataset,
    /// The label texts in class order, when the labels were not numbers.
    pub class_names: Option<Vec<String>>,
}

/// Reads a CSV file (gzip or plain).
pub fn load_csv(path: &Path, opts: &CsvOptions) -> Result<CsvDataset, DataError> {
    parse_csv(path, &read_maybe_gz(path)?, opts)
}

/// One parsed row: its 1-based line number and its cells.
struct Row<'a> {
    line: usize,
    cells: Vec<std::borrow::Cow<'a, str>>,
}

/// Parses CSV text (see the module doc).
pub fn parse_csv(path: &Path, bytes: &[u8], opts: &CsvOptions) -> Result<CsvDataset, DataError> {
    let at = |row: usize, col: usize, reason: String| DataError::At {
        path: path.to_path_buf(),
        row,
        col,
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::Corrupt {
        path: path.to_path_buf(),
        offset: e.valid_up_to() as u64,
        reason: "not UTF-8 text".into(),
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cells = split_row(line, opts.delimiter).map_err(|(col, r)| at(i + 1, col, r))?;
        rows.push(Row { line: i + 1, cells });
    }
    let Some(first) = rows.first() else {
        return Err(at(1, 1, "no rows".into()));
    };
    let width = first.cells.len();
    let label = label_index(first, opts, &at)?;
    let has_header = match (&opts.header, &opts.label) {
        (Header::Present, _) | (_, LabelColumn::Name(_)) => true,
        (Header::Absent, _) => false,
        (Header::Auto, _) => first
            .cells
            .iter()
            .enumerate()
            .any(|(c, s)| c != label && parse_number(s).is_none()),
    };
    let samples = &rows[usize::from(has_header)..];
    if samples.is_empty() {
        return Err(at(first.line, 1, "a header and no samples".into()));
    }
    if width < 2 {
        return Err(at(
            first.line,
            1,
            "one column: need features and a label".into(),
        ));
    }
    let features = width - 1;
    let shape = match opts.shape {
        Some(s) if s.numel() as usize != features => {
            return Err(DataError::Invalid(format!(
                "{}: the shape {s:?} holds {} values but the rows have {features} features",
                path.display(),
                s.numel()
            )));
        }
        Some(s) => s,
        None => Shape::Flat(features as u32),
    };
    let (values, label_cells) = cells_of(samples, width, label, &at)?;
    let (labels, classes, class_names) =
        labels_of(&label_cells, |k, r| at(samples[k].line, label + 1, r))?;
    let values = compact(values);
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("csv");
    let dataset = Dataset {
        name: name.into(),
        shape,
        classes,
        values,
        labels,
        test_from: None,
    };
    dataset.validate()?;
    Ok(CsvDataset {
        dataset,
        class_names,
    })
}

/// The feature values (row-major) and the label cells of the sample rows.
fn cells_of<'a>(
    samples: &'a [Row<'a>],
    width: usize,
    label: usize,
    at: &dyn Fn(usize, usize, String) -> DataError,
) -> Result<(Vec<f32>, Vec<&'a str>), DataError> {
    let mut values = Vec::with_capacity(samples.len() * (width - 1));
    let mut label_cells = Vec::with_capacity(samples.len());
    for row in samples {
        if row.cells.len() != width {
            return Err(at(
                row.line,
                row.cells.len().min(width) + 1,
                format!("{} fields, the first row has {width}", row.cells.len()),
            ));
        }
        for (c, cell) in row.cells.iter().enumerate() {
            if c == label {
                label_cells.push(cell.trim());
                continue;
            }
            let v = parse_number(cell).ok_or_else(|| {
                let why = if cell.trim().is_empty() {
                    "an empty cell (missing values are not supported)".to_string()
                } else {
                    format!("{:?} is not a finite number", cell.trim())
                };
                at(row.line, c + 1, why)
            })?;
            values.push(v);
        }
    }
    Ok((values, label_cells))
}

/// The label column's index, from the options and the first row.
fn label_index(
    first: &Row<'_>,
    opts: &CsvOptions,
    at: &dyn Fn(usize, usize, String) -> DataError,
) -> Result<usize, DataError> {
    let width = first.cells.len();
    match &opts.label {
        LabelColumn::Last => Ok(width.saturating_sub(1)),
        LabelColumn::Index(i) if *i < width => Ok(*i),
        LabelColumn::Index(i) => Err(at(
            first.line,
            width,
            format!("label column {i} (0-based) but the rows have {width} columns"),
        )),
        LabelColumn::Name(n) => first
            .cells
            .iter()
            .position(|c| c.trim() == n)
            .ok_or_else(|| {
                let names: Vec<&str> = first.cells.iter().map(|c| c.trim()).collect();
                at(
                    first.line,
                    1,
                    format!("no column named {n:?} in the header {names:?}"),
                )
            }),
    }
}

/// Class numbers from label cells: integers in `0..65536` as they are, otherwise each distinct
/// text a class in sorted order (with the names).
#[allow(clippy::type_complexity)]
fn labels_of(
    cells: &[&str],
    at: impl Fn(usize, String) -> DataError,
) -> Result<(Vec<u16>, u32, Option<Vec<String>>), DataError> {
    let numbers: Option<Vec<u16>> = cells.iter().map(|c| c.parse::<u16>().ok()).collect();
    if let Some(labels) = numbers {
        let classes = labels.iter().copied().max().map_or(0, u32::from) + 1;
        return Ok((labels, classes.max(2), None));
    }
    let mut names: Vec<String> = cells.iter().map(|c| c.to_string()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() as u64 > u64::from(MAX_CLASSES) {
        return Err(at(
            0,
            format!("{} distinct labels, over {MAX_CLASSES}", names.len()),
        ));
    }
    if let Some(k) = cells.iter().position(|c| c.is_empty()) {
        return Err(at(k, "an empty label".into()));
    }
    let labels = cells
        .iter()
        .map(|c| names.binary_search_by(|n| n.as_str().cmp(c)).unwrap_or(0) as u16)
        .collect();
    let classes = (names.len() as u32).max(2);
    Ok((labels, classes, Some(names)))
}

/// Bytes scaled by their largest value when every value is an integer in `0..=255`; `f32`
/// otherwise.
fn compact(values: Vec<f32>) -> Values {
    let bytes = values
        .iter()
        .all(|&v| v.fract() == 0.0 && (0.0..=255.0).contains(&v));
    if !bytes {
        return Values::F32(values);
    }
    let data: Vec<u8> = values.iter().map(|&v| v as u8).collect();
    let max = data.iter().copied().max().unwrap_or(0).max(1);
    Values::U8 { max, data }
}

/// A finite number, or `None`.
fn parse_number(cell: &str) -> Option<f32> {
    let v: f64 = cell.trim().parse().ok()?;
    let v = v as f32;
    v.is_finite().then_some(v)
}

/// Splits one line into cells, with RFC 4180 quoting (`"a,b"`, `""` for a quote inside).
/// A quote left open is an error at its 1-based column.
fn split_row(
    line: &str,
    delimiter: char,
) -> Result<Vec<std::borrow::Cow<'_, str>>, (usize, String)> {
    use std::borrow::Cow;
    let mut cells = Vec::new();
    let mut rest = line;
    loop {
        let col = cells.len() + 1;
        let t = rest.trim_start();
        if let Some(q) = t.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) if q[i + 1..].starts_with('"') => {
                        out.push('"');
                        chars.next();
                    }
                    Some((i, '"')) => break i + 1,
                    Some((_, c)) => out.push(c),
                    None => return Err((col, "a quoted field is not closed".into())),
                }
            };
            cells.push(Cow::Owned(out));
            let after = q[end..].trim_start();
            match after.strip_prefix(delimiter) {
                Some(r) => rest = r,
                None if after.is_empty() => return Ok(cells),
                None => return Err((col, "text after a quoted field".into())),
            }
        } else {
            match rest.split_once(delimiter) {
                Some((cell, r)) => {
                    cells.push(Cow::Borrowed(cell));
                    rest = r;
                }
                None => {
                    cells.push(Cow::Borrowed(rest));
                    return Ok(cells);
                }
            }
        }
    }
}

/// The 8x8 digits CSV: 64 pixel columns (0..=16) then the label, one sample per line.
pub fn parse_digits_csv(path: &Path, text: &[u8]) -> Result<Dataset, DataError> {
    let text = std::str::from_utf8(text).map_err(|e| DataError::Corrupt {
        path: path.to_path_buf(),
        offset: e.valid_up_to() as u64,
        reason: "not UTF-8 text".into(),
    })?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut offset = 0usize;
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let corrupt = |reason: String| DataError::Corrupt {
            path: path.to_path_buf(),
            offset: start as u64,
            reason: format!("line {}: {reason}", line_no + 1),
        };
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            return Err(corrupt(format!("{} fields, expected 65", fields.len())));
        }
        for f in &fields[..64] {
            let v: u8 = f
                .trim()
                .parse()
                .ok()
                .filter(|&v| v <= 16)
                .ok_or_else(|| corrupt(format!("pixel {f:?} is not an integer 0..=16")))?;
            pixels.push(v);
        }
        let l: u16 = fields[64]
            .trim()
            .parse()
            .ok()
            .filter(|&v| v <= 9)
            .ok_or_else(|| corrupt(format!("label {:?} is not a digit 0..=9", fields[64])))?;
        labels.push(l);
    }
    let ds = Dataset::of_bytes(
        "digits-8x8",
        Shape::Image { c: 1, h: 8, w: 8 },
        10,
        16,
        pixels,
        labels,
    )?;
    if ds.is_empty() {
        return Err(DataError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: "no samples".into(),
        });
    }
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, opts: &CsvOptions) -> Result<CsvDataset, DataError> {
        parse_csv(Path::new("d.csv"), text.as_bytes(), opts)
    }

    #[test]
    fn bad_digits_lines_are_named() {
        let p = Path::new("d.csv");
        let mut line = vec!["0"; 64].join(",");
        line.push_str(",3\n");
        let good = parse_digits_csv(p, line.as_bytes()).expect("one sample");
        assert_eq!(good.len(), 1);
        let bad = format!("{line}{}", line.replace(",3\n", ",x\n"));
        let msg = parse_digits_csv(p, bad.as_bytes())
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("line 2") && msg.contains("d.csv"), "{msg}");
    }

    #[test]
    fn a_header_text_labels_and_float_features_are_read() {
        let text = "sepal,petal,species\n5.1,1.4,setosa\n6.3,4.9,\"versi,color\"\n5.0,1.3,setosa\n";
        let d = parse(text, &CsvOptions::default()).expect("iris-like");
        assert_eq!(d.dataset.len(), 3);
        assert_eq!(d.dataset.shape, Shape::Flat(2));
        assert_eq!(d.dataset.labels, vec![0, 1, 0]);
        assert_eq!(
            d.class_names,
            Some(vec!["setosa".into(), "versi,color".into()])
        );
        assert_eq!(
            d.dataset.values,
            Values::F32(vec![5.1, 1.4, 6.3, 4.9, 5.0, 1.3])
        );
        // The label chosen by name, first.
        let opts = CsvOptions {
            label: LabelColumn::Name("sepal".into()),
            ..CsvOptions::default()
        };
        let e = parse(text, &opts).expect_err("species is not a number");
        assert!(e.to_string().contains("d.csv:2:3"), "{e}");
    }

    #[test]
    fn integer_pixels_stay_bytes_and_numeric_labels_are_classes() {
        let text = "7,0,255,0\n3,12,0,0\n";
        let opts = CsvOptions {
            label: LabelColumn::Index(0),
            shape: Some(Shape::Image { c: 1, h: 1, w: 3 }),
            ..CsvOptions::default()
        };
        let d = parse(text, &opts).expect("no header").dataset;
        assert_eq!(d.labels, vec![7, 3]);
        assert_eq!(d.classes, 8);
        assert_eq!(
            d.values,
            Values::U8 {
                max: 255,
                data: vec![0, 255, 0, 12, 0, 0]
            }
        );
    }

    #[test]
    fn ragged_rows_bad_cells_and_bad_options_name_file_row_and_column() {
        let opts = CsvOptions::default();
        let e = parse("1,2,0\n3,4\n", &opts).expect_err("ragged");
        assert!(e.to_string().starts_with("d.csv:2:3: 2 fields"), "{e}");
        let e = parse("a,b,y\n1,2,0\n3,x,1\n", &opts).expect_err("cell");
        assert!(e.to_string().starts_with("d.csv:3:2:"), "{e}");
        let e = parse("1,2,0\n1,,0\n", &opts).expect_err("empty");
        assert!(e.to_string().contains("d.csv:2:2: an empty cell"), "{e}");
        let e = parse("1,2,0\n1,inf,0\n", &opts).expect_err("inf");
        assert!(e.to_string().contains("not a finite number"), "{e}");
        let e = parse("1,2,0\n1,\"2,0\n", &opts).expect_err("quote");
        assert!(e.to_string().contains("d.csv:2:2: a quoted field"), "{e}");
        let named = CsvOptions {
            label: LabelColumn::Name("label".into()),
            ..CsvOptions::default()
        };
        let e = parse("a,b,y\n1,2,0\n", &named).expect_err("no such column");
        assert!(e.to_string().contains("no column named \"label\""), "{e}");
        let shaped = CsvOptions {
            shape: Some(Shape::Image { c: 1, h: 2, w: 2 }),
            ..CsvOptions::default()
        };
        assert!(
            parse("1,2,0\n", &shaped).is_err(),
            "4 values for 2 features"
        );
        assert!(parse("\n\n", &opts).is_err(), "no rows");
        assert!(parse("a,b,y\n", &opts).is_err(), "a header only");
    }
}
