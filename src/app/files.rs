//! Files: open/save checkpoints (dialogs, Ctrl+O / Ctrl+S, drag and drop) and
//! exports (the flow view as PNG, the loss history as CSV, the t-sweep as GIF).
//!
//! Native dialogs block, so each runs on its own short-lived named thread that
//! also writes the export; the result comes back through a channel.

use crossbeam_channel::{Receiver, bounded};
use std::path::{Path, PathBuf};

use super::FlowLabApp;
use crate::train::worker::Command;

/// What a file dialog was opened for.
#[derive(Debug, Clone)]
pub enum FileJob {
    /// Open a checkpoint.
    Open,
    /// Save a checkpoint.
    Save,
    /// Write this PNG.
    Png(Vec<u8>),
    /// Write this CSV.
    Csv(String),
    /// Write this GIF.
    Gif(Vec<u8>),
    /// Write this run config (JSON).
    ConfigJson(String),
    /// Read a run config (JSON).
    ImportConfig,
}

/// What came back from a dialog thread.
#[derive(Debug)]
pub enum FileOutcome {
    /// A checkpoint path to open.
    Open(PathBuf),
    /// A checkpoint path to save to.
    Save(PathBuf),
    /// An export was written.
    Written(PathBuf),
    /// The person cancelled.
    Cancelled,
    /// Writing failed.
    Failed(String),
    /// A config was read (and validated).
    Config(Box<crate::train::TrainConfig>),
}

/// A running dialog thread.
pub struct Dialog {
    rx: Receiver<FileOutcome>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Dialog {
    fn drop(&mut self) {
        // A dialog still open when the app closes is left to the OS; a finished one is joined.
        if let Some(h) = self.handle.take()
            && h.is_finished()
        {
            h.join().ok();
        }
    }
}

fn write_export(path: &Path, bytes: &[u8]) -> FileOutcome {
    match crate::fsutil::write_atomic(path, bytes) {
        Ok(()) => FileOutcome::Written(path.to_path_buf()),
        Err(e) => FileOutcome::Failed(e.to_string()),
    }
}

impl FlowLabApp {
    /// Opens a native dialog for `job` on its own thread.
    pub fn start_dialog(&mut self, job: FileJob) {
        if self.dialog.is_some() {
            return;
        }
        let (tx, rx) = bounded(1);
        let repaint = self.repaint.clone();
        let spawned = std::thread::Builder::new()
            .name("flowlab-file-dialog".into())
            .spawn(move || {
                let dialog = rfd::FileDialog::new();
                let outcome = match job {
                    FileJob::Open => dialog
                        .add_filter("FlowLab checkpoint", &["safetensors"])
                        .set_title("Open a FlowLab checkpoint")
                        .pick_file()
                        .map_or(FileOutcome::Cancelled, FileOutcome::Open),
                    FileJob::Save => dialog
                        .add_filter("FlowLab checkpoint", &["safetensors"])
                        .set_file_name("flowlab.safetensors")
                        .save_file()
                        .map_or(FileOutcome::Cancelled, FileOutcome::Save),
                    FileJob::Png(bytes) => dialog
                        .add_filter("PNG image", &["png"])
                        .set_file_name("flow.png")
                        .save_file()
                        .map_or(FileOutcome::Cancelled, |p| write_export(&p, &bytes)),
                    FileJob::Csv(text) => dialog
                        .add_filter("CSV", &["csv"])
                        .set_file_name("loss.csv")
                        .save_file()
                        .map_or(FileOutcome::Cancelled, |p| {
                            write_export(&p, text.as_bytes())
                        }),
                    FileJob::ConfigJson(text) => dialog
                        .add_filter("JSON", &["json"])
                        .set_file_name("flowlab-run.json")
                        .save_file()
                        .map_or(FileOutcome::Cancelled, |p| {
                            write_export(&p, text.as_bytes())
                        }),
                    FileJob::ImportConfig => match dialog.add_filter("JSON", &["json"]).pick_file()
                    {
                        None => FileOutcome::Cancelled,
                        Some(p) => match std::fs::read_to_string(&p) {
                            Err(e) => {
                                FileOutcome::Failed(format!("cannot read {}: {e}", p.display()))
                            }
                            Ok(text) => match crate::train::TrainConfig::from_json(&text) {
                                Ok(c) => FileOutcome::Config(Box::new(c)),
                                Err(e) => FileOutcome::Failed(format!("{}: {e}", p.display())),
                            },
                        },
                    },
                    FileJob::Gif(bytes) => dialog
                        .add_filter("GIF animation", &["gif"])
                        .set_file_name("flow-sweep.gif")
                        .save_file()
                        .map_or(FileOutcome::Cancelled, |p| write_export(&p, &bytes)),
                };
                tx.send(outcome).ok();
                repaint();
            });
        match spawned {
            Ok(h) => {
                self.dialog = Some(Dialog {
                    rx,
                    handle: Some(h),
                })
            }
            Err(e) => self.error(format!("cannot open a file dialog: {e}")),
        }
    }

