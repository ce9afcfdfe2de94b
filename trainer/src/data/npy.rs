//! NumPy `.npy` arrays and `.npz` archives (members `x` and `y`).
//!
//! The `.npy` header is parsed here (format versions 1.0, 2.0 and 3.0): the magic `\x93NUMPY`,
//! the version, the header length and the Python dict literal with `descr`, `fortran_order` and
//! `shape`. Features `x` may be `u1` (kept as bytes scaled by their largest value), `f4` or `f8`
//! (kept as `f32`, every value finite) or another integer type (`i1 i2 i4 i8 u2 u4 u8`: bytes
//! when every value is in `0..=255`, `f32` otherwise). Labels `y` are a 1-D array of any integer
//! type with values in `0..65536`; the classes number the largest label plus one (at least 2).
//! Both byte orders are read, and Fortran-ordered arrays are put in C order. `x` of shape
//! `(n, f)` is flat, `(n, h, w)` a one-channel image and `(n, c, h, w)` a `c`-channel image.
//!
//! An `.npz` archive (`numpy.savez`, stored, or `savez_compressed`, deflated) holds `x.npy` and
//! `y.npy` (or `x` and `y`); each member is read only up to its declared size and
//! [`MAX_FILE_BYTES`], and a problem inside one names it. A `.npy` file may be gzipped.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

use hivemesh_evolve::arch::Shape;
use zip::ZipArchive;
use zip::result::ZipError;

use super::{Dataset, MAX_FILE_BYTES, Values, read_maybe_gz};
use crate::error::DataError;

/// The magic at the start of every `.npy` file.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Where an array's bytes came from; its errors name it.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// A `.npy` file.
    File(&'a Path),
    /// A member of an `.npz` archive.
    Member {
        /// The archive.
        archive: &'a Path,
        /// The member's name.
        member: &'a str,
    },
}

impl Source<'_> {
    /// The error for a problem at byte `offset` of the array's bytes.
    fn error(self, offset: u64, reason: impl Into<String>) -> DataError {
        match self {
            Source::File(path) => DataError::Corrupt {
                path: path.to_path_buf(),
                offset,
                reason: reason.into(),
            },
            Source::Member { archive, member } => DataError::Member {
                path: archive.to_path_buf(),
                member: member.to_string(),
                reason: format!("at offset {offset}: {}", reason.into()),
            },
        }
    }
}

/// How an element's bits are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An unsigned integer (`u`).
    Unsigned,
    /// A two's-complement integer (`i`).
    Signed,
    /// An IEEE float (`f`).
    Float,
}

/// An element type (a simple `descr` such as `<f4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dtype {
    /// Integer or float.
    kind: Kind,
    /// Bytes per element.
    size: usize,
    /// Whether the bytes are most significant first (`>`).
    big_endian: bool,
}

impl Dtype {
    /// Parses a `descr`; `None` for a type this reader does not support.
    fn parse(descr: &str) -> Option<Dtype> {
        let mut chars = descr.chars();
        let big_endian = match chars.next()? {
            '<' | '|' | '=' => false,
            '>' => true,
            _ => return None,
        };
        let kind = match chars.next()? {
            'u' => Kind::Unsigned,
            'i' => Kind::Signed,
            'f' => Kind::Float,
            _ => return None,
        };
        let size: usize = chars.as_str().parse().ok()?;
        let known = match kind {
            Kind::Float => matches!(size, 4 | 8),
            _ => matches!(size, 1 | 2 | 4 | 8),
        };
        known.then_some(Dtype {
            kind,
            size,
            big_endian,
        })
    }

    /// The raw bits of one element (`size` bytes), as a little-endian `u64`.
    fn bits(self, b: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        if self.big_endian {
            for (o, &x) in w.iter_mut().zip(b.iter().rev()) {
                *o = x;
            }
        } else {
            w[..self.size].copy_from_slice(&b[..self.size]);
        }
        u64::from_le_bytes(w)
    }

    /// One integer element's value.
    fn int(self, b: &[u8]) -> i128 {
        let u = self.bits(b);
        match self.kind {
            Kind::Signed => {
                let shift = 64 - 8 * self.size as u32;
                i128::from(((u << shift) as i64) >> shift)
            }
            _ => i128::from(u),
        }
    }

    /// One float element's value.
    fn float(self, b: &[u8]) -> f64 {
        let u = self.bits(b);
        match self.size {
            4 => f64::from(f32::from_bits(u as u32)),
            _ => f64::from_bits(u),
        }
    }
}

/// A parsed `.npy` array.
#[derive(Debug)]
struct Array<'a> {
    /// The `descr` as written, for messages.
    descr: String,
    /// The element type.
    dtype: Dtype,
    /// The dimensions.
    shape: Vec<u64>,
    /// Whether the file holds the data in Fortran order (`data` is in C order either way).
    fortran: bool,
    /// Where the header's dict starts in the bytes.
    header_at: u64,
    /// Where the data starts in the bytes.
    data_at: u64,
    /// The data in C order, `numel × size` bytes.
    data: Cow<'a, [u8]>,
}

