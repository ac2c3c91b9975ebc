//! PNG export: 2D scatter plots and image grids (no GUI needed).

use std::path::Path;

use image::{ImageBuffer, Luma, Rgb, RgbImage};

use crate::{Error, Result};

/// Renders flattened `(n, 2)` points as a `size x size` scatter plot, with
/// optional `reference` points drawn underneath in grey. Bounds cover both sets.
pub fn scatter_png(points: &[f32], reference: Option<&[f32]>, size: u32) -> RgbImage {
    let size = size.max(16);
    let mut img = RgbImage::from_pixel(size, size, Rgb([255, 255, 255]));
    let pairs = points
        .as_chunks::<2>()
        .0
        .iter()
        .chain(reference.unwrap_or_default().as_chunks::<2>().0);
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NEG_INFINITY,
    );
    for &[x, y] in pairs {
        if x.is_finite() && y.is_finite() {
            (x_lo, x_hi, y_lo, y_hi) = (x_lo.min(x), x_hi.max(x), y_lo.min(y), y_hi.max(y));
        }
    }
    if !(x_lo.is_finite() && y_lo.is_finite()) {
        return img;
    }
    let span = (x_hi - x_lo).max(y_hi - y_lo).max(1e-6) * 1.1;
    let centre = [(x_hi + x_lo) / 2.0, (y_hi + y_lo) / 2.0];
    let s = size as f32;
    let mut dot = |p: &[f32], colour: Rgb<u8>, r: i64| {
        if let [x, y] = *p {
            let px = ((x - centre[0]) / span + 0.5) * s;
            let py = (0.5 - (y - centre[1]) / span) * s;
            if !(px.is_finite() && py.is_finite()) {
                return;
            }
            for dx in -r..=r {
                for dy in -r..=r {
                    let (qx, qy) = (px as i64 + dx, py as i64 + dy);
                    if (0..i64::from(size)).contains(&qx) && (0..i64::from(size)).contains(&qy) {
                        img.put_pixel(qx as u32, qy as u32, colour);
                    }
                }
            }
        }
    };
    for p in reference.unwrap_or_default().chunks_exact(2) {
        dot(p, Rgb([200, 200, 200]), 1);
    }
    for p in points.chunks_exact(2) {
        dot(p, Rgb([31, 119, 180]), 1);
    }
    img
}

/// Tiles `n` greyscale images of `rows x cols` pixels (values 0-255, flattened
/// `(n, rows, cols)`) into a grid of `columns` images with a 2-pixel gap.
pub fn image_grid(
    pixels: &[f32],
    rows: usize,
    cols: usize,
    columns: usize,
) -> ImageBuffer<Luma<u8>, Vec<u8>> {
    let per = rows * cols;
    let n = pixels.len().checked_div(per).unwrap_or(0);
    let columns = columns.clamp(1, n.max(1));
    let grid_rows = n.div_ceil(columns);
    let gap = 2;
    let w = (columns * (cols + gap) + gap) as u32;
    let h = (grid_rows * (rows + gap) + gap) as u32;
    let mut img = ImageBuffer::from_pixel(w, h, Luma([64u8]));
    for (i, im) in pixels.chunks_exact(per.max(1)).enumerate().take(n) {
        let (gx, gy) = (i % columns, i / columns);
        let (ox, oy) = (gap + gx * (cols + gap), gap + gy * (rows + gap));
        for (j, v) in im.iter().enumerate() {
            let (x, y) = ((ox + j % cols) as u32, (oy + j / cols) as u32);
            if x < w && y < h {
                img.put_pixel(x, y, Luma([v.round().clamp(0.0, 255.0) as u8]));
            }
        }
    }
    img
}

/// Saves an image as PNG atomically.
pub fn save_png<P, C>(img: &ImageBuffer<P, C>, path: &Path) -> Result<()>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| Error::config(format!("cannot encode PNG {}: {e}", path.display())))?;
    crate::fsutil::write_atomic(path, buf.get_ref())
}
