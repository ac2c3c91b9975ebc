//! PNG export: 2D scatter plots and image grids (no GUI needed).

use std::path::Path;

use image::{ImageBuffer, Luma, Rgb, RgbImage};

use crate::{Error, Result};

/// Renders flattened `(n, 2)` points as a `size x size` scatter plot, with
/// optional `reference` points drawn underneath in grey. Bounds cover both sets.
pub fn scatter_png(points: &[f32], reference: Option<&[f32]>, size: u32) -> RgbImage {
    let size = size.max(16);
    let mut img = RgbImage::from_pixel(size, size, Rgb([255, 255, 255]));
    let all = points.iter().chain(reference.unwrap_or_default()).copied();
    let (mut lo, mut hi) = ([f32::INFINITY; 2], [f32::NEG_INFINITY; 2]);
    for (i, v) in all.enumerate() {
        if v.is_finite() {
            let a = i % 2;
            lo[a] = lo[a].min(v);
            hi[a] = hi[a].max(v);
        }
    }
    if !(lo[0].is_finite() && lo[1].is_finite()) {
        return img;
    }
    let span = (hi[0] - lo[0]).max(hi[1] - lo[1]).max(1e-6) * 1.1;
    let centre = [(hi[0] + lo[0]) / 2.0, (hi[1] + lo[1]) / 2.0];
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