impl Array<'_> {
    /// Number of elements.
    fn len(&self) -> usize {
        self.data.len() / self.dtype.size
    }

    /// The elements' bytes in C order.
    fn elements(&self) -> std::slice::ChunksExact<'_, u8> {
        self.data.chunks_exact(self.dtype.size)
    }

    /// Where element `k` (C order) is in the file's bytes.
    fn offset_of(&self, k: usize) -> u64 {
        let k = if self.fortran {
            c_to_fortran_index(k, &self.shape)
        } else {
            k
        };
        self.data_at + (k * self.dtype.size) as u64
    }

    /// "sample i, value j" for element `k` (C order).
    fn element_text(&self, k: usize) -> String {
        let per = self.shape.iter().skip(1).product::<u64>().max(1) as usize;
        format!("sample {}, value {}", k / per, k % per)
    }

    /// The shape as Python writes it: `(3, 4)`.
    fn shape_text(&self) -> String {
        shape_text(&self.shape)
    }
}

/// A shape as Python writes it: `(3,)`, `(3, 4)`.
fn shape_text(shape: &[u64]) -> String {
    match shape {
        [d] => format!("({d},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
            format!("({})", dims.join(", "))
        }
    }
}

/// The index in Fortran order of the element at C-order index `k`.
fn c_to_fortran_index(mut k: usize, shape: &[u64]) -> usize {
    let mut index = vec![0usize; shape.len()];
    for (i, &d) in index.iter_mut().zip(shape).rev() {
        *i = k % d as usize;
        k /= d as usize;
    }
    let (mut f, mut stride) = (0, 1);
    for (&i, &d) in index.iter().zip(shape) {
        f += i * stride;
        stride *= d as usize;
    }
    f
}

