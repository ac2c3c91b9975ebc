//! The GUI's frame time while training, for `flowlab bench`: the real app
//! (layout, plots, drawing commands and tessellation into triangles) runs
//! headless frame after frame while its worker trains the default moons model
//! with every flow layer on. Only the GPU upload and rasterisation, which
//! depend on the graphics driver, are left out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::FlowLabApp;

/// Frame-time figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameTimes {
    /// Frames drawn.
    pub frames: usize,
    /// Mean frame time, ms.
    pub mean_ms: f64,
    /// 95th-percentile frame time, ms.
    pub p95_ms: f64,
    /// Longest frame, ms.
    pub max_ms: f64,
    /// Training steps per second the worker managed meanwhile.
    pub steps_per_sec: f64,
}

/// Draws frames of a 1280x800 window for `seconds` while the default moons
/// model trains (particles, trajectories, velocity field, data and density on).
pub fn frame_times(seconds: f64) -> crate::Result<FrameTimes> {
    let ctx = egui::Context::default();
    let mut app = FlowLabApp::new(Arc::new(|| {}));
    app.layers.trajectories = true;
    app.layers.field = true;
    app.layers.data = true;
    app.layers.density = true;
    let input = || egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(
            egui::Pos2::ZERO,
            egui::vec2(1280.0, 800.0),
        )),
        ..Default::default()
    };
    // Wait for the pretrained model, then start a fresh run.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.run_config.is_none() {
        if Instant::now() > deadline {
            return Err(crate::Error::config("the worker did not load the model"));
        }
        let _ = ctx.run_ui(input(), |ui| app.ui(ui));
        std::thread::sleep(Duration::from_millis(5));
    }
    app.config.steps = u64::MAX / 2;
    app.train_new();
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds.max(1.0) {
        let t = Instant::now();
        let out = ctx.run_ui(input(), |ui| app.ui(ui));
        let _ = ctx.tessellate(out.shapes, out.pixels_per_point);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        // A 60 Hz display: the GUI waits for the next frame between draws.
        std::thread::sleep(Duration::from_millis(16).saturating_sub(t.elapsed()));
    }
    // The trainer's own rate over its recent steps.
    let steps_per_sec = app.last.map_or(0.0, |r| r.steps_per_sec);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len().max(1);
    let pick = |q: f64| {
        sorted
            .get(((n - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(FrameTimes {
        frames: times.len(),
        mean_ms: times.iter().sum::<f64>() / n as f64,
        p95_ms: pick(0.95),
        max_ms: pick(1.0),
        steps_per_sec,
    })
}
