//! The device picker: which device the worker trains and samples on, and moving
//! the current run to another device. A run moves as a checkpoint: the old
//! worker saves it (weights, optimiser moments, loss history), a new worker on
//! the other device opens it, and training resumes if it was running.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::FlowLabApp;
use crate::train::worker::{Command, Worker};

/// A device the app can train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (FlowLab's own kernels).
    #[default]
    Cpu,
    /// The first CUDA GPU (candle's CUDA backend; needs `--features cuda`).
    Cuda,
}

impl DeviceChoice {
    /// The name shown in the picker.
    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "CPU",
            DeviceChoice::Cuda => "CUDA",
        }
    }

    /// `Ok` when this device can be picked, otherwise why not.
    pub fn available(self) -> Result<(), &'static str> {
        match self {
            DeviceChoice::Cpu => Ok(()),
            DeviceChoice::Cuda if !cfg!(feature = "cuda") => {
                Err("this build has no CUDA support (build with --features cuda)")
            }
            DeviceChoice::Cuda if candle_core::utils::cuda_is_available() => Ok(()),
            DeviceChoice::Cuda => Err("no CUDA device was found"),
        }
    }

    /// Opens the device (as the command line's `--device` does).
    pub fn open(self) -> crate::Result<Device> {
        crate::cli::device(match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        })
    }
}

/// A run on its way to another device: saved by the old worker to `path`.
#[derive(Debug)]
pub struct DeviceMove {
    to: DeviceChoice,
    device: Device,
    path: PathBuf,
    resume: bool,
    /// Whether the new worker has been asked to open `path`.
    loading: bool,
}

impl FlowLabApp {
    /// The device the worker runs on.
    pub fn device(&self) -> DeviceChoice {
        self.device
    }

    /// Whether the current run is on its way to another device.
    pub fn device_move_pending(&self) -> bool {
        self.device_move.is_some()
    }

    /// Moves the worker, and the current run with it, to `to` (nothing if it
    /// is already there).
    pub fn switch_device(&mut self, to: DeviceChoice) {
        if to != self.device {
            self.restart_worker_on(to);
        }
    }

    /// Replaces the worker with a new one on `to`, carrying the current run
    /// over through a checkpoint. If the device cannot be opened, the person
    /// sees why and the current worker and run stay as they are.
    pub fn restart_worker_on(&mut self, to: DeviceChoice) {
        if self.device_move.is_some() {
            return;
        }
        let device = match to.open() {
            Ok(d) => d,
            Err(e) => return self.error(e.to_string()),
        };
        if self.param_count == 0 || self.worker.is_none() {
            // No run to carry over.
            self.replace_worker(to, device);
            return;
        }
        let dir = self.autosave_dir.clone().unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!("device-move-{}.safetensors", std::process::id()));
        let resume = self.running;
        if resume {
            self.send(Command::Pause);
        }
        self.send(Command::Save(path.clone()));
        self.info(format!("moving the run to {}...", to.name()));
        self.device_move = Some(DeviceMove {
            to,
            device,
            path,
            resume,
            loading: false,
        });
    }

    /// Starts a worker on `device` in place of the current one (which stops and
    /// is joined), with the live settings and autosave policy.
    fn replace_worker(&mut self, to: DeviceChoice, device: Device) -> bool {
        match Worker::spawn(device, self.repaint.clone()) {
            Ok(w) => {
                // Dropping the old worker stops its thread and joins it.
                self.worker = Some(w);
                self.device = to;
                self.running = false;
                self.send(Command::SetLive(self.live));
                self.apply_autosave();
                self.info(format!("now on {}", to.name()));
                true
            }
            Err(e) => {
                self.error(format!("{} worker failed to start: {e}", to.name()));
                false
            }
        }
    }

    /// Called when a save finished: the checkpoint of a pending move opens on
    /// the new device. Returns whether `path` was that checkpoint.
    pub(super) fn device_move_saved(&mut self, path: &Path) -> bool {
        let Some(m) = self
            .device_move
            .as_mut()
            .filter(|m| m.path == path && !m.loading)
        else {
            return false;
        };
        m.loading = true;
        let (to, device, path) = (m.to, m.device.clone(), m.path.clone());
        if self.replace_worker(to, device) {
            self.send(Command::Load(path));
        } else {
            self.end_device_move();
        }
        true
    }

    /// Called when a checkpoint opened: finishes a pending move (training
    /// resumes if it was running). Returns whether `path` was its checkpoint.
    pub(super) fn device_move_loaded(&mut self, path: &Path) -> bool {
        if !self
            .device_move
            .as_ref()
            .is_some_and(|m| m.path == path && m.loading)
        {
            return false;
        }
        let resume = self.device_move.as_ref().is_some_and(|m| m.resume);
        self.end_device_move();
        if resume {
            self.send(Command::Resume);
            self.running = true;
        }
        self.info(format!("the run is now on {}", self.device.name()));
        true
    }

    /// Ends a pending move and removes its checkpoint.
    fn end_device_move(&mut self) {
        if let Some(m) = self.device_move.take() {
            std::fs::remove_file(&m.path).ok();
        }
    }

    /// An error came while a move was pending. Before the save the run simply
    /// stays where it is; once the new worker was opening the checkpoint, the
    /// file is kept (the run is in it) and its path returned for the message.
    pub(super) fn device_move_failed(&mut self) -> Option<PathBuf> {
        match self.device_move.take() {
            Some(m) if m.loading => Some(m.path),
            Some(m) => {
                std::fs::remove_file(&m.path).ok();
                None
            }
            None => None,
        }
    }

    /// The device list: each device, selectable where it is available, with
    /// why not otherwise.
    pub(super) fn device_ui(&mut self, ui: &mut egui::Ui) {
        for choice in [DeviceChoice::Cpu, DeviceChoice::Cuda] {
            let available = choice.available();
            let selected = self.device == choice;
            let label = match (available, choice) {
                (Ok(()), DeviceChoice::Cuda) => "CUDA (GPU 0)".to_string(),
                (Ok(()), _) => choice.name().to_string(),
                (Err(_), _) => format!("{} (unavailable)", choice.name()),
            };
            let enabled = available.is_ok() && self.device_move.is_none();
            let r = ui.add_enabled(enabled, egui::RadioButton::new(selected, label));
            let r = match available {
                Ok(()) => r.on_hover_text(match choice {
                    DeviceChoice::Cpu => "Train and sample on the CPU",
                    DeviceChoice::Cuda => {
                        "Train and sample on the GPU; the current run moves with its optimiser state"
                    }
                }),
                Err(why) => r.on_disabled_hover_text(why),
            };
            if r.clicked() && !selected {
                self.switch_device(choice);
            }
        }
        let metal = if cfg!(feature = "metal") {
            "no Metal device was found"
        } else {
            "this build has no Metal support (build with --features metal, macOS)"
        };
        ui.add_enabled(false, egui::RadioButton::new(false, "Metal (unavailable)"))
            .on_disabled_hover_text(metal);
        if let Some(m) = &self.device_move {
            ui.label(format!("moving the run to {}...", m.to.name()));
        }
    }
}
