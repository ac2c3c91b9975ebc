//! Autosave in the app: the settings (on/off, interval, how many to keep),
//! the session marker, and the offer to restore a run that a crash or
//! `kill -9` interrupted. The files themselves are written by the worker
//! (see [`crate::train::autosave`]).

use std::path::PathBuf;
use std::time::Duration;

use super::FlowLabApp;
use crate::train::autosave::{
    AutosavePolicy, CrashedSession, autosave_path, clear_session, crashed_sessions, start_session,
};
use crate::train::worker::Command;

/// The person's autosave settings (remembered across restarts).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AutosaveSettings {
    /// Whether the active run is autosaved.
    pub on: bool,
    /// Seconds between autosaves while training.
    pub every_secs: f64,
    /// Autosaves kept.
    pub keep: usize,
}

impl Default for AutosaveSettings {
    fn default() -> Self {
        AutosaveSettings {
            on: true,
            every_secs: 60.0,
            keep: 3,
        }
    }
}

/// The default autosave folder: `autosave` in FlowLab's data folder.
pub fn default_autosave_dir() -> Option<PathBuf> {
    eframe::storage_dir("FlowLab").map(|d| d.join("autosave"))
}

impl FlowLabApp {
    /// Autosaves into `dir`: marks this session as running there, looks for a
    /// session that ended without closing (its newest autosave is offered for
    /// restoring) and tells the worker the policy.
    pub fn use_autosave_dir(&mut self, dir: PathBuf) {
        if let Err(e) = start_session(&dir) {
            self.error(format!("autosave is off: {e}"));
            return;
        }
        crate::train::autosave::sweep(&dir);
        self.restore_offer = crashed_sessions(&dir).into_iter().next();
        self.autosave_dir = Some(dir);
        self.apply_autosave();
    }

    /// Sends the current autosave settings to the worker.
    pub fn apply_autosave(&mut self) {
        let policy = match (&self.autosave_dir, self.autosave.on) {
            (Some(dir), true) => Some(AutosavePolicy {
                dir: dir.clone(),
                every: Duration::from_secs_f64(self.autosave.every_secs.max(1.0)),
                keep: self.autosave.keep.max(1),
            }),
            _ => None,
        };
        self.send(Command::Autosave(policy));
    }

    /// Restores the offered run: its autosave becomes this session's own and opens.
    pub fn restore_crashed(&mut self) {
        let (Some(offer), Some(dir)) = (self.restore_offer.take(), self.autosave_dir.clone())
        else {
            return;
        };
        let own = autosave_path(&dir, std::process::id(), offer.step);
        let opened = match std::fs::rename(&offer.path, &own) {
            Ok(()) => own,
            Err(_) => offer.path.clone(),
        };
        self.open(&opened);
        clear_session(&dir, offer.pid);
        self.info(format!(
            "restoring the autosaved run at step {}",
            offer.step
        ));
    }

    /// After a divergence: the newest autosave from before the last good step
    /// (the state at the last good step itself is what the model holds now).
    pub fn rollback_step(&self) -> Option<u64> {
        if !self.diverged || self.autosave_dir.is_none() {
            return None;
        }
        self.autosaved_steps
            .iter()
            .rev()
            .find(|&&s| s < self.step)
            .copied()
    }

    /// Opens the autosave of [`FlowLabApp::rollback_step`].
    pub fn roll_back(&mut self) {
        if let (Some(step), Some(dir)) = (self.rollback_step(), self.autosave_dir.clone()) {
            self.open(&autosave_path(&dir, std::process::id(), step));
        }
    }

    /// Declines the offered run and deletes its autosaves.
    pub fn discard_crashed(&mut self) {
        if let (Some(offer), Some(dir)) = (self.restore_offer.take(), &self.autosave_dir) {
            clear_session(dir, offer.pid);
        }
    }

    /// The offer to restore a lost run, as a window.
    pub(super) fn restore_offer_ui(&mut self, ui: &egui::Ui) {
        let Some(CrashedSession { step, path, .. }) = self.restore_offer.clone() else {
            return;
        };
        let mut choice = None;
        egui::Window::new("Restore the last run?")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
            .show(ui.ctx(), |ui| {
                ui.label(format!(
                    "FlowLab did not close properly last time. Its run was autosaved at step {step}."
                ));
                ui.label(
                    egui::RichText::new(path.display().to_string())
                        .small()
                        .weak(),
                );
                ui.horizontal(|ui| {
                    if ui.button("Restore the autosaved run").clicked() {
                        choice = Some(true);
                    }
                    if ui.button("Discard it").clicked() {
                        choice = Some(false);
                    }
                });
            });
        match choice {
            Some(true) => self.restore_crashed(),
            Some(false) => self.discard_crashed(),
            None => {}
        }
    }

    /// Autosave controls for the settings panel.
    pub(super) fn autosave_settings_ui(&mut self, ui: &mut egui::Ui) {
        let before = self.autosave;
        ui.checkbox(&mut self.autosave.on, "autosave the run")
            .on_hover_text("Keep the last checkpoints of the active run, to restore after a crash");
        if self.autosave.on {
            ui.add(
                egui::Slider::new(&mut self.autosave.every_secs, 10.0..=1800.0)
                    .logarithmic(true)
                    .suffix(" s")
                    .text("every"),
            )
            .on_hover_text(
                "Seconds between autosaves while training (also on pause and at the end)",
            );
            ui.add(egui::Slider::new(&mut self.autosave.keep, 1..=10).text("keep"))
                .on_hover_text("How many of the newest autosaves to keep");
            if let Some(step) = self.last_autosave {
                ui.label(format!("last autosave: step {step}"));
            }
        }
        if self.autosave != before {
            self.apply_autosave();
        }
    }
}

impl Drop for FlowLabApp {
    /// A clean exit: this session's marker and autosaves go.
    fn drop(&mut self) {
        // Stop the worker first, so no autosave lands after the clean-up.
        drop(self.worker.take());
        if let Some(dir) = &self.autosave_dir {
            clear_session(dir, std::process::id());
        }
    }
}