/// Reorders Fortran-ordered elements of `size` bytes into C order.
fn fortran_to_c(data: &[u8], shape: &[u64], size: usize) -> Vec<u8> {
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let mut strides = vec![1usize; dims.len()];
    for k in 1..dims.len() {
        strides[k] = strides[k - 1] * dims[k - 1];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut index = vec![0usize; dims.len()];
    for _ in 0..data.len() / size {
        let f: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out.extend_from_slice(&data[f * size..(f + 1) * size]);
        for k in (0..dims.len()).rev() {
            index[k] += 1;
            if index[k] < dims[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

/// Parses a `.npy` file's bytes, checking the declared size against the bytes present before
/// anything is allocated.
fn parse_array<'a>(src: Source<'_>, b: &'a [u8]) -> Result<Array<'a>, DataError> {
    if b.len() < 10 || &b[..6] != MAGIC {
        return Err(src.error(0, "not a .npy file (no \\x93NUMPY magic)"));
    }
    let at = match b[6] {
        1 => 10,
        2 | 3 => 12,
        v => {
            let reason = format!(".npy format version {v}.{} (1.0 to 3.0 supported)", b[7]);
            return Err(src.error(6, reason));
        }
    };
    if b.len() < at {
        return Err(src.error(b.len() as u64, "truncated inside the header length"));
    }
    let header_len = match at {
        10 => usize::from(u16::from_le_bytes([b[8], b[9]])),
        _ => u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize,
    };
    let data_at = at + header_len;
    if b.len() < data_at {
        let reason = format!("truncated inside the {header_len}-byte header");
        return Err(src.error(b.len() as u64, reason));
    }
    let text = std::str::from_utf8(&b[at..data_at])
        .map_err(|e| src.error((at + e.valid_up_to()) as u64, "the header is not text"))?;
    let header = parse_header(text).map_err(|(pos, r)| src.error((at + pos) as u64, r))?;
    let dtype = Dtype::parse(&header.descr).ok_or_else(|| {
        let reason = format!(
            "dtype '{}' is not supported (u1 u2 u4 u8 i1 i2 i4 i8 f4 f8, either byte order)",
            header.descr
        );
        src.error(at as u64, reason)
    })?;
    check_data_size(src, &header, dtype, b.len() - data_at, data_at)?;
    let data = &b[data_at..];
    let fortran = header.fortran && header.shape.len() > 1;
    Ok(Array {
        data: match fortran {
            true => Cow::Owned(fortran_to_c(data, &header.shape, dtype.size)),
            false => Cow::Borrowed(data),
        },
        descr: header.descr,
        dtype,
        shape: header.shape,
        fortran,
        header_at: at as u64,
        data_at: data_at as u64,
    })
}

/// Checks that the data after the header is exactly what the shape and dtype declare.
fn check_data_size(
    src: Source<'_>,
    header: &Header,
    dtype: Dtype,
    have: usize,
    data_at: usize,
) -> Result<(), DataError> {
    let need = header
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size as u64));
    let shape = shape_text(&header.shape);
    let (have, end) = (have as u64, (data_at + have) as u64);
    match need {
        None => Err(src.error(data_at as u64, format!("shape {shape} is too large"))),
        Some(n) if n > have => Err(src.error(
            end,
            format!(
                "truncated: shape {shape} of '{}' needs {n} data bytes after the header, found {have}",
                header.descr
            ),
        )),
        Some(n) if n < have => Err(src.error(
            data_at as u64 + n,
            format!("{} unexpected bytes after the data", have - n),
        )),
        Some(_) => Ok(()),
    }
}

/// The fields of a `.npy` header.
#[derive(Debug, PartialEq)]
struct Header {
    /// The element type as written.
    descr: String,
    /// Whether the data is in Fortran (column-major) order.
    fortran: bool,
    /// The dimensions.
    shape: Vec<u64>,
}

/// A value in the header's dict literal.
#[derive(Debug)]
enum Literal {
    /// A quoted string.
    Str(String),
    /// `True` or `False`.
    Bool(bool),
    /// A tuple of non-negative integers.
    Tuple(Vec<u64>),
}

/// A problem in the header: its byte position in the header text and what is wrong.
type HeaderError = (usize, String);

/// Reads the header's dict literal (`{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }`).
fn parse_header(text: &str) -> Result<Header, HeaderError> {
    let mut fields = Parser {
        s: text.as_bytes(),
        pos: 0,
    }
    .dict()?;
    let mut take = |key: &str| match fields.iter().position(|(k, _, _)| k == key) {
        Some(i) => Ok(fields.swap_remove(i)),
        None => Err((0, format!("the header has no '{key}'"))),
    };
    let descr = match take("descr")? {
        (_, _, Literal::Str(s)) => s,
        (_, at, _) => {
            return Err((
                at,
                "'descr' must be a string (structured dtypes are not supported)".into(),
            ));
        }
    };
    let fortran = match take("fortran_order")? {
        (_, _, Literal::Bool(b)) => b,
        (_, at, _) => return Err((at, "'fortran_order' must be True or False".into())),
    };
    let shape = match take("shape")? {
        (_, _, Literal::Tuple(t)) => t,
        (_, at, _) => return Err((at, "'shape' must be a tuple of integers".into())),
    };
    Ok(Header {
        descr,
        fortran,
        shape,
    })
}

/// A reader of the small Python literal subset `.npy` headers use.
struct Parser<'a> {
    /// The header text.
    s: &'a [u8],
    /// The next byte to read.
    pos: usize,
}

impl Parser<'_> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, HeaderError> {
        Err((self.pos, reason.into()))
    }

    /// The next byte after any whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
        self.s.get(self.pos).copied()
    }

    /// Consumes `c` if it comes next.
    fn eat(&mut self, c: u8) -> bool {
        let next = self.peek() == Some(c);
        self.pos += usize::from(next);
        next
    }

    fn expect(&mut self, c: u8) -> Result<(), HeaderError> {
        match self.eat(c) {
            true => Ok(()),
            false => self.err(format!("expected '{}'", c as char)),
        }
    }

    /// `{key: value, …}` with an optional trailing comma, then only whitespace. Each field is
    /// its key, the position of its value and the value.
    fn dict(&mut self) -> Result<Vec<(String, usize, Literal)>, HeaderError> {
        self.expect(b'{')?;
        let mut fields = Vec::new();
        while !self.eat(b'}') {
            let key = self.string()?;
            self.expect(b':')?;
            self.peek();
            let at = self.pos;
            fields.push((key, at, self.literal()?));
            if !self.eat(b',') {
                self.expect(b'}')?;
                break;
            }
        }
        match self.peek() {
            Some(_) => self.err("text after the header's closing '}'"),
            None => Ok(fields),
        }
    }

    fn string(&mut self) -> Result<String, HeaderError> {
        let Some(quote @ (b'\'' | b'"')) = self.peek() else {
            return self.err("expected a quoted string");
        };
        let start = self.pos + 1;
        let Some(len) = self.s[start..].iter().position(|&c| c == quote) else {
            return self.err("unterminated string");
        };
        self.pos = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }

    fn literal(&mut self) -> Result<Literal, HeaderError> {
        match self.peek() {
            Some(b'\'' | b'"') => self.string().map(Literal::Str),
            Some(b'(') => self.tuple().map(Literal::Tuple),
            Some(b'[') => self.err("structured dtypes (a list of fields) are not supported"),
            _ if self.word("True") => Ok(Literal::Bool(true)),
            _ if self.word("False") => Ok(Literal::Bool(false)),
            _ => self.err("expected a string, True, False or a tuple"),
        }
    }

    /// Consumes `w` if it comes next.
    fn word(&mut self, w: &str) -> bool {
        let next = self.s[self.pos..].starts_with(w.as_bytes());
        if next {
            self.pos += w.len();
        }
        next
    }

    /// `(d, …)`, `(d,)` or `()`.
    fn tuple(&mut self) -> Result<Vec<u64>, HeaderError> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        while !self.eat(b')') {
            dims.push(self.dimension()?);
            if !self.eat(b',') {
                self.expect(b')')?;
                break;
            }
        }
        Ok(dims)
    }

    /// A non-negative integer (Python 2's `L` suffix allowed).
    fn dimension(&mut self) -> Result<u64, HeaderError> {
        self.peek();
        let start = self.pos;
        while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or_default();
        let Ok(d) = digits.parse() else {
            self.pos = start;
            return self.err("expected a dimension (an integer from 0 to 2^64 - 1)");
        };
        self.word("L");
        Ok(d)
    }
}

