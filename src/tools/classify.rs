//! The classify tool: one-vs-all heads over a shared backbone → per-class scores.
//!
//! Built once at start-up from a checked manifest; [`Classifier::classify`] then reuses
//! the preprocessor buffers, the model input tensor and the score array for every frame.

use std::path::Path;

use anyhow::{Context, Result};

use crate::alloc_count::{scoped, Scope};
use crate::core::frame::GrayFrame;
use crate::core::MAX_CLASSES;
use crate::model::engine::{Engine, RunError};
use crate::model::manifest::{Manifest, Precision};
use crate::model::preprocess::Preprocessor;

/// A loaded classifier.
pub struct Classifier {
    manifest: Manifest,
    precision: Precision,
    engine: Engine,
    pre: Preprocessor,
    scores: [f32; MAX_CLASSES],
}

/// Why a frame got no scores.
#[derive(Debug)]
pub enum ClassifyError {
    /// The model input buffer was not available (tract kept the previous input).
    InputBusy,
    /// Inference failed.
    Run(RunError),
}

impl std::fmt::Display for ClassifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassifyError::InputBusy => write!(f, "model input buffer busy"),
            ClassifyError::Run(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClassifyError {}

impl Classifier {
    /// Load the manifest at `path` (checked), then its model at `precision`.
    pub fn load(path: &Path, precision: Precision) -> Result<Classifier> {
        let manifest = Manifest::load(path)?;
        Classifier::from_manifest(manifest, precision)
    }

    /// Load the model of an already checked manifest.
    pub fn from_manifest(manifest: Manifest, precision: Precision) -> Result<Classifier> {
        let file = manifest.model_path(precision)?;
        let engine = Engine::load(&file, &manifest.input.shape, manifest.classes.len())
            .with_context(|| format!("{}: loading the {} model", manifest.path.display(), precision.name()))?;
        let (h, w) = manifest.input_hw();
        let pre = Preprocessor::new(h, w, manifest.input.mean, manifest.input.std);
        Ok(Classifier {
            manifest,
            precision,
            engine,
            pre,
            scores: [0.0; MAX_CLASSES],
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Which model file runs.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Number of classes (heads).
    pub fn class_count(&self) -> usize {
        self.manifest.classes.len()
    }

    /// Resize + normalise `frame` into the model input.
    pub fn preprocess(&mut self, frame: &GrayFrame<'_>) -> Result<(), ClassifyError> {
        let input = self.engine.input_mut();
        if self.pre.run(frame, input) {
            Ok(())
        } else {
            Err(ClassifyError::InputBusy)
        }
    }

    /// Run the model on the preprocessed input; returns one score per class.
    pub fn infer(&mut self) -> Result<&[f32], ClassifyError> {
        let n = self.class_count();
        let engine = &mut self.engine;
        let scores = &mut self.scores[..n];
        scoped(Scope::Tract, || engine.run(scores)).map_err(ClassifyError::Run)?;
        Ok(&self.scores[..n])
    }

    /// Preprocess and infer.
    pub fn classify(&mut self, frame: &GrayFrame<'_>) -> Result<&[f32], ClassifyError> {
        self.preprocess(frame)?;
        self.infer()
    }

    /// Size the preprocessing for frames of `width × height` ahead of the first frame.
    pub fn prepare(&mut self, width: usize, height: usize) {
        self.pre.prepare(width, height);
    }
}
