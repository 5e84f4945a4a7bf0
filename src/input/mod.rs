//! Stage 1, frames in: image files (PNG/JPEG), ultrasound DICOM, raw frame streams and
//! directories behind [`source::FrameSource`], and labelled sets (`pairs.csv`) for evaluation.
//! Imports nothing above it but the transports' endpoint syntax (`crate::link`).

pub mod dataset;
pub mod dicom;
pub mod image_io;
pub mod source;