/// The sample shape of features `x`: `(n, f)`, `(n, h, w)` or `(n, c, h, w)`.
fn sample_shape(src: Source<'_>, a: &Array<'_>) -> Result<Shape, DataError> {
    let dims: Option<Vec<u32>> = a
        .shape
        .iter()
        .skip(1)
        .map(|&d| u32::try_from(d).ok().filter(|&d| d > 0))
        .collect();
    let shape = match dims.as_deref() {
        Some(&[f]) => Shape::Flat(f),
        Some(&[h, w]) => Shape::Image { c: 1, h, w },
        Some(&[c, h, w]) => Shape::Image { c, h, w },
        _ => {
            let reason = format!(
                "x has shape {}: expected (samples, features), (samples, height, width) or \
                 (samples, channels, height, width), each sample dimension from 1 to 2^32 - 1",
                a.shape_text()
            );
            return Err(src.error(a.header_at, reason));
        }
    };
    Ok(shape)
}

/// The features: bytes for `u1` or integers all in `0..=255`, `f32` otherwise.
fn feature_values(src: Source<'_>, a: &Array<'_>) -> Result<Values, DataError> {
    let t = a.dtype;
    if t.kind == Kind::Float {
        let mut out = Vec::with_capacity(a.len());
        for (k, e) in a.elements().enumerate() {
            let v = t.float(e);
            if !(v as f32).is_finite() {
                let what = if v.is_finite() {
                    "outside f32's range"
                } else {
                    "not finite"
                };
                let reason = format!("x at {} is {v}: {what}", a.element_text(k));
                return Err(src.error(a.offset_of(k), reason));
            }
            out.push(v as f32);
        }
        return Ok(Values::F32(out));
    }
    let data: Vec<u8> = if t.kind == Kind::Unsigned && t.size == 1 {
        a.data.to_vec()
    } else if a.elements().all(|e| (0..=255).contains(&t.int(e))) {
        a.elements().map(|e| t.int(e) as u8).collect()
    } else {
        return Ok(Values::F32(a.elements().map(|e| t.int(e) as f32).collect()));
    };
    let max = data.iter().copied().max().unwrap_or(0).max(1);
    Ok(Values::U8 { max, data })
}

/// The labels: a 1-D integer array with values in `0..65536`.
fn label_values(src: Source<'_>, a: &Array<'_>) -> Result<Vec<u16>, DataError> {
    if a.dtype.kind == Kind::Float {
        let reason = format!("labels must be integers, the dtype is '{}'", a.descr);
        return Err(src.error(a.header_at, reason));
    }
    if a.shape.len() != 1 {
        let reason = format!("labels must be 1-D, the shape is {}", a.shape_text());
        return Err(src.error(a.header_at, reason));
    }
    let t = a.dtype;
    a.elements()
        .enumerate()
        .map(|(k, e)| {
            let v = t.int(e);
            u16::try_from(v).map_err(|_| {
                let reason = format!("label {v} of sample {k} is outside 0..65536");
                src.error(a.offset_of(k), reason)
            })
        })
        .collect()
}

/// Features `x` and labels `y` as a dataset.
fn dataset(
    name: &str,
    (xs, x): (Source<'_>, &Array<'_>),
    (ys, y): (Source<'_>, &Array<'_>),
) -> Result<Dataset, DataError> {
    let shape = sample_shape(xs, x)?;
    let labels = label_values(ys, y)?;
    if labels.len() as u64 != x.shape[0] {
        let reason = format!(
            "{} labels for the {} samples of x",
            labels.len(),
            x.shape[0]
        );
        return Err(ys.error(y.header_at, reason));
    }
    let classes = labels.iter().copied().max().map_or(0, u32::from) + 1;
    let d = Dataset {
        name: name.into(),
        shape,
        classes: classes.max(2),
        values: feature_values(xs, x)?,
        labels,
        test_from: None,
    };
    d.validate()?;
    Ok(d)
}

/// A dataset's name from its file: the file name without its extension.
fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "npy".into(), |s| s.to_string_lossy().into_owned())
}

/// A dataset from a features file `x` and a labels file `y` (`.npy`, optionally gzipped).
pub fn load_npy_pair(x: &Path, y: &Path) -> Result<Dataset, DataError> {
    let (xb, yb) = (read_maybe_gz(x)?, read_maybe_gz(y)?);
    let (xs, ys) = (Source::File(x), Source::File(y));
    let (xa, ya) = (parse_array(xs, &xb)?, parse_array(ys, &yb)?);
    dataset(&stem(x), (xs, &xa), (ys, &ya))
}

