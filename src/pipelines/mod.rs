//! Pipelines glue the stages, frame -> prompts -> masks: the interactive box/point pipeline
//! and its SAM session ([`segment`]), everything mode ([`everything`]), MedCLIP-SAM
//! ([`textseg`]), SaLIP ([`salip`]), cine embedding reuse ([`cine`]) and the device loop that
//! `stream` and `run` share ([`device`]). The CLI and tests drive these; nothing below imports
//! them.

pub mod cine;
pub mod device;
pub mod everything;
pub mod salip;
pub mod segment;
pub mod textseg;
