//! Stage 6, what a mask becomes for a person: biometry (head circumference, lesion
//! diameters), overlays, and the metrics that score masks against ground truth.

pub mod measure;
pub mod metrics;
pub mod overlay;