/// A dataset from an `.npz` archive holding `x.npy` and `y.npy` (or `x` and `y`).
pub fn load_npz(path: &Path) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut zip = match ZipArchive::new(BufReader::new(file)) {
        Ok(zip) => zip,
        Err(e) => return Err(unreadable_archive(path, &e)),
    };
    let (xn, xb) = read_member(&mut zip, path, "x")?;
    let (yn, yb) = read_member(&mut zip, path, "y")?;
    let xs = Source::Member {
        archive: path,
        member: &xn,
    };
    let ys = Source::Member {
        archive: path,
        member: &yn,
    };
    let (xa, ya) = (parse_array(xs, &xb)?, parse_array(ys, &yb)?);
    dataset(&stem(path), (xs, &xa), (ys, &ya))
}

/// Reads member `{stem}.npy` (or `stem`) whole, at most its declared size and
/// [`MAX_FILE_BYTES`]; returns its name and bytes.
fn read_member<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    path: &Path,
    stem: &str,
) -> Result<(String, Vec<u8>), DataError> {
    let names = [format!("{stem}.npy"), stem.to_string()];
    let Some(member) = names.iter().find(|n| zip.index_for_name(n).is_some()) else {
        let held: Vec<String> = zip
            .file_names()
            .take(10)
            .flatten()
            .map(Into::into)
            .collect();
        return Err(DataError::Member {
            path: path.to_path_buf(),
            member: names[0].clone(),
            reason: format!("missing (the archive holds {})", held.join(", ")),
        });
    };
    let err = |reason: String| DataError::Member {
        path: path.to_path_buf(),
        member: member.clone(),
        reason,
    };
    let mut file = zip
        .by_name(member)
        .map_err(|e| err(format!("unreadable: {e}")))?;
    let declared = file.size();
    if declared > MAX_FILE_BYTES {
        let reason = format!("declares {declared} bytes, over the {MAX_FILE_BYTES}-byte limit");
        return Err(err(reason));
    }
    let mut out = Vec::new();
    (&mut file)
        .take(declared + 1)
        .read_to_end(&mut out)
        .map_err(|e| err(format!("broken after {} bytes: {e}", out.len())))?;
    if out.len() as u64 != declared {
        let reason = format!("holds {} bytes but declares {declared}", out.len());
        return Err(err(reason));
    }
    Ok((member.clone(), out))
}

