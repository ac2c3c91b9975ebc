//! PNG export: 2D scatter plots and image grids (no GUI needed).

use std::path::Path;

use image::{ImageBuffer, Luma, Rgb, RgbImage};

use crate::{Error, Result};

/// Bounds `[x_lo, x_hi, y_lo, y_hi]` of the finite points among `sets` (flattened `(n, 2)`).
fn bounds_of(sets: &[&[f32]]) -> Option<[f32; 4]> {
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NEG_INFINITY,
    );
    for set in sets {
        for &[x, y] in set.as_chunks::<2>().0 {
            if x.is_finite() && y.is_finite() {
                (x_lo, x_hi, y_lo, y_hi) = (x_lo.min(x), x_hi.max(x), y_lo.min(y), y_hi.max(y));
            }
        }
    }
    x_lo.is_finite().then_some([x_lo, x_hi, y_lo, y_hi])
}

/// A 2D flow figure: what the app's flow view shows, for export.
#[derive(Debug, Clone, Default)]
pub struct FlowFigure {
    /// Samples, flattened `(n, 2)`, drawn on top in blue.
    pub points: Vec<f32>,
    /// Target data, flattened `(m, 2)`, drawn underneath in grey.
    pub reference: Vec<f32>,
    /// Polylines (e.g. trajectories), drawn in light blue.
    pub lines: Vec<Vec<[f32; 2]>>,
    /// Arrows `(origin, tip)` (e.g. the velocity field), drawn in orange.
    pub arrows: Vec<([f32; 2], [f32; 2])>,
}

/// Maps data coordinates into a `size x size` image with a square view of `bounds`.
struct Canvas {
    img: RgbImage,
    centre: [f32; 2],
    span: f32,
}

impl Canvas {
    fn new(bounds: Option<[f32; 4]>, size: u32) -> Self {
        let size = size.max(16);
        let [x_lo, x_hi, y_lo, y_hi] = bounds.unwrap_or([-1.0, 1.0, -1.0, 1.0]);
        Canvas {
            img: RgbImage::from_pixel(size, size, Rgb([255, 255, 255])),
            centre: [(x_hi + x_lo) / 2.0, (y_hi + y_lo) / 2.0],
            span: (x_hi - x_lo).max(y_hi - y_lo).max(1e-6) * 1.1,
        }
    }

    fn to_px(&self, [x, y]: [f32; 2]) -> (f32, f32) {
        let s = self.img.width() as f32;
        (
            ((x - self.centre[0]) / self.span + 0.5) * s,
            (0.5 - (y - self.centre[1]) / self.span) * s,
        )
    }

    fn put(&mut self, px: f32, py: f32, colour: Rgb<u8>, r: i64) {
        if !(px.is_finite() && py.is_finite()) {
            return;
        }
        let size = i64::from(self.img.width());
        for dx in -r..=r {
            for dy in -r..=r {
                let (qx, qy) = (px as i64 + dx, py as i64 + dy);
                if (0..size).contains(&qx) && (0..size).contains(&qy) {
                    self.img.put_pixel(qx as u32, qy as u32, colour);
                }
            }
        }
    }

    fn dot(&mut self, p: [f32; 2], colour: Rgb<u8>) {
        let (px, py) = self.to_px(p);
        self.put(px, py, colour, 1);
    }

    /// A straight segment, sampled every half pixel.
    fn segment(&mut self, a: [f32; 2], b: [f32; 2], colour: Rgb<u8>) {
        let ((ax, ay), (bx, by)) = (self.to_px(a), self.to_px(b));
        let len = ((bx - ax).powi(2) + (by - ay).powi(2)).sqrt();
        if !len.is_finite() {
            return;
        }
        let n = (2.0 * len).ceil().clamp(1.0, 4096.0) as usize;
        for i in 0..=n {
            let f = i as f32 / n as f32;
            self.put(ax + f * (bx - ax), ay + f * (by - ay), colour, 0);
        }
    }
}