    /// Applies a finished dialog's outcome, if any.
    pub(super) fn poll_dialog(&mut self) {
        let Some(outcome) = self.dialog.as_ref().and_then(|d| d.rx.try_recv().ok()) else {
            return;
        };
        self.dialog = None;
        match outcome {
            FileOutcome::Open(p) => self.open(&p),
            FileOutcome::Save(p) => self.save_to(&p),
            FileOutcome::Written(p) => self.info(format!("wrote {}", p.display())),
            FileOutcome::Cancelled => {}
            FileOutcome::Failed(msg) => self.error(msg),
            FileOutcome::Config(c) => {
                self.config = *c;
                self.info("config imported: press Train to start a run with it".into());
            }
        }
    }

    /// Opens a checkpoint: config, weights and optimiser state, ready to resume.
    pub fn open(&mut self, path: &Path) {
        self.running = false;
        self.info(format!("opening {}...", path.display()));
        self.send(Command::Load(path.to_path_buf()));
    }

    /// Saves the current run to `path`.
    pub fn save_to(&mut self, path: &Path) {
        self.send(Command::Save(path.to_path_buf()));
    }

    /// The view as PNG bytes: for 2D data the layers that are on (particles at
    /// t, trajectories, velocity arrows, data), drawn off-screen; for images the
    /// sample grid at t.
    pub fn flow_png(&self) -> crate::Result<Vec<u8>> {
        if self.is_image_run() {
            let img = self.grid_image()?;
            let mut buf = std::io::Cursor::new(Vec::new());
            img.write_to(&mut buf, image::ImageFormat::Png)
                .map_err(|e| crate::Error::config(format!("cannot encode PNG: {e}")))?;
            return Ok(buf.into_inner());
        }
        let f32s = |v: &[[f64; 2]]| -> Vec<f32> {
            v.iter().flat_map(|p| [p[0] as f32, p[1] as f32]).collect()
        };
        let mut fig = crate::plot::FlowFigure::default();
        if self.layers.particles {
            fig.points = f32s(&self.particles_at_t().unwrap_or_default());
        }
        if self.layers.data {
            fig.reference = f32s(&self.data_points);
        }
        if self.layers.trajectories {
            fig.lines = self
                .trajectories_to_t()
                .iter()
                .map(|l| l.iter().map(|p| [p[0] as f32, p[1] as f32]).collect())
                .collect();
        }
        if self.layers.field {
            let f32p = |p: [f64; 2]| [p[0] as f32, p[1] as f32];
            fig.arrows = self
                .field_arrows()
                .into_iter()
                .map(|(o, t)| (f32p(o), f32p(t)))
                .collect();
        }
        let img = crate::plot::render_flow(&fig, 800);
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Png)
            .map_err(|e| crate::Error::config(format!("cannot encode PNG: {e}")))?;
        Ok(buf.into_inner())
    }

    /// The loss history as CSV `step,loss,held_out_loss`.
    pub fn loss_csv(&self) -> String {
        let mut text = String::from("step,loss,held_out_loss\n");
        let mut held = self.held_out.iter().peekable();
        for &[step, loss] in &self.loss {
            let h = match held.peek() {
                Some(&&[s, h]) if s == step => {
                    held.next();
                    h.to_string()
                }
                _ => String::new(),
            };
            text.push_str(&format!("{step},{loss},{h}\n"));
        }
        text
    }