/// The error for an archive whose central directory cannot be read (a truncated `.npz` loses
/// it first): reads the members from the start to name the one that breaks.
fn unreadable_archive(path: &Path, central: &ZipError) -> DataError {
    let corrupt = |offset: u64, reason: String| DataError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let mut r = match File::open(path) {
        Ok(f) => BufReader::new(f),
        Err(e) => {
            return DataError::Io {
                path: path.to_path_buf(),
                source: e,
            };
        }
    };
    let mut last: Option<String> = None;
    loop {
        let at = r.stream_position().unwrap_or(0);
        let mut member = match zip::read::read_zipfile_from_stream(&mut r) {
            Ok(Some(m)) => m,
            Ok(None) => {
                let reason = format!("the zip central directory is unreadable: {central}");
                return corrupt(at, reason);
            }
            Err(e) => {
                let reason = match &last {
                    Some(prev) => format!(
                        "truncated or broken in the header of the member after {prev} ({e}; \
                         the archive's central directory is unreadable: {central})"
                    ),
                    None => format!("not a readable zip archive ({central}; {e})"),
                };
                return corrupt(at, reason);
            }
        };
        let name = member
            .name()
            .map_or_else(|_| format!("the member at offset {at}"), Cow::into_owned);
        let read = io::copy(&mut (&mut member).take(MAX_FILE_BYTES), &mut io::sink());
        if let Err(e) = read {
            return DataError::Member {
                path: path.to_path_buf(),
                member: name,
                reason: format!(
                    "truncated or broken: {e} (the archive's central directory is unreadable: \
                     {central})"
                ),
            };
        }
        last = Some(name);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;

    use zip::CompressionMethod;
    use zip::write::SimpleFileOptions;

    use super::*;

    /// A `.npy` file: the header built by hand, padded so the data starts at a multiple of 64.
    fn npy(version: u8, descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let order = if fortran { "True" } else { "False" };
        let dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
        npy_raw(version, &dict, data)
    }

    /// A `.npy` file with the given header dict.
    fn npy_raw(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let mut header = dict.to_string();
        let prefix = if version == 1 { 10 } else { 12 };
        while !(prefix + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[version, 0]);
        match version {
            1 => b.extend_from_slice(&(header.len() as u16).to_le_bytes()),
            _ => b.extend_from_slice(&(header.len() as u32).to_le_bytes()),
        }
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    /// Little-endian bytes of a list of numbers.
    fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(|&x| f(x)).collect()
    }

    /// A fresh temporary folder for one test.
    fn tmp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hm-npy-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        dir
    }

    fn pair(dir: &Path, x: &[u8], y: &[u8]) -> Result<Dataset, DataError> {
        std::fs::write(dir.join("x.npy"), x).expect("write");
        std::fs::write(dir.join("y.npy"), y).expect("write");
        load_npy_pair(&dir.join("x.npy"), &dir.join("y.npy"))
    }

    #[test]
    fn byte_images_and_integer_labels_load() {
        let dir = tmp("bytes");
        let x = npy(
            1,
            "|u1",
            false,
            "(3, 2, 2)",
            &[0, 9, 0, 9, 1, 1, 1, 1, 5, 0, 0, 0],
        );
        let y = npy(
            1,
            "<i8",
            false,
            "(3,)",
            &le(&[0i64, 4, 2], i64::to_le_bytes),
        );
        let d = pair(&dir, &x, &y).expect("loads");
        assert_eq!(d.name, "x");
        assert_eq!((d.len(), d.classes), (3, 5));
        assert_eq!(d.shape, Shape::Image { c: 1, h: 2, w: 2 });
        assert_eq!(d.labels, vec![0, 4, 2]);
        let Values::U8 { max, data } = &d.values else {
            panic!("bytes expected")
        };
        assert_eq!((*max, data[1]), (9, 9));
        // Four dimensions are channels first; version 3.0 headers read like 2.0.
        let x = npy(3, "|u1", false, "(1, 2, 1, 2)", &[1, 2, 3, 4]);
        let y = npy(3, "|u1", false, "(1,)", &[0]);
        let d = pair(&dir, &x, &y).expect("loads");
        assert_eq!(d.shape, Shape::Image { c: 2, h: 1, w: 2 });
        assert_eq!(d.classes, 2, "at least two classes");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn floats_integers_byte_orders_and_fortran_order_are_read() {
        let dir = tmp("types");
        let y = npy(1, "<u2", false, "(2,)", &le(&[1u16, 0], u16::to_le_bytes));
        let x = npy(
            2,
            "<f8",
            false,
            "(2, 3)",
            &le(&[0.5f64, -1.0, 2.0, 3.0, 4.0, 1e-3], f64::to_le_bytes),
        );
        let d = pair(&dir, &x, &y).expect("f8");
        assert_eq!(d.shape, Shape::Flat(3));
        assert_eq!(d.values, Values::F32(vec![0.5, -1.0, 2.0, 3.0, 4.0, 1e-3]));
        let x = npy(
            1,
            ">f4",
            false,
            "(2, 1)",
            &le(&[1.5f32, -2.25], f32::to_be_bytes),
        );
        assert_eq!(
            pair(&dir, &x, &y).expect(">f4").values,
            Values::F32(vec![1.5, -2.25])
        );
        // Integers in 0..=255 stay bytes; a negative one makes them all f32.
        let x = npy(
            1,
            "<i4",
            false,
            "(2, 2)",
            &le(&[0i32, 200, 3, 7], i32::to_le_bytes),
        );
        let want = Values::U8 {
            max: 200,
            data: vec![0, 200, 3, 7],
        };
        assert_eq!(pair(&dir, &x, &y).expect("i4").values, want);
        let x = npy(1, "|i1", false, "(2, 2)", &[0, 0xff, 3, 7]);
        let want = Values::F32(vec![0.0, -1.0, 3.0, 7.0]);
        assert_eq!(pair(&dir, &x, &y).expect("i1").values, want);
        let x = npy(
            1,
            ">i2",
            false,
            "(2, 1)",
            &le(&[-300i16, 5], i16::to_be_bytes),
        );
        assert_eq!(
            pair(&dir, &x, &y).expect(">i2").values,
            Values::F32(vec![-300.0, 5.0])
        );
        // Fortran order: columns first in the file, rows first in the dataset.
        let x = npy(1, "|u1", true, "(2, 3)", &[1, 4, 2, 5, 3, 6]);
        let want = Values::U8 {
            max: 6,
            data: vec![1, 2, 3, 4, 5, 6],
        };
        assert_eq!(pair(&dir, &x, &y).expect("fortran").values, want);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_values_name_the_file_and_the_element_offset() {
        let dir = tmp("values");
        let y = npy(1, "|u1", false, "(2,)", &[0, 1]);
        let x = npy(
            1,
            "<f4",
            false,
            "(2, 2)",
            &le(&[0.0f32, 1.0, f32::NAN, 2.0], f32::to_le_bytes),
        );
        let msg = pair(&dir, &x, &y).expect_err("NaN").to_string();
        assert!(
            msg.contains("x.npy at offset 136") && msg.contains("sample 1, value 0"),
            "{msg}"
        );
        let x = npy(
            1,
            "<f8",
            false,
            "(2, 1)",
            &le(&[1e300f64, 0.0], f64::to_le_bytes),
        );
        let msg = pair(&dir, &x, &y).expect_err("too big for f32").to_string();
        assert!(
            msg.contains("offset 128") && msg.contains("outside f32's range"),
            "{msg}"
        );
        // In Fortran order the offset is where the element really is.
        let x = npy(
            1,
            "<f4",
            true,
            "(2, 2)",
            &le(&[0.0f32, f32::INFINITY, 1.0, 2.0], f32::to_le_bytes),
        );
        let msg = pair(&dir, &x, &y).expect_err("inf").to_string();
        assert!(
            msg.contains("offset 132") && msg.contains("sample 1, value 0"),
            "{msg}"
        );
        let x = npy(1, "|u1", false, "(2, 2)", &[1, 2, 3, 4]);
        let bad = npy(1, "<i2", false, "(2,)", &le(&[0i16, -1], i16::to_le_bytes));
        let msg = pair(&dir, &x, &bad)
            .expect_err("negative label")
            .to_string();
        assert!(
            msg.contains("y.npy at offset 130") && msg.contains("label -1 of sample 1"),
            "{msg}"
        );
        let bad = npy(
            1,
            "<u4",
            false,
            "(2,)",
            &le(&[0u32, 65536], u32::to_le_bytes),
        );
        let msg = pair(&dir, &x, &bad)
            .expect_err("label too large")
            .to_string();
        assert!(msg.contains("label 65536"), "{msg}");
        let bad = npy(
            1,
            "<f4",
            false,
            "(2,)",
            &le(&[0.0f32, 1.0], f32::to_le_bytes),
        );
        let msg = pair(&dir, &x, &bad).expect_err("float labels").to_string();
        assert!(
            msg.contains("y.npy") && msg.contains("must be integers"),
            "{msg}"
        );
        let bad = npy(1, "|u1", false, "(3,)", &[0, 1, 1]);
        let msg = pair(&dir, &x, &bad)
            .expect_err("3 labels, 2 samples")
            .to_string();
        assert!(msg.contains("3 labels for the 2 samples"), "{msg}");
        let bad = npy(1, "|u1", false, "(1, 2)", &[0, 1]);
        let msg = pair(&dir, &x, &bad).expect_err("2-D labels").to_string();
        assert!(msg.contains("must be 1-D, the shape is (1, 2)"), "{msg}");
        let flat = npy(1, "|u1", false, "(2,)", &[1, 2]);
        let msg = pair(&dir, &flat, &y).expect_err("1-D x").to_string();
        assert!(
            msg.contains("x.npy") && msg.contains("x has shape (2,)"),
            "{msg}"
        );
        let empty = npy(1, "|u1", false, "(2, 0)", &[]);
        assert!(pair(&dir, &empty, &y).is_err(), "samples of no values");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn broken_headers_and_sizes_name_the_offset_without_allocating() {
        let p = Path::new("a.npy");
        let src = Source::File(p);
        let good = npy(1, "<f4", false, "(2, 3)", &[0; 24]);
        let msg = |b: &[u8]| parse_array(src, b).expect_err("broken").to_string();
        let m = msg(&good[..good.len() - 5]);
        assert!(
            m.contains("a.npy at offset 147") && m.contains("needs 24 data bytes"),
            "{m}"
        );
        let mut long = good.clone();
        long.push(0);
        assert!(msg(&long).contains("offset 152: 1 unexpected bytes"));
        assert!(msg(b"PK\x03\x04 not numpy").contains("no \\x93NUMPY magic"));
        assert!(msg(&good[..30]).contains("truncated inside the 118-byte header"));
        let mut v9 = good.clone();
        v9[6] = 9;
        assert!(msg(&v9).contains("version 9.0"));
        let huge = npy(1, "<f8", false, "(4294967296, 4294967296)", &[]);
        assert!(msg(&huge).contains("is too large"), "no allocation");
        let big = npy(2, "<f8", false, "(1000000000, 1000)", &[0; 8]);
        assert!(
            msg(&big).contains("truncated"),
            "declared size checked first"
        );
        assert!(
            msg(&npy(1, "<c8", false, "(2,)", &[0; 16])).contains("dtype '<c8' is not supported")
        );
        let garbled = npy(1, "<f4", false, "(2, x)", &[0; 8]);
        assert!(
            msg(&garbled).contains("offset 64: expected a dimension"),
            "{}",
            msg(&garbled)
        );
        let unclosed = npy_raw(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)",
            &[0; 8],
        );
        assert!(
            msg(&unclosed).contains("expected '}'"),
            "{}",
            msg(&unclosed)
        );
        let dict = "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}";
        assert!(msg(&npy_raw(1, dict, &[0; 8])).contains("structured dtypes"));
        let dict = "{'descr': '<f4', 'fortran_order': False}";
        assert!(msg(&npy_raw(1, dict, &[0; 8])).contains("no 'shape'"));
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} extra";
        assert!(msg(&npy_raw(1, dict, &[0; 8])).contains("text after"));
        // Python 2 headers wrote longs with an L; a 1-D shape may be written (n,) or (n).
        let header = parse_header("{'descr': '<u2', 'shape': (3L, 2L), 'fortran_order': False}")
            .expect("python 2");
        assert_eq!(header.shape, vec![3, 2]);
        assert_eq!(
            parse_header("{\"descr\":\"|u1\",\"fortran_order\":True,\"shape\":(7)}")
                .expect("ok")
                .shape,
            vec![7]
        );
    }

    /// Writes an archive of `(name, bytes)` members.
    fn npz(path: &Path, method: CompressionMethod, members: &[(&str, &[u8])]) {
        let mut w = zip::ZipWriter::new(File::create(path).expect("create"));
        let opts = SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in members {
            w.start_file(*name, opts).expect("member");
            w.write_all(bytes).expect("write");
        }
        w.finish().expect("finish");
    }

    /// A sample `x` (4 images of 4×5 pixels) and `y` with three classes.
    fn sample_arrays() -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..80u8).map(|i| i % 7 * 30).collect();
        let x = npy(1, "|u1", false, "(4, 4, 5)", &pixels);
        let y = npy(
            1,
            "<i8",
            false,
            "(4,)",
            &le(&[0i64, 1, 2, 1], i64::to_le_bytes),
        );
        (x, y)
    }

    #[test]
    fn npz_archives_load_stored_or_deflated_with_either_member_names() {
        let dir = tmp("npz");
        let (x, y) = sample_arrays();
        let stored = dir.join("stored.npz");
        npz(
            &stored,
            CompressionMethod::Stored,
            &[("x.npy", &x), ("y.npy", &y)],
        );
        let d = load_npz(&stored).expect("stored");
        assert_eq!((d.len(), d.classes, d.name.as_str()), (4, 3, "stored"));
        assert_eq!(d.shape, Shape::Image { c: 1, h: 4, w: 5 });
        let deflated = dir.join("deflated.npz");
        npz(
            &deflated,
            CompressionMethod::Deflated,
            &[("y", &y), ("x", &x)],
        );
        let e = load_npz(&deflated).expect("deflated");
        assert_eq!((e.values, e.labels), (d.values, d.labels));
        npz(
            &stored,
            CompressionMethod::Stored,
            &[("x.npy", &x), ("z.npy", &y)],
        );
        let msg = load_npz(&stored).expect_err("no y").to_string();
        assert!(
            msg.contains("stored.npz (y.npy): missing (the archive holds x.npy, z.npy)"),
            "{msg}"
        );
        let cut = &x[..x.len() - 10];
        npz(
            &stored,
            CompressionMethod::Stored,
            &[("x.npy", cut), ("y.npy", &y)],
        );
        let msg = load_npz(&stored).expect_err("truncated member").to_string();
        assert!(
            msg.contains("stored.npz (x.npy): at offset 198: truncated"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn truncated_or_corrupt_npz_names_the_member() {
        let dir = tmp("broken-npz");
        let (x, y) = sample_arrays();
        let path = dir.join("d.npz");
        npz(
            &path,
            CompressionMethod::Deflated,
            &[("x.npy", &x), ("y.npy", &y)],
        );
        let whole = std::fs::read(&path).expect("read");
        // Cut inside y.npy's data: the central directory is gone, the streaming walk names y.
        let central = whole
            .windows(4)
            .position(|w| w == b"PK\x01\x02")
            .expect("central");
        std::fs::write(&path, &whole[..central - 3]).expect("write");
        let msg = load_npz(&path).expect_err("truncated").to_string();
        assert!(msg.contains("d.npz (y.npy): truncated or broken"), "{msg}");
        let y_header = whole.windows(5).position(|w| w == b"y.npy").expect("y") - 30;
        std::fs::write(&path, &whole[..y_header + 10]).expect("write");
        let msg = load_npz(&path)
            .expect_err("truncated in y's header")
            .to_string();
        let want = format!(
            "d.npz at offset {y_header}: truncated or broken in the header of the member after x.npy"
        );
        assert!(msg.contains(&want), "{msg}");
        std::fs::write(&path, &whole[..y_header - 3]).expect("write");
        let msg = load_npz(&path).expect_err("truncated in x").to_string();
        assert!(msg.contains("d.npz (x.npy): truncated or broken"), "{msg}");
        // A flipped byte in x's compressed data fails the inflate or the CRC.
        let mut flipped = whole.clone();
        flipped[y_header - 20] ^= 0x55;
        std::fs::write(&path, &flipped).expect("write");
        let msg = load_npz(&path).expect_err("corrupt").to_string();
        assert!(msg.contains("d.npz (x.npy)"), "{msg}");
        std::fs::write(&path, b"not a zip at all").expect("write");
        let msg = load_npz(&path).expect_err("not a zip").to_string();
        assert!(
            msg.contains("d.npz at offset 0: not a readable zip archive"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