/// Draws a [`FlowFigure`] into a `size x size` image whose view covers the points and the reference.
pub fn render_flow(fig: &FlowFigure, size: u32) -> RgbImage {
    let origins: Vec<f32> = fig.arrows.iter().flat_map(|(o, _)| *o).collect();
    draw_flow(
        fig,
        bounds_of(&[&fig.points, &fig.reference, &origins]),
        size,
    )
}

/// Draws a [`FlowFigure`] with a square view of `bounds`.
fn draw_flow(fig: &FlowFigure, bounds: Option<[f32; 4]>, size: u32) -> RgbImage {
    let mut c = Canvas::new(bounds, size);
    for &[x, y] in fig.reference.as_chunks::<2>().0 {
        c.dot([x, y], Rgb([200, 200, 200]));
    }
    for line in &fig.lines {
        for w in line.windows(2) {
            if let [a, b] = w {
                c.segment(*a, *b, Rgb([150, 200, 240]));
            }
        }
    }
    for &(o, tip) in &fig.arrows {
        let orange = Rgb([240, 150, 30]);
        c.segment(o, tip, orange);
        // Two short barbs at the tip.
        let (dx, dy) = (tip[0] - o[0], tip[1] - o[1]);
        for (sx, sy) in [(0.866f32, 0.5f32), (0.866, -0.5)] {
            let back = [
                tip[0] - 0.3 * (dx * sx - dy * sy),
                tip[1] - 0.3 * (dx * sy + dy * sx),
            ];
            c.segment(tip, back, orange);
        }
    }
    for &[x, y] in fig.points.as_chunks::<2>().0 {
        c.dot([x, y], Rgb([31, 119, 180]));
    }
    c.img
}

/// Renders flattened `(n, 2)` points as a `size x size` scatter plot, with
/// optional `reference` points drawn underneath in grey. Bounds cover both sets.
pub fn scatter_png(points: &[f32], reference: Option<&[f32]>, size: u32) -> RgbImage {
    let reference = reference.unwrap_or_default();
    let fig = FlowFigure {
        points: points.to_vec(),
        reference: reference.to_vec(),
        ..Default::default()
    };
    draw_flow(&fig, bounds_of(&[points, reference]), size)
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

/// Encodes RGBA frames as an endlessly looping animated GIF, `delay_ms` per frame.
pub fn encode_gif(
    frames: impl IntoIterator<Item = image::RgbaImage>,
    delay_ms: u32,
) -> Result<Vec<u8>> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let gif_err = |e: image::ImageError| Error::config(format!("cannot encode GIF: {e}"));
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 10);
        enc.set_repeat(Repeat::Infinite).map_err(gif_err)?;
        for rgba in frames {
            let delay = image::Delay::from_numer_denom_ms(delay_ms, 1);
            enc.encode_frame(image::Frame::from_parts(rgba, 0, 0, delay))
                .map_err(gif_err)?;
        }
    }
    Ok(out)
}

/// Encodes a t-sweep of a 2D flow as an endlessly looping animated GIF.
/// `frames` holds flattened `(n, 2)` point sets (e.g. the particles at evenly
/// spaced times), drawn over `reference` with bounds shared by all frames.
pub fn sweep_gif(
    frames: &[Vec<f32>],
    reference: &[f32],
    size: u32,
    delay_ms: u32,
) -> Result<Vec<u8>> {
    let mut sets: Vec<&[f32]> = frames.iter().map(Vec::as_slice).collect();
    sets.push(reference);
    let bounds = bounds_of(&sets);
    let mut fig = FlowFigure {
        reference: reference.to_vec(),
        ..Default::default()
    };
    let rendered = frames.iter().map(|pts| {
        fig.points.clone_from(pts);
        image::DynamicImage::ImageRgb8(draw_flow(&fig, bounds, size)).into_rgba8()
    });
    encode_gif(rendered, delay_ms)
}
