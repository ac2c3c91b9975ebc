//! The IDX file format of MNIST (and Fashion-MNIST, KMNIST, ...), gzipped or not.
//!
//! Layout: two zero bytes, a type byte (`0x08` = unsigned byte, the only type
//! FlowLab reads), the number of dimensions `d`, then `d` big-endian `u32`
//! sizes, then the data in row-major order.

use std::io::Read as _;
use std::path::Path;

use crate::{Error, Result};

/// Largest decompressed IDX payload accepted (guards against gzip bombs).
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// An unsigned-byte IDX array.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxU8 {
    /// Sizes of each dimension, e.g. `[60000, 28, 28]`.
    pub dims: Vec<usize>,
    /// The values, row-major; `data.len()` is the product of `dims`.
    pub data: Vec<u8>,
}

/// Parses IDX bytes (gzipped when they start with the gzip magic `1f 8b`).
/// `name` is used in error messages.
pub fn parse_idx(bytes: &[u8], name: &Path) -> Result<IdxU8> {
    let raw;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::data(name, format!("corrupt gzip stream: {e}")))?;
        if out.len() as u64 > MAX_IDX_BYTES {
            return Err(Error::data(
                name,
                format!("decompressed size exceeds {MAX_IDX_BYTES} bytes"),
            ));
        }
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    let Some(&[z0, z1, ty, nd]) = bytes.get(..4).and_then(|h| h.first_chunk::<4>()) else {
        return Err(Error::data(
            name,
            format!("file is {} bytes, too short for an IDX header", bytes.len()),
        ));
    };
    if z0 != 0 || z1 != 0 {
        return Err(Error::data(
            name,
            "not an IDX file (the first two bytes must be zero)",
        ));
    }
    if ty != 0x08 {
        return Err(Error::data(
            name,
            format!("IDX element type 0x{ty:02x} is not supported (only 0x08, unsigned byte)"),
        ));
    }
    let nd = usize::from(nd);
    if nd == 0 {
        return Err(Error::data(name, "IDX header declares zero dimensions"));
    }
    let header_len = 4 + 4 * nd;
    let Some(dim_bytes) = bytes.get(4..header_len) else {
        return Err(Error::data(
            name,
            format!("truncated header: {nd} dimensions need {header_len} bytes"),
        ));
    };
    let mut dims = Vec::with_capacity(nd);
    let mut total: usize = 1;
    for c in dim_bytes.as_chunks::<4>().0 {
        let d = u32::from_be_bytes(*c) as usize;
        dims.push(d);
        total = total
            .checked_mul(d)
            .ok_or_else(|| Error::data(name, format!("dimensions {dims:?} overflow")))?;
    }
    let body = bytes.get(header_len..).unwrap_or_default();
    if body.len() < total {
        return Err(Error::data(
            name,
            format!(
                "truncated: dimensions {dims:?} need {total} bytes of data, found {}",
                body.len()
            ),
        ));
    }
    if body.len() > total {
        return Err(Error::data(
            name,
            format!(
                "{} unexpected bytes after the data of dimensions {dims:?}",
                body.len() - total
            ),
        ));
    }
    Ok(IdxU8 {
        dims,
        data: body.to_vec(),
    })
}

/// Reads an IDX file from disk (gzipped or not).
pub fn read_idx(path: &Path) -> Result<IdxU8> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    parse_idx(&bytes, path)
}

/// Encodes an unsigned-byte IDX array (uncompressed).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    let total: usize = dims.iter().product();
    if total != data.len() || dims.is_empty() || dims.len() > 255 {
        return Err(Error::config(format!(
            "IDX dims {dims:?} do not match {} values",
            data.len()
        )));
    }
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&[0, 0, 0x08, dims.len() as u8]);
    for &d in dims {
        let d = u32::try_from(d)
            .map_err(|_| Error::config(format!("IDX dimension {d} exceeds u32")))?;
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}

/// Writes an unsigned-byte IDX file atomically.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> Result<()> {
    crate::fsutil::write_atomic(path, &encode_idx(dims, data)?)
}