    /// The flow from t = 0 to 1 as an animated GIF of `frames` frames.
    pub fn sweep_gif(&self, frames: usize) -> crate::Result<Vec<u8>> {
        let Some(snapshot) = &self.snapshot else {
            return Err(crate::Error::config("there are no samples to animate yet"));
        };
        let frames = frames.max(2);
        let t_of = |k: usize| k as f64 / (frames - 1) as f64;
        if self.is_image_run() {
            // Hold the finished digits for a while at the end of each loop.
            let mut grids = Vec::with_capacity(frames + 10);
            for k in 0..frames + 10 {
                let img = super::grid_at(snapshot, t_of(k.min(frames - 1)))
                    .ok_or_else(|| crate::Error::config("the samples are not images"))?;
                let big = image::imageops::resize(
                    &img,
                    img.width() * 2,
                    img.height() * 2,
                    image::imageops::FilterType::Nearest,
                );
                grids.push(image::DynamicImage::ImageLuma8(big).into_rgba8());
            }
            return crate::plot::encode_gif(grids, 80);
        }
        let mut sweep = Vec::with_capacity(frames);
        for k in 0..frames {
            let pts = super::views::particles_at(snapshot, t_of(k)).unwrap_or_default();
            sweep.push(
                pts.iter()
                    .flat_map(|p| [p[0] as f32, p[1] as f32])
                    .collect::<Vec<f32>>(),
            );
        }
        let data: Vec<f32> = self
            .data_points
            .iter()
            .flat_map(|p| [p[0] as f32, p[1] as f32])
            .collect();
        crate::plot::sweep_gif(&sweep, &data, 400, 80)
    }

    /// Handles Ctrl+O, Ctrl+S and files dropped on the window.
    pub(super) fn file_input(&mut self, ui: &egui::Ui) {
        let (open, save, dropped) = ui.input(|i| {
            (
                i.modifiers.command && i.key_pressed(egui::Key::O),
                i.modifiers.command && i.key_pressed(egui::Key::S),
                i.raw
                    .dropped_files
                    .iter()
                    .map(|f| f.path().to_path_buf())
                    .collect::<Vec<_>>(),
            )
        });
        if open {
            self.start_dialog(FileJob::Open);
        }
        if save {
            self.start_dialog(FileJob::Save);
        }
        if let Some(p) = dropped.first() {
            self.open(p);
        }
    }

    /// The File menu of the top bar.
    pub(super) fn file_menu_ui(&mut self, ui: &mut egui::Ui) {
        ui.menu_button("File", |ui| {
            if ui.button("Open checkpoint... (Ctrl+O)").clicked() {
                self.start_dialog(FileJob::Open);
                ui.close();
            }
            if ui.button("Save checkpoint... (Ctrl+S)").clicked() {
                self.start_dialog(FileJob::Save);
                ui.close();
            }
            for which in [super::Pretrained::Moons, super::Pretrained::Mnist] {
                if ui.button(format!("Open the {} model", which.name())).clicked() {
                    self.open_pretrained(which);
                    ui.close();
                }
            }
            ui.separator();
            if ui.button("Export view as PNG...").clicked() {
                match self.flow_png() {
                    Ok(b) => self.start_dialog(FileJob::Png(b)),
                    Err(e) => self.error(e.to_string()),
                }
                ui.close();
            }
            if ui.button("Export loss history as CSV...").clicked() {
                let csv = self.loss_csv();
                self.start_dialog(FileJob::Csv(csv));
                ui.close();
            }
            ui.separator();
            if ui.button("Copy run config as JSON").clicked() {
                ui.ctx().copy_text(self.config.to_json());
                self.info("the run config (with its seed) is on the clipboard".into());
                ui.close();
            }
            if ui.button("Export run config as JSON...").clicked() {
                self.start_dialog(FileJob::ConfigJson(self.config.to_json()));
                ui.close();
            }
            if ui.button("Import run config...").clicked() {
                self.start_dialog(FileJob::ImportConfig);
                ui.close();
            }
            if ui.button("Reset settings to defaults").clicked() {
                self.reset_settings();
                ui.close();
            }
            ui.separator();
            if ui.button("Export t-sweep as GIF...").clicked() {
                match self.sweep_gif(30) {
                    Ok(b) => self.start_dialog(FileJob::Gif(b)),
                    Err(e) => self.error(e.to_string()),
                }
                ui.close();
            }
        })
        .response
        .on_hover_text("Open and save checkpoints (or drop a .safetensors file on the window); export images and data");
    }
}
